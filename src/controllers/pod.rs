//! The backend's Pod: the application from `spec.template`, plus the injected sidecar.
//!
//! [`build_pod`] is a pure function of the backend and the controller's settings, so the whole
//! pod is tested without a cluster and the reconciler only has to apply it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, HTTPGetAction, Pod, PodSpec, Probe, ResourceRequirements,
    SeccompProfile, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::controllers::children::Child;
use crate::controllers::context::Context;
use crate::crd::{AuthMode, SessionLivedBackend};
use crate::names;
use crate::sidecar::session::{SESSION_ENV, Session};

impl Child for Pod {
    const KIND: &'static str = "Pod";

    fn build(backend: &SessionLivedBackend, ctx: &Context) -> Option<Self> {
        Some(build_pod(backend, &ctx.config.sidecar))
    }

    /// Keeps the metadata, the status and the node (what the status is derived from); the rest
    /// of the spec (the template with the sidecar: most of a pod) goes. Not even the containers'
    /// names: each `Container` is 2 KiB before its first field is set, and the two of each pod
    /// were a sixth of the controller's heap at 3,000 backends (heaptrack).
    fn trim(&mut self) {
        crate::controllers::children::trim(self);
        if let Some(spec) = &mut self.spec {
            *spec = PodSpec { node_name: spec.node_name.take(), ..PodSpec::default() };
        }
    }
}

/// Directory the token Secret is mounted at in the sidecar.
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/spawner/token";
/// The sidecar's variable naming its token file.
const TOKEN_FILE_ENV: &str = "SPAWNER_TOKEN_FILE";
/// Name of the pod volume holding the token Secret.
const TOKEN_VOLUME: &str = "spawner-token";
/// Non-root uid of the sidecar (distroless "nonroot").
const SIDECAR_UID: i64 = 65532;

/// What the controller needs to know to inject the sidecar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SidecarConfig {
    /// Image of the sidecar container.
    pub image: String,
}

impl Default for SidecarConfig {
    fn default() -> Self {
        Self { image: names::image("sidecar") }
    }
}

/// Labels of every object made for `backend` (the Service selects pods by them).
pub fn labels(backend: &SessionLivedBackend) -> BTreeMap<String, String> {
    BTreeMap::from([
        (names::MANAGED_BY_LABEL.to_string(), names::MANAGED_BY_VALUE.to_string()),
        (names::BACKEND_LABEL.to_string(), backend.name_any()),
    ])
}

/// Metadata of a child object: the backend's name, namespace, labels and a controller owner
/// reference (so garbage collection removes the child with the backend).
pub fn child_meta(backend: &SessionLivedBackend) -> ObjectMeta {
    ObjectMeta {
        name: Some(backend.name_any()),
        namespace: backend.namespace(),
        labels: Some(labels(backend)),
        // controller=true: kube-runtime maps child events back to the backend by it.
        // blockOwnerDeletion: a foreground deletion of the backend waits for its children.
        owner_references: backend
            .controller_owner_ref(&())
            .map(|r| vec![OwnerReference { block_owner_deletion: Some(true), ..r }]),
        ..ObjectMeta::default()
    }
}

