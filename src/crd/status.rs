//! What the controller reports about a backend.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// Observed state of a backend, written by the controller only.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionLivedBackendStatus {
    /// Where the backend is in its life: Pending (no pod yet, or waiting for a node), Scheduled
    /// (on a node, containers starting), Running (containers up, application not yet answering),
    /// Ready (accepting connections), Failed (over; see the conditions), Terminating (being
    /// deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// Why the backend is not Ready, in one CamelCase word (the `REASON` column of
    /// `kubectl get slab`): the Ready condition's reason while it is False — the kubelet's
    /// (`ErrImagePull`, `ImagePullBackOff`, `CreateContainerConfigError`...), the scheduler's
    /// (`Unschedulable`) or Spawner's (`StartupTimeout`, `ContainerTerminated`...). Unset once
    /// Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,

    /// Why the backend is not Ready, in words: the Ready condition's message while it is False.
    /// Unset once Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// Standard conditions: `Scheduled`, `Ready` and `Failed`, each with a reason and message.
    /// `kubectl wait --for=condition=Ready slab/NAME` waits on them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::crd::schema::conditions")]
    pub conditions: Vec<Condition>,

    /// Name of the backend's pod: the backend's own name, or the warm pod's it claimed from its
    /// pool (`kubectl get slab -o wide`). The controller finds a claimed pod again by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,

    /// Node the backend's pod runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,

    /// IP address of the backend's pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,

    /// Port on the pod that serves the backend's HTTP: the sidecar's proxy port, or the
    /// application's own without a sidecar. The reverse proxy connects to `podIP:podPort`, so a
    /// Ready backend is routable at once (no Service rules to wait for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_port: Option<i32>,

    /// URL of the backend through the reverse proxy (without the token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,

    /// When the backend's containers started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::crd::schema::optional_time")]
    pub started_at: Option<Time>,

    /// When the backend first became Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::crd::schema::optional_time")]
    pub ready_at: Option<Time>,

    /// When the backend became Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::crd::schema::optional_time")]
    pub failed_at: Option<Time>,

    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A backend's phase, for humans and `kubectl get`.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Phase {
    /// Accepted; the pod does not exist yet or waits for a node.
    Pending,
    /// The pod has a node; its containers are being created.
    Scheduled,
    /// The containers run; the application does not answer yet.
    Running,
    /// The application accepts connections.
    Ready,
    /// The backend is over: its pod failed, could not be created, or did not get Ready in time.
    Failed,
    /// The backend is being deleted.
    Terminating,
}

impl Phase {
    /// Every phase, in life order (for metrics that report all of them).
    pub const ALL: [Phase; 6] =
        [Phase::Pending, Phase::Scheduled, Phase::Running, Phase::Ready, Phase::Failed, Phase::Terminating];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Scheduled => "Scheduled",
            Phase::Running => "Running",
            Phase::Ready => "Ready",
            Phase::Failed => "Failed",
            Phase::Terminating => "Terminating",
        }
    }
}

/// The condition types Spawner sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionType {
    /// The pod is bound to a node.
    Scheduled,
    /// The application accepts connections through the sidecar.
    Ready,
    /// The backend is over and will not recover.
    Failed,
}

impl ConditionType {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionType::Scheduled => "Scheduled",
            ConditionType::Ready => "Ready",
            ConditionType::Failed => "Failed",
        }
    }
}
