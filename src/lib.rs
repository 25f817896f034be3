//! Spawner: session-lived backends on Kubernetes.
//!
//! A web application asks for a [`crd::SessionLivedBackend`]; the controller
//! ([`controllers`]) turns it into a pod with the [`sidecar`] injected and a Service; the
//! [`sweeper`] on each node follows the sidecars' event streams and deletes backends that have
//! been idle for their grace period. See the README for the whole picture.
//!
//! # Boxed entry points
//!
//! The components' `run` functions ([`controllers::run`], [`api::run`], [`router::run`],
//! [`sweeper::run`]) return a boxed future rather than being `async fn`s. An async fn's body is
//! compiled where its future is polled, and an optimized build shares no generic instances
//! across crates, so every binary that awaited a `run` compiled that whole component again, with
//! each kube, k8s-openapi and hyper instance it reaches. Boxed here, the future is polled
//! through a vtable made here, and the body is compiled once, in the library, which the xtask's
//! build already compiles: the images' release binaries took 305 s of CPU, then 191 s
//! (`cargo build --release --timings`: `spawner-system` 79 → 9 s, the router 50 → 5 s, the
//! library 79 → 91 s).
// No unsafe code but the one call into glibc's allocator (`process::trim_heap`), allowed there.
#![deny(unsafe_code)]
// Built without `kubernetes` (the sidecar's image), the crate docs' links to those modules dangle.
#![cfg_attr(not(feature = "kubernetes"), allow(rustdoc::broken_intra_doc_links))]

pub mod process;
pub mod sidecar;

/// Declares modules that exist only with the `kubernetes` feature (the default). Without it the
/// library is the sidecar alone: the sidecar's image is built that way.
macro_rules! with_kubernetes {
    ($($module:ident),* $(,)?) => { $( #[cfg(feature = "kubernetes")] pub mod $module; )* };
}
with_kubernetes!(
    admin_http,
    api,
    backend_cache,
    backoff,
    cli,
    client,
    controllers,
    crd,
    proxy_config,
    rbac,
    router,
    sweeper,
    text,
);

/// Names shared by the manifests and the binaries.
pub mod names {
    /// Namespace Spawner's own workloads run in.
    pub const SYSTEM_NAMESPACE: &str = "spawner-system";
    /// ServiceAccount of the controller.
    pub const CONTROLLER: &str = "spawner-controller";
    /// ServiceAccount of the sweeper DaemonSet.
    pub const SWEEPER: &str = "spawner-sweeper";
    /// The HTTP API for web applications (`spawner-api`).
    pub const API: &str = "spawner-api";
    /// The reverse proxy (nginx) in front of every backend.
    pub const PROXY: &str = "spawner-proxy";
    /// Name of the injected sidecar container.
    pub const SIDECAR_CONTAINER: &str = "spawner-sidecar";
    /// Port the sidecar proxies on; the backend's Service targets it.
    pub const SIDECAR_PROXY_PORT: u16 = 9080;
    /// Port of the sidecar's event stream, health and metrics; never routed by the Service.
    pub const SIDECAR_ADMIN_PORT: u16 = 9081;
    /// Label every object Spawner makes carries.
    pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
    pub const MANAGED_BY_VALUE: &str = "spawner";
    /// Label naming the backend a pod, Service or Secret belongs to.
    pub const BACKEND_LABEL: &str = "spawner.dev/backend";
    /// Label on a backend's pod: its `spec.egress`, which the namespace's egress NetworkPolicies
    /// select by.
    pub const EGRESS_LABEL: &str = "spawner.dev/egress";
    /// Name of the application's port in a pod without the sidecar: the ingress NetworkPolicy
    /// opens it (by name, as each backend's port may differ) to the reverse proxy.
    pub const APP_PORT_NAME: &str = "spawner-http";
    /// Label `app.kubernetes.io/name` of Spawner's own pods (the reverse proxy's, the sweeper's).
    pub const NAME_LABEL: &str = "app.kubernetes.io/name";
    /// Annotation on a backend's pod: the backend's `gracePeriodSeconds`, so the sweeper need
    /// not read the backend (pods made before it existed are read from the backend instead).
    pub const GRACE_PERIOD_ANNOTATION: &str = "spawner.dev/grace-period-seconds";
    /// Label naming the pool a warm pod belongs to (kept once the pod is claimed).
    pub const POOL_LABEL: &str = "spawner.dev/pool";
    /// Annotation on a claimed pod: the uid of the backend it was handed over to. Until then
    /// the pod's idle time is not the backend's, so the sweeper does not follow it.
    pub const HANDED_OVER_ANNOTATION: &str = "spawner.dev/handed-over";
    /// Version of the images `config/default` references.
    pub const IMAGE_TAG: &str = "0.1.0";
    /// Image of a Spawner component as `config/default` references it (and as
    /// `cargo xtask images` builds it).
    pub fn image(component: &str) -> String {
        format!("localhost/spawner/{component}:{IMAGE_TAG}")
    }
}
