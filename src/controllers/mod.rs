//! The controller: turns each `SessionLivedBackend` into a Pod (with the sidecar injected), a
//! Service and a token Secret, keeps its status and Events in step with the pod, and enforces
//! the time rules (startup timeout, max lifetime, failed retention).
//!
//! Layout: [`reconcile`] is the pipeline for one backend; [`pod`], [`service`], [`secret`] build
//! the children; [`status`] and [`lifetime`] are the pure decisions; [`run`] wires the
//! kube-runtime `Controller`, the leader [`leader`] Lease, and the [`http`] endpoints.
//!
//! Deletion relies on owner references (garbage collection), not finalizers: a backend is gone
//! as soon as it is deleted, and nothing blocks its deletion if the controller is down.
//!
//! A Failed backend keeps its pod (for `kubectl logs` and `kubectl describe`, e.g. after a
//! `StartupTimeout`) until `--failed-retention` ends and the backend, pod included, is deleted.
//! A pod is never recreated: it is the session; a backend whose pod vanished is Failed
//! (`PodLost`).

pub mod children;
pub mod claim;
pub mod claim_key;
pub mod context;
pub mod http;
pub mod leader;
pub mod lifetime;
pub mod metrics;
pub mod network_policy;
pub mod pod;
pub mod pool;
pub mod reconcile;
pub mod secret;
pub mod service;
pub mod status;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{self, reflector};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use context::{Config, Context};

use crate::crd::{SessionLivedBackend, SessionLivedBackendPool};

/// A failed reconciliation step; always names the backend and what was attempted.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to {action} {kind} for backend {backend}: {source}")]
    Api {
        action: &'static str,
        kind: &'static str,
        backend: String,
        #[source]
        source: kube::Error,
    },
    #[error("backend {0} has no namespace")]
    NotNamespaced(String),
    #[error("failed to hand backend {backend} its claimed pod {pod}: {message}")]
    Claim { backend: String, pod: String, message: String },
}

impl Error {
    fn api(action: &'static str, kind: &'static str, backend: &str, source: kube::Error) -> Self {
        Error::Api { action, kind, backend: backend.to_string(), source }
    }

    /// Whether the API server refused a write because the namespace is being deleted: the
    /// object the write was for goes with it, so there is nothing to retry.
    pub fn namespace_terminating(&self) -> bool {
        matches!(self, Error::Api { source: kube::Error::Api(status), .. }
            if status.code == 403
                && status.details.as_ref().is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating")))
    }

    /// Low-cardinality label for the error metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Api { action: "get", .. } => "get",
            Error::Api { action: "apply", .. } => "apply",
            Error::Api { action: "create", .. } => "create",
            Error::Api { action: "delete", .. } => "delete",
            Error::Api { .. } => "status",
            Error::NotNamespaced(_) => "not_namespaced",
            Error::Claim { .. } => "claim",
        }
    }
}

/// Why [`run`] stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("failed to serve metrics and health on {addr}: {source}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Leader(#[from] leader::Error),
    #[error("lost the leader Lease; stopped reconciling so another replica can take over")]
    LostLeadership,
}

/// How the controller process runs (from its command line).
#[derive(Clone, Debug)]
pub struct Options {
    pub config: Config,
    /// Only this namespace; all namespaces when `None`.
    pub namespace: Option<String>,
    pub metrics_addr: SocketAddr,
    /// Hold a Lease before reconciling (several replicas: one active).
    pub leader_election: bool,
    pub lease_namespace: String,
    /// Name of the leader Lease (one per controller deployment).
    pub lease_name: String,
    /// This replica's name (Events' reportingInstance, the Lease holder).
    pub identity: String,
}

/// Runs the controller until `stop` is cancelled (SIGTERM), then finishes the reconciliations
/// in flight, releases the Lease and stops the HTTP endpoints.
/// Boxed: see the crate docs, "Boxed entry points".
pub fn run(client: Client, options: Options, stop: CancellationToken) -> BoxFuture<'static, Result<(), RunError>> {
    Box::pin(running(client, options, stop))
}

