//! The proxy port's request path: auth, readiness gate, header rules, forwarding over a
//! per-client-connection keep-alive connection to the app, upgrades, and error answers.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self as client, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::auth::Verdict;
use super::body::ProxyBody;
use super::claim::{Access, Claimed};
use super::framing::BothLengths;
use super::headers;
use super::metrics::Metrics;
use super::splice;
use super::state::{ConnGuard, Tracker};
use super::tasks::TaskGroup;

/// Everything the request path shares across connections.
#[derive(Debug)]
pub struct Proxy {
    pub app: SocketAddr,
    pub tracker: Tracker,
    pub access: Access,
    pub metrics: Arc<Metrics>,
    pub upstream_timeout: Duration,
    pub connect_timeout: Duration,
    pub client: client::Builder,
    /// Spliced upgraded streams, so shutdown can close them and wait.
    pub upgraded: TaskGroup,
    /// Fired after in-flight requests drained: upgraded streams close.
    pub close_upgraded: CancellationToken,
    pub close_timeout: Duration,
}

/// Per client connection: who the client is and the app connection reserved for it. Requests on
/// one HTTP/1.1 connection are sequential, so one app connection per client connection gives
/// keep-alive on both sides with no pool to lock or search.
#[derive(Debug)]
pub struct ClientConn {
    client_ip: HeaderValue,
    upstream: Mutex<Option<SendRequest<Incoming>>>,
    /// Requests received so far, to ask `both_lengths` about the current one.
    requests: AtomicU64,
    both_lengths: Arc<BothLengths>,
}

impl ClientConn {
    pub fn new(ip: IpAddr, both_lengths: Arc<BothLengths>) -> Self {
        let ip = HeaderValue::from_str(&ip.to_string()).expect("an IP address is a valid header value");
        Self { client_ip: ip, upstream: Mutex::new(None), requests: AtomicU64::new(0), both_lengths }
    }

    /// Count the request and apply the RFC 9112 rules hyper's parser leaves to the service.
    fn check(&self, req: &Request<Incoming>) -> Result<(), headers::Error> {
        let nth = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        if self.both_lengths.is(nth) {
            return Err(headers::Error::ContentLengthWithTransferEncoding);
        }
        headers::check_host(req.version(), req.headers())
    }

    fn take(&self) -> Option<SendRequest<Incoming>> {
        self.upstream.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    fn put(&self, s: SendRequest<Incoming>) {
        *self.upstream.lock().unwrap_or_else(PoisonError::into_inner) = Some(s);
    }
}

enum Failure {
    /// Could not connect (refused, unreachable, connect timeout).
    Connect(std::io::Error),
    /// Connected, but the exchange failed (reset, closed before answering, bad response).
    Exchange(hyper::Error),
    Timeout,
}

fn local(status: StatusCode, text: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::local(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// 400 for a request the sidecar will not forward, closing the connection: after a message it
/// refuses, the sidecar does not trust the rest of the stream to be framed as the client meant.
fn bad_request(e: headers::Error) -> Response<ProxyBody> {
    tracing::debug!(error = %e, "refused a malformed request");
    let mut resp = local(StatusCode::BAD_REQUEST, format!("400 bad request: {e}\n"));
    resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

impl Proxy {
    pub async fn handle(
        self: Arc<Self>,
        conn: Arc<ClientConn>,
        mut req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        if let Err(e) = conn.check(&req) {
            return Ok(bad_request(e));
        }
        let mut set_cookie = None;
        let claimed;
        let auth = match &self.access {
            Access::Open => None,
            Access::Token(auth) => Some(auth),
            Access::Claimable(claim) => match claim.current() {
                Some(access) => {
                    claimed = access;
                    match &*claimed {
                        Claimed::Token(auth) => Some(&**auth),
                        Claimed::Open => None,
                    }
                }
                None => {
                    self.metrics.unauthorized.inc();
                    return Ok(local(StatusCode::SERVICE_UNAVAILABLE, "503 this backend is not claimed yet\n"));
                }
            },
        };
        if let Some(auth) = auth {
            let (parts, body) = req.into_parts();
            let mut parts = parts;
            match auth.check(&mut parts.uri, &mut parts.headers) {
                Verdict::Allowed { set_cookie: c } => set_cookie = c,
                Verdict::Denied => {
                    self.metrics.unauthorized.inc();
                    let mut resp = local(StatusCode::UNAUTHORIZED, "401 unauthorized: missing or invalid token\n");
                    resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                    return Ok(resp);
                }
            }
            req = Request::from_parts(parts, body);
        }
        if !self.tracker.is_ready() {
            self.metrics.not_ready.inc();
            let mut resp = local(StatusCode::SERVICE_UNAVAILABLE, "503 the app is not ready yet\n");
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return Ok(resp);
        }

        let upgrade = headers::wants_upgrade(req.headers());
        let websocket = upgrade && headers::is_websocket(req.headers());
        let guard = self.tracker.connect();
        self.metrics.forwarded.inc();
        headers::strip_hop_by_hop(req.headers_mut(), upgrade);
        headers::add_forwarded(req.headers_mut(), &conn.client_ip);
        *req.version_mut() = Version::HTTP_11;
        if req.uri().scheme().is_some() {
            // absolute-form (a client talking to us as a forward proxy): the app wants origin-form.
            let pq = req.uri().path_and_query().cloned();
            *req.uri_mut() = pq.map(http::Uri::from).unwrap_or_else(|| http::Uri::from_static("/"));
        }
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

        let (mut resp, sender) = match tokio::time::timeout(self.upstream_timeout, self.send(&conn, req)).await {
            Ok(Ok(ok)) => ok,
            Ok(Err(failure)) => return Ok(self.failure(failure)),
            Err(_) => return Ok(self.failure(Failure::Timeout)),
        };

        if let Some(client_upgrade) = client_upgrade
            && resp.status() == StatusCode::SWITCHING_PROTOCOLS
        {
            self.metrics.upgrades.inc();
            let app_upgrade = hyper::upgrade::on(&mut resp);
            let opts = splice::Options { websocket, close_timeout: self.close_timeout };
            let shutdown = self.close_upgraded.clone();
            self.upgraded.spawn(splice_upgraded(client_upgrade, app_upgrade, opts, shutdown, guard));
            drop(sender);
            let (mut parts, _) = resp.into_parts();
            headers::strip_hop_by_hop(&mut parts.headers, true);
            if let Some(c) = set_cookie {
                parts.headers.append(header::SET_COOKIE, c);
            }
            return Ok(Response::from_parts(parts, ProxyBody::empty()));
        }

        conn.put(sender);
        let (mut parts, inner) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers, false);
        if let Some(c) = set_cookie {
            parts.headers.append(header::SET_COOKIE, c);
        }
        Ok(Response::from_parts(parts, ProxyBody::Upstream { inner, guard: Some(guard) }))
    }

    /// Send over the client connection's app connection, or a new one if there is none or it
    /// closed before taking the request (the app may close idle keep-alive connections).
    async fn send(
        &self,
        conn: &ClientConn,
        req: Request<Incoming>,
    ) -> Result<(Response<Incoming>, SendRequest<Incoming>), Failure> {
        let mut req = req;
        if let Some(mut sender) = conn.take()
            && sender.ready().await.is_ok()
        {
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, sender)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(Failure::Exchange(e.into_error())),
                },
            }
        }
        let mut sender = self.connect().await?;
        match sender.send_request(req).await {
            Ok(resp) => Ok((resp, sender)),
            Err(e) => Err(Failure::Exchange(e)),
        }
    }

