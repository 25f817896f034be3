//! The `SessionLivedBackend` custom resource (`spawner.dev/v1`, short name `slab`).
//!
//! These Rust types are the single source of truth for the CRD: `cargo xtask manifests` renders
//! [`crd()`] into `config/crd/`, and every binary deserializes objects through them. Doc comments
//! on fields become the schema's descriptions, so they are written for `kubectl explain`.

mod pool;
mod schema;
mod status;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResource;
use kube::core::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use pool::{SessionLivedBackendPool, SessionLivedBackendPoolSpec, SessionLivedBackendPoolStatus};
pub use status::{Condition, ConditionType, Phase, SessionLivedBackendStatus};

/// API group of every Spawner resource.
pub const GROUP: &str = "spawner.dev";
/// Field manager for every server-side apply made by Spawner's binaries.
pub const FIELD_MANAGER: &str = "spawner";

/// Default idle time allowed before a backend is swept (the original Spawner's default).
pub const DEFAULT_GRACE_PERIOD_SECONDS: i64 = 300;
/// Default port the application listens on; it receives it as `PORT` too.
pub const DEFAULT_HTTP_PORT: i32 = 8080;
/// Default time a backend may take from creation to Ready before it is marked Failed; a backend
/// with a shorter `maxLifetimeSeconds` gets that instead (see
/// [`SessionLivedBackendSpec::effective_startup_timeout_seconds`]).
pub const DEFAULT_STARTUP_TIMEOUT_SECONDS: i64 = 300;

/// A session-lived backend: one pod serving one user, document or room over HTTP and
/// WebSockets, swept once nobody has been connected to it for `gracePeriodSeconds`.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "spawner.dev",
    doc = "A session-lived backend: one pod for one user, document or room, reached through the reverse proxy and swept when idle.",
    version = "v1",
    kind = "SessionLivedBackend",
    plural = "sessionlivedbackends",
    shortname = "slab",
    category = "spawner",
    namespaced,
    status = "SessionLivedBackendStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase","description":"Where the backend is in its life"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status","description":"Whether the backend accepts connections"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.reason","description":"Why the backend is not Ready (ErrImagePull, Unschedulable, StartupTimeout...)"}"#,
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.url","description":"Where browsers reach the backend (through the reverse proxy)"}"#,
    printcolumn = r#"{"name":"Pod","type":"string","jsonPath":".status.podName","priority":1,"description":"The backend's pod (a warm pod's name when claimed from a pool)"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".status.nodeName","priority":1,"description":"Node the backend's pod runs on"}"#,
    printcolumn = r#"{"name":"Message","type":"string","jsonPath":".status.message","priority":1,"description":"Why the backend is not Ready, in words"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    // Only a startup timeout the user wrote is compared: an unset one defaults to at most the
    // max lifetime (CEL cannot tell a schema default from a value the user set).
    {
        "rule": "!has(self.startupTimeoutSeconds) || !has(self.maxLifetimeSeconds) || self.startupTimeoutSeconds <= self.maxLifetimeSeconds",
        "message": "spec.startupTimeoutSeconds must not exceed spec.maxLifetimeSeconds (when unset it defaults to the smaller of 300 and maxLifetimeSeconds)",
        "fieldPath": ".startupTimeoutSeconds",
        "reason": "FieldValueInvalid"
    },
    {
        "rule": "!self.sidecar.inject || (self.httpPort != 9080 && self.httpPort != 9081)",
        "message": "spec.httpPort must not be 9080 or 9081: the injected sidecar listens there",
        "fieldPath": ".httpPort",
        "reason": "FieldValueInvalid"
    },
    {
        "rule": "self.sidecar.inject || self.auth.mode == 'None'",
        "message": "spec.auth.mode must be None when spec.sidecar.inject is false: the sidecar is what checks the token",
        "fieldPath": ".auth.mode",
        "reason": "FieldValueInvalid"
    },
    // What the pod was made from cannot change: the pod is the session and is never recreated,
    // so an edit would be accepted and silently do nothing. The lifetime limits stay editable
    // (the controller reads them on every reconcile).
    {
        "rule": "has(self.template) != has(self.poolRef)",
        "message": "spec needs exactly one of template (a pod of its own) and poolRef (a warm pod from a pool)",
        "fieldPath": ".template",
        "reason": "FieldValueInvalid"
    },
    {
        "rule": "has(self.template) == has(oldSelf.template) && (!has(self.template) || self.template == oldSelf.template)",
        "message": "spec.template is immutable: the backend's pod is never recreated (create a new backend instead)",
        "fieldPath": ".template",
        "reason": "FieldValueInvalid"
    },
    {
        "rule": "has(self.poolRef) == has(oldSelf.poolRef) && (!has(self.poolRef) || self.poolRef == oldSelf.poolRef)",
        "message": "spec.poolRef is immutable: the backend's pod is never recreated",
        "fieldPath": ".poolRef",
        "reason": "FieldValueInvalid"
    },
    {
        "rule": "has(self.values) == has(oldSelf.values) && (!has(self.values) || self.values == oldSelf.values)",
        "message": "spec.values is immutable: the session's settings are delivered once, when its pod is made or claimed",
        "fieldPath": ".values",
        "reason": "FieldValueInvalid"
    },
    {
        "rule": "self.gracePeriodSeconds == oldSelf.gracePeriodSeconds",
        "message": "spec.gracePeriodSeconds is immutable: the sweeper keeps the value the backend's pod was made with",
        "fieldPath": ".gracePeriodSeconds",
        "reason": "FieldValueInvalid"
    },
    {
        "rule": "self.httpPort == oldSelf.httpPort",
        "message": "spec.httpPort is immutable: the backend's pod is never recreated",
        "fieldPath": ".httpPort",
        "reason": "FieldValueInvalid"
    },
    {
        "rule": "self.sidecar == oldSelf.sidecar",
        "message": "spec.sidecar is immutable: the backend's pod is never recreated",
        "fieldPath": ".sidecar",
        "reason": "FieldValueInvalid"
    },
    {
        "rule": "self.egress == oldSelf.egress",
        "message": "spec.egress is immutable: the backend's pod is never recreated",
        "fieldPath": ".egress",
        "reason": "FieldValueInvalid"
    },
    {
        "rule": "self.auth == oldSelf.auth",
        "message": "spec.auth is immutable: the backend's token is made once, with its pod",
        "fieldPath": ".auth",
        "reason": "FieldValueInvalid"
    },
    {
        "rule": "self.service == oldSelf.service",
        "message": "spec.service is immutable: the backend's Service is made once, with its pod",
        "fieldPath": ".service",
        "reason": "FieldValueInvalid"
    }
]))]
pub struct SessionLivedBackendSpec {
    /// The pod that runs the application: containers, volumes, imagePullSecrets, resources,
    /// node selection and the rest of a core/v1 PodSpec. The first container is the
    /// application; it receives `PORT` set to `httpPort`. Fields not listed here are checked by
    /// the API server when the pod is created; a pod it refuses makes the backend Failed with
    /// the API server's message. Exactly one of `template` and `poolRef` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::optional_pod_template")]
    pub template: Option<PodSpec>,

