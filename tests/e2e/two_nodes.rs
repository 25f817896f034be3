//! Spawner on two nodes: the kind cluster of `cargo xtask test` (one control-plane node and one
//! worker, both running backends) with `config/default` deployed. The sweeper runs once per
//! node; these tests pin backends to each node and check that each node's sweeper sweeps exactly
//! its own, that losing one node's sweeper costs neither node any idle time, and that losing the
//! controller while backends start on both nodes leaves exactly one Pod and one Service each.
//! First of all, the cluster's network enforces NetworkPolicy, on a node and across nodes.
//!
//! They need two schedulable nodes and fail with the reason elsewhere (`cargo xtask test` runs
//! them only on kind: `SPAWNER_TEST_CLUSTER=kind`).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::wait::conditions;
use kube::{Api, ResourceExt};
use spawner::crd::SessionLivedBackend;
use spawner::names;
use tokio::time::Instant;

use crate::support::{self, TestEnv, netcheck};

/// The demo backend, pinned to `node`.
fn pinned(name: &str, grace_seconds: u64, node: &str) -> SessionLivedBackend {
    let mut backend = support::demo_backend(name, grace_seconds);
    backend.spec.template.as_mut().unwrap().node_selector =
        Some(BTreeMap::from([("kubernetes.io/hostname".to_string(), node.to_string())]));
    backend
}

/// Backends `on-first` and `on-second`, one pinned to each node, created at once; returns them
/// once both are Ready.
async fn ready_on_each(
    api: &Api<SessionLivedBackend>,
    grace_seconds: u64,
    [first, second]: [&str; 2],
) -> (SessionLivedBackend, SessionLivedBackend) {
    let (on_first, on_second) = (pinned("on-first", grace_seconds, first), pinned("on-second", grace_seconds, second));
    tokio::join!(support::create_ready(api, &on_first), support::create_ready(api, &on_second))
}

/// Waits until the backend with `uid` is gone; returns when that was seen.
async fn wait_swept(env: &TestEnv, backend: &SessionLivedBackend, limit: Duration) -> Instant {
    let api: Api<SessionLivedBackend> = env.api();
    let uid = backend.uid().unwrap();
    support::wait_for(&api, &backend.name_any(), conditions::is_deleted(&uid), limit).await;
    Instant::now()
}

/// The node of the sweeper that swept `backend` (its IdleTimeout Event's reporting instance).
async fn swept_by(env: &TestEnv, backend: &SessionLivedBackend) -> String {
    let events: Api<Event> = env.api();
    let params = ListParams::default().fields(&format!("regarding.name={}", backend.name_any()));
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let list = events.list(&params).await.expect("listing events");
        let sweep = list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("IdleTimeout")
                && e.regarding.as_ref().and_then(|r| r.uid.as_deref()) == backend.uid().as_deref()
        });
        if let Some(event) = sweep {
            assert_eq!(event.reporting_controller.as_deref(), Some(names::SWEEPER));
            return event.reporting_instance.unwrap_or_default();
        }
        assert!(Instant::now() < until, "no IdleTimeout Event for {}", backend.name_any());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn node_of(backend: &SessionLivedBackend) -> String {
    backend.status.as_ref().and_then(|s| s.node_name.clone()).expect("a Ready backend has a node")
}

#[tokio::test]
async fn e2e_on_two_nodes_network_policy_is_enforced_on_a_node_and_across_nodes() {
    let env = TestEnv::new("two-nodes-policy").await;
    let [first, second] = support::two_nodes(&env).await;
    let pods = env.api::<Pod>();
    let web = netcheck::pod("web", &["serve"], serde_json::json!({"app": "web"}), Some(&first));
    pods.create(&PostParams::default(), &web).await.unwrap();
    let web = support::wait_for(&pods, "web", support::pod_ready(), Duration::from_secs(90)).await.unwrap();
    let url = format!("http://{}:8080/", web.status.and_then(|s| s.pod_ip).expect("a Ready pod has an IP"));

    let policy: NetworkPolicy = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web-only-from-friends"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "friend"}}}], "ports": [{"port": 8080}]}],
        },
    }))
    .unwrap();
    env.api::<NetworkPolicy>().create(&PostParams::default(), &policy).await.unwrap();

    // From the server's node (bridged traffic) and from the other node (routed traffic).
    let client = |name: String, role: &str, args: &[&str], node: &str| {
        netcheck::pod(&name, args, serde_json::json!({"role": role}), Some(node))
    };
    let mut checks = Vec::new();
    for (place, node) in [("same-node", &first), ("other-node", &second)] {
        let friend = client(format!("friend-{place}"), "friend", &["get", &url, "60"], node);
        let stranger = client(format!("stranger-{place}"), "stranger", &["blocked", &url, "3"], node);
        checks.push(netcheck::run_to_completion(&env, friend));
        checks.push(netcheck::run_to_completion(&env, stranger));
    }
    for log in futures::future::join_all(checks).await {
        assert!(log.contains("hello from web") || log.contains("blocked"), "{log}");
    }

    // Without the policy, the same stranger gets through: it was the policy that stopped it.
    env.api::<NetworkPolicy>().delete("web-only-from-friends", &DeleteParams::default()).await.unwrap();
    let stranger = client("stranger-after".into(), "stranger", &["get", &url, "60"], &second);
    let log = netcheck::run_to_completion(&env, stranger).await;
    assert!(log.contains("hello from web"), "{log}");
}

