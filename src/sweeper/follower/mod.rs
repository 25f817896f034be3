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

mod stream;

use futures::future::BoxFuture;
use http::{StatusCode, Uri};
use http_body_util::BodyExt;
use tokio::sync::watch;
use tokio::time::{Instant, sleep, sleep_until};
use tracing::Instrument;

use super::guards::GaugeGuard;
use super::metrics::{Metrics, StreamErrorKind, SweepResult};
use super::rule::{self, Decision};
use super::{ErrorChain, sse};
use crate::backoff::Backoff;
use crate::sidecar::event::{EVENTS_PATH, HEARTBEAT, IdleState};
use crate::text::truncate;
use stream::{EventStream, open};

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

/// What one connected stream has told so far.
struct Reading {
    parser: sse::Parser,
    /// The latest valid state and when it arrived.
    latest: Option<(IdleState, Instant)>,
    had_events: bool,
    last_event: Instant,
    /// Set when a deadline passed while the latest state was too old to act on.
    wait_for_fresh_state: bool,
}

impl Reading {
    fn new(max_event_bytes: usize) -> Self {
        Reading {
            parser: sse::Parser::new(max_event_bytes),
            latest: None,
            had_events: false,
            last_event: Instant::now(),
            wait_for_fresh_state: false,
        }
    }
}

/// The data of one frame of the body: `None` for trailers; the end of the body and a broken
/// one are errors (the stream is meant to last).
fn frame_data(
    frame: Option<Result<hyper::body::Frame<bytes::Bytes>, hyper::Error>>,
    url: &Uri,
) -> Result<Option<bytes::Bytes>, Error> {
    match frame {
        None => Err(Error::Ended { url: url.to_string() }),
        Some(Err(source)) => Err(Error::Http { url: url.to_string(), source }),
        Some(Ok(frame)) => Ok(frame.into_data().ok()),
    }
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
            let delay = self.reconnect_backoff.next_delay();
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
        let mut reading = Reading::new(self.config.max_event_bytes);
        loop {
            let deadline = self.deadline(&reading);
            let watchdog = reading.last_event + self.config.heartbeat_timeout;
            tokio::select! {
                // An event that arrives together with the deadline wins: it may be a connection.
                biased;
                frame = stream.body.frame() => {
                    let received = frame_data(frame, &self.target.url).and_then(|bytes| match bytes {
                        Some(bytes) => self.on_bytes(&mut reading, &bytes),
                        None => Ok(()), // trailers
                    });
                    if let Err(error) = received {
                        return StreamEnd::Broken { error, had_events: reading.had_events };
                    }
                }
                () = sleep_until(watchdog) => {
                    let silent_for = Instant::now() - reading.last_event;
                    let error = Error::HeartbeatTimeout { url: self.url(), silent_for };
                    return StreamEnd::Broken { error, had_events: reading.had_events };
                }
                () = sleep_until(deadline.unwrap_or(watchdog)), if deadline.is_some() => {
                    if let Some(outcome) = self.on_deadline(&mut reading, deadline).await {
                        return StreamEnd::Done(outcome);
                    }
                }
            }
        }
    }

    /// When the backend is to be swept by what the stream said last (published in the status).
    fn deadline(&self, reading: &Reading) -> Option<Instant> {
        let deadline = match reading.latest {
            Some((state, received_at)) if !reading.wait_for_fresh_state => {
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
        deadline
    }

    /// Takes in a chunk of the stream: each complete event updates what is known.
    fn on_bytes(&mut self, reading: &mut Reading, bytes: &[u8]) -> Result<(), Error> {
        let received_at = Instant::now();
        let events = reading.parser.push(bytes).map_err(|source| Error::TooLong { url: self.url(), source })?;
        for data in events {
            match serde_json::from_str::<IdleState>(&data) {
                Ok(state) => {
                    tracing::trace!(target_name = %self.target.name, ?state, "event");
                    reading.latest = Some((state, received_at));
                    reading.last_event = received_at;
                    reading.had_events = true;
                    reading.wait_for_fresh_state = false;
                    self.status.send_modify(|s| {
                        s.state = Some(state);
                        s.events += 1;
                    });
                }
                Err(err) => self.on_malformed(reading, &data, &err),
            }
        }
        Ok(())
    }

    /// Whatever a malformed event said (maybe "a connection opened") is lost, so the old state
    /// is no basis for a sweep any more: wait for the next valid event, at most a heartbeat
    /// away. It does not feed the watchdog either.
    fn on_malformed(&mut self, reading: &mut Reading, data: &str, err: &serde_json::Error) {
        reading.latest = None;
        self.metrics.stream_error(StreamErrorKind::MalformedEvent);
        self.status.send_modify(|s| {
            s.state = None;
            s.malformed += 1;
        });
        tracing::warn!(
            target_name = %self.target.name,
            error = %err,
            data = %truncate(data, 256),
            "skipping malformed event"
        );
    }

    /// The deadline passed: sweep, unless the state it came from is too old to act on.
    async fn on_deadline(&mut self, reading: &mut Reading, deadline: Option<Instant>) -> Option<SweepOutcome> {
        let ((state, received_at), deadline) = (reading.latest?, deadline?);
        let now = Instant::now();
        if now.saturating_duration_since(received_at) > self.config.max_state_age {
            tracing::debug!(target_name = %self.target.name, "deadline passed during a silent gap; waiting for a fresh event");
            reading.wait_for_fresh_state = true;
            return None;
        }
        let sweep = Sweep {
            target: self.target.name.clone(),
            idle: rule::idle_at(&state, received_at, now),
            grace: self.target.grace,
            deadline,
            started: now,
        };
        self.sweep(sweep).await
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
        let delay = self.sweep_backoff.next_delay();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_urls_bracket_ipv6_hosts() {
        assert_eq!(Target::events_url("10.0.0.7", 9081).unwrap(), "http://10.0.0.7:9081/events");
        assert_eq!(Target::events_url("fd00::7", 9081).unwrap(), "http://[fd00::7]:9081/events");
    }
}
