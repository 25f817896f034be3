//! `/metrics`, `/healthz` and `/readyz` for the kubelet and Prometheus.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use kube::runtime::reflector::Store;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admin_http::{self, Reply, text};
use crate::controllers::metrics::Metrics;
use crate::crd::{SessionLivedBackend, SessionLivedBackendPool};

/// What the health endpoints report.
#[derive(Default)]
pub struct Health {
    ready: AtomicBool,
    /// The controller's cache of backends, once this replica leads (for the per-phase gauge).
    store: Mutex<Option<Store<SessionLivedBackend>>>,
    /// The pools' cache (for the warm-pod gauges).
    pools: Mutex<Option<Store<SessionLivedBackendPool>>>,
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub fn set_store(&self, store: Store<SessionLivedBackend>) {
        *self.store.lock().unwrap_or_else(|e| e.into_inner()) = Some(store);
    }

    pub fn set_pools(&self, pools: Store<SessionLivedBackendPool>) {
        *self.pools.lock().unwrap_or_else(|e| e.into_inner()) = Some(pools);
    }

    /// Warm pods Ready and starting, over every pool.
    fn warm_pods(&self) -> Option<(i64, i64)> {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
        let statuses: Vec<_> = pools.state().iter().filter_map(|p| p.status.clone()).collect();
        Some(statuses.iter().fold((0, 0), |(r, s), st| (r + i64::from(st.ready), s + i64::from(st.starting))))
    }

    fn phases(&self) -> Option<Vec<Option<crate::crd::Phase>>> {
        let store = self.store.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
        Some(store.state().iter().map(|b| b.status.as_ref().and_then(|s| s.phase)).collect())
    }
}

/// Serves until `stop` is cancelled, then lets open connections finish.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    admin_http::serve(listener, stop, move |req: &Request<Incoming>| respond(req, &registry, &health, &metrics)).await;
}

fn respond(req: &Request<Incoming>, registry: &Registry, health: &Health, metrics: &Metrics) -> Reply {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if health.is_ready() => text(StatusCode::OK, "ok\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        "/metrics" => {
            if let Some(phases) = health.phases() {
                metrics.set_backends(phases);
            }
            if let Some((ready, starting)) = health.warm_pods() {
                metrics.set_warm_pods(ready, starting);
            }
            admin_http::openmetrics(registry)
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}
