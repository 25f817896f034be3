//! `spawner-router`: tells the reverse proxy where each backend is, and holds a request for a
//! backend that is still starting until it is Ready.
//!
//! It runs beside nginx in the proxy's pod. For every request under `/p/<ns>/<name>/`, nginx
//! asks `GET /route/<ns>/<name>` (an `auth_request` subrequest, without the body) and connects
//! to the `X-Spawner-Upstream` address it gets back: the pod's IP and serving port from the
//! backend's status. So a backend is routable the moment its status says Ready — no Service
//! rules for kube-proxy to write first — and a request sent before that waits here:
//!
//! - Ready → 200 with the address, at once;
//! - starting → held until Ready (then 200), Failed or deleted (then 403), at most the backend's
//!   remaining startup time and [`Config::hold_cap`];
//! - unknown → held [`Config::appear_wait`] for a backend created a moment ago to reach the
//!   watch, then 403;
//! - Failed or being deleted → 403.
//!
//! A 403 sends nginx to `GET /explain/<ns>/<name>`, which answers the client directly with the
//! status and JSON error of the backend's state then (404, 502 or 504). The router reads only
//! backends (one cluster-wide watch), never pods or Secrets.

mod verdict;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use http::{HeaderValue, Request, StatusCode};
use hyper::body::Incoming;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

pub use verdict::{Refusal, Verdict, verdict};

use crate::admin_http::{self, Reply};
use crate::backend_cache::{self, BackendCache};
pub use crate::backend_cache::{Feed, watch};

/// The header nginx reads the backend's address from.
pub const UPSTREAM_HEADER: &str = "x-spawner-upstream";
/// Path prefixes nginx calls.
pub const ROUTE_PATH: &str = "/route/";
pub const EXPLAIN_PATH: &str = "/explain/";

/// How long requests may wait.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// The longest a request is held for a starting backend, whatever its startup timeout.
    pub hold_cap: Duration,
    /// How long a request for an unknown backend waits for it to appear in the watch (a client
    /// that created a backend and sent a request at once may be a few milliseconds ahead).
    pub appear_wait: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config { hold_cap: Duration::from_secs(60), appear_wait: Duration::from_secs(1) }
    }
}

/// After its startup timeout, a backend the controller has not yet marked Failed is waited
/// for this much longer, so the client gets the controller's reason rather than a bare timeout.
const FAILED_SLACK: Duration = Duration::from_secs(2);

/// The backends as the watch has them, and what a held request may wait.
#[derive(Clone)]
pub struct Routes {
    cache: BackendCache,
    config: Config,
    metrics: Metrics,
}

/// An empty table and the feed that fills it.
pub fn routes(config: Config) -> (Routes, Feed) {
    let (cache, feed) = backend_cache::cache();
    (Routes::new(cache, config), feed)
}

impl Routes {
    pub fn new(cache: BackendCache, config: Config) -> Routes {
        Routes { cache, config, metrics: Metrics::default() }
    }

    /// Where to send `namespace/name`'s traffic, waiting while it starts; `Err` is the error
    /// to answer with instead.
    pub async fn resolve(&self, namespace: &str, name: &str) -> Result<std::net::SocketAddr, Refusal> {
        let started = tokio::time::Instant::now();
        let cap = started + self.config.hold_cap;
        let mut held = Held::new(&self.metrics.held);
        loop {
            // Registered before looking, so a change between the look and the wait is not lost.
            let notified = self.cache.changed();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let backend = self.cache.get(namespace, name);
            let deadline = match verdict(backend.as_deref(), Timestamp::now()) {
                Verdict::Route(addr) => {
                    self.metrics.observe("routed", started);
                    return Ok(addr);
                }
                Verdict::Refused(refusal) => {
                    self.metrics.observe("refused", started);
                    return Err(refusal);
                }
                // Before the first list, or while the watch is broken, a backend created since
                // looks unknown: wait for the watch.
                Verdict::Missing if !self.cache.is_current() => cap,
                Verdict::Missing => started + self.config.appear_wait,
                Verdict::Starting { remaining } => {
                    let left = remaining.map_or(FAILED_SLACK, |r| r + FAILED_SLACK);
                    (tokio::time::Instant::now() + left).min(cap)
                }
            };
            if tokio::time::Instant::now() >= deadline {
                self.metrics.observe("timeout", started);
                return Err(match backend {
                    None => Refusal::missing(),
                    Some(backend) => Refusal::not_ready_in_time(Some(&backend)),
                });
            }
            held.start();
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// The error for `namespace/name` as it stands, without waiting (nginx asks after a
    /// refused lookup).
    pub fn explain(&self, namespace: &str, name: &str) -> Refusal {
        let backend = self.cache.get(namespace, name);
        match verdict(backend.as_deref(), Timestamp::now()) {
            Verdict::Refused(refusal) => refusal,
            Verdict::Missing => Refusal::missing(),
            Verdict::Starting { .. } => Refusal::not_ready_in_time(backend.as_deref()),
            // Ready between the lookup and this call: the client's retry will be routed.
            Verdict::Route(_) => Refusal {
                status: StatusCode::SERVICE_UNAVAILABLE,
                error: "backend became ready; retry",
                phase: None,
                reason: None,
                message: None,
            },
        }
    }

    /// Answers nginx's lookups (`/route/..`, `/explain/..`).
    pub async fn respond(self, request: Request<Incoming>) -> Reply {
        let path = request.uri().path();
        let (explain, rest) = if let Some(rest) = path.strip_prefix(ROUTE_PATH) {
            (false, rest)
        } else if let Some(rest) = path.strip_prefix(EXPLAIN_PATH) {
            (true, rest)
        } else {
            return admin_http::text(StatusCode::NOT_FOUND, "not found\n");
        };
        let Some((namespace, name)) = rest.split_once('/').filter(|(ns, name)| !ns.is_empty() && !name.is_empty())
        else {
            return admin_http::text(StatusCode::BAD_REQUEST, "expected /route/<namespace>/<name>\n");
        };
        if explain {
            let refusal = self.explain(namespace, name);
            return admin_http::json(refusal.status, &refusal.body(namespace, name));
        }
        match self.resolve(namespace, name).await {
            Ok(addr) => {
                let mut reply = admin_http::text(StatusCode::OK, "");
                if let Ok(value) = HeaderValue::from_str(&addr.to_string()) {
                    reply.headers_mut().insert(UPSTREAM_HEADER, value);
                }
                reply
            }
            // nginx's auth_request passes only 2xx, 401 and 403 on; the explanation follows.
            Err(_) => admin_http::text(StatusCode::FORBIDDEN, ""),
        }
    }

    /// Lookups waiting now.
    pub fn held(&self) -> i64 {
        self.metrics.held.get()
    }

    /// Whether the first list of backends is in.
    pub fn is_synced(&self) -> bool {
        self.cache.is_synced()
    }

    pub fn register_metrics(&self, registry: &mut Registry) {
        self.metrics.register(registry);
    }
}

/// Counts a lookup in the `held` gauge from its first wait until it is answered (or dropped,
/// when nginx gives up on it).
struct Held<'a> {
    gauge: &'a Gauge,
    counted: bool,
}

impl<'a> Held<'a> {
    fn new(gauge: &'a Gauge) -> Self {
        Held { gauge, counted: false }
    }

