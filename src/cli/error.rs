//! What the CLI reports when something goes wrong: one line, naming the backend and namespace.

/// Every failure of a CLI command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A backend operation (see [`crate::client::Error`]).
    #[error(transparent)]
    Client(#[from] crate::client::Error),

    #[error("cannot load the Kubernetes client configuration: {0}")]
    Config(String),

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
            Error::Usage(_) | Error::Client(crate::client::Error::Invalid(_)) => 2,
            _ => 1,
        }
    }

    /// Wraps an API error with what was being done.
    pub fn api(action: impl Into<String>, error: kube::Error) -> Error {
        Error::Client(crate::client::Error::api(action, error))
    }
}
