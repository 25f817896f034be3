//! Process setup, written once for every binary and the demo: the `--log-format` values,
//! logging on stderr, the shutdown signal, and giving freed heap pages back.

use tracing_subscriber::layer::{Filter, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

/// How logs are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (colored on a terminal).
    #[default]
    Text,
    /// One JSON object per line, the event's fields at the top level.
    Json,
}

/// What `RUST_LOG` is read as.
#[derive(Clone, Copy, Debug)]
pub enum LogFilter<'a> {
    /// Full `EnvFilter` directives, with this default when `RUST_LOG` is unset (read as
    /// `Targets` in a build without the `kubernetes` feature, which leaves out `EnvFilter`).
    Directives(&'a str),
    /// Only `level` or `target=level,...` (the regex-free `Targets` filter), INFO by default:
    /// for the sidecar, which runs in every pod — a smaller binary and a lower idle RSS.
    Targets,
}

/// Logs to stderr (stdout is left to the program's results).
pub fn init_logging(format: LogFormat, filter: LogFilter) {
    match filter {
        #[cfg(feature = "kubernetes")]
        LogFilter::Directives(default) => install(
            format,
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        ),
        #[cfg(not(feature = "kubernetes"))]
        LogFilter::Directives(default) => install(format, targets(default)),
        LogFilter::Targets => install(format, targets("info")),
    }
}

/// `RUST_LOG` as a `Targets` filter, or `default` when it is unset or not one.
fn targets(default: &str) -> tracing_subscriber::filter::Targets {
    let parse = |s: &str| s.parse::<tracing_subscriber::filter::Targets>().ok();
    std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| parse(&v))
        .or_else(|| parse(default))
        .unwrap_or_else(|| tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO))
}

fn install<F: Filter<Registry> + Send + Sync + 'static>(format: LogFormat, filter: F) {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let layer = match format {
        LogFormat::Json => layer.json().flatten_event(true).with_filter(filter).boxed(),
        LogFormat::Text => layer.with_filter(filter).boxed(),
    };
    tracing_subscriber::registry().with(layer).init();
}

/// Which signal asked the process to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM: the kubelet or a supervisor.
    Terminate,
    /// SIGINT: Ctrl-C at a terminal.
    Interrupt,
}

impl Stop {
    /// The shell's exit code for a process ended by this signal (128 + its number).
    pub fn exit_code(self) -> i32 {
        match self {
            Stop::Terminate => 143,
            Stop::Interrupt => 130,
        }
    }
}

/// Resolves at the first SIGTERM or SIGINT. If the handlers cannot be installed (no signal
/// support), it never resolves and says so once: the process then stops only by SIGKILL.
pub async fn stop_signal() -> Stop {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => Stop::Terminate,
        _ = int.recv() => Stop::Interrupt,
    }
}

/// Cancels `token` at the first SIGTERM or SIGINT, logging which (spawned by long-running
/// binaries that shut down gracefully).
pub async fn cancel_on_stop_signal(token: tokio_util::sync::CancellationToken) {
    let stop = stop_signal().await;
    tracing::info!(signal = ?stop, "shutting down");
    token.cancel();
}

/// Gives the heap's free pages back to the kernel now and then every `every`, forever. glibc's
/// `free` returns memory only from the top of an arena; pages freed between long-lived objects
/// stay in the RSS until `malloc_trim` hands them back. That is what a re-list leaves: thousands
/// of list pages parsed and dropped while the caches fill around them.
pub async fn trim_heap_every(every: std::time::Duration) {
    loop {
        trim_heap();
        tokio::time::sleep(every).await;
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim_heap() {
    // SAFETY: malloc_trim only walks and releases glibc's own free lists; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}