    async fn connect(&self) -> Result<SendRequest<Incoming>, Failure> {
        let tcp = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.app)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => {
                if e.kind() == std::io::ErrorKind::ConnectionRefused {
                    // The app is gone: say so now rather than at the next probe.
                    self.tracker.set_ready(false);
                }
                return Err(Failure::Connect(e));
            }
            Err(_) => return Err(Failure::Connect(std::io::ErrorKind::TimedOut.into())),
        };
        let _ = tcp.set_nodelay(true);
        let (sender, connection) = self.client.handshake(TokioIo::new(tcp)).await.map_err(Failure::Exchange)?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "app connection ended with an error");
            }
        });
        Ok(sender)
    }

    fn failure(&self, failure: Failure) -> Response<ProxyBody> {
        match failure {
            Failure::Connect(e) => {
                self.metrics.bad_gateway.inc();
                tracing::warn!(error = %e, app = %self.app, "cannot connect to the app");
                local(StatusCode::BAD_GATEWAY, "502 bad gateway: the app refused the connection\n")
            }
            Failure::Exchange(e) => {
                self.metrics.bad_gateway.inc();
                tracing::warn!(error = %e, "the app failed to answer");
                local(StatusCode::BAD_GATEWAY, "502 bad gateway: the app closed or reset the connection\n")
            }
            Failure::Timeout => {
                self.metrics.gateway_timeout.inc();
                tracing::warn!(timeout = ?self.upstream_timeout, "the app did not answer in time");
                local(StatusCode::GATEWAY_TIMEOUT, "504 gateway timeout: the app did not answer in time\n")
            }
        }
    }
}

async fn splice_upgraded(
    client: hyper::upgrade::OnUpgrade,
    app: hyper::upgrade::OnUpgrade,
    opts: splice::Options,
    shutdown: CancellationToken,
    guard: ConnGuard,
) {
    let _guard = guard;
    match tokio::join!(client, app) {
        (Ok(client), Ok(app)) => {
            if let Err(e) = splice::run(TokioIo::new(client), TokioIo::new(app), opts, shutdown).await {
                tracing::debug!(error = %e, "upgraded stream ended with an error");
            }
        }
        (c, a) => tracing::debug!(client = ?c.err(), app = ?a.err(), "upgrade did not complete"),
    }
}
