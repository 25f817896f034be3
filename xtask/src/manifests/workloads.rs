//! Spawner's own workloads: the controller Deployment, the sweeper DaemonSet and the nginx
//! reverse proxy, all hardened the same way (non-root, read-only root, no capabilities).

use std::collections::BTreeMap;

use sha2::Digest as _;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec, Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapProjection, ConfigMapVolumeSource, Container, ContainerPort,
    DownwardAPIProjection, DownwardAPIVolumeFile, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath,
    ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ProjectedVolumeSource,
    ResourceRequirements, SeccompProfile, SecretKeySelector, SecretVolumeSource, SecurityContext, Service,
    ServiceAccountTokenProjection, ServicePort, ServiceSpec, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use spawner::crd::{
    SessionLivedBackend, SessionLivedBackendPool, SessionLivedBackendPoolSpec, SessionLivedBackendSpec,
};
use spawner::names::{self, SYSTEM_NAMESPACE};
use spawner::proxy_config;

use super::objects::{Object, labels, meta};

/// Port of the controller's /metrics, /healthz and /readyz.
pub const CONTROLLER_HTTP_PORT: i32 = 8080;
/// Port of the sweeper's /metrics and /healthz.
pub const SWEEPER_HTTP_PORT: i32 = 8081;
/// Port nginx listens on inside its pod.
pub const PROXY_PORT: i32 = proxy_config::LISTEN_PORT as i32;
/// Port of the router's /metrics, /healthz and /readyz (its lookups stay on the pod's loopback).
pub const ROUTER_HTTP_PORT: i32 = 8081;
/// Port of spawner-api (the API, /healthz, /readyz and /metrics).
pub const API_PORT: i32 = 8090;
/// NodePort of the reverse proxy: kind maps it to the host, the local cluster reaches it directly.
pub const PROXY_NODE_PORT: i32 = 30080;
/// Where users reach the reverse proxy; backends' status URLs start with it.
pub const PROXY_BASE_URL: &str = "http://127.0.0.1:30080";

/// The Secret holding the controller's claim key, which `cargo xtask deploy` creates.
pub const CLAIM_KEY_SECRET: &str = "spawner-claim-key";
/// Its key, and where the controller reads it.
pub const CLAIM_KEY_FILE: &str = "key";
const CLAIM_KEY_DIR: &str = "/var/run/secrets/spawner/claim-key";

/// Unprivileged user of every Spawner container (the distroless "nonroot" uid).
const NONROOT_UID: i64 = 65532;

