//! A backend's status, derived from its pod.
//!
//! [`derive_status`] is a pure function: given the backend (with the status it has now), what
//! the controller saw of its pod and the time, it returns the status to write and the phase
//! transitions to announce as Events. Everything here is tested without a cluster.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::events::EventType;

use crate::controllers::{lifetime, service};
use crate::crd::{Condition, ConditionType, Phase, SessionLivedBackend, SessionLivedBackendStatus};
use crate::names;
use crate::text::truncate;

/// Stable reasons, shared by conditions and Events (clients may match on them). While a
/// container waits for something a person must fix, the Ready condition carries the kubelet's
/// own reason instead (`ErrImagePull`, `ImagePullBackOff`...), as `kubectl get pods` shows it.
pub mod reason {
    pub const POD_CREATED: &str = "PodCreated";
    pub const PENDING: &str = "Pending";
    pub const UNSCHEDULABLE: &str = "Unschedulable";
    pub const SCHEDULED: &str = "Scheduled";
    pub const CONTAINERS_NOT_READY: &str = "ContainersNotReady";
    pub const READY: &str = "Ready";
    pub const NOT_READY: &str = "NotReady";
    pub const NOT_FAILED: &str = "NotFailed";
    pub const INVALID_POD: &str = "InvalidPod";
    pub const POD_FAILED: &str = "PodFailed";
    pub const POD_LOST: &str = "PodLost";
    pub const CONTAINER_TERMINATED: &str = "ContainerTerminated";
    pub const STARTUP_TIMEOUT: &str = "StartupTimeout";
    pub const MAX_LIFETIME_REACHED: &str = "MaxLifetimeReached";
    pub const FAILED_RETENTION_EXPIRED: &str = "FailedRetentionExpired";
    pub const TERMINATING: &str = "Terminating";
    pub const POOL_NOT_FOUND: &str = "PoolNotFound";
    pub const CLAIMED: &str = "Claimed";
    pub const COLD_START: &str = "ColdStart";
    pub const POOL_EMPTY: &str = "PoolEmpty";
}

/// What the controller knows about the backend's pod.
#[derive(Clone, Copy, Debug)]
pub enum PodView<'a> {
    /// No pod yet (or an old pod of the same name, owned by a deleted backend, is going away).
    NotCreated,
    /// The API server refused the pod; the message says why.
    Rejected(&'a str),
    /// The pod existed once and is gone, with the backend still there.
    Lost,
    /// The backend's pod.
    Exists(&'a Pod),
    /// No pod, for a reason the user should see (e.g. its pool does not exist).
    Waiting { reason: &'static str, message: &'a str },
}

/// A phase change worth an Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub type_: EventType,
    pub reason: &'static str,
    pub message: String,
}

/// Why a backend is over.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Failure {
    reason: &'static str,
    message: String,
}

