//! Reading a backend's status the way callers wait on it.

use crate::crd::{Phase, SessionLivedBackend};

/// Where a backend is, as far as waiting is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Starting,
    Ready,
    /// Failed or being deleted: it will not become Ready.
    Over,
}

pub fn state(backend: &SessionLivedBackend) -> State {
    if backend.metadata.deletion_timestamp.is_some() {
        return State::Over;
    }
    match backend.status.as_ref().and_then(|s| s.phase) {
        Some(Phase::Failed | Phase::Terminating) => State::Over,
        // A Ready phase without a URL would be useless to the caller; the controller sets both
        // in one status write, so this only guards against a partial status.
        Some(Phase::Ready) if backend.status.as_ref().is_some_and(|s| s.url.is_some()) => State::Ready,
        _ => State::Starting,
    }
}

/// The phase as shown to people ("Terminating" as soon as deletion started).
pub fn phase_of(backend: &SessionLivedBackend) -> &'static str {
    if backend.metadata.deletion_timestamp.is_some() {
        return Phase::Terminating.as_str();
    }
    backend.status.as_ref().and_then(|s| s.phase).unwrap_or(Phase::Pending).as_str()
}

/// Why the backend is not Ready, as `Reason: message` (the Ready condition's, which the
/// controller mirrors into `status.reason` and `status.message`); `None` when it is Ready. A
/// backend the controller never reported on says so, since that is the likely cause.
pub fn why_not_ready(backend: &SessionLivedBackend) -> Option<String> {
    let Some(status) = backend.status.as_ref() else {
        return Some("no status: the controller has not seen it (is spawner-controller running?)".into());
    };
    let (reason, message) = match (&status.reason, condition(backend, "Ready")) {
        (Some(reason), _) => (reason.as_str(), status.message.as_deref().unwrap_or_default()),
        (None, Some(ready)) if ready.status != "True" => (ready.reason.as_str(), ready.message.as_str()),
        _ => return None,
    };
    Some(if message.is_empty() { reason.to_owned() } else { format!("{reason}: {message}") })
}

/// The condition of the given type, if set.
pub fn condition<'a>(
    backend: &'a SessionLivedBackend,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    backend.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)
}
