//! The API server goes away and comes back. Needs Spawner deployed (the name starts `e2e_`) and
//! the local cluster of `cargo xtask cluster` (the test stops its kube-apiserver). It has its own
//! test binary, so no other test runs while the API server is down.
//!
//! While the API server is gone nothing can be deleted or created: a backend in use must come
//! through untouched, an idle one whose grace period ran out meanwhile is swept once the API
//! server is back, and the controller carries on with new backends.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use kube::api::Api;
use kube::runtime::wait::conditions;
use spawner::crd::SessionLivedBackend;
use support::TestEnv;
use tokio_tungstenite::tungstenite::Message;

const GRACE_SECONDS: u64 = 10;
/// Longer than the grace period: the idle backend's deadline passes while it cannot be deleted.
const OUTAGE: Duration = Duration::from_secs(GRACE_SECONDS + 5);
async fn create_ready(api: &Api<SessionLivedBackend>, name: &str) -> SessionLivedBackend {
    support::create_ready(api, &support::demo_backend(name, GRACE_SECONDS)).await
}

/// The local cluster's kube-apiserver, as `cargo xtask cluster` recorded it.
fn apiserver_pid() -> u32 {
    assert!(
        std::env::var("SPAWNER_TEST_CLUSTER").as_deref() != Ok("existing"),
        "this test stops and restarts the API server: it needs the local cluster of `cargo xtask cluster`"
    );
    let pidfile: PathBuf = support::local_kubeconfig().with_file_name("run").join("kube-apiserver.pid");
    let text = std::fs::read_to_string(&pidfile).unwrap_or_else(|e| panic!("reading {}: {e}", pidfile.display()));
    text.lines().next().and_then(|l| l.trim().parse().ok()).unwrap_or_else(|| panic!("no pid in {text:?}"))
}

/// A text frame in answer to a move: the game, and every hop to it, still works.
async fn answers(socket: &mut support::ProxiedWebSocket) {
    socket.send(Message::text(r#"{"type":"move","column":0}"#)).await.expect("sending through the WebSocket");
    loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => return,
            Ok(Some(Ok(_))) => continue,
            other => panic!("the WebSocket did not answer: {other:?}"),
        }
    }
}

#[tokio::test]
async fn e2e_an_api_server_outage_sweeps_no_backend_in_use_and_the_idle_one_after() {
    let env = TestEnv::new("outage").await;
    let backends = env.api::<SessionLivedBackend>();
    let (busy, idle) = tokio::join!(create_ready(&backends, "busy"), create_ready(&backends, "idle"));
    let url = busy.status.as_ref().and_then(|s| s.url.clone()).expect("a Ready backend has a URL");
    let mut socket = support::first_websocket(&format!("{}ws", url.replacen("http", "ws", 1))).await;
    socket.send(Message::text(r#"{"type":"join"}"#)).await.unwrap();
    answers(&mut socket).await;

    let pid = apiserver_pid();
    let killed = Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    assert!(killed.success(), "kill -KILL {pid}: {killed}");
    // The outage itself is what is under test, so it lasts a fixed time: past the idle
    // backend's deadline, with the busy one's WebSocket open all along.
    tokio::time::sleep(OUTAGE).await;
    answers(&mut socket).await;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let up = Command::new(cargo).args(["xtask", "cluster", "up"]).current_dir(support::repo_root()).output().unwrap();
    assert!(up.status.success(), "`cargo xtask cluster up` did not bring the API server back: {up:?}");

    // A fresh client: the old one's connections died with the API server.
    let client = kube::Client::try_from(support::config().await).unwrap();
    let backends: Api<SessionLivedBackend> = Api::namespaced(client, &env.namespace);
    let idle_uid = idle.metadata.uid.clone().unwrap();
    support::wait_for(&backends, "idle", conditions::is_deleted(&idle_uid), Duration::from_secs(120)).await;
    let still = backends.get_opt("busy").await.unwrap();
    assert_eq!(still.and_then(|b| b.metadata.uid), busy.metadata.uid.clone(), "the backend in use was swept");
    answers(&mut socket).await;

    // The controller carries on, and so does the router: the new backend is served through the
    // proxy at the first attempt (a router whose watch is still backing off holds the request
    // until it catches up). A long grace period: the others' 10 s would be tight behind that.
    let after = support::create_ready(&backends, &support::demo_backend("after", 300)).await;
    let url = after.status.as_ref().and_then(|s| s.url.clone()).expect("a Ready backend has a URL");
    let mut reached = support::first_websocket(&format!("{}ws", url.replacen("http", "ws", 1))).await;
    reached.send(Message::text(r#"{"type":"join"}"#)).await.unwrap();
    answers(&mut reached).await;
    reached.close(None).await.unwrap();

    // And the busy backend is swept once its player leaves.
    socket.close(None).await.unwrap();
    drop(socket);
    let busy_uid = busy.metadata.uid.clone().unwrap();
    let bound = Duration::from_secs(GRACE_SECONDS + 60);
    support::wait_for(&backends, "busy", conditions::is_deleted(&busy_uid), bound).await;
}
