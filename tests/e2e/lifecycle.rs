//! End to end, through everything a user touches: Spawner deployed in the test cluster
//! (`cargo xtask deploy`, which `cargo xtask test` runs first), a drop-four backend created with
//! the `spawner` CLI, two players over WebSockets through the nginx proxy at the URL the CLI
//! prints (token included), a client without the token refused, and the backend swept once both
//! players have left and its grace period has passed, with its Pod, Service and Secret.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use kube::runtime::wait::conditions;
use serde_json::Value;
use spawner::crd::SessionLivedBackend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::support::{self, TestEnv};

/// Short, so the sweep is quick to see; long enough that the backend is not swept between
/// becoming Ready and the first player connecting.
const GRACE_SECONDS: u64 = 15;

/// `http://host:port/p/ns/name/?token=T` split into its parts.
struct BackendUrl {
    host: String,
    port: u16,
    path: String,
    token: String,
}

fn parse_url(url: &str) -> BackendUrl {
    let rest = url.strip_prefix("http://").unwrap_or_else(|| panic!("not an http URL: {url}"));
    let (authority, path_and_query) = rest.split_once('/').unwrap();
    let (host, port) = authority.split_once(':').map(|(h, p)| (h, p.parse().unwrap())).unwrap_or((authority, 80));
    let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    let token =
        query.split('&').find_map(|kv| kv.strip_prefix("token=")).unwrap_or_else(|| panic!("no token in {url}"));
    BackendUrl { host: host.into(), port, path: format!("/{path}"), token: token.into() }
}

/// One HTTP/1.1 GET, returning the status, headers and body.
async fn get(host: &str, port: u16, path: &str) -> (u16, HashMap<String, String>, String) {
    let mut stream =
        TcpStream::connect((host, port)).await.unwrap_or_else(|e| panic!("connecting to {host}:{port}: {e}"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw)).await.unwrap().unwrap();
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

async fn state_where<S>(socket: &mut S, what: &str, check: impl Fn(&Value) -> bool) -> Value
where
    S: StreamExt<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = support::next_of_type(socket, "state").await;
        if check(&state) {
            return state;
        }
        assert!(Instant::now() < deadline, "{what}: not seen in 30 s (last {state})");
    }
}

#[tokio::test]
async fn e2e_two_players_play_through_the_proxy_and_the_backend_is_swept_after_they_leave() {
    let _controller = crate::CONTROLLER.read().await;
    let env = TestEnv::new("e2e").await;
    let grace = GRACE_SECONDS.to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_spawner"))
        .args(["--namespace", &env.namespace, "create", "--image", &spawner::names::image("demo-drop-four")])
        .args(["--generate-name", "drop-four-", "--grace-period", &grace, "--wait", "--timeout", "3m"])
        .env("KUBECONFIG", support::kubeconfig_path())
        .output()
        .unwrap();
    assert!(out.status.success(), "spawner create --wait failed: {}", String::from_utf8_lossy(&out.stderr));
    let url = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let BackendUrl { host, port, path, token } = parse_url(&url);
    let name = path.trim_end_matches('/').rsplit('/').next().unwrap().to_owned();
    assert_eq!(path, format!("/p/{}/{name}/", env.namespace), "status.url is the proxy path");

    // First player in right away: from Ready, the grace period runs for a backend nobody uses.
    let ws_url = format!("ws://{host}:{port}{path}ws?token={token}");
    let mut red = support::first_websocket(&ws_url).await;
    red.send(Message::text(r#"{"type":"join"}"#)).await.unwrap();
    assert_eq!(support::next_of_type(&mut red, "welcome").await["role"], "red");

    // The page itself, with the token, through the proxy at exactly status.url.
    let (status, _, body) = get(&host, port, &format!("{path}?token={token}")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("<title>Drop four</title>"));

    // Without the token: refused, over plain HTTP and for a WebSocket alike.
    let (status, _, body) = get(&host, port, &path).await;
    assert_eq!(status, 401, "{body}");
    match tokio_tungstenite::connect_async(format!("ws://{host}:{port}{path}ws")).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
        Err(e) => panic!("expected a 401 for a WebSocket without the token, got {e}"),
        Ok(_) => panic!("a WebSocket without the token was let in"),
    }
    let (status, _, body) = get(&host, port, &format!("{path}?token=wrong-{token}")).await;
    assert_eq!(status, 401, "a wrong token is refused: {body}");

    // The proxy's own answers: missing slash, unknown backend.
    let (status, headers, _) = get(&host, port, &format!("/p/{}/{name}?token={token}", env.namespace)).await;
    assert_eq!(status, 301);
    assert_eq!(headers["location"], format!("{path}?token={token}"));
    let (status, _, body) = get(&host, port, &format!("/p/{}/no-such-backend/", env.namespace)).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no such backend"), "{body}");

    // Second player; moves go both ways.
    let (mut yellow, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    yellow.send(Message::text(r#"{"type":"join"}"#)).await.unwrap();
    assert_eq!(support::next_of_type(&mut yellow, "welcome").await["role"], "yellow");
    red.send(Message::text(r#"{"type":"move","column":3}"#)).await.unwrap();
    state_where(&mut yellow, "red's disc seen by yellow", |s| s["board"][5][3] == "red" && s["turn"] == "yellow").await;
    yellow.send(Message::text(r#"{"type":"move","column":3}"#)).await.unwrap();
    state_where(&mut red, "yellow's disc seen by red", |s| s["board"][4][3] == "yellow" && s["turn"] == "red").await;
    // Out of turn: only the sender hears about it.
    yellow.send(Message::text(r#"{"type":"move","column":0}"#)).await.unwrap();
    assert_eq!(support::next_of_type(&mut yellow, "error").await["message"], "it is not your turn");

    // Both leave; the sweeper deletes the backend once it has been idle for the grace period.
    red.close(None).await.unwrap();
    yellow.close(None).await.unwrap();
    let left = Instant::now();
    let backends = env.api::<SessionLivedBackend>();
    let uid = backends.get(&name).await.unwrap().metadata.uid.unwrap();
    let bound = Duration::from_secs(GRACE_SECONDS + 60);
    support::wait_for(&backends, &name, conditions::is_deleted(&uid), bound).await;
    let swept_after = left.elapsed();
    eprintln!("backend swept {swept_after:.1?} after the players left (grace period {GRACE_SECONDS} s)");
    // The sidecar counts idleness from the last disconnect, which is after `left`.
    assert!(swept_after >= Duration::from_secs(GRACE_SECONDS - 1), "swept after only {swept_after:?}");

    support::wait_for_children_gone(&env, &name, Duration::from_secs(90)).await;
    // And the proxy no longer routes it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, _, _) = get(&host, port, &format!("{path}?token={token}")).await;
        if status == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "the proxy still answers {status} for the swept backend after 60 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
