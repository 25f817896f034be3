//! The time rules the controller enforces: startup timeout, max lifetime, failed retention.
//!
//! All pure: the reconciler asks whether a deadline has passed, and when the next one is, and
//! requeues for exactly then (no polling). Deadlines count from `metadata.creationTimestamp`
//! (startup, lifetime) or `status.failedAt` (retention), both written by the API server or this
//! controller, so a restarted controller resumes the same clocks.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::controllers::status::reason;
use crate::crd::{Phase, SessionLivedBackend, SessionLivedBackendStatus};

/// A backend that must be deleted now, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expiry {
    pub reason: &'static str,
    pub message: String,
}

/// Whether `backend` has been alive longer than its startup timeout (the caller knows whether it
/// ever got Ready).
pub fn startup_timed_out(backend: &SessionLivedBackend, now: Timestamp) -> bool {
    startup_deadline(backend).is_some_and(|d| d <= now)
}

/// Whether `backend` must be deleted now: past its max lifetime, or Failed for longer than the
/// retention.
pub fn expiry(backend: &SessionLivedBackend, now: Timestamp, failed_retention: Duration) -> Option<Expiry> {
    if let (Some(deadline), Some(max)) = (lifetime_deadline(backend), backend.spec.max_lifetime_seconds)
        && deadline <= now
    {
        return Some(Expiry {
            reason: reason::MAX_LIFETIME_REACHED,
            message: format!("deleting the backend: maxLifetimeSeconds ({max}s) reached"),
        });
    }
    if let Some(deadline) = retention_deadline(backend.status.as_ref(), failed_retention)
        && deadline <= now
    {
        return Some(Expiry {
            reason: reason::FAILED_RETENTION_EXPIRED,
            message: format!(
                "deleting the backend: Failed for longer than the retention ({}s)",
                failed_retention.as_secs()
            ),
        });
    }
    None
}

/// How long until the next deadline that applies to `backend` with `status`, if any.
pub fn next_deadline(
    backend: &SessionLivedBackend,
    status: &SessionLivedBackendStatus,
    now: Timestamp,
    failed_retention: Duration,
) -> Option<Duration> {
    let waiting_for_ready =
        status.ready_at.is_none() && !matches!(status.phase, Some(Phase::Failed | Phase::Terminating));
    [
        waiting_for_ready.then(|| startup_deadline(backend)).flatten(),
        lifetime_deadline(backend),
        retention_deadline(Some(status), failed_retention),
    ]
    .into_iter()
    .flatten()
    .min()
    // A requeue that fires a hair early (timer granularity) sees the deadline as not reached
    // yet; the small floor makes the retry land after it instead of spinning.
    .map(|deadline| until(now, deadline).max(Duration::from_millis(100)))
}

fn until(now: Timestamp, deadline: Timestamp) -> Duration {
    Duration::try_from(deadline.duration_since(now)).unwrap_or(Duration::ZERO)
}

fn created(backend: &SessionLivedBackend) -> Option<Timestamp> {
    backend.metadata.creation_timestamp.as_ref().map(|t| t.0)
}

fn startup_deadline(backend: &SessionLivedBackend) -> Option<Timestamp> {
    created(backend)?.checked_add(SignedDuration::from_secs(backend.spec.effective_startup_timeout_seconds())).ok()
}

fn lifetime_deadline(backend: &SessionLivedBackend) -> Option<Timestamp> {
    created(backend)?.checked_add(SignedDuration::from_secs(backend.spec.max_lifetime_seconds?)).ok()
}

fn retention_deadline(status: Option<&SessionLivedBackendStatus>, retention: Duration) -> Option<Timestamp> {
    let status = status?;
    if status.phase != Some(Phase::Failed) {
        return None;
    }
    status.failed_at.as_ref()?.0.checked_add(SignedDuration::try_from(retention).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::fixtures::{BackendExt, at};

    const RETENTION: Duration = Duration::from_secs(600);

    #[test]
    fn startup_times_out_exactly_at_creation_plus_the_timeout() {
        let backend = SessionLivedBackend::test().created_at(1000).startup_timeout(30);
        assert!(!startup_timed_out(&backend, at(1029)));
        assert!(startup_timed_out(&backend, at(1030)));
    }

    #[test]
    fn a_backend_past_its_max_lifetime_expires() {
        let backend = SessionLivedBackend::test().created_at(1000).max_lifetime(60);
        assert_eq!(expiry(&backend, at(1059), RETENTION), None);
        assert_eq!(expiry(&backend, at(1060), RETENTION).unwrap().reason, "MaxLifetimeReached");
    }

    #[test]
    fn a_backend_without_max_lifetime_never_expires_while_healthy() {
        let backend = SessionLivedBackend::test().created_at(0).phase(Phase::Ready);
        assert_eq!(expiry(&backend, at(10_000_000), RETENTION), None);
    }

    #[test]
    fn a_failed_backend_expires_after_the_retention() {
        let backend = SessionLivedBackend::test().created_at(0).failed_at(100);
        assert_eq!(expiry(&backend, at(699), RETENTION), None);
        assert_eq!(expiry(&backend, at(700), RETENTION).unwrap().reason, "FailedRetentionExpired");
    }

    #[test]
    fn the_next_deadline_is_the_startup_timeout_while_not_ready() {
        let backend = SessionLivedBackend::test().created_at(1000).startup_timeout(30).max_lifetime(3600);
        let status = backend.status.clone().unwrap_or_default();
        assert_eq!(next_deadline(&backend, &status, at(1010), RETENTION), Some(Duration::from_secs(20)));
    }

    #[test]
    fn once_ready_only_the_max_lifetime_remains() {
        let backend =
            SessionLivedBackend::test().created_at(1000).startup_timeout(30).max_lifetime(3600).ready_at(1005);
        let status = backend.status.clone().unwrap();
        assert_eq!(next_deadline(&backend, &status, at(1010), RETENTION), Some(Duration::from_secs(3590)));
        let no_limit = SessionLivedBackend::test().created_at(1000).ready_at(1005);
        assert_eq!(next_deadline(&no_limit, no_limit.status.as_ref().unwrap(), at(1010), RETENTION), None);
    }

    #[test]
    fn a_failed_backend_requeues_for_its_retention() {
        let backend = SessionLivedBackend::test().created_at(0).failed_at(100);
        let status = backend.status.clone().unwrap();
        assert_eq!(next_deadline(&backend, &status, at(200), RETENTION), Some(Duration::from_secs(500)));
    }

    #[test]
    fn a_deadline_already_passed_requeues_after_a_small_floor_not_zero() {
        let backend = SessionLivedBackend::test().created_at(0).startup_timeout(1);
        let status = backend.status.clone().unwrap_or_default();
        assert_eq!(next_deadline(&backend, &status, at(50), RETENTION), Some(Duration::from_millis(100)));
    }
}
