//! The `SessionLivedBackendPool` custom resource (`spawner.dev/v1`, short name `slabpool`): warm
//! pods started ahead of demand, so that a backend can take one instead of starting cold.

use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{PodShape, SessionLivedBackendSpec, schema};

/// A pool of warm backend pods: started ahead, Ready, never swept while unclaimed, replaced when
/// the pod-shaping fields change.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "spawner.dev",
    doc = "A pool of warm backend pods, started ahead of demand so that a backend can take one instead of starting cold.",
    version = "v1",
    kind = "SessionLivedBackendPool",
    plural = "sessionlivedbackendpools",
    shortname = "slabpool",
    category = "spawner",
    namespaced,
    status = "SessionLivedBackendPoolStatus",
    printcolumn = r#"{"name":"Size","type":"integer","jsonPath":".spec.size","description":"Warm pods the pool keeps"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.ready","description":"Warm pods that are Ready"}"#,
    printcolumn = r#"{"name":"Starting","type":"integer","jsonPath":".status.starting","description":"Warm pods still starting"}"#,
    printcolumn = r#"{"name":"Claimed","type":"integer","jsonPath":".status.claimed","description":"Pods taken from the pool by live backends"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SessionLivedBackendPoolSpec {
    /// Warm pods to keep: started ahead, Ready, waiting for a backend.
    #[serde(default = "default_size")]
    #[schemars(range(min = 0, max = 1000))]
    pub size: i32,

    /// The pod of every warm pod, as a backend's `spec.template`. Changing it (or any field below)
    /// replaces the warm pods.
    #[schemars(schema_with = "schema::pod_template")]
    pub template: PodSpec,

    /// As a backend's `spec.gracePeriodSeconds`.
    #[serde(default = "super::default_grace_period_seconds")]
    #[schemars(range(min = 1, max = 2592000))]
    pub grace_period_seconds: i64,

    /// As a backend's `spec.httpPort`.
    #[serde(default = "super::default_http_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub http_port: i32,

    /// As a backend's `spec.sidecar`, `spec.auth`, `spec.egress` and `spec.service`.
    #[serde(flatten)]
    pub shape: PodShape,
}

impl SessionLivedBackendPoolSpec {
    /// The backend spec a warm pod is made from (the pod-shaping fields; no lifetime limits,
    /// which are the claiming backend's).
    pub fn backend_spec(&self) -> SessionLivedBackendSpec {
        SessionLivedBackendSpec {
            template: Some(self.template.clone()),
            pool_ref: None,
            grace_period_seconds: self.grace_period_seconds,
            http_port: self.http_port,
            startup_timeout_seconds: None,
            max_lifetime_seconds: None,
            shape: self.shape.clone(),
            values: Default::default(),
        }
    }
}

/// Observed state of a pool, written by the controller only.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionLivedBackendPoolStatus {
    /// Warm pods of the current template that are Ready.
    #[serde(default)]
    pub ready: i32,
    /// Warm pods of the current template still starting (or unable to start: see the pods).
    #[serde(default)]
    pub starting: i32,
    /// Pods taken from the pool by backends that are still live.
    #[serde(default)]
    pub claimed: i32,
    /// `Ready`: True once every warm pod of `size` is Ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::conditions")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

fn default_size() -> i32 {
    1
}
