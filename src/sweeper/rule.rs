//! The sweep rule, as a pure function of the latest state a sidecar reported.
//!
//! Idle time arrives as a duration relative to the moment the sidecar sent it, so the deadline
//! is anchored on the sweeper's own monotonic clock at the moment the event was received:
//! `received_at + (grace - idle)`. Network delay only makes the deadline later, never earlier.

use std::time::Duration;

use tokio::time::Instant;

use crate::sidecar::event::IdleState;

/// What to do about a backend, given what its sidecar said last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Not idle (or not known to be): no deadline.
    Keep,
    /// Idle: sweep at this instant unless a newer event says otherwise.
    SweepAt(Instant),
}

/// Decides from the latest `state`, received at `received_at`, with `grace` allowed idle time.
///
/// A backend that is not ready is never swept here: one that never became ready is the
/// controller's startup-timeout business, and one that stopped being ready may be restarting.
/// A ready, unconnected state without `idleMs` breaks the contract; keeping is the safe answer.
pub fn decide(state: &IdleState, received_at: Instant, grace: Duration) -> Decision {
    if !state.ready || state.connections > 0 {
        return Decision::Keep;
    }
    match state.idle_ms {
        Some(idle_ms) => {
            let remaining = grace.saturating_sub(Duration::from_millis(idle_ms));
            Decision::SweepAt(received_at + remaining)
        }
        None => Decision::Keep,
    }
}

/// How long the backend has been idle at `now`, given the state that led to a deadline.
pub fn idle_at(state: &IdleState, received_at: Instant, now: Instant) -> Duration {
    Duration::from_millis(state.idle_ms.unwrap_or(0)) + now.saturating_duration_since(received_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(ready: bool, connections: u64, idle_ms: Option<u64>) -> IdleState {
        IdleState { ready, connections, idle_ms }
    }

    #[tokio::test(start_paused = true)]
    async fn decisions_follow_the_rule() {
        let grace = Duration::from_secs(10);
        let cases: &[(&str, IdleState, Option<Duration>)] = &[
            ("fresh idle backend sweeps a full grace later", state(true, 0, Some(0)), Some(grace)),
            (
                "partly idle backend sweeps after the remainder",
                state(true, 0, Some(4_000)),
                Some(Duration::from_secs(6)),
            ),
            ("backend idle exactly the grace period sweeps now", state(true, 0, Some(10_000)), Some(Duration::ZERO)),
            ("backend idle past the grace period sweeps now", state(true, 0, Some(3_600_000)), Some(Duration::ZERO)),
            ("one live connection keeps the backend", state(true, 1, None), None),
            ("live connections keep it even if idleMs is (wrongly) set", state(true, 3, Some(60_000)), None),
            ("a backend that is not ready is never swept", state(false, 0, None), None),
            ("not ready wins over a stale idleMs", state(false, 0, Some(60_000)), None),
            ("ready and unconnected without idleMs breaks the contract: keep", state(true, 0, None), None),
        ];
        let received_at = Instant::now();
        for (name, state, after) in cases {
            let expected = match after {
                Some(after) => Decision::SweepAt(received_at + *after),
                None => Decision::Keep,
            };
            assert_eq!(decide(state, received_at, grace), expected, "{name}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_heartbeat_keeps_the_same_deadline() {
        let grace = Duration::from_secs(10);
        let first_at = Instant::now();
        let first = decide(&state(true, 0, Some(1_000)), first_at, grace);
        tokio::time::advance(Duration::from_secs(2)).await;
        let second = decide(&state(true, 0, Some(3_000)), Instant::now(), grace);
        assert_eq!(first, second);
        assert_eq!(first, Decision::SweepAt(first_at + Duration::from_secs(9)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_after_an_idle_report_cancels_the_deadline() {
        let grace = Duration::from_secs(10);
        let idle = decide(&state(true, 0, Some(9_000)), Instant::now(), grace);
        assert!(matches!(idle, Decision::SweepAt(_)));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(decide(&state(true, 1, None), Instant::now(), grace), Decision::Keep);
        // When the connection ends, idle time starts again from zero.
        tokio::time::advance(Duration::from_secs(5)).await;
        let now = Instant::now();
        assert_eq!(decide(&state(true, 0, Some(0)), now, grace), Decision::SweepAt(now + grace));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_time_grows_from_the_reported_value() {
        let received_at = Instant::now();
        tokio::time::advance(Duration::from_millis(1_500)).await;
        let idle = idle_at(&state(true, 0, Some(2_000)), received_at, Instant::now());
        assert_eq!(idle, Duration::from_millis(3_500));
    }
}
