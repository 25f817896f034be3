//! Hand-written parts of the CRD schema.
//!
//! The full core/v1 PodSpec schema is about 600 KiB: inlined, it would not fit the 256 KiB
//! `last-applied-configuration` annotation that `kubectl apply` (client side) writes. So the
//! template is validated here only where mistakes are common and cheap to catch at admission
//! (containers present, named, with an image); the API server validates the rest when the
//! controller creates the pod, and its message lands in the backend's status.

use schemars::{Schema, SchemaGenerator, json_schema};

/// Largest number of session values, and of bytes in one.
pub const MAX_VALUES: usize = 32;
pub const MAX_VALUE_BYTES: usize = 1024;

/// Schema of `spec.values`: a small string map with environment-variable-like keys (the CEL
/// rule's cost is bounded by `maxProperties` and the keys' length limit in the pattern).
pub fn session_values(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "description": "Settings of this session for the application: up to 32 values of at most 1024 bytes, keys like environment variable names. Read by the application from its sidecar (GET http://127.0.0.1:9081/session). Immutable.",
        "maxProperties": MAX_VALUES,
        "additionalProperties": {"type": "string", "maxLength": MAX_VALUE_BYTES},
        "x-kubernetes-validations": [{
            "rule": "self.all(k, size(k) <= 63 && k.matches('^[A-Za-z_][A-Za-z0-9_]*$'))",
            "message": "spec.values keys are like environment variable names: letters, digits and _, not starting with a digit, at most 63 characters",
            "reason": "FieldValueInvalid"
        }]
    })
}

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

/// Schema of an optional `metav1.Time` field (`startedAt`, `readyAt`, `failedAt`). This and
/// [`conditions`] write out what k8s-openapi's `schemars` feature would derive, so that
/// k8s-openapi is built without it: its JsonSchema impls for every Kubernetes type doubled its
/// compile time (17 → 38 s in release, built alone), on the critical path of every cold build.
pub fn optional_time(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": ["string", "null"], "format": "date-time"})
}

/// Schema of a `conditions` list of `metav1.Condition`, a map keyed by `type` (see
/// [`optional_time`]; the descriptions are Kubernetes' own).
pub fn conditions(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": {
            "description": "Condition contains details for one aspect of the current state of this API Resource.",
            "type": "object",
            "properties": {
                "lastTransitionTime": {
                    "description": "lastTransitionTime is the last time the condition transitioned from one status to another. This should be when the underlying condition changed.  If that is not known, then using the time when the API field changed is acceptable.",
                    "type": "string",
                    "format": "date-time"
                },
                "message": {
                    "description": "message is a human readable message indicating details about the transition. This may be an empty string.",
                    "type": "string"
                },
                "observedGeneration": {
                    "description": "observedGeneration represents the .metadata.generation that the condition was set based upon. For instance, if .metadata.generation is currently 12, but the .status.conditions[x].observedGeneration is 9, the condition is out of date with respect to the current state of the instance.",
                    "type": "integer",
                    "format": "int64"
                },
                "reason": {
                    "description": "reason contains a programmatic identifier indicating the reason for the condition's last transition. Producers of specific condition types may define expected values and meanings for this field, and whether the values are considered a guaranteed API. The value should be a CamelCase string. This field may not be empty.",
                    "type": "string"
                },
                "status": {
                    "description": "status of the condition, one of True, False, Unknown.",
                    "type": "string"
                },
                "type": {
                    "description": "type of condition in CamelCase or in foo.example.com/CamelCase.",
                    "type": "string"
                }
            },
            "required": ["lastTransitionTime", "message", "reason", "status", "type"]
        },
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"]
    })
}
