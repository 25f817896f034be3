//! spawner-api end to end, through the deployed proxy's `/api/` (nginx → spawner-api → the
//! API server, the controller and a pool's warm pods): keyed connect under a race, the status
//! stream from replay to the sweep, and every refusal as JSON that creates nothing.

use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use http_body_util::{BodyExt, Full};
use kube::api::PostParams;
use serde_json::{Value, json};
use spawner::api::keys::admin;
use spawner::crd::SessionLivedBackendPool;

use crate::support::{self, READY_WITHIN, TestEnv, demo_pool};

/// An answer: status and body (JSON when it parses).
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: String,
    body: Value,
    text: String,
}

/// One request to the API through the proxy.
async fn call(base: &str, method: &str, path: &str, key: Option<&str>, body: Option<Vec<u8>>) -> Answer {
    try_call(base, method, path, key, body).await.unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// [`call`], with a connection that fails as an error: for loops that wait until the proxy
/// routes to the API at all (right after a deploy, the Service's rules may still be written).
async fn try_call(
    base: &str,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Vec<u8>>,
) -> Result<Answer, String> {
    let response = send(base, method, path, key, body, &[]).await?;
    let status = response.status().as_u16();
    let content_type =
        response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let bytes = tokio::time::timeout(READY_WITHIN, response.into_body().collect())
        .await
        .expect("the API answers in time")
        .map_err(|e| format!("a whole body: {e}"))?
        .to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    Ok(Answer { status, content_type, body: serde_json::from_str(&text).unwrap_or(Value::Null), text })
}

/// One request through the proxy; a connection that fails is an error.
async fn send(
    base: &str,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Vec<u8>>,
    headers: &[(&str, &str)],
) -> Result<http::Response<hyper::body::Incoming>, String> {
    let uri: http::Uri = format!("{base}{path}").parse().unwrap();
    let (host, port) = (uri.host().unwrap().to_owned(), uri.port_u16().unwrap_or(80));
    let stream =
        tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| format!("the proxy listens: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(conn);
    let mut request = http::Request::builder().method(method).uri(path).header("host", format!("{host}:{port}"));
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::from(body.unwrap_or_default()))).unwrap();
    tokio::time::timeout(READY_WITHIN, sender.send_request(request))
        .await
        .expect("the API answers in time")
        .map_err(|e| format!("an HTTP answer: {e}"))
}

fn json_body(value: Value) -> Option<Vec<u8>> {
    Some(serde_json::to_vec(&value).unwrap())
}

/// An error answer: the status, JSON `{error, message}` with this code.
fn assert_error(answer: &Answer, status: u16, code: &str) {
    assert_eq!(answer.status, status, "{answer:?}");
    assert!(answer.content_type.starts_with("application/json"), "{answer:?}");
    assert_eq!(answer.body["error"], code, "{answer:?}");
    assert!(answer.body["message"].as_str().is_some_and(|m| !m.is_empty()), "{answer:?}");
}

/// A test namespace with a pool of `size` drop-four pods (grace `grace` s, token auth) and an
/// API key for it, known to spawner-api.
struct World {
    env: TestEnv,
    base: String,
    key: String,
    key_id: String,
}

async fn world(test: &str, pool: &str, size: i32, grace: i64, max_backends: u32) -> World {
    let env = TestEnv::new(test).await;
    let mut spec = demo_pool(pool, size, "Token");
    spec.spec.grace_period_seconds = grace;
    env.api::<SessionLivedBackendPool>().create(&PostParams::default(), &spec).await.expect("the pool");
    let new = admin::create(&env.client, test, vec![env.namespace.clone()], vec![pool.into()], max_backends)
        .await
        .expect("an API key");
    let base = support::proxy_base_url(&env.client).await;
    let world = World { env, base, key: new.key, key_id: new.id };
    // spawner-api learns of the key from its watch of the keys Secret.
    let list = format!("/api/v1/namespaces/{}/backends", world.env.namespace);
    support::eventually(Duration::from_secs(30), "spawner-api knows the new key", || async {
        try_call(&world.base, "GET", &list, Some(&world.key), None).await.is_ok_and(|a| a.status == 200)
    })
    .await;
    world
}