/// The status `backend` should have now, and the transitions since the status it has.
pub fn derive_status(
    backend: &SessionLivedBackend,
    pod: PodView<'_>,
    now: Timestamp,
    base_url: &str,
) -> (SessionLivedBackendStatus, Vec<Transition>) {
    let old = backend.status.clone().unwrap_or_default();
    let generation = backend.metadata.generation;
    let mut new = old.clone();
    new.url = Some(url(base_url, &backend.namespace().unwrap_or_default(), &backend.name_any()));
    new.observed_generation = generation;

    if backend.metadata.deletion_timestamp.is_some() {
        new.phase = Some(Phase::Terminating);
        let transitions = announce(old.phase, &new, None);
        return (new, transitions);
    }
    // Failed is final: the pod may still change (a timed-out pod getting Ready), the backend
    // does not come back.
    if old.phase == Some(Phase::Failed) {
        return (new, Vec::new());
    }

    let pod_ref = match pod {
        PodView::Exists(pod) => Some(pod),
        _ => None,
    };
    let pod_status = pod_ref.and_then(|p| p.status.as_ref());
    let node = pod_ref.and_then(|p| p.spec.as_ref()).and_then(|s| s.node_name.clone());
    let pod_ready = pod_status.is_some_and(|s| pod_condition_true(s.conditions.as_deref(), "Ready"));
    let ever_ready = old.ready_at.is_some() || pod_ready;

    let containers_running = pod_status
        .and_then(|s| s.container_statuses.as_deref())
        .is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c.state.as_ref().is_some_and(|s| s.running.is_some())));
    // How far the pod has got, before the rules that end a backend.
    let progress = if pod_ready {
        Phase::Ready
    } else if containers_running {
        Phase::Running
    } else if node.is_some() {
        Phase::Scheduled
    } else {
        Phase::Pending
    };
    let not_ready = match pod {
        PodView::Waiting { reason, message } => Cause { reason: reason.to_string(), message: message.to_string() },
        _ => not_ready(progress, pod_ref),
    };

    let failure = match pod {
        PodView::Rejected(message) => Some(Failure { reason: reason::INVALID_POD, message: message.to_string() }),
        PodView::Lost => Some(Failure {
            reason: reason::POD_LOST,
            message: "the backend's pod was deleted; a backend's session cannot be restarted".to_string(),
        }),
        PodView::Exists(pod) => pod_failure(pod),
        PodView::NotCreated | PodView::Waiting { .. } => None,
    }
    .or_else(|| {
        // Say what it was still waiting for: that is what the user has to fix.
        (!ever_ready && lifetime::startup_timed_out(backend, now)).then(|| Failure {
            reason: reason::STARTUP_TIMEOUT,
            message: format!(
                "not Ready within startupTimeoutSeconds ({}s); still {}: {}",
                backend.spec.effective_startup_timeout_seconds(),
                not_ready.reason,
                not_ready.message
            ),
        })
    });

    if let Some(pod) = pod_ref {
        new.pod_name = pod.metadata.name.clone();
    }
    if let Some(node) = &node {
        new.node_name = Some(node.clone());
    }
    if let Some(ip) = pod_status.and_then(|s| s.pod_ip.clone()) {
        new.pod_ip = Some(ip);
        new.pod_port = Some(service::serving_port(backend));
    }
    if new.started_at.is_none() {
        new.started_at = pod_ref.and_then(|pod| app_started_at(backend, pod));
    }
    if pod_ready && new.ready_at.is_none() {
        let kubelet_time = pod_status
            .and_then(|s| pod_condition(s.conditions.as_deref(), "Ready"))
            .and_then(|c| c.last_transition_time.clone());
        new.ready_at = Some(kubelet_time.unwrap_or_else(|| time(now)));
    }

    let phase = if failure.is_some() { Phase::Failed } else { progress };
    new.phase = Some(phase);
    if phase == Phase::Failed {
        new.failed_at = Some(time(now));
    }

    let is_ready = phase == Phase::Ready;
    let failed = failure.as_ref().map(|f| Cause { reason: f.reason.to_string(), message: f.message.clone() });
    let ready = match &failed {
        Some(cause) => cause.clone(),
        None if is_ready => {
            Cause { reason: reason::READY.to_string(), message: "the backend accepts connections".to_string() }
        }
        None => not_ready,
    };
    // Mirrored at the top of the status for `kubectl get slab` (a printer column cannot pick
    // the reason of only a False condition) and for scripts.
    (new.reason, new.message) = if is_ready {
        (None, None)
    } else {
        (Some(ready.reason.clone()), Some(truncate(&ready.message, MAX_MESSAGE_BYTES).to_string()))
    };
    let failed = match failed {
        Some(cause) => (true, cause),
        None => (false, Cause { reason: reason::NOT_FAILED.to_string(), message: String::new() }),
    };
    let conditions = [
        (ConditionType::Scheduled, scheduled_condition(pod_ref, node.as_deref())),
        (ConditionType::Ready, (is_ready, ready)),
        (ConditionType::Failed, failed),
    ];
    new.conditions = conditions
        .into_iter()
        .map(|(type_, (status, cause))| condition(&old.conditions, type_, status, cause, generation, now))
        .collect();

    let transitions = announce(old.phase, &new, failure.as_ref());
    (new, transitions)
}

/// `<base-url>/p/<namespace>/<name>/`: the reverse proxy's route to the backend.
pub fn url(base_url: &str, namespace: &str, name: &str) -> String {
    format!("{}/p/{namespace}/{name}/", base_url.trim_end_matches('/'))
}

