//! `spawner-sidecar`: the WebSocket-aware reverse proxy injected into every backend pod.
//!
//! Prints one line `listening proxy=ADDR admin=ADDR` on stdout once both ports are bound (logs
//! go to stderr), so tests and scripts can use port 0.

use std::process::ExitCode;

use clap::Parser;
use spawner::process::{LogFilter, init_logging, stop_signal};
use spawner::sidecar::{Config, Sidecar};

fn main() -> ExitCode {
    let config = Config::parse();
    // The sidecar runs in every pod: the lean filter (see `LogFilter::Targets`).
    init_logging(config.log_format, LogFilter::Targets);
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
        sidecar
            .run(async {
                stop_signal().await;
            })
            .await;
        ExitCode::SUCCESS
    })
}
