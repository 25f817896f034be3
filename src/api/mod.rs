//! `spawner-api`: the bridge for web applications. JSON over HTTP, behind the reverse proxy at
//! `/api/`: keyed connect, backends made from named pools (never from a pod spec the caller
//! sends), and a live status stream — so a web application needs an API key, not a kubeconfig.
//!
//! Every request but `GET /api/v1/openapi.json` carries `Authorization: Bearer spk_...`
//! ([`keys`]); each key is limited to namespaces, pools and a number of live backends
//! ([`limits`]). Backends are read from one cluster-wide watch ([`BackendCache`]), written with
//! the client library's operations ([`crate::client`]). Errors are `{error, message}`
//! ([`ApiError`]).

mod error;
mod handlers;
pub mod keys;
pub mod limits;
pub mod openapi;
pub mod stream;
pub mod types;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

pub use error::ApiError;

use crate::admin_http;
use crate::backend_cache::{self, BackendCache};
use crate::backoff::Backoff;
use crate::names::SYSTEM_NAMESPACE;
use crate::text::ErrorChain;
use keys::Keyring;
use limits::Limits;

/// The largest request body read; more is 413.
pub const MAX_BODY: u64 = 64 * 1024;
/// The longest `?wait=`, in seconds.
pub const MAX_WAIT_SECONDS: u64 = 300;
/// Path prefix of the API (what nginx routes here).
pub const PREFIX: &str = "/api/v1";

/// A response body: whole, or a stream (the status events).
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// What every request shares.
#[derive(Clone)]
pub struct Service {
    client: Client,
    cache: BackendCache,
    keys: Keyring,
    keys_loaded: Arc<std::sync::atomic::AtomicBool>,
    limits: Limits,
    stop: CancellationToken,
    metrics: Metrics,
}

impl Service {
    /// A service over `client`, reading backends from `cache` and keys from `keys`.
    pub fn new(client: Client, cache: BackendCache, keys: Keyring, stop: CancellationToken) -> Service {
        Service {
            client,
            cache,
            keys,
            keys_loaded: Arc::default(),
            limits: Limits::default(),
            stop,
            metrics: Metrics::default(),
        }
    }

    /// Answers one request (the API, its health and its metrics).
    pub async fn respond(self, request: Request<Incoming>, registry: Arc<Registry>) -> Response<Body> {
        let path = request.uri().path().to_owned();
        let method = request.method().clone();
        match (&method, path.as_str()) {
            (&Method::GET, "/healthz") => return whole(admin_http::text(StatusCode::OK, "ok\n")),
            (&Method::GET, "/readyz") if self.is_ready() => return whole(admin_http::text(StatusCode::OK, "ok\n")),
            (&Method::GET, "/readyz") => {
                return whole(admin_http::text(StatusCode::SERVICE_UNAVAILABLE, "backends or keys not loaded yet\n"));
            }
            (&Method::GET, "/metrics") => return whole(admin_http::openmetrics(&registry)),
            _ => {}
        }
        let (route, answer) = handlers::route(&self, request).await;
        let status = match &answer {
            Ok(response) => response.status(),
            Err(error) => error.status,
        };
        self.metrics.requests.get_or_create(&vec![("route", route), ("code", status_class(status))]).inc();
        match answer {
            Ok(response) => response,
            Err(error) => {
                if error.status.is_server_error() {
                    tracing::warn!(%method, route, status = error.status.as_u16(), message = %error.message, "request failed");
                }
                error_response(&error)
            }
        }
    }

    fn is_ready(&self) -> bool {
        self.cache.is_synced() && self.keys_loaded.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn register_metrics(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("spawner_api");
        r.register("requests", "API requests answered, by route and status class", self.metrics.requests.clone());
        r.register("keys", "API keys loaded", self.metrics.keys.clone());
    }
}

fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200..=299 => "2xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[derive(Clone, Default)]
struct Metrics {
    requests: Family<Vec<(&'static str, &'static str)>, Counter>,
    keys: Gauge,
}

/// A whole response as an API [`Body`].
fn whole(response: Response<Full<Bytes>>) -> Response<Body> {
    response.map(BodyExt::boxed_unsync)
}

/// The JSON answer of an error.
pub fn error_response(error: &ApiError) -> Response<Body> {
    whole(admin_http::json(error.status, &error.body()))
}

/// A JSON answer.
fn json_response<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let body = serde_json::to_value(value).expect("API bodies serialize");
    whole(admin_http::json(status, &body))
}

/// A text/event-stream answer fed by `events`.
fn event_stream(events: tokio::sync::mpsc::Receiver<Bytes>) -> Response<Body> {
    let stream = futures::stream::unfold(events, |mut events| async move {
        events.recv().await.map(|bytes| (Ok::<_, Infallible>(Frame::data(bytes)), events))
    });
    let mut response = Response::new(BodyExt::boxed_unsync(StreamBody::new(stream.boxed())));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx passes the events on as they come.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// Keeps `keys` in step with the keys Secret until `stop` (watched by name: the API may read
/// that Secret and no other in Spawner's namespace).
async fn watch_keys(client: Client, service: Service, stop: CancellationToken) {
    let api: Api<Secret> = Api::namespaced(client, SYSTEM_NAMESPACE);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", keys::KEYS_SECRET));
    let (store, writer) = reflector::store();
    let events =
        watcher(api, config).backoff(Backoff::new(Duration::from_millis(500), Duration::from_secs(10))).reflect(writer);
    let mut events = std::pin::pin!(events.take_until(stop.cancelled_owned()));
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
            Ok(_) => {
                let secret = store.state().into_iter().next();
                service.keys.load(secret.as_deref());
                service.metrics.keys.set(service.keys.len() as i64);
                service.keys_loaded.store(true, std::sync::atomic::Ordering::Release);
            }
            Err(err) => tracing::warn!(error = %ErrorChain(&err), "API key watch failed; retrying"),
        }
    }
}

/// Why the API could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot reach the Kubernetes API")]
    Client(#[source] kube::Error),
}

/// Where the API listens.
#[derive(Clone, Debug)]
pub struct Options {
    /// The API, /healthz, /readyz and /metrics.
    pub addr: SocketAddr,
}

/// Runs the API until `stop`: the backend and key watches and the HTTP server.
/// Boxed: see the crate docs, "Boxed entry points".
pub fn run(options: Options, stop: CancellationToken) -> BoxFuture<'static, Result<(), Error>> {
    Box::pin(running(options, stop))
}

async fn running(options: Options, stop: CancellationToken) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind(options.addr)
        .await
        .map_err(|source| Error::Bind { addr: options.addr, source })?;
    let client = Client::try_default().await.map_err(Error::Client)?;
    let (cache, feed) = backend_cache::cache();
    let service = Service::new(client.clone(), cache, Keyring::default(), stop.clone());
    let mut registry = Registry::default();
    service.register_metrics(&mut registry);
    let registry = Arc::new(registry);
    tracing::info!(addr = %options.addr, "serving the API");
    let backends = backend_cache::watch(client.clone(), None, feed, stop.clone());
    let keys = watch_keys(client, service.clone(), stop.clone());
    let serving = serve(listener, service, registry, stop);
    tokio::join!(backends, keys, serving);
    Ok(())
}

/// Serves `service` on `listener` until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: Service,
    registry: Arc<Registry>,
    stop: CancellationToken,
) {
    admin_http::serve_async(listener, stop, move |request| service.clone().respond(request, registry.clone())).await;
}
