//! What the CLI reports when something goes wrong: one line, naming the backend and namespace.

use std::time::Duration;

/// Every failure of a CLI command.
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

    #[error("cannot load the Kubernetes client configuration: {0}")]
    Config(String),

    #[error("{action}: {message}")]
    Api { action: String, message: String },

    #[error("{0}")]
    Usage(String),

    #[error("cannot write the output: {0}")]
    Output(String),
}

impl Error {
    /// The process exit code: 2 for a command line the CLI refuses by itself (as clap's own
    /// usage errors), 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => 2,
            _ => 1,
        }
    }

    /// Wraps an API error with what was being done; the API server's own message is kept since
    /// it names the field or the reason (admission, RBAC, quota).
    pub fn api(action: impl Into<String>, error: kube::Error) -> Error {
        let message = match &error {
            kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
            other => crate::text::ErrorChain(other).to_string(),
        };
        Error::Api { action: action.into(), message }
    }
}

/// The HTTP status of an API error, if it is one.
pub fn status_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}
