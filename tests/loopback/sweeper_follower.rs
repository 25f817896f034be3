//! The sweeper's follower against real `spawner-sidecar` processes on loopback, each in front of
//! a tiny WebSocket echo app. Only the malformed-stream tests use a raw TCP server, because the
//! real sidecar never sends malformed events.
//!
//! The seam is the `Sweeper` the follower calls when a deadline passes: here it records the
//! sweep on a channel instead of deleting through the Kubernetes API.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use spawner::sweeper::follower::{self, Status, Sweep, SweepError, SweepOutcome, Sweeper, Target, follow};
use spawner::sweeper::metrics::Metrics;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;

/// Upper bound for anything that should happen "soon" (a connection, the next event).
const SOON: Duration = Duration::from_secs(15);

// ---------- fixtures ----------

/// A WebSocket echo server on 127.0.0.1: the backend's application.
async fn start_app() -> SocketAddr {
    serve_app(TcpListener::bind("127.0.0.1:0").await.unwrap())
}

fn serve_app(listener: TcpListener) -> SocketAddr {
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                // The sidecar's readiness probe connects and hangs up: not a WebSocket.
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
                while let Some(Ok(message)) = ws.next().await {
                    if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A WebSocket echo server on a given port (for an app that starts late).
async fn start_app_on(addr: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind(addr).await.unwrap();
    serve_app(listener)
}

/// A real `spawner-sidecar` process.
struct Sidecar {
    child: Child,
    proxy: SocketAddr,
    admin: SocketAddr,
    /// Kept open: a closed pipe would make a later write to stdout fail.
    _stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Sidecar {
    /// Starts a sidecar in front of `app`; `admin_port` 0 picks a free port.
    async fn start(app: SocketAddr, admin_port: u16) -> Sidecar {
        let mut child = Command::new(env!("CARGO_BIN_EXE_spawner-sidecar"))
            .env("SPAWNER_APP_PORT", app.port().to_string())
            .env("SPAWNER_LISTEN_ADDRESS", "127.0.0.1")
            .env("SPAWNER_PROXY_PORT", "0")
            .env("SPAWNER_ADMIN_PORT", admin_port.to_string())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting spawner-sidecar");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = timeout(SOON, lines.next_line())
            .await
            .expect("sidecar prints its addresses")
            .unwrap()
            .expect("sidecar exited before listening");
        // "listening proxy=ADDR admin=ADDR"
        let field = |name: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
                .parse()
                .unwrap()
        };
        let (proxy, admin) = (field("proxy="), field("admin="));
        Sidecar { child, proxy, admin, _stdout: lines }
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("sidecar still running").to_string();
        let status = std::process::Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }
}

/// Records sweeps on a channel; fails the first `failures` attempts.
struct RecordingSweeper {
    sweeps: mpsc::UnboundedSender<Sweep>,
    failures: AtomicUsize,
}

impl Sweeper for RecordingSweeper {
    fn sweep(&self, sweep: Sweep) -> BoxFuture<'_, Result<SweepOutcome, SweepError>> {
        Box::pin(async move {
            let failing = self.failures.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
            if failing {
                return Err("the API server is having a bad day".into());
            }
            let _ = self.sweeps.send(sweep);
            Ok(SweepOutcome::Swept)
        })
    }
}

/// A follower task and what it reports.
struct Following {
    task: JoinHandle<SweepOutcome>,
    status: watch::Receiver<Status>,
    sweeps: mpsc::UnboundedReceiver<Sweep>,
}

impl Following {
    fn start(admin: SocketAddr, grace: Duration) -> Following {
        Self::start_failing(admin, grace, 0)
    }

    fn start_failing(admin: SocketAddr, grace: Duration, failures: usize) -> Following {
        let (tx, sweeps) = mpsc::unbounded_channel();
        let sweeper = Arc::new(RecordingSweeper { sweeps: tx, failures: AtomicUsize::new(failures) });
        let url = Target::events_url(&admin.ip().to_string(), admin.port()).unwrap();
        let target = Target { name: url.to_string(), url, grace };
        let (status_tx, status) = watch::channel(Status::default());
        let task = tokio::spawn(follow(target, sweeper, follower::Config::default(), Metrics::new(), status_tx));
        Following { task, status, sweeps }
    }

    /// Waits (bounded) until the follower's status satisfies `condition`.
    async fn wait_for(&mut self, what: &str, condition: impl FnMut(&Status) -> bool) -> Status {
        let waited = timeout(SOON * 2, self.status.wait_for(condition)).await.map(|r| r.map(|s| s.clone()));
        match waited {
            Ok(Ok(status)) => status,
            Ok(Err(_)) => panic!("follower ended while waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}; status: {:?}", *self.status.borrow()),
        }
    }

    /// Waits (bounded) for the next sweep.
    async fn next_sweep(&mut self) -> Sweep {
        match timeout(SOON * 2, self.sweeps.recv()).await {
            Ok(Some(sweep)) => sweep,
            Ok(None) => panic!("sweeper dropped"),
            Err(_) => panic!("no sweep; status: {:?}", *self.status.borrow()),
        }
    }

    fn assert_not_swept(&mut self, when: &str) {
        if let Ok(sweep) = self.sweeps.try_recv() {
            panic!("swept {when}: {sweep:?}");
        }
    }
}

fn idle_and_armed(s: &Status) -> bool {
    s.state.is_some_and(|state| state.ready && state.connections == 0) && s.deadline.is_some()
}

// ---------- tests against the real sidecar ----------

#[tokio::test]
async fn an_idle_backend_is_swept_within_a_second_of_its_deadline() {
    let app = start_app().await;
    let sidecar = Sidecar::start(app, 0).await;
    let grace = Duration::from_secs(3);
    let mut following = Following::start(sidecar.admin, grace);

    let sweep = following.next_sweep().await;

    assert!(sweep.idle >= grace, "swept after only {:?} idle", sweep.idle);
    let lateness = sweep.started - sweep.deadline;
    // The precision requirement; in practice this is a few milliseconds.
    assert!(lateness < Duration::from_secs(1), "swept {lateness:?} after the deadline");
    assert_eq!(following.task.await.unwrap(), SweepOutcome::Swept);
}

#[tokio::test]
async fn a_backend_is_never_swept_before_ready_and_its_idle_time_counts_from_ready() {
    // A free port with nothing listening yet: the app has not started.
    let app = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let sidecar = Sidecar::start(app, 0).await;
    let grace = Duration::from_secs(1);
    let mut following = Following::start(sidecar.admin, grace);
    // Two heartbeats, each more than the grace period after the first event.
    let status = following.wait_for("two heartbeats", |s| s.events >= 3).await;
    assert_eq!(status.state.map(|s| s.ready), Some(false));
    assert_eq!(status.deadline, None);
    following.assert_not_swept("before the app was ready");

    let ready_at = Instant::now();
    start_app_on(app).await;
    let sweep = following.next_sweep().await;

    let since_ready = sweep.started - ready_at;
    assert!(since_ready >= grace - Duration::from_millis(10), "swept {since_ready:?} after the app started");
}

#[tokio::test]
async fn the_follower_reconnects_when_the_sidecar_restarts() {
    let app = start_app().await;
    let sidecar = Sidecar::start(app, 0).await;
    let admin = sidecar.admin;
    let mut following = Following::start(admin, Duration::from_secs(300));
    following.wait_for("the first event", |s| s.connected && s.events > 0).await;

    sidecar.kill().await;
    following.wait_for("the stream to break", |s| !s.connected).await;
    let restarted = Sidecar::start(app, admin.port()).await;
    let status = following.wait_for("a second connection", |s| s.connects >= 2 && s.state.is_some()).await;

    assert!(status.connected);
    following.assert_not_swept("because the stream broke");
    drop(restarted);
}

#[tokio::test]
async fn a_silent_sidecar_trips_the_heartbeat_watchdog_and_is_never_swept_while_silent() {
    let app = start_app().await;
    let sidecar = Sidecar::start(app, 0).await;
    // Longer than the watchdog (3 heartbeats = 6 s), so the stream is known broken first.
    let grace = Duration::from_secs(10);
    let mut following = Following::start(sidecar.admin, grace);
    let armed = following.wait_for("an idle, armed state", idle_and_armed).await;

    sidecar.signal("-STOP");
    following.wait_for("the heartbeat watchdog", |s| s.heartbeat_timeouts >= 1 && !s.connected).await;
    // Proving an absence needs waiting: past the deadline the silent stream had armed.
    tokio::time::sleep_until(armed.deadline.unwrap() + Duration::from_secs(1)).await;
    following.assert_not_swept("while the sidecar was silent");

    sidecar.signal("-CONT");
    let sweep = following.next_sweep().await;
    assert!(sweep.idle >= grace, "swept after only {:?} idle", sweep.idle);
    assert!(following.status.borrow().connects >= 2, "swept only after reconnecting");
}

#[tokio::test]
async fn a_connection_before_the_deadline_cancels_the_sweep() {
    let app = start_app().await;
    let sidecar = Sidecar::start(app, 0).await;
    let grace = Duration::from_secs(3);
    let mut following = Following::start(sidecar.admin, grace);
    let armed = following.wait_for("an idle, armed state", idle_and_armed).await;

    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/socket", sidecar.proxy))
        .await
        .expect("WebSocket through the sidecar");
    following
        .wait_for("the connection to be reported", |s| {
            s.state.is_some_and(|state| state.connections == 1) && s.deadline.is_none()
        })
        .await;
    tokio::time::sleep_until(armed.deadline.unwrap() + Duration::from_secs(1)).await;
    following.assert_not_swept("with a WebSocket open");
    ws.send(Message::text("still here")).await.unwrap();
    let echo = timeout(SOON, ws.next()).await.expect("echo").unwrap().unwrap();
    assert_eq!(echo, Message::text("still here"));

    let closed_at = Instant::now();
    ws.close(None).await.unwrap();
    // Finish the close handshake as a browser would, then hang up.
    while let Ok(Some(Ok(_))) = timeout(SOON, ws.next()).await {}
    drop(ws);
    let sweep = following.next_sweep().await;

    // Idle time restarts when the last connection ends.
    assert!(sweep.idle >= grace);
    let since_close = sweep.started - closed_at;
    assert!(since_close >= grace - Duration::from_millis(10), "swept {since_close:?} after the close");
}

#[tokio::test]
async fn idle_time_is_carried_across_a_follower_restart() {
    let app = start_app().await;
    let sidecar = Sidecar::start(app, 0).await;
    let grace = Duration::from_secs(6);
    let mut first = Following::start(sidecar.admin, grace);
    first
        .wait_for("3 s of reported idle time", |s| {
            s.state.is_some_and(|state| state.idle_ms.is_some_and(|ms| ms >= 3_000))
        })
        .await;
    first.task.abort();
    first.assert_not_swept("before the grace period");

    let restarted_at = Instant::now();
    let mut second = Following::start(sidecar.admin, grace);
    let sweep = second.next_sweep().await;

    assert!(sweep.idle >= grace);
    let after_restart = sweep.started - restarted_at;
    // Without the carried idle time the sweep would come a whole grace period after the restart.
    assert!(after_restart < grace - Duration::from_secs(1), "restarted follower waited {after_restart:?}");
}

#[tokio::test]
async fn a_failed_sweep_is_retried_while_the_backend_stays_idle() {
    let app = start_app().await;
    let sidecar = Sidecar::start(app, 0).await;
    let mut following = Following::start_failing(sidecar.admin, Duration::from_secs(1), 2);

    let sweep = following.next_sweep().await;

    assert!(sweep.idle >= Duration::from_secs(1));
    assert_eq!(following.status.borrow().failed_sweeps, 2);
}

// ---------- malformed streams (raw TCP server) ----------
//
// Everything here runs in the test's own runtime (server, follower, the test writing events), so
// these tests run on paused virtual time: the clock jumps to the next timer whenever every task
// waits, and the heartbeat watchdog's seconds pass at once. Loopback I/O that is ready wakes its
// task before the clock may move.

/// A fake sidecar admin port: hands each accepted connection, request already read and
/// `200 text/event-stream` headers already sent, to the test.
async fn start_raw_sse() -> (SocketAddr, mpsc::UnboundedReceiver<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                    break;
                }
                head.push(byte[0]);
            }
            // No content-length: the body runs until the connection closes.
            let headers = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
            if stream.write_all(headers.as_bytes()).await.is_ok() && tx.send(stream).is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

