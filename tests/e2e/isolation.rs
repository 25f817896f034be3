//! Isolation, proven on a network that enforces NetworkPolicy: the two-node kind cluster of
//! `cargo xtask test`, whose kube-router enforces the policies the controller applies to every
//! namespace with backends (`src/controllers/network_policy.rs`). On the local cluster's bridge
//! network nothing is enforced, so these tests run only on kind (`SPAWNER_TEST_CLUSTER=kind`) and
//! fail elsewhere with the reason rather than pass on a network that ignores policy.
//!
//! - Ingress: from a pod in another namespace (and from a neighbour in the backend's own), the
//!   app's port, the sidecar's admin port and even the sidecar's public port by pod IP get no
//!   answer; through the reverse proxy, with the token, the backend answers 200; the sweeper
//!   still sweeps it.
//! - Egress: a listener on the other node answers on a "public-looking" address (203.0.113.7),
//!   the cloud metadata address (169.254.169.254) and the node's own private address; a
//!   backend's probes reach exactly what its `spec.egress` allows, and a pool's warm pod what the
//!   pool's does.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::api::PostParams;
use kube::runtime::wait::conditions;
use kube::{Api, ResourceExt};
use spawner::crd::{AuthMode, Egress, SessionLivedBackend, SessionLivedBackendPool};
use spawner::names;

use crate::support::{self, TestEnv, netcheck};

/// Port of the egress tests' listener on the second node (host network).
const LISTENER_PORT: u16 = 18080;
/// The cloud metadata address, and an address outside every private and reserved-for-private
/// range (TEST-NET-3), both put on the second node's loopback for the test.
const METADATA_ADDRESS: &str = "169.254.169.254";
const PUBLIC_LOOKING_ADDRESS: &str = "203.0.113.7";

#[tokio::test]
async fn e2e_enforced_a_backend_is_reached_only_through_the_proxy_and_its_admin_port_only_by_the_sweeper() {
    let _controller = crate::CONTROLLER.read().await;
    let env = TestEnv::new("isolated").await;
    let outsider = TestEnv::new("outsider").await;
    support::two_nodes(&env).await;
    let api: Api<SessionLivedBackend> = env.api();
    let grace = 20;
    let mut backend = support::demo_backend("room", grace);
    backend.spec.shape.auth.mode = AuthMode::Token;
    let backend = support::create_ready(&api, &backend).await;
    let ip = backend.status.as_ref().and_then(|s| s.pod_ip.clone()).expect("a Ready backend has a pod IP");
    let token = env.api::<Secret>().get(&backend.name_any()).await.unwrap().data.unwrap()["token"].clone();
    let token = String::from_utf8(token.0).unwrap();

    let blocked = |name: &str, port: u16, path: &str| {
        netcheck::pod(name, &["blocked", &format!("http://{ip}:{port}{path}"), "3"], serde_json::json!({}), None)
    };
    let proxied = format!(
        "http://{}.{}.svc.cluster.local/p/{}/{}/?token={token}",
        names::PROXY,
        names::SYSTEM_NAMESPACE,
        env.namespace,
        backend.name_any()
    );
    let through_proxy = netcheck::pod("through-proxy", &["get", &proxied, "60"], serde_json::json!({}), None);
    let (app, admin, sidecar, neighbour, proxy) = tokio::join!(
        netcheck::run_to_completion(&outsider, blocked("app-port", 8080, "/")),
        netcheck::run_to_completion(&outsider, blocked("admin-port", names::SIDECAR_ADMIN_PORT, "/healthz")),
        netcheck::run_to_completion(&outsider, blocked("sidecar-port", names::SIDECAR_PROXY_PORT, "/")),
        netcheck::run_to_completion(&env, blocked("neighbour", 8080, "/")),
        netcheck::run_to_completion(&outsider, through_proxy),
    );
    for log in [app, admin, sidecar, neighbour] {
        assert!(log.contains("blocked"), "{log}");
    }
    assert!(proxy.contains("<title>Drop four</title>"), "through the proxy: {proxy}");

    // The sweeper, allowed to the admin port, still sees the backend go idle and sweeps it.
    // (`wait_for` fails the test if it is not deleted in time.)
    let uid = backend.uid().unwrap();
    support::wait_for(&api, &backend.name_any(), conditions::is_deleted(&uid), Duration::from_secs(grace + 60)).await;
}

