//! The generated manifests against a real kube-apiserver: the CRD is accepted, admission
//! rejects bad specs naming the field, config/default passes server-side dry-run, the generated
//! RBAC is what binds, and garbage collection of owned objects works.

use std::time::Duration;

use k8s_openapi::api::authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::runtime::wait::conditions;
use spawner::crd::SessionLivedBackend;
use spawner::names::SYSTEM_NAMESPACE;
use spawner::rbac::{Permission, Role, Scope};

use crate::support::{self, TestEnv};

fn dry_run() -> PostParams {
    PostParams { dry_run: true, ..Default::default() }
}

fn backend_from_yaml(yaml: &str) -> SessionLivedBackend {
    serde_yaml::from_str(yaml).expect("test manifest parses")
}

async fn admission_error(env: &TestEnv, manifest: serde_json::Value) -> String {
    // Sent as raw JSON so invalid values reach the API server as written.
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
        env.client.clone(),
        &env.namespace,
        &kube::api::ApiResource::erase::<SessionLivedBackend>(&()),
    );
    let obj: kube::api::DynamicObject = serde_json::from_value(manifest).unwrap();
    match api.create(&dry_run(), &obj).await {
        Ok(_) => panic!("the API server accepted an invalid backend"),
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            status.message
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
}

fn backend_json(spec: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "spawner.dev/v1",
        "kind": "SessionLivedBackend",
        "metadata": {"name": "bad"},
        "spec": spec,
    })
}

fn app() -> serde_json::Value {
    serde_json::json!({"containers": [{"name": "application", "image": "example/app"}]})
}

#[tokio::test]
async fn the_original_demo_is_accepted_and_bad_specs_are_rejected_naming_the_field() {
    let env = TestEnv::new("admission").await;
    support::install_crd(&env.client).await;

    let demo = backend_from_yaml(include_str!("../fixtures/original-demo.yaml"));
    let created = env.api::<SessionLivedBackend>().create(&dry_run(), &demo).await.expect("original demo accepted");
    assert_eq!(created.spec.grace_period_seconds, 300);
    assert_eq!(created.spec.http_port, 8080, "defaults are applied by the API server");

    let cases = [
        (serde_json::json!({"template": app(), "gracePeriodSeconds": -5}), "spec.gracePeriodSeconds"),
        (serde_json::json!({"template": app(), "httpPort": 0}), "spec.httpPort"),
        (serde_json::json!({"template": {"containers": []}}), "spec.template.containers"),
        (serde_json::json!({"template": {}}), "spec.template.containers"),
        (serde_json::json!({"template": app(), "httpPort": 9080}), "spec.httpPort"),
        (
            serde_json::json!({"template": app(), "startupTimeoutSeconds": 600, "maxLifetimeSeconds": 60}),
            "spec.startupTimeoutSeconds",
        ),
        (serde_json::json!({"template": app(), "auth": {"mode": "Sometimes"}}), "spec.auth.mode"),
        (serde_json::json!({"template": app(), "sidecar": {"inject": false}}), "spec.auth.mode"),
        (
            serde_json::json!({"template": {"containers": [{"name": "spawner-sidecar", "image": "x"}]}}),
            "spec.template.containers",
        ),
    ];
    for (spec, field) in cases {
        let message = admission_error(&env, backend_json(spec.clone())).await;
        assert!(message.contains(field), "rejection of {spec} does not name {field}: {message}");
    }
    // A startup timeout the user set above the max lifetime is refused naming both fields.
    let spec = serde_json::json!({"template": app(), "startupTimeoutSeconds": 600, "maxLifetimeSeconds": 60});
    let message = admission_error(&env, backend_json(spec)).await;
    assert!(message.contains("spec.startupTimeoutSeconds") && message.contains("spec.maxLifetimeSeconds"), "{message}");
    // A name that cannot name a Service.
    let mut dotted = backend_json(serde_json::json!({"template": app()}));
    dotted["metadata"]["name"] = "has.dot".into();
    let message = admission_error(&env, dotted).await;
    assert!(message.contains("metadata.name"), "{message}");
}

/// The startup timeout defaults to at most the max lifetime, so a backend that sets only its max
/// lifetime, shorter than the 300 s default, is accepted as written (the default is computed,
/// not stored), and so is one whose startup timeout fits in it.
#[tokio::test]
async fn a_backend_that_sets_only_a_short_max_lifetime_is_accepted() {
    let env = TestEnv::new("lifetime-only").await;
    support::install_crd(&env.client).await;
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
        env.client.clone(),
        &env.namespace,
        &kube::api::ApiResource::erase::<SessionLivedBackend>(&()),
    );
    let lifetime_only = backend_json(serde_json::json!({"template": app(), "maxLifetimeSeconds": 20}));
    let created = api
        .create(&dry_run(), &serde_json::from_value(lifetime_only).unwrap())
        .await
        .expect("a backend with only maxLifetimeSeconds is accepted");
    assert_eq!(created.data["spec"].get("startupTimeoutSeconds"), None, "no default is stored");
    let backend: SessionLivedBackend = serde_json::from_value(serde_json::to_value(&created).unwrap()).unwrap();
    assert_eq!(backend.spec.effective_startup_timeout_seconds(), 20);

    let both =
        backend_json(serde_json::json!({"template": app(), "maxLifetimeSeconds": 60, "startupTimeoutSeconds": 60}));
    api.create(&dry_run(), &serde_json::from_value(both).unwrap()).await.expect("a startup timeout up to the lifetime");
}

