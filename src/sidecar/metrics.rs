//! Prometheus metrics of the sidecar (`GET /metrics` on the admin port). Counters are plain
//! atomics on the hot path; gauges are filled from the state at scrape time.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::state::Snapshot;

#[derive(Debug, Default)]
pub struct Metrics {
    registry: Registry,
    /// Requests forwarded to the app (upgrades included).
    pub forwarded: Counter,
    /// Upgrades the app accepted (101) and the sidecar spliced.
    pub upgrades: Counter,
    /// 502: the app refused, reset or closed before answering.
    pub bad_gateway: Counter,
    /// 504: the app did not answer within the upstream timeout.
    pub gateway_timeout: Counter,
    /// 401: no valid token.
    pub unauthorized: Counter,
    /// 503: the app was not ready yet.
    pub not_ready: Counter,
    connections: Gauge,
    ready: Gauge,
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Self::default();
        let mut r = Registry::with_prefix("spawner_sidecar");
        r.register("forwarded_requests", "Requests forwarded to the app", m.forwarded.clone());
        r.register("upgrades", "Upgraded streams (WebSockets) spliced", m.upgrades.clone());
        r.register("bad_gateway_responses", "502 answers: app refused, reset or closed", m.bad_gateway.clone());
        r.register("gateway_timeout_responses", "504 answers: app too slow to answer", m.gateway_timeout.clone());
        r.register("unauthorized_responses", "401 answers: missing or invalid token", m.unauthorized.clone());
        r.register("not_ready_responses", "503 answers: app not ready", m.not_ready.clone());
        r.register("live_connections", "Open upgraded streams plus in-flight requests", m.connections.clone());
        r.register("app_ready", "1 when the app accepts connections", m.ready.clone());
        m.registry = r;
        m
    }

    /// The text exposition, with the gauges taken from `state`.
    pub fn render(&self, state: &Snapshot) -> String {
        self.connections.set(state.connections as i64);
        self.ready.set(state.ready as i64);
        let mut out = String::with_capacity(2048);
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
