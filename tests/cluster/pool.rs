//! Pools on a real node: the controller binary (as its ServiceAccount) keeps warm pods Ready,
//! replaces them, and lets garbage collection remove them with the pool. Needs the images
//! (`cargo xtask images`: localhost/spawner/sidecar, netcheck and demo-drop-four).

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use spawner::crd::SessionLivedBackendPool;

use crate::support::controller::*;
use crate::support::{self, TestEnv};

const WAIT: Duration = Duration::from_secs(120);
const POOL_LABEL: &str = "spawner.dev/pool";
const TEMPLATE_LABEL: &str = "spawner.dev/pool-template";

fn pool(name: &str, size: i32) -> SessionLivedBackendPool {
    serde_json::from_value(json!({
        "apiVersion": "spawner.dev/v1",
        "kind": "SessionLivedBackendPool",
        "metadata": {"name": name},
        "spec": {
            "size": size,
            "template": {"containers": [
                {"name": "app", "image": APP_IMAGE, "imagePullPolicy": "IfNotPresent", "args": ["serve"]}
            ]},
        },
    }))
    .unwrap()
}

/// The pool reports `ready` warm pods Ready and none starting.
fn settled_at(ready: i32) -> impl kube::runtime::wait::Condition<SessionLivedBackendPool> {
    move |p: Option<&SessionLivedBackendPool>| {
        p.and_then(|p| p.status.as_ref()).is_some_and(|s| s.ready == ready && s.starting == 0)
    }
}

/// The live (not terminating) pods labelled with the pool.
async fn warm_pods(env: &TestEnv, pool: &str) -> Vec<Pod> {
    let listed = env.api::<Pod>().list(&ListParams::default().labels(&format!("{POOL_LABEL}={pool}"))).await.unwrap();
    listed.items.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect()
}

fn names(pods: &[Pod]) -> BTreeSet<String> {
    pods.iter().map(|p| p.name_any()).collect()
}

/// Waits until the pool's live pods satisfy `ok`, failing after `WAIT`.
async fn wait_for_pods(env: &TestEnv, pool: &str, what: &str, ok: impl Fn(&[Pod]) -> bool) -> Vec<Pod> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let pods = warm_pods(env, pool).await;
        if ok(&pods) {
            return pods;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: not within {WAIT:?}; pods: {:?}", names(&pods));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_pool_fills_to_size_with_warm_pods_keyed_apart_and_refills_when_one_goes() {
    let env = TestEnv::new("pool-fill").await;
    prepare(&env).await;
    let _controller = ControllerProcess::start(&env, &[]);
    let pools = env.api::<SessionLivedBackendPool>();
    let created = pools.create(&PostParams::default(), &pool("lobby", 2)).await.expect("creating the pool");

    support::wait_for(&pools, "lobby", settled_at(2), WAIT).await;
    let out = env.kubectl(&["wait", "--for=condition=Ready", "slabpool/lobby", "--timeout=10s"]);
    assert!(out.contains("condition met"), "{out}");
    let pods = warm_pods(&env, "lobby").await;
    assert_eq!(pods.len(), 2, "{:?}", names(&pods));
    let mut claim_keys = BTreeSet::new();
    for pod in &pods {
        let owner = &pod.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("SessionLivedBackendPool", created.uid().unwrap().as_str())
        );
        assert!(!pod.labels().contains_key("spawner.dev/backend"), "no backend's Service may select a warm pod");
        assert!(pod.name_any().starts_with("lobby-"), "{}", pod.name_any());
        // Each warm pod has a claim key of its own (no token: that comes with the claim), in a
        // Secret that goes with the pod.
        let secret = env.api::<Secret>().get(&pod.name_any()).await.expect("the warm pod's Secret");
        assert_eq!(secret.owner_references()[0].uid, pod.uid().unwrap());
        let data = secret.data.unwrap();
        assert!(!data.contains_key("token"), "{:?}", data.keys());
        claim_keys.insert(data["claim-key"].0.clone());
    }
    assert_eq!(claim_keys.len(), 2, "two warm pods, two claim keys");
    wait_for_event(&env, "lobby", "WarmPodsCreated", WAIT).await;
    let columns = env.kubectl(&["get", "slabpool", "lobby"]);
    assert!(columns.contains("SIZE") && columns.contains("READY") && columns.contains("STARTING"), "{columns}");

    // A warm pod that goes is replaced, and the pool holds two again, not three.
    let gone = pods[0].name_any();
    env.api::<Pod>().delete(&gone, &DeleteParams::default()).await.unwrap();
    let refilled =
        wait_for_pods(&env, "lobby", "a replacement warm pod", |pods| pods.len() == 2 && !names(pods).contains(&gone))
            .await;
    support::wait_for(&pools, "lobby", settled_at(2), WAIT).await;
    assert_eq!(names(&warm_pods(&env, "lobby").await), names(&refilled), "no extra pod once settled");
}

