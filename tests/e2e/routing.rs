//! Ready means routable, and starting means wait: through the deployed proxy (nginx and
//! spawner-router), the first request to a backend sent the instant its status says Ready is
//! answered — cold and claimed from a pool — a request sent right after create is held and
//! answered once the backend is Ready (HTTP and WebSocket), and one held for a backend that
//! fails gets the failure as JSON.

use std::sync::Mutex;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use kube::api::{DeleteParams, PostParams};
use spawner::client::Backends;
use spawner::crd::{AuthMode, PoolRef, SessionLivedBackend, SessionLivedBackendPool};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{self, READY_WITHIN, TestEnv, demo_pool, wait_for};

/// Backends per kind (cold, warm) in the first-request test: 200 first requests in all.
const PER_KIND: usize = 100;
/// Backends starting at once: enough to overlap claims, refills and cold starts, few enough
/// for a two-core machine.
const AT_ONCE: usize = 10;

fn ready(backend: Option<&SessionLivedBackend>) -> bool {
    backend
        .and_then(|b| b.status.as_ref())
        .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A drop-four backend with token auth: from `pool`, or cold from the demo's template.
fn drop_four(pool: Option<&str>, name: &str) -> SessionLivedBackend {
    let mut backend = support::demo_backend(name, 300);
    backend.spec.shape.auth.mode = AuthMode::Token;
    if let Some(pool) = pool {
        backend.spec.template = None;
        backend.spec.pool_ref = Some(PoolRef { name: pool.into() });
    }
    backend
}

/// One GET of `url` with a plain HTTP/1.1 client: status and body.
async fn get(url: &str) -> Result<(u16, String), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let (host, port) = (uri.host().unwrap_or("127.0.0.1").to_string(), uri.port_u16().unwrap_or(80));
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| format!("{url}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    tokio::spawn(conn);
    let request = http::Request::get(path)
        .header("host", format!("{host}:{port}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(120), sender.send_request(request))
        .await
        .map_err(|_| format!("{url}: no answer in 120 s"))?
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response.status().as_u16();
    let body = http_body_util::BodyExt::collect(response.into_body()).await.map_err(|e| format!("{url}: {e}"))?;
    Ok((status, String::from_utf8_lossy(&body.to_bytes()).into_owned()))
}

/// 200 backends, half cold and half claimed from a pool (which runs dry now and then, so some
/// of those start cold too): each one's first request goes out the moment the watch shows it
/// Ready, and every one is answered by the application.
#[tokio::test]
async fn e2e_the_first_request_at_ready_is_answered_cold_and_warm() {
    let _controller = crate::CONTROLLER.read().await;
    let env = TestEnv::new("e2e-ready-routable").await;
    env.api::<SessionLivedBackendPool>()
        .create(&PostParams::default(), &demo_pool("rooms", 10, "Token"))
        .await
        .unwrap();
    let backends = Backends::new(env.client.clone(), env.namespace.clone());
    let failures = Mutex::new(Vec::new());

    let plan = (0..PER_KIND)
        .map(|i| (None, format!("cold-{i}")))
        .chain((0..PER_KIND).map(|i| (Some("rooms"), format!("warm-{i}"))));
    futures::stream::iter(plan)
        .for_each_concurrent(AT_ONCE, |(pool, name)| {
            let (env, backends, failures) = (&env, &backends, &failures);
            async move {
                let api = env.api::<SessionLivedBackend>();
                api.create(&PostParams::default(), &drop_four(pool, &name)).await.expect("creating a backend");
                let backend = wait_for(&api, &name, ready, READY_WITHIN).await.expect("the backend exists");
                let url = backends.access_url(&backend).await.expect("its URL with the token");
                match get(&url).await {
                    Ok((200, body)) if body.contains("<title>Drop four</title>") => {}
                    other => failures.lock().unwrap().push(format!("{name}: {other:?}")),
                }
                api.delete(&name, &DeleteParams::default()).await.expect("deleting the backend");
            }
        })
        .await;
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "{} of {} first requests failed: {failures:#?}", failures.len(), 2 * PER_KIND);
}

/// A request and a WebSocket sent right after create, long before Ready: held by the router and
/// answered once the backend is Ready — cold and from a pool.
#[tokio::test]
async fn e2e_requests_sent_right_after_create_are_held_until_ready() {
    let _controller = crate::CONTROLLER.read().await;
    let env = TestEnv::new("e2e-held").await;
    env.api::<SessionLivedBackendPool>().create(&PostParams::default(), &demo_pool("open", 1, "None")).await.unwrap();
    let api = env.api::<SessionLivedBackend>();
    let base = support::proxy_base_url(&env.client).await;
    for (pool, name) in [(None, "cold"), (Some("open"), "warm")] {
        let mut backend = drop_four(pool, name);
        // No token to wait for: the request goes out right after the create.
        backend.spec.shape.auth.mode = AuthMode::None;
        // The requests go out as soon as the create is answered: before the controller can
        // have claimed or started anything, so they are held, not merely served.
        api.create(&PostParams::default(), &backend).await.unwrap();
        let path = format!("{base}/p/{}/{name}/", env.namespace);
        let ws_url = format!("{}ws", path.replacen("http://", "ws://", 1));
        let (page, socket) = tokio::join!(get(&path), tokio_tungstenite::connect_async(&ws_url));
        let (status, body) = page.unwrap();
        assert_eq!(status, 200, "{name}: {body}");
        assert!(body.contains("<title>Drop four</title>"), "{name}: {body}");
        let (mut socket, _) = socket.unwrap_or_else(|e| panic!("{name}: the held WebSocket: {e}"));
        socket.send(Message::text(r#"{"type":"join"}"#)).await.unwrap();
        assert_eq!(support::next_of_type(&mut socket, "welcome").await["role"], "red", "{name}");
    }
}

/// A backend that cannot start, and a request waiting for it: the request gets the backend's
/// failure as JSON once the controller gives up, not a hang.
#[tokio::test]
async fn e2e_a_request_held_for_a_backend_that_fails_gets_the_failure_as_json() {
    let _controller = crate::CONTROLLER.read().await;
    let env = TestEnv::new("e2e-held-fails").await;
    let backend: SessionLivedBackend = serde_json::from_value(serde_json::json!({
        "apiVersion": "spawner.dev/v1",
        "kind": "SessionLivedBackend",
        "metadata": {"name": "doomed"},
        "spec": {
            "startupTimeoutSeconds": 3,
            "auth": {"mode": "None"},
            "template": {"containers": [{"name": "application", "image": "localhost/spawner/no-such-image:0"}]}
        }
    }))
    .unwrap();
    env.api::<SessionLivedBackend>().create(&PostParams::default(), &backend).await.unwrap();
    let base = support::proxy_base_url(&env.client).await;
    let (status, body) = get(&format!("{base}/p/{}/doomed/", env.namespace)).await.unwrap();
    assert_eq!(status, 502, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    assert_eq!(body["error"], "backend failed", "{body}");
    assert_eq!(body["phase"], "Failed", "{body}");
    assert_eq!(body["reason"], "StartupTimeout", "{body}");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("startupTimeoutSeconds")), "{body}");
}