    fn start(&mut self) {
        if !self.counted {
            self.gauge.inc();
            self.counted = true;
        }
    }

    fn done(&mut self) {
        if self.counted {
            self.gauge.dec();
            self.counted = false;
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.done();
    }
}

/// The router's Prometheus metrics.
#[derive(Clone)]
struct Metrics {
    lookups: Family<Vec<(&'static str, &'static str)>, Counter>,
    wait: Histogram,
    held: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        // 100 µs .. ~100 s: from a Ready backend's lookup to a hold of a whole startup.
        Metrics {
            lookups: Family::default(),
            wait: Histogram::new(exponential_buckets(0.0001, 2.0, 21)),
            held: Gauge::default(),
        }
    }
}

impl Metrics {
    fn observe(&self, result: &'static str, started: tokio::time::Instant) {
        self.lookups.get_or_create(&vec![("result", result)]).inc();
        self.wait.observe(started.elapsed().as_secs_f64());
    }

    fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("spawner_router");
        r.register("lookups", "Route lookups answered, by result (routed, refused, timeout)", self.lookups.clone());
        r.register("lookup_wait_seconds", "Time a route lookup was held before its answer", self.wait.clone());
        r.register("lookups_held", "Route lookups waiting now (for a backend to start or appear)", self.held.clone());
    }
}

/// Answers nginx's lookups on `listener` until `stop`.
pub async fn serve_lookups(listener: tokio::net::TcpListener, routes: Routes, stop: CancellationToken) {
    admin_http::serve_async(listener, stop, move |request| routes.clone().respond(request)).await;
}

/// Why the router could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("cannot reach the Kubernetes API")]
    Client(#[source] kube::Error),
}

/// Where the router listens and what it watches.
#[derive(Clone, Debug)]
pub struct Options {
    /// nginx's lookups (loopback in the proxy's pod: only nginx asks).
    pub route_addr: std::net::SocketAddr,
    /// /metrics, /healthz and /readyz (for Prometheus and the kubelet).
    pub metrics_addr: std::net::SocketAddr,
    /// Only this namespace's backends (tests); default all.
    pub namespace: Option<String>,
    pub config: Config,
}

/// Runs the router until `stop`: the watch, the lookups and the metrics port.
/// Boxed: see the crate docs, "Boxed entry points".
pub fn run(options: Options, stop: CancellationToken) -> BoxFuture<'static, Result<(), Error>> {
    Box::pin(running(options, stop))
}

async fn running(options: Options, stop: CancellationToken) -> Result<(), Error> {
    let bind =
        |addr| async move { tokio::net::TcpListener::bind(addr).await.map_err(|source| Error::Bind { addr, source }) };
    let route_listener = bind(options.route_addr).await?;
    let metrics_listener = bind(options.metrics_addr).await?;
    let client = Client::try_default().await.map_err(Error::Client)?;
    let (routes, feed) = routes(options.config);
    let mut registry = Registry::default();
    routes.register_metrics(&mut registry);
    let registry = Arc::new(registry);
    tracing::info!(route = %options.route_addr, metrics = %options.metrics_addr, "serving route lookups");

    let watching = watch(client, options.namespace.as_deref(), feed, stop.clone());
    let lookups = serve_lookups(route_listener, routes.clone(), stop.clone());
    let admin = admin_http::serve(metrics_listener, stop.clone(), move |request: &Request<Incoming>| {
        match request.uri().path() {
            "/metrics" => admin_http::openmetrics(&registry),
            "/healthz" => admin_http::text(StatusCode::OK, "ok\n"),
            // Not ready (and out of the proxy Service) until the first list is in: before that
            // every backend would look unknown.
            "/readyz" if routes.is_synced() => admin_http::text(StatusCode::OK, "ok\n"),
            "/readyz" => admin_http::text(StatusCode::SERVICE_UNAVAILABLE, "backends not listed yet\n"),
            _ => admin_http::text(StatusCode::NOT_FOUND, "not found\n"),
        }
    });
    tokio::join!(watching, lookups, admin);
    Ok(())
}