async fn running(client: Client, options: Options, stop: CancellationToken) -> Result<(), RunError> {
    let mut registry = Registry::default();
    let metrics = metrics::Metrics::default().register(&mut registry);
    let health = Arc::new(http::Health::default());
    let listener = tokio::net::TcpListener::bind(options.metrics_addr)
        .await
        .map_err(|source| RunError::Http { addr: options.metrics_addr, source })?;
    info!(addr = %options.metrics_addr, "serving /metrics, /healthz, /readyz");
    let http_stop = CancellationToken::new();
    let server =
        tokio::spawn(http::serve(listener, Arc::new(registry), health.clone(), metrics.clone(), http_stop.clone()));

    let result = lead_and_reconcile(client, &options, metrics, health, stop).await;
    http_stop.cancel();
    if let Err(e) = server.await {
        warn!(error = %e, "HTTP server task failed");
    }
    result
}

async fn lead_and_reconcile(
    client: Client,
    options: &Options,
    metrics: Arc<metrics::Metrics>,
    health: Arc<http::Health>,
    stop: CancellationToken,
) -> Result<(), RunError> {
    // Standing by counts as ready: with one replica and a rolling update, the new pod must be
    // Ready (standing by) before the old one is stopped and lets go of the Lease.
    health.set_ready(true);
    let lost = CancellationToken::new();
    let mut holder = None;
    if options.leader_election {
        let api = Api::namespaced(client.clone(), &options.lease_namespace);
        let mut elector = leader::Elector::new(api, &options.lease_name, &options.identity, leader::Timing::default());
        let lease = format!("{}/{}", options.lease_namespace, options.lease_name);
        info!(%lease, identity = %options.identity, "waiting for the leader Lease");
        if !elector.acquire(&stop).await? {
            return Ok(());
        }
        info!("acquired the leader Lease");
        metrics.leader.set(1);
        holder = Some(tokio::spawn(elector.hold(stop.clone(), lost.clone())));
    }

    // Stop reconciling on SIGTERM, or as soon as the Lease is lost.
    let done = CancellationToken::new();
    tokio::spawn({
        let (stop, lost, done) = (stop.clone(), lost.clone(), done.clone());
        async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = lost.cancelled() => {}
                () = done.cancelled() => {}
            }
            done.cancel();
        }
    });

    // Every controller of the process shares one context (client, Event recorder, metrics,
    // caches): each registers the children it watches, then they all run until `done`.
    let namespace = options.namespace.as_deref();
    let mut caches = children::Caches::default();
    let backend_controller = backend_controller(&client, namespace, &mut caches);
    let pool_controller = pool_controller(&client, namespace);
    health.set_store(backend_controller.store());
    health.set_pools(pool_controller.store());
    let ctx = Context::new(client.clone(), options.config.clone(), metrics.clone(), Some(options.identity.clone()))
        .with_caches(caches)
        .with_pools(pool_controller.store());
    let ctx = Arc::new(ctx);
    let trimmer = tokio::spawn({
        let ctx = ctx.clone();
        async move {
            ctx.caches.listed().await;
            crate::process::trim_heap_every(TRIM_EVERY).await
        }
    });
    futures::join!(
        drive(backend_controller, reconcile::reconcile, reconcile::error_policy, ctx.clone(), &done),
        drive(pool_controller, pool::reconcile, pool::error_policy, ctx, &done),
    );
    trimmer.abort();
    done.cancel();
    info!("controller stopped");
    metrics.leader.set(0);

    if let Some(holder) = holder {
        // `hold` releases the Lease once `stop` is cancelled; after a loss there is nothing to
        // release.
        stop.cancel();
        match tokio::time::timeout(Duration::from_secs(5), holder).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error!(error = %e, "leader Lease task failed"),
            Err(_) => warn!("timed out releasing the leader Lease"),
        }
    }
    if lost.is_cancelled() { Err(RunError::LostLeadership) } else { Ok(()) }
}

