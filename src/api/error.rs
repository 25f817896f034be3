//! Every error the API answers: a status and JSON `{error, message}`, where `error` is a stable
//! code a program can branch on and `message` says what to do about it.

use http::StatusCode;

use crate::client;

/// An answer that is not a success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send a valid API key as `Authorization: Bearer spk_...` (`spawner api-key create` makes one)",
        )
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": self.code, "message": self.message})
    }
}

/// A client operation's failure, as the API answers it.
impl From<client::Error> for ApiError {
    fn from(error: client::Error) -> ApiError {
        use client::Error as E;
        let message = error.to_string();
        match &error {
            E::NotFound { .. } => ApiError::not_found(message),
            E::AlreadyExists { .. } => ApiError::new(StatusCode::CONFLICT, "conflict", message),
            E::Failed { .. } => ApiError::new(StatusCode::BAD_GATEWAY, "failed", message),
            E::Deleted { .. } => ApiError::new(StatusCode::GONE, "deleted", message),
            E::Timeout { .. } => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", message),
            E::KeyCollision { .. } => ApiError::new(StatusCode::CONFLICT, "conflict", message),
            E::Invalid(_) => ApiError::bad_request(message),
            // Admission names the field (values, names): the caller's mistake.
            E::Api { source: kube::Error::Api(status), .. } if matches!(status.code, 400 | 422) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
            }
            E::Api { source: kube::Error::Api(status), .. } if status.code == 403 => ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("{message} (spawner-api may not act in this namespace: `spawner api-key create` grants it)"),
            ),
            E::Api { .. } | E::Watch { .. } | E::Token { .. } | E::NoUrl { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
            }
        }
    }
}
