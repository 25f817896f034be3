//! kind via testcontainers: a throwaway two-node cluster of its own (see `kind_cluster.rs`),
//! Spawner deployed into it, and one backend's life through everything a user touches — created,
//! Ready, played through the reverse proxy's NodePort over a WebSocket, left, swept by the
//! sweeper with its Pod and Service.
//!
//! Needs only Docker (`cargo test --test e2e kind::`); the node image and Spawner's images are
//! built by `cargo xtask` on first use and cached. Independent of `SPAWNER_TEST_CLUSTER`.

use std::path::Path;
use std::time::{Duration, Instant};

use futures::SinkExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::conditions;
use kube::{Client, Config, ResourceExt};
use spawner::crd::SessionLivedBackend;
use tokio_tungstenite::tungstenite::Message;

use crate::kind_cluster::KindCluster;
use crate::support;

/// Short, so the sweep is quick to see; long enough to connect after Ready on a busy machine.
const GRACE_SECONDS: u64 = 20;

async fn client(kubeconfig: &Path) -> Client {
    let kubeconfig = Kubeconfig::read_from(kubeconfig).expect("reading the kind cluster's kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("the kind cluster's kubeconfig is usable");
    Client::try_from(config).expect("a client for the kind cluster")
}

fn gone<K>(object: Option<&K>) -> bool {
    object.is_none()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kind_a_throwaway_two_node_cluster_serves_a_backend_through_the_proxy_and_sweeps_it() {
    let started = Instant::now();
    let cluster = KindCluster::start("spawner-tc", 1).await;
    let cluster_up = started.elapsed();
    assert_eq!(cluster.node_names().len(), 2, "a control plane and one worker: {:?}", cluster.node_names());
    let client = client(cluster.kubeconfig_path()).await;

    let namespace = "kind-e2e";
    let ns =
        Namespace { metadata: ObjectMeta { name: Some(namespace.into()), ..Default::default() }, ..Default::default() };
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.expect("creating the namespace");
    let backends: Api<SessionLivedBackend> = Api::namespaced(client.clone(), namespace);
    let name = "drop-four";
    let backend = support::create_ready(&backends, &support::demo_backend(name, GRACE_SECONDS)).await;
    let uid = backend.uid().expect("a created backend has a UID");
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let node = pods.get(name).await.expect("the backend's pod").spec.and_then(|s| s.node_name).unwrap_or_default();
    eprintln!(
        "backend {namespace}/{name} Ready on {node} ({:.1?} after the cluster was up)",
        started.elapsed() - cluster_up
    );

    // Through the proxy's NodePort, mapped to this machine by the control-plane container.
    let host = cluster.base_url().trim_start_matches("http://");
    let ws_url = format!("ws://{host}/p/{namespace}/{name}/ws");
    let mut player = support::first_websocket(&ws_url).await;
    player.send(Message::text(r#"{"type":"join"}"#)).await.unwrap();
    assert_eq!(support::next_of_type(&mut player, "welcome").await["role"], "red");
    player.close(None).await.unwrap();
    let left = Instant::now();

    // Nobody connected: the sweeper on the pod's node deletes the backend after its grace
    // period, and garbage collection takes its Pod and Service.
    let bound = Duration::from_secs(GRACE_SECONDS + 60);
    support::wait_for(&backends, name, conditions::is_deleted(&uid), bound).await;
    let swept_after = left.elapsed();
    assert!(swept_after >= Duration::from_secs(GRACE_SECONDS - 1), "swept after only {swept_after:?}");
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    tokio::join!(
        support::wait_for(&pods, name, gone::<Pod>, Duration::from_secs(90)),
        support::wait_for(&services, name, gone::<Service>, Duration::from_secs(90)),
    );
    eprintln!(
        "kind {}: backend swept {swept_after:.1?} after the player left (grace {GRACE_SECONDS} s); cluster up in \
         {cluster_up:.1?}, whole test {:.1?}",
        cluster.name(),
        started.elapsed()
    );
}
