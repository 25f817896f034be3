//! Pods running the test image `localhost/spawner/netcheck` (tests/apps/netcheck/src/main.rs):
//! servers to reach and clients that report, by how they finish, what they could reach.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::runtime::wait::Condition;

use super::TestEnv;

pub const IMAGE: &str = "localhost/spawner/netcheck:0.1.0";

/// A netcheck pod: `args` as in the program's usage, `labels`, and pinned to `node` if given.
/// `serve` pods listen on 8080 and are Ready once they answer.
pub fn pod(name: &str, args: &[&str], labels: serde_json::Value, node: Option<&str>) -> Pod {
    let node_selector = node.map(|n| BTreeMap::from([("kubernetes.io/hostname", n)]));
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": node_selector,
            "containers": [{
                "name": "main",
                "image": IMAGE,
                "imagePullPolicy": "Never",
                "args": args,
                "env": [{"name": "PORT", "value": "8080"}],
                "readinessProbe": if args.first() == Some(&"serve") {
                    serde_json::json!({"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1})
                } else {
                    serde_json::Value::Null
                },
            }],
        },
    }))
    .unwrap()
}

pub fn finished() -> impl Condition<Pod> {
    |pod: Option<&Pod>| {
        pod.and_then(|p| p.status.as_ref())
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed")
    }
}

/// Creates `pod` in the env's namespace, waits for it to finish and asserts that it succeeded;
/// returns its log.
pub async fn run_to_completion(env: &TestEnv, pod: Pod) -> String {
    let pods = env.api::<Pod>();
    let name = pod.metadata.name.clone().unwrap();
    let args = pod.spec.as_ref().and_then(|s| s.containers[0].args.clone()).unwrap_or_default().join(" ");
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let done = super::wait_for(&pods, &name, finished(), Duration::from_secs(120)).await.unwrap();
    let phase = done.status.unwrap().phase.unwrap();
    let logs = pods.logs(&name, &Default::default()).await.unwrap_or_default();
    assert_eq!(phase, "Succeeded", "{name} ({args}) failed; logs:\n{logs}");
    logs
}
