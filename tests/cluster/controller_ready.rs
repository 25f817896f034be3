//! The controller's Ready path on a real node: needs the images (`cargo xtask images`:
//! localhost/spawner/sidecar and localhost/spawner/netcheck loaded into the cluster).

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use serde_json::json;
use spawner::crd::{Phase, SessionLivedBackend};

use crate::support::controller::*;
use crate::support::{self, TestEnv};

const WAIT: Duration = Duration::from_secs(120);

#[tokio::test]
async fn a_backend_gets_ready_and_kubectl_wait_returns() {
    let env = TestEnv::new("ctl-ready").await;
    prepare(&env).await;
    let _controller = ControllerProcess::start(&env, &[]);
    create(&env, &backend("ready", json!({}))).await;

    let out = env.kubectl(&["wait", "--for=condition=Ready", "slab/ready", "--timeout=120s"]);
    assert!(out.contains("condition met"), "{out}");
    let backend = env.api::<SessionLivedBackend>().get("ready").await.unwrap();
    let status = backend.status.clone().unwrap();
    assert_eq!(status.phase, Some(Phase::Ready));
    assert!(status.node_name.is_some() && status.pod_ip.is_some(), "{status:?}");
    assert!(status.started_at.is_some() && status.ready_at.is_some(), "{status:?}");
    assert_eq!(condition(&backend, "Failed").status, "False");
    for reason in ["PodCreated", "Ready"] {
        wait_for_event(&env, "ready", reason, WAIT).await;
    }
    let pod = env.api::<Pod>().get("ready").await.unwrap();
    let sidecar =
        pod.status.unwrap().container_statuses.unwrap().into_iter().find(|c| c.name == "spawner-sidecar").unwrap();
    assert!(sidecar.ready, "Ready comes from the sidecar's readiness probe");
}

#[tokio::test]
async fn a_backend_without_the_sidecar_is_ready_when_its_app_is() {
    let env = TestEnv::new("ctl-ready-bare").await;
    prepare(&env).await;
    let _controller = ControllerProcess::start(&env, &[]);
    let template = json!({"containers": [{
        "name": "app", "image": APP_IMAGE, "args": ["serve"],
        "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}
    }]});
    create(
        &env,
        &backend("bare", json!({"template": template, "sidecar": {"inject": false}, "auth": {"mode": "None"}})),
    )
    .await;
    let backends = env.api::<SessionLivedBackend>();
    support::wait_for(&backends, "bare", has_condition("Ready", "True"), WAIT).await;
    let pod = env.api::<Pod>().get("bare").await.unwrap();
    assert_eq!(pod.spec.unwrap().containers.len(), 1);
}

/// `spec.service.enabled: false`: no Service, and nothing waits for one (routing goes to the
/// pod's address, which the status has once Ready).
#[tokio::test]
async fn a_backend_without_a_service_is_ready_and_has_none() {
    let env = TestEnv::new("ctl-ready-no-svc").await;
    prepare(&env).await;
    let _controller = ControllerProcess::start(&env, &[]);
    create(&env, &backend("lean", json!({"service": {"enabled": false}}))).await;
    let backends = env.api::<SessionLivedBackend>();
    let ready = support::wait_for(&backends, "lean", has_condition("Ready", "True"), WAIT).await.unwrap();
    assert!(ready.status.unwrap().pod_ip.is_some());
    assert!(env.api::<Service>().get_opt("lean").await.unwrap().is_none(), "no Service was made");
    assert!(env.api::<Pod>().get_opt("lean").await.unwrap().is_some());
}

#[tokio::test]
async fn an_app_that_crashes_fails_the_backend_naming_its_exit_code() {
    let env = TestEnv::new("ctl-crash").await;
    prepare(&env).await;
    let _controller = ControllerProcess::start(&env, &[]);
    let template = json!({"containers": [{"name": "app", "image": APP_IMAGE, "args": ["exit", "3", "2"]}]});
    create(&env, &backend("crash", json!({"template": template}))).await;
    let backends = env.api::<SessionLivedBackend>();
    let failed = support::wait_for(&backends, "crash", has_condition("Failed", "True"), WAIT).await.unwrap();
    let condition = condition(&failed, "Failed");
    assert_eq!(condition.reason, "ContainerTerminated");
    assert!(condition.message.contains("container app exited with code 3"), "{}", condition.message);
    let events = wait_for_event(&env, "crash", "ContainerTerminated", WAIT).await;
    assert_eq!(events[0].type_.as_deref(), Some("Warning"));
}

#[tokio::test]
async fn a_restricted_namespace_admits_a_backend_whose_app_complies_and_fails_one_whose_app_does_not() {
    let env = TestEnv::new("ctl-restricted").await;
    prepare(&env).await;
    let namespaces = kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(env.client.clone());
    let label = json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}});
    namespaces
        .patch(&env.namespace, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&label))
        .await
        .unwrap();
    let _controller = ControllerProcess::start(&env, &[]);
    // The app does what `restricted` asks of every container; the injected sidecar does too.
    let compliant = json!({"containers": [{
        "name": "app", "image": APP_IMAGE, "args": ["serve"],
        "securityContext": {
            "runAsNonRoot": true, "runAsUser": 65532, "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}
        }
    }]});
    let loose = json!({"containers": [{"name": "app", "image": APP_IMAGE, "args": ["serve"]}]});
    create(&env, &backend("compliant", json!({"template": compliant}))).await;
    create(&env, &backend("loose", json!({"template": loose}))).await;

    let backends = env.api::<SessionLivedBackend>();
    support::wait_for(&backends, "compliant", has_condition("Ready", "True"), WAIT).await;
    let loose = support::wait_for(&backends, "loose", has_condition("Failed", "True"), WAIT).await.unwrap();
    let message = condition(&loose, "Failed").message;
    assert!(message.contains("violates PodSecurity \"restricted"), "{message}");
    // What the refusal names is the app container, never the sidecar.
    assert!(!message.contains("spawner-sidecar"), "{message}");
}
