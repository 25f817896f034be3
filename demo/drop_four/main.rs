//! `spawner-demo-drop-four`: a two-player drop four (Connect Four) game server, the demo
//! application of Spawner.
//!
//! One process is one game room: it serves a self-contained page at `/` and the game over a
//! WebSocket at `/ws`. The page uses only relative URLs, so it works at the root of its own port
//! and under the reverse proxy's `/p/<namespace>/<backend>/` prefix alike. Protocol (JSON text
//! frames, see `room.rs`): the client sends `{"type":"join"}` and gets
//! `{"type":"welcome","role":"red"|"yellow"|"spectator"}`; `{"type":"move","column":N}` and
//! `{"type":"reset"}` change the game; everyone gets `{"type":"state","board":..,"turn":..,
//! "winner":..}` after every change.
#![forbid(unsafe_code)]

mod game;
mod room;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use futures::{SinkExt, StreamExt};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role as WsRole;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use spawner::process::{LogFilter, LogFormat, cancel_on_stop_signal, init_logging};

use room::{ClientId, ClientMessage, Outbox, Room, ServerMessage};

const PAGE: &str = include_str!("index.html");
/// How long open games get to say goodbye after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Parser, Debug)]
#[command(
    name = "spawner-demo-drop-four",
    version,
    about = "Two-player drop four over WebSockets: Spawner's demo backend."
)]
struct Args {
    /// Port to listen on (Spawner passes the backend's httpPort as PORT).
    #[arg(long, env = "PORT", default_value_t = 8080)]
    port: u16,
    /// Address to listen on.
    #[arg(long, env = "BIND_ADDRESS", default_value = "0.0.0.0")]
    bind: IpAddr,
    /// Log format.
    #[arg(long, value_enum, env = "LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// The room plus a way to reach every connected client.
#[derive(Default)]
struct Hub {
    room: Mutex<Room>,
    clients: Mutex<HashMap<ClientId, mpsc::UnboundedSender<Message>>>,
    next_id: AtomicU64,
}

impl Hub {
    fn deliver(&self, sender: ClientId, outbox: Outbox) {
        let clients = self.clients.lock().expect("clients lock");
        let encode = |m: &ServerMessage| Message::text(serde_json::to_string(m).expect("messages serialize"));
        if let Some(tx) = clients.get(&sender) {
            for message in &outbox.to_sender {
                let _ = tx.send(encode(message));
            }
        }
        for message in &outbox.to_everyone {
            let frame = encode(message);
            for tx in clients.values() {
                // A closed receiver is a client on its way out; `leave` handles it.
                let _ = tx.send(frame.clone());
            }
        }
    }
}

/// Everything a connection task needs; holding `_alive` keeps shutdown waiting for it.
#[derive(Clone)]
struct Context {
    hub: Arc<Hub>,
    shutdown: CancellationToken,
    _alive: mpsc::Sender<()>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_format, LogFilter::Directives("info"));

    let addr = SocketAddr::new(args.bind, args.port);
    let listener = TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    info!(%addr, "drop four listening");

    let shutdown = CancellationToken::new();
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let context = Context { hub: Arc::default(), shutdown: shutdown.clone(), _alive: alive_tx };
    tokio::spawn(cancel_on_stop_signal(shutdown.clone()));

    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: keep serving the connections we have.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        tokio::spawn(serve_connection(context.clone(), stream, peer).instrument(info_span!("connection", %peer)));
    }

    info!("shutting down");
    drop(listener);
    drop(context);
    // Every task holds a sender; recv() returns None once the last one has finished.
    if tokio::time::timeout(SHUTDOWN_GRACE, alive_rx.recv()).await.is_err() {
        warn!("connections still open after the shutdown grace period; exiting anyway");
    }
    Ok(())
}

async fn serve_connection(context: Context, stream: tokio::net::TcpStream, peer: SocketAddr) {
    let service_context = context.clone();
    let service = service_fn(move |request| {
        let context = service_context.clone();
        async move { Ok::<_, Infallible>(route(context, request).await) }
    });
    let connection =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).with_upgrades();
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = context.shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

