//! `spawner-demo-lobby`: the web application in front of the drop-four demo, and the example
//! of a web application using Spawner's HTTP API (plain HTTP, no Kubernetes client).
//!
//! "New game" makes a room code and connects to it (`POST /api/v1/namespaces/{ns}/connect`, the
//! code as the key), then shows the code to share and the room's link; "Join" connects with a
//! code and sends the visitor to the room. Both go through keyed connect, so everyone with a
//! code meets in one backend, made from the pool on first use. The API key stays here, on the
//! server; browsers only ever get a backend's URL.
#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use clap::Parser;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use spawner::admin_http;
use spawner::process::{LogFilter, LogFormat, cancel_on_stop_signal, init_logging};

#[derive(Parser, Debug, Clone)]
#[command(name = "spawner-demo-lobby", version, about = "A lobby for drop-four rooms, over Spawner's HTTP API")]
struct Args {
    /// Port to listen on.
    #[arg(long, env = "PORT", default_value_t = 8080)]
    port: u16,
    /// Address to listen on.
    #[arg(long, env = "BIND_ADDRESS", default_value = "0.0.0.0")]
    bind: IpAddr,
    /// Where spawner-api answers (inside the cluster: its Service).
    #[arg(long, env = "SPAWNER_API_URL", default_value = "http://spawner-api.spawner-system.svc")]
    api_url: String,
    /// The API key (`spawner api-key create`).
    #[arg(long, env = "SPAWNER_API_KEY", hide_env_values = true)]
    api_key: String,
    /// Namespace of the rooms.
    #[arg(long, env = "SPAWNER_NAMESPACE", default_value = "default")]
    namespace: String,
    /// Pool the rooms are made from.
    #[arg(long, env = "SPAWNER_POOL", default_value = "drop-four")]
    pool: String,
    /// Log format.
    #[arg(long, value_enum, env = "LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// Room codes: no 0/O or 1/I to misread.
const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
const CODE_LEN: usize = 5;
/// Seconds the API may hold a connect until the room is Ready.
const WAIT_SECONDS: u32 = 60;

type Reply = Response<Full<Bytes>>;

struct Lobby {
    args: Args,
    http: Client<HttpConnector, Full<Bytes>>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    init_logging(args.log_format, LogFilter::Directives("info"));
    let addr = SocketAddr::new(args.bind, args.port);
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot listen");
            return std::process::ExitCode::FAILURE;
        }
    };
    let lobby = Arc::new(Lobby { http: Client::builder(TokioExecutor::new()).build_http(), args });
    let stop = CancellationToken::new();
    tokio::spawn(cancel_on_stop_signal(stop.clone()));
    tracing::info!(%addr, "serving the lobby");
    admin_http::serve_async(listener, stop, move |request| {
        let lobby = lobby.clone();
        async move { lobby.respond(request).await }
    })
    .await;
    std::process::ExitCode::SUCCESS
}

impl Lobby {
    async fn respond(&self, request: Request<Incoming>) -> Reply {
        let query = request.uri().query().unwrap_or_default().to_owned();
        match (request.method(), request.uri().path()) {
            (&Method::GET, "/") => page(StatusCode::OK, &home()),
            (&Method::GET, "/healthz") => admin_http::text(StatusCode::OK, "ok\n"),
            (&Method::POST, "/new") => {
                let code: String = {
                    let mut rng = rand::rng();
                    (0..CODE_LEN).map(|_| CODE_ALPHABET[rng.random_range(0..CODE_ALPHABET.len())] as char).collect()
                };
                match self.connect(&code).await {
                    Ok(url) => page(StatusCode::OK, &room(&code, &url)),
                    Err((status, message)) => page(status, &failed(&message)),
                }
            }
            (&Method::GET, "/join") => {
                let code = query_value(&query, "code").unwrap_or_default().trim().to_ascii_uppercase();
                if code.is_empty() || code.len() > 32 || !code.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return page(StatusCode::BAD_REQUEST, &failed("a room code is letters and digits, like K7QX2"));
                }
                match self.connect(&code).await {
                    Ok(url) => redirect(&url),
                    Err((status, message)) => page(status, &failed(&message)),
                }
            }
            _ => page(StatusCode::NOT_FOUND, &failed("no such page")),
        }
    }

    /// The room's URL (token included), from keyed connect: the same code, the same room.
    async fn connect(&self, code: &str) -> Result<String, (StatusCode, String)> {
        let Args { api_url, api_key, namespace, pool, .. } = &self.args;
        let uri =
            format!("{}/api/v1/namespaces/{namespace}/connect?wait={WAIT_SECONDS}", api_url.trim_end_matches('/'));
        let body = serde_json::json!({"key": format!("room-{code}"), "pool": pool});
        let request = Request::post(uri)
            .header(header::AUTHORIZATION, format!("Bearer {api_key}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("a valid request");
        let unavailable = |e: String| (StatusCode::BAD_GATEWAY, format!("the Spawner API is not reachable: {e}"));
        let response = self.http.request(request).await.map_err(|e| unavailable(e.to_string()))?;
        let status = response.status();
        let bytes = response.into_body().collect().await.map_err(|e| unavailable(e.to_string()))?.to_bytes();
        let answer: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        match answer["url"].as_str() {
            Some(url) if status.is_success() => Ok(url.to_owned()),
            _ => {
                let message = answer["message"].as_str().unwrap_or("the Spawner API answered without a room URL");
                tracing::warn!(%status, message, "connect failed");
                Err((if status.is_success() { StatusCode::BAD_GATEWAY } else { status }, message.to_owned()))
            }
        }
    }
}

fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

fn page(status: StatusCode, body: &str) -> Reply {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Drop four lobby</title>\
         <meta name=\"viewport\" content=\"width=device-width\"><style>body{{font-family:sans-serif;max-width:32em;\
         margin:3em auto;padding:0 1em}}button,input{{font-size:1.2em;padding:.3em .6em}}.code{{font-size:2.5em;\
         letter-spacing:.2em;font-weight:bold}}</style></head><body><h1>Drop four</h1>{body}</body></html>\n"
    );
    let mut response = Response::new(Full::new(Bytes::from(html)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/html; charset=utf-8"));
    response
}

fn home() -> String {
    "<form method=\"post\" action=\"new\"><button id=\"new\" type=\"submit\">New game</button></form>\
     <p>or join a friend's room:</p><form method=\"get\" action=\"join\"><input id=\"code\" name=\"code\" \
     placeholder=\"K7QX2\" autocomplete=\"off\" required> <button id=\"join\" type=\"submit\">Join</button></form>"
        .into()
}

fn room(code: &str, url: &str) -> String {
    let url = escape(url);
    format!(
        "<p>Your room code:</p><p class=\"code\" id=\"room-code\">{code}</p><p>Send it to the other player, \
         who joins with it here.</p><p><a id=\"play\" href=\"{url}\">Enter the room</a></p>"
    )
}

fn failed(message: &str) -> String {
    format!("<p id=\"error\">{}</p><p><a href=\"./\">Back to the lobby</a></p>", escape(message))
}

fn redirect(url: &str) -> Reply {
    let mut response = admin_http::text(StatusCode::SEE_OTHER, "");
    if let Ok(value) = header::HeaderValue::from_str(url) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_and_escaping() {
        assert_eq!(query_value("a=1&code=K7QX2", "code"), Some("K7QX2"));
        assert_eq!(query_value("codex=1", "code"), None);
        assert_eq!(escape("<a href=\"x\">&"), "&lt;a href=&quot;x&quot;&gt;&amp;");
    }
}