impl World {
    fn path(&self, rest: &str) -> String {
        format!("/api/v1/namespaces/{}{rest}", self.env.namespace)
    }

    async fn revoke(&self) {
        admin::revoke(&self.env.client, &self.key_id).await.expect("revoking the test's key");
    }
}

/// Reads SSE `state` events from `response` until the stream ends or `until` says stop;
/// returns (id, state) pairs.
async fn read_states(
    response: http::Response<hyper::body::Incoming>,
    until: impl Fn(&str) -> bool,
) -> Vec<(u32, String)> {
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let (mut buffer, mut states) = (String::new(), Vec::new());
    loop {
        let frame = tokio::time::timeout(READY_WITHIN, body.frame()).await.expect("a state change in time");
        let Some(frame) = frame else { return states };
        let Ok(data) = frame.expect("a stream frame").into_data() else { continue };
        buffer.push_str(std::str::from_utf8(&data).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let id = event.lines().find_map(|l| l.strip_prefix("id: ")).map(|id| id.parse().unwrap());
            let data = event.lines().find_map(|l| l.strip_prefix("data: "));
            if let (Some(id), Some(data)) = (id, data) {
                let state: Value = serde_json::from_str(data).unwrap();
                let name = state["state"].as_str().unwrap().to_owned();
                assert!(state["message"].as_str().is_some_and(|m| !m.is_empty()), "{state}");
                let stop = until(&name);
                states.push((id, name));
                if stop {
                    return states;
                }
            }
        }
    }
}

fn names(states: &[(u32, String)]) -> Vec<&str> {
    states.iter().map(|(_, s)| s.as_str()).collect()
}

/// 20 callers race to connect with one key: one backend, made once; it works at its URL; its
/// status stream replays its way to Ready, and a second stream from Last-Event-ID 4 follows it
/// to its sweep (nobody connected for the pool's 15 s grace period).
#[tokio::test]
async fn e2e_api_connect_races_meet_at_one_backend_and_the_status_stream_follows_it_to_its_sweep() {
    let _controller = crate::CONTROLLER.read().await;
    let world = world("api-connect", "rooms", 3, 15, 5).await;
    let connect = world.path("/connect?wait=120");
    let answers = join_all((0..20).map(|_| {
        call(&world.base, "POST", &connect, Some(&world.key), json_body(json!({"key": "room 42", "pool": "rooms"})))
    }))
    .await;
    for answer in &answers {
        assert!(answer.status == 200 || answer.status == 201, "{answer:?}");
        assert_eq!(answer.body["ready"], true, "{answer:?}");
    }
    let name = answers[0].body["name"].as_str().unwrap().to_owned();
    assert!(answers.iter().all(|a| a.body["name"] == name.as_str()), "one backend for one key: {answers:?}");
    assert_eq!(answers.iter().filter(|a| a.status == 201).count(), 1, "made once: {answers:?}");
    let backend = &answers[0].body;
    assert_eq!(backend["key"], "room 42");
    assert_eq!(backend["pool"], "rooms");
    let url = backend["url"].as_str().unwrap();
    let token = backend["token"].as_str().unwrap();
    assert!(url.ends_with(&format!("/p/{}/{name}/?token={token}", world.env.namespace)), "{url}");
    let page =
        call(url.split("/p/").next().unwrap(), "GET", &format!("/p/{}", url.split("/p/").nth(1).unwrap()), None, None)
            .await;
    assert_eq!(page.status, 200, "the backend answers at its URL: {page:?}");
    let listed = call(&world.base, "GET", &world.path("/backends"), Some(&world.key), None).await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 1, "{listed:?}");
    assert_eq!(listed.body["items"][0]["token"], Value::Null, "lists carry no tokens: {listed:?}");

    let status = world.path(&format!("/backends/{name}/status"));
    let replay = read_states(
        send(&world.base, "GET", &status, Some(&world.key), None, &[]).await.expect("the status stream"),
        |s| s == "Ready",
    )
    .await;
    assert_eq!(names(&replay), ["Pending", "Scheduled", "Running", "Ready"], "{replay:?}");
    assert_eq!(replay.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [1, 2, 3, 4]);

    // From Ready on: nothing replayed, then the sweep (Terminating may be too brief to see).
    let rest = read_states(
        send(&world.base, "GET", &status, Some(&world.key), None, &[("last-event-id", "4")])
            .await
            .expect("the status stream"),
        |_| false,
    )
    .await;
    assert_eq!(rest.last().map(|(_, s)| s.as_str()), Some("Deleted"), "{rest:?}");
    assert!(rest.iter().all(|(id, _)| *id > 4), "{rest:?}");
    let gone = call(&world.base, "GET", &world.path(&format!("/backends/{name}")), Some(&world.key), None).await;
    assert_error(&gone, 404, "not_found");
    world.revoke().await;
}

