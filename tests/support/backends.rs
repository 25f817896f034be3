//! Backends on the test cluster: a test's namespace with a client ([`TestEnv`]), waiting for a
//! state, the drop-four demo as a backend made Ready, and the first WebSocket to it through the
//! proxy.

use std::time::Duration;

use kube::api::{Api, PostParams};
use kube::runtime::wait::{Condition, await_condition};
use kube::{Client, Resource};

use super::TestNamespace;

/// A namespace of the test's own, deleted when the env drops, and a client for the test cluster.
pub struct TestEnv {
    pub client: Client,
    pub namespace: String,
    _deleted_on_drop: TestNamespace,
}

impl TestEnv {
    /// Creates a fresh namespace named after the test (plus a random suffix).
    pub async fn new(test: &str) -> TestEnv {
        let (namespace, client) = TestNamespace::new(test).await;
        TestEnv { client, namespace: namespace.name.clone(), _deleted_on_drop: namespace }
    }

    /// An Api for a namespaced resource in the test's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }
}

/// Waits until `cond` holds for the named object, failing the test after `timeout`.
pub async fn wait_for<K>(api: &Api<K>, name: &str, cond: impl Condition<K>, timeout: Duration) -> Option<K>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    match tokio::time::timeout(timeout, await_condition(api.clone(), name, cond)).await {
        Ok(Ok(obj)) => obj,
        Ok(Err(e)) => panic!("watching {name}: {e}"),
        Err(_) => panic!("{name} did not reach the expected state within {timeout:?}"),
    }
}

/// Image pulls, scheduling and probes on a small shared machine.
pub const READY_WITHIN: Duration = Duration::from_secs(180);

/// A drop-four demo backend without auth, swept after `grace_seconds` idle.
pub fn demo_backend(name: &str, grace_seconds: u64) -> spawner::crd::SessionLivedBackend {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "spawner.dev/v1",
        "kind": "SessionLivedBackend",
        "metadata": { "name": name },
        "spec": {
            "gracePeriodSeconds": grace_seconds,
            "auth": { "mode": "None" },
            "template": {
                "containers": [{ "name": "application", "image": spawner::names::image("demo-drop-four") }]
            }
        }
    }))
    .expect("a valid backend")
}

/// Creates `backend` and waits (up to [`READY_WITHIN`]) until its Ready condition is True;
/// returns it as it is then (with its UID and URL).
pub async fn create_ready(
    api: &Api<spawner::crd::SessionLivedBackend>,
    backend: &spawner::crd::SessionLivedBackend,
) -> spawner::crd::SessionLivedBackend {
    use kube::ResourceExt;
    api.create(&PostParams::default(), backend).await.expect("creating the backend");
    let ready = |b: Option<&spawner::crd::SessionLivedBackend>| {
        b.and_then(|b| b.status.as_ref())
            .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    };
    wait_for(api, &backend.name_any(), ready, READY_WITHIN).await.expect("the backend exists")
}

/// A WebSocket through the reverse proxy.
pub type ProxiedWebSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the first WebSocket to a backend that just became Ready, once: Ready means routable
/// (the proxy connects to the pod's address from the backend's status), so any failure fails
/// the test.
pub async fn first_websocket(url: &str) -> ProxiedWebSocket {
    match tokio_tungstenite::connect_async(url).await {
        Ok((socket, _)) => socket,
        Err(e) => panic!("WebSocket through the proxy to {url}: {e}"),
    }
}