#[tokio::test]
async fn a_template_change_replaces_the_warm_pods_and_deleting_the_pool_removes_them() {
    let env = TestEnv::new("pool-roll").await;
    prepare(&env).await;
    let _controller = ControllerProcess::start(&env, &[]);
    let pools = env.api::<SessionLivedBackendPool>();
    pools.create(&PostParams::default(), &pool("roll", 1)).await.expect("creating the pool");
    support::wait_for(&pools, "roll", settled_at(1), WAIT).await;
    let before = warm_pods(&env, "roll").await;
    let old_hash = before[0].labels()[TEMPLATE_LABEL].clone();

    let patch = json!({"spec": {"template": {"containers": [{
        "name": "app", "image": APP_IMAGE, "imagePullPolicy": "IfNotPresent", "args": ["serve"],
        "env": [{"name": "ROUND", "value": "2"}]
    }]}}});
    pools.patch("roll", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let after = wait_for_pods(&env, "roll", "the warm pod of the new template", |pods| {
        pods.len() == 1 && pods[0].labels()[TEMPLATE_LABEL] != old_hash
    })
    .await;
    let env_vars = after[0].spec.as_ref().unwrap().containers[0].env.clone().unwrap_or_default();
    assert!(env_vars.iter().any(|e| e.name == "ROUND"), "made from the new template: {env_vars:?}");
    support::wait_for(&pools, "roll", settled_at(1), WAIT).await;
    wait_for_event(&env, "roll", "WarmPodsReplaced", WAIT).await;

    pools.delete("roll", &DeleteParams::background()).await.unwrap();
    wait_for_pods(&env, "roll", "the warm pods gone with the pool", |pods| pods.is_empty()).await;
}

#[tokio::test]
async fn a_pool_name_too_long_for_its_pods_is_refused_naming_the_field() {
    let env = TestEnv::new("pool-name").await;
    prepare(&env).await;
    let name = "p".repeat(58);
    let err = env.api::<SessionLivedBackendPool>().create(&PostParams::default(), &pool(&name, 1)).await.unwrap_err();
    let message = err.to_string();
    assert!(message.contains("metadata.name") && message.contains("57"), "{message}");
    let api: Api<SessionLivedBackendPool> = env.api();
    let negative = serde_json::from_value::<SessionLivedBackendPool>(json!({
        "apiVersion": "spawner.dev/v1", "kind": "SessionLivedBackendPool", "metadata": {"name": "neg"},
        "spec": {"size": -1, "template": {"containers": [{"name": "app", "image": APP_IMAGE}]}},
    }))
    .unwrap();
    let message = api.create(&PostParams::default(), &negative).await.unwrap_err().to_string();
    assert!(message.contains("spec.size"), "{message}");
}

/// A backend of `pool` (no template of its own).
fn pooled_backend(name: &str, pool: &str) -> spawner::crd::SessionLivedBackend {
    serde_json::from_value(json!({
        "apiVersion": "spawner.dev/v1",
        "kind": "SessionLivedBackend",
        "metadata": {"name": name},
        "spec": {"poolRef": {"name": pool}},
    }))
    .unwrap()
}

/// GET / on the sidecar's public port of `pod`, with `token` if any; the status code.
async fn status_through_sidecar(pod: &Pod, token: Option<&str>) -> u16 {
    get_through_sidecar(pod, "/", token).await.0
}

/// GET `path` on the sidecar's public port of `pod`, with `token` if any; status and raw body.
async fn get_through_sidecar(pod: &Pod, path: &str, token: Option<&str>) -> (u16, String) {
    let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).expect("a pod IP");
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n");
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    request.push_str("\r\n");
    let mut tcp = tokio::net::TcpStream::connect((ip.as_str(), 9080)).await.expect("connecting to the sidecar");
    tokio::io::AsyncWriteExt::write_all(&mut tcp, request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut tcp, &mut response).await.unwrap();
    let status = response.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    (status, response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default())
}