#[tokio::test]
async fn e2e_enforced_egress_public_reaches_only_public_addresses_none_nothing_unrestricted_everything() {
    let _controller = crate::CONTROLLER.read().await;
    let env = TestEnv::new("egress").await;
    let [first, second] = support::two_nodes(&env).await;
    let _listener_addresses = ListenerAddresses::add(&env, &first, &second).await;
    let second_ip = internal_ip(&env, &second).await;

    // The listener: on the second node's network, so on all three addresses.
    let pods = env.api::<Pod>();
    let mut listener = netcheck::pod("listener", &["serve"], serde_json::json!({}), Some(&second));
    let spec = listener.spec.as_mut().unwrap();
    spec.host_network = Some(true);
    let container = &mut spec.containers[0];
    container.env.as_mut().unwrap()[0].value = Some(LISTENER_PORT.to_string());
    container.readiness_probe.as_mut().unwrap().http_get.as_mut().unwrap().port =
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(LISTENER_PORT.into());
    pods.create(&PostParams::default(), &listener).await.unwrap();
    support::wait_for(&pods, "listener", support::pod_ready(), Duration::from_secs(90)).await;

    let url = |address: &str| format!("http://{address}:{LISTENER_PORT}/");
    let (metadata, private, public) = (url(METADATA_ADDRESS), url(&second_ip), url(PUBLIC_LOOKING_ADDRESS));
    let reach = |url: &str| vec!["get".to_string(), url.to_string(), "60".into()];
    let refused = |url: &str| vec!["blocked".to_string(), url.to_string(), "3".into()];
    let dns = vec!["resolve".to_string(), "kubernetes.default.svc.cluster.local".into(), "60".into()];
    let cases = [
        (
            Egress::Public,
            vec![
                ("metadata", refused(&metadata)),
                ("private", refused(&private)),
                ("public", reach(&public)),
                ("dns", dns),
            ],
        ),
        (
            Egress::None,
            vec![("metadata", refused(&metadata)), ("private", refused(&private)), ("public", refused(&public))],
        ),
        (
            Egress::Unrestricted,
            vec![("metadata", reach(&metadata)), ("private", reach(&private)), ("public", reach(&public))],
        ),
    ];
    let api: Api<SessionLivedBackend> = env.api();
    for (egress, probes) in &cases {
        let backend = probing_backend(*egress, probes, &first);
        api.create(&PostParams::default(), &backend).await.unwrap();
    }
    // A pool's warm pod runs under its pool's egress from the start, before any claim.
    let (pool_egress, pool_probes) = (&cases[1].0, &cases[1].1);
    let pool = probing_pool(probing_backend(*pool_egress, pool_probes, &first));
    env.api::<SessionLivedBackendPool>().create(&PostParams::default(), &pool).await.unwrap();
    let warm_pod = warm_pod_of(&env, &pool.name_any()).await;

    let mut failures = Vec::new();
    let backends = cases.iter().map(|(egress, probes)| (*egress, probes, backend_name(*egress)));
    for (egress, probes, name) in backends.chain([(*pool_egress, pool_probes, warm_pod)]) {
        let pod = support::wait_for(&pods, &name, probes_finished(probes.len()), Duration::from_secs(180))
            .await
            .unwrap_or_else(|| panic!("no pod {name}"));
        for status in pod.status.unwrap().container_statuses.unwrap_or_default() {
            let Some(probe) = status.name.strip_prefix("probe-") else { continue };
            let code = status.state.and_then(|s| s.terminated).map(|t| t.exit_code);
            if code != Some(0) {
                let params = kube::api::LogParams { container: Some(status.name.clone()), ..Default::default() };
                let log = pods.logs(&name, &params).await.unwrap_or_default();
                failures.push(format!("egress {egress:?}, probe {probe}: exit {code:?}\n{log}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn backend_name(egress: Egress) -> String {
    format!("egress-{}", egress.as_str().to_ascii_lowercase())
}

/// A backend on `node` whose app serves and whose other containers each run one probe.
fn probing_backend(egress: Egress, probes: &[(&str, Vec<String>)], node: &str) -> SessionLivedBackend {
    let mut containers = vec![serde_json::json!({
        "name": "app", "image": netcheck::IMAGE, "imagePullPolicy": "Never", "args": ["serve"],
    })];
    for (name, args) in probes {
        containers.push(serde_json::json!({
            "name": format!("probe-{name}"), "image": netcheck::IMAGE, "imagePullPolicy": "Never", "args": args,
        }));
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "spawner.dev/v1",
        "kind": "SessionLivedBackend",
        "metadata": {"name": backend_name(egress)},
        "spec": {
            "gracePeriodSeconds": 600,
            "auth": {"mode": "None"},
            "egress": egress.as_str(),
            "template": {"containers": containers, "nodeSelector": {"kubernetes.io/hostname": node}},
        },
    }))
    .expect("a valid backend")
}

/// A pool of one warm pod made like `backend`.
fn probing_pool(backend: SessionLivedBackend) -> SessionLivedBackendPool {
    let mut spec = serde_json::to_value(&backend.spec).unwrap();
    spec["size"] = 1.into();
    serde_json::from_value(serde_json::json!({
        "apiVersion": "spawner.dev/v1",
        "kind": "SessionLivedBackendPool",
        "metadata": {"name": format!("{}-pool", backend.name_any())},
        "spec": spec,
    }))
    .expect("a valid pool")
}

/// The name of the pool's warm pod, once the controller has made it.
async fn warm_pod_of(env: &TestEnv, pool: &str) -> String {
    let params = kube::api::ListParams::default().labels(&format!("spawner.dev/pool={pool}"));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(pod) = env.api::<Pod>().list(&params).await.unwrap().items.first() {
            return pod.name_any();
        }
        assert!(std::time::Instant::now() < deadline, "no warm pod for pool {pool} within 60s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every `probe-*` container of the pod has terminated.
fn probes_finished(count: usize) -> impl kube::runtime::wait::Condition<Pod> {
    move |pod: Option<&Pod>| {
        let statuses = pod.and_then(|p| p.status.as_ref()).and_then(|s| s.container_statuses.as_ref());
        let done = statuses.iter().flat_map(|s| s.iter()).filter(|s| {
            s.name.starts_with("probe-") && s.state.as_ref().is_some_and(|state| state.terminated.is_some())
        });
        done.count() == count
    }
}

async fn internal_ip(env: &TestEnv, node: &str) -> String {
    let node = Api::<Node>::all(env.client.clone()).get(node).await.unwrap();
    let addresses = node.status.and_then(|s| s.addresses).unwrap_or_default();
    addresses.into_iter().find(|a| a.type_ == "InternalIP").map(|a| a.address).expect("the node has an InternalIP")
}

/// The metadata and public-looking addresses on the second node's loopback, routed to from the
/// first (kind nodes are Docker containers: `docker exec` reaches their network namespaces).
/// Removed on drop.
struct ListenerAddresses {
    first: String,
    second: String,
}

impl ListenerAddresses {
    async fn add(env: &TestEnv, first: &str, second: &str) -> ListenerAddresses {
        let second_ip = internal_ip(env, second).await;
        for address in [METADATA_ADDRESS, PUBLIC_LOOKING_ADDRESS] {
            node_exec(second, &["ip", "address", "replace", &format!("{address}/32"), "dev", "lo"]);
            node_exec(first, &["ip", "route", "replace", &format!("{address}/32"), "via", &second_ip]);
        }
        ListenerAddresses { first: first.into(), second: second.into() }
    }
}

impl Drop for ListenerAddresses {
    fn drop(&mut self) {
        for address in [METADATA_ADDRESS, PUBLIC_LOOKING_ADDRESS] {
            let _ = try_node_exec(&self.first, &["ip", "route", "del", &format!("{address}/32")]);
            let _ = try_node_exec(&self.second, &["ip", "address", "del", &format!("{address}/32"), "dev", "lo"]);
        }
    }
}

fn node_exec(node: &str, args: &[&str]) {
    if let Err(e) = try_node_exec(node, args) {
        panic!("{e} (these tests need the kind cluster's nodes: SPAWNER_TEST_CLUSTER=kind, Docker reachable)");
    }
}

fn try_node_exec(node: &str, args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("docker")
        .args(["exec", node])
        .args(args)
        .output()
        .map_err(|e| format!("docker exec {node}: {e}"))?;
    if !out.status.success() {
        return Err(format!("docker exec {node} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}
