//! Test harness for integration tests against a real Kubernetes cluster.
//!
//! Each test gets a [`TestEnv`]: a kube `Client` and a namespace of its own, deleted when the
//! env drops. If the test panicked, the objects and events of the namespace are printed first.
//!
//! Which cluster (`SPAWNER_TEST_CLUSTER`):
//! - unset or `local`: the local cluster of `cargo xtask cluster`, started if it is not running;
//! - `kind`: the two-node kind cluster `spawner-e2e` of `cargo xtask kind` (its kubeconfig under
//!   `~/.cache/spawner/kind/`), created if it does not exist;
//! - `existing`: the current KUBECONFIG context.
//!
//! When no cluster can be had the test fails with the reason: these tests never pass by skipping.
#![allow(dead_code)] // Each test crate uses a different part of the harness.

pub mod netcheck;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{Condition, await_condition, conditions};
use kube::{Client, Config, Resource};

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Path of the local cluster's admin kubeconfig (`cargo xtask cluster kubeconfig`).
pub fn local_kubeconfig() -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| "/root".into());
    home.join(".cache/spawner/cluster/admin.kubeconfig")
}

/// The kind cluster the tests use with `SPAWNER_TEST_CLUSTER=kind`, and its proxy's host port.
pub const KIND_CLUSTER: &str = "spawner-e2e";
pub const KIND_PROXY_PORT: u16 = 31080;

/// Which cluster the tests run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestCluster {
    Local,
    Kind,
    Existing,
}

pub fn test_cluster() -> TestCluster {
    match std::env::var("SPAWNER_TEST_CLUSTER").as_deref() {
        Ok("existing") => TestCluster::Existing,
        Ok("kind") => TestCluster::Kind,
        Ok("local") | Ok("") | Err(_) => TestCluster::Local,
        Ok(other) => panic!("SPAWNER_TEST_CLUSTER={other}: expected local, kind or existing"),
    }
}

fn kind_kubeconfig() -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| "/root".into());
    home.join(format!(".cache/spawner/kind/{KIND_CLUSTER}.kubeconfig"))
}

/// KUBECONFIG to hand to kubectl and to the binaries the tests start.
pub fn kubeconfig_path() -> PathBuf {
    match test_cluster() {
        TestCluster::Existing => std::env::var_os("KUBECONFIG")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".kube/config")),
        TestCluster::Kind => kind_kubeconfig(),
        TestCluster::Local => local_kubeconfig(),
    }
}

/// Makes sure the test cluster runs, once per test process.
fn ensure_cluster() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let up: Vec<String> = match test_cluster() {
            TestCluster::Existing => return,
            TestCluster::Local => vec!["cluster".into(), "up".into()],
            TestCluster::Kind => ["kind", "up", "--name", KIND_CLUSTER, "--workers", "1", "--host-port"]
                .iter()
                .map(|s| s.to_string())
                .chain([KIND_PROXY_PORT.to_string()])
                .collect(),
        };
        let kubeconfig = kubeconfig_path();
        let healthy = kubeconfig.exists()
            && Command::new("kubectl")
                .args(["get", "--raw", "/readyz"])
                .env("KUBECONFIG", &kubeconfig)
                .output()
                .is_ok_and(|o| o.status.success());
        if healthy {
            return;
        }
        eprintln!(
            "test harness: no cluster answers at {}; starting it with `cargo xtask {}`",
            kubeconfig.display(),
            up.join(" ")
        );
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .arg("xtask")
            .args(&up)
            .current_dir(repo_root())
            .status()
            .expect("running `cargo xtask`");
        assert!(
            status.success(),
            "no cluster for the integration tests: `cargo xtask {}` failed ({status})",
            up.join(" ")
        );
    });
}

/// Client configuration for the test cluster.
pub async fn config() -> Config {
    ensure_cluster();
    if test_cluster() == TestCluster::Existing {
        return Config::infer().await.expect("SPAWNER_TEST_CLUSTER=existing but no usable KUBECONFIG");
    }
    let kubeconfig = Kubeconfig::read_from(kubeconfig_path()).expect("reading the test cluster's kubeconfig");
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("the test cluster's kubeconfig is usable")
}