/// The Pod of `backend`. Applied once; later spec changes do not touch a running pod (pods are
/// immutable, and a backend's process is its session).
pub fn build_pod(backend: &SessionLivedBackend, sidecar: &SidecarConfig) -> Pod {
    let spec = &backend.spec;
    // A backend of a pool is built from the pool's spec (see `pool::effective`): it has one.
    let mut template: PodSpec = spec.template.clone().unwrap_or_default();
    // A backend that dies is over: its session state is gone, so it is never restarted.
    template.restart_policy = Some("Never".to_string());

    // The session's settings, for the application (and its sidecar's `GET /session`). A warm
    // pod has none until claimed (`expect_claim` takes them out again).
    let session = serde_json::to_string(&session_of(backend)).expect("a session serializes");
    if let Some(app) = template.containers.first_mut() {
        let env = app.env.get_or_insert_with(Vec::new);
        env.retain(|e| e.name != "PORT" && e.name != SESSION_ENV);
        env.push(env_var("PORT", spec.http_port.to_string()));
        env.push(env_var(SESSION_ENV, session.clone()));
        if !spec.shape.sidecar.inject {
            name_app_port(app, spec.http_port);
        }
    }

    if spec.shape.sidecar.inject {
        let token = spec.shape.auth.mode == AuthMode::Token;
        let mut container = sidecar_container(spec.http_port, token, sidecar);
        container.env.get_or_insert_with(Vec::new).push(env_var(SESSION_ENV, session));
        template.containers.push(container);
        if token {
            template.volumes.get_or_insert_with(Vec::new).push(Volume {
                name: TOKEN_VOLUME.to_string(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(backend.name_any()),
                    // Mounted into the sidecar only, which runs as a uid that does not own the files.
                    default_mode: Some(0o444),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            });
        }
    }

    let mut metadata = child_meta(backend);
    // Only on the pod: the Service selects by the other labels.
    metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(names::EGRESS_LABEL.into(), spec.shape.egress.as_str().into());
    if spec.shape.sidecar.inject {
        // The sweeper on the pod's node reads the grace period here instead of fetching the
        // backend (the field is immutable, so the copy cannot go stale).
        metadata.annotations = Some(
            [(names::GRACE_PERIOD_ANNOTATION.to_string(), spec.grace_period_seconds.to_string())].into_iter().collect(),
        );
    }
    Pod { metadata, spec: Some(template), status: None }
}

/// What the application learns about its session (see `sidecar::session`).
pub fn session_of(backend: &SessionLivedBackend) -> Session {
    Session {
        namespace: backend.namespace().unwrap_or_default(),
        backend: backend.name_any(),
        key: backend.annotations().get(crate::client::names::CONNECT_KEY_ANNOTATION).cloned(),
        values: backend.spec.values.clone(),
    }
}

/// Gives the application's port the name the ingress NetworkPolicy opens: the template's own
/// entry for that port when it has no name, else an entry of our own (a port may be listed
/// twice; the API server only warns).
fn name_app_port(app: &mut Container, http_port: i32) {
    let ports = app.ports.get_or_insert_with(Vec::new);
    if ports.iter().any(|p| p.name.as_deref() == Some(names::APP_PORT_NAME)) {
        return;
    }
    match ports.iter_mut().find(|p| p.container_port == http_port && p.name.is_none()) {
        Some(unnamed) => unnamed.name = Some(names::APP_PORT_NAME.to_string()),
        None => ports.push(port(names::APP_PORT_NAME, http_port)),
    }
}

/// Has the sidecar of `pod` (a pool's warm pod) wait for its claim: it reads the claim key from
/// the mounted Secret instead of a token.
pub fn expect_claim(pod: &mut Pod) {
    for container in pod.spec.iter_mut().flat_map(|s| s.containers.iter_mut()) {
        container.env.iter_mut().for_each(|env| env.retain(|e| e.name != SESSION_ENV));
    }
    let containers = pod.spec.iter_mut().flat_map(|s| s.containers.iter_mut());
    for sidecar in containers.filter(|c| c.name == names::SIDECAR_CONTAINER) {
        for var in sidecar.env.iter_mut().flatten().filter(|v| v.name == TOKEN_FILE_ENV) {
            var.name = "SPAWNER_CLAIM_KEY_FILE".into();
            var.value = Some(format!("{TOKEN_MOUNT_PATH}/{}", crate::controllers::secret::CLAIM_KEY));
        }
    }
}

fn sidecar_container(app_port: i32, token: bool, config: &SidecarConfig) -> Container {
    let mut env = vec![env_var("SPAWNER_APP_PORT", app_port.to_string())];
    let mut volume_mounts = None;
    if token {
        env.push(env_var(TOKEN_FILE_ENV, format!("{TOKEN_MOUNT_PATH}/{}", crate::controllers::secret::TOKEN_KEY)));
        volume_mounts = Some(vec![VolumeMount {
            name: TOKEN_VOLUME.to_string(),
            mount_path: TOKEN_MOUNT_PATH.to_string(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]);
    }
    Container {
        name: names::SIDECAR_CONTAINER.to_string(),
        image: Some(config.image.clone()),
        image_pull_policy: Some("IfNotPresent".to_string()),
        env: Some(env),
        ports: Some(vec![
            port("proxy", names::SIDECAR_PROXY_PORT.into()),
            port("admin", names::SIDECAR_ADMIN_PORT.into()),
        ]),
        readiness_probe: Some(admin_probe("/readyz", 1)),
        liveness_probe: Some(admin_probe("/healthz", 10)),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(SIDECAR_UID),
            run_as_group: Some(SIDECAR_UID),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_string()]), add: None }),
            // With the above, what Pod Security's `restricted` level asks of every container.
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".to_string(), localhost_profile: None }),
            ..SecurityContext::default()
        }),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("10m".to_string())),
                ("memory".to_string(), Quantity("16Mi".to_string())),
            ])),
            limits: Some(BTreeMap::from([("memory".to_string(), Quantity("64Mi".to_string()))])),
            ..ResourceRequirements::default()
        }),
        volume_mounts,
        ..Container::default()
    }
}

