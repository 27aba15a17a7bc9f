//! Errors as the issuer's clients see them: a status and a JSON body `{"error", "code"}` in
//! relayauth's shape, sometimes with more members (the offending scopes of a refused
//! delegation, for instance).
//!
//! Every refusal is built here, so a client always gets JSON with a stable `code`, and nothing
//! about a request can turn into a panic or an empty 500.

use std::fmt;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

/// A refused or failed request.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    /// The stable code: `invalid_request`, `unauthorized`, `insufficient_scope`, ...
    pub code: &'static str,
    /// A sentence that says what was wrong and, where there is one, the fix.
    pub message: String,
    /// Extra members of the body.
    pub extra: Map<String, Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: Map::new(),
        }
    }

    /// 400 `invalid_request`: a malformed body, a missing or mistyped field.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 401 `unauthorized`: no credential, or one that is wrong, invalid or revoked.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403 `insufficient_scope`.
    pub fn insufficient_scope(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "insufficient_scope", message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 404 `identity_not_found`.
    pub fn identity_not_found(id: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "identity_not_found",
            format!("no active identity {id:?}"),
        )
    }

    /// 500 `internal_error`: the issuer itself failed (a state file could not be written).
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }

    /// The same error with one more body member.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> ApiError {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let mut body = Map::new();
        body.insert("error".into(), Value::String(self.message.clone()));
        body.insert("code".into(), Value::String(self.code.to_owned()));
        for (k, v) in &self.extra {
            body.insert(k.clone(), v.clone());
        }
        Value::Object(body)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

/// What a handler returns.
pub type ApiResult<T> = Result<T, ApiError>;

/// Why an issuer could not start (or stop cleanly): a bad state directory, unreadable keys, a
/// bad seed file, an address that cannot be bound.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("state directory {path}: {message}")]
    State { path: String, message: String },
    #[error("seed file: {0}")]
    Seed(String),
    #[error("{0}")]
    Config(String),
    #[error("cannot listen on {addr}: {message}")]
    Bind { addr: String, message: String },
    #[error("{0}")]
    Keys(String),
}
