//! `spawner-controller`: reconciles SessionLivedBackends into Pods, Services and token Secrets.
//! See the README and `spawner::controllers`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use spawner::controllers::claim_key::ClaimKeys;
use spawner::controllers::{self, Config, Options, context, pod::SidecarConfig};
use spawner::process::{LogFilter, LogFormat, cancel_on_stop_signal, init_logging};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

#[derive(Parser, Debug)]
#[command(
    name = "spawner-controller",
    version,
    about = "Reconciles SessionLivedBackends into Pods, Services and token Secrets"
)]
struct Cli {
    /// Only watch this namespace (default: all namespaces).
    #[arg(long, env = "SPAWNER_NAMESPACE")]
    namespace: Option<String>,

    /// Base of the URLs written to status.url: BASE_URL/p/NAMESPACE/NAME/.
    #[arg(long, env = "SPAWNER_BASE_URL", default_value = context::DEFAULT_BASE_URL)]
    base_url: String,

    /// Image of the sidecar injected into every backend pod.
    #[arg(long, env = "SPAWNER_SIDECAR_IMAGE", default_value_t = spawner::names::image("sidecar"))]
    sidecar_image: String,

    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "SPAWNER_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,

    /// Log format.
    #[arg(long, env = "SPAWNER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// How long a Failed backend is kept (for inspection) before it is deleted, e.g. 10m, 90s.
    #[arg(long, env = "SPAWNER_FAILED_RETENTION", default_value = "10m", value_parser = parse_duration)]
    failed_retention: Duration,

    /// Namespace of the leader election Lease.
    #[arg(long, env = "SPAWNER_LEASE_NAMESPACE", default_value = spawner::names::SYSTEM_NAMESPACE)]
    lease_namespace: String,

    /// Name of the leader election Lease.
    #[arg(long, env = "SPAWNER_LEASE_NAME", default_value = spawner::names::CONTROLLER)]
    lease_name: String,

    /// File holding the key warm pods' claim keys are derived from (at least 16 bytes). Without
    /// it (or when the file does not exist), a random key per process: warm pods are then
    /// replaced when the controller restarts.
    #[arg(long, env = "SPAWNER_CLAIM_KEY_FILE")]
    claim_key_file: Option<std::path::PathBuf>,

    /// Run without leader election (a single replica, e.g. in tests).
    #[arg(long, env = "SPAWNER_NO_LEADER_ELECTION")]
    no_leader_election: bool,

    /// This replica's identity for the Lease and Events (default: $POD_NAME; without it, the
    /// hostname plus a random suffix).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
}

/// `90s`, `10m`, `1h` or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = number.parse().map_err(|_| format!("invalid duration {s:?}: expected e.g. 90s, 10m, 1h"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("invalid duration unit in {s:?}: use s, m or h")),
    };
    Ok(Duration::from_secs(secs))
}

/// A pod's name is unique among live pods and survives a restart of its container, so a
/// controller restarted in place (after losing its Lease to an API server outage, say) finds
/// its own name on the Lease and takes it back at once instead of waiting out the lease
/// duration; its previous process is gone by then. Outside a pod (tests, a developer's machine)
/// processes share the hostname, so a random suffix tells them apart.
fn identity(explicit: Option<String>) -> String {
    if let Some(name) = explicit.filter(|n| !n.is_empty()) {
        return name;
    }
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "spawner-controller".to_string());
    format!("{host}_{:08x}", rand::random::<u32>())
}

#[tokio::main]
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, LogFilter::Directives("info,kube_runtime=warn"));
    let client = match kube::Client::try_default().await {
        Ok(client) => client,
        Err(e) => {
            error!(error = %e, "failed to configure the Kubernetes client (in-cluster or KUBECONFIG)");
            return ExitCode::FAILURE;
        }
    };
    let claim_keys = match &cli.claim_key_file {
        None => ClaimKeys::default(),
        // The deployment mounts the key's Secret as optional: a cluster without it still runs.
        Some(path) if !path.exists() => {
            warn!(path = %path.display(), "no claim key file: using a key of this process (warm pods are replaced on restart)");
            ClaimKeys::default()
        }
        Some(path) => match ClaimKeys::from_file(path) {
            Ok(keys) => keys,
            Err(e) => {
                error!(error = %e, path = %path.display(), "failed to read the claim key");
                return ExitCode::FAILURE;
            }
        },
    };
    let options = Options {
        config: Config {
            base_url: cli.base_url,
            sidecar: SidecarConfig { image: cli.sidecar_image },
            failed_retention: cli.failed_retention,
            claim_keys,
        },
        namespace: cli.namespace,
        metrics_addr: cli.metrics_addr,
        leader_election: !cli.no_leader_election,
        lease_namespace: cli.lease_namespace,
        lease_name: cli.lease_name,
        identity: identity(cli.identity),
    };
    let stop = CancellationToken::new();
    tokio::spawn(cancel_on_stop_signal(stop.clone()));
    info!(namespace = ?options.namespace, identity = %options.identity, "starting");
    match controllers::run(client, options, stop).await {
        Ok(()) => {
            info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!(error = %e, "stopped");
            ExitCode::FAILURE
        }
    }
}
