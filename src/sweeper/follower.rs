//! Follows one sidecar's event stream and sweeps its backend when [`rule::decide`] says so.
//!
//! One task per backend. The deadline is a `sleep_until` raced against the next event, so a
//! sweep starts within milliseconds of the deadline instead of at the next poll. Everything that
//! goes wrong with the stream (refused connection, silence past the heartbeat watchdog, a broken
//! body) disarms the timer and reconnects with capped, jittered exponential backoff: a lost stream
//! is never evidence of idleness. After a reconnect the sidecar's relative `idleMs` re-establishes
//! the same deadline, so neither a reconnect nor a restarted sweeper loses idle time.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rand::Rng;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::text::truncate;
use tokio::time::{Instant, sleep, sleep_until};
use tracing::Instrument;

use super::metrics::{Metrics, StreamErrorKind, SweepResult};
use super::rule::{self, Decision};
use super::{ErrorChain, sse};
use crate::sidecar::event::{EVENTS_PATH, HEARTBEAT, IdleState};

/// Why a stream was given up. Each is logged, counted and followed by a reconnect.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid event stream URL {url}: {reason}")]
    Url { url: String, reason: &'static str },
    #[error("failed to connect to {url}")]
    Connect {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no response from {url} within {timeout:?}")]
    ConnectTimeout { url: String, timeout: Duration },
    #[error("HTTP exchange with {url} failed")]
    Http {
        url: String,
        #[source]
        source: hyper::Error,
    },
    #[error("{url} answered {status} (content-type {content_type:?}), not an event stream")]
    Status { url: String, status: StatusCode, content_type: Option<String> },
    #[error("no valid event from {url} for {silent_for:?}: treating the stream as broken")]
    HeartbeatTimeout { url: String, silent_for: Duration },
    #[error("event stream from {url} ended")]
    Ended { url: String },
    #[error("event stream from {url} is unusable")]
    TooLong {
        url: String,
        #[source]
        source: sse::TooLong,
    },
}

impl Error {
    fn kind(&self) -> StreamErrorKind {
        match self {
            Error::Url { .. } | Error::Connect { .. } | Error::ConnectTimeout { .. } | Error::Http { .. } => {
                StreamErrorKind::Connect
            }
            Error::Status { .. } => StreamErrorKind::Status,
            Error::HeartbeatTimeout { .. } => StreamErrorKind::HeartbeatTimeout,
            Error::Ended { .. } | Error::TooLong { .. } => StreamErrorKind::Body,
        }
    }
}

/// A failed sweep; the follower retries it with backoff while the backend stays idle.
pub type SweepError = Box<dyn std::error::Error + Send + Sync>;

/// What a successful sweep found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SweepOutcome {
    /// This sweep removed the backend.
    Swept,
    /// The backend was already gone (or replaced): nothing left to do.
    AlreadyGone,
}

/// A sweep the rule asked for.
#[derive(Clone, Debug)]
pub struct Sweep {
    /// The followed backend, as [`Target::name`].
    pub target: String,
    /// How long the backend has been idle now.
    pub idle: Duration,
    pub grace: Duration,
    /// When the rule said to sweep (on this process's monotonic clock).
    pub deadline: Instant,
    /// When the sweep started; `started - deadline` is the lateness.
    pub started: Instant,
}

/// The action taken when a backend's deadline passes: deleting it through the API in the
/// sweeper, printing or recording it in test mode and in tests. This is the follower's seam.
pub trait Sweeper: Send + Sync {
    fn sweep(&self, sweep: Sweep) -> BoxFuture<'_, Result<SweepOutcome, SweepError>>;
}

/// One backend to follow.
#[derive(Clone, Debug)]
pub struct Target {
    /// For logs and sweeps: `namespace/backend` in a cluster, the URL in test mode.
    pub name: String,
    /// The sidecar's event stream, e.g. `http://10.1.2.3:9081/events`.
    pub url: Uri,
    /// Idle time allowed before the sweep.
    pub grace: Duration,
}

impl Target {
    /// The event stream URL of the sidecar admin port at `host:port`.
    pub fn events_url(host: &str, port: u16) -> Result<Uri, Error> {
        let url = if host.contains(':') {
            format!("http://[{host}]:{port}{EVENTS_PATH}")
        } else {
            format!("http://{host}:{port}{EVENTS_PATH}")
        };
        url.parse().map_err(|_| Error::Url { url, reason: "not a valid URI" })
    }
}

