//! `GET /api/v1/openapi.json`: the API described for generators and fuzzers, with every body's
//! schema generated from the Rust types in [`super::types`].

use schemars::generate::SchemaSettings;
use serde_json::{Value, json};

use super::types::{Backend, BackendList, ConnectRequest, CreateRequest, ErrorBody, StateEvent};

/// The OpenAPI 3.0 document.
pub fn document() -> Value {
    let mut generator = SchemaSettings::openapi3().into_generator();
    let schema = |name: &str, value: Value| (name.to_string(), value);
    let mut refs = serde_json::Map::new();
    for (name, value) in [
        schema("ConnectRequest", generator.subschema_for::<ConnectRequest>().to_value()),
        schema("CreateRequest", generator.subschema_for::<CreateRequest>().to_value()),
        schema("Backend", generator.subschema_for::<Backend>().to_value()),
        schema("BackendList", generator.subschema_for::<BackendList>().to_value()),
        schema("StateEvent", generator.subschema_for::<StateEvent>().to_value()),
        schema("ErrorBody", generator.subschema_for::<ErrorBody>().to_value()),
    ] {
        refs.insert(name, value);
    }
    let schemas = generator.take_definitions(true);
    let body = |name: &str| json!({"required": true, "content": {"application/json": {"schema": refs[name]}}});
    let answer = |description: &str, name: &str| json!({"description": description, "content": {"application/json": {"schema": refs[name]}}});
    let errors = |mut responses: serde_json::Map<String, Value>, codes: &[(&str, &str)]| {
        for (code, description) in codes {
            responses.insert((*code).into(), answer(description, "ErrorBody"));
        }
        Value::Object(responses)
    };
    let common = [
        ("400", "Malformed request"),
        ("401", "Missing or unknown API key"),
        ("403", "Namespace or pool outside the key's scope"),
        ("503", "The Kubernetes API is unavailable"),
    ];
    let ok = |code: &str, description: &str, name: &str| {
        let mut map = serde_json::Map::new();
        map.insert(code.into(), answer(description, name));
        map
    };
    let namespace = json!({"name": "namespace", "in": "path", "required": true, "schema": {"type": "string"}});
    let name = json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string"}});
    let wait = json!({"name": "wait", "in": "query", "required": false,
        "description": "Answer once the backend is Ready, waiting at most this many seconds (0-300); if it is not Ready by then (or failed), the answer says so (`ready`, `phase`, `reason`, `message`)",
        "schema": {"type": "integer", "minimum": 0, "maximum": 300}});
    let making = [
        ("400", "Malformed request"),
        ("401", "Missing or unknown API key"),
        ("403", "Namespace or pool outside the key's scope"),
        ("404", "No such pool"),
        ("413", "Body too large"),
        ("422", "Refused by admission (names the field)"),
        ("429", "The key's backend limit is reached"),
        ("503", "The Kubernetes API is unavailable"),
    ];
    let mut connect_ok = ok("200", "The key's existing backend", "Backend");
    connect_ok.insert("201".into(), answer("Made for this call", "Backend"));
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Spawner API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Session-lived backends for web applications: keyed connect, backends from named pools, a live status stream.",
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer", "description": "spk_... from `spawner api-key create`"}},
        },
        "security": [{"apiKey": []}],
        "paths": {
            "/api/v1/namespaces/{namespace}/connect": {"post": {
                "operationId": "connect",
                "summary": "The backend for a key, made from the pool if there is none",
                "parameters": [namespace, wait],
                "requestBody": body("ConnectRequest"),
                "responses": errors(connect_ok, &making),
            }},
            "/api/v1/namespaces/{namespace}/backends": {
                "post": {
                    "operationId": "create",
                    "summary": "A new backend from a pool",
                    "parameters": [namespace, wait],
                    "requestBody": body("CreateRequest"),
                    "responses": errors(ok("201", "Created", "Backend"), &making),
                },
                "get": {
                    "operationId": "list",
                    "summary": "The namespace's backends in the key's scope (without URLs and tokens)",
                    "parameters": [namespace],
                    "responses": errors(ok("200", "The backends", "BackendList"), &common),
                },
            },
            "/api/v1/namespaces/{namespace}/backends/{name}": {
                "get": {
                    "operationId": "get",
                    "parameters": [namespace, name],
                    "responses": errors(ok("200", "The backend", "Backend"), &[common.as_slice(), &[("404", "No such backend")]].concat()),
                },
                "delete": {
                    "operationId": "delete",
                    "parameters": [namespace, name],
                    "responses": errors(ok("200", "Deletion started", "Backend"), &[common.as_slice(), &[("404", "No such backend")]].concat()),
                },
            },
            "/api/v1/namespaces/{namespace}/backends/{name}/status": {"get": {
                "operationId": "status",
                "summary": "Server-Sent Events: the states so far, then each change, until Failed or Deleted",
                "parameters": [namespace, name, {"name": "Last-Event-ID", "in": "header", "required": false, "schema": {"type": "string"}}],
                "responses": errors(
                    {
                        let mut map = serde_json::Map::new();
                        map.insert("200".into(), json!({"description": "`event: state`, `data:` a StateEvent", "content": {"text/event-stream": {"schema": {"type": "string"}}}}));
                        map
                    },
                    &[common.as_slice(), &[("404", "No such backend")]].concat(),
                ),
            }},
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    out.push(r.clone());
                }
                map.values().for_each(|v| refs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_operation_is_described_and_every_reference_resolves() {
        let doc = document();
        let operations: Vec<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|p| p.as_object().unwrap().values())
            .filter_map(|op| op["operationId"].as_str())
            .collect();
        for id in ["connect", "create", "list", "get", "delete", "status"] {
            assert!(operations.contains(&id), "{id} missing: {operations:?}");
        }
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(!all.is_empty());
        for r in all {
            let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("{r}"));
            assert!(doc["components"]["schemas"][name].is_object(), "{r} does not resolve");
        }
        // Fuzzers start from a request that works against the demo's pool.
        let pool = &doc["components"]["schemas"]["ConnectRequest"]["properties"]["pool"];
        assert_eq!(pool["example"], "drop-four", "{pool}");
        // Unknown fields are refused, and the schema says so.
        assert_eq!(doc["components"]["schemas"]["ConnectRequest"]["additionalProperties"], false);
    }
}