/// API times have second precision; truncating keeps an unchanged status equal to the stored one.
pub fn time(ts: Timestamp) -> Time {
    Time(Timestamp::from_second(ts.as_second()).unwrap_or(ts))
}

/// The Events a phase change is worth. Only what a person reading `kubectl describe` needs:
/// Ready (and any way out of it). Reaching Scheduled or Running is in the conditions, and the
/// pod's own Events (the scheduler's, the kubelet's) say it too; an Event for each was two of
/// the 14.6 API writes per backend that `cargo xtask bench scale` counted.
fn announce(old: Option<Phase>, new: &SessionLivedBackendStatus, failure: Option<&Failure>) -> Vec<Transition> {
    let Some(phase) = new.phase else { return Vec::new() };
    if old == Some(phase) {
        return Vec::new();
    }
    let normal = |reason, message: String| Transition { type_: EventType::Normal, reason, message };
    let transition = match phase {
        Phase::Pending | Phase::Scheduled => None,
        Phase::Running if old == Some(Phase::Ready) => Some(Transition {
            type_: EventType::Warning,
            reason: reason::NOT_READY,
            message: "the backend stopped passing its readiness probe".to_string(),
        }),
        Phase::Running => None,
        Phase::Ready => {
            let node = new.node_name.as_deref().unwrap_or("?");
            Some(normal(reason::READY, format!("ready at {} (node {node})", new.url.as_deref().unwrap_or("?"))))
        }
        Phase::Failed => {
            let f = failure.cloned().unwrap_or(Failure { reason: reason::POD_FAILED, message: String::new() });
            Some(Transition { type_: EventType::Warning, reason: f.reason, message: f.message })
        }
        Phase::Terminating => Some(normal(reason::TERMINATING, "backend is being deleted".to_string())),
    };
    transition.into_iter().collect()
}

/// A condition's reason and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cause {
    pub(crate) reason: String,
    pub(crate) message: String,
}

/// Longest condition (and status) message kept.
const MAX_MESSAGE_BYTES: usize = 32 * 1024;

fn scheduled_condition(pod: Option<&Pod>, node: Option<&str>) -> (bool, Cause) {
    let cause = |reason: &str, message: String| Cause { reason: reason.to_string(), message };
    if let Some(node) = node {
        return (true, cause(reason::SCHEDULED, format!("pod bound to node {node}")));
    }
    match pod.and_then(unschedulable) {
        Some(message) => (false, cause(reason::UNSCHEDULABLE, message)),
        None => (false, cause(reason::PENDING, "waiting for a node".to_string())),
    }
}

/// Why a backend whose pod has got as far as `progress` is not Ready (yet): what `kubectl get
/// pods` would show in its STATUS column when a person must act, else where it is on the
/// normal path.
fn not_ready(progress: Phase, pod: Option<&Pod>) -> Cause {
    let cause = |reason: &str, message: &str| Cause { reason: reason.to_string(), message: message.to_string() };
    if progress == Phase::Pending {
        return match pod.and_then(unschedulable) {
            Some(message) => Cause { reason: reason::UNSCHEDULABLE.to_string(), message },
            None => cause(reason::PENDING, "waiting for the pod to be scheduled"),
        };
    }
    pod.and_then(waiting_container)
        .unwrap_or_else(|| cause(reason::CONTAINERS_NOT_READY, "waiting for the containers to be ready"))
}

/// The scheduler's message when it found no node for the pod.
fn unschedulable(pod: &Pod) -> Option<String> {
    let scheduled = pod_condition(pod.status.as_ref()?.conditions.as_deref(), "PodScheduled")?;
    (scheduled.status == "False" && scheduled.reason.as_deref() == Some(reason::UNSCHEDULABLE))
        .then(|| scheduled.message.clone().unwrap_or_default())
}