/// Timing of a follower. The defaults follow the sidecar's contract.
#[derive(Clone, Debug)]
pub struct Config {
    /// Silence (no valid event) after which the stream counts as broken.
    pub heartbeat_timeout: Duration,
    /// The oldest state a sweep may be based on. A heartbeat arrives every [`HEARTBEAT`], so a
    /// deadline that falls in a silent gap waits for the next event (at most one heartbeat
    /// late) instead of trusting a state that a connection may already have changed.
    pub max_state_age: Duration,
    /// Limit for TCP connect plus response headers.
    pub connect_timeout: Duration,
    /// Reconnect and sweep-retry backoff bounds.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Largest line or event accepted from the stream.
    pub max_event_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            heartbeat_timeout: HEARTBEAT * 3,
            max_state_age: HEARTBEAT + HEARTBEAT / 2,
            connect_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(200),
            // Short: a pod's sidecar usually starts a moment after the pod gets its IP, and a
            // stream connected late makes a short grace period's sweep late.
            backoff_max: HEARTBEAT,
            max_event_bytes: 64 * 1024,
        }
    }
}

/// What a follower knows, published on a `watch` channel for tests, logs and debugging.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// The stream is connected.
    pub connected: bool,
    /// The latest valid event, while connected and not invalidated by a malformed one.
    pub state: Option<IdleState>,
    /// The armed sweep deadline, if any.
    pub deadline: Option<Instant>,
    /// Successful connections so far.
    pub connects: u64,
    /// Valid events received so far.
    pub events: u64,
    /// Malformed events skipped so far.
    pub malformed: u64,
    /// Streams given up because they went silent.
    pub heartbeat_timeouts: u64,
    /// Sweep attempts that failed (and are retried).
    pub failed_sweeps: u64,
}

/// Follows `target` until its backend is swept (or found gone); runs forever otherwise and is
/// stopped by aborting its task.
pub async fn follow(
    target: Target,
    sweeper: Arc<dyn Sweeper>,
    config: Config,
    metrics: Metrics,
    status: watch::Sender<Status>,
) -> SweepOutcome {
    let mut follower = Follower {
        reconnect_backoff: Backoff::new(config.backoff_min, config.backoff_max),
        sweep_backoff: Backoff::new(config.backoff_min, config.backoff_max),
        sweep_not_before: None,
        target,
        sweeper,
        config,
        metrics,
        status,
    };
    follower.run().await
}

struct Follower {
    target: Target,
    sweeper: Arc<dyn Sweeper>,
    config: Config,
    metrics: Metrics,
    status: watch::Sender<Status>,
    reconnect_backoff: Backoff,
    sweep_backoff: Backoff,
    /// After a failed sweep, the next attempt waits until then.
    sweep_not_before: Option<Instant>,
}

/// How a connected stream ended.
enum StreamEnd {
    Done(SweepOutcome),
    Broken { error: Error, had_events: bool },
}

impl Follower {
    async fn run(&mut self) -> SweepOutcome {
        // Failures in a row; a sidecar that stays unreachable is logged now and then, not every
        // two seconds forever (the metrics count every failure).
        let mut failures: u64 = 0;
        loop {
            let error = match self.connect().await {
                Ok(stream) => {
                    tracing::debug!(target_name = %self.target.name, "event stream connected");
                    self.status.send_modify(|s| {
                        s.connected = true;
                        s.connects += 1;
                    });
                    let _connected = GaugeGuard::inc(&self.metrics.connected_streams);
                    let end = self.read(stream).await;
                    self.status.send_modify(|s| {
                        s.connected = false;
                        s.state = None;
                        s.deadline = None;
                    });
                    match end {
                        StreamEnd::Done(outcome) => return outcome,
                        StreamEnd::Broken { error, had_events } => {
                            if had_events {
                                // The stream worked: the next failure starts from a short delay.
                                self.reconnect_backoff.reset();
                                failures = 0;
                            }
                            error
                        }
                    }
                }
                Err(error) => error,
            };
            let delay = self.reconnect_backoff.next();
            self.metrics.stream_error(error.kind());
            if let Error::HeartbeatTimeout { .. } = error {
                self.status.send_modify(|s| s.heartbeat_timeouts += 1);
            }
            failures += 1;
            if failures <= 3 || failures.is_multiple_of(30) {
                tracing::warn!(
                    target_name = %self.target.name,
                    error = %ErrorChain(&error),
                    failures,
                    retry_in_ms = delay.as_millis() as u64,
                    "event stream unavailable; no sweep until it is back"
                );
            } else {
                tracing::debug!(
                    target_name = %self.target.name,
                    error = %ErrorChain(&error),
                    failures,
                    "event stream still unavailable"
                );
            }
            sleep(delay).await;
        }
    }

    async fn connect(&self) -> Result<EventStream, Error> {
        let url = &self.target.url;
        let timeout = self.config.connect_timeout;
        match tokio::time::timeout(timeout, open(url)).await {
            Ok(result) => result,
            Err(_) => Err(Error::ConnectTimeout { url: url.to_string(), timeout }),
        }
    }

