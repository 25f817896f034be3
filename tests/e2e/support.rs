//! The end-to-end tests' harness: tests/support's test namespace, backends, garbage collection,
//! netcheck pods and WebSocket messages, and what only these tests need: the two schedulable
//! nodes of the kind cluster, and pods' readiness.

#[path = "../support/backends.rs"]
mod backends;
#[path = "../support/children.rs"]
mod children;
#[path = "../support/env.rs"]
mod env;
#[path = "../support/netcheck.rs"]
pub mod netcheck;
#[path = "../support/websocket.rs"]
mod websocket;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::wait::Condition;

pub use backends::*;
pub use children::*;
pub use env::*;
pub use websocket::*;

/// The schedulable nodes (no NoSchedule taint), sorted by name; fails unless there are two.
pub async fn two_nodes(env: &TestEnv) -> [String; 2] {
    let nodes =
        Api::<k8s_openapi::api::core::v1::Node>::all(env.client.clone()).list(&Default::default()).await.unwrap();
    let mut names: Vec<String> = nodes
        .items
        .iter()
        .filter(|n| {
            let taints = n.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
            !taints.iter().any(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        })
        .map(kube::ResourceExt::name_any)
        .collect();
    names.sort();
    assert!(
        names.len() >= 2,
        "these tests need two schedulable nodes (run them on kind: SPAWNER_TEST_CLUSTER=kind); found {names:?}"
    );
    [names[0].clone(), names[1].clone()]
}

/// The pod's Ready condition is True.
pub fn pod_ready() -> impl Condition<Pod> {
    |pod: Option<&Pod>| {
        pod.and_then(|p| p.status.as_ref())
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    }
}

/// Where the deployed proxy is reached: the controller's `--base-url` (the start of every
/// backend's status.url), for a request sent before the backend has a status.
pub async fn proxy_base_url(client: &kube::Client) -> String {
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), spawner::names::SYSTEM_NAMESPACE);
    let controller = deployments.get(spawner::names::CONTROLLER).await.expect("Spawner's controller is deployed");
    let args = controller.spec.and_then(|s| s.template.spec).map(|s| s.containers[0].args.clone().unwrap_or_default());
    args.unwrap_or_default()
        .iter()
        .find_map(|a| a.strip_prefix("--base-url=").map(str::to_owned))
        .expect("the controller has --base-url")
}

/// A pool of drop-four pods: the demo backend's pod-shaping fields, `size` warm, auth `auth`
/// (`Token` or `None`).
pub fn demo_pool(name: &str, size: i32, auth: &str) -> spawner::crd::SessionLivedBackendPool {
    let mut spec = serde_json::to_value(backends::demo_backend(name, 300).spec).expect("a spec serializes");
    spec["size"] = size.into();
    spec["auth"] = serde_json::json!({"mode": auth});
    serde_json::from_value(serde_json::json!({
        "apiVersion": "spawner.dev/v1", "kind": "SessionLivedBackendPool", "metadata": {"name": name}, "spec": spec,
    }))
    .expect("a valid pool")
}

/// Waits until `check` holds, asking again every 200 ms; fails the test after `timeout`, saying
/// `what` was expected. For conditions no watch reports (an HTTP server's answer).
pub async fn eventually<F, Fut>(timeout: std::time::Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "not within {timeout:?}: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
