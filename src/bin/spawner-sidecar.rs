//! `spawner-sidecar`: the WebSocket-aware reverse proxy injected into every backend pod.
//!
//! Prints one line `listening proxy=ADDR admin=ADDR` on stdout once both ports are bound (logs
//! go to stderr), so tests and scripts can use port 0.

use std::process::ExitCode;

use clap::Parser;
use spawner::sidecar::config::LogFormat;
use spawner::sidecar::{Config, Sidecar};
use tokio::signal::unix::{SignalKind, signal};

fn main() -> ExitCode {
    let config = Config::parse();
    init_logging(config.log_format);
    let runtime = if config.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(config.threads).enable_all().build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: failed to start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let sidecar = match Sidecar::bind(config).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %format!("{:#}", anyhow::Error::new(e)), "cannot start");
                return ExitCode::FAILURE;
            }
        };
        println!("listening proxy={} admin={}", sidecar.proxy_addr(), sidecar.admin_addr());
        tracing::info!(proxy = %sidecar.proxy_addr(), admin = %sidecar.admin_addr(), "listening");
        sidecar.run(terminated()).await;
        ExitCode::SUCCESS
    })
}

/// SIGTERM (Kubernetes) or SIGINT (a terminal).
async fn terminated() {
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Logs on stderr; `RUST_LOG` takes `level` or `target=level,...` directives. The sidecar runs
/// in every pod, so it uses the regex-free `Targets` filter rather than `EnvFilter`: smaller
/// binary, fewer pages touched, lower idle RSS.
fn init_logging(format: LogFormat) {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Json => tracing_subscriber::registry().with(layer.json()).with(filter).init(),
        LogFormat::Text => tracing_subscriber::registry().with(layer).with(filter).init(),
    }
}