#[tokio::test]
async fn a_backend_takes_a_warm_pod_with_a_token_of_its_own_and_the_pool_refills() {
    let env = TestEnv::new("pool-claim").await;
    prepare(&env).await;
    let controller = ControllerProcess::start(&env, &[]);
    let pools = env.api::<SessionLivedBackendPool>();
    pools.create(&PostParams::default(), &pool("room", 2)).await.expect("creating the pool");
    support::wait_for(&pools, "room", settled_at(2), WAIT).await;
    let warm = names(&warm_pods(&env, "room").await);
    // Before a claim a warm pod serves nobody, whatever it is sent.
    let unclaimed = warm_pods(&env, "room").await.remove(0);
    assert_eq!(status_through_sidecar(&unclaimed, None).await, 503);

    let backends = env.api::<spawner::crd::SessionLivedBackend>();
    let backend = backends.create(&PostParams::default(), &pooled_backend("alice", "room")).await.unwrap();
    let out = env.kubectl(&["wait", "--for=condition=Ready", "slab/alice", "--timeout=60s"]);
    assert!(out.contains("condition met"), "{out}");
    wait_for_event(&env, "alice", "Claimed", WAIT).await;

    // Its pod is one of the warm ones, now the backend's alone.
    let listed = env.api::<Pod>().list(&ListParams::default().labels("spawner.dev/backend=alice")).await.unwrap();
    assert_eq!(listed.items.len(), 1, "{:?}", names(&listed.items));
    let pod = &listed.items[0];
    assert!(warm.contains(&pod.name_any()), "{} is not one of the warm pods {warm:?}", pod.name_any());
    // The status names it, and `kubectl get -o wide` shows it.
    let ready = backends.get("alice").await.unwrap();
    assert_eq!(ready.status.and_then(|s| s.pod_name), Some(pod.name_any()));
    let wide = env.kubectl(&["get", "slab", "alice", "-o", "wide"]);
    assert!(wide.lines().next().is_some_and(|l| l.contains("POD")) && wide.contains(&pod.name_any()), "{wide}");
    let owners = pod.owner_references();
    assert_eq!(owners.len(), 1, "one owner: {owners:?}");
    assert_eq!(
        (owners[0].kind.as_str(), owners[0].uid.as_str()),
        ("SessionLivedBackend", backend.uid().unwrap().as_str())
    );

    // Its token is in the backend's Secret and opens the pod; nothing else does.
    let token = token_of(&env, "alice").await;
    assert_eq!(status_through_sidecar(pod, Some(&token)).await, 200);
    assert_eq!(status_through_sidecar(pod, None).await, 401);
    assert_eq!(status_through_sidecar(pod, Some("not-the-token")).await, 401);

    // The pool makes up for it, with a new pod.
    let refilled = wait_for_pods(&env, "room", "the pool refilled", |pods| {
        let owned_by_pool = pods.iter().filter(|p| p.owner_references()[0].kind == "SessionLivedBackendPool").count();
        owned_by_pool == 2
    })
    .await;
    assert!(names(&refilled).contains(&pod.name_any()), "the claimed pod keeps its pool label");
    support::wait_for(&pools, "room", settled_at(2), WAIT).await;
    let claimed_one =
        |p: Option<&SessionLivedBackendPool>| p.and_then(|p| p.status.as_ref()).is_some_and(|s| s.claimed == 1);
    support::wait_for(&pools, "room", claimed_one, WAIT).await;
    // The gauges come from the controller's cache of pools, which may trail the API by a moment.
    let deadline = std::time::Instant::now() + WAIT;
    let metrics = loop {
        let (_, metrics) = controller.get("/metrics").expect("the controller serves /metrics");
        if metrics.contains("spawner_controller_warm_pods{state=\"ready\"} 2") {
            break metrics;
        }
        assert!(std::time::Instant::now() < deadline, "the warm-pod gauge never said 2 Ready:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(metrics.contains("spawner_controller_claim_duration_seconds_count 1"), "{metrics}");
    assert!(metrics.contains("spawner_controller_pool_empty_total 0"), "{metrics}");

    // Deleting the pool takes its warm pods, not the claimed one.
    pools.delete("room", &DeleteParams::background()).await.unwrap();
    let left = wait_for_pods(&env, "room", "only the claimed pod left", |pods| pods.len() == 1).await;
    assert_eq!(left[0].name_any(), pod.name_any());
    let backend = backends.get("alice").await.unwrap();
    assert_eq!(backend.status.unwrap().phase, Some(spawner::crd::Phase::Ready));
}

#[tokio::test]
async fn concurrent_claims_never_share_a_pod_and_the_rest_start_cold() {
    const POOL: i32 = 20;
    const BACKENDS: usize = 50;
    let env = TestEnv::new("pool-race").await;
    prepare(&env).await;
    let _controller = ControllerProcess::start(&env, &[]);
    let pools = env.api::<SessionLivedBackendPool>();
    pools.create(&PostParams::default(), &pool("race", POOL)).await.expect("creating the pool");
    support::wait_for(&pools, "race", settled_at(POOL), WAIT).await;

    let backends = env.api::<spawner::crd::SessionLivedBackend>();
    let names_: Vec<String> = (0..BACKENDS).map(|i| format!("b{i}")).collect();
    futures::future::try_join_all(names_.iter().map(|n| {
        let backends = backends.clone();
        let backend = pooled_backend(n, "race");
        async move { backends.create(&PostParams::default(), &backend).await }
    }))
    .await
    .expect("creating the backends");
    for name in &names_ {
        support::wait_for(&backends, name, has_condition("Ready", "True"), WAIT).await;
    }

    // One pod per backend, each controlled by its backend alone.
    let pods = env.api::<Pod>().list(&ListParams::default().labels("spawner.dev/backend")).await.unwrap().items;
    let mut by_backend = std::collections::BTreeMap::new();
    for pod in &pods {
        let controllers: Vec<_> = pod.owner_references().iter().filter(|r| r.controller == Some(true)).collect();
        assert_eq!(controllers.len(), 1, "{}: {controllers:?}", pod.name_any());
        let backend = pod.labels()["spawner.dev/backend"].clone();
        assert!(by_backend.insert(backend.clone(), pod.name_any()).is_none(), "{backend} has two pods");
    }
    assert_eq!(by_backend.len(), BACKENDS, "{by_backend:?}");
    let claimed = by_backend.iter().filter(|(backend, pod)| backend != pod).count();
    let cold = by_backend.iter().filter(|(backend, pod)| backend == pod).count();
    assert!(claimed >= POOL as usize, "every warm pod was taken: {claimed} claimed of {POOL}");
    println!("{claimed} backends took a warm pod, {cold} started cold");
    assert_eq!(claimed + cold, BACKENDS);
    // Each status names its backend's pod: the claimed warm pod's name, or its own when cold.
    let statuses = backends.list(&ListParams::default()).await.unwrap().items;
    let named: std::collections::BTreeMap<String, String> =
        statuses.into_iter().map(|b| (b.name_any(), b.status.and_then(|s| s.pod_name).unwrap_or_default())).collect();
    assert_eq!(named, by_backend);
    for (backend, pod) in &by_backend {
        let reason = if backend == pod { "ColdStart" } else { "Claimed" };
        wait_for_event(&env, backend, reason, WAIT).await;
    }
    // The pool says it ran dry.
    wait_for_event(&env, "race", "PoolEmpty", WAIT).await;
}

#[tokio::test]
async fn a_backend_waits_for_its_pool_and_admission_wants_template_or_pool() {
    let env = TestEnv::new("pool-wait").await;
    prepare(&env).await;
    let _controller = ControllerProcess::start(&env, &[]);
    let backends = env.api::<spawner::crd::SessionLivedBackend>();
    backends.create(&PostParams::default(), &pooled_backend("early", "later")).await.unwrap();
    let reason = |b: Option<&spawner::crd::SessionLivedBackend>| {
        b.and_then(|b| b.status.as_ref()?.reason.clone()).is_some_and(|r| r == "PoolNotFound")
    };
    support::wait_for(&backends, "early", reason, WAIT).await;
    let row = env.kubectl(&["get", "slab", "early"]);
    assert!(row.contains("PoolNotFound"), "{row}");

    env.api::<SessionLivedBackendPool>().create(&PostParams::default(), &pool("later", 1)).await.unwrap();
    support::wait_for(&backends, "early", has_condition("Ready", "True"), WAIT).await;

    let mut both = pooled_backend("both", "later");
    both.spec.template = pool("x", 1).spec.backend_spec().template;
    let message = backends.create(&PostParams::default(), &both).await.unwrap_err().to_string();
    assert!(message.contains("exactly one of template") && message.contains("poolRef"), "{message}");
    let mut neither = pooled_backend("neither", "later");
    neither.spec.pool_ref = None;
    let message = backends.create(&PostParams::default(), &neither).await.unwrap_err().to_string();
    assert!(message.contains("exactly one of template"), "{message}");
}

/// A claim key file shared by two controller processes (as a Secret mounted into each replica).
fn claim_key_file(test: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("spawner-claim-key-{test}-{}", std::process::id()));
    std::fs::write(&path, b"a-controller-key-of-32-bytes-xyz").unwrap();
    path
}

/// The namespace of test `name`, a claim key file that each of its controllers is started
/// with (`--claim-key-file`, the second element), its first controller, and that controller's
/// pool `name` settled at one warm pod.
async fn one_warm_pod_under_a_shared_key(name: &str) -> (TestEnv, std::path::PathBuf, String, ControllerProcess) {
    let env = TestEnv::new(&format!("pool-{name}")).await;
    prepare(&env).await;
    let key = claim_key_file(name);
    let key_arg = format!("--claim-key-file={}", key.display());
    let first = ControllerProcess::start(&env, &[&key_arg]);
    let pools = env.api::<SessionLivedBackendPool>();
    pools.create(&PostParams::default(), &pool(name, 1)).await.unwrap();
    support::wait_for(&pools, name, settled_at(1), WAIT).await;
    (env, key, key_arg, first)
}

/// The token in backend `name`'s Secret.
async fn token_of(env: &TestEnv, name: &str) -> String {
    let secret = env.api::<Secret>().get(name).await.unwrap_or_else(|e| panic!("{name}'s token Secret: {e}"));
    String::from_utf8(secret.data.unwrap()["token"].0.clone()).unwrap()
}

/// What a controller that died right after taking the pod leaves behind: the pod is the
/// backend's (owner and label), but its sidecar has no token and the backend has no Secret.
async fn take_without_handing_over(env: &TestEnv, pool: &str, backend: &spawner::crd::SessionLivedBackend) -> String {
    let pod = warm_pods(env, pool).await.remove(0);
    let owner = json!({
        "apiVersion": "spawner.dev/v1", "kind": "SessionLivedBackend", "name": backend.name_any(),
        "uid": backend.uid().unwrap(), "controller": true, "blockOwnerDeletion": true,
    });
    let patch = json!({"metadata": {
        "resourceVersion": pod.resource_version(),
        "labels": {"spawner.dev/backend": backend.name_any()},
        "ownerReferences": [owner],
    }});
    env.api::<Pod>().patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    pod.name_any()
}

#[tokio::test]
async fn a_claim_cut_short_by_a_dead_controller_is_finished_by_the_next_one() {
    let (env, key, key_arg, mut first) = one_warm_pod_under_a_shared_key("resume").await;
    first.kill();

    let backends = env.api::<spawner::crd::SessionLivedBackend>();
    let backend = backends.create(&PostParams::default(), &pooled_backend("bob", "resume")).await.unwrap();
    let taken = take_without_handing_over(&env, "resume", &backend).await;

    // The next controller (same key) hands the pod over instead of taking another.
    let _second = ControllerProcess::start(&env, &[&key_arg]);
    support::wait_for(&backends, "bob", has_condition("Ready", "True"), WAIT).await;
    let mine = env.api::<Pod>().list(&ListParams::default().labels("spawner.dev/backend=bob")).await.unwrap().items;
    assert_eq!(names(&mine), BTreeSet::from([taken.clone()]), "bob keeps the pod it took");
    assert_eq!(mine[0].owner_references().len(), 1);
    let token = token_of(&env, "bob").await;
    assert_eq!(status_through_sidecar(&mine[0], Some(&token)).await, 200);
    let _ = std::fs::remove_file(key);
}

/// The hand-over's mark goes out with the Ready status, in the same round trip: when only the
/// status lands, the next controller finds a Ready backend on an unmarked pod, and must mark it
/// without a new token (clients may already hold the old one).
#[tokio::test]
async fn a_ready_backend_whose_mark_did_not_land_is_marked_and_keeps_its_token() {
    const MARK: &str = "spawner.dev/handed-over";
    let (env, key, key_arg, mut first) = one_warm_pod_under_a_shared_key("remark").await;
    let backends = env.api::<spawner::crd::SessionLivedBackend>();
    let backend = backends.create(&PostParams::default(), &pooled_backend("dave", "remark")).await.unwrap();
    let uid = backend.uid().unwrap();
    support::wait_for(&backends, "dave", has_condition("Ready", "True"), WAIT).await;
    let token = token_of(&env, "dave").await;
    let pod = wait_for_pods(&env, "remark", "dave's pod marked", |pods| {
        pods.iter().any(|p| p.annotations().get(MARK) == Some(&uid))
    })
    .await
    .into_iter()
    .find(|p| p.annotations().get(MARK) == Some(&uid))
    .unwrap();
    first.kill();

    let unmark = json!({"metadata": {"annotations": {MARK: null}}});
    env.api::<Pod>().patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&unmark)).await.unwrap();
    let _second = ControllerProcess::start(&env, &[&key_arg]);
    wait_for_pods(&env, "remark", "dave's pod marked again", |pods| {
        pods.iter().any(|p| p.name_any() == pod.name_any() && p.annotations().get(MARK) == Some(&uid))
    })
    .await;
    assert_eq!(token_of(&env, "dave").await, token, "the token clients may hold stays");
    assert_eq!(status_through_sidecar(&pod, Some(&token)).await, 200, "and still opens the pod");
    let _ = std::fs::remove_file(key);
}

