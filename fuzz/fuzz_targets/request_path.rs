//! Fuzz the sidecar's request path: arbitrary bytes from a client go through the same hyper
//! server settings and the same `Proxy` service as the binary (auth on), to the real test app
//! on loopback. Properties: no panic, every exchange ends within a bound, and once the runtime
//! has dropped everything the live-connection count is back to zero.
//!
//! The pure parsers on that path (auth, headers, request framing, WebSocket frame tracking) are
//! fed the same input directly as well.
#![no_main]

#[path = "../../tests/apps/testapp.rs"]
mod testapp;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use libfuzzer_sys::fuzz_target;
use spawner::sidecar::auth::Auth;
use spawner::sidecar::framing::{BothLengths, Framing, Watched};
use spawner::sidecar::metrics::Metrics;
use spawner::sidecar::proxy::{ClientConn, Proxy};
use spawner::sidecar::splice::FrameTracker;
use spawner::sidecar::state::Tracker;
use spawner::sidecar::tasks::TaskGroup;
use spawner::sidecar::{auth, headers};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

struct World {
    runtime: tokio::runtime::Runtime,
    app: SocketAddr,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let app = runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            testapp::serve(listener, CancellationToken::new())
        });
        World { runtime, app }
    })
}

fn pure_parsers(data: &[u8]) {
    let mut frames = FrameTracker::default();
    let n = frames.feed(data, data.first().is_some_and(|b| b & 1 == 1));
    assert!(n <= data.len());

    // Requests are numbered from 1.
    assert_ne!(Framing::new(32 * 1024, 100).feed(data), Some(0));

    let text = String::from_utf8_lossy(data);
    let mut map = http::HeaderMap::new();
    for line in text.split("\r\n") {
        if let Some((k, v)) = line.split_once(':')
            && let (Ok(k), Ok(v)) = (http::HeaderName::from_bytes(k.as_bytes()), http::HeaderValue::from_str(v.trim()))
        {
            map.append(k, v);
        }
    }
    let upgrade = headers::wants_upgrade(&map);
    let mut stripped = map.clone();
    headers::strip_hop_by_hop(&mut stripped, upgrade);
    assert!(!stripped.contains_key("keep-alive") && !stripped.contains_key("transfer-encoding"));
    headers::add_forwarded(&mut stripped, &http::HeaderValue::from_static("127.0.0.1"));
    let auth = Auth::new("fuzz-token").unwrap();
    let mut uri: http::Uri = text.lines().next().and_then(|l| l.parse().ok()).unwrap_or_default();
    let verdict = auth.check(&mut uri, &mut map);
    if verdict != auth::Verdict::Denied {
        // Whatever let it in is gone from what the app would see.
        assert!(!uri.query().unwrap_or("").contains("token=fuzz-token"));
        assert!(map.get_all("cookie").iter().all(|c| !c.to_str().unwrap_or("").contains("spawner-token=fuzz-token")));
    }
}

fuzz_target!(|data: &[u8]| {
    pure_parsers(data);
    let world = world();
    let tracker = Tracker::new();
    tracker.set_ready(true);
    let proxy = Arc::new(Proxy {
        app: world.app,
        tracker: tracker.clone(),
        auth: Some(Auth::new("fuzz-token").unwrap()),
        metrics: Arc::new(Metrics::new()),
        upstream_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(1),
        client: hyper::client::conn::http1::Builder::new(),
        upgraded: TaskGroup::default(),
        close_upgraded: CancellationToken::new(),
        close_timeout: Duration::from_millis(100),
    });
    let input = data.to_vec();
    world.runtime.block_on(async {
        let (mut client, server_io) = tokio::io::duplex(64 * 1024);
        let both_lengths = Arc::new(BothLengths::default());
        let conn = Arc::new(ClientConn::new([127, 0, 0, 1].into(), both_lengths.clone()));
        let svc = {
            let proxy = proxy.clone();
            service_fn(move |req| proxy.clone().handle(conn.clone(), req))
        };
        let mut server = http1::Builder::new();
        server
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_millis(500))
            .max_header_size(32 * 1024)
            .max_headers(100)
            .max_buf_size(64 * 1024);
        let server_io = Watched::new(server_io, Framing::new(32 * 1024, 100), both_lengths);
        let serving = server.serve_connection(TokioIo::new(server_io), svc).with_upgrades();
        let exchange = async move {
            let _ = client.write_all(&input).await;
            let _ = client.shutdown().await;
            let mut sink = Vec::new();
            let _ = client.read_to_end(&mut sink).await;
        };
        let bounded = tokio::time::timeout(Duration::from_secs(5), async {
            let (_, _) = tokio::join!(serving, exchange);
        });
        assert!(bounded.await.is_ok(), "an exchange did not end within 5 s");
        proxy.close_upgraded.cancel();
        assert!(proxy.upgraded.wait(Duration::from_secs(2)).await, "upgraded streams did not close");
    });
    drop(proxy);
    assert_eq!(tracker.snapshot().connections, 0, "a live connection leaked");
});
