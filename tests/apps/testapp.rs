//! A real app for the sidecar's tests and benchmark: plain HTTP, request echo, streaming
//! uploads and downloads, slow answers, SSE, WebSocket echo and a way to crash.
//!
//! Used in-process by the loopback tests (tests/loopback/support.rs) and the fuzz target, and as
//! the `spawner-testapp` example binary by `cargo xtask bench sidecar`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt, stream};
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;

type Body = BoxBody<Bytes, std::io::Error>;

/// Serves the app on an already bound listener (so callers can pick or reserve the port);
/// returns its address. Cancelling `crash` stops it like a crashed process: the listener and
/// every connection close at once.
pub fn serve(listener: TcpListener, crash: CancellationToken) -> SocketAddr {
    let addr = listener.local_addr().expect("bound");
    tokio::spawn(accept(listener, crash));
    addr
}

async fn accept(listener: TcpListener, crash: CancellationToken) {
    loop {
        let (tcp, _) = tokio::select! {
            () = crash.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => { tokio::time::sleep(Duration::from_millis(10)).await; continue }
            },
        };
        let _ = tcp.set_nodelay(true);
        let crash = crash.clone();
        tokio::spawn(async move {
            let c = crash.clone();
            let svc = service_fn(move |req| handle(req, c.clone()));
            let conn = http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).with_upgrades();
            tokio::select! {
                _ = conn => {}
                () = crash.cancelled() => {}
            }
        });
    }
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).map_err(|never: Infallible| match never {}).boxed());
    *r.status_mut() = status;
    r
}

fn query(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// A body of `count` chunks produced every `every`.
fn timed_chunks(count: u64, every: Duration, chunk: impl Fn(u64) -> Bytes + Send + Sync + 'static) -> Body {
    let s = stream::unfold(0, move |i| {
        let c = (i < count).then(|| chunk(i));
        async move {
            let c = c?;
            if i > 0 {
                tokio::time::sleep(every).await;
            }
            Some((Ok(Frame::data(c)), i + 1))
        }
    });
    BodyExt::boxed(StreamBody::new(s))
}

async fn handle(mut req: Request<Incoming>, crash: CancellationToken) -> Result<Response<Body>, std::io::Error> {
    let path = req.uri().path().to_owned();
    let resp = match path.as_str() {
        "/" => full(StatusCode::OK, "hello\n"),
        "/echo-request" => {
            let headers: Vec<(String, String)> = req
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect();
            let body = serde_json::json!({
                "method": req.method().as_str(),
                "uri": req.uri().to_string(),
                "headers": headers,
            });
            full(StatusCode::OK, body.to_string())
        }
        "/upload" => {
            // Count as it streams: never holds the body.
            let mut body = req.into_body();
            let (mut len, mut sum) = (0u64, 0u64);
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(std::io::Error::other)?;
                if let Some(d) = frame.data_ref() {
                    len += d.len() as u64;
                    sum = d.iter().fold(sum, |s, &b| s.wrapping_add(b as u64));
                }
            }
            full(StatusCode::OK, format!("{len} {sum}"))
        }
        "/bytes" => {
            let n = query(&req, "n").unwrap_or(0);
            const CHUNK: u64 = 64 * 1024;
            let block = Bytes::from(vec![b'x'; CHUNK as usize]);
            let chunks = n.div_ceil(CHUNK);
            let body = timed_chunks(chunks, Duration::ZERO, move |i| {
                let len = CHUNK.min(n - i * CHUNK) as usize;
                block.slice(..len)
            });
            let mut r = Response::new(body);
            r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            r
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(query(&req, "ms").unwrap_or(1000))).await;
            full(StatusCode::OK, "slow\n")
        }
        "/drip" => {
            let count = query(&req, "count").unwrap_or(10);
            let ms = query(&req, "ms").unwrap_or(100);
            Response::new(timed_chunks(count, Duration::from_millis(ms), |i| Bytes::from(format!("{i}\n"))))
        }
        "/sse" => {
            let count = query(&req, "count").unwrap_or(u64::MAX);
            let ms = query(&req, "ms").unwrap_or(100);
            let mut r = Response::new(timed_chunks(count, Duration::from_millis(ms), |i| {
                Bytes::from(format!("data: {i}\n\n"))
            }));
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            r
        }
        "/reset" => return Err(std::io::Error::other("asked to reset")),
        "/status" => {
            full(StatusCode::from_u16(query(&req, "code").unwrap_or(200) as u16).unwrap_or(StatusCode::OK), "status\n")
        }
        "/ws" | "/ws-ext" => {
            let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
                return Ok(full(StatusCode::BAD_REQUEST, "not a websocket handshake\n"));
            };
            let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            let offered_deflate = req
                .headers()
                .get(header::SEC_WEBSOCKET_EXTENSIONS)
                .is_some_and(|v| v.to_str().unwrap_or("").contains("permessage-deflate"));
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = upgrade.await else { return };
                let config = WebSocketConfig::default()
                    .max_message_size(None)
                    .max_frame_size(None)
                    .read_buffer_size(4096)
                    .write_buffer_size(0);
                let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
                tokio::select! {
                    () = echo(ws) => {}
                    () = crash.cancelled() => {}
                }
            });
            let mut r = full(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
            let h = r.headers_mut();
            h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            h.insert(header::SEC_WEBSOCKET_ACCEPT, HeaderValue::from_str(&accept).expect("base64"));
            if path == "/ws-ext" && offered_deflate {
                // Negotiation is between the browser and the app; the sidecar must pass it on.
                h.insert(header::SEC_WEBSOCKET_EXTENSIONS, HeaderValue::from_static("permessage-deflate"));
            }
            r
        }
        _ => full(StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(resp)
}

/// Echo every data message; tungstenite answers pings and echoes the close frame itself.
async fn echo<S>(ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut tx, mut rx) = ws.split();
    while let Some(Ok(msg)) = rx.next().await {
        if (msg.is_text() || msg.is_binary()) && tx.send(msg).await.is_err() {
            return;
        }
    }
}
