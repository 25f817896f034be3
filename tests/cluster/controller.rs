//! The controller binary against a real kube-apiserver, scheduler, garbage collector and
//! kubelet, running as its ServiceAccount (impersonation), so each test also proves the RBAC.
//!
//! None of these needs the Spawner images: backends here are unschedulable, refused, or only
//! need to be bound to the node. The Ready path (images needed) is in controller_ready.rs.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::api::{DeleteParams, ListParams};
use kube::runtime::wait::conditions;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use serde_json::json;
use spawner::crd::{Phase, SessionLivedBackend};

use crate::support::controller::*;
use crate::support::{self, TestEnv};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_backend_gets_its_pod_service_and_token_secret_and_is_scheduled() {
    let env = TestEnv::new("ctl-children").await;
    prepare(&env).await;
    let _controller = ControllerProcess::start(&env, &["--base-url=https://spawner.example"]);
    let backend = create(&env, &backend("game", json!({}))).await;
    let uid = backend.uid().unwrap();

    let backends = env.api::<SessionLivedBackend>();
    support::wait_for(&backends, "game", has_condition("Scheduled", "True"), WAIT).await;
    let out = env.kubectl(&["wait", "--for=condition=Scheduled", "slab/game", "--timeout=10s"]);
    assert!(out.contains("condition met"), "{out}");
    let backend = backends.get("game").await.unwrap();
    let status = backend.status.clone().unwrap();
    assert!(matches!(status.phase, Some(Phase::Scheduled | Phase::Running | Phase::Ready)), "{status:?}");
    assert_eq!(status.url.as_deref(), Some(format!("https://spawner.example/p/{}/game/", env.namespace).as_str()));
    assert!(status.node_name.is_some());
    assert_eq!(status.observed_generation, backend.metadata.generation);

    let pod = env.api::<Pod>().get("game").await.unwrap();
    let names: Vec<&str> = pod.spec.as_ref().unwrap().containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["app", "spawner-sidecar"]);
    assert_eq!(pod.spec.as_ref().unwrap().restart_policy.as_deref(), Some("Never"));
    let owner = &pod.owner_references()[0];
    assert_eq!((owner.uid.as_str(), owner.controller), (uid.as_str(), Some(true)));
    assert_eq!(pod.labels()["spawner.dev/backend"], "game");

    let service = env.api::<Service>().get("game").await.unwrap();
    let spec = service.spec.unwrap();
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    let port = &spec.ports.unwrap()[0];
    assert_eq!(
        (port.port, port.target_port.clone()),
        (80, Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(9080)))
    );

    let secret = env.api::<Secret>().get("game").await.unwrap();
    assert_eq!(secret.data.unwrap()["token"].0.len(), 43);
    wait_for_event(&env, "game", "PodCreated", WAIT).await;
}

/// The backend's status.reason is one of `reasons`.
fn has_reason(reasons: &'static [&'static str]) -> impl kube::runtime::wait::Condition<SessionLivedBackend> {
    move |b: Option<&SessionLivedBackend>| {
        b.and_then(|b| b.status.as_ref()?.reason.as_deref()).is_some_and(|r| reasons.contains(&r))
    }
}

/// `kubectl get slab NAME` as column name → cell.
fn kubectl_get_slab(env: &TestEnv, name: &str) -> std::collections::BTreeMap<String, String> {
    let out = env.kubectl(&["get", "slab", name]);
    let mut lines = out.lines();
    let header = lines.next().expect("a header line");
    let row = lines.next().unwrap_or_else(|| panic!("no row for {name}: {out}"));
    // Cells are separated by runs of spaces: only for a row whose cells are all set and hold no
    // space (kubectl leaves a Ready backend's REASON blank).
    header.split_whitespace().map(str::to_owned).zip(row.split_whitespace().map(str::to_owned)).collect()
}

