//! The sweeper: one per node (a DaemonSet). It watches the backend pods on its node, follows
//! each sidecar's event stream by pod IP, and deletes a `SessionLivedBackend` once it has been
//! ready with no live connection for its grace period.
//!
//! - [`rule`]: the pure decision (state + when it arrived + grace → keep or sweep at).
//! - [`follower`]: one task per backend; timers raced against events, heartbeat watchdog,
//!   reconnect with backoff. A lost stream never leads to a sweep.
//! - [`pods`]: the pod watch that starts and stops followers.
//! - [`sweep`]: the delete with a UID precondition and the `IdleTimeout` Event.
//! - [`metrics`]: `/metrics` and `/healthz`.
//!
//! Test mode (`--static-targets`): follows a fixed list of sidecar admin URLs without any
//! Kubernetes API and prints one JSON line per sweep instead of deleting. The benchmark
//! (`cargo xtask bench sweeper`) runs the real binary this way.

pub mod follower;
mod guards;
pub mod metrics;
pub mod pods;
pub mod rule;
mod sse;
pub mod sweep;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use http::Uri;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use follower::{Sweep, SweepError, SweepOutcome, Sweeper, Target};
use metrics::Metrics;

pub use crate::text::ErrorChain;

/// Errors that stop the sweeper.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to create a Kubernetes client (in-cluster config or KUBECONFIG)")]
    Client(#[source] kube::Error),
    #[error(transparent)]
    Metrics(#[from] metrics::Error),
}

/// Where the backends to follow come from.
#[derive(Clone, Debug)]
pub enum Mode {
    /// The pods on `node` (in `namespace` only, if set), found through the API; sweeps delete
    /// backends.
    Cluster { node: String, namespace: Option<String> },
    /// A fixed list of event stream URLs, all with one grace period; sweeps are printed to
    /// stdout as JSON lines. For benchmarks and local experiments only.
    Static { targets: Vec<Uri>, grace: Duration },
}

/// Everything `run` needs.
#[derive(Clone, Debug)]
pub struct Options {
    pub mode: Mode,
    pub metrics_addr: SocketAddr,
    pub follower: follower::Config,
}

/// Runs the sweeper until `shutdown`; then stops following (no sweep is left half-decided: the
/// next sweeper recomputes every deadline from the sidecars' relative idle times).
/// Boxed: see the crate docs, "Boxed entry points".
pub fn run(options: Options, shutdown: CancellationToken) -> BoxFuture<'static, Result<(), Error>> {
    Box::pin(running(options, shutdown))
}

async fn running(options: Options, shutdown: CancellationToken) -> Result<(), Error> {
    let metrics = Metrics::new();
    let listener = metrics::bind(options.metrics_addr).await?;
    let server = tokio::spawn(metrics::serve(listener, metrics.clone(), shutdown.clone()));
    match options.mode {
        Mode::Cluster { node, namespace } => {
            let client = kube::Client::try_default().await.map_err(Error::Client)?;
            tracing::info!(%node, "sweeping idle backends on this node");
            let context = pods::Context {
                sweeper: sweep::ApiSweeper::new(client.clone(), node.clone()),
                metrics,
                config: options.follower,
            };
            pods::watch_pods(client, &node, namespace.as_deref(), context, shutdown.clone()).await;
        }
        Mode::Static { targets, grace } => {
            tracing::info!(
                targets = targets.len(),
                grace_ms = grace.as_millis() as u64,
                "following static targets (test mode: sweeps are printed, not deleted)"
            );
            let sweeper: Arc<dyn Sweeper> = Arc::new(PrintSweeper);
            let mut tasks = JoinSet::new();
            for url in targets {
                let target = Target { name: url.to_string(), url, grace };
                let (status, _) = watch::channel(follower::Status::default());
                let guard = guards::GaugeGuard::inc(&metrics.followed_backends);
                let follow =
                    follower::follow(target, sweeper.clone(), options.follower.clone(), metrics.clone(), status);
                tasks.spawn(async move {
                    follow.await;
                    drop(guard);
                });
            }
            shutdown.cancelled().await;
            tasks.shutdown().await;
        }
    }
    shutdown.cancel();
    // A panicked metrics task has already been logged; shutdown goes on.
    let _ = server.await;
    Ok(())
}

/// Test mode's sweep: one JSON line on stdout per sweep.
struct PrintSweeper;

impl Sweeper for PrintSweeper {
    fn sweep(&self, sweep: Sweep) -> BoxFuture<'_, Result<SweepOutcome, SweepError>> {
        Box::pin(async move {
            let unix_us = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_micros() as u64;
            let line = serde_json::json!({
                "target": sweep.target,
                "sweptAtUnixMicros": unix_us,
                "idleMs": sweep.idle.as_millis() as u64,
                "graceMs": sweep.grace.as_millis() as u64,
                "latenessUs": sweep.started.saturating_duration_since(sweep.deadline).as_micros() as u64,
            });
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{line}")?;
            stdout.flush()?;
            Ok(SweepOutcome::Swept)
        })
    }
}