/// The backends' controller: triggered by backends and by changes to the children it watches.
fn backend_controller(
    client: &Client,
    namespace: Option<&str>,
    caches: &mut children::Caches,
) -> Controller<SessionLivedBackend> {
    let backends = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (reader, writer) = reflector::store();
    let events = watcher(backends, watcher::Config::default()).modify(reconcile::trim_backend);
    let controller = Controller::for_stream(reflector(writer, events).default_backoff().applied_objects(), reader);
    let controller = children::owns::<Pod>(controller, client, namespace, caches);
    children::owns::<Service>(controller, client, namespace, caches)
}

/// The pools' controller: triggered by pools and by changes to the pods labelled with a pool —
/// by label, not owner, so that a claim (which hands the pod to its backend) triggers the
/// refill. It lists the pods from the API server, so it keeps no cache of its own.
fn pool_controller(client: &Client, namespace: Option<&str>) -> Controller<SessionLivedBackendPool> {
    let (pools, pods) = match namespace {
        Some(ns) => (Api::namespaced(client.clone(), ns), Api::<Pod>::namespaced(client.clone(), ns)),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    Controller::new(pools, watcher::Config::default()).watches(
        pods,
        watcher::Config::default().labels(pool::POOL_LABEL),
        |pod| {
            let pool = pod.labels().get(pool::POOL_LABEL)?;
            Some(reflector::ObjectRef::new(pool).within(&pod.namespace()?))
        },
    )
}

/// Environment the controller's process runs with: the Deployment sets it, and the tests and
/// benchmarks start the binary with it. glibc's malloc gives each thread that allocates an arena
/// of its own (up to 8 per core), and each arena keeps its own holes between the caches'
/// long-lived objects and each watch event's short-lived ones; with two, the RSS at 1,000
/// backends went from 57 to 41 MiB (`cargo xtask bench scale`), and at 0.1 cores of work
/// there is nothing to contend for.
pub const PROCESS_ENV: &[(&str, &str)] = &[("MALLOC_ARENA_MAX", "2")];

/// How often the controller hands freed heap pages back, from the moment its caches have
/// listed (the re-list after a restart is the peak). A trim walks the free lists: 0.3 ms for a
/// 220 MB heap here, so every 10 s costs nothing measurable.
const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Reconciliations in flight at most, per controller. Unbounded, a restart at 10,000 backends
/// started them all at once, each holding its own connection to the API server; the client pool
/// kept those connections and their buffers (`cargo xtask bench scale`). 64 in flight, a few
/// round trips each, still reconcile hundreds of backends a second.
const CONCURRENCY: u16 = 64;

/// Runs one controller until `done`, then lets the reconciliations in flight finish.
async fn drive<K, F>(
    controller: Controller<K>,
    reconcile: impl FnMut(Arc<K>, Arc<Context>) -> F,
    error_policy: impl Fn(Arc<K>, &F::Error, Arc<Context>) -> kube::runtime::controller::Action,
    ctx: Arc<Context>,
    done: &CancellationToken,
) where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    F: futures::TryFuture<Ok = kube::runtime::controller::Action> + Send + 'static,
    F::Error: std::error::Error + Send + 'static,
{
    controller
        .with_config(kube::runtime::controller::Config::default().concurrency(CONCURRENCY))
        .graceful_shutdown_on(done.clone().cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                // Reconcile errors are logged by the error policy; these are watch errors and
                // objects that vanished before their turn.
                match e {
                    kube::runtime::controller::Error::ReconcilerFailed(..) => {}
                    kube::runtime::controller::Error::ObjectNotFound(..) => {}
                    other => warn!(error = %other, "controller stream error"),
                }
            }
        })
        .await;
}