/// Every refusal is JSON with the right status, and none of them makes a backend: no key, a
/// wrong one, a namespace or pool outside the key's scope, an unknown pool, malformed JSON,
/// unknown fields, an oversized body, an overlong key, invalid values, the key's limit; and a
/// revoked key stops working.
#[tokio::test]
async fn e2e_api_refusals_are_json_and_make_nothing() {
    let _controller = crate::CONTROLLER.read().await;
    let world = world("api-refusals", "games", 0, 300, 2).await;
    let backends = world.path("/backends");
    let create = |body: Value| call(&world.base, "POST", &backends, Some(&world.key), json_body(body));

    assert_error(&call(&world.base, "GET", &backends, None, None).await, 401, "unauthorized");
    let wrong = format!("{}x", &world.key[..world.key.len() - 1]);
    assert_error(&call(&world.base, "GET", &backends, Some(&wrong), None).await, 401, "unauthorized");
    let elsewhere = call(&world.base, "GET", "/api/v1/namespaces/default/backends", Some(&world.key), None).await;
    assert_error(&elsewhere, 403, "forbidden");
    assert_error(&create(json!({"pool": "other"})).await, 403, "forbidden");
    let bad_json = call(&world.base, "POST", &backends, Some(&world.key), Some(b"{\"pool\": ".to_vec())).await;
    assert_error(&bad_json, 400, "bad_request");
    let unknown = create(json!({"pool": "games", "image": "evil/miner"})).await;
    assert_error(&unknown, 400, "bad_request");
    assert!(unknown.text.contains("image"), "names the field: {unknown:?}");
    let huge = json!({"pool": "games", "values": {"BLOB": "x".repeat(100 * 1024)}});
    assert_error(&create(huge).await, 413, "payload_too_large");
    // Past nginx's own limit too: still JSON.
    let enormous = json!({"pool": "games", "values": {"BLOB": "x".repeat(2 * 1024 * 1024)}});
    assert_error(&create(enormous).await, 413, "payload_too_large");
    let long_key = json!({"key": "k".repeat(300), "pool": "games"});
    let connect = call(&world.base, "POST", &world.path("/connect"), Some(&world.key), json_body(long_key)).await;
    assert_error(&connect, 400, "bad_request");
    let invalid = create(json!({"pool": "games", "values": {"not a name": "x"}})).await;
    assert_error(&invalid, 422, "invalid");
    assert!(invalid.text.contains("values"), "names the field: {invalid:?}");
    assert_error(
        &call(&world.base, "GET", &world.path("/backends/nope"), Some(&world.key), None).await,
        404,
        "not_found",
    );
    let listed = call(&world.base, "GET", &backends, Some(&world.key), None).await;
    assert_eq!(listed.body["items"], json!([]), "nothing was made: {listed:?}");

    // The limit: two live backends, the third refused, and a refused one is not counted.
    for _ in 0..2 {
        let made = create(json!({"pool": "games"})).await;
        assert_eq!(made.status, 201, "{made:?}");
        assert_eq!(made.body["pool"], "games");
    }
    assert_error(&create(json!({"pool": "games"})).await, 429, "too_many_backends");
    let listed = call(&world.base, "GET", &backends, Some(&world.key), None).await;
    let items = listed.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{listed:?}");
    // One deleted: room for one more at once.
    let first = items[0]["name"].as_str().unwrap();
    let deleted = call(&world.base, "DELETE", &world.path(&format!("/backends/{first}")), Some(&world.key), None).await;
    assert_eq!(deleted.status, 200, "{deleted:?}");
    let again = create(json!({"pool": "games"})).await;
    assert_eq!(again.status, 201, "a deleted backend no longer counts: {again:?}");

    // Unknown pool: a key for every pool (`*`) still cannot use one that does not exist.
    let any =
        admin::create(&world.env.client, "any", vec![world.env.namespace.clone()], vec!["*".into()], 5).await.unwrap();
    support::eventually(Duration::from_secs(30), "spawner-api knows the second key", || async {
        call(&world.base, "GET", &backends, Some(&any.key), None).await.status == 200
    })
    .await;
    let missing = call(&world.base, "POST", &backends, Some(&any.key), json_body(json!({"pool": "nope"}))).await;
    assert_error(&missing, 404, "not_found");
    assert!(missing.text.contains("nope"), "names the pool: {missing:?}");
    admin::revoke(&world.env.client, &any.id).await.unwrap();

    // openapi.json needs no key.
    let openapi = call(&world.base, "GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(openapi.status, 200, "{openapi:?}");
    assert!(openapi.body["paths"]["/api/v1/namespaces/{namespace}/connect"]["post"].is_object(), "{}", openapi.text);

    world.revoke().await;
    support::eventually(Duration::from_secs(30), "a revoked key is refused", || async {
        call(&world.base, "GET", &backends, Some(&world.key), None).await.status == 401
    })
    .await;
}

/// The demo's lobby (deployed by `cargo xtask deploy`, and by `cargo xtask test` on the local
/// cluster), a web application over the API: New game shows a room code and the room's link;
/// Join with that code sends the visitor to the same room, which serves the game.
#[tokio::test]
async fn e2e_lobby_new_game_and_join_meet_in_one_room() {
    let _controller = crate::CONTROLLER.read().await;
    let client = kube::Client::try_from(support::config().await).expect("a client for the test cluster");
    let proxy = support::proxy_base_url(&client).await;
    let (host, port) = proxy.rsplit_once(':').unwrap();
    let lobby = format!("{host}:{}", port.parse::<u16>().unwrap() + 1);
    let home = call(&lobby, "GET", "/", None, None).await;
    assert_eq!(home.status, 200, "{home:?}");
    assert!(home.text.contains("New game") && home.text.contains("Join"), "{}", home.text);

    let made = call(&lobby, "POST", "/new", None, None).await;
    assert_eq!(made.status, 200, "{made:?}");
    let code = between(&made.text, "id=\"room-code\">", "<").expect("a room code");
    let play = between(&made.text, "id=\"play\" href=\"", "\"").expect("the room's link").replace("&amp;", "&");

    let joined =
        send(&lobby, "GET", &format!("/join?code={}", code.to_lowercase()), None, None, &[]).await.expect("the join");
    assert_eq!(joined.status(), 303);
    assert_eq!(joined.headers()["location"].to_str().unwrap(), play, "Join reaches the room New game made");

    let path = format!("/p/{}", play.split("/p/").nth(1).unwrap());
    let game = call(&proxy, "GET", &path, None, None).await;
    assert_eq!(game.status, 200, "{game:?}");
    assert!(game.text.contains("drop four") || game.text.contains("Drop four"), "the game's page: {}", game.text);
}

fn between(text: &str, start: &str, end: &str) -> Option<String> {
    let from = text.find(start)? + start.len();
    let to = text[from..].find(end)? + from;
    Some(text[from..to].to_owned())
}