/// The pod is the session and is never recreated: edits to what it was made from are refused
/// naming the field, while the lifetime limits (read on every reconcile) may change.
#[tokio::test]
async fn what_the_pod_was_made_from_is_immutable_and_the_lifetime_limits_are_not() {
    let env = TestEnv::new("immutable").await;
    support::install_crd(&env.client).await;
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
        env.client.clone(),
        &env.namespace,
        &kube::api::ApiResource::erase::<SessionLivedBackend>(&()),
    );
    let mut manifest = backend_json(serde_json::json!({"template": app()}));
    manifest["metadata"]["name"] = "kept".into();
    let created = api.create(&PostParams::default(), &serde_json::from_value(manifest).unwrap()).await.unwrap();

    let edits = [
        (
            serde_json::json!({"template": {"containers": [{"name": "application", "image": "example/other"}]}}),
            "spec.template",
        ),
        (serde_json::json!({"gracePeriodSeconds": 60}), "spec.gracePeriodSeconds"),
        (serde_json::json!({"httpPort": 3000}), "spec.httpPort"),
        (serde_json::json!({"auth": {"mode": "None"}}), "spec.auth"),
        (serde_json::json!({"sidecar": {"inject": false}, "auth": {"mode": "None"}}), "spec.sidecar"),
        (serde_json::json!({"service": {"enabled": false}}), "spec.service"),
    ];
    for (spec, field) in edits {
        let patch = kube::api::Patch::Merge(serde_json::json!({ "spec": spec }));
        match api.patch("kept", &kube::api::PatchParams::default(), &patch).await {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{status:?}");
                assert!(
                    status.message.contains(field),
                    "editing {spec} is refused without naming {field}: {}",
                    status.message
                );
            }
            other => panic!("editing {spec} was not refused: {other:?}"),
        }
    }
    let patch =
        kube::api::Patch::Merge(serde_json::json!({"spec": {"maxLifetimeSeconds": 7200, "startupTimeoutSeconds": 60}}));
    let edited =
        api.patch("kept", &kube::api::PatchParams::default(), &patch).await.expect("lifetime limits may change");
    assert_eq!(edited.data["spec"]["maxLifetimeSeconds"], 7200);
    assert_eq!(edited.data["spec"]["template"], created.data["spec"]["template"]);
}

#[tokio::test]
async fn config_default_passes_server_side_dry_run() {
    let env = TestEnv::new("dry-run").await;
    support::install_crd(&env.client).await;
    // The namespace must exist for a server-side dry run of the objects in it.
    env.kubectl(&["apply", "-f", "config/default/namespace.yaml"]);
    let out = std::process::Command::new("kubectl")
        .args(["apply", "--dry-run=server", "-k", "config/default"])
        .current_dir(support::repo_root())
        .env("KUBECONFIG", support::kubeconfig_path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "dry run failed: {}{}", stdout, String::from_utf8_lossy(&out.stderr));
    for object in [
        "customresourcedefinition.apiextensions.k8s.io/sessionlivedbackends.spawner.dev",
        "deployment.apps/spawner-controller",
        "daemonset.apps/spawner-sweeper",
        "deployment.apps/spawner-proxy",
        "service/spawner-proxy",
        "configmap/spawner-proxy",
        "clusterrole.rbac.authorization.k8s.io/spawner-controller",
        "role.rbac.authorization.k8s.io/spawner-controller",
    ] {
        assert!(stdout.contains(object), "{object} missing from the dry run:\n{stdout}");
    }
}

async fn allowed(
    client: &kube::Client,
    namespace: &str,
    p: &spawner::rbac::Permission,
    verb: &str,
    name: Option<&str>,
) -> bool {
    let (resource, subresource) = match p.resource.split_once('/') {
        Some((r, s)) => (r, Some(s.to_string())),
        None => (p.resource, None),
    };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                group: Some(p.group.into()),
                resource: Some(resource.into()),
                subresource,
                verb: Some(verb.into()),
                namespace: Some(namespace.into()),
                name: name.map(String::from),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("access review");
    answer.status.is_some_and(|s| s.allowed)
}