    /// Take a warm pod from this `SessionLivedBackendPool` (same namespace) instead of starting
    /// one: the backend is Ready as soon as the pod is its own. With no warm pod left it starts
    /// cold from the pool's template. The pod-shaping fields (`httpPort`, `sidecar`, `auth`,
    /// `gracePeriodSeconds`, `egress`, `service`) are then the pool's, whatever the backend says; the
    /// lifetime limits stay the backend's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_ref: Option<PoolRef>,

    /// Settings of this session for the application (a document id, a room title, a user's
    /// locale...): up to 32 values, keys like environment variable names. The application reads
    /// them, with the connect key, from its sidecar at `GET http://127.0.0.1:9081/session` —
    /// for a warm pod once it is claimed, so they reach a pod that started before the session
    /// did. A cold backend's containers also get them as `SPAWNER_SESSION` (JSON). Immutable.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "schema::session_values")]
    pub values: BTreeMap<String, String>,

    /// Seconds a backend may stay with no live connection (no open WebSocket, no HTTP request in
    /// flight) before it is swept. Counted from Ready when no one ever connected.
    #[serde(default = "default_grace_period_seconds")]
    #[schemars(range(min = 1, max = 2592000))]
    pub grace_period_seconds: i64,

    /// Port the application listens on inside the pod; it is passed as the `PORT` environment
    /// variable of the first container.
    #[serde(default = "default_http_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub http_port: i32,

    /// Seconds the backend may take from creation to Ready. Past it the backend is Failed
    /// (reason `StartupTimeout`). Unset: 300, or `maxLifetimeSeconds` when that is shorter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub startup_timeout_seconds: Option<i64>,

    /// Hard limit on the backend's whole life in seconds, connected or not: once reached the
    /// backend is deleted (Event `MaxLifetimeReached`). Unset means no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 31536000))]
    pub max_lifetime_seconds: Option<i64>,

    /// `sidecar`, `auth`, `egress` and `service`, which a pool has too.
    #[serde(flatten)]
    pub shape: PodShape,
}

/// What a backend's pod is wrapped in and may reach: the fields a backend and a pool share, one
/// level down in Rust and at the top of their specs in the API.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodShape {
    /// The Spawner sidecar: a reverse proxy in front of the application that counts live
    /// connections, checks the access token and tells the sweeper when the backend is idle.
    #[serde(default)]
    pub sidecar: SidecarSpec,

    /// Who may reach the backend's URL. In a pool with `Token`, each warm pod gets a token of
    /// its own with its claim: a pod serves one session and never returns to the pool.
    #[serde(default)]
    pub auth: AuthSpec,

    /// Where the backend's pod may open connections. `Public` (default): DNS to the cluster's
    /// DNS pods and any public address; never private ranges (10/8, 172.16/12, 192.168/16,
    /// 100.64/10, fc00::/7), link-local ones (169.254/16, fe80::/10, so never the cloud metadata
    /// address) or other pods. `None`: no connection out at all. `Unrestricted`: anywhere.
    /// Enforced by NetworkPolicy, so only on a network that enforces it.
    #[serde(default)]
    pub egress: Egress,

    /// The backend's ClusterIP Service, for clients inside the cluster.
    #[serde(default)]
    pub service: BackendServiceSpec,
}

