//! The loopback tests' harness: the real `spawner-sidecar` binary started as a process on
//! ephemeral loopback ports, the real test app in-process, small real clients (hyper, raw TCP,
//! the event stream), and tests/support's WebSocket messages.

#[path = "../apps/testapp.rs"]
mod testapp;
#[path = "../support/websocket.rs"]
mod websocket;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use spawner::sidecar::event::IdleState;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub use websocket::*;

/// Generous bound for anything that should happen "soon" on a loaded 2-core machine.
pub const SOON: Duration = Duration::from_secs(15);

/// The test app in-process (tests/apps/testapp.rs); dropping it does not stop it,
/// [`TestApp::crash`] does.
pub struct TestApp {
    pub addr: SocketAddr,
    crash: CancellationToken,
}

impl TestApp {
    /// Serve on an already bound listener (so callers can pick or reserve the port).
    pub fn serve(listener: TcpListener) -> Self {
        let crash = CancellationToken::new();
        Self { addr: testapp::serve(listener, crash.clone()), crash }
    }

    /// Stop like a crashed process: the listener and every connection close at once.
    pub fn crash(&self) {
        self.crash.cancel();
    }
}

/// Start the in-process test app on an ephemeral port.
pub async fn start_app() -> TestApp {
    TestApp::serve(TcpListener::bind("127.0.0.1:0").await.expect("bind app"))
}

/// A `spawner-sidecar` process; killed on drop (its log is printed if the test failed).
pub struct Sidecar {
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    child: Child,
    log: PathBuf,
}

impl Sidecar {
    /// Start the binary in front of `app_port` with extra flags, and wait until it listens.
    pub fn start(app_port: u16, extra: &[&str]) -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = std::env::temp_dir().join(format!("spawner-sidecar-test-{}-{n}.log", std::process::id()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_spawner-sidecar"))
            .args(["--listen-address", "127.0.0.1", "--proxy-port", "0", "--admin-port", "0"])
            .args(["--app-port", &app_port.to_string()])
            .args(extra)
            .env("RUST_LOG", "debug,hyper=info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start spawner-sidecar");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read stdout");
        let addr = |key: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .unwrap_or_else(|| {
                    panic!("no {key} in {line:?}; log: {}", std::fs::read_to_string(&log).unwrap_or_default())
                })
                .parse()
                .expect("address")
        };
        Self { proxy: addr("proxy="), admin: addr("admin="), child, log }
    }

    /// Send SIGTERM (as the kubelet does).
    pub fn terminate(&self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill");
        assert!(status.success());
    }

    /// Wait for the process to exit, at most `bound`.
    pub async fn wait_exit(&mut self, bound: Duration) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(tokio::time::Instant::now() < deadline, "sidecar did not exit within {bound:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        eventually(|| async { get(self.admin, "/readyz").await.map(|r| r.status == StatusCode::OK).unwrap_or(false) })
            .await;
    }

    /// Follow the event stream.
    pub async fn events(&self) -> Events {
        Events::connect(self.admin).await
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- spawner-sidecar log ----\n{}", self.log());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Poll `cond` until true, failing after [`SOON`]. For conditions, not for time.
pub async fn eventually<F, Fut>(mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + SOON;
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "condition not met within {SOON:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A response read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("json body")
    }

    /// The app's view of a header (from `/echo-request`).
    pub fn echoed_header(&self, name: &str) -> Option<String> {
        let json = self.json();
        json["headers"]
            .as_array()?
            .iter()
            .find_map(|pair| (pair[0].as_str()? == name).then(|| pair[1].as_str().map(str::to_owned)).flatten())
    }
}

/// A keep-alive HTTP/1.1 client connection (real hyper client).
pub struct Client {
    sender: SendRequest<Empty<Bytes>>,
    addr: SocketAddr,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> std::io::Result<Self> {
        let tcp = TcpStream::connect(addr).await?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.map_err(std::io::Error::other)?;
        tokio::spawn(conn.with_upgrades());
        Ok(Self { sender, addr })
    }

    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> hyper::Result<Reply> {
        let mut req = Request::get(path).header("host", self.addr.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.sender.ready().await?;
        let resp = self.sender.send_request(req.body(Empty::new()).expect("request")).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply { status: parts.status, headers: parts.headers, body })
    }

    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

/// One GET on a fresh connection.
pub async fn get(addr: SocketAddr, path: &str) -> std::io::Result<Reply> {
    get_with(addr, path, &[]).await
}

pub async fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Reply> {
    Client::connect(addr).await?.get(path, headers).await.map_err(std::io::Error::other)
}

/// Write raw bytes, then read until the server closes (or [`SOON`] passes).
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(request).await.expect("write");
    read_until_close(&mut tcp).await
}

/// Everything the peer sends until it closes, as text.
pub async fn read_until_close(tcp: &mut TcpStream) -> String {
    String::from_utf8_lossy(&read_bytes_until_close(tcp).await).into_owned()
}

/// Everything the peer sends until it closes; panics if it does not close within [`SOON`].
pub async fn read_bytes_until_close(tcp: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    match tokio::time::timeout(SOON, tcp.read_to_end(&mut out)).await {
        Ok(Ok(_)) => {}
        // A reset after the answer is also a close.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(Err(e)) => panic!("read failed: {e}"),
        Err(_) => panic!("the server did not close the connection; got so far: {}", String::from_utf8_lossy(&out)),
    }
    out
}

/// A client of the admin port's event stream.
pub struct Events {
    lines: tokio::io::Lines<tokio::io::BufReader<TcpStream>>,
}

impl Events {
    pub async fn connect(admin: SocketAddr) -> Self {
        let mut tcp = TcpStream::connect(admin).await.expect("connect admin");
        tcp.write_all(b"GET /events HTTP/1.1\r\nHost: admin\r\n\r\n").await.expect("write");
        let mut lines = tokio::io::BufReader::new(tcp).lines();
        let status = lines.next_line().await.expect("read").expect("status line");
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        Self { lines }
    }

    /// The next event (chunked framing lines are skipped: only `data:` lines are events).
    pub async fn next(&mut self) -> IdleState {
        loop {
            let line = tokio::time::timeout(SOON, self.lines.next_line())
                .await
                .expect("an event (heartbeats come every 2 s)")
                .expect("read")
                .expect("stream open");
            if let Some(json) = line.strip_prefix("data: ") {
                return serde_json::from_str(json).expect("IdleState json");
            }
        }
    }

    /// Read events until one satisfies `pred`; returns it.
    pub async fn until(&mut self, pred: impl Fn(&IdleState) -> bool) -> IdleState {
        let deadline = tokio::time::Instant::now() + SOON;
        loop {
            let e = self.next().await;
            if pred(&e) {
                return e;
            }
            assert!(tokio::time::Instant::now() < deadline, "no matching event within {SOON:?}; last {e:?}");
        }
    }
}

/// A sidecar in front of a fresh app, ready to serve.
pub async fn app_and_sidecar(extra: &[&str]) -> (TestApp, Sidecar) {
    let app = start_app().await;
    let sidecar = Sidecar::start(app.addr.port(), extra);
    sidecar.wait_ready().await;
    (app, sidecar)
}
