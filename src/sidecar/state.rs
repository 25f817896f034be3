//! Connection accounting and readiness: the state the event stream publishes.
//!
//! Every proxied HTTP request and every upgraded stream holds a [`ConnGuard`]; dropping it is the
//! only way to decrement, so the count can neither go negative nor leak when a client aborts or
//! the app dies (the futures and bodies holding guards are dropped then). Changes are published
//! on a `watch` channel: it keeps only the newest value, so a slow reader can never make the
//! proxy wait or buffer.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use super::event::IdleState;

/// What the sidecar knows, in monotonic time. [`Snapshot::to_event`] turns it into the relative
/// values of the event stream at the moment of sending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub ready: bool,
    pub connections: u64,
    /// When the backend last became idle: the end of the last connection, or readiness if no
    /// connection ever came. `None` until the app has been ready once.
    pub idle_since: Option<Instant>,
}

impl Snapshot {
    /// The event as of `now`.
    pub fn to_event(&self, now: Instant) -> IdleState {
        let idle_ms = match (self.ready, self.connections, self.idle_since) {
            (true, 0, Some(since)) => Some(now.saturating_duration_since(since).as_millis() as u64),
            _ => None,
        };
        IdleState { ready: self.ready, connections: self.connections, idle_ms }
    }
}

/// Shared handle on the sidecar's state; cheap to clone.
#[derive(Clone, Debug)]
pub struct Tracker {
    tx: Arc<watch::Sender<Snapshot>>,
}

impl Default for Tracker {
    fn default() -> Self {
        Self::new()
    }
}

impl Tracker {
    pub fn new() -> Self {
        let (tx, _) = watch::channel(Snapshot { ready: false, connections: 0, idle_since: None });
        Self { tx: Arc::new(tx) }
    }

    /// Follow the state (newest value wins).
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.tx.subscribe()
    }

    pub fn snapshot(&self) -> Snapshot {
        *self.tx.borrow()
    }

    pub fn is_ready(&self) -> bool {
        self.tx.borrow().ready
    }

    /// Record whether the app accepts connections; publishes only real changes.
    pub fn set_ready(&self, ready: bool) {
        self.tx.send_if_modified(|s| {
            if s.ready == ready {
                return false;
            }
            s.ready = ready;
            if ready && s.idle_since.is_none() {
                s.idle_since = Some(Instant::now());
            }
            true
        });
    }

    /// Counts idle time from now (a warm pod just claimed), unless the app is not ready yet
    /// (then it counts from readiness, as always) or connections are open.
    pub fn restart_idle(&self) {
        self.tx.send_modify(|s| {
            if s.idle_since.is_some() && s.connections == 0 {
                s.idle_since = Some(Instant::now());
            }
        });
    }

    /// Count one live connection until the returned guard is dropped.
    pub fn connect(&self) -> ConnGuard {
        self.tx.send_modify(|s| s.connections += 1);
        ConnGuard { tx: self.tx.clone() }
    }
}

/// One live connection. Counted from creation to drop.
#[derive(Debug)]
#[must_use = "the connection is counted only while the guard lives"]
pub struct ConnGuard {
    tx: Arc<watch::Sender<Snapshot>>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.tx.send_modify(|s| {
            // Guards are only made by `Tracker::connect`, so this cannot underflow; saturate
            // anyway so a bug shows as a wrong count, not a panic in a destructor.
            s.connections = s.connections.saturating_sub(1);
            if s.connections == 0 {
                s.idle_since = Some(Instant::now());
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn idle_is_null_until_the_app_is_ready() {
        let tracker = Tracker::new();
        assert_eq!(tracker.snapshot().to_event(Instant::now()).idle_ms, None);
        tracker.set_ready(true);
        let later = Instant::now() + Duration::from_millis(1500);
        assert!(tracker.snapshot().to_event(later).idle_ms.unwrap() >= 1500);
    }

    #[test]
    fn guards_count_up_and_down_and_reset_idle_time() {
        let tracker = Tracker::new();
        tracker.set_ready(true);
        let a = tracker.connect();
        let b = tracker.connect();
        let busy = tracker.snapshot().to_event(Instant::now());
        assert_eq!((busy.connections, busy.idle_ms), (2, None));
        drop(a);
        assert_eq!(tracker.snapshot().connections, 1);
        let before_end = Instant::now();
        drop(b);
        let snap = tracker.snapshot();
        assert_eq!(snap.connections, 0);
        assert!(snap.idle_since.unwrap() >= before_end);
    }

    #[test]
    fn a_claim_restarts_the_idle_time() {
        let tracker = Tracker::new();
        tracker.set_ready(true);
        let ready_at = tracker.snapshot().idle_since.unwrap();
        std::thread::sleep(Duration::from_millis(20));
        tracker.restart_idle();
        assert!(tracker.snapshot().idle_since.unwrap() >= ready_at + Duration::from_millis(20));
        let unready = Tracker::new();
        unready.restart_idle();
        assert_eq!(unready.snapshot().idle_since, None, "counts from readiness, as always");
    }

    #[test]
    fn a_not_ready_app_has_no_idle_time() {
        let tracker = Tracker::new();
        tracker.set_ready(true);
        tracker.set_ready(false);
        assert_eq!(tracker.snapshot().to_event(Instant::now()).idle_ms, None);
    }
}
