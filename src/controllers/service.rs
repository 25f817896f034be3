//! The backend's Service: a stable name in front of its one pod, for clients inside the cluster
//! (unless `spec.service.enabled` is false; Spawner's own parts route to the pod's address).

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::controllers::children::Child;
use crate::controllers::context::Context;
use crate::controllers::pod::{child_meta, labels};
use crate::crd::SessionLivedBackend;
use crate::names;

impl Child for Service {
    const KIND: &'static str = "Service";

    fn build(backend: &SessionLivedBackend, _: &Context) -> Option<Self> {
        backend.spec.shape.service.enabled.then(|| build_service(backend))
    }

    /// Only whose it is matters (the metadata): the Service is made once and never changed.
    fn trim(&mut self) {
        crate::controllers::children::trim(self);
        self.spec = None;
        self.status = None;
    }
}

/// The Service of `backend`: ClusterIP, port 80 to the sidecar's proxy port (or straight to the
/// application without a sidecar). The sidecar's admin port is never exposed.
pub fn build_service(backend: &SessionLivedBackend) -> Service {
    let target = serving_port(backend);
    let mut selector = labels(backend);
    selector.remove(names::MANAGED_BY_LABEL);
    Service {
        metadata: child_meta(backend),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_string()),
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: Some("http".to_string()),
                port: 80,
                target_port: Some(IntOrString::Int(target)),
                protocol: Some("TCP".to_string()),
                ..ServicePort::default()
            }]),
            // A backend that is not Ready yet answers 503 from its sidecar instead of the
            // reverse proxy failing to resolve it.
            publish_not_ready_addresses: Some(true),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The pod port that serves `backend`'s HTTP: the sidecar's proxy port, or the application's own
/// without a sidecar. The Service targets it and the reverse proxy connects to it.
pub fn serving_port(backend: &SessionLivedBackend) -> i32 {
    if backend.spec.shape.sidecar.inject { i32::from(names::SIDECAR_PROXY_PORT) } else { backend.spec.http_port }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::fixtures::BackendExt;

    #[test]
    fn the_service_routes_port_80_to_the_sidecar_proxy_only() {
        let service = build_service(&SessionLivedBackend::test());
        assert_eq!(service.metadata.name.as_deref(), Some("game"));
        assert_eq!(service.metadata.owner_references.as_ref().unwrap()[0].controller, Some(true));
        let spec = service.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        let ports = spec.ports.unwrap();
        assert_eq!(ports.len(), 1);
        assert_eq!((ports[0].name.as_deref(), ports[0].port), (Some("http"), 80));
        assert_eq!(ports[0].target_port, Some(IntOrString::Int(9080)));
        assert_eq!(spec.selector.unwrap().get(names::BACKEND_LABEL).map(String::as_str), Some("game"));
    }

    #[test]
    fn without_the_sidecar_the_service_targets_the_application() {
        let service = build_service(&SessionLivedBackend::test().without_sidecar().http_port(3000));
        let ports = service.spec.unwrap().ports.unwrap();
        assert_eq!(ports[0].target_port, Some(IntOrString::Int(3000)));
    }
}