#[tokio::test]
async fn a_spec_the_api_server_refuses_fails_the_backend_with_its_message_once() {
    let env = TestEnv::new("ctl-invalid").await;
    prepare(&env).await;
    let controller = ControllerProcess::start(&env, &[]);
    // Passes the CRD schema (the template is checked loosely) but not Pod validation.
    let template = json!({"containers": [{
        "name": "app", "image": APP_IMAGE,
        "volumeMounts": [{"name": "no-such-volume", "mountPath": "/data"}]
    }]});
    create(&env, &backend("broken", json!({"template": template, "auth": {"mode": "None"}}))).await;

    let backends = env.api::<SessionLivedBackend>();
    let failed = support::wait_for(&backends, "broken", has_condition("Failed", "True"), WAIT).await.unwrap();
    assert_eq!(failed.status.as_ref().unwrap().phase, Some(Phase::Failed));
    let condition = condition(&failed, "Failed");
    assert_eq!(condition.reason, "InvalidPod");
    assert!(condition.message.contains("no-such-volume"), "the API server's message: {}", condition.message);
    let events = wait_for_event(&env, "broken", "InvalidPod", WAIT).await;
    assert_eq!(events[0].type_.as_deref(), Some("Warning"));
    assert!(env.api::<Pod>().get_opt("broken").await.unwrap().is_none());
    // No hot loop: the Failed backend was reconciled without errors and the pod was not tried
    // again (a second refusal would have made the Event a series).
    let metrics = controller.wait_for_metric("spawner_controller_reconciles_total", WAIT).await;
    assert!(!metrics.contains("spawner_controller_reconcile_errors_total{"), "{metrics}");
    let events = wait_for_event(&env, "broken", "InvalidPod", WAIT).await;
    assert_eq!(events.len(), 1);
    assert!(events[0].series.is_none(), "the refusal was reported once: {:?}", events[0]);
}

#[tokio::test]
async fn a_backend_not_ready_in_time_fails_with_startup_timeout_and_keeps_its_pod() {
    let env = TestEnv::new("ctl-startup").await;
    prepare(&env).await;
    let _controller = ControllerProcess::start(&env, &[]);
    create(&env, &backend("slow", json!({"template": unschedulable_template(), "startupTimeoutSeconds": 2}))).await;

    let backends = env.api::<SessionLivedBackend>();
    let pending = support::wait_for(&backends, "slow", has_condition("Scheduled", "False"), WAIT).await.unwrap();
    assert_eq!(pending.status.as_ref().unwrap().phase, Some(Phase::Pending));
    let failed = support::wait_for(&backends, "slow", has_condition("Failed", "True"), WAIT).await.unwrap();
    assert_eq!(condition(&failed, "Failed").reason, "StartupTimeout");
    assert_eq!(condition(&failed, "Ready").status, "False");
    // Kept for `kubectl describe` until the failed retention ends.
    assert!(env.api::<Pod>().get_opt("slow").await.unwrap().is_some());
    wait_for_event(&env, "slow", "StartupTimeout", WAIT).await;
}

#[tokio::test]
async fn an_unschedulable_backend_says_why_in_its_conditions_and_in_kubectl_get() {
    let env = TestEnv::new("ctl-unschedulable").await;
    prepare(&env).await;
    let _controller = ControllerProcess::start(&env, &[]);
    create(&env, &backend("nowhere", json!({"template": unschedulable_template()}))).await;
    let backends = env.api::<SessionLivedBackend>();
    let backend = support::wait_for(&backends, "nowhere", has_reason(&["Unschedulable"]), WAIT).await.unwrap();
    let scheduled = condition(&backend, "Scheduled");
    assert_eq!(scheduled.reason, "Unschedulable");
    assert!(scheduled.message.contains("node"), "the scheduler's words: {scheduled:?}");
    let ready = condition(&backend, "Ready");
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "Unschedulable"));
    assert_eq!(backend.status.as_ref().unwrap().message.as_deref(), Some(scheduled.message.as_str()));
    assert_eq!(kubectl_get_slab(&env, "nowhere")["REASON"], "Unschedulable");
}

/// Nothing pulls from outside the test cluster: `.invalid` never resolves, so the kubelet
/// reports ErrImagePull, then ImagePullBackOff, as soon as it has tried.
#[tokio::test]
async fn an_unpullable_image_is_the_reason_kubectl_get_shows() {
    const IMAGE: &str = "nosuch.invalid/nosuch:1";
    let env = TestEnv::new("ctl-unpullable").await;
    prepare(&env).await;
    let _controller = ControllerProcess::start(&env, &[]);
    // No sidecar: only the application's image is pulled, whatever images the node has.
    let template = json!({"containers": [{"name": "application", "image": IMAGE}]});
    let spec = json!({"template": template, "sidecar": {"inject": false}, "auth": {"mode": "None"}});
    create(&env, &backend("unpullable", spec)).await;

    // The kubelet reports it on the pod; the backend follows.
    let pull_failed = |pod: Option<&Pod>| {
        pod.and_then(|p| p.status.as_ref()?.container_statuses.as_ref()?.first()?.state.as_ref()?.waiting.clone())
            .is_some_and(|w| matches!(w.reason.as_deref(), Some("ErrImagePull" | "ImagePullBackOff")))
    };
    support::wait_for(&env.api::<Pod>(), "unpullable", pull_failed, WAIT).await;
    let backends = env.api::<SessionLivedBackend>();
    let backend = support::wait_for(&backends, "unpullable", has_reason(&["ErrImagePull", "ImagePullBackOff"]), WAIT)
        .await
        .unwrap();
    let status = backend.status.as_ref().unwrap();
    assert_eq!(status.phase, Some(Phase::Scheduled));
    let message = status.message.as_deref().unwrap_or_default();
    assert!(message.starts_with("container application: ") && message.contains(IMAGE), "{message}");
    let ready = condition(&backend, "Ready");
    assert_eq!((Some(&ready.reason), Some(&ready.message)), (status.reason.as_ref(), status.message.as_ref()));

    let row = kubectl_get_slab(&env, "unpullable");
    assert!(matches!(row["REASON"].as_str(), "ErrImagePull" | "ImagePullBackOff"), "{row:?}");
    assert_eq!((row["PHASE"].as_str(), row["READY"].as_str()), ("Scheduled", "False"));
}

