//! How the CLI prints backends: kubectl-like tables and descriptions, or JSON/YAML.

use jiff::Timestamp;
use kube::ResourceExt;
use serde::Serialize;

use super::error::Error;
use crate::client::{condition, phase_of};
use crate::crd::SessionLivedBackend;

/// `--output`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    #[default]
    Text,
    Json,
    Yaml,
}

/// Serializes `value` as JSON or YAML (for `Format::Text` callers print their own text).
pub fn structured<T: Serialize>(format: Format, value: &T) -> Result<String, Error> {
    match format {
        Format::Json => serde_json::to_string_pretty(value).map(|s| s + "\n").map_err(|e| Error::Output(e.to_string())),
        Format::Yaml | Format::Text => serde_yaml::to_string(value).map_err(|e| Error::Output(e.to_string())),
    }
}

/// How a URL is handed to scripts in JSON/YAML.
#[derive(Serialize)]
pub struct Access<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub phase: String,
    /// The URL to open, with the access token.
    pub url: &'a str,
}

/// A kubectl-style table with the columns of `kubectl get slab`: NAME PHASE READY REASON URL
/// AGE, plus NAMESPACE first when listing several.
pub fn table(backends: &[SessionLivedBackend], with_namespace: bool, now: Timestamp) -> String {
    let mut rows = vec![
        [if with_namespace { "NAMESPACE" } else { "" }, "NAME", "PHASE", "READY", "REASON", "URL", "AGE"]
            .map(str::to_owned),
    ];
    for backend in backends {
        let status = backend.status.as_ref();
        rows.push([
            if with_namespace { backend.namespace().unwrap_or_default() } else { String::new() },
            backend.name_any(),
            phase_of(backend).into(),
            ready_of(backend),
            status.and_then(|s| s.reason.clone()).unwrap_or_else(|| "<none>".into()),
            status.and_then(|s| s.url.clone()).unwrap_or_else(|| "<none>".into()),
            age(backend, now),
        ]);
    }
    let columns = if with_namespace { 0..7 } else { 1..7 };
    let widths: Vec<usize> =
        columns.clone().map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = columns
            .clone()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, &w))| if i + 1 == widths.len() { row[c].clone() } else { format!("{:<w$}", row[c]) })
            .collect();
        out.push_str(cells.join("   ").trim_end());
        out.push('\n');
    }
    out
}

/// `kubectl describe`-like text for one backend.
pub fn describe(backend: &SessionLivedBackend, now: Timestamp) -> String {
    let status = backend.status.clone().unwrap_or_default();
    let container = backend.spec.template.as_ref().and_then(|t| t.containers.first());
    let mut lines = vec![
        ("Name", backend.name_any()),
        ("Namespace", backend.namespace().unwrap_or_default()),
        ("Phase", phase_of(backend).into()),
        ("Ready", ready_of(backend)),
    ];
    // Why it is not Ready, right under Ready: that is where people look first.
    if let Some(reason) = status.reason {
        lines.push(("Reason", reason));
        lines.push(("Message", status.message.unwrap_or_default()));
    }
    lines.push(("URL", status.url.unwrap_or_else(|| "<none>".into())));
    match &backend.spec.pool_ref {
        // The pod-shaping fields are the pool's: `kubectl get slabpool NAME -o yaml` has them.
        Some(pool) => lines.push(("Pool", pool.name.clone())),
        None => lines.extend([
            ("Image", container.and_then(|c| c.image.clone()).unwrap_or_else(|| "<none>".into())),
            ("HTTP port", backend.spec.http_port.to_string()),
            ("Grace period", format!("{}s", backend.spec.grace_period_seconds)),
            ("Auth", format!("{:?}", backend.spec.shape.auth.mode)),
            ("Egress", backend.spec.shape.egress.as_str().to_string()),
            ("Service", if backend.spec.shape.service.enabled { "ClusterIP" } else { "none" }.to_string()),
        ]),
    }
    lines.extend([
        ("Startup timeout", format!("{}s", backend.spec.effective_startup_timeout_seconds())),
        ("Node", status.node_name.unwrap_or_else(|| "<none>".into())),
        ("Pod IP", status.pod_ip.unwrap_or_else(|| "<none>".into())),
        ("Age", age(backend, now)),
    ]);
    if let Some(max) = backend.spec.max_lifetime_seconds {
        lines.push(("Max lifetime", format!("{max}s")));
    }
    let mut out: String = lines.iter().map(|(k, v)| format!("{:<17}{v}\n", format!("{k}:"))).collect();
    if !status.conditions.is_empty() {
        out.push_str("Conditions:\n");
        for c in &status.conditions {
            out.push_str(&format!("  {:<10}{:<7}{}: {}\n", c.type_, c.status, c.reason, c.message));
        }
    }
    out
}

