//! Test fixtures that read like sentences: `SessionLivedBackend::test().created_at(1000)`,
//! `Pod::test().scheduled_to("node-a").running().ready()`.

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus,
    Pod, PodCondition, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;

use crate::crd::{AuthMode, Phase, SessionLivedBackend, SessionLivedBackendSpec, SessionLivedBackendStatus};

/// The instant `secs` seconds after the epoch.
pub fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(secs).unwrap()
}

fn time(secs: i64) -> Time {
    Time(at(secs))
}

pub trait BackendExt: Sized {
    /// Backend `game` in namespace `room`, uid `uid-game`, default spec, created at t=1000.
    fn test() -> Self;
    fn named(self, name: &str) -> Self;
    fn http_port(self, port: i32) -> Self;
    fn auth_none(self) -> Self;
    fn without_service(self) -> Self;
    fn without_sidecar(self) -> Self;
    fn created_at(self, secs: i64) -> Self;
    fn startup_timeout(self, secs: i64) -> Self;
    fn max_lifetime(self, secs: i64) -> Self;
    fn phase(self, phase: Phase) -> Self;
    fn ready_at(self, secs: i64) -> Self;
    fn failed_at(self, secs: i64) -> Self;
    fn deleting(self) -> Self;
    fn status_mut(&mut self) -> &mut SessionLivedBackendStatus;
}

impl BackendExt for SessionLivedBackend {
    fn test() -> Self {
        let spec: SessionLivedBackendSpec = serde_json::from_value(serde_json::json!({
            "template": {"containers": [{"name": "app", "image": "example/app:1"}]}
        }))
        .unwrap();
        let mut backend = SessionLivedBackend::new("game", spec);
        backend.metadata = ObjectMeta {
            name: Some("game".into()),
            namespace: Some("room".into()),
            uid: Some("uid-game".into()),
            generation: Some(1),
            resource_version: Some("1".into()),
            creation_timestamp: Some(time(1000)),
            ..ObjectMeta::default()
        };
        backend
    }
    fn named(mut self, name: &str) -> Self {
        self.metadata.name = Some(name.into());
        self.metadata.uid = Some(format!("uid-{name}"));
        self
    }
    fn http_port(mut self, port: i32) -> Self {
        self.spec.http_port = port;
        self
    }
    fn auth_none(mut self) -> Self {
        self.spec.shape.auth.mode = AuthMode::None;
        self
    }
    fn without_service(mut self) -> Self {
        self.spec.shape.service.enabled = false;
        self
    }
    fn without_sidecar(mut self) -> Self {
        self.spec.shape.sidecar.inject = false;
        self.auth_none()
    }
    fn created_at(mut self, secs: i64) -> Self {
        self.metadata.creation_timestamp = Some(time(secs));
        self
    }
    fn startup_timeout(mut self, secs: i64) -> Self {
        self.spec.startup_timeout_seconds = Some(secs);
        self
    }
    fn max_lifetime(mut self, secs: i64) -> Self {
        self.spec.max_lifetime_seconds = Some(secs);
        self
    }
    fn phase(mut self, phase: Phase) -> Self {
        self.status_mut().phase = Some(phase);
        self
    }
    fn ready_at(mut self, secs: i64) -> Self {
        let status = self.status_mut();
        status.phase = Some(Phase::Ready);
        status.ready_at = Some(time(secs));
        self
    }
    fn failed_at(mut self, secs: i64) -> Self {
        let status = self.status_mut();
        status.phase = Some(Phase::Failed);
        status.failed_at = Some(time(secs));
        self
    }
    fn deleting(mut self) -> Self {
        self.metadata.deletion_timestamp = Some(time(2000));
        self
    }
    fn status_mut(&mut self) -> &mut SessionLivedBackendStatus {
        self.status.get_or_insert_with(Default::default)
    }
}

pub trait PodExt: Sized {
    /// Pod `game` (app + sidecar containers), not scheduled, no status.
    fn test() -> Self;
    fn unschedulable(self, message: &str) -> Self;
    fn scheduled_to(self, node: &str) -> Self;
    fn running(self) -> Self;
    fn ready(self) -> Self;
    fn app_waiting(self, reason: &str) -> Self;
    fn sidecar_waiting(self, reason: &str) -> Self;
    /// Adds an init container `name`, held back by the kubelet for `reason`.
    fn init_waiting(self, name: &str, reason: &str) -> Self;
    fn app_terminated(self, exit_code: i32, reason: &str) -> Self;
    fn phase(self, phase: &str) -> Self;
}

