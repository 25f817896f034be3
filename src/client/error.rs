//! What goes wrong in a backend operation: one line naming the backend and namespace, with the
//! underlying error kept as the source.

use std::time::Duration;

use crate::text::ErrorChain;

/// Every failure of a client operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("backend {name:?} not found in namespace {namespace:?}")]
    NotFound { name: String, namespace: String },

    #[error("backend {name:?} already exists in namespace {namespace:?}")]
    AlreadyExists { name: String, namespace: String },

    #[error("backend {name:?} in namespace {namespace:?} failed: {message}")]
    Failed { name: String, namespace: String, message: String },

    #[error("backend {name:?} in namespace {namespace:?} was deleted while waiting for it")]
    Deleted { name: String, namespace: String },

    /// `why` is what keeps it from that state, when known (the Ready condition's reason and
    /// message).
    #[error(
        "backend {name:?} in namespace {namespace:?} is not {state} after {}s (phase {phase}){}",
        timeout.as_secs(),
        why.as_deref().map(|why| format!(": {why}")).unwrap_or_default()
    )]
    Timeout {
        name: String,
        namespace: String,
        state: &'static str,
        phase: &'static str,
        why: Option<String>,
        timeout: Duration,
    },

    #[error(
        "backend {name:?} in namespace {namespace:?} has no URL yet (phase {phase}); wait for it with `spawner wait {name}`"
    )]
    NoUrl { name: String, namespace: String, phase: &'static str },

    #[error("cannot read the access token of backend {name:?} in namespace {namespace:?}: {reason}")]
    Token { name: String, namespace: String, reason: String },

    #[error("connect key {key:?} maps to backend {name:?} in namespace {namespace:?}, which was made for another key")]
    KeyCollision { key: String, name: String, namespace: String },

    /// A connect key or backend name refused before the API server sees it.
    #[error("{0}")]
    Invalid(String),

    /// The API server's own message is shown since it names the field or the reason
    /// (admission, RBAC, quota); other failures show their chain of causes.
    #[error("{action}: {}", api_message(source))]
    Api {
        action: String,
        #[source]
        source: kube::Error,
    },

    #[error("{action}: {source}")]
    Watch {
        action: String,
        #[source]
        source: kube::runtime::wait::Error,
    },
}

impl Error {
    /// Wraps an API error with what was being done.
    pub fn api(action: impl Into<String>, source: kube::Error) -> Error {
        Error::Api { action: action.into(), source }
    }
}

fn api_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
        other => ErrorChain(other).to_string(),
    }
}

/// The HTTP status of an API error, if it is one.
pub fn status_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}