/// Applies Spawner's namespace and the generated RBAC (config/rbac), once per test process.
pub fn apply_rbac() {
    static APPLIED: OnceLock<()> = OnceLock::new();
    APPLIED.get_or_init(|| {
        for args in [vec!["apply", "-f", "config/default/namespace.yaml"], vec!["apply", "-k", "config/rbac"]] {
            let out = Command::new("kubectl")
                .args(&args)
                .env("KUBECONFIG", kubeconfig_path())
                .current_dir(repo_root())
                .output()
                .expect("running kubectl");
            assert!(out.status.success(), "kubectl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
    });
}

/// A kubeconfig like the test cluster's that impersonates one of Spawner's ServiceAccounts, for
/// running a binary with exactly its generated RBAC; returns its path.
pub fn impersonating_kubeconfig(service_account: &str) -> PathBuf {
    let admin = std::fs::read_to_string(kubeconfig_path()).expect("reading the test kubeconfig");
    let mut config: serde_yaml::Value = serde_yaml::from_str(&admin).unwrap();
    let subject = format!("system:serviceaccount:{}:{service_account}", spawner::names::SYSTEM_NAMESPACE);
    for user in config["users"].as_sequence_mut().expect("kubeconfig users") {
        user["user"]["as"] = serde_yaml::Value::String(subject.clone());
    }
    let path = std::env::temp_dir().join(format!("{service_account}-{}.kubeconfig", std::process::id()));
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    path
}

/// A client that acts as the given ServiceAccount (impersonation), to prove RBAC.
pub async fn client_as_service_account(namespace: &str, name: &str) -> Client {
    let mut config = config().await;
    config.auth_info.impersonate = Some(format!("system:serviceaccount:{namespace}:{name}"));
    Client::try_from(config).expect("impersonating client")
}

/// A namespace of the test's own on a real cluster.
pub struct TestEnv {
    pub client: Client,
    pub namespace: String,
    config: Config,
}

impl TestEnv {
    /// Creates a fresh namespace named after the test (plus a random suffix).
    pub async fn new(test: &str) -> TestEnv {
        let config = config().await;
        let client = Client::try_from(config.clone()).expect("client for the test cluster");
        let suffix: u32 = rand::random::<u32>() % 100_000;
        let base: String =
            test.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
        let namespace = format!("t-{}-{suffix}", base.trim_matches('-').chars().take(40).collect::<String>());
        let ns = Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(namespace.clone()),
                labels: Some([("spawner.dev/test".to_string(), "true".to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("creating test namespace {namespace}: {e}"));
        TestEnv { client, namespace, config }
    }

    /// An Api for a namespaced resource in the test's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Runs kubectl against the test cluster in the test's namespace; returns stdout, panics
    /// with stderr on failure.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = self.kubectl_output(args);
        assert!(out.status.success(), "kubectl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs kubectl and returns its whole output, for tests that expect it to fail.
    pub fn kubectl_output(&self, args: &[&str]) -> std::process::Output {
        Command::new("kubectl")
            .args(args)
            .args(["--namespace", &self.namespace])
            .env("KUBECONFIG", kubeconfig_path())
            .output()
            .expect("running kubectl")
    }

    /// Deletes the namespace and waits until it is gone, so that what it held no longer loads
    /// the API server (a benchmark's next phase must not pay for this one's cleanup).
    pub async fn delete_and_wait(self, timeout: Duration) {
        let namespaces = Api::<Namespace>::all(self.client.clone());
        let uid = namespaces.get(&self.namespace).await.expect("the test namespace").metadata.uid.unwrap_or_default();
        namespaces.delete(&self.namespace, &DeleteParams::background()).await.expect("deleting the test namespace");
        wait_for(&namespaces, &self.namespace, conditions::is_deleted(&uid), timeout).await;
    }

    fn dump(&self) {
        let dump = Command::new("kubectl")
            .args(["get", "all,sessionlivedbackends,secrets,events", "-o", "wide", "--namespace", &self.namespace])
            .env("KUBECONFIG", kubeconfig_path())
            .output();
        if let Ok(out) = dump {
            eprintln!(
                "--- objects and events in {} ---\n{}{}",
                self.namespace,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if let Ok(out) = Command::new("kubectl")
            .args(["get", "sessionlivedbackends,pods", "-o", "yaml", "--namespace", &self.namespace])
            .env("KUBECONFIG", kubeconfig_path())
            .output()
        {
            eprintln!("{}", String::from_utf8_lossy(&out.stdout));
        }
        // A pod that stays Pending is most often the node's doing (a taint, a pressure condition).
        if let Ok(out) = Command::new("kubectl")
            .args(["get", "nodes", "-o", NODE_COLUMNS])
            .env("KUBECONFIG", kubeconfig_path())
            .output()
        {
            eprintln!(
                "--- nodes ---\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Each node's taints and the conditions that are True (Ready, or a pressure).
const NODE_COLUMNS: &str = "custom-columns=NODE:.metadata.name,TAINTS:.spec.taints[*].key,\
TRUE-CONDITIONS:.status.conditions[?(@.status==\"True\")].type";

impl Drop for TestEnv {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump();
        }
        // Drop cannot await, and the test's runtime may be shutting down: delete the namespace
        // from a runtime of our own (deletion is asynchronous on the server; we do not wait).
        let config = self.config.clone();
        let namespace = self.namespace.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let client = Client::try_from(config).unwrap();
                let _ = Api::<Namespace>::all(client).delete(&namespace, &DeleteParams::background()).await;
            });
        })
        .join();
    }
}

/// Installs (or updates) the generated CRDs and waits until they are Established.
pub async fn install_crd(client: &Client) {
    for file in ["sessionlivedbackends.spawner.dev.yaml", "sessionlivedbackendpools.spawner.dev.yaml"] {
        let path = repo_root().join("config/crd").join(file);
        let crd: CustomResourceDefinition =
            serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).expect("generated CRD parses");
        let api = Api::<CustomResourceDefinition>::all(client.clone());
        let name = crd.metadata.name.clone().unwrap();
        api.patch(&name, &PatchParams::apply("spawner-tests").force(), &Patch::Apply(&crd))
            .await
            .expect("applying the generated CRD");
        wait_for(&api, &name, conditions::is_crd_established(), Duration::from_secs(30)).await;
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

/// Waits until the backend's Pod, Service and token Secret (all named after it) are gone —
/// garbage collection after the backend's deletion — failing the test after `timeout`.
pub async fn wait_for_children_gone(env: &TestEnv, backend: &str, timeout: Duration) {
    use k8s_openapi::api::core::v1::{Pod, Secret, Service};
    fn gone<K>(object: Option<&K>) -> bool {
        object.is_none()
    }
    let (pods, services, secrets) = (env.api::<Pod>(), env.api::<Service>(), env.api::<Secret>());
    tokio::join!(
        wait_for(&pods, backend, gone::<Pod>, timeout),
        wait_for(&services, backend, gone::<Service>, timeout),
        wait_for(&secrets, backend, gone::<Secret>, timeout),
    );
}

/// A WebSocket through the reverse proxy, opened while the route to a backend may still be
/// settling.
pub type ProxiedWebSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the first WebSocket to a backend that just became Ready. Ready means the pod answers;
/// the cluster's view of its Service can trail it by a moment — cluster DNS (nginx answers 404,
/// and remembers the miss for its resolver's 5 s) or kube-proxy's forwarding rules (502 refused,
/// 504 connect timed out). None of these reach the sidecar, so a failed attempt is not a
/// connection. Retried until `within` has passed; any other failure, or one after that, fails
/// the test.
pub async fn first_websocket(url: &str, within: Duration) -> ProxiedWebSocket {
    use tokio_tungstenite::tungstenite::Error;
    let give_up = std::time::Instant::now() + within;
    loop {
        match tokio_tungstenite::connect_async(url).await {
            Ok((socket, _)) => return socket,
            Err(Error::Http(response))
                if matches!(response.status().as_u16(), 404 | 502 | 504) && std::time::Instant::now() < give_up =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("WebSocket through the proxy to {url}: {e}"),
        }
    }
}

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

/// The next JSON message of type `kind` on a WebSocket (others are skipped); fails the test after
/// 30 s without one.
pub async fn next_of_type<S>(socket: &mut S, kind: &str) -> serde_json::Value
where
    S: futures::StreamExt<
            Item = Result<tokio_tungstenite::tungstenite::Message, tokio_tungstenite::tungstenite::Error>,
        > + Unpin,
{
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), socket.next())
            .await
            .unwrap_or_else(|_| panic!("no {kind} message within 30 s"))
            .expect("socket open")
            .expect("socket healthy");
        if let Message::Text(text) = frame {
            let value: serde_json::Value = serde_json::from_str(&text).unwrap();
            if value["type"] == kind {
                return value;
            }
        }
    }
}
