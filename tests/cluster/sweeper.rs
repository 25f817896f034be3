//! The sweep end to end on a real cluster with `config/default` deployed (controller, sweeper
//! DaemonSet, nginx): a real backend pod with the injected sidecar, WebSockets through nginx's
//! NodePort, the sweeper deleting through the API with its own RBAC.
//!
//! Test names start with `e2e_`: `cargo xtask test` runs them after deploying Spawner.
//!
//! The `sweeper_process_*` tests run before that, with no Spawner deployed: they make a backend
//! and its pod exactly as the controller would (`controllers::pod::build_pod`) and run a
//! `spawner-sweeper` process on this machine against the cluster, scoped to the test's
//! namespace so other tests' backends are left alone.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, ResourceExt};
use spawner::controllers::pod::{SidecarConfig, build_pod};
use spawner::crd::SessionLivedBackend;
use spawner::names;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{self, TestEnv};

fn backend(name: &str, grace_seconds: i64) -> SessionLivedBackend {
    support::demo_backend(name, grace_seconds as u64)
}

/// Creates the backend and waits until it is Ready; returns it (with its UID and URL).
async fn create_ready(env: &TestEnv, name: &str, grace_seconds: i64) -> SessionLivedBackend {
    support::create_ready(&env.api(), &backend(name, grace_seconds)).await
}

/// Waits until the backend with this UID is gone; panics after `limit`.
async fn wait_swept(env: &TestEnv, backend: &SessionLivedBackend, limit: Duration) {
    let api: Api<SessionLivedBackend> = env.api();
    let uid = backend.uid().unwrap();
    match timeout(limit, await_condition(api, &backend.name_any(), conditions::is_deleted(&uid))).await {
        Ok(Ok(_)) => {}
        Ok(Err(err)) => panic!("watching {}: {err}", backend.name_any()),
        Err(_) => panic!("{} was not swept within {limit:?}", backend.name_any()),
    }
}

