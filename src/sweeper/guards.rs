//! Small pieces every sweeper task shares: guards that undo on drop (a gauge count, a task).

use tokio::task::JoinHandle;

/// Aborts the task when dropped (a task tied to the life of its owner).
pub(crate) struct AbortOnDrop(pub(crate) JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps a gauge incremented while alive, so an aborted task cannot leak a count.
pub(crate) struct GaugeGuard(prometheus_client::metrics::gauge::Gauge);

impl GaugeGuard {
    pub(crate) fn inc(gauge: &prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