/// Where a permission is checked: the test namespace (cluster-wide ones, and served ones once
/// bound there), or Spawner's own.
fn where_checked(scope: Scope, test_namespace: &str) -> &str {
    match scope {
        Scope::Cluster | Scope::ServedNamespace => test_namespace,
        Scope::SystemNamespace => SYSTEM_NAMESPACE,
    }
}

/// Every verb `role` declares on `p`'s resource in `namespace` for the object `name`: the union
/// of its permissions that apply there.
fn declared<'a>(
    role: &'a Role,
    p: &Permission,
    namespace: &str,
    test_namespace: &str,
    name: Option<&str>,
) -> Vec<&'a str> {
    role.permissions
        .iter()
        .filter(|q| q.group == p.group && q.resource == p.resource)
        .filter(|q| q.scope == Scope::Cluster || where_checked(q.scope, test_namespace) == namespace)
        .filter(|q| q.resource_names.is_empty() || name.is_some_and(|n| q.resource_names.contains(&n)))
        .flat_map(|q| q.verbs.iter().copied())
        .collect()
}

const VERBS: [&str; 8] = ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"];

#[tokio::test]
async fn the_generated_rbac_grants_exactly_the_declared_verbs() {
    let env = TestEnv::new("rbac").await;
    support::install_crd(&env.client).await;
    support::apply_rbac();
    // Served permissions apply where they are bound, as `spawner api-key create` binds them.
    let unserved = format!("{}-unserved", env.namespace);
    for role in spawner::rbac::ROLES.iter().filter(|r| r.permissions.iter().any(|p| p.scope == Scope::ServedNamespace))
    {
        let binding = spawner::rbac::served_binding(role, &env.namespace);
        env.api::<RoleBinding>().create(&PostParams::default(), &binding).await.expect("served binding");
    }

    for role in spawner::rbac::ROLES {
        let client = support::client_as_service_account(SYSTEM_NAMESPACE, role.name).await;
        for p in role.permissions {
            let namespace = where_checked(p.scope, &env.namespace);
            let name = p.resource_names.first().copied();
            let verbs = declared(role, p, namespace, &env.namespace, name);
            for verb in p.verbs {
                assert!(
                    allowed(&client, namespace, p, verb, name).await,
                    "{} may not {verb} {} in {namespace}",
                    role.name,
                    p.resource
                );
            }
            // Every permission is exactly its verbs: the verbs it does not list are refused.
            for verb in VERBS.iter().filter(|v| !verbs.contains(v)) {
                assert!(
                    !allowed(&client, namespace, p, verb, name).await,
                    "{} may {verb} {} in {namespace} but does not declare it",
                    role.name,
                    p.resource
                );
            }
            // A permission on named objects does not reach the others.
            if name.is_some() {
                let others = declared(role, p, namespace, &env.namespace, Some("spawner-claim-key"));
                for verb in VERBS.iter().filter(|v| !others.contains(v)) {
                    assert!(
                        !allowed(&client, namespace, p, verb, Some("spawner-claim-key")).await,
                        "{} may {verb} any {} in {namespace}, not only {:?}",
                        role.name,
                        p.resource,
                        p.resource_names
                    );
                }
            }
            // A served permission does not reach a namespace it is not bound in.
            if p.scope == Scope::ServedNamespace {
                let beyond = declared(role, p, &unserved, &env.namespace, name);
                for verb in p.verbs.iter().filter(|v| !beyond.contains(v)) {
                    assert!(
                        !allowed(&client, &unserved, p, verb, name).await,
                        "{} may {verb} {} in {unserved}, where it is not bound",
                        role.name,
                        p.resource
                    );
                }
            }
        }
    }

    // And for real, not only in reviews: the sweeper lists pods, and is refused Secrets.
    let sweeper = support::client_as_service_account(SYSTEM_NAMESPACE, spawner::names::SWEEPER).await;
    Api::<Pod>::namespaced(sweeper.clone(), &env.namespace)
        .list(&ListParams::default())
        .await
        .expect("sweeper lists pods");
    match Api::<Secret>::namespaced(sweeper, &env.namespace).list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403),
        other => panic!("the sweeper could list secrets: {other:?}"),
    }
}

#[tokio::test]
async fn deleting_an_owner_garbage_collects_what_it_owns() {
    let env = TestEnv::new("gc").await;
    let api = env.api::<ConfigMap>();
    let owner = api
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta { name: Some("owner".into()), ..Default::default() },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let owned = ConfigMap {
        metadata: ObjectMeta {
            name: Some("owned".into()),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                name: "owner".into(),
                uid: owner.metadata.uid.clone().unwrap(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        ..Default::default()
    };
    let owned = api.create(&PostParams::default(), &owned).await.unwrap();
    api.delete("owner", &DeleteParams::background()).await.unwrap();
    let uid = owned.metadata.uid.unwrap();
    support::wait_for(&api, "owned", conditions::is_deleted(&uid), Duration::from_secs(60)).await;
}
