//! Layout of config/: which objects go in which file, and the kustomizations tying them together.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde_json::json;
use spawner::names::SYSTEM_NAMESPACE;

use super::{Tree, rbac, workloads};

/// Any manifest object, already serialized (k8s-openapi writes apiVersion and kind itself).
#[derive(Serialize)]
#[serde(transparent)]
pub struct Object(serde_json::Value);

impl Object {
    pub fn new<T: Serialize>(object: T) -> Self {
        Object(serde_json::to_value(object).expect("k8s objects serialize"))
    }
}

/// Metadata with Spawner's standard labels.
pub fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(Into::into),
        labels: Some(labels(name)),
        ..Default::default()
    }
}

/// Labels of Spawner's own objects. Not `managed-by: spawner`: that label marks the backends'
/// pods, which the sweeper selects by it.
pub fn labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), name.to_string()),
        ("app.kubernetes.io/part-of".to_string(), "spawner".to_string()),
    ])
}

fn kustomization(resources: &[&str], extra: serde_json::Value) -> serde_json::Value {
    let mut k = json!({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": resources,
    });
    if let serde_json::Value::Object(extra) = extra {
        k.as_object_mut().unwrap().extend(extra);
    }
    k
}

pub fn render(tree: &mut Tree) {
    tree.yaml("config/crd/sessionlivedbackends.spawner.dev.yaml", &[spawner::crd::crd()]);
    tree.yaml("config/crd/sessionlivedbackendpools.spawner.dev.yaml", &[spawner::crd::pool_crd()]);
    tree.yaml(
        "config/crd/kustomization.yaml",
        &[kustomization(
            &["sessionlivedbackends.spawner.dev.yaml", "sessionlivedbackendpools.spawner.dev.yaml"],
            json!({}),
        )],
    );

    tree.yaml("config/rbac/service_accounts.yaml", &rbac::service_accounts());
    tree.yaml("config/rbac/roles.yaml", &rbac::roles());
    tree.yaml("config/rbac/kustomization.yaml", &[kustomization(&["service_accounts.yaml", "roles.yaml"], json!({}))]);

    tree.yaml("config/manager/controller.yaml", &[workloads::controller()]);
    tree.yaml("config/manager/kustomization.yaml", &[kustomization(&["controller.yaml"], json!({}))]);

    tree.yaml("config/sweeper/sweeper.yaml", &[workloads::sweeper()]);
    tree.yaml("config/sweeper/kustomization.yaml", &[kustomization(&["sweeper.yaml"], json!({}))]);

    tree.yaml("config/proxy/proxy.yaml", &workloads::proxy());
    tree.yaml("config/proxy/kustomization.yaml", &[kustomization(&["proxy.yaml"], json!({}))]);

    tree.yaml("config/api/api.yaml", &workloads::api());
    tree.yaml("config/api/kustomization.yaml", &[kustomization(&["api.yaml"], json!({}))]);

    tree.yaml(
        "config/default/namespace.yaml",
        &[Namespace { metadata: meta(SYSTEM_NAMESPACE, None), ..Default::default() }],
    );
    let images: Vec<_> = ["controller", "sweeper", "nginx", "api"]
        .iter()
        .map(|c| {
            let image = spawner::names::image(c);
            let (name, tag) = image.rsplit_once(':').unwrap();
            json!({"name": name, "newName": name, "newTag": tag})
        })
        .collect();
    tree.yaml(
        "config/default/kustomization.yaml",
        &[kustomization(
            &["namespace.yaml", "../crd", "../rbac", "../manager", "../sweeper", "../proxy", "../api"],
            json!({
                "namespace": SYSTEM_NAMESPACE,
                // Registries differ between kind, the local cluster and a release: override the
                // image names here (`kustomize edit set image`) rather than in the workloads.
                "images": images,
            }),
        )],
    );

    tree.yaml("config/samples/drop-four.yaml", &[workloads::sample_backend()]);
    tree.yaml("config/samples/pool.yaml", &[workloads::sample_pool()]);
    tree.yaml("config/samples/lobby.yaml", &workloads::sample_lobby());
    tree.yaml("config/samples/kustomization.yaml", &[kustomization(&["drop-four.yaml"], json!({}))]);
}
