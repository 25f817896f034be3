//! The admin port (never routed by the Service): the event stream for the sweeper, health,
//! readiness and metrics, the claim, and the session for the application.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::sync::watch;

use super::claim::{CLAIM_PATH, Claim, ClaimRequest, Refusal};
use super::event::{EVENTS_PATH, HEARTBEAT};
use super::metrics::Metrics;
use super::session::{SESSION_PATH, Slot, wait_from_query};
use super::state::{Snapshot, Tracker};

/// Least time between two change events on one stream: a burst of requests becomes one event
/// carrying the newest state instead of thousands.
const MIN_EVENT_SPACING: Duration = Duration::from_millis(50);

pub type AdminBody = BoxBody<Bytes, Infallible>;

#[derive(Debug)]
pub struct Admin {
    pub tracker: Tracker,
    pub metrics: Arc<Metrics>,
    /// Set on SIGTERM: /readyz fails so no new traffic is routed here.
    pub draining: AtomicBool,
    /// A warm pod's claim state (`POST /claim`).
    pub claim: Option<Arc<Claim>>,
    /// The session's settings (`GET /session`).
    pub session: Slot,
}

/// Largest claim request body: a token and a session of 32 values of 1 KiB, with room.
const MAX_CLAIM_BYTES: usize = 64 * 1024;

fn text(status: StatusCode, body: &'static str) -> Response<AdminBody> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

impl Admin {
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Response<AdminBody>, Infallible> {
        if req.uri().path() == CLAIM_PATH {
            return Ok(self.claim(req).await);
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"));
        }
        Ok(match req.uri().path() {
            SESSION_PATH => self.session(req.uri().query(), peer).await,
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => {
                if self.draining.load(Ordering::Relaxed) {
                    text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
                } else if self.tracker.is_ready() {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "the app does not accept connections yet\n")
                }
            }
            "/metrics" => {
                let body = self.metrics.render(&self.tracker.snapshot());
                let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                );
                r
            }
            EVENTS_PATH => events(self.tracker.subscribe()),
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        })
    }
}

impl Admin {
    /// `POST /claim`: `Authorization: Bearer <claim key>`, a JSON [`ClaimRequest`].
    async fn claim(&self, req: Request<Incoming>) -> Response<AdminBody> {
        let Some(claim) = &self.claim else { return text(StatusCode::NOT_FOUND, "not a warm pod\n") };
        if req.method() != Method::POST {
            return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        }
        let key = req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes().to_vec()).unwrap_or_default();
        let key = key.strip_prefix(b"Bearer ").unwrap_or_default().to_vec();
        let body = match Limited::new(req.into_body(), MAX_CLAIM_BYTES).collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => return text(StatusCode::BAD_REQUEST, "unreadable or too large claim\n"),
        };
        let Ok(request) = serde_json::from_slice::<ClaimRequest>(&body) else {
            return text(StatusCode::BAD_REQUEST, "the claim is not {\"backend\": ..., \"token\": ...}\n");
        };
        match claim.claim(&key, &request) {
            Ok(()) => {
                tracing::info!(backend = %request.backend, "claimed");
                if let Some(session) = request.session {
                    self.session.set(session);
                }
                // The session starts now: idle time before the claim is the pool's, not the
                // backend's.
                self.tracker.restart_idle();
                text(StatusCode::OK, "claimed\n")
            }
            Err(Refusal::BadKey) => text(StatusCode::UNAUTHORIZED, "wrong or missing claim key\n"),
            Err(Refusal::OtherBackend) => text(StatusCode::CONFLICT, "already claimed by another backend\n"),
            Err(Refusal::BadToken) => text(StatusCode::BAD_REQUEST, "unusable token\n"),
        }
    }
}

impl Admin {
    /// `GET /session`: the application's, so only from the pod's loopback (the sweeper and the
    /// controller reach this port too).
    async fn session(&self, query: Option<&str>, peer: SocketAddr) -> Response<AdminBody> {
        if !peer.ip().is_loopback() {
            return text(StatusCode::FORBIDDEN, "the session is served to the pod's own containers only\n");
        }
        let Some(wait) = wait_from_query(query) else {
            return text(StatusCode::BAD_REQUEST, "wait must be a number of seconds\n");
        };
        match self.session.wait(wait).await {
            Some(session) => {
                let body = serde_json::to_vec(&*session).expect("a session serializes");
                let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
                r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                r
            }
            None => text(StatusCode::NO_CONTENT, ""),
        }
    }
}

fn event_frame(snapshot: &Snapshot) -> Frame<Bytes> {
    let json = serde_json::to_string(&snapshot.to_event(Instant::now())).expect("IdleState serializes");
    Frame::data(Bytes::from(format!("data: {json}\n\n")))
}

/// The SSE stream: the state now, then on every change (newest wins) or every [`HEARTBEAT`].
/// The body is polled only as fast as the client reads, and the watch channel keeps one value,
/// so a stalled client costs one task and never holds up the proxy.
fn events(rx: watch::Receiver<Snapshot>) -> Response<AdminBody> {
    let stream = stream::unfold((rx, true), |(mut rx, first)| async move {
        if !first {
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    tokio::time::sleep(MIN_EVENT_SPACING).await;
                }
                () = tokio::time::sleep(HEARTBEAT) => {}
            }
        }
        let frame = event_frame(&rx.borrow_and_update());
        Some((Ok::<_, Infallible>(frame), (rx, false)))
    });
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sidecar::session::Session;

    #[tokio::test]
    async fn the_session_is_served_to_the_pods_own_loopback_only() {
        let session = Session { namespace: "ns".into(), backend: "b".into(), ..Default::default() };
        let admin = Admin {
            tracker: Tracker::new(),
            metrics: Arc::new(Metrics::new()),
            draining: AtomicBool::new(false),
            claim: None,
            session: Slot::new(Some(session)),
        };
        let from_sweeper = admin.session(None, "10.244.0.9:40000".parse().unwrap()).await;
        assert_eq!(from_sweeper.status(), StatusCode::FORBIDDEN);
        let from_app = admin.session(None, "127.0.0.1:40000".parse().unwrap()).await;
        assert_eq!(from_app.status(), StatusCode::OK);
    }
}
