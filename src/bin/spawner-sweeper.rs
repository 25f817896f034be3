//! `spawner-sweeper`: deletes the backends on this node that stayed idle past their grace
//! period. Runs as a DaemonSet with `NODE_NAME` from the downward API. See `spawner::sweeper`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use http::Uri;
use spawner::process::{LogFilter, LogFormat, cancel_on_stop_signal, init_logging};
use spawner::sweeper::{self, Mode, Options, follower};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(name = "spawner-sweeper", version, about = "Sweeps idle session-lived backends on one node")]
struct Args {
    /// The node whose backend pods this sweeper follows (set from spec.nodeName by the
    /// DaemonSet).
    #[arg(long, env = "NODE_NAME", required_unless_present = "static_targets")]
    node_name: Option<String>,

    /// Address of /metrics and /healthz.
    #[arg(long, env = "SPAWNER_METRICS_ADDR", default_value = "0.0.0.0:8081")]
    metrics_addr: SocketAddr,

    /// Log format.
    #[arg(long, env = "SPAWNER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,

    /// Only sweep backends in this namespace (tests that run their own sweeper use it so they
    /// leave other tests' backends alone). Default: every namespace.
    #[arg(long, hide = true)]
    watch_namespace: Option<String>,

    /// Test mode: follow these sidecar event stream URLs (comma separated, e.g.
    /// http://127.0.0.1:9081/events) instead of the node's pods, and print one JSON line per
    /// sweep to stdout instead of deleting anything. Used by `cargo xtask bench sweeper`.
    #[arg(long, value_delimiter = ',', hide = true)]
    static_targets: Vec<Uri>,

    /// Test mode: the grace period of every static target, in seconds (fractions allowed).
    #[arg(long, default_value_t = 300.0, hide = true)]
    static_grace_seconds: f64,
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format, LogFilter::Directives("info"));
    // One thread is plenty: the work is a few hundred idle sockets and timers, and a single
    // thread keeps the per-node footprint small.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!(error = %err, "failed to start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %sweeper::ErrorChain(&err), "spawner-sweeper failed");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), sweeper::Error> {
    let mode = if args.static_targets.is_empty() {
        Mode::Cluster { node: args.node_name.unwrap_or_default(), namespace: args.watch_namespace }
    } else {
        Mode::Static {
            targets: args.static_targets,
            grace: Duration::from_secs_f64(args.static_grace_seconds.max(0.0)),
        }
    };
    let options = Options { mode, metrics_addr: args.metrics_addr, follower: follower::Config::default() };
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_stop_signal(shutdown.clone()));
    sweeper::run(options, shutdown).await
}
