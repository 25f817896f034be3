//! The API's request and response bodies. `openapi.json` is generated from these types.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `POST /api/v1/namespaces/{namespace}/connect`: the backend for `key`, made from `pool` if
/// there is none.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectRequest {
    /// The session, user, document or room the backend is for: every caller with the same key
    /// reaches the same live backend.
    #[schemars(length(min = 1, max = 253), example = "room-42")]
    pub key: String,
    /// The pool the backend is made from, if it has to be made.
    #[schemars(example = "drop-four")]
    pub pool: String,
    /// Session settings handed to the application (`spec.values`), if it has to be made.
    #[serde(default)]
    pub values: BTreeMap<String, String>,
}

/// `POST /api/v1/namespaces/{namespace}/backends`: a new backend from `pool`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateRequest {
    #[schemars(example = "drop-four")]
    pub pool: String,
    /// Session settings handed to the application (`spec.values`).
    #[serde(default)]
    pub values: BTreeMap<String, String>,
    /// Prefix of the generated name (default `<pool>-session-`).
    #[serde(default)]
    pub generate_name: Option<String>,
}

/// A backend as the API shows it.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    pub name: String,
    pub namespace: String,
    /// The pool it was made from.
    pub pool: Option<String>,
    /// The connect key it was made for.
    pub key: Option<String>,
    /// Pending, Scheduled, Running, Ready, Failed or Terminating.
    pub phase: String,
    pub ready: bool,
    /// What a browser opens, with `?token=` when the backend needs one; set once Ready (not in
    /// lists).
    pub url: Option<String>,
    /// The backend's access token, for clients that send it themselves (not in lists).
    pub token: Option<String>,
    /// Why it is not Ready (yet), when known.
    pub reason: Option<String>,
    pub message: Option<String>,
    /// When it was created (RFC 3339).
    pub created: Option<String>,
}

/// `GET /api/v1/namespaces/{namespace}/backends`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
pub struct BackendList {
    pub items: Vec<Backend>,
}

/// One event of the status stream (`data:` of an SSE event named `state`; its `id:` is
/// increasing, for `Last-Event-ID`).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StateEvent {
    /// Pending, Scheduled, Running, Ready, Failed, Terminating or Deleted.
    pub state: String,
    /// What is happening, for people.
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The backend's URL (without its token), on Ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// Every error: a stable code and what to do about it.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
pub struct ErrorBody {
    /// bad_request, unauthorized, forbidden, not_found, conflict, payload_too_large, invalid,
    /// too_many_backends, failed, timeout, unavailable, internal.
    pub error: String,
    pub message: String,
}