fn ready_of(backend: &SessionLivedBackend) -> String {
    condition(backend, "Ready").map(|c| c.status.clone()).unwrap_or_else(|| "Unknown".into())
}

fn age(backend: &SessionLivedBackend, now: Timestamp) -> String {
    match &backend.metadata.creation_timestamp {
        Some(created) => short_duration(now.duration_since(created.0).as_secs().max(0) as u64),
        None => "<unknown>".into(),
    }
}

/// kubectl's compact ages: 45s, 12m, 3h, 2d.
pub fn short_duration(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{BackendRequest, Naming};
    use crate::crd::{Phase, SessionLivedBackendStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn backend(
        name: &str,
        phase: Option<Phase>,
        url: Option<&str>,
        age_seconds: i64,
        now: Timestamp,
    ) -> SessionLivedBackend {
        let mut b = BackendRequest::new(Naming::Name(name.into()), "img").to_backend();
        b.metadata.namespace = Some("team-a".into());
        b.metadata.creation_timestamp = Some(Time(now - jiff::SignedDuration::from_secs(age_seconds)));
        b.status = Some(SessionLivedBackendStatus { phase, url: url.map(str::to_owned), ..Default::default() });
        b
    }

    #[test]
    fn the_table_lines_up_like_kubectl() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let backends = [
            backend(
                "drop-four-x7k2p",
                Some(Phase::Ready),
                Some("http://127.0.0.1:30080/p/team-a/drop-four-x7k2p/"),
                75,
                now,
            ),
            unschedulable("b", 4000, now),
        ];
        let expected = "\
NAME              PHASE     READY     REASON          URL                                                AGE
drop-four-x7k2p   Ready     Unknown   <none>          http://127.0.0.1:30080/p/team-a/drop-four-x7k2p/   75s
b                 Pending   Unknown   Unschedulable   <none>                                             66m
";
        assert_eq!(table(&backends, false, now), expected);
        assert!(table(&backends, true, now).starts_with("NAMESPACE   NAME"));
    }

    fn unschedulable(name: &str, age_seconds: i64, now: Timestamp) -> SessionLivedBackend {
        let mut b = backend(name, Some(Phase::Pending), None, age_seconds, now);
        let status = b.status.as_mut().unwrap();
        status.reason = Some("Unschedulable".into());
        status.message = Some("0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector".into());
        b
    }

    #[test]
    fn a_description_says_why_the_backend_is_not_ready_under_ready() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let described = describe(&unschedulable("b", 10, now), now);
        let lines: Vec<&str> = described.lines().collect();
        assert_eq!(
            lines[3..6],
            [
                "Ready:           Unknown",
                "Reason:          Unschedulable",
                "Message:         0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector"
            ]
        );
        assert!(described.contains("Startup timeout: 300s\n"), "{described}");
        let ready = backend("r", Some(Phase::Ready), Some("http://x/"), 10, now);
        assert!(!describe(&ready, now).contains("Reason:"), "nothing to explain once Ready");
    }

    #[test]
    fn ages_are_compact() {
        assert_eq!(short_duration(5), "5s");
        assert_eq!(short_duration(600), "10m");
        assert_eq!(short_duration(3 * 3600), "3h");
        assert_eq!(short_duration(3 * 86400), "3d");
    }
}