/// The sweeper's Event about the backend, once it shows up.
async fn sweep_event(env: &TestEnv, backend: &SessionLivedBackend) -> Event {
    let events: Api<Event> = env.api();
    let params = ListParams::default().fields(&format!("regarding.name={}", backend.name_any()));
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let list = events.list(&params).await.expect("listing events");
        if let Some(event) = list.items.into_iter().find(|e| e.reason.as_deref() == Some("IdleTimeout")) {
            return event;
        }
        assert!(Instant::now() < until, "no IdleTimeout Event for {}", backend.name_any());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The sweeper's own measurement in its Event: idle time at the sweep, in whole seconds.
fn idle_at_sweep(event: &Event) -> i64 {
    let note = event.note.as_deref().unwrap_or_default();
    note.strip_prefix("No live connection for ")
        .and_then(|rest| rest.split_once('s'))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected note: {note}"))
}

fn websocket_url(backend: &SessionLivedBackend) -> String {
    let url = backend.status.as_ref().and_then(|s| s.url.clone()).expect("a Ready backend has a URL");
    format!("{}ws", url.replacen("http", "ws", 1))
}

async fn backend_exists(env: &TestEnv, backend: &SessionLivedBackend) -> bool {
    let api: Api<SessionLivedBackend> = env.api();
    api.get_opt(&backend.name_any()).await.unwrap().is_some_and(|b| b.uid() == backend.uid())
}

#[tokio::test]
async fn e2e_sweeper_deletes_an_idle_backend_after_its_grace_period_and_says_why() {
    let env = TestEnv::new("sweeper-idle").await;
    let grace = 5;
    // Not waiting for Ready: with a grace period this short the sweep may come first.
    let api: Api<SessionLivedBackend> = env.api();
    let backend = api.create(&PostParams::default(), &backend("idle", grace)).await.expect("creating the backend");

    wait_swept(&env, &backend, support::READY_WITHIN + Duration::from_secs(grace as u64)).await;

    let event = sweep_event(&env, &backend).await;
    assert_eq!(event.reporting_controller.as_deref(), Some(names::SWEEPER));
    // Lateness under a second (the precision requirement) shows as exactly the grace
    // period; one more second is tolerated for a sidecar that came up after the sweeper's first
    // connect attempts.
    let idle = idle_at_sweep(&event);
    assert!((grace..=grace + 2).contains(&idle), "swept after {idle}s idle (grace {grace}s)");
    assert_eq!(event.regarding.and_then(|r| r.uid), backend.uid());
}

#[tokio::test]
async fn e2e_sweeper_keeps_a_connected_backend_and_sweeps_it_after_the_connection_ends() {
    let env = TestEnv::new("sweeper-connected").await;
    // Long enough to connect after Ready before the sweep.
    let grace = 15;
    let backend = create_ready(&env, "connected", grace).await;
    // Ready means routable: the first attempt connects.
    let mut ws = support::first_websocket(&websocket_url(&backend)).await;

    // Proving an absence takes waiting: well past the grace period, with the socket open.
    tokio::time::sleep(Duration::from_secs(grace as u64 + 5)).await;
    assert!(backend_exists(&env, &backend).await, "swept while a WebSocket was open");
    ws.send(Message::Ping(Default::default())).await.expect("the WebSocket is still open");

    ws.close(None).await.unwrap();
    while let Ok(Some(Ok(_))) = timeout(Duration::from_secs(10), ws.next()).await {}
    drop(ws);
    wait_swept(&env, &backend, Duration::from_secs(grace as u64 + 30)).await;
}

#[tokio::test]
async fn e2e_sweeper_never_sweeps_a_warm_pod_and_sweeps_a_claimed_idle_one() {
    use spawner::crd::SessionLivedBackendPool;
    let env = TestEnv::new("sweeper-pool").await;
    let grace = 3;
    let pool: SessionLivedBackendPool = serde_json::from_value(serde_json::json!({
        "apiVersion": "spawner.dev/v1", "kind": "SessionLivedBackendPool", "metadata": {"name": "idle"},
        "spec": {
            "size": 1, "gracePeriodSeconds": grace, "auth": {"mode": "None"},
            "template": {"containers": [{"name": "application", "image": names::image("demo-drop-four")}]},
        },
    }))
    .unwrap();
    let pools: Api<SessionLivedBackendPool> = env.api();
    pools.create(&PostParams::default(), &pool).await.expect("creating the pool");
    let full = |p: Option<&SessionLivedBackendPool>| p.and_then(|p| p.status.as_ref()).is_some_and(|s| s.ready == 1);
    support::wait_for(&pools, "idle", full, support::READY_WITHIN).await;
    let warm_pods = || async {
        let pods: Api<Pod> = env.api();
        let listed = pods.list(&ListParams::default().labels("spawner.dev/pool=idle")).await.unwrap().items;
        listed.iter().map(|p| p.uid().unwrap()).collect::<Vec<_>>()
    };
    let warm = warm_pods().await;

    // Nobody connects to a warm pod; well past its grace period it is still there, unswept.
    tokio::time::sleep(Duration::from_secs(grace as u64 + 5)).await;
    assert_eq!(warm_pods().await, warm, "the warm pod was swept or replaced");

    // Claimed by a backend nobody connects to, it is swept like any backend.
    let claiming: SessionLivedBackend = serde_json::from_value(serde_json::json!({
        "apiVersion": "spawner.dev/v1", "kind": "SessionLivedBackend", "metadata": {"name": "claimer"},
        "spec": {"poolRef": {"name": "idle"}},
    }))
    .unwrap();
    let api: Api<SessionLivedBackend> = env.api();
    let backend = api.create(&PostParams::default(), &claiming).await.expect("creating the backend");
    wait_swept(&env, &backend, support::READY_WITHIN + Duration::from_secs(grace as u64 + 5)).await;
    // Its idle time counts from the claim, not from when the warm pod started (grace + 5 s
    // before): the session starts at the claim.
    let idle = idle_at_sweep(&sweep_event(&env, &backend).await);
    assert!((grace..=grace + 2).contains(&idle), "swept after {idle}s idle (grace {grace}s, counted from the claim)");
}

#[tokio::test]
async fn e2e_a_restarted_sweeper_loses_no_idle_time() {
    let env = TestEnv::new("sweeper-restart").await;
    let grace = 30;
    let backend = create_ready(&env, "restart", grace).await;
    let ready_seen = Instant::now();

    // Restart the sweeper on the backend's node half-way through the grace period.
    tokio::time::sleep(Duration::from_secs(grace as u64 / 2)).await;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), names::SYSTEM_NAMESPACE);
    let node = backend.status.as_ref().and_then(|s| s.node_name.clone()).expect("a Ready backend has a node");
    let selector = ListParams::default()
        .labels(&format!("app.kubernetes.io/name={}", names::SWEEPER))
        .fields(&format!("spec.nodeName={node}"));
    let sweepers = pods.list(&selector).await.unwrap();
    assert_eq!(sweepers.items.len(), 1, "one sweeper on node {node}");
    pods.delete(&sweepers.items[0].name_any(), &DeleteParams::default()).await.unwrap();

    wait_swept(&env, &backend, Duration::from_secs(grace as u64 + 60)).await;

    // Had the new sweeper counted idle time from its own start, the sweep would come a whole
    // grace period after the restart (1.5 grace periods after Ready), not one after Ready.
    let swept_after = ready_seen.elapsed();
    assert!(swept_after < Duration::from_secs(grace as u64 + 8), "swept {swept_after:?} after Ready");
    let note = sweep_event(&env, &backend).await.note.unwrap_or_default();
    assert!(note.contains("No live connection for"), "note: {note}");
}

