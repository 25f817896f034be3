//! Hand-written parts of the CRD schema.
//!
//! The full core/v1 PodSpec schema is about 600 KiB: inlined, it would not fit the 256 KiB
//! `last-applied-configuration` annotation that `kubectl apply` (client side) writes. So the
//! template is validated here only where mistakes are common and cheap to catch at admission
//! (containers present, named, with an image); the API server validates the rest when the
//! controller creates the pod, and its message lands in the backend's status.

use schemars::{Schema, SchemaGenerator, json_schema};

/// Schema of a backend's optional `spec.template` (the same as a pool's).
pub fn optional_pod_template(generator: &mut SchemaGenerator) -> Schema {
    pod_template(generator)
}

/// Schema of `spec.template`: a PodSpec, checked loosely (see the module docs).
pub fn pod_template(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "description": "The pod that runs the application (a core/v1 PodSpec). The first container is the application.",
        "required": ["containers"],
        "x-kubernetes-preserve-unknown-fields": true,
        "properties": {
            "containers": {
                "type": "array",
                "description": "The pod's containers; the first one is the application and receives PORT.",
                "minItems": 1,
                "maxItems": 16,
                "items": {
                    "type": "object",
                    "required": ["name", "image"],
                    "x-kubernetes-preserve-unknown-fields": true,
                    "properties": {
                        "name": {
                            "type": "string",
                            "description": "Container name (a DNS label).",
                            "minLength": 1,
                            "maxLength": 63,
                            "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
                        },
                        "image": {
                            "type": "string",
                            "description": "Container image reference.",
                            "minLength": 1
                        }
                    }
                },
                "x-kubernetes-validations": [{
                    "rule": "!self.exists(c, c.name == 'spawner-sidecar')",
                    "message": "the container name spawner-sidecar is reserved for the injected sidecar",
                    "reason": "FieldValueInvalid"
                }]
            },
            "restartPolicy": {
                "type": "string",
                "description": "Never, or unset: a backend's pod never restarts (a backend that dies is over).",
                "enum": ["Never"]
            }
        }
    })
}