/// Whether the backend gets a ClusterIP Service.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendServiceSpec {
    /// Make a ClusterIP Service named after the backend (default): port 80 to the sidecar, or to
    /// the application without one, for clients inside the cluster. The reverse proxy does not
    /// use it (it routes to the pod's address), so `false` loses nothing of Spawner's and saves
    /// the API server four writes per backend (the Service, its ClusterIP, Endpoints and
    /// EndpointSlice) and every node's kube-proxy a set of rules.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Default for BackendServiceSpec {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// A pool in the backend's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct PoolRef {
    /// The pool's name.
    #[schemars(length(min = 1, max = 57))]
    pub name: String,
}

/// Where a backend's pod may connect to (see `spec.egress`).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema, clap::ValueEnum)]
pub enum Egress {
    /// DNS and the public internet; no private, link-local or metadata addresses.
    #[default]
    Public,
    /// Nothing.
    None,
    /// Anywhere.
    Unrestricted,
}

impl Egress {
    /// The value as written in the spec (and in the pod's egress label).
    pub fn as_str(self) -> &'static str {
        match self {
            Egress::Public => "Public",
            Egress::None => "None",
            Egress::Unrestricted => "Unrestricted",
        }
    }
}

impl SessionLivedBackendSpec {
    /// Seconds the backend may take to become Ready: `startupTimeoutSeconds` as set, else the
    /// smaller of [`DEFAULT_STARTUP_TIMEOUT_SECONDS`] and `maxLifetimeSeconds`. Computed here,
    /// not defaulted in the schema, so that admission can refuse only a timeout the user set
    /// above the max lifetime; the controller and the CLI both read it through this.
    pub fn effective_startup_timeout_seconds(&self) -> i64 {
        let default = match self.max_lifetime_seconds {
            Some(max_lifetime) => max_lifetime.min(DEFAULT_STARTUP_TIMEOUT_SECONDS),
            None => DEFAULT_STARTUP_TIMEOUT_SECONDS,
        };
        self.startup_timeout_seconds.unwrap_or(default)
    }
}

/// Whether and how the sidecar is injected.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSpec {
    /// Inject the sidecar (default). Without it the backend is never swept for idleness (only
    /// `maxLifetimeSeconds` ends it), readiness is the application's own, and auth must be None.
    #[serde(default = "default_true")]
    pub inject: bool,
}

impl Default for SidecarSpec {
    fn default() -> Self {
        Self { inject: true }
    }
}

/// Access control of the backend's URL.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// `Token` (default): a random per-backend token, kept in a Secret named after the backend,
    /// must come with every request (`Authorization: Bearer`, `?token=` or the cookie that
    /// `?token=` sets). `None`: anyone who can reach the reverse proxy can use the backend.
    #[serde(default)]
    pub mode: AuthMode,
}

/// How requests to a backend are authenticated.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum AuthMode {
    /// A per-backend secret token is required.
    #[default]
    Token,
    /// No authentication.
    None,
}

fn default_true() -> bool {
    true
}
pub(crate) fn default_grace_period_seconds() -> i64 {
    DEFAULT_GRACE_PERIOD_SECONDS
}
pub(crate) fn default_http_port() -> i32 {
    DEFAULT_HTTP_PORT
}

/// The CustomResourceDefinition as applied to clusters.
pub fn crd() -> CustomResourceDefinition {
    // The backend's Service and route carry its name, so it must be a DNS-1035 label (no dots,
    // starts with a letter), which the API server does not demand of custom objects by itself.
    with_name_rule(
        SessionLivedBackend::crd(),
        63,
        "metadata.name must be a DNS-1035 label (at most 63 lowercase letters, digits and '-', starting with a \
         letter): it names the backend's Service and URL",
    )
}

/// The pool's CustomResourceDefinition as applied to clusters.
pub fn pool_crd() -> CustomResourceDefinition {
    // Warm pods are named `<pool>-<5 characters>` and labelled with the pool's name: both must
    // stay DNS labels.
    with_name_rule(
        SessionLivedBackendPool::crd(),
        POOL_NAME_MAX,
        "metadata.name must be a DNS-1035 label of at most 57 characters (lowercase letters, digits and '-', \
         starting with a letter): it prefixes the names of the pool's pods",
    )
}

/// Longest pool name: its pods' names add 6 characters and must stay within 63.
pub const POOL_NAME_MAX: usize = 57;

fn with_name_rule(mut crd: CustomResourceDefinition, max: usize, message: &str) -> CustomResourceDefinition {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::ValidationRule;
    let schema = crd.spec.versions[0].schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut());
    schema.expect("kube-derive renders a schema").x_kubernetes_validations = Some(vec![ValidationRule {
        rule: format!(
            "self.metadata.name.size() <= {max} && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')"
        ),
        message: Some(message.into()),
        reason: Some("FieldValueInvalid".into()),
        ..Default::default()
    }]);
    crd
}

#[cfg(test)]
mod tests;
