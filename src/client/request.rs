//! What a caller asks for: one application container and the backend's knobs, as a
//! `SessionLivedBackend` to create.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec};
use kube::api::ObjectMeta;

use crate::crd::{
    AuthMode, AuthSpec, BackendServiceSpec, DEFAULT_GRACE_PERIOD_SECONDS, DEFAULT_HTTP_PORT, Egress, PodShape, PoolRef,
    SessionLivedBackend, SessionLivedBackendSpec, SidecarSpec,
};

/// How the backend gets its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Naming {
    Name(String),
    GenerateName(String),
}

/// Where the backend's pod comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A pod of its own, whose one application container runs this image.
    Image(String),
    /// A warm pod of this pool (the pool's pod-shaping fields apply, not the request's).
    Pool(String),
}

/// What a user asks for: one application container (or a pool's warm pod) and the backend's
/// knobs.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendRequest {
    pub naming: Naming,
    pub source: Source,
    pub http_port: i32,
    pub grace_period_seconds: i64,
    /// Unset: the CRD's rule (the smaller of 300 s and the max lifetime), as for a manifest.
    pub startup_timeout_seconds: Option<i64>,
    pub max_lifetime_seconds: Option<i64>,
    pub env: Vec<(String, String)>,
    pub auth: AuthMode,
    pub egress: Egress,
    /// Whether the backend gets a ClusterIP Service (`spec.service.enabled`).
    pub service: bool,
    pub annotations: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    /// The session's settings (`spec.values`).
    pub values: BTreeMap<String, String>,
}

impl BackendRequest {
    /// A request with the CRD's defaults.
    pub fn new(naming: Naming, image: impl Into<String>) -> BackendRequest {
        Self::from_source(naming, Source::Image(image.into()))
    }

    /// A request with the CRD's defaults for a warm pod of `pool`.
    pub fn from_pool(naming: Naming, pool: impl Into<String>) -> BackendRequest {
        Self::from_source(naming, Source::Pool(pool.into()))
    }

    fn from_source(naming: Naming, source: Source) -> BackendRequest {
        BackendRequest {
            naming,
            source,
            http_port: DEFAULT_HTTP_PORT,
            grace_period_seconds: DEFAULT_GRACE_PERIOD_SECONDS,
            startup_timeout_seconds: None,
            max_lifetime_seconds: None,
            env: Vec::new(),
            auth: AuthMode::Token,
            egress: Egress::default(),
            service: true,
            annotations: BTreeMap::new(),
            labels: BTreeMap::new(),
            values: BTreeMap::new(),
        }
    }

    /// The object to create.
    pub fn to_backend(&self) -> SessionLivedBackend {
        let (name, generate_name) = match &self.naming {
            Naming::Name(name) => (Some(name.clone()), None),
            Naming::GenerateName(prefix) => (None, Some(prefix.clone())),
        };
        let env: Vec<EnvVar> = self
            .env
            .iter()
            .map(|(name, value)| EnvVar { name: name.clone(), value: Some(value.clone()), ..Default::default() })
            .collect();
        let (template, pool_ref) = match &self.source {
            Source::Image(image) => {
                let container = Container {
                    name: "application".into(),
                    image: Some(image.clone()),
                    env: (!env.is_empty()).then_some(env),
                    ..Default::default()
                };
                (Some(PodSpec { containers: vec![container], ..Default::default() }), None)
            }
            Source::Pool(pool) => (None, Some(PoolRef { name: pool.clone() })),
        };
        let spec = SessionLivedBackendSpec {
            template,
            pool_ref,
            grace_period_seconds: self.grace_period_seconds,
            http_port: self.http_port,
            startup_timeout_seconds: self.startup_timeout_seconds,
            max_lifetime_seconds: self.max_lifetime_seconds,
            shape: PodShape {
                sidecar: SidecarSpec::default(),
                auth: AuthSpec { mode: self.auth },
                egress: self.egress,
                service: BackendServiceSpec { enabled: self.service },
            },
            values: self.values.clone(),
        };
        let mut backend = SessionLivedBackend::new("", spec);
        backend.metadata = ObjectMeta {
            name,
            generate_name,
            annotations: (!self.annotations.is_empty()).then(|| self.annotations.clone()),
            labels: (!self.labels.is_empty()).then(|| self.labels.clone()),
            ..Default::default()
        };
        backend
    }
}
