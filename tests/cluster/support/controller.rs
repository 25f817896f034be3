//! Running the real `spawner-controller` binary against the test cluster, as its ServiceAccount.
//!
//! The binary gets a kubeconfig that impersonates `system:serviceaccount:spawner-system:
//! spawner-controller`, so every test that passes also proves the generated RBAC (config/rbac)
//! is enough for what it exercised.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{ListParams, PostParams};
use kube::runtime::wait::Condition;
use spawner::controllers::pod::{SidecarConfig, build_pod};
use spawner::controllers::service::build_service;
use spawner::crd::SessionLivedBackend;
use spawner::names;

use super::TestEnv;

/// The app image of the tests: `serve` answers HTTP on $PORT (tests/apps/netcheck/src/main.rs).
pub const APP_IMAGE: &str = "localhost/spawner/netcheck:0.1.0";

/// Installs what the controller needs in the cluster once per test process: the generated CRD,
/// the spawner-system namespace and the generated RBAC.
pub async fn prepare(env: &TestEnv) {
    // A deployed controller watches every namespace: it would reconcile the tests' backends
    // too, and the two would overwrite each other's status. Say so instead of failing obscurely.
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), names::SYSTEM_NAMESPACE);
    if let Some(deployed) = deployments.get_opt(names::CONTROLLER).await.expect("checking for a deployed controller")
        && deployed.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1) > 0
    {
        panic!(
            "a spawner-controller Deployment runs in {ns}: these tests run their own controller, and two would \
             fight over the same backends. Remove it first (`kubectl delete namespace {ns}`, as `cargo xtask test` \
             does before the integration tests).",
            ns = names::SYSTEM_NAMESPACE
        );
    }
    super::install_crd(&env.client).await;
    super::apply_rbac();
}

/// A kubeconfig like the test cluster's, acting as the controller's ServiceAccount.
fn impersonating_kubeconfig() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| super::impersonating_kubeconfig(names::CONTROLLER)).clone()
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A running `spawner-controller` process; killed (and its log printed if the test failed) on
/// drop.
pub struct ControllerProcess {
    child: Child,
    log: PathBuf,
    pub metrics_addr: SocketAddr,
}

