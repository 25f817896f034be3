//! Counting the API server's writes (`apiserver_request_total`), for the benchmarks' writes per
//! object: the reference's and Spawner's, from the same counters.

use std::collections::BTreeMap;

use kube::Client;

/// Writes the API server has served so far (`apiserver_request_total`), by resource.
pub async fn api_writes(client: &Client) -> BTreeMap<String, f64> {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(request).await.expect("the API server's /metrics");
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        let Some((labels, value)) = line.rsplit_once(' ') else { continue };
        let label = |name: &str| {
            labels.split(&format!("{name}=\"")).nth(1).and_then(|rest| rest.split('"').next()).unwrap_or("")
        };
        if !matches!(label("verb"), "POST" | "PUT" | "PATCH" | "APPLY" | "DELETE" | "DELETECOLLECTION") {
            continue;
        }
        let resource = match label("subresource") {
            "" => label("resource").to_string(),
            sub => format!("{}/{sub}", label("resource")),
        };
        *out.entry(resource).or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
    }
    out
}

/// Writes between two [`api_writes`] snapshots, per object: the total and the largest parts.
pub fn writes_per(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, objects: usize) -> (f64, String) {
    let mut parts: Vec<(String, f64)> = after
        .iter()
        .map(|(r, v)| (r.clone(), (v - before.get(r).copied().unwrap_or(0.0)) / objects as f64))
        .filter(|(_, v)| *v >= 0.05)
        .collect();
    parts.sort_by(|a, b| b.1.total_cmp(&a.1));
    // An empty sum of floats is -0.0, printed "-0.00"; adding 0.0 makes it 0.0.
    let total = parts.iter().map(|(_, v)| v).sum::<f64>() + 0.0;
    let detail = parts.iter().map(|(r, v)| format!("{r} {v:.2}")).collect::<Vec<_>>().join(", ");
    (total, detail)
}
