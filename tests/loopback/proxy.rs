//! The generated nginx.conf in a real nginx on loopback, with a real `spawner-router` server
//! in front of it whose backend table the test writes (as the watch would): an echo server and
//! the drop-four demo stand in for backends' pods. Proves prefix stripping with the raw path and
//! query, the slash redirect, X-Forwarded-*, WebSocket upgrades, unbuffered streaming, requests
//! held while a backend starts (HTTP and WebSocket), the JSON errors for unknown, failed and
//! late backends, and pass-through of the backend's own errors.
//!
//! Needs the `nginx` binary (Debian: `apt-get install nginx`); it fails, never skips, without it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::SinkExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::watcher;
use spawner::crd::{Phase, SessionLivedBackend, SessionLivedBackendStatus};
use spawner::proxy_config::{ProxyConfig, nginx_conf};
use spawner::router::{self, Feed, Routes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::support;

const NGINX: &str = "/usr/sbin/nginx";

// ---------------------------------------------------------------------------------------------
// An echo backend: reports the request it got as JSON, answers `/status/<code>` with that code,
// and streams `/stream` in two parts, the second only once the test says so.

type Body = BoxBody<Bytes, Infallible>;

async fn start_echo(addr: SocketAddr, release_stream: Arc<Notify>) -> SocketAddr {
    let listener = TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let release = release_stream.clone();
            let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let release = release.clone();
                async move { Ok::<_, Infallible>(echo(request, release)) }
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    addr
}

fn echo(request: hyper::Request<hyper::body::Incoming>, release: Arc<Notify>) -> hyper::Response<Body> {
    let path = request.uri().path().to_owned();
    if let Some(code) = path.strip_prefix("/status/") {
        let status = http::StatusCode::from_u16(code.parse().unwrap()).unwrap();
        let mut response = hyper::Response::new(Full::new(Bytes::from(format!("backend says {code}\n"))).boxed());
        *response.status_mut() = status;
        return response;
    }
    if path == "/stream" {
        let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        tokio::spawn(async move {
            let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"data: first\n\n")))).await;
            release.notified().await;
            let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"data: second\n\n")))).await;
        });
        let mut response = hyper::Response::new(BodyExt::boxed(StreamBody::new(rx)));
        response.headers_mut().insert("content-type", "text/event-stream".parse().unwrap());
        return response;
    }
    let headers: serde_json::Map<String, serde_json::Value> =
        request.headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into())).collect();
    let report = serde_json::json!({
        "method": request.method().as_str(),
        "uri": request.uri().to_string(),
        "headers": headers,
    });
    hyper::Response::new(Full::new(Bytes::from(report.to_string())).boxed())
}

// ---------------------------------------------------------------------------------------------
// nginx itself.

