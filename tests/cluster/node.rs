//! Smoke tests of the local cluster's node: pods from locally built images run, reach each
//! other over a Service's ClusterIP and DNS name, a bad image fails with an Event that says so,
//! and deleting a namespace removes what was in it.

use std::time::Duration;

use futures::TryStreamExt;
use k8s_openapi::api::core::v1::{Event, Namespace, Pod, Service};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::wait::conditions;
use kube::runtime::{WatchStreamExt, watcher};

use crate::support::{self, TestEnv, netcheck};

fn pod(name: &str, args: &[&str], labels: serde_json::Value) -> Pod {
    netcheck::pod(name, args, labels, None)
}

/// A `serve` pod of another image.
fn pod_of_image(name: &str, image: &str) -> Pod {
    let mut pod = pod(name, &["serve"], serde_json::json!({}));
    pod.spec.as_mut().unwrap().containers[0].image = Some(image.to_string());
    pod
}

async fn run_to_completion(env: &TestEnv, name: &str, args: &[&str]) -> String {
    netcheck::run_to_completion(env, pod(name, args, serde_json::json!({}))).await
}

#[tokio::test]
async fn pods_from_local_images_reach_each_other_by_cluster_ip_and_dns() {
    let env = TestEnv::new("node-network").await;
    let pods = env.api::<Pod>();
    pods.create(&PostParams::default(), &pod("web", &["serve"], serde_json::json!({"app": "web"}))).await.unwrap();
    support::wait_for(&pods, "web", conditions::is_pod_running(), Duration::from_secs(90)).await;

    let service: Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }))
    .unwrap();
    let service = env.api::<Service>().create(&PostParams::default(), &service).await.unwrap();
    let cluster_ip = service.spec.unwrap().cluster_ip.unwrap();

    let by_ip = run_to_completion(&env, "by-ip", &["get", &format!("http://{cluster_ip}/"), "60"]).await;
    assert!(by_ip.contains("hello from web"), "unexpected answer over the ClusterIP: {by_ip}");
    let dns_name = format!("http://web.{}.svc.cluster.local/", env.namespace);
    let by_dns = run_to_completion(&env, "by-dns", &["get", &dns_name, "60"]).await;
    assert!(by_dns.contains("hello from web"), "unexpected answer over DNS: {by_dns}");
}

#[tokio::test]
async fn a_pod_with_a_missing_image_fails_with_an_event_naming_it() {
    let env = TestEnv::new("node-bad-image").await;
    let image = "localhost/spawner/does-not-exist:0.0.0";
    env.api::<Pod>().create(&PostParams::default(), &pod_of_image("bad", image)).await.unwrap();
    let events = watcher(env.api::<Event>(), watcher::Config::default().fields("involvedObject.name=bad"))
        .applied_objects()
        .try_filter(|e| std::future::ready(e.reason.as_deref() == Some("ErrImageNeverPull")));
    let event = tokio::time::timeout(Duration::from_secs(60), std::pin::pin!(events).try_next())
        .await
        .expect("no ErrImageNeverPull event within 60s")
        .unwrap()
        .unwrap();
    assert!(event.message.as_deref().unwrap_or("").contains(image), "{event:?}");
}

#[tokio::test]
async fn deleting_a_namespace_removes_its_pods() {
    let env = TestEnv::new("node-ns-delete").await;
    let pods = env.api::<Pod>();
    pods.create(&PostParams::default(), &pod("web", &["serve"], serde_json::json!({}))).await.unwrap();
    support::wait_for(&pods, "web", conditions::is_pod_running(), Duration::from_secs(90)).await;
    let namespaces = Api::<Namespace>::all(env.client.clone());
    let uid = namespaces.get(&env.namespace).await.unwrap().metadata.uid.unwrap();
    namespaces.delete(&env.namespace, &DeleteParams::default()).await.unwrap();
    // Namespace deletion finishes only once every pod in it is gone (kubelet confirmed).
    support::wait_for(&namespaces, &env.namespace, conditions::is_deleted(&uid), Duration::from_secs(120)).await;
}
