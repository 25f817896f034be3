//! What the router says about one backend, decided from its object alone (pure, tested without
//! a socket).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::StatusCode;
use k8s_openapi::jiff::Timestamp;

use crate::crd::{ConditionType, Phase, SessionLivedBackend};

/// The backend's state as far as routing goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Ready: send its traffic here.
    Route(SocketAddr),
    /// Not there (yet): a request may wait a moment for it to appear in the watch.
    Missing,
    /// Starting: hold the request until it is Ready, at most `remaining` (what is left of its
    /// startup timeout; `None` once that is spent and the controller has yet to say Failed).
    Starting { remaining: Option<Duration> },
    /// Over: answer with this error.
    Refused(Refusal),
}

/// An error answer: the status and the JSON fields that explain it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub error: &'static str,
    pub phase: Option<Phase>,
    pub reason: Option<String>,
    pub message: Option<String>,
}

impl Refusal {
    fn of(status: StatusCode, error: &'static str, backend: Option<&SessionLivedBackend>) -> Self {
        let status_of = backend.and_then(|b| b.status.as_ref());
        let condition = status_of.and_then(|s| s.conditions.iter().find(|c| c.type_ == ConditionType::Failed.as_str()));
        Refusal {
            status,
            error,
            phase: status_of.and_then(|s| s.phase),
            // A failed backend's Ready reason is its failure; `status.reason` says the same.
            reason: status_of.and_then(|s| s.reason.clone()).or_else(|| condition.map(|c| c.reason.clone())),
            message: status_of.and_then(|s| s.message.clone()).or_else(|| condition.map(|c| c.message.clone())),
        }
    }

    /// No backend by that name (after waiting a moment for a new one to appear).
    pub fn missing() -> Self {
        Refusal::of(StatusCode::NOT_FOUND, "no such backend", None)
    }

    /// Held as long as allowed and still not Ready.
    pub fn not_ready_in_time(backend: Option<&SessionLivedBackend>) -> Self {
        Refusal::of(StatusCode::GATEWAY_TIMEOUT, "backend not ready in time", backend)
    }

    /// The JSON body, naming the backend.
    pub fn body(&self, namespace: &str, name: &str) -> serde_json::Value {
        let mut body = serde_json::json!({"error": self.error, "namespace": namespace, "backend": name});
        let fields = [
            ("phase", self.phase.map(|p| p.as_str().to_string())),
            ("reason", self.reason.clone()),
            ("message", self.message.clone()),
        ];
        for (key, value) in fields {
            if let Some(value) = value {
                body[key] = value.into();
            }
        }
        body
    }
}

/// The verdict on `backend` (as the watch has it) at `now`.
pub fn verdict(backend: Option<&SessionLivedBackend>, now: Timestamp) -> Verdict {
    let Some(backend) = backend else { return Verdict::Missing };
    let status = backend.status.as_ref();
    let phase = status.and_then(|s| s.phase);
    if backend.metadata.deletion_timestamp.is_some() || phase == Some(Phase::Terminating) {
        return Verdict::Refused(Refusal::of(StatusCode::BAD_GATEWAY, "backend is shutting down", Some(backend)));
    }
    if phase == Some(Phase::Failed) {
        return Verdict::Refused(Refusal::of(StatusCode::BAD_GATEWAY, "backend failed", Some(backend)));
    }
    if phase == Some(Phase::Ready)
        && let Some(addr) = address(backend)
    {
        return Verdict::Route(addr);
    }
    let remaining = backend.metadata.creation_timestamp.as_ref().and_then(|created| {
        let timeout = k8s_openapi::jiff::SignedDuration::from_secs(backend.spec.effective_startup_timeout_seconds());
        let left = created.0.checked_add(timeout).ok()?.duration_since(now);
        Duration::try_from(left).ok().filter(|d| !d.is_zero())
    });
    Verdict::Starting { remaining }
}

/// `podIP:podPort` from the status, if both are there and make an address.
fn address(backend: &SessionLivedBackend) -> Option<SocketAddr> {
    let status = backend.status.as_ref()?;
    let ip: IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
    let port = u16::try_from(status.pod_port?).ok()?;
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::crd::SessionLivedBackendStatus;

    fn backend(phase: Option<Phase>) -> SessionLivedBackend {
        let spec = serde_json::from_value(serde_json::json!({"template": {"containers": []}})).unwrap();
        let mut backend = SessionLivedBackend::new("room", spec);
        backend.metadata.namespace = Some("games".into());
        backend.metadata.creation_timestamp = Some(Time(at(1000)));
        backend.status = Some(SessionLivedBackendStatus {
            phase,
            pod_ip: Some("10.0.0.7".into()),
            pod_port: Some(9080),
            ..Default::default()
        });
        backend
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap()
    }

    #[test]
    fn a_ready_backend_routes_to_its_pod() {
        assert_eq!(
            verdict(Some(&backend(Some(Phase::Ready))), at(1001)),
            Verdict::Route("10.0.0.7:9080".parse().unwrap())
        );
    }

    #[test]
    fn ipv6_pods_get_a_bracketed_address() {
        let mut b = backend(Some(Phase::Ready));
        b.status.as_mut().unwrap().pod_ip = Some("fd00::7".into());
        let Verdict::Route(addr) = verdict(Some(&b), at(1001)) else { panic!() };
        assert_eq!(addr.to_string(), "[fd00::7]:9080");
    }

    #[test]
    fn a_starting_backend_is_waited_for_until_its_startup_timeout() {
        // The default startup timeout is 300 s from creation.
        assert_eq!(
            verdict(Some(&backend(Some(Phase::Running))), at(1100)),
            Verdict::Starting { remaining: Some(Duration::from_secs(200)) }
        );
        assert_eq!(verdict(Some(&backend(None)), at(1400)), Verdict::Starting { remaining: None });
        // Ready in the phase but no address yet (an old controller's status): still starting.
        let mut b = backend(Some(Phase::Ready));
        b.status.as_mut().unwrap().pod_port = None;
        assert!(matches!(verdict(Some(&b), at(1001)), Verdict::Starting { .. }));
    }

    #[test]
    fn failed_and_deleted_backends_are_refused_with_the_reason() {
        let mut b = backend(Some(Phase::Failed));
        let status = b.status.as_mut().unwrap();
        status.reason = Some("ErrImagePull".into());
        status.message = Some("image not found".into());
        let Verdict::Refused(refusal) = verdict(Some(&b), at(1001)) else { panic!() };
        assert_eq!(refusal.status, StatusCode::BAD_GATEWAY);
        let body = refusal.body("games", "room");
        assert_eq!(body["error"], "backend failed");
        assert_eq!(body["reason"], "ErrImagePull");
        assert_eq!(body["message"], "image not found");
        assert_eq!(body["phase"], "Failed");
        assert_eq!(body["backend"], "room");

        let mut b = backend(Some(Phase::Ready));
        b.metadata.deletion_timestamp = Some(Time(at(1001)));
        let Verdict::Refused(refusal) = verdict(Some(&b), at(1001)) else { panic!() };
        assert_eq!(refusal.error, "backend is shutting down");
    }

    #[test]
    fn an_unknown_backend_is_missing_and_refused_without_detail() {
        assert_eq!(verdict(None, at(0)), Verdict::Missing);
        let body = Refusal::missing().body("games", "nope");
        assert_eq!(body, serde_json::json!({"error": "no such backend", "namespace": "games", "backend": "nope"}));
    }
}