async fn next_connection(connections: &mut mpsc::UnboundedReceiver<TcpStream>) -> TcpStream {
    timeout(SOON, connections.recv()).await.expect("the follower connects").unwrap()
}

#[tokio::test(start_paused = true)]
async fn malformed_events_are_skipped_and_counted_without_dropping_the_stream() {
    let (addr, mut connections) = start_raw_sse().await;
    let grace = Duration::from_secs(5);
    let mut following = Following::start(addr, grace);
    let mut stream = next_connection(&mut connections).await;

    let garbage = [
        "data: not json\n\n",
        "data: {\"ready\":true}\n\n",
        ": a comment is not an event\n\n",
        "data: {\"ready\":true,\"connections\":0,\"idleMs\":\"soon\"}\n\n",
        "event: state\ndata: [1, 2, 3]\n\n",
        "data: \u{7f}\u{0}\n\n",
    ];
    for event in garbage {
        stream.write_all(event.as_bytes()).await.unwrap();
    }
    following.wait_for("five malformed events", |s| s.malformed == 5).await;
    stream.write_all(b"data: {\"ready\":true,\"connections\":0,\"idleMs\":6000}\n\n").await.unwrap();
    let sweep = following.next_sweep().await;

    assert!(sweep.idle >= grace);
    let status = following.status.borrow().clone();
    assert_eq!((status.connects, status.malformed, status.events), (1, 5, 1));
}

