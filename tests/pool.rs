//! Pools on a real node: the controller binary (as its ServiceAccount) keeps warm pods Ready,
//! replaces them, and lets garbage collection remove them with the pool. Needs the images
//! (`cargo xtask images`: localhost/spawner/sidecar and localhost/spawner/netcheck).

mod controller_support;
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use controller_support::*;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use spawner::crd::SessionLivedBackendPool;
use support::TestEnv;

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
async fn a_pool_fills_to_size_with_warm_pods_of_their_own_and_refills_when_one_goes() {
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
    let mut tokens = BTreeSet::new();
    for pod in &pods {
        let owner = &pod.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("SessionLivedBackendPool", created.uid().unwrap().as_str())
        );
        assert!(!pod.labels().contains_key("spawner.dev/backend"), "no backend's Service may select a warm pod");
        assert!(pod.name_any().starts_with("lobby-"), "{}", pod.name_any());
        // Each warm pod has a token of its own, in a Secret that goes with the pod.
        let secret = env.api::<Secret>().get(&pod.name_any()).await.expect("the warm pod's token Secret");
        assert_eq!(secret.owner_references()[0].uid, pod.uid().unwrap());
        tokens.insert(secret.data.unwrap()["token"].0.clone());
    }
    assert_eq!(tokens.len(), 2, "two warm pods, two tokens");
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