#[tokio::test]
async fn a_failed_backend_is_deleted_after_the_failed_retention() {
    let env = TestEnv::new("ctl-retention").await;
    prepare(&env).await;
    let _controller = ControllerProcess::start(&env, &["--failed-retention=2s"]);
    let backend =
        create(&env, &backend("doomed", json!({"template": unschedulable_template(), "startupTimeoutSeconds": 1})))
            .await;
    let backends = env.api::<SessionLivedBackend>();
    support::wait_for(&backends, "doomed", has_condition("Failed", "True"), WAIT).await;
    support::wait_for(&backends, "doomed", conditions::is_deleted(&backend.uid().unwrap()), WAIT).await;
    wait_for_event(&env, "doomed", "FailedRetentionExpired", WAIT).await;
}

/// A max lifetime shorter than the default startup timeout, and nothing else: accepted (the
/// startup timeout defaults to the lifetime), and the lifetime ends it.
#[tokio::test]
async fn a_backend_that_sets_only_its_max_lifetime_is_accepted_and_deleted_at_it() {
    let env = TestEnv::new("ctl-lifetime").await;
    prepare(&env).await;
    let _controller = ControllerProcess::start(&env, &[]);
    let spec = json!({"template": unschedulable_template(), "maxLifetimeSeconds": 3});
    let backend = create(&env, &backend("brief", spec)).await;
    assert_eq!(backend.spec.startup_timeout_seconds, None);
    let backends = env.api::<SessionLivedBackend>();
    support::wait_for(&backends, "brief", conditions::is_deleted(&backend.uid().unwrap()), WAIT).await;
    wait_for_event(&env, "brief", "MaxLifetimeReached", WAIT).await;
}

#[tokio::test]
async fn deleting_a_backend_removes_its_pod_service_and_secret() {
    let env = TestEnv::new("ctl-delete").await;
    prepare(&env).await;
    let _controller = ControllerProcess::start(&env, &[]);
    create(&env, &backend("gone", json!({"template": unschedulable_template()}))).await;
    let (pods, services, secrets) = (env.api::<Pod>(), env.api::<Service>(), env.api::<Secret>());
    let pod = support::wait_for(&pods, "gone", exists(), WAIT).await.unwrap();
    let service = support::wait_for(&services, "gone", exists(), WAIT).await.unwrap();
    let secret = support::wait_for(&secrets, "gone", exists(), WAIT).await.unwrap();

    env.api::<SessionLivedBackend>().delete("gone", &DeleteParams::background()).await.unwrap();
    support::wait_for(&pods, "gone", conditions::is_deleted(&pod.uid().unwrap()), WAIT).await;
    support::wait_for(&services, "gone", conditions::is_deleted(&service.uid().unwrap()), WAIT).await;
    support::wait_for(&secrets, "gone", conditions::is_deleted(&secret.uid().unwrap()), WAIT).await;
}

#[tokio::test]
async fn a_controller_killed_mid_burst_and_restarted_leaves_one_pod_and_service_per_backend() {
    const N: usize = 40;
    let env = TestEnv::new("ctl-restart").await;
    prepare(&env).await;
    let names: BTreeSet<String> = (0..N).map(|i| format!("b{i:02}")).collect();
    for name in &names {
        create(&env, &backend(name, json!({"template": unschedulable_template()}))).await;
    }
    let pods = env.api::<Pod>();
    let services = env.api::<Service>();
    let mut first = ControllerProcess::start(&env, &[]);
    // Kill it once it is part-way through.
    let some_pods = watcher(pods.clone(), watcher::Config::default())
        .applied_objects()
        .try_filter(|p| std::future::ready(p.metadata.deletion_timestamp.is_none()))
        .take(N / 4)
        .try_collect::<Vec<_>>();
    tokio::time::timeout(WAIT, some_pods).await.expect("the first controller made no pods").unwrap();
    first.kill();

    let _second = ControllerProcess::start(&env, &[]);
    for name in &names {
        support::wait_for(&pods, name, exists(), WAIT).await;
        support::wait_for(&services, name, exists(), WAIT).await;
    }
    let selector = ListParams::default().labels("app.kubernetes.io/managed-by=spawner");
    let pod_names: Vec<String> = pods.list(&selector).await.unwrap().items.iter().map(|p| p.name_any()).collect();
    let service_names: Vec<String> =
        services.list(&selector).await.unwrap().items.iter().map(|s| s.name_any()).collect();
    assert_eq!(pod_names.len(), N, "{pod_names:?}");
    assert_eq!(pod_names.iter().cloned().collect::<BTreeSet<_>>(), names);
    assert_eq!(service_names.iter().cloned().collect::<BTreeSet<_>>(), names);
    for pod in pods.list(&selector).await.unwrap() {
        assert_eq!(pod.owner_references().len(), 1, "{}", pod.name_any());
    }
}

