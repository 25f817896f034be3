//! The sidecar's HTTP proxying, readiness, auth, event stream, hostile input and shutdown, with
//! the real binary on loopback in front of a real app.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

#[tokio::test]
async fn keep_alive_requests_keep_host_drop_hop_by_hop_headers_and_append_forwarded_ones() {
    let (_app, sidecar) = app_and_sidecar(&[]).await;
    let mut client = Client::connect(sidecar.proxy).await.unwrap();
    for i in 0..3 {
        let reply = client
            .get(
                "/echo-request?i=1",
                &[
                    ("connection", "keep-alive, X-Hop"),
                    ("x-hop", "secret"),
                    ("keep-alive", "timeout=5"),
                    ("proxy-authorization", "Basic abc"),
                    ("x-forwarded-for", "203.0.113.9"),
                    ("x-forwarded-proto", "https"),
                    ("x-end-to-end", "kept"),
                ],
            )
            .await
            .unwrap_or_else(|e| panic!("request {i} on the same connection: {e}"));
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.json()["uri"], "/echo-request?i=1");
        assert_eq!(reply.echoed_header("host"), Some(sidecar.proxy.to_string()));
        assert_eq!(reply.echoed_header("x-forwarded-for").as_deref(), Some("203.0.113.9, 127.0.0.1"));
        assert_eq!(reply.echoed_header("x-forwarded-proto").as_deref(), Some("https"));
        assert_eq!(reply.echoed_header("x-forwarded-host"), Some(sidecar.proxy.to_string()));
        assert_eq!(reply.echoed_header("x-end-to-end").as_deref(), Some("kept"));
        for hop in ["x-hop", "keep-alive", "proxy-authorization", "connection"] {
            assert_eq!(reply.echoed_header(hop), None, "{hop} must not reach the app");
        }
    }
    assert!(!client.is_closed(), "the client connection stays open (keep-alive)");
}

#[tokio::test]
async fn large_uploads_and_downloads_stream_through() {
    let (_app, sidecar) = app_and_sidecar(&[]).await;
    const SIZE: u64 = 64 * 1024 * 1024;

    // Upload 64 MiB in 1 MiB chunks of a known pattern; the app counts as it reads.
    let tcp = TcpStream::connect(sidecar.proxy).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let chunk = Bytes::from(vec![3u8; 1024 * 1024]);
    let chunks = futures::stream::iter(
        (0..SIZE / chunk.len() as u64).map(move |_| Ok::<_, std::io::Error>(Frame::data(chunk.clone()))),
    );
    let req = Request::post("/upload").header("host", "x").body(StreamBody::new(chunks)).unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(String::from_utf8_lossy(&body), format!("{SIZE} {}", SIZE * 3));

    // Download 64 MiB, counting frames as they come instead of collecting.
    let tcp = TcpStream::connect(sidecar.proxy).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("/bytes?n={SIZE}"))
        .header("host", "x")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.headers()["content-length"], SIZE.to_string().as_str());
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        got += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(got, SIZE);
}

#[tokio::test]
async fn a_long_response_counts_as_a_live_connection_until_its_body_ends() {
    let (_app, sidecar) = app_and_sidecar(&[]).await;
    let mut events = sidecar.events().await;
    events.until(|e| e.ready && e.connections == 0).await;

    let tcp = TcpStream::connect(sidecar.proxy).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let req =
        Request::get("/sse?count=5&ms=300").header("host", "x").body(http_body_util::Empty::<Bytes>::new()).unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    // The first event arrives on its own: nothing is buffered until the end.
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"data: 0\n\n");
    let busy = events.until(|e| e.connections == 1).await;
    assert_eq!(busy.idle_ms, None);
    while let Some(frame) = body.frame().await {
        frame.unwrap();
    }
    events.until(|e| e.connections == 0).await;
}