struct Nginx {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Nginx {
    /// Everything nginx logged so far (access log on stdout, errors on stderr).
    fn logs(&self) -> String {
        ["access.log", "error.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self._dir.0.join(f)).unwrap_or_default())
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self._dir.0.join("error.log")).unwrap_or_default();
            eprintln!("--- nginx error log ---\n{log}");
        }
        // SIGQUIT: graceful stop, and the workers go with the master (SIGKILL would orphan them).
        let _ = Command::new("kill").args(["-QUIT", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path =
            std::env::temp_dir().join(format!("spawner-{name}-{}-{}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn loopback_config(dir: &Path, port: u16, router: SocketAddr, hold_seconds: u64) -> String {
    nginx_conf(&ProxyConfig {
        listen_port: port,
        router_addr: router.to_string(),
        hold_seconds,
        runtime_dir: dir.display().to_string(),
        worker_processes: "1".into(),
        api_addr: None,
    })
    .replace("listen ", "listen 127.0.0.1:")
}

async fn start_nginx(router: SocketAddr, hold_seconds: u64) -> Nginx {
    assert!(Path::new(NGINX).exists(), "{NGINX} not found: install nginx (apt-get install -y nginx)");
    let dir = TempDir::new("nginx");
    let port = free_port();
    let conf = dir.0.join("nginx.conf");
    std::fs::write(&conf, loopback_config(&dir.0, port, router, hold_seconds)).unwrap();
    // As root, nginx's workers run as `nobody`; they only need to read what the master opened.
    let check =
        Command::new(NGINX).args(["-t", "-e", "stderr", "-p"]).arg(&dir.0).arg("-c").arg(&conf).output().unwrap();
    assert!(
        check.status.success(),
        "nginx -t refused the generated config:\n{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let child = Command::new(NGINX)
        .args(["-e", "stderr", "-p"])
        .arg(&dir.0)
        .arg("-c")
        .arg(&conf)
        .stdout(std::fs::File::create(dir.0.join("access.log")).unwrap())
        .stderr(std::fs::File::create(dir.0.join("error.log")).unwrap())
        .spawn()
        .unwrap();
    let nginx = Nginx { child, port, _dir: dir };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(response) = get(nginx.port, "/healthz", &[]).await
            && response.status == 200
        {
            return nginx;
        }
        assert!(Instant::now() < deadline, "nginx did not answer /healthz within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1.1 client: sends the path byte for byte, which is the point of some tests.

#[derive(Debug)]
struct RawResponse {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

async fn get(port: u16, path: &str, extra_headers: &[(&str, &str)]) -> std::io::Result<RawResponse> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (name, value) in extra_headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut raw)).await??;
    Ok(parse_response(&String::from_utf8_lossy(&raw)))
}

fn parse_response(raw: &str) -> RawResponse {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect::<HashMap<_, _>>();
    let body =
        if headers.get("transfer-encoding").is_some_and(|v| v == "chunked") { dechunk(body) } else { body.to_owned() };
    RawResponse { status, headers, body }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

// ---------------------------------------------------------------------------------------------

struct World {
    nginx: Nginx,
    release_stream: Arc<Notify>,
    /// The port every backend pod listens on (each on its own loopback address).
    backend_port: u16,
    routes: Routes,
    feed: Mutex<Feed>,
    _router: StopOnDrop,
    _demo: DemoProcess,
}

impl World {
    /// Puts `namespace/name` into the router's table in `phase`, its pod at `ip`.
    fn set(&self, namespace: &str, name: &str, phase: Phase, ip: Ipv4Addr) -> SessionLivedBackend {
        let spec = serde_json::from_value(serde_json::json!({"template": {"containers": []}})).unwrap();
        let mut backend = SessionLivedBackend::new(name, spec);
        backend.metadata.namespace = Some(namespace.into());
        backend.metadata.creation_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        backend.status = Some(SessionLivedBackendStatus {
            phase: Some(phase),
            pod_ip: Some(ip.to_string()),
            pod_port: Some(i32::from(self.backend_port)),
            ..Default::default()
        });
        self.apply(backend.clone());
        backend
    }

    fn apply(&self, backend: SessionLivedBackend) {
        self.feed.lock().unwrap().apply(&watcher::Event::Apply(backend));
    }

    /// Waits until the router holds `n` lookups.
    async fn until_held(&self, n: i64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.routes.held() != n {
            assert!(Instant::now() < deadline, "the router never held {n} lookups (holds {})", self.routes.held());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

struct StopOnDrop(CancellationToken);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

struct DemoProcess(Child);

impl Drop for DemoProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let _ = self.0.wait();
    }
}

/// Ready backends: echo.ns1 → 127.0.0.1, game.demo → 127.0.0.3 (the demo binary, same port),
/// refused.ns1 → 127.0.0.2 where nothing listens, stalled.ns1 → 127.0.0.4 (for a test that
/// makes it stall).
async fn world() -> World {
    world_with(router::Config { hold_cap: Duration::from_secs(60), appear_wait: Duration::from_millis(200) }).await
}

async fn world_with(config: router::Config) -> World {
    let release_stream = Arc::new(Notify::new());
    let echo = start_echo("127.0.0.1:0".parse().unwrap(), release_stream.clone()).await;
    let demo = Command::new(env!("CARGO_BIN_EXE_spawner-demo-drop-four"))
        .args(["--bind", "127.0.0.3", "--port", &echo.port().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let demo = DemoProcess(demo);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.3", echo.port())).await.is_err() {
        assert!(Instant::now() < deadline, "the demo did not listen within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (routes, mut feed) = router::routes(config);
    feed.apply(&watcher::Event::Init);
    feed.apply(&watcher::Event::InitDone);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let router_addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(router::serve_lookups(listener, routes.clone(), stop.clone()));

    let nginx = start_nginx(router_addr, config.hold_cap.as_secs()).await;
    let world = World {
        nginx,
        release_stream,
        backend_port: echo.port(),
        routes,
        feed: Mutex::new(feed),
        _router: StopOnDrop(stop),
        _demo: demo,
    };
    for (ns, name, ip) in [
        ("ns1", "echo", Ipv4Addr::new(127, 0, 0, 1)),
        ("ns1", "refused", Ipv4Addr::new(127, 0, 0, 2)),
        ("demo", "game", Ipv4Addr::new(127, 0, 0, 3)),
        ("ns1", "stalled", Ipv4Addr::new(127, 0, 0, 4)),
    ] {
        world.set(ns, name, Phase::Ready, ip);
    }
    world
}

fn echo_report(response: &RawResponse) -> serde_json::Value {
    assert_eq!(response.status, 200, "{response:?}");
    serde_json::from_str(&response.body).unwrap_or_else(|e| panic!("echo report: {e}: {response:?}"))
}

/// A backend whose connection never completes (its pod's node gone from the network) gets
/// nginx's own 504 after its connect timeout, in JSON like the proxy's other answers.
#[tokio::test]
async fn nginx_answers_504_in_json_when_a_backend_never_accepts() {
    let world = world().await;
    let stalled = SocketAddr::from(([127, 0, 0, 4], world.backend_port));
    // A listener that never accepts, with its accept queue (backlog 1: two connections) full:
    // the kernel drops further SYNs, so the next connection attempt hangs.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(stalled).unwrap();
    let _listener = socket.listen(1).unwrap();
    let mut queued = Vec::new();
    for _ in 0..2 {
        queued.push(TcpStream::connect(stalled).await.unwrap());
    }
    let hangs = tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(stalled)).await;
    assert!(hangs.is_err(), "a connection to the full listener completed: {hangs:?}");

    let response = get(world.nginx.port, "/p/ns1/stalled/", &[]).await.unwrap();
    assert_eq!(response.status, 504, "{response:?}");
    let body: serde_json::Value = serde_json::from_str(&response.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"error": "backend did not answer in time", "namespace": "ns1", "backend": "stalled"})
    );
}

#[tokio::test]
async fn nginx_routes_backends_by_namespace_and_name() {
    let world = world().await;
    let port = world.nginx.port;

    // The prefix is stripped; the rest of the path and the query arrive as the client sent them.
    let report = echo_report(&get(port, "/p/ns1/echo/files/a%2Fb/c.txt?x=1&y=%20z&token=t", &[]).await.unwrap());
    assert_eq!(report["method"], "GET");
    assert_eq!(report["uri"], "/files/a%2Fb/c.txt?x=1&y=%20z&token=t");
    let headers = &report["headers"];
    assert_eq!(headers["x-forwarded-prefix"], "/p/ns1/echo");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], format!("127.0.0.1:{port}"));
    assert_eq!(headers["host"], format!("127.0.0.1:{port}"));

    // An upstream proxy's scheme and client address are kept.
    let report = echo_report(
        &get(port, "/p/ns1/echo/", &[("X-Forwarded-Proto", "https"), ("X-Forwarded-For", "203.0.113.9")])
            .await
            .unwrap(),
    );
    assert_eq!(report["uri"], "/");
    assert_eq!(report["headers"]["x-forwarded-proto"], "https");
    assert_eq!(report["headers"]["x-forwarded-for"], "203.0.113.9, 127.0.0.1");

    // Without the trailing slash: a relative redirect that keeps the query.
    let response = get(port, "/p/ns1/echo?token=abc&x=1", &[]).await.unwrap();
    assert_eq!(response.status, 301, "{response:?}");
    assert_eq!(response.headers["location"], "/p/ns1/echo/?token=abc&x=1");
    let response = get(port, "/p/ns1/echo", &[]).await.unwrap();
    assert_eq!(response.headers["location"], "/p/ns1/echo/");
}

#[tokio::test]
async fn nginx_reports_unknown_backends_and_passes_backend_errors_through() {
    let world = world().await;
    let port = world.nginx.port;

    let response = get(port, "/p/ns1/nobody/?token=secret-1", &[]).await.unwrap();
    assert_eq!(response.status, 404, "{response:?}");
    let body: serde_json::Value = serde_json::from_str(&response.body).unwrap();
    assert_eq!(body, serde_json::json!({"error": "no such backend", "namespace": "ns1", "backend": "nobody"}));

    let response = get(port, "/p/ns1/refused/x?token=secret-2", &[]).await.unwrap();
    assert_eq!(response.status, 502, "{response:?}");
    assert!(response.body.contains("backend unavailable"), "{response:?}");
    let response = get(port, "/p/ns1/echo/?token=secret-3", &[]).await.unwrap();
    assert_eq!(response.status, 200, "{response:?}");
    // Access tokens travel in queries; none may reach nginx's logs.
    let logs = world.nginx.logs();
    assert!(logs.contains("/p/ns1/refused/x"), "the requests were logged: {logs}");
    assert!(!logs.contains("secret-"), "a token reached the logs: {logs}");

    // The sidecar's 503 while not ready, and even a backend's own 502 or 504, arrive untouched.
    for code in [503, 502, 504, 404] {
        let response = get(port, &format!("/p/ns1/echo/status/{code}"), &[]).await.unwrap();
        assert_eq!(response.status, code, "{response:?}");
        assert_eq!(response.body, format!("backend says {code}\n"));
    }

    let response = get(port, "/somewhere/else", &[]).await.unwrap();
    assert_eq!(response.status, 404);
    assert!(response.body.contains("not found"), "{response:?}");
    // Names that cannot be Services are not looked up at all.
    let response = get(port, "/p/NS/Bad_Name/", &[]).await.unwrap();
    assert_eq!(response.status, 404);
}

#[tokio::test]
async fn nginx_streams_responses_without_buffering() {
    let world = world().await;
    let mut stream = TcpStream::connect(("127.0.0.1", world.nginx.port)).await.unwrap();
    stream.write_all(b"GET /p/ns1/echo/stream HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n").await.unwrap();
    // The first event must arrive while the backend still holds the response open.
    let mut seen = String::new();
    let mut buf = [0u8; 1024];
    while !seen.contains("data: first") {
        let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf))
            .await
            .expect("the first event was held back by the proxy")
            .unwrap();
        assert!(n > 0, "connection closed early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(!seen.contains("data: second"));
    world.release_stream.notify_one();
    while !seen.contains("data: second") {
        let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "connection closed early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

#[tokio::test]
async fn two_players_play_drop_four_through_nginx() {
    let world = world().await;
    let port = world.nginx.port;
    let page = get(port, "/p/demo/game/", &[]).await.unwrap();
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<title>Drop four</title>"));

    let url = format!("ws://127.0.0.1:{port}/p/demo/game/ws");
    let (mut red, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    red.send(Message::text(r#"{"type":"join"}"#)).await.unwrap();
    assert_eq!(support::next_of_type(&mut red, "welcome").await["role"], "red");
    let (mut yellow, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    yellow.send(Message::text(r#"{"type":"join"}"#)).await.unwrap();
    assert_eq!(support::next_of_type(&mut yellow, "welcome").await["role"], "yellow");

    red.send(Message::text(r#"{"type":"move","column":3}"#)).await.unwrap();
    let seen_by_yellow = loop {
        let state = support::next_of_type(&mut yellow, "state").await;
        if state["board"][5][3] == "red" {
            break state;
        }
    };
    assert_eq!(seen_by_yellow["turn"], "yellow");
    yellow.send(Message::text(r#"{"type":"move","column":3}"#)).await.unwrap();
    loop {
        let state = support::next_of_type(&mut red, "state").await;
        if state["board"][4][3] == "yellow" {
            assert_eq!(state["turn"], "red");
            break;
        }
    }
    red.close(None).await.unwrap();
    yellow.close(None).await.unwrap();
}

/// A request for a backend that is still starting waits in the router and is answered the
/// moment the backend is Ready; so does one for a backend created just after it was sent.
#[tokio::test]
async fn a_request_for_a_starting_or_brand_new_backend_is_held_until_ready() {
    let world = world().await;
    let port = world.nginx.port;
    world.set("ns1", "late", Phase::Running, Ipv4Addr::LOCALHOST);
    let late = tokio::spawn(async move { get(port, "/p/ns1/late/x?token=t", &[]).await });
    world.until_held(1).await;
    assert!(!late.is_finished(), "answered while the backend was starting");
    world.set("ns1", "late", Phase::Ready, Ipv4Addr::LOCALHOST);
    let report = echo_report(&late.await.unwrap().unwrap());
    assert_eq!(report["uri"], "/x?token=t");

    // Not in the table yet (the watch is a moment behind the client's create).
    let new = tokio::spawn(async move { get(port, "/p/ns1/new/", &[]).await });
    world.until_held(1).await;
    world.set("ns1", "new", Phase::Ready, Ipv4Addr::LOCALHOST);
    assert_eq!(echo_report(&new.await.unwrap().unwrap())["uri"], "/");
    world.until_held(0).await;
}

#[tokio::test]
async fn a_websocket_to_a_starting_backend_is_held_until_ready() {
    let world = world().await;
    world.set("demo", "room", Phase::Scheduled, Ipv4Addr::new(127, 0, 0, 3));
    let url = format!("ws://127.0.0.1:{}/p/demo/room/ws", world.nginx.port);
    let connecting = tokio::spawn(async move { tokio_tungstenite::connect_async(&url).await });
    world.until_held(1).await;
    world.set("demo", "room", Phase::Ready, Ipv4Addr::new(127, 0, 0, 3));
    let (mut socket, _) = connecting.await.unwrap().expect("the held WebSocket connects once Ready");
    socket.send(Message::text(r#"{"type":"join"}"#)).await.unwrap();
    assert_eq!(support::next_of_type(&mut socket, "welcome").await["role"], "red");
}

/// A backend that fails while a request waits for it: the request gets the failure, in JSON,
/// with the controller's reason — not a hang.
#[tokio::test]
async fn a_held_request_gets_a_json_error_when_its_backend_fails() {
    let world = world().await;
    let port = world.nginx.port;
    let mut backend = world.set("ns1", "doomed", Phase::Running, Ipv4Addr::LOCALHOST);
    let held = tokio::spawn(async move { get(port, "/p/ns1/doomed/", &[]).await });
    world.until_held(1).await;
    let status = backend.status.as_mut().unwrap();
    status.phase = Some(Phase::Failed);
    status.reason = Some("ErrImagePull".into());
    status.message = Some("image \"nope\" not found".into());
    world.apply(backend);
    let response = held.await.unwrap().unwrap();
    assert_eq!(response.status, 502, "{response:?}");
    assert_eq!(response.headers["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_str(&response.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"error": "backend failed", "namespace": "ns1", "backend": "doomed", "phase": "Failed",
            "reason": "ErrImagePull", "message": "image \"nope\" not found"})
    );
}

/// Held no longer than the router's cap: then a 504 that says where the backend got to.
#[tokio::test]
async fn a_backend_that_stays_starting_gets_a_504_at_the_hold_cap() {
    let config = router::Config { hold_cap: Duration::from_secs(1), appear_wait: Duration::from_millis(200) };
    let world = world_with(config).await;
    let mut backend = world.set("ns1", "slow", Phase::Running, Ipv4Addr::LOCALHOST);
    let status = backend.status.as_mut().unwrap();
    status.reason = Some("ContainersNotReady".into());
    world.apply(backend);
    let response = get(world.nginx.port, "/p/ns1/slow/", &[]).await.unwrap();
    assert_eq!(response.status, 504, "{response:?}");
    let body: serde_json::Value = serde_json::from_str(&response.body).unwrap();
    assert_eq!(body["error"], "backend not ready in time");
    assert_eq!(body["phase"], "Running");
    assert_eq!(body["reason"], "ContainersNotReady");
}
