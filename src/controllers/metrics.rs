//! The controller's Prometheus metrics (served on `/metrics`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::crd::Phase;

type Labels = Vec<(&'static str, &'static str)>;

/// Every metric the controller exports.
#[derive(Clone)]
pub struct Metrics {
    pub reconciles: Counter,
    pub reconcile_errors: Family<Labels, Counter>,
    pub reconcile_duration: Histogram,
    pub create_to_ready: Histogram,
    pub backends: Family<Labels, Gauge>,
    pub leader: Gauge,
    pub claim_duration: Histogram,
    pub pool_empty: Counter,
    pub warm_pods: Family<Labels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            reconciles: Counter::default(),
            reconcile_errors: Family::default(),
            // 1 ms .. ~16 s.
            reconcile_duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            // 100 ms .. ~7 min: image pulls make the tail long.
            create_to_ready: Histogram::new(exponential_buckets(0.1, 2.0, 13)),
            backends: Family::default(),
            leader: Gauge::default(),
            // 1 ms .. ~4 s: a patch, one request to the sidecar, a Secret, a patch.
            claim_duration: Histogram::new(exponential_buckets(0.001, 2.0, 13)),
            pool_empty: Counter::default(),
            warm_pods: Family::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric under the `spawner_controller` prefix.
    pub fn register(self, registry: &mut Registry) -> Arc<Self> {
        let r = registry.sub_registry_with_prefix("spawner_controller");
        r.register("reconciles", "Reconciliations run", self.reconciles.clone());
        r.register("reconcile_errors", "Reconciliations that failed, by error kind", self.reconcile_errors.clone());
        r.register("reconcile_duration_seconds", "Time spent in one reconciliation", self.reconcile_duration.clone());
        r.register(
            "create_to_ready_seconds",
            "Time from a backend's creation to its first Ready (second precision: API timestamps)",
            self.create_to_ready.clone(),
        );
        r.register("backends", "Backends known to the controller, by phase", self.backends.clone());
        r.register("leader", "Whether this replica holds the leader Lease (1) or stands by (0)", self.leader.clone());
        r.register(
            "claim_duration_seconds",
            "Time to take a warm pod and hand it its backend's token",
            self.claim_duration.clone(),
        );
        r.register("pool_empty", "Backends of a pool that found no warm pod and started cold", self.pool_empty.clone());
        r.register("warm_pods", "Warm pods of every pool, Ready or starting", self.warm_pods.clone());
        Arc::new(self)
    }

    /// Counts a reconciliation and measures it until the guard drops.
    pub fn reconcile_started(&self) -> ReconcileTimer<'_> {
        self.reconciles.inc();
        ReconcileTimer { histogram: &self.reconcile_duration, start: Instant::now() }
    }

    pub fn reconcile_failed(&self, kind: &'static str) {
        self.reconcile_errors.get_or_create(&vec![("error", kind)]).inc();
    }

    pub fn backend_ready(&self, after: Duration) {
        self.create_to_ready.observe(after.as_secs_f64());
    }

    /// Sets the per-phase gauge from a count of backends (phase `None`: not reconciled yet).
    pub fn set_backends(&self, phases: impl IntoIterator<Item = Option<Phase>>) {
        let mut counts = [0i64; Phase::ALL.len() + 1];
        for phase in phases {
            let i = phase.map_or(Phase::ALL.len(), |p| Phase::ALL.iter().position(|q| *q == p).unwrap_or(0));
            counts[i] += 1;
        }
        for (i, phase) in Phase::ALL.iter().enumerate() {
            self.backends.get_or_create(&vec![("phase", phase.as_str())]).set(counts[i]);
        }
        self.backends.get_or_create(&vec![("phase", "Unknown")]).set(counts[Phase::ALL.len()]);
    }
}

impl Metrics {
    /// Sets the warm-pod gauges from the pools' statuses.
    pub fn set_warm_pods(&self, ready: i64, starting: i64) {
        self.warm_pods.get_or_create(&vec![("state", "ready")]).set(ready);
        self.warm_pods.get_or_create(&vec![("state", "starting")]).set(starting);
    }
}

/// Observes the reconcile duration on drop (so early returns and errors are measured too).
pub struct ReconcileTimer<'a> {
    histogram: &'a Histogram,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metrics_encode_with_the_spawner_controller_prefix() {
        let mut registry = Registry::default();
        let metrics = Metrics::default().register(&mut registry);
        drop(metrics.reconcile_started());
        metrics.reconcile_failed("kube");
        metrics.set_backends([Some(Phase::Ready), Some(Phase::Ready), None]);
        metrics.set_warm_pods(3, 1);
        metrics.claim_duration.observe(0.004);
        metrics.pool_empty.inc();
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(out.contains("spawner_controller_reconciles_total 1"), "{out}");
        assert!(out.contains("spawner_controller_reconcile_errors_total{error=\"kube\"} 1"), "{out}");
        assert!(out.contains("spawner_controller_backends{phase=\"Ready\"} 2"), "{out}");
        assert!(out.contains("spawner_controller_backends{phase=\"Unknown\"} 1"), "{out}");
        assert!(out.contains("spawner_controller_reconcile_duration_seconds_count 1"), "{out}");
        assert!(out.contains("spawner_controller_warm_pods{state=\"ready\"} 3"), "{out}");
        assert!(out.contains("spawner_controller_claim_duration_seconds_count 1"), "{out}");
        assert!(out.contains("spawner_controller_pool_empty_total 1"), "{out}");
    }
}