async fn route(context: Context, request: Request<Incoming>) -> Response<Full<Bytes>> {
    match (request.method(), request.uri().path()) {
        (&Method::GET | &Method::HEAD, "/" | "/index.html") => {
            let mut response = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/ws") => upgrade(context, request),
        (&Method::GET, "/session") => session().await,
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// The room's session settings, as Spawner delivered them to the sidecar (`spec.values`, the
/// connect key): how an application learns them, also in a warm pod that started before its
/// session. 204 without a sidecar session (e.g. run on its own).
async fn session() -> Response<Full<Bytes>> {
    let fetched = async {
        let addr = (std::net::Ipv4Addr::LOCALHOST, spawner::names::SIDECAR_ADMIN_PORT);
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(connection);
        let request = Request::get("/session?wait=0")
            .header(header::HOST, "localhost")
            .body(http_body_util::Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = http_body_util::BodyExt::collect(response.into_body()).await?.to_bytes();
        anyhow::Ok((status, body))
    };
    match fetched.await {
        Ok((StatusCode::OK, body)) => {
            let mut response = Response::new(Full::new(body));
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Ok(_) | Err(_) => text(StatusCode::NO_CONTENT, ""),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// Answers a WebSocket handshake and hands the upgraded connection to [`play`].
fn upgrade(context: Context, mut request: Request<Incoming>) -> Response<Full<Bytes>> {
    let headers = request.headers();
    let is_upgrade =
        headers.get(header::UPGRADE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = headers.get(header::SEC_WEBSOCKET_KEY).map(|k| derive_accept_key(k.as_bytes()));
    let (true, Some(accept)) = (is_upgrade, key) else {
        return text(StatusCode::BAD_REQUEST, "this path speaks WebSocket only\n");
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(
        async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let socket = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), WsRole::Server, None).await;
                    play(context, socket).await;
                }
                Err(e) => warn!(error = %e, "WebSocket upgrade failed"),
            }
        }
        .in_current_span(),
    );
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers
        .insert(header::SEC_WEBSOCKET_ACCEPT, HeaderValue::from_str(&accept).expect("base64 is a valid header value"));
    response
}

/// Runs one player's (or spectator's) WebSocket until either side closes it.
async fn play(context: Context, socket: WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>) {
    let hub = context.hub.clone();
    let id = hub.next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::unbounded_channel();
    hub.clients.lock().expect("clients lock").insert(id, tx.clone());
    info!(client = id, "client connected");
    let (mut sink, mut stream) = socket.split();

    let writer = async {
        while let Some(message) = rx.recv().await {
            let closing = matches!(message, Message::Close(_));
            if sink.send(message).await.is_err() || closing {
                break;
            }
        }
    };
    let reader = async {
        loop {
            let frame = tokio::select! {
                frame = stream.next() => frame,
                _ = context.shutdown.cancelled() => {
                    let _ = tx.send(Message::Close(None));
                    break;
                }
            };
            match frame {
                Some(Ok(Message::Text(text))) => match serde_json::from_str::<ClientMessage>(&text) {
                    Ok(message) => {
                        let outbox = hub.room.lock().expect("room lock").handle(id, message);
                        hub.deliver(id, outbox);
                    }
                    Err(e) => {
                        let outbox = Outbox {
                            to_sender: vec![ServerMessage::Error { message: format!("unreadable message: {e}") }],
                            to_everyone: Vec::new(),
                        };
                        hub.deliver(id, outbox);
                    }
                },
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => {} // pings are answered by tungstenite; binary frames mean nothing here
                Some(Err(e)) => {
                    tracing::debug!(client = id, error = %e, "WebSocket read failed");
                    break;
                }
            }
        }
        // Ends the writer once it has flushed what is queued (a Close on shutdown).
        hub.clients.lock().expect("clients lock").remove(&id);
        drop(tx);
    };
    futures::future::join(writer, reader).await;
    let outbox = hub.room.lock().expect("room lock").leave(id);
    hub.deliver(id, outbox);
    info!(client = id, "client disconnected");
}
