use super::*;

const ORIGINAL_DEMO: &str = include_str!("../../tests/fixtures/original-demo.yaml");

#[test]
fn the_original_spawner_demo_manifest_parses_into_the_rust_type() {
    let backend: SessionLivedBackend = serde_yaml::from_str(ORIGINAL_DEMO).unwrap();
    assert_eq!(backend.metadata.generate_name.as_deref(), Some("drop-four-"));
    assert_eq!(backend.spec.grace_period_seconds, 300);
    assert_eq!(backend.spec.http_port, DEFAULT_HTTP_PORT);
    assert_eq!(backend.spec.template.as_ref().unwrap().containers.len(), 1);
    assert_eq!(backend.spec.template.as_ref().unwrap().containers[0].name, "application");
    assert!(backend.spec.shape.sidecar.inject);
    assert_eq!(backend.spec.shape.auth.mode, AuthMode::Token);
    assert_eq!(backend.spec.max_lifetime_seconds, None);
}

#[test]
fn the_crd_identity_matches_the_original_spawner() {
    let crd = crd();
    assert_eq!(crd.metadata.name.as_deref(), Some("sessionlivedbackends.spawner.dev"));
    assert_eq!(crd.spec.group, "spawner.dev");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.kind, "SessionLivedBackend");
    assert_eq!(crd.spec.names.short_names, Some(vec!["slab".to_string()]));
    assert_eq!(crd.spec.names.categories, Some(vec!["spawner".to_string()]));
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1");
    assert!(version.subresources.as_ref().unwrap().status.is_some());
}

#[test]
fn the_crd_fits_the_client_side_apply_annotation() {
    // kubectl apply (client side) stores the whole object in an annotation capped at 256 KiB.
    let json = serde_json::to_vec(&crd()).unwrap();
    assert!(json.len() < 128 * 1024, "CRD is {} bytes", json.len());
}

#[test]
fn the_crd_schema_is_pinned() {
    insta::assert_yaml_snapshot!("crd", crd());
}

#[test]
fn an_unset_startup_timeout_is_300_seconds_or_the_max_lifetime_when_shorter() {
    let spec = |json: serde_json::Value| -> SessionLivedBackendSpec {
        let mut json = json;
        json["template"] = serde_json::json!({"containers": [{"name": "app", "image": "i"}]});
        serde_json::from_value(json).unwrap()
    };
    assert_eq!(spec(serde_json::json!({})).effective_startup_timeout_seconds(), 300);
    assert_eq!(spec(serde_json::json!({"maxLifetimeSeconds": 20})).effective_startup_timeout_seconds(), 20);
    assert_eq!(spec(serde_json::json!({"maxLifetimeSeconds": 3600})).effective_startup_timeout_seconds(), 300);
    let set = spec(serde_json::json!({"startupTimeoutSeconds": 10, "maxLifetimeSeconds": 20}));
    assert_eq!(set.effective_startup_timeout_seconds(), 10, "a timeout the user set is kept");
}
