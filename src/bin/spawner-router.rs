//! `spawner-router`: tells the reverse proxy where each backend's pod is and holds requests for
//! backends that are still starting. Runs beside nginx in the proxy's pod. See `spawner::router`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use spawner::process::{LogFilter, LogFormat, cancel_on_stop_signal, init_logging};
use spawner::router::{self, Config, Options};
use spawner::text::ErrorChain;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(name = "spawner-router", version, about = "Routes the reverse proxy to session-lived backends' pods")]
struct Args {
    /// Address of the route lookups nginx makes (keep it on loopback: only nginx asks).
    #[arg(long, env = "SPAWNER_ROUTE_ADDR", default_value = "127.0.0.1:8082")]
    route_addr: SocketAddr,

    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "SPAWNER_METRICS_ADDR", default_value = "0.0.0.0:8081")]
    metrics_addr: SocketAddr,

    /// The longest a request waits for a starting backend, in seconds (each backend's own
    /// startup timeout bounds it too). nginx's lookup timeout must be longer.
    #[arg(long, env = "SPAWNER_HOLD_SECONDS", default_value_t = 60)]
    hold_seconds: u64,

    /// Log format.
    #[arg(long, env = "SPAWNER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,

    /// Only route backends in this namespace (tests). Default: every namespace.
    #[arg(long, hide = true)]
    watch_namespace: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format, LogFilter::Directives("info"));
    let options = Options {
        route_addr: args.route_addr,
        metrics_addr: args.metrics_addr,
        namespace: args.watch_namespace,
        config: Config { hold_cap: Duration::from_secs(args.hold_seconds), ..Config::default() },
    };
    let stop = CancellationToken::new();
    tokio::spawn(cancel_on_stop_signal(stop.clone()));
    match router::run(options, stop).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %ErrorChain(&err), "spawner-router failed");
            ExitCode::FAILURE
        }
    }
}