#[tokio::test]
async fn one_of_two_replicas_leads_and_a_terminated_leader_hands_over_at_once() {
    let env = TestEnv::new("ctl-leader").await;
    prepare(&env).await;
    // A Lease of the test's own in spawner-system (the only namespace the RBAC allows Leases
    // in), so a deployed controller and other tests are unaffected.
    let lease = format!("test-{}", env.namespace);
    let args = vec![format!("--namespace={}", env.namespace), format!("--lease-name={lease}")];
    let mut a = ControllerProcess::start_with(&args);
    a.wait_for_metric("spawner_controller_leader 1", WAIT).await;
    let b = ControllerProcess::start_with(&args);
    b.wait_for_metric("spawner_controller_leader 0", WAIT).await;
    assert_eq!(b.get("/readyz").map(|(code, _)| code), Some(200), "a standby replica is ready");

    // Only the leader reconciles: the backend is handled by `a`.
    create(&env, &backend("led", json!({"template": unschedulable_template()}))).await;
    support::wait_for(&env.api::<Pod>(), "led", exists(), WAIT).await;

    let status = a.terminate();
    assert!(status.success(), "graceful shutdown exits 0: {status:?}\n{}", a.logs());
    assert!(a.logs().contains("released the Lease"), "{}", a.logs());
    // Released, not expired: `b` takes over on its next retry (2 s), far sooner than the 15 s
    // lease duration.
    b.wait_for_metric("spawner_controller_leader 1", Duration::from_secs(10)).await;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(env.client.clone(), "spawner-system");
    let holder = leases.get(&lease).await.unwrap().spec.unwrap().holder_identity.unwrap_or_default();
    assert!(b.logs().contains(&holder), "b holds the Lease ({holder})");
    let _ = leases.delete(&lease, &DeleteParams::default()).await;
}

/// A controller killed without releasing its Lease and restarted under the same identity (a pod's
/// container restarting keeps the pod's name) takes its Lease back at once, instead of waiting
/// out the 15 s lease duration as a newcomer must.
#[tokio::test]
async fn a_leader_restarted_under_its_own_name_takes_its_lease_back_at_once() {
    let env = TestEnv::new("ctl-relead").await;
    prepare(&env).await;
    let lease = format!("test-{}", env.namespace);
    let identity = format!("pod-{}", env.namespace);
    let args = vec![
        format!("--namespace={}", env.namespace),
        format!("--lease-name={lease}"),
        format!("--identity={identity}"),
    ];
    let mut first = ControllerProcess::start_with(&args);
    first.wait_for_metric("spawner_controller_leader 1", WAIT).await;
    first.kill();

    let second = ControllerProcess::start_with(&args);
    // Well inside the lease duration: only a holder that recognizes itself gets it this soon.
    second.wait_for_metric("spawner_controller_leader 1", Duration::from_secs(10)).await;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(env.client.clone(), "spawner-system");
    let spec = leases.get(&lease).await.unwrap().spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some(identity.as_str()));
    assert_eq!(spec.lease_transitions, Some(0), "taking back one's own Lease is not a transition");
    let _ = leases.delete(&lease, &DeleteParams::default()).await;
}

#[tokio::test]
async fn health_and_metrics_are_served() {
    let env = TestEnv::new("ctl-http").await;
    prepare(&env).await;
    let controller = ControllerProcess::start(&env, &[]);
    create(&env, &backend("counted", json!({"template": unschedulable_template()}))).await;
    let metrics = controller.wait_for_metric("spawner_controller_backends{phase=\"Pending\"} 1", WAIT).await;
    assert!(metrics.contains("spawner_controller_reconcile_duration_seconds_bucket"), "{metrics}");
    assert_eq!(controller.get("/healthz").map(|(code, _)| code), Some(200));
    assert_eq!(controller.get("/readyz").map(|(code, _)| code), Some(200));
    assert_eq!(controller.get("/nope").map(|(code, _)| code), Some(404));
}