pub fn controller() -> Object {
    let name = names::CONTROLLER;
    let container = Container {
        args: Some(vec![
            format!("--base-url={PROXY_BASE_URL}"),
            format!("--sidecar-image={}", names::image("sidecar")),
            format!("--metrics-addr=0.0.0.0:{CONTROLLER_HTTP_PORT}"),
            "--log-format=json".into(),
        ]),
        env: Some(
            [
                field_env("POD_NAME", "metadata.name"),
                field_env("POD_NAMESPACE", "metadata.namespace"),
                value_env("SPAWNER_CLAIM_KEY_FILE", &format!("{CLAIM_KEY_DIR}/{CLAIM_KEY_FILE}")),
            ]
            .into_iter()
            .chain(spawner::controllers::PROCESS_ENV.iter().map(|(name, value)| value_env(name, value)))
            .collect(),
        ),
        volume_mounts: Some(vec![VolumeMount {
            name: "claim-key".into(),
            mount_path: CLAIM_KEY_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        }]),
        // Memory grows with the backends it caches: under 20 MiB per 1,000 (`cargo xtask bench
        // scale`); the limit leaves room for about 40,000. See the README's "Scale".
        ..serving("controller", ("http", CONTROLLER_HTTP_PORT, "/readyz"), ("50m", "128Mi"), ("1", "1Gi"))
    };
    // Leader election makes a second replica safe; one is enough to start with.
    Object::new(deployment(
        name,
        PodSpec {
            service_account_name: Some(name.into()),
            containers: vec![container],
            // The key warm pods' claim keys are derived from, the same for every replica
            // and restart (`cargo xtask deploy` creates it). Optional: without it each
            // controller process draws its own, and replaces the warm pods it cannot claim.
            volumes: Some(vec![Volume {
                name: "claim-key".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(CLAIM_KEY_SECRET.into()),
                    optional: Some(true),
                    // The controller runs as a uid that does not own the files.
                    default_mode: Some(0o444),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..hardened_pod()
        },
    ))
}

pub fn sweeper() -> Object {
    let name = names::SWEEPER;
    let container = Container {
        args: Some(vec![format!("--metrics-addr=0.0.0.0:{SWEEPER_HTTP_PORT}"), "--log-format=json".into()]),
        env: Some(vec![field_env("NODE_NAME", "spec.nodeName")]),
        ..serving("sweeper", ("http", SWEEPER_HTTP_PORT, "/healthz"), ("10m", "16Mi"), ("500m", "64Mi"))
    };
    Object::new(DaemonSet {
        metadata: meta(name, Some(SYSTEM_NAMESPACE)),
        spec: Some(DaemonSetSpec {
            selector: selector(name),
            template: pod_template(
                name,
                PodSpec { service_account_name: Some(name.into()), containers: vec![container], ..hardened_pod() },
            ),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// nginx in front of every backend, with spawner-router beside it in the same pod: ConfigMap
/// (nginx's config), Deployment, NodePort Service.
pub fn proxy() -> Vec<Object> {
    let name = names::PROXY;
    let nginx_conf = proxy_config::nginx_conf(&proxy_config::ProxyConfig::default());
    let config = ConfigMap {
        metadata: meta(name, Some(SYSTEM_NAMESPACE)),
        data: Some(BTreeMap::from([(proxy_config::CONFIG_KEY.to_string(), nginx_conf.clone())])),
        ..Default::default()
    };
    let container = Container {
        args: Some(proxy_config::NGINX_ARGS.iter().map(|a| a.to_string()).collect()),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "config".into(),
                mount_path: proxy_config::CONFIG_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount { name: "tmp".into(), mount_path: "/tmp".into(), ..Default::default() },
        ]),
        ..serving("nginx", ("http", PROXY_PORT, "/healthz"), ("50m", "32Mi"), ("1", "256Mi"))
    };
    let router = Container {
        args: Some(vec![
            format!("--route-addr=127.0.0.1:{}", proxy_config::ROUTER_PORT),
            format!("--metrics-addr=0.0.0.0:{ROUTER_HTTP_PORT}"),
            "--log-format=json".into(),
        ]),
        volume_mounts: Some(vec![VolumeMount {
            name: "api-token".into(),
            mount_path: SERVICE_ACCOUNT_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        }]),
        // Not Ready (so the proxy takes no traffic) until the first list of backends is in.
        ..serving("router", ("metrics", ROUTER_HTTP_PORT, "/readyz"), ("20m", "32Mi"), ("1", "256Mi"))
    };
    let mut deployment = deployment(
        name,
        PodSpec {
            // The router watches backends; nginx never talks to the API server, so the
            // token is mounted into the router's container only (`api-token`).
            service_account_name: Some(name.into()),
            automount_service_account_token: Some(false),
            containers: vec![container, router],
            volumes: Some(vec![
                Volume {
                    name: "config".into(),
                    config_map: Some(ConfigMapVolumeSource { name: name.into(), ..Default::default() }),
                    ..Default::default()
                },
                Volume { name: "tmp".into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Default::default() },
                service_account_volume("api-token"),
            ]),
            ..hardened_pod()
        },
    );
    // nginx reads its config once: a changed config must roll the pods, which a changed
    // ConfigMap alone does not. Its digest in the pod template does.
    let digest: String =
        sha2::Sha256::digest(nginx_conf.as_bytes()).iter().take(8).map(|b| format!("{b:02x}")).collect();
    let template = deployment.spec.as_mut().and_then(|s| s.template.metadata.as_mut()).expect("a pod template");
    template.annotations = Some(BTreeMap::from([("spawner.dev/nginx-conf".to_string(), digest)]));
    let service = service(name, Some(SYSTEM_NAMESPACE), Some(PROXY_NODE_PORT));
    vec![Object::new(config), Object::new(deployment), Object::new(service)]
}

/// The HTTP API for web applications: Deployment and ClusterIP Service (nginx routes `/api/`
/// to it). It serves the namespaces its keys grant, each bound by `spawner api-key create`.
pub fn api() -> Vec<Object> {
    let name = names::API;
    let container = Container {
        args: Some(vec![format!("--addr=0.0.0.0:{API_PORT}"), "--log-format=json".into()]),
        // Not Ready until the backends and the keys are loaded: before, every key is unknown.
        ..serving("api", ("http", API_PORT, "/readyz"), ("20m", "32Mi"), ("1", "256Mi"))
    };
    let deployment = deployment(
        name,
        PodSpec { service_account_name: Some(name.into()), containers: vec![container], ..hardened_pod() },
    );
    let service = service(name, Some(SYSTEM_NAMESPACE), None);
    vec![Object::new(deployment), Object::new(service)]
}

/// The drop-four demo as a backend: `kubectl create -f config/samples/drop-four.yaml`.
pub fn sample_backend() -> Object {
    let spec: SessionLivedBackendSpec = serde_json::from_value(serde_json::json!({
        "gracePeriodSeconds": 300,
        "template": {"containers": [{"name": "application", "image": names::image("demo-drop-four")}]},
    }))
    .expect("sample spec deserializes");
    let mut backend = SessionLivedBackend::new("", spec);
    backend.metadata = ObjectMeta { generate_name: Some("drop-four-".into()), ..Default::default() };
    Object::new(backend)
}

/// Name of the demo's pool (`config/samples/pool.yaml`), which `cargo xtask deploy` creates.
pub const DEMO_POOL: &str = "drop-four";

/// The demo pool's grace period: a demo room is over a minute after its players leave.
pub const DEMO_POOL_GRACE_SECONDS: i64 = 60;

/// A pool of warm drop-four pods: `kubectl apply -f config/samples/pool.yaml`, then
/// `spawner create --pool drop-four --wait`.
pub fn sample_pool() -> Object {
    let spec: SessionLivedBackendPoolSpec = serde_json::from_value(serde_json::json!({
        "size": 2,
        "gracePeriodSeconds": DEMO_POOL_GRACE_SECONDS,
        "template": {"containers": [{"name": "application", "image": names::image("demo-drop-four")}]},
    }))
    .expect("sample pool spec deserializes");
    Object::new(SessionLivedBackendPool::new(DEMO_POOL, spec))
}

/// Name of the demo's lobby (Deployment, Service, and the Secret with its API key).
pub const LOBBY: &str = "drop-four-lobby";
/// The Secret holding the lobby's API key (`cargo xtask deploy` makes it).
pub const LOBBY_KEY_SECRET: &str = "drop-four-lobby-api-key";
/// NodePort of the lobby.
pub const LOBBY_NODE_PORT: i32 = 30081;

/// The drop-four lobby, a web application over spawner-api: `cargo xtask deploy` applies it to
/// `default` with an API key for the demo's pool.
pub fn sample_lobby() -> Vec<Object> {
    let container = Container {
        env: Some(vec![
            EnvVar {
                name: "SPAWNER_API_KEY".into(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: LOBBY_KEY_SECRET.into(),
                        key: "key".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
            value_env("SPAWNER_POOL", DEMO_POOL),
            field_env("SPAWNER_NAMESPACE", "metadata.namespace"),
            value_env("LOG_FORMAT", "json"),
        ]),
        ..serving("demo-lobby", ("http", 8080, "/healthz"), ("10m", "16Mi"), ("500m", "64Mi"))
    };
    let mut deployment = deployment(LOBBY, PodSpec { containers: vec![container], ..hardened_pod() });
    deployment.metadata.namespace = None;
    let service = service(LOBBY, None, Some(LOBBY_NODE_PORT));
    vec![Object::new(deployment), Object::new(service)]
}

/// Where in-cluster clients (kube's `Client::try_default`) look for the API credentials.
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// What `automountServiceAccountToken` would mount, as a volume for one container: a bound token,
/// the cluster's CA and the namespace.
fn service_account_volume(name: &str) -> Volume {
    let file = |key: &str| KeyToPath { key: key.into(), path: key.into(), ..Default::default() };
    Volume {
        name: name.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![
                VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        path: "token".into(),
                        expiration_seconds: Some(3607),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: "kube-root-ca.crt".into(),
                        items: Some(vec![file("ca.crt")]),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    downward_api: Some(DownwardAPIProjection {
                        items: Some(vec![DownwardAPIVolumeFile {
                            path: "namespace".into(),
                            field_ref: Some(ObjectFieldSelector {
                                field_path: "metadata.namespace".into(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }]),
                    }),
                    ..Default::default()
                },
            ]),
            // Readable by the container's non-root user.
            default_mode: Some(0o444),
        }),
        ..Default::default()
    }
}

/// The Service of workload `name`: port 80 to its port named `http`; a NodePort when
/// `node_port` is given, else a ClusterIP.
fn service(name: &str, namespace: Option<&str>, node_port: Option<i32>) -> Service {
    Service {
        metadata: meta(name, namespace),
        spec: Some(ServiceSpec {
            type_: node_port.map(|_| "NodePort".into()),
            selector: Some(selector_labels(name)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(IntOrString::String("http".into())),
                node_port,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// One replica of a pod in Spawner's namespace.
fn deployment(name: &str, pod: PodSpec) -> Deployment {
    Deployment {
        metadata: meta(name, Some(SYSTEM_NAMESPACE)),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: selector(name),
            template: pod_template(name, pod),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pod_template(name: &str, spec: PodSpec) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta { labels: Some(labels(name)), ..Default::default() }),
        spec: Some(spec),
    }
}

fn selector_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("app.kubernetes.io/name".to_string(), name.to_string())])
}

fn selector(name: &str) -> LabelSelector {
    LabelSelector { match_labels: Some(selector_labels(name)), ..Default::default() }
}

fn hardened_pod() -> PodSpec {
    PodSpec {
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(NONROOT_UID),
            run_as_group: Some(NONROOT_UID),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
            ..Default::default()
        }),
        termination_grace_period_seconds: Some(30),
        ..Default::default()
    }
}

/// A hardened container of Spawner's image `component`, serving its probes on one port: liveness
/// on `/healthz`, readiness on the path given; with its resource requests and limits
/// (cpu, memory).
fn serving(
    component: &str,
    (port_name, number, ready): (&str, i32, &str),
    requests: (&str, &str),
    limits: (&str, &str),
) -> Container {
    Container {
        name: component.into(),
        image: Some(names::image(component)),
        ports: Some(vec![port(port_name, number)]),
        liveness_probe: Some(http_probe("/healthz", number)),
        readiness_probe: Some(http_probe(ready, number)),
        resources: Some(resources(requests, limits)),
        ..hardened()
    }
}

fn hardened() -> Container {
    Container {
        image_pull_policy: Some("IfNotPresent".into()),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn resources(requests: (&str, &str), limits: (&str, &str)) -> ResourceRequirements {
    let pair = |(cpu, memory): (&str, &str)| {
        BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.to_string())),
            ("memory".to_string(), Quantity(memory.to_string())),
        ])
    };
    ResourceRequirements { requests: Some(pair(requests)), limits: Some(pair(limits)), ..Default::default() }
}

fn http_probe(path: &str, port: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction { path: Some(path.into()), port: IntOrString::Int(port), ..Default::default() }),
        period_seconds: Some(5),
        ..Default::default()
    }
}

fn port(name: &str, port: i32) -> ContainerPort {
    ContainerPort { name: Some(name.into()), container_port: port, ..Default::default() }
}

fn value_env(name: &str, value: &str) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), ..Default::default() }
}

fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: field_path.into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    }
}
