//! `spawner-api`: the HTTP API web applications use to make and reach backends. See
//! `spawner::api`.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use spawner::api::{self, Options};
use spawner::process::{LogFilter, LogFormat, cancel_on_stop_signal, init_logging};
use spawner::text::ErrorChain;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "spawner-api",
    version,
    about = "The HTTP API for web applications: keyed connect, backends from pools, status streams"
)]
struct Args {
    /// Address of the API, /healthz, /readyz and /metrics.
    #[arg(long, env = "SPAWNER_API_ADDR", default_value = "0.0.0.0:8090")]
    addr: SocketAddr,

    /// Log format.
    #[arg(long, env = "SPAWNER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
}

#[tokio::main]
pub async fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format, LogFilter::Directives("info"));
    let stop = CancellationToken::new();
    tokio::spawn(cancel_on_stop_signal(stop.clone()));
    match api::run(Options { addr: args.addr }, stop).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %ErrorChain(&err), "spawner-api failed");
            ExitCode::FAILURE
        }
    }
}