fn admin_probe(path: &str, period_seconds: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::Int(names::SIDECAR_ADMIN_PORT.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        // A readiness probe that fails once should not flap the backend to not-Ready; the
        // liveness probe restarts nothing (restartPolicy Never) but marks a wedged sidecar.
        failure_threshold: Some(3),
        timeout_seconds: Some(1),
        ..Probe::default()
    }
}

fn env_var(name: &str, value: String) -> EnvVar {
    EnvVar { name: name.to_string(), value: Some(value), value_from: None }
}

fn port(name: &str, number: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_string()),
        container_port: number,
        protocol: Some("TCP".to_string()),
        ..ContainerPort::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::fixtures::{BackendExt, PodExt, at};
    use crate::controllers::status::{PodView, derive_status};

    #[test]
    fn a_trimmed_pod_gives_the_same_status_as_the_whole_pod() {
        let backend = SessionLivedBackend::test();
        // The fixture's states, each on the whole spec of a real pod (the sidecar injected).
        let whole = |pod: Pod| {
            let fixture = pod.spec.clone().unwrap_or_default();
            let mut spec = build_pod(&backend, &SidecarConfig::default()).spec.unwrap();
            spec.node_name = fixture.node_name;
            spec.init_containers.get_or_insert_default().extend(fixture.init_containers.unwrap_or_default());
            Pod { spec: Some(spec), ..pod }
        };
        let pods = [
            Pod::test(),
            Pod::test().unschedulable("0/1 nodes are available"),
            Pod::test().scheduled_to("node-1").app_waiting("ImagePullBackOff"),
            Pod::test().scheduled_to("node-1").running().init_waiting("setup", "CrashLoopBackOff"),
            Pod::test().scheduled_to("node-1").running().ready(),
            Pod::test().scheduled_to("node-1").running().app_terminated(1, "Error").phase("Failed"),
        ];
        let status = |pod: &Pod| derive_status(&backend, PodView::Exists(pod), at(1010), "http://proxy");
        for pod in pods.map(whole) {
            let mut trimmed = pod.clone();
            trimmed.trim();
            let spec = trimmed.spec.as_ref().unwrap();
            assert!(spec.volumes.is_none() && spec.containers.is_empty(), "all but the node is dropped");
            assert_eq!(status(&trimmed), status(&pod), "{pod:?}");
        }
    }

    fn sidecar(pod: &Pod) -> Option<&Container> {
        pod.spec.as_ref()?.containers.iter().find(|c| c.name == names::SIDECAR_CONTAINER)
    }

    fn env<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
        c.env.as_ref()?.iter().find(|e| e.name == name)?.value.as_deref()
    }

    #[test]
    fn the_pod_tells_the_sweeper_its_grace_period_and_only_when_it_has_a_sidecar() {
        let mut backend = SessionLivedBackend::test();
        backend.spec.grace_period_seconds = 42;
        let pod = build_pod(&backend, &SidecarConfig::default());
        let annotations = pod.metadata.annotations.unwrap();
        assert_eq!(annotations[names::GRACE_PERIOD_ANNOTATION], "42");
        // And the sweeper reads it back as that grace period.
        let mut seen = build_pod(&backend, &SidecarConfig::default());
        seen.status =
            Some(k8s_openapi::api::core::v1::PodStatus { pod_ip: Some("10.244.0.9".into()), ..Default::default() });
        match crate::sweeper::pods::classify(&seen) {
            crate::sweeper::pods::PodView::Follow { grace, .. } => {
                assert_eq!(grace, Some(std::time::Duration::from_secs(42)))
            }
            other => panic!("the sweeper does not follow the pod: {other:?}"),
        }
        let without = build_pod(&SessionLivedBackend::test().without_sidecar(), &SidecarConfig::default());
        assert!(without.metadata.annotations.is_none(), "nothing sweeps a backend without a sidecar");
    }

    #[test]
    fn the_pod_carries_the_backends_name_labels_and_controller_owner_reference() {
        let backend = SessionLivedBackend::test();
        let pod = build_pod(&backend, &SidecarConfig::default());
        assert_eq!(pod.metadata.name.as_deref(), Some("game"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("room"));
        let labels = pod.metadata.labels.unwrap();
        assert_eq!(labels[names::MANAGED_BY_LABEL], "spawner");
        assert_eq!(labels[names::BACKEND_LABEL], "game");
        let owner = &pod.metadata.owner_references.unwrap()[0];
        assert_eq!(owner.kind, "SessionLivedBackend");
        assert_eq!(owner.uid, "uid-game");
        assert_eq!(owner.controller, Some(true));
        assert_eq!(owner.block_owner_deletion, Some(true));
    }

    #[test]
    fn the_app_gets_port_and_the_pod_never_restarts() {
        let pod = build_pod(&SessionLivedBackend::test().http_port(3000), &SidecarConfig::default());
        let spec = pod.spec.unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.containers[0].name, "app");
        assert_eq!(env(&spec.containers[0], "PORT"), Some("3000"));
    }

    #[test]
    fn a_cold_pod_carries_its_session_and_a_warm_pod_none_until_claimed() {
        let mut backend = SessionLivedBackend::test();
        backend.spec.values = BTreeMap::from([("ROOM".to_string(), "blue".to_string())]);
        backend.metadata.annotations =
            Some(BTreeMap::from([(crate::client::names::CONNECT_KEY_ANNOTATION.to_string(), "doc 42".to_string())]));
        let mut pod = build_pod(&backend, &SidecarConfig::default());
        let spec = pod.spec.as_ref().unwrap();
        let expected =
            serde_json::json!({"namespace": "room", "backend": "game", "key": "doc 42", "values": {"ROOM": "blue"}});
        for container in [&spec.containers[0], sidecar(&pod).unwrap()] {
            let session: serde_json::Value = serde_json::from_str(env(container, SESSION_ENV).unwrap()).unwrap();
            assert_eq!(session, expected, "{}", container.name);
        }
        expect_claim(&mut pod);
        for container in &pod.spec.as_ref().unwrap().containers {
            assert_eq!(env(container, SESSION_ENV), None, "{}", container.name);
        }
    }

    #[test]
    fn a_port_set_by_the_user_is_replaced_not_duplicated() {
        let mut backend = SessionLivedBackend::test();
        backend.spec.template.as_mut().unwrap().containers[0].env =
            Some(vec![env_var("PORT", "1".into()), env_var("X", "y".into())]);
        let pod = build_pod(&backend, &SidecarConfig::default());
        let app_env = pod.spec.unwrap().containers[0].env.clone().unwrap();
        assert_eq!(app_env.iter().filter(|e| e.name == "PORT").count(), 1);
        assert!(app_env.iter().any(|e| e.name == "X"));
    }

    #[test]
    fn the_sidecar_is_injected_hardened_and_probed_on_its_admin_port() {
        let config = SidecarConfig { image: "example/sidecar:1".into() };
        let pod = build_pod(&SessionLivedBackend::test().auth_none(), &config);
        let sidecar = sidecar(&pod).expect("sidecar injected");
        assert_eq!(sidecar.image.as_deref(), Some("example/sidecar:1"));
        assert_eq!(env(sidecar, "SPAWNER_APP_PORT"), Some("8080"));
        assert_eq!(env(sidecar, "SPAWNER_TOKEN_FILE"), None);
        let ports: Vec<i32> = sidecar.ports.as_ref().unwrap().iter().map(|p| p.container_port).collect();
        assert_eq!(ports, vec![9080, 9081]);
        let readiness = sidecar.readiness_probe.as_ref().unwrap();
        let get = readiness.http_get.as_ref().unwrap();
        assert_eq!((get.path.as_deref(), &get.port), (Some("/readyz"), &IntOrString::Int(9081)));
        assert_eq!(readiness.period_seconds, Some(1));
        let liveness = sidecar.liveness_probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(liveness.path.as_deref(), Some("/healthz"));
        let security = sidecar.security_context.as_ref().unwrap();
        assert_eq!(security.run_as_user, Some(65532));
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(security.capabilities.as_ref().unwrap().drop, Some(vec!["ALL".to_string()]));
        assert_eq!(security.seccomp_profile.as_ref().map(|p| p.type_.as_str()), Some("RuntimeDefault"));
        assert!(pod.spec.unwrap().volumes.is_none(), "no token volume without auth");
    }

    #[test]
    fn with_token_auth_the_sidecar_reads_the_token_from_the_mounted_secret() {
        let pod = build_pod(&SessionLivedBackend::test(), &SidecarConfig::default());
        let sidecar = sidecar(&pod).unwrap();
        assert_eq!(env(sidecar, "SPAWNER_TOKEN_FILE"), Some("/var/run/secrets/spawner/token/token"));
        let mount = &sidecar.volume_mounts.as_ref().unwrap()[0];
        assert_eq!((mount.mount_path.as_str(), mount.read_only), (TOKEN_MOUNT_PATH, Some(true)));
        let volumes = pod.spec.as_ref().unwrap().volumes.as_ref().unwrap();
        let secret = volumes.iter().find(|v| v.name == mount.name).unwrap().secret.as_ref().unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("game"));
        let app = &pod.spec.as_ref().unwrap().containers[0];
        assert!(app.volume_mounts.is_none(), "the app never sees the token");
    }

    #[test]
    fn without_the_sidecar_the_pod_is_the_template_plus_port() {
        let pod = build_pod(&SessionLivedBackend::test().without_sidecar(), &SidecarConfig::default());
        assert!(sidecar(&pod).is_none());
        assert_eq!(pod.spec.unwrap().containers.len(), 1);
    }

    #[test]
    fn the_pod_is_labelled_with_its_egress_and_the_service_does_not_select_by_it() {
        let mut backend = SessionLivedBackend::test();
        backend.spec.shape.egress = crate::crd::Egress::None;
        let pod = build_pod(&backend, &SidecarConfig::default());
        assert_eq!(pod.metadata.labels.unwrap()[names::EGRESS_LABEL], "None");
        let selector = crate::controllers::service::build_service(&backend).spec.unwrap().selector.unwrap();
        assert!(!selector.contains_key(names::EGRESS_LABEL));
    }

    #[test]
    fn without_the_sidecar_the_app_port_gets_the_name_the_ingress_policy_opens() {
        let app_ports = |backend: &SessionLivedBackend| -> Vec<(Option<String>, i32)> {
            let pod = build_pod(backend, &SidecarConfig::default());
            let app = &pod.spec.unwrap().containers[0];
            app.ports.iter().flatten().map(|p| (p.name.clone(), p.container_port)).collect()
        };
        let named = Some(names::APP_PORT_NAME.to_string());
        let backend = SessionLivedBackend::test().without_sidecar().http_port(3000);
        assert_eq!(app_ports(&backend), vec![(named.clone(), 3000)]);

        // The template's own unnamed entry for the port is named; a named one is left alone.
        let mut unnamed = backend.clone();
        unnamed.spec.template.as_mut().unwrap().containers[0].ports = Some(vec![port_entry(None, 3000)]);
        assert_eq!(app_ports(&unnamed), vec![(named.clone(), 3000)]);
        let mut other_name = backend.clone();
        other_name.spec.template.as_mut().unwrap().containers[0].ports = Some(vec![port_entry(Some("web"), 3000)]);
        assert_eq!(app_ports(&other_name), vec![(Some("web".into()), 3000), (named, 3000)]);

        // With the sidecar, the policy opens the sidecar's port: the app's ports are untouched.
        assert_eq!(app_ports(&SessionLivedBackend::test()), vec![]);
    }

    fn port_entry(name: Option<&str>, number: i32) -> ContainerPort {
        ContainerPort { name: name.map(String::from), container_port: number, ..ContainerPort::default() }
    }
}