impl ControllerProcess {
    /// Starts the controller restricted to the test's namespace, without leader election.
    pub fn start(env: &TestEnv, extra: &[&str]) -> Self {
        let mut args = vec![format!("--namespace={}", env.namespace), "--no-leader-election".to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::start_with(&args)
    }

    /// Starts the controller with exactly these arguments (plus a free metrics port).
    pub fn start_with(args: &[String]) -> Self {
        Self::start_logging(args, "info,spawner=debug")
    }

    /// [`start_with`](Self::start_with), logging what `filter` (`RUST_LOG`) lets through: a
    /// benchmark logs less, so that logging does not weigh on what it measures.
    pub fn start_logging(args: &[String], filter: &str) -> Self {
        let metrics_addr = free_port();
        let log =
            std::env::temp_dir().join(format!("spawner-controller-{}-{}.log", std::process::id(), metrics_addr.port()));
        let file = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_spawner-controller"));
        // With SPAWNER_HEAPTRACK_DIR set, heaptrack (Debian's package) records every controller
        // process into that directory: what `cargo xtask bench scale` found the restart peak with
        // (`heaptrack_interpret < FILE.raw | gzip > FILE.gz`, then `heaptrack_print`).
        if let Ok(dir) = std::env::var("SPAWNER_HEAPTRACK_DIR") {
            command.env("LD_PRELOAD", "/usr/lib/heaptrack/libheaptrack_preload.so");
            command.env("DUMP_HEAPTRACK_OUTPUT", format!("{dir}/controller-{}.raw", metrics_addr.port()));
        }
        let child = command
            .args(args)
            .arg(format!("--metrics-addr={metrics_addr}"))
            .env("KUBECONFIG", impersonating_kubeconfig())
            .env("RUST_LOG", filter)
            .envs(spawner::controllers::PROCESS_ENV.iter().copied())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("starting spawner-controller");
        Self { child, log, metrics_addr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits (bounded) for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "controller did not exit within 30s of SIGTERM:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: the controller dies mid-work, as on a node crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// GET `path` on the metrics address; `None` while nothing listens yet.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut stream = TcpStream::connect_timeout(&self.metrics_addr, Duration::from_secs(2)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let code = response.split(' ').nth(1)?.parse().ok()?;
        let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Some((code, body))
    }

    /// Waits until `/metrics` has a sample line starting with `needle`.
    pub async fn wait_for_metric(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((200, body)) = self.get("/metrics")
                && body.lines().any(|line| line.starts_with(needle))
            {
                return body;
            }
            assert!(Instant::now() < deadline, "metrics never contained {needle:?}; logs:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- spawner-controller log ({}) ---\n{}", self.log.display(), self.logs());
        }
    }
}

/// The raw client of the benchmarks: the very Pod and Service (unless `spec.service` says none)
/// the controller builds for `backend`, created directly, without owner references (there is
/// no backend to own them).
pub async fn create_without_controller(pods: &Api<Pod>, services: &Api<Service>, backend: &SessionLivedBackend) {
    let mut pod = build_pod(backend, &SidecarConfig::default());
    pod.metadata.owner_references = None;
    pods.create(&PostParams::default(), &pod).await.expect("raw pod");
    if backend.spec.shape.service.enabled {
        let mut service = build_service(backend);
        service.metadata.owner_references = None;
        services.create(&PostParams::default(), &service).await.expect("raw service");
    }
}

/// A backend running the test app, from JSON so tests read like manifests.
pub fn backend(name: &str, spec: serde_json::Value) -> SessionLivedBackend {
    let mut spec = spec;
    if spec.get("template").is_none() {
        spec["template"] = serde_json::json!({
            "containers": [{"name": "app", "image": APP_IMAGE, "imagePullPolicy": "IfNotPresent", "args": ["serve"]}]
        });
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "spawner.dev/v1",
        "kind": "SessionLivedBackend",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("test backend parses")
}

/// A pod template no node matches: the backend stays Pending (no image needed).
pub fn unschedulable_template() -> serde_json::Value {
    serde_json::json!({
        "containers": [{"name": "app", "image": APP_IMAGE, "args": ["serve"]}],
        "nodeSelector": {"spawner.dev/test-no-such-node": "true"}
    })
}

pub async fn create(env: &TestEnv, backend: &SessionLivedBackend) -> SessionLivedBackend {
    env.api::<SessionLivedBackend>().create(&PostParams::default(), backend).await.expect("creating the backend")
}

/// The backend has condition `type_` with `status` ("True"/"False").
pub fn has_condition(type_: &'static str, status: &'static str) -> impl Condition<SessionLivedBackend> {
    move |b: Option<&SessionLivedBackend>| {
        b.and_then(|b| b.status.as_ref())
            .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == type_ && c.status == status))
    }
}

/// The condition `type_` of the backend.
pub fn condition(b: &SessionLivedBackend, type_: &str) -> spawner::crd::Condition {
    b.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .cloned()
        .unwrap_or_else(|| panic!("no {type_} condition: {b:?}"))
}

pub fn exists<K>() -> impl Condition<K> {
    |o: Option<&K>| o.is_some()
}

/// Events (events.k8s.io) about `name` with `reason`, waiting until at least one exists.
pub async fn wait_for_event(env: &TestEnv, name: &str, reason: &str, timeout: Duration) -> Vec<Event> {
    let api: Api<Event> = env.api();
    let deadline = Instant::now() + timeout;
    loop {
        let events = api.list(&ListParams::default()).await.unwrap();
        let about = |e: &Event| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name);
        let matching: Vec<Event> =
            events.items.into_iter().filter(|e| about(e) && e.reason.as_deref() == Some(reason)).collect();
        if !matching.is_empty() {
            return matching;
        }
        assert!(Instant::now() < deadline, "no {reason} Event for {name} within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