/// `pod` with its container `name` held back by the kubelet for `reason`.
fn container_waiting(mut pod: Pod, name: &str, reason: &str) -> Pod {
    let status = pod.status.get_or_insert_with(Default::default);
    let container = status.container_statuses.iter_mut().flatten().find(|c| c.name == name).unwrap();
    let waiting = ContainerStateWaiting { reason: Some(reason.into()), message: Some("details".into()) };
    container.state = Some(ContainerState { waiting: Some(waiting), ..ContainerState::default() });
    pod
}

fn container_status(name: &str, state: ContainerState, ready: bool) -> ContainerStatus {
    ContainerStatus { name: name.into(), ready, state: Some(state), ..ContainerStatus::default() }
}

impl PodExt for Pod {
    fn test() -> Self {
        Pod {
            metadata: ObjectMeta {
                name: Some("game".into()),
                namespace: Some("room".into()),
                uid: Some("uid-pod".into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                containers: vec![
                    Container { name: "app".into(), ..Container::default() },
                    Container { name: crate::names::SIDECAR_CONTAINER.into(), ..Container::default() },
                ],
                ..PodSpec::default()
            }),
            status: Some(PodStatus { phase: Some("Pending".into()), ..PodStatus::default() }),
        }
    }
    fn unschedulable(mut self, message: &str) -> Self {
        self.status.get_or_insert_with(Default::default).conditions = Some(vec![PodCondition {
            type_: "PodScheduled".into(),
            status: "False".into(),
            reason: Some("Unschedulable".into()),
            message: Some(message.into()),
            ..PodCondition::default()
        }]);
        self
    }
    fn scheduled_to(mut self, node: &str) -> Self {
        self.spec.get_or_insert_with(Default::default).node_name = Some(node.into());
        let status = self.status.get_or_insert_with(Default::default);
        status.pod_ip = Some("10.0.0.7".into());
        status.container_statuses = Some(
            ["app", crate::names::SIDECAR_CONTAINER]
                .iter()
                .map(|name| {
                    let waiting = ContainerStateWaiting { reason: Some("ContainerCreating".into()), message: None };
                    container_status(
                        name,
                        ContainerState { waiting: Some(waiting), ..ContainerState::default() },
                        false,
                    )
                })
                .collect(),
        );
        self
    }
    fn running(mut self) -> Self {
        let status = self.status.get_or_insert_with(Default::default);
        status.phase = Some("Running".into());
        for c in status.container_statuses.iter_mut().flatten() {
            let running = ContainerStateRunning { started_at: Some(time(1003)) };
            c.state = Some(ContainerState { running: Some(running), ..ContainerState::default() });
        }
        self
    }
    fn ready(mut self) -> Self {
        let status = self.status.get_or_insert_with(Default::default);
        for c in status.container_statuses.iter_mut().flatten() {
            c.ready = true;
        }
        status.conditions = Some(vec![PodCondition {
            type_: "Ready".into(),
            status: "True".into(),
            last_transition_time: Some(time(1004)),
            ..PodCondition::default()
        }]);
        self
    }
    fn app_waiting(self, reason: &str) -> Self {
        container_waiting(self, "app", reason)
    }
    fn sidecar_waiting(self, reason: &str) -> Self {
        container_waiting(self, crate::names::SIDECAR_CONTAINER, reason)
    }
    fn init_waiting(mut self, name: &str, reason: &str) -> Self {
        let spec = self.spec.get_or_insert_with(Default::default);
        spec.init_containers.get_or_insert_with(Vec::new).push(Container { name: name.into(), ..Container::default() });
        let waiting = ContainerStateWaiting { reason: Some(reason.into()), message: Some("details".into()) };
        let state = ContainerState { waiting: Some(waiting), ..ContainerState::default() };
        let status = self.status.get_or_insert_with(Default::default);
        status.init_container_statuses.get_or_insert_with(Vec::new).push(container_status(name, state, false));
        self
    }
    fn app_terminated(mut self, exit_code: i32, reason: &str) -> Self {
        let status = self.status.get_or_insert_with(Default::default);
        let app = status.container_statuses.iter_mut().flatten().find(|c| c.name == "app").unwrap();
        let terminated = ContainerStateTerminated {
            exit_code,
            reason: Some(reason.into()),
            started_at: Some(time(1003)),
            ..ContainerStateTerminated::default()
        };
        app.state = Some(ContainerState { terminated: Some(terminated), ..ContainerState::default() });
        app.ready = false;
        self
    }
    fn phase(mut self, phase: &str) -> Self {
        self.status.get_or_insert_with(Default::default).phase = Some(phase.into());
        self
    }
}
