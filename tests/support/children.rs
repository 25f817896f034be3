//! Garbage collection of a backend's children once the backend is deleted.

use std::time::Duration;

use super::{TestEnv, wait_for};

/// Waits until the backend's Pod, Service and token Secret (all named after it) are gone —
/// garbage collection after the backend's deletion — failing the test after `timeout`.
pub async fn wait_for_children_gone(env: &TestEnv, backend: &str, timeout: Duration) {
    use k8s_openapi::api::core::v1::{Pod, Secret, Service};
    fn gone<K>(object: Option<&K>) -> bool {
        object.is_none()
    }
    let (pods, services, secrets) = (env.api::<Pod>(), env.api::<Service>(), env.api::<Secret>());
    tokio::join!(
        wait_for(&pods, backend, gone::<Pod>, timeout),
        wait_for(&services, backend, gone::<Service>, timeout),
        wait_for(&secrets, backend, gone::<Secret>, timeout),
    );
}