// ---------- a sweeper process on this machine, no Spawner deployed ----------

/// A `spawner-sweeper` process following the backend pods of one namespace on one node.
struct SweeperProcess {
    child: Child,
    metrics: SocketAddr,
}

impl SweeperProcess {
    /// Starts the sweeper as its own ServiceAccount (impersonated), with exactly the RBAC that
    /// `config/rbac` grants it.
    async fn start(env: &TestEnv, node: &str) -> SweeperProcess {
        let kubeconfig = sweeper_kubeconfig();
        let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_spawner-sweeper"))
            .env("KUBECONFIG", &kubeconfig)
            .env("NODE_NAME", node)
            .args(["--watch-namespace", &env.namespace, "--log-format", "text"])
            .args(["--metrics-addr", &metrics.to_string()])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting spawner-sweeper");
        SweeperProcess { child, metrics }
    }

    /// The value of one sample of /metrics (`None` while absent or unreachable).
    async fn metric(&self, sample: &str) -> Option<f64> {
        let mut stream = TcpStream::connect(self.metrics).await.ok()?;
        stream.write_all(b"GET /metrics HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n").await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        response.lines().find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// Waits (bounded) until the metric sample satisfies `condition`.
    async fn wait_metric(&self, sample: &str, condition: impl Fn(f64) -> bool) {
        let until = Instant::now() + Duration::from_secs(90);
        while !self.metric(sample).await.is_some_and(&condition) {
            assert!(
                Instant::now() < until,
                "{sample} never reached the expected value ({:?})",
                self.metric(sample).await
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// SIGTERM; the sweeper must exit 0 by itself.
    async fn terminate(mut self) {
        let pid = self.child.id().unwrap().to_string();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let status = timeout(Duration::from_secs(10), self.child.wait()).await.expect("exits after SIGTERM").unwrap();
        assert!(status.success(), "sweeper exited with {status}");
    }
}

/// Applies `config/rbac` and writes a kubeconfig that impersonates the sweeper's
/// ServiceAccount; returns its path.
fn sweeper_kubeconfig() -> std::path::PathBuf {
    support::apply_rbac();
    support::impersonating_kubeconfig(names::SWEEPER)
}

/// Creates the backend and, as the controller would, its pod; waits until the pod runs.
/// Returns the backend (with its UID) and the pod's node.
async fn backend_with_pod(
    env: &TestEnv,
    name: &str,
    grace_seconds: i64,
    edit: impl FnOnce(&mut Pod),
) -> (SessionLivedBackend, String) {
    let backends: Api<SessionLivedBackend> = env.api();
    let backend =
        backends.create(&PostParams::default(), &backend(name, grace_seconds)).await.expect("creating the backend");
    let mut pod = build_pod(&backend, &SidecarConfig::default());
    edit(&mut pod);
    let pods: Api<Pod> = env.api();
    pods.create(&PostParams::default(), &pod).await.expect("creating the backend's pod");
    let running = |p: Option<&Pod>| {
        p.and_then(|p| p.status.as_ref()).is_some_and(|s| s.phase.as_deref() == Some("Running") && s.pod_ip.is_some())
    };
    let pod = support::wait_for(&pods, name, running, support::READY_WITHIN).await.expect("the pod exists");
    let node = pod.spec.and_then(|s| s.node_name).expect("a running pod has a node");
    (backend, node)
}

#[tokio::test]
async fn sweeper_process_sweeps_an_idle_backend_and_drops_the_follower_of_its_gone_pod() {
    let env = TestEnv::new("sweeper-process").await;
    support::install_crd(&env.client).await;
    let grace = 4;
    let (backend, node) = backend_with_pod(&env, "idle", grace, |_| {}).await;

    let sweeper = SweeperProcess::start(&env, &node).await;
    wait_swept(&env, &backend, Duration::from_secs(grace as u64 + 60)).await;

    let event = sweep_event(&env, &backend).await;
    assert_eq!(event.reporting_controller.as_deref(), Some(names::SWEEPER));
    assert_eq!(event.reporting_instance.as_deref(), Some(node.as_str()));
    // The pod goes with its backend (garbage collection); its follower goes with the pod.
    sweeper.wait_metric("spawner_sweeper_sweeps_total{result=\"Swept\"}", |v| v == 1.0).await;
    sweeper.wait_metric("spawner_sweeper_followed_backends", |v| v == 0.0).await;
    sweeper.terminate().await;
}

#[tokio::test]
async fn sweeper_process_never_sweeps_a_backend_whose_sidecar_it_cannot_reach() {
    let env = TestEnv::new("sweeper-unreachable").await;
    support::install_crd(&env.client).await;
    let grace = 3;
    // The sidecar runs, but its admin port is not where the sweeper looks for it.
    let (backend, node) = backend_with_pod(&env, "unreachable", grace, |pod| {
        let spec = pod.spec.as_mut().unwrap();
        let sidecar = spec.containers.iter_mut().find(|c| c.name == names::SIDECAR_CONTAINER).unwrap();
        sidecar.env.get_or_insert_with(Vec::new).push(k8s_openapi::api::core::v1::EnvVar {
            name: "SPAWNER_ADMIN_PORT".into(),
            value: Some("9999".into()),
            ..Default::default()
        });
        sidecar.readiness_probe = None;
        sidecar.liveness_probe = None;
    })
    .await;

    let sweeper = SweeperProcess::start(&env, &node).await;
    sweeper.wait_metric("spawner_sweeper_stream_errors_total{kind=\"Connect\"}", |v| v >= 3.0).await;
    // Proving an absence takes waiting: past the grace period, with the stream unreachable.
    tokio::time::sleep(Duration::from_secs(grace as u64 + 2)).await;
    assert!(backend_exists(&env, &backend).await, "swept with no event stream");
    assert_eq!(sweeper.metric("spawner_sweeper_followed_backends").await, Some(1.0));
    sweeper.terminate().await;
}