#[tokio::test]
async fn e2e_on_two_nodes_each_nodes_sweeper_sweeps_exactly_its_own_backends() {
    let _controller = crate::CONTROLLER.read().await;
    let env = TestEnv::new("two-nodes-sweep").await;
    let [first, second] = support::two_nodes(&env).await;
    let api: Api<SessionLivedBackend> = env.api();
    let grace = 15;
    let (a, b) = ready_on_each(&api, grace, [&first, &second]).await;
    assert_eq!(node_of(&a), first);
    assert_eq!(node_of(&b), second);

    let limit = Duration::from_secs(grace + 60);
    tokio::join!(wait_swept(&env, &a, limit), wait_swept(&env, &b, limit));
    assert_eq!(swept_by(&env, &a).await, first, "the first node's backend was swept by another node's sweeper");
    assert_eq!(swept_by(&env, &b).await, second, "the second node's backend was swept by another node's sweeper");
    support::wait_for_children_gone(&env, "on-first", Duration::from_secs(90)).await;
    support::wait_for_children_gone(&env, "on-second", Duration::from_secs(90)).await;
}

#[tokio::test]
async fn e2e_on_two_nodes_losing_one_nodes_sweeper_costs_no_node_any_idle_time() {
    let _controller = crate::CONTROLLER.read().await;
    let env = TestEnv::new("two-nodes-sweeper-loss").await;
    let [first, second] = support::two_nodes(&env).await;
    let api: Api<SessionLivedBackend> = env.api();
    let grace = 30;
    let (a, b) = ready_on_each(&api, grace, [&first, &second]).await;
    // Both are idle from Ready on; the later of the two Ready times bounds both deadlines.
    let ready_seen = Instant::now();

    // Half-way through the grace period, the first node's sweeper pod goes away (the DaemonSet
    // starts a new one).
    tokio::time::sleep(Duration::from_secs(grace / 2)).await;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), names::SYSTEM_NAMESPACE);
    let selector = ListParams::default()
        .labels(&format!("app.kubernetes.io/name={}", names::SWEEPER))
        .fields(&format!("spec.nodeName={first}"));
    let sweepers = pods.list(&selector).await.unwrap();
    assert_eq!(sweepers.items.len(), 1, "one sweeper on node {first}");
    pods.delete(&sweepers.items[0].name_any(), &DeleteParams::default()).await.unwrap();

    let limit = Duration::from_secs(grace + 60);
    let (a_swept, b_swept) = tokio::join!(wait_swept(&env, &a, limit), wait_swept(&env, &b, limit));
    // Had the first node's new sweeper counted idle time from its own start, its sweep would
    // come a whole grace period after the restart (1.5 grace periods after Ready). The margin is
    // for a loaded machine, and stays well below half a grace period.
    let bound = Duration::from_secs(grace + 10);
    assert!(a_swept - ready_seen < bound, "the first node's backend was swept {:?} after Ready", a_swept - ready_seen);
    assert!(b_swept - ready_seen < bound, "the second node's backend was swept {:?} after Ready", b_swept - ready_seen);
    assert_eq!(swept_by(&env, &a).await, first);
    assert_eq!(swept_by(&env, &b).await, second);
}

#[tokio::test]
async fn e2e_on_two_nodes_a_controller_lost_while_backends_start_leaves_one_pod_and_one_service_each() {
    let _controller = crate::CONTROLLER.write().await;
    let env = TestEnv::new("two-nodes-controller-loss").await;
    let nodes = support::two_nodes(&env).await;
    let api: Api<SessionLivedBackend> = env.api();
    let names: Vec<String> = (0..6).map(|i| format!("start-{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        api.create(&PostParams::default(), &pinned(name, 300, &nodes[i % 2])).await.unwrap();
    }
    // While they start, the controller's pod goes away; its Deployment makes a new one, which
    // takes the Lease over and carries on.
    let system_pods: Api<Pod> = Api::namespaced(env.client.clone(), names::SYSTEM_NAMESPACE);
    let controllers = system_pods
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/name={}", names::CONTROLLER)))
        .await
        .unwrap();
    assert!(!controllers.items.is_empty(), "a controller pod runs");
    for pod in controllers.items {
        system_pods.delete(&pod.name_any(), &DeleteParams::default().grace_period(0)).await.unwrap();
    }

    let ready = |b: Option<&SessionLivedBackend>| {
        b.and_then(|b| b.status.as_ref())
            .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    };
    for name in &names {
        support::wait_for(&api, name, ready, support::READY_WITHIN).await;
    }
    let pods = env.api::<Pod>().list(&ListParams::default()).await.unwrap();
    let services = env.api::<Service>().list(&ListParams::default()).await.unwrap();
    for (i, name) in names.iter().enumerate() {
        let owned_by = |meta: &kube::api::ObjectMeta| {
            meta.owner_references.iter().flatten().any(|o| o.kind == "SessionLivedBackend" && &o.name == name)
        };
        let its_pods: Vec<&Pod> = pods.items.iter().filter(|p| owned_by(&p.metadata)).collect();
        let its_services = services.items.iter().filter(|s| owned_by(&s.metadata)).count();
        assert_eq!(its_pods.len(), 1, "backend {name} has {} pods", its_pods.len());
        assert_eq!(its_services, 1, "backend {name} has {its_services} services");
        let node = its_pods[0].spec.as_ref().and_then(|s| s.node_name.clone());
        assert_eq!(node.as_deref(), Some(nodes[i % 2].as_str()));
    }
}
