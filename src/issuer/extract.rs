//! Reading requests without ever refusing them in a way the client cannot read: the body is
//! read up to a limit and parsed only after the credentials were checked (so a caller without
//! credentials gets 401 whatever it sent), and every malformed body, field or query is a 400
//! `invalid_request` JSON answer that says what was wrong.

use std::collections::HashMap;
use std::convert::Infallible;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, Query, Request};
use serde::de::DeserializeOwned;

use super::error::{ApiError, ApiResult};

/// Largest request body read, in bytes. Bigger bodies get 400.
pub const MAX_BODY: usize = 64 * 1024;

/// The body, read up to [`MAX_BODY`]; the error is kept for after the credential check.
pub struct RawBody(pub ApiResult<Bytes>);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = Infallible;

    async fn from_request(req: Request, _state: &S) -> Result<RawBody, Infallible> {
        let read = axum::body::to_bytes(req.into_body(), MAX_BODY)
            .await
            .map_err(|_| {
                ApiError::invalid(format!(
                    "the body is over the {MAX_BODY}-byte limit or could not be read"
                ))
            });
        Ok(RawBody(read))
    }
}

impl RawBody {
    /// The body as `T` (a JSON object with the endpoint's fields).
    pub fn json<T: DeserializeOwned>(self) -> ApiResult<T> {
        let bytes = self.0?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::invalid("the body is empty; send a JSON object"));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::invalid(format!("the body is not the expected JSON object: {e}"))
        })
    }
}

/// Query parameters, or 400.
pub type Params = Result<Query<HashMap<String, String>>, QueryRejection>;

/// The parameters of a [`Params`] extraction.
pub fn params(p: Params) -> ApiResult<HashMap<String, String>> {
    p.map(|Query(q)| q)
        .map_err(|e| ApiError::invalid(format!("the query string is malformed: {e}")))
}

/// A required, non-empty query parameter.
pub fn required<'a>(q: &'a HashMap<String, String>, name: &str) -> ApiResult<&'a str> {
    match q.get(name).map(|v| v.trim()) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(ApiError::invalid(format!(
            "the query parameter {name} is required"
        ))),
    }
}
