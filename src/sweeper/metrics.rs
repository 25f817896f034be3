//! Prometheus metrics of the sweeper, and the small HTTP server for `/metrics` and `/healthz`.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admin_http::{self, text};

/// Errors of the metrics server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to listen for /metrics on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Why a stream was given up (and will be retried).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum StreamErrorKind {
    /// TCP connect, HTTP handshake or response headers failed or timed out.
    Connect,
    /// The sidecar answered something other than `200 text/event-stream`.
    Status,
    /// No valid event for three heartbeat periods.
    HeartbeatTimeout,
    /// The stream ended or failed while reading.
    Body,
    /// An event that is not a valid `IdleState` (skipped, not a reconnect).
    MalformedEvent,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamErrorLabels {
    kind: StreamErrorKind,
}

/// What became of a sweep attempt.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum SweepResult {
    /// The backend was deleted.
    Swept,
    /// The backend was already gone or replaced by a new one of the same name.
    AlreadyGone,
    /// The API call failed; it is retried.
    Error,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SweepLabels {
    result: SweepResult,
}

/// The sweeper's metrics. Cheap to clone: every field is a shared handle.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Backends with a follower (pods on this node that have a sidecar and an IP).
    pub followed_backends: Gauge,
    /// Event streams currently connected.
    pub connected_streams: Gauge,
    stream_errors: Family<StreamErrorLabels, Counter>,
    sweeps: Family<SweepLabels, Counter>,
    /// How long after its deadline each sweep started, in seconds.
    pub sweep_lateness: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("spawner_sweeper");
        let followed_backends = Gauge::default();
        let connected_streams = Gauge::default();
        let stream_errors = Family::<StreamErrorLabels, Counter>::default();
        let sweeps = Family::<SweepLabels, Counter>::default();
        let sweep_lateness = Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        registry.register(
            "followed_backends",
            "Backends on this node whose sidecar event stream is followed",
            followed_backends.clone(),
        );
        registry.register("connected_streams", "Sidecar event streams currently connected", connected_streams.clone());
        registry.register(
            "stream_errors",
            "Event stream failures by kind (each is retried; none leads to a sweep)",
            stream_errors.clone(),
        );
        registry.register("sweeps", "Sweep attempts by result", sweeps.clone());
        registry.register(
            "sweep_lateness_seconds",
            "Time between a backend's idle deadline and the start of its sweep",
            sweep_lateness.clone(),
        );
        Self {
            registry: Arc::new(registry),
            followed_backends,
            connected_streams,
            stream_errors,
            sweeps,
            sweep_lateness,
        }
    }

    pub fn stream_error(&self, kind: StreamErrorKind) {
        self.stream_errors.get_or_create(&StreamErrorLabels { kind }).inc();
    }

    pub fn sweep(&self, result: SweepResult) {
        self.sweeps.get_or_create(&SweepLabels { result }).inc();
    }
}

/// Binds the metrics port (separately from serving, so a taken port fails at startup).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr).await.map_err(|source| Error::Bind { addr, source })
}

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown`, then lets open requests
/// finish.
pub async fn serve(listener: TcpListener, metrics: Metrics, shutdown: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /metrics and /healthz");
    }
    admin_http::serve(listener, shutdown, move |req: &Request<Incoming>| match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => admin_http::openmetrics(&metrics.registry),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    })
    .await;
}