    async fn read(&mut self, mut stream: EventStream) -> StreamEnd {
        let mut parser = sse::Parser::new(self.config.max_event_bytes);
        let mut latest: Option<(IdleState, Instant)> = None;
        let mut had_events = false;
        let mut last_event = Instant::now();
        // Set when a deadline passed while the latest state was too old to act on.
        let mut wait_for_fresh_state = false;
        loop {
            let deadline = match latest {
                Some((state, received_at)) if !wait_for_fresh_state => {
                    match rule::decide(&state, received_at, self.target.grace) {
                        Decision::SweepAt(at) => Some(self.sweep_not_before.map_or(at, |nb| at.max(nb))),
                        Decision::Keep => None,
                    }
                }
                _ => None,
            };
            self.status.send_if_modified(|s| {
                let changed = s.deadline != deadline;
                s.deadline = deadline;
                changed
            });
            let watchdog = last_event + self.config.heartbeat_timeout;
            tokio::select! {
                // An event that arrives together with the deadline wins: it may be a connection.
                biased;
                frame = stream.body.frame() => {
                    let bytes = match frame {
                        None => return StreamEnd::Broken { error: Error::Ended { url: self.url() }, had_events },
                        Some(Err(source)) => {
                            return StreamEnd::Broken { error: Error::Http { url: self.url(), source }, had_events };
                        }
                        Some(Ok(frame)) => match frame.into_data() {
                            Ok(bytes) => bytes,
                            Err(_) => continue, // trailers
                        },
                    };
                    let received_at = Instant::now();
                    let events = match parser.push(&bytes) {
                        Ok(events) => events,
                        Err(source) => {
                            return StreamEnd::Broken { error: Error::TooLong { url: self.url(), source }, had_events };
                        }
                    };
                    for data in events {
                        match serde_json::from_str::<IdleState>(&data) {
                            Ok(state) => {
                                tracing::trace!(target_name = %self.target.name, ?state, "event");
                                latest = Some((state, received_at));
                                last_event = received_at;
                                had_events = true;
                                wait_for_fresh_state = false;
                                self.status.send_modify(|s| {
                                    s.state = Some(state);
                                    s.events += 1;
                                });
                            }
                            Err(err) => {
                                // Whatever this event said (maybe "a connection opened") is
                                // lost, so the old state is no basis for a sweep any more: wait
                                // for the next valid event, at most a heartbeat away. It does
                                // not feed the watchdog either.
                                latest = None;
                                self.metrics.stream_error(StreamErrorKind::MalformedEvent);
                                self.status.send_modify(|s| {
                                    s.state = None;
                                    s.malformed += 1;
                                });
                                tracing::warn!(
                                    target_name = %self.target.name,
                                    error = %err,
                                    data = %truncate(&data, 256),
                                    "skipping malformed event"
                                );
                            }
                        }
                    }
                }
                () = sleep_until(watchdog) => {
                    let silent_for = Instant::now() - last_event;
                    let error = Error::HeartbeatTimeout { url: self.url(), silent_for };
                    return StreamEnd::Broken { error, had_events };
                }
                () = sleep_until(deadline.unwrap_or(watchdog)), if deadline.is_some() => {
                    let Some((state, received_at)) = latest else { continue };
                    let Some(deadline) = deadline else { continue };
                    let now = Instant::now();
                    if now.saturating_duration_since(received_at) > self.config.max_state_age {
                        tracing::debug!(
                            target_name = %self.target.name,
                            "deadline passed during a silent gap; waiting for a fresh event"
                        );
                        wait_for_fresh_state = true;
                        continue;
                    }
                    let sweep = Sweep {
                        target: self.target.name.clone(),
                        idle: rule::idle_at(&state, received_at, now),
                        grace: self.target.grace,
                        deadline,
                        started: now,
                    };
                    if let Some(outcome) = self.sweep(sweep).await {
                        return StreamEnd::Done(outcome);
                    }
                }
            }
        }
    }

    /// Runs the sweep; `None` means it failed and is retried after a backoff.
    async fn sweep(&mut self, sweep: Sweep) -> Option<SweepOutcome> {
        // The sweep runs as a task of its own: the delete makes the pod go away, and the pod
        // watch then aborts this follower, possibly before the sweep's Event, metrics and log
        // are done. The detached task finishes them regardless.
        let task = tokio::spawn(
            run_sweep(self.sweeper.clone(), self.metrics.clone(), self.target.clone(), sweep)
                .instrument(tracing::Span::current()),
        );
        let err = match task.await {
            Ok(Ok(outcome)) => return Some(outcome),
            Ok(Err(err)) => err,
            Err(join) => SweepError::from(format!("the sweep task failed: {join}")),
        };
        let delay = self.sweep_backoff.next();
        self.sweep_not_before = Some(Instant::now() + delay);
        self.status.send_modify(|s| s.failed_sweeps += 1);
        tracing::warn!(
            target_name = %self.target.name,
            error = %ErrorChain(err.as_ref()),
            retry_in_ms = delay.as_millis() as u64,
            "sweep failed; retrying while the backend stays idle"
        );
        None
    }