#[tokio::test(start_paused = true)]
async fn a_malformed_event_disarms_a_pending_deadline() {
    let (addr, mut connections) = start_raw_sse().await;
    let mut following = Following::start(addr, Duration::from_secs(10));
    let mut stream = next_connection(&mut connections).await;

    // Idle, one second to go; then an event that may have said "a connection opened".
    stream.write_all(b"data: {\"ready\":true,\"connections\":0,\"idleMs\":9000}\n\n").await.unwrap();
    following.wait_for("the armed deadline", idle_and_armed).await;
    stream.write_all(b"data: {\"ready\":tru\n\n").await.unwrap();
    following.wait_for("the malformed event", |s| s.malformed == 1 && s.deadline.is_none()).await;
    // Silence follows; the watchdog (6 s) fires long after the old deadline (1 s).
    following.wait_for("the heartbeat watchdog", |s| s.heartbeat_timeouts == 1).await;
    following.assert_not_swept("on a state a malformed event may have changed");
    drop(stream);
}

#[tokio::test(start_paused = true)]
async fn a_deadline_in_a_silent_gap_waits_for_a_fresh_event() {
    let (addr, mut connections) = start_raw_sse().await;
    let grace = Duration::from_secs(10);
    let mut following = Following::start(addr, grace);
    let mut stream = next_connection(&mut connections).await;

    // The deadline comes 3.5 s later, but no heartbeat follows: too old a state to act on.
    stream.write_all(b"data: {\"ready\":true,\"connections\":0,\"idleMs\":6500}\n\n").await.unwrap();
    following.wait_for("the heartbeat watchdog", |s| s.heartbeat_timeouts == 1).await;
    following.assert_not_swept("on a stale state");
    drop(stream);

    // After the reconnect a fresh event still says idle: now it is swept at once.
    let mut stream = next_connection(&mut connections).await;
    stream.write_all(b"data: {\"ready\":true,\"connections\":0,\"idleMs\":12000}\n\n").await.unwrap();
    let sweep = following.next_sweep().await;
    assert!(sweep.idle >= grace);
}