#[tokio::test]
async fn a_pod_taken_under_another_controller_key_is_replaced_by_a_cold_start() {
    let env = TestEnv::new("pool-rekey").await;
    prepare(&env).await;
    let mut first = ControllerProcess::start(&env, &[]);
    let pools = env.api::<SessionLivedBackendPool>();
    pools.create(&PostParams::default(), &pool("rekey", 1)).await.unwrap();
    support::wait_for(&pools, "rekey", settled_at(1), WAIT).await;
    first.kill();

    let backends = env.api::<spawner::crd::SessionLivedBackend>();
    let backend = backends.create(&PostParams::default(), &pooled_backend("carol", "rekey")).await.unwrap();
    let taken = take_without_handing_over(&env, "rekey", &backend).await;

    // A controller with a new random key cannot hand that pod over: the pod served nobody, so
    // it goes, and carol starts cold.
    let _second = ControllerProcess::start(&env, &[]);
    support::wait_for(&backends, "carol", has_condition("Ready", "True"), WAIT).await;
    wait_for_event(&env, "carol", "ColdStart", WAIT).await;
    let mine = env.api::<Pod>().list(&ListParams::default().labels("spawner.dev/backend=carol")).await.unwrap().items;
    let live: Vec<Pod> = mine.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
    assert_eq!(names(&live), BTreeSet::from(["carol".to_string()]), "not {taken}");
}