    fn url(&self) -> String {
        self.target.url.to_string()
    }
}

async fn run_sweep(
    sweeper: Arc<dyn Sweeper>,
    metrics: Metrics,
    target: Target,
    sweep: Sweep,
) -> Result<SweepOutcome, SweepError> {
    let lateness = sweep.started.saturating_duration_since(sweep.deadline);
    metrics.sweep_lateness.observe(lateness.as_secs_f64());
    let idle = sweep.idle;
    match sweeper.sweep(sweep).await {
        Ok(outcome) => {
            metrics.sweep(match outcome {
                SweepOutcome::Swept => SweepResult::Swept,
                SweepOutcome::AlreadyGone => SweepResult::AlreadyGone,
            });
            tracing::info!(
                target_name = %target.name,
                ?outcome,
                idle_ms = idle.as_millis() as u64,
                grace_s = target.grace.as_secs(),
                lateness_ms = lateness.as_millis() as u64,
                "swept idle backend"
            );
            Ok(outcome)
        }
        Err(err) => {
            metrics.sweep(SweepResult::Error);
            Err(err)
        }
    }
}

/// A connected event stream; the HTTP connection's task ends with it.
struct EventStream {
    body: Incoming,
    _connection: AbortOnDrop,
}

async fn open(url: &Uri) -> Result<EventStream, Error> {
    let url_string = || url.to_string();
    let authority = url.authority().ok_or_else(|| Error::Url { url: url_string(), reason: "no host:port" })?;
    let port = authority.port_u16().unwrap_or(80);
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    let tcp = TcpStream::connect((host, port)).await.map_err(|source| Error::Connect { url: url_string(), source })?;
    // Events are tiny and latency matters more than packet count.
    let _ = tcp.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|source| Error::Http { url: url_string(), source })?;
    let connection = AbortOnDrop(tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, "event stream connection closed with an error");
        }
    }));
    let path = url.path_and_query().map_or(EVENTS_PATH, |p| p.as_str());
    let request = Request::get(path)
        .header(header::HOST, authority.as_str())
        .header(header::ACCEPT, "text/event-stream")
        .body(Empty::<Bytes>::new())
        .map_err(|_| Error::Url { url: url_string(), reason: "cannot build a request for it" })?;
    let response = sender.send_request(request).await.map_err(|source| Error::Http { url: url_string(), source })?;
    let content_type = response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let is_event_stream = content_type.as_deref().is_some_and(|ct| ct.starts_with("text/event-stream"));
    if response.status() != StatusCode::OK || !is_event_stream {
        return Err(Error::Status { url: url_string(), status: response.status(), content_type });
    }
    Ok(EventStream { body: response.into_body(), _connection: connection })
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps a gauge incremented while alive, so an aborted task cannot leak a count.
pub(crate) struct GaugeGuard(prometheus_client::metrics::gauge::Gauge);

impl GaugeGuard {
    pub(crate) fn inc(gauge: &prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Exponential backoff with equal jitter: each delay is between half and all of the current
/// step, so many followers that failed together (a node hiccup) do not retry in lockstep.
#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self { min, max, step: min }
    }

    pub(crate) fn next(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let half = step / 2;
        half + rand::rng().random_range(Duration::ZERO..=half)
    }

    pub(crate) fn reset(&mut self) {
        self.step = self.min;
    }
}

/// As the backoff of a kube watch stream (reset by the stream on every event).
impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(Backoff::next(self))
    }
}

impl kube::runtime::utils::Backoff for Backoff {
    fn reset(&mut self) {
        Backoff::reset(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_jittered_and_capped_then_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..8).map(|_| backoff.next()).collect();
        let steps = [100, 200, 400, 800, 1000, 1000, 1000, 1000].map(Duration::from_millis);
        for (delay, step) in delays.iter().zip(steps) {
            assert!(*delay >= step / 2 && *delay <= step, "{delay:?} not within [{:?}, {step:?}]", step / 2);
        }
        backoff.reset();
        assert!(backoff.next() <= Duration::from_millis(100));
    }

    #[test]
    fn events_urls_bracket_ipv6_hosts() {
        assert_eq!(Target::events_url("10.0.0.7", 9081).unwrap(), "http://10.0.0.7:9081/events");
        assert_eq!(Target::events_url("fd00::7", 9081).unwrap(), "http://[fd00::7]:9081/events");
    }
}