/// A condition of `type_`, keeping the old one's transition time while its status holds.
pub(crate) fn condition(
    old: &[Condition],
    type_: ConditionType,
    status: bool,
    cause: Cause,
    observed_generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let last_transition_time = old
        .iter()
        .find(|c| c.type_ == type_.as_str() && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| time(now));
    Condition {
        type_: type_.as_str().to_string(),
        status,
        reason: cause.reason,
        message: truncate(&cause.message, MAX_MESSAGE_BYTES).to_string(),
        last_transition_time,
        observed_generation,
    }
}

/// Why the pod means the backend is over, if it does. With restartPolicy Never any terminated
/// container is final, even while the others (the sidecar) still run.
fn pod_failure(pod: &Pod) -> Option<Failure> {
    let status = pod.status.as_ref()?;
    let terminated = status.container_statuses.iter().flatten().find_map(|c| {
        let t = c.state.as_ref()?.terminated.as_ref()?;
        let why = t.reason.as_deref().unwrap_or("Terminated");
        let detail = t.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default();
        Some(format!("container {} exited with code {} ({why}){detail}", c.name, t.exit_code))
    });
    if let Some(message) = terminated {
        return Some(Failure { reason: reason::CONTAINER_TERMINATED, message });
    }
    if matches!(status.phase.as_deref(), Some("Failed" | "Succeeded")) {
        let why =
            [status.reason.as_deref(), status.message.as_deref()].into_iter().flatten().collect::<Vec<_>>().join(": ");
        let phase = status.phase.as_deref().unwrap_or_default();
        return Some(Failure { reason: reason::POD_FAILED, message: format!("pod {phase}: {why}") });
    }
    None
}

/// The first container (init containers first, the sidecar last, the others as the kubelet
/// lists them) that the kubelet holds back for a reason a person must act on (`ErrImagePull`,
/// `ImagePullBackOff`, `CreateContainerConfigError`, `CrashLoopBackOff` of a restartable init
/// container...), as the kubelet's reason and a message naming the container. From the pod's status alone: the
/// controller's cache keeps no container specs (`Child::trim`).
fn waiting_container(pod: &Pod) -> Option<Cause> {
    let status = pod.status.as_ref()?;
    let init = status.init_container_statuses.iter().flatten().map(|c| ("init container", c));
    let (sidecar, app): (Vec<_>, Vec<_>) =
        status.container_statuses.iter().flatten().partition(|c| c.name == names::SIDECAR_CONTAINER);
    let app = app.into_iter().chain(sidecar).map(|c| ("container", c));
    init.chain(app).find_map(|(kind, found): (_, &ContainerStatus)| {
        let waiting = found.state.as_ref()?.waiting.as_ref()?;
        let why = waiting.reason.as_deref().filter(|r| !r.is_empty())?;
        // ContainerCreating and PodInitializing are the normal path: not worth a status write.
        if why == "ContainerCreating" || why == "PodInitializing" {
            return None;
        }
        let name = &found.name;
        let message = match waiting.message.as_deref().filter(|m| !m.is_empty()) {
            Some(detail) => format!("{kind} {name}: {detail}"),
            None => format!("{kind} {name} is waiting"),
        };
        Some(Cause { reason: why.to_string(), message })
    })
}

/// When the application container started: the template's first container (without a
/// template at hand, the first that is not the sidecar).
fn app_started_at(backend: &SessionLivedBackend, pod: &Pod) -> Option<Time> {
    let app = backend.spec.template.as_ref().and_then(|t| t.containers.first()).map(|c| c.name.as_str());
    let status = pod
        .status
        .as_ref()?
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name != names::SIDECAR_CONTAINER && app.is_none_or(|app| c.name == app))?;
    let state = status.state.as_ref()?;
    state
        .running
        .as_ref()
        .and_then(|r| r.started_at.clone())
        .or_else(|| state.terminated.as_ref().and_then(|t| t.started_at.clone()))
}

fn pod_condition<'a>(
    conditions: Option<&'a [k8s_openapi::api::core::v1::PodCondition]>,
    type_: &str,
) -> Option<&'a k8s_openapi::api::core::v1::PodCondition> {
    conditions?.iter().find(|c| c.type_ == type_)
}

pub(crate) fn pod_condition_true(conditions: Option<&[k8s_openapi::api::core::v1::PodCondition]>, type_: &str) -> bool {
    pod_condition(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests;