/// What is per session reaches the application after the claim, and only its own session's: two
/// backends claim the two warm pods of one pool, each with its own values and connect key, and
/// each application (the drop-four demo, which shows what its sidecar delivered at /session)
/// sees exactly its own.
#[tokio::test]
async fn each_claimed_pod_gets_its_own_sessions_values_and_key() {
    let env = TestEnv::new("pool-session").await;
    prepare(&env).await;
    let _controller = ControllerProcess::start(&env, &[]);
    let pools = env.api::<SessionLivedBackendPool>();
    let demo: SessionLivedBackendPool = serde_json::from_value(json!({
        "apiVersion": "spawner.dev/v1", "kind": "SessionLivedBackendPool", "metadata": {"name": "rooms"},
        "spec": {"size": 2, "template": {"containers": [
            {"name": "app", "image": spawner::names::image("demo-drop-four"), "imagePullPolicy": "IfNotPresent"}
        ]}},
    }))
    .unwrap();
    pools.create(&PostParams::default(), &demo).await.expect("creating the pool");
    support::wait_for(&pools, "rooms", settled_at(2), WAIT).await;

    let backends = env.api::<spawner::crd::SessionLivedBackend>();
    for who in ["alice", "carol"] {
        let mut backend = pooled_backend(who, "rooms");
        backend.spec.values = [("ROOM".to_string(), format!("{who}'s room"))].into();
        backend.metadata.annotations = Some([("spawner.dev/connect-key".to_string(), format!("key of {who}"))].into());
        backends.create(&PostParams::default(), &backend).await.unwrap();
    }
    for who in ["alice", "carol"] {
        let out = env.kubectl(&["wait", "--for=condition=Ready", &format!("slab/{who}"), "--timeout=60s"]);
        assert!(out.contains("condition met"), "{out}");
        wait_for_event(&env, who, "Claimed", WAIT).await;
        let pods = env.api::<Pod>().list(&ListParams::default().labels(&format!("spawner.dev/backend={who}"))).await;
        let pod = pods.unwrap().items.remove(0);
        let token = token_of(&env, who).await;
        let (status, body) = get_through_sidecar(&pod, "/session", Some(&token)).await;
        assert_eq!(status, 200, "{body}");
        let session: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(
            session,
            json!({"namespace": env.namespace, "backend": who, "key": format!("key of {who}"),
                   "values": {"ROOM": format!("{who}'s room")}}),
            "{who} read another session's settings, or none"
        );
    }
}