#[tokio::test]
async fn idle_time_grows_while_idle_and_resets_after_a_request() {
    let (_app, sidecar) = app_and_sidecar(&[]).await;
    let mut events = sidecar.events().await;
    let a = events.until(|e| e.idle_ms.is_some()).await.idle_ms.unwrap();
    let b = events.until(|e| e.idle_ms.is_some_and(|ms| ms > a)).await.idle_ms.unwrap();
    assert!(b > a);
    // A request makes the backend busy, then idle again with a fresh (smaller) idle time.
    let drip = tokio::spawn(get(sidecar.proxy, "/drip?count=3&ms=300"));
    events.until(|e| e.connections == 1 && e.idle_ms.is_none()).await;
    assert_eq!(drip.await.unwrap().unwrap().text(), "0\n1\n2\n");
    let after = events.until(|e| e.connections == 0).await;
    assert!(after.idle_ms.unwrap() < b + 5_000);
}

#[tokio::test]
async fn clients_that_abort_and_apps_that_crash_leave_no_counted_connection() {
    let (app, sidecar) = app_and_sidecar(&[]).await;
    let mut events = sidecar.events().await;

    // A client that goes away in the middle of a response.
    let mut tcp = TcpStream::connect(sidecar.proxy).await.unwrap();
    tcp.write_all(b"GET /drip?count=1000&ms=50 HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    let _ = tcp.read(&mut buf).await.unwrap();
    events.until(|e| e.connections == 1).await;
    drop(tcp);
    events.until(|e| e.connections == 0).await;

    // A client that goes away before the app answered.
    let mut tcp = TcpStream::connect(sidecar.proxy).await.unwrap();
    tcp.write_all(b"GET /slow?ms=60000 HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    events.until(|e| e.connections == 1).await;
    drop(tcp);
    events.until(|e| e.connections == 0).await;

    // The app crashes in the middle of a response: the client's body fails, nothing is leaked.
    let tcp = TcpStream::connect(sidecar.proxy).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::get("/sse?ms=50").header("host", "x").body(http_body_util::Empty::<Bytes>::new()).unwrap();
    let mut body = sender.send_request(req).await.unwrap().into_body();
    body.frame().await.unwrap().unwrap();
    events.until(|e| e.connections == 1).await;
    app.crash();
    let mut ended = false;
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            ended = true;
            break;
        }
    }
    assert!(ended, "a cut upstream body must not look like a complete one");
    events.until(|e| e.connections == 0 && !e.ready).await;
    let reply = get(sidecar.proxy, "/").await.unwrap();
    assert!(matches!(reply.status, StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE), "{reply:?}");
    assert_eq!(get(sidecar.admin, "/readyz").await.unwrap().status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn before_the_app_listens_requests_get_503_and_readiness_follows_the_app() {
    // Reserve a port, then free it: nothing listens there yet.
    let port = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
    let sidecar = Sidecar::start(port, &[]);
    eventually(|| async { get(sidecar.admin, "/healthz").await.is_ok() }).await;
    assert_eq!(get(sidecar.admin, "/readyz").await.unwrap().status, StatusCode::SERVICE_UNAVAILABLE);
    let reply = get(sidecar.proxy, "/").await.unwrap();
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.headers["retry-after"], "1");
    let mut events = sidecar.events().await;
    let e = events.next().await;
    assert!(!e.ready && e.idle_ms.is_none(), "{e:?}");

    let _app = TestApp::serve(TcpListener::bind(("127.0.0.1", port)).await.unwrap());
    sidecar.wait_ready().await;
    events.until(|e| e.ready && e.idle_ms.is_some()).await;
    assert_eq!(get(sidecar.proxy, "/").await.unwrap().text(), "hello\n");
}

#[tokio::test]
async fn an_app_that_resets_gets_502_and_a_slow_one_504() {
    let (_app, sidecar) = app_and_sidecar(&["--upstream-timeout", "0.5"]).await;
    let reply = get(sidecar.proxy, "/reset").await.unwrap();
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert!(reply.text().starts_with("502"));
    let reply = get(sidecar.proxy, "/slow?ms=30000").await.unwrap();
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    // The sidecar is still fine.
    assert_eq!(get(sidecar.proxy, "/").await.unwrap().status, StatusCode::OK);
    let metrics = get(sidecar.admin, "/metrics").await.unwrap().text();
    assert!(metrics.contains("spawner_sidecar_bad_gateway_responses_total 1"), "{metrics}");
    assert!(metrics.contains("spawner_sidecar_gateway_timeout_responses_total 1"), "{metrics}");
}

fn token_file(token: &str) -> tempfile_path::TempFile {
    tempfile_path::TempFile::with(token)
}

mod tempfile_path {
    /// A file removed on drop.
    pub struct TempFile(pub std::path::PathBuf);
    impl TempFile {
        pub fn with(content: &str) -> Self {
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let p = std::env::temp_dir().join(format!("spawner-token-{}-{n}", std::process::id()));
            std::fs::write(&p, content).unwrap();
            Self(p)
        }
        pub fn path(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

#[tokio::test]
async fn without_the_token_requests_get_401_and_with_it_the_token_never_reaches_the_app() {
    let token = token_file("tok-123_abc\n");
    let (_app, sidecar) = app_and_sidecar(&["--token-file", token.path()]).await;

    for (path, headers) in [
        ("/echo-request", vec![]),
        ("/echo-request?token=wrong", vec![]),
        ("/echo-request", vec![("authorization", "Bearer tok-123_abd")]),
        ("/echo-request", vec![("cookie", "spawner-token=tok-123_ab")]),
    ] {
        let reply = get_with(sidecar.proxy, path, &headers).await.unwrap();
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{path} {headers:?}");
        assert!(reply.text().starts_with("401"), "the sidecar answers, not the app");
    }
    let metrics = get(sidecar.admin, "/metrics").await.unwrap().text();
    assert!(metrics.contains("spawner_sidecar_forwarded_requests_total 0"), "{metrics}");

    let reply = get_with(sidecar.proxy, "/echo-request", &[("authorization", "Bearer tok-123_abc")]).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.echoed_header("authorization"), None);

    let reply = get_with(sidecar.proxy, "/echo-request?a=1&token=tok-123_abc", &[("x-forwarded-prefix", "/p/ns/b1")])
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["uri"], "/echo-request?a=1");
    assert_eq!(reply.headers["set-cookie"], "spawner-token=tok-123_abc; Path=/p/ns/b1; HttpOnly; SameSite=Lax");

    let reply =
        get_with(sidecar.proxy, "/echo-request", &[("cookie", "theme=dark; spawner-token=tok-123_abc")]).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.echoed_header("cookie").as_deref(), Some("theme=dark"));
}

#[tokio::test]
async fn garbage_and_malformed_requests_get_400_and_a_closed_connection() {
    let (_app, sidecar) = app_and_sidecar(&[]).await;
    let cases: [(&str, &[u8]); 5] = [
        ("garbage", b"\x00\x01\x02 not http at all\r\n\r\n"),
        ("bad content-length", b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"),
        (
            "conflicting content-lengths",
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        ),
        ("bad transfer-encoding", b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n"),
        ("bad request line", b"GET\r\n\r\n"),
    ];
    for (what, bytes) in cases {
        let answer = raw(sidecar.proxy, bytes).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{what}: {answer:?}");
        // The answer is the whole exchange: `raw` returned because the sidecar closed.
        assert_eq!(get(sidecar.proxy, "/").await.unwrap().text(), "hello\n", "still serving after {what}");
    }
}

/// How many requests the sidecar forwarded to the app (every request the app sees is counted
/// before it is sent).
async fn forwarded_requests(sidecar: &Sidecar) -> u64 {
    let metrics = get(sidecar.admin, "/metrics").await.unwrap().text();
    let line = metrics.lines().find_map(|l| l.strip_prefix("spawner_sidecar_forwarded_requests_total "));
    line.unwrap_or_else(|| panic!("no forwarded counter in {metrics}")).parse().unwrap()
}

/// Send each request on its own connection: it must get exactly one 400, then the sidecar
/// closes the connection (`raw` returns only then), and the app sees nothing.
async fn assert_refused(sidecar: &Sidecar, cases: &[(&str, &[u8])]) {
    for (what, bytes) in cases {
        let answer = raw(sidecar.proxy, bytes).await;
        // An HTTP/1.0 request gets an HTTP/1.0 answer.
        assert!(answer.starts_with("HTTP/1.1 400 ") || answer.starts_with("HTTP/1.0 400 "), "{what}: {answer:?}");
        let status_lines = answer.lines().filter(|l| l.starts_with("HTTP/1.")).count();
        assert_eq!(status_lines, 1, "{what}: one answer only: {answer:?}");
        assert_eq!(forwarded_requests(sidecar).await, 0, "{what}: the app saw a request");
    }
}

#[tokio::test]
async fn more_than_one_host_gets_400_and_a_closed_connection() {
    // RFC 9112 §3.2: more than one Host field line gets 400, in any version. hyper passes them
    // on, and which one the app (or a cache in front) believes is up to each of them.
    let (_app, sidecar) = app_and_sidecar(&[]).await;
    assert_refused(
        &sidecar,
        &[
            ("two different hosts", b"GET /echo-request HTTP/1.1\r\nHost: x\r\nHost: evil\r\n\r\n"),
            ("the same host twice", b"GET /echo-request HTTP/1.1\r\nHost: x\r\nhost: x\r\n\r\n"),
            ("HTTP/1.0", b"GET /echo-request HTTP/1.0\r\nHost: x\r\nHost: evil\r\n\r\n"),
        ],
    )
    .await;
}

#[tokio::test]
async fn an_http_1_1_request_without_host_gets_400_and_a_closed_connection() {
    // RFC 9112 §3.2: an HTTP/1.1 request without Host gets 400, even in absolute form.
    let (_app, sidecar) = app_and_sidecar(&[]).await;
    assert_refused(
        &sidecar,
        &[
            ("origin form", b"GET /echo-request HTTP/1.1\r\n\r\n"),
            ("absolute form", b"GET http://x/echo-request HTTP/1.1\r\n\r\n"),
        ],
    )
    .await;
    // HTTP/1.0 had no Host requirement: still served.
    let answer = raw(sidecar.proxy, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.0 200 ") && answer.ends_with("\r\n\r\nhello\n"), "{answer:?}");
}

#[tokio::test]
async fn obs_fold_line_folding_gets_400_and_a_closed_connection() {
    // RFC 9112 §5.2: a server must reject obs-fold (or unfold it); hyper's parser rejects it.
    let (_app, sidecar) = app_and_sidecar(&[]).await;
    assert_refused(
        &sidecar,
        &[
            ("folded with a space", b"GET /echo-request HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n"),
            ("folded with a tab", b"GET /echo-request HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\tb\r\n\r\n"),
            ("folded empty value", b"GET /echo-request HTTP/1.1\r\nHost: x\r\nX-A:\r\n b\r\n\r\n"),
        ],
    )
    .await;
}

#[tokio::test]
async fn whitespace_before_the_first_header_field_gets_400_and_a_closed_connection() {
    // RFC 9112 §2.2: whitespace between the start line and the first field must be rejected (or
    // the line ignored); it would otherwise read as the fold of a field that does not exist.
    let (_app, sidecar) = app_and_sidecar(&[]).await;
    assert_refused(
        &sidecar,
        &[
            ("space", b"GET /echo-request HTTP/1.1\r\n Host: x\r\n\r\n"),
            ("tab", b"GET /echo-request HTTP/1.1\r\n\tX-A: 1\r\nHost: x\r\n\r\n"),
        ],
    )
    .await;
}

#[tokio::test]
async fn whitespace_between_a_field_name_and_the_colon_gets_400_and_a_closed_connection() {
    // RFC 9112 §5.1: a server must reject it (a proxy must remove it before forwarding);
    // hyper's parser rejects it in requests.
    let (_app, sidecar) = app_and_sidecar(&[]).await;
    assert_refused(
        &sidecar,
        &[
            ("space before the colon of Host", b"GET /echo-request HTTP/1.1\r\nHost : x\r\n\r\n"),
            ("tab before the colon", b"GET /echo-request HTTP/1.1\r\nHost: x\r\nX-A\t: 1\r\n\r\n"),
            (
                "space before the colon of Transfer-Encoding",
                b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn invalid_field_names_get_400_and_a_closed_connection() {
    // RFC 9110 §5.1: a field name is a token; RFC 9112 §2.2: an invalid message gets 400.
    let (_app, sidecar) = app_and_sidecar(&[]).await;
    assert_refused(
        &sidecar,
        &[
            ("delimiter in the name", b"GET /echo-request HTTP/1.1\r\nHost: x\r\nX(A): 1\r\n\r\n"),
            ("space in the name", b"GET /echo-request HTTP/1.1\r\nHost: x\r\nX A: 1\r\n\r\n"),
            ("empty name", b"GET /echo-request HTTP/1.1\r\nHost: x\r\n: 1\r\n\r\n"),
            ("non-ASCII name", b"GET /echo-request HTTP/1.1\r\nHost: x\r\nX-\xc3\xa4: 1\r\n\r\n"),
            ("control byte in the name", b"GET /echo-request HTTP/1.1\r\nHost: x\r\nX-\x01: 1\r\n\r\n"),
        ],
    )
    .await;
}

#[tokio::test]
async fn content_length_with_transfer_encoding_cannot_smuggle_a_request() {
    let (_app, sidecar) = app_and_sidecar(&[]).await;
    // The classic CL.TE desync: a front end honouring Content-Length would forward the
    // "smuggled" GET as part of the body; a back end honouring chunked would run it. The sidecar
    // refuses the message (RFC 9112 §6.1): one 400, the connection closed, and neither the POST
    // nor the GET hidden in its body reaches the app.
    let cl_te: &[u8] = b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /status?code=418 HTTP/1.1\r\nHost: x\r\n\r\n";
    let te_cl: &[u8] = b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\nGET /status?code=418 HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_refused(&sidecar, &[("Content-Length first", cl_te), ("Transfer-Encoding first", te_cl)]).await;

    // Later on a keep-alive connection, after a chunked request: the first is served, the
    // second refused.
    let chunked = b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let answer = raw(sidecar.proxy, &[&chunked[..], cl_te].concat()).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    // The upload's answer (its length and byte sum), then the refusal, and nothing more.
    assert!(answer.contains("\r\n\r\n3 294HTTP/1.1 400 Bad Request\r\n"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 2, "{answer}");
    assert_eq!(forwarded_requests(&sidecar).await, 1, "only the first request reached the app");
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let (_app, sidecar) = app_and_sidecar(&[]).await;
    let big = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(40 * 1024));
    let answer = raw(sidecar.proxy, big.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    let mut many = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..150 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let answer = raw(sidecar.proxy, many.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    assert_eq!(get(sidecar.proxy, "/").await.unwrap().text(), "hello\n");
}

#[tokio::test]
async fn a_slowloris_client_is_cut_off_while_others_are_served() {
    let (_app, sidecar) = app_and_sidecar(&["--header-read-timeout", "1"]).await;
    let mut slow = TcpStream::connect(sidecar.proxy).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let dripping = tokio::spawn(async move {
        // One header byte every 200 ms, forever, until the sidecar hangs up.
        loop {
            if slow.write_all(b"X").await.is_err() {
                return;
            }
            let mut buf = [0u8; 256];
            match tokio::time::timeout(Duration::from_millis(200), slow.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) => return,
                Err(_) => {}
            }
        }
    });
    for _ in 0..5 {
        assert_eq!(get(sidecar.proxy, "/").await.unwrap().text(), "hello\n");
    }
    tokio::time::timeout(SOON, dripping).await.expect("the slowloris connection is closed").unwrap();
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_then_stops_accepting() {
    let (_app, mut sidecar) = app_and_sidecar(&["--drain-timeout", "10"]).await;
    let mut events = sidecar.events().await;
    let in_flight = tokio::spawn(get(sidecar.proxy, "/slow?ms=1500"));
    events.until(|e| e.connections == 1).await;
    sidecar.terminate();
    let reply = in_flight.await.unwrap().unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "slow\n");
    let status = sidecar.wait_exit(SOON).await;
    assert!(status.success(), "{status:?}\n{}", sidecar.log());
    assert!(TcpStream::connect(sidecar.proxy).await.is_err(), "no longer accepting");
}

#[tokio::test]
async fn the_event_stream_serves_many_clients_and_a_stalled_one_does_not_slow_the_proxy() {
    let (_app, sidecar) = app_and_sidecar(&[]).await;
    // A client that asks for events and never reads them.
    let mut stalled = TcpStream::connect(sidecar.admin).await.unwrap();
    stalled.write_all(b"GET /events HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let mut events = sidecar.events().await;
    // Thousands of state changes.
    let mut client = Client::connect(sidecar.proxy).await.unwrap();
    for _ in 0..2000 {
        assert_eq!(client.get("/", &[]).await.unwrap().status, StatusCode::OK);
    }
    let e = events.until(|e| e.connections == 0 && e.idle_ms.is_some()).await;
    assert!(e.ready);
    drop(stalled);
    let metrics = get(sidecar.admin, "/metrics").await.unwrap().text();
    assert!(metrics.contains("spawner_sidecar_forwarded_requests_total 2000"), "{metrics}");
}

/// `POST /claim` on the admin port, as the controller sends it; the raw response.
async fn claim(admin: std::net::SocketAddr, key: &str, backend: &str, token: &str) -> String {
    claim_with(admin, key, &format!(r#"{{"backend":"{backend}","token":"{token}"}}"#)).await
}

async fn claim_with(admin: std::net::SocketAddr, key: &str, body: &str) -> String {
    let request = format!(
        "POST /claim HTTP/1.1\r\nHost: sidecar\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    raw(admin, request.as_bytes()).await
}

#[tokio::test]
async fn a_warm_pod_serves_nobody_until_claimed_and_then_only_its_backends_token() {
    let key = token_file("claim-key-1\n");
    let (_app, sidecar) = app_and_sidecar(&["--claim-key-file", key.path()]).await;
    let before = get(sidecar.proxy, "/echo-request").await.unwrap();
    assert_eq!(before.status, StatusCode::SERVICE_UNAVAILABLE, "{}", before.text());
    // The claim key is not a token for the public port.
    let with_key = get_with(sidecar.proxy, "/echo-request", &[("authorization", "Bearer claim-key-1")]).await.unwrap();
    assert_eq!(with_key.status, StatusCode::SERVICE_UNAVAILABLE);

    let refused = claim(sidecar.admin, "wrong-key", "uid-a", "session-a").await;
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    assert_eq!(get(sidecar.proxy, "/echo-request").await.unwrap().status, StatusCode::SERVICE_UNAVAILABLE);

    let claimed = claim(sidecar.admin, "claim-key-1", "uid-a", "session-a").await;
    assert!(claimed.starts_with("HTTP/1.1 200"), "{claimed}");
    assert_eq!(get(sidecar.proxy, "/echo-request").await.unwrap().status, StatusCode::UNAUTHORIZED);
    let reply = get_with(sidecar.proxy, "/echo-request", &[("authorization", "Bearer session-a")]).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.echoed_header("authorization"), None, "the token never reaches the app");

    // Never another backend's pod; and nothing but JSON claims.
    let other = claim(sidecar.admin, "claim-key-1", "uid-b", "session-b").await;
    assert!(other.starts_with("HTTP/1.1 409"), "{other}");
    let reply = get_with(sidecar.proxy, "/echo-request", &[("authorization", "Bearer session-b")]).await.unwrap();
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let garbage = raw(
        sidecar.admin,
        b"POST /claim HTTP/1.1\r\nHost: s\r\nAuthorization: Bearer claim-key-1\r\nContent-Length: 3\r\nConnection: close\r\n\r\nxyz",
    )
    .await;
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");
}

#[tokio::test]
async fn a_sidecar_with_a_token_is_not_claimable() {
    let token = token_file("tok-1\n");
    let (_app, sidecar) = app_and_sidecar(&["--token-file", token.path()]).await;
    let reply = claim(sidecar.admin, "tok-1", "uid-a", "other").await;
    assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");
    let ok = get_with(sidecar.proxy, "/echo-request", &[("authorization", "Bearer tok-1")]).await.unwrap();
    assert_eq!(ok.status, StatusCode::OK);
}

#[tokio::test]
async fn a_claim_without_a_token_opens_the_pod_and_restarts_its_idle_time() {
    let key = token_file("claim-key-2\n");
    let (_app, sidecar) = app_and_sidecar(&["--claim-key-file", key.path()]).await;
    let mut events = sidecar.events().await;
    // Idle since it became ready, well before the claim.
    let before = events.until(|s| s.idle_ms.is_some_and(|ms| ms >= 1500)).await;
    assert_eq!(get(sidecar.proxy, "/").await.unwrap().status, StatusCode::SERVICE_UNAVAILABLE);

    let claimed = claim_with(sidecar.admin, "claim-key-2", r#"{"backend":"uid-open"}"#).await;
    assert!(claimed.starts_with("HTTP/1.1 200"), "{claimed}");
    let after = events.until(|s| s.idle_ms.is_some_and(|ms| ms < 1000)).await;
    assert!(after.idle_ms < before.idle_ms, "the session's idle time starts at the claim");
    assert_eq!(get(sidecar.proxy, "/").await.unwrap().status, StatusCode::OK, "no auth: open to anyone");
}

/// The session's settings reach the application from its sidecar: a cold backend's at once (from
/// `SPAWNER_SESSION`), a warm pod's with the claim — and a reader that asked before the claim
/// gets them the moment it lands.
#[tokio::test]
async fn the_app_reads_its_session_from_the_sidecar_cold_or_after_the_claim() {
    let session = r#"{"namespace":"games","backend":"room-1","key":"room 1","values":{"TITLE":"Blue room"}}"#;
    let expected: serde_json::Value = serde_json::from_str(session).unwrap();
    let (_app, cold) = app_and_sidecar(&["--session", session]).await;
    let reply = get(cold.admin, "/session").await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&reply.text()).unwrap(), expected);

    let key = token_file("claim-key-3\n");
    let (_app, warm) = app_and_sidecar(&["--claim-key-file", key.path()]).await;
    assert_eq!(get(warm.admin, "/session?wait=0").await.unwrap().status, StatusCode::NO_CONTENT, "not claimed yet");
    let admin = warm.admin;
    let waiting = tokio::spawn(async move { get(admin, "/session?wait=60").await });
    let claimed =
        claim_with(warm.admin, "claim-key-3", &format!(r#"{{"backend":"uid-s","token":"tok-s","session":{session}}}"#))
            .await;
    assert!(claimed.starts_with("HTTP/1.1 200"), "{claimed}");
    let reply = waiting.await.unwrap().unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&reply.text()).unwrap(), expected);
    assert_eq!(get(warm.admin, "/session?wait=soon").await.unwrap().status, StatusCode::BAD_REQUEST);
}
