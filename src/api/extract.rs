//! Request body extraction with this API's error answers: 415 for a body
//! not declared JSON, 400 for JSON that does not parse, 422 naming the
//! field for JSON of the wrong shape, 413 for a body over the limit.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::browsers::is_json;
use super::error::ApiError;

/// The largest request body accepted.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// A JSON body, typed, together with the JSON it was read from.
pub struct JsonBody<T> {
    pub value: T,
    pub json: Value,
}

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(request.headers()) {
            return Err(ApiError::UnsupportedMediaType(
                "the body must be Content-Type: application/json".to_owned(),
            ));
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge { limit: BODY_LIMIT }
                } else {
                    ApiError::MalformedJson(format!("could not read the body: {rejection}"))
                }
            })?;
        let json: Value = serde_json::from_slice(&bytes)
            .map_err(|error| ApiError::MalformedJson(format!("body is not valid JSON: {error}")))?;
        let value = serde_path_to_error::deserialize(&json).map_err(shape_error)?;
        Ok(JsonBody { value, json })
    }
}

fn shape_error(error: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = error.path().to_string();
    let message = error.inner().to_string();
    // A missing field is reported at its parent; name the field itself.
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(name, _)| name.to_owned());
    let field = match (path.as_str(), missing) {
        (".", Some(name)) => Some(name),
        (".", None) => None,
        (parent, Some(name)) => Some(format!("{parent}.{name}")),
        (path, None) => Some(path.to_owned()),
    };
    ApiError::Invalid { field, message }
}

/// A list's `limit` query parameter: `default` when absent, else 1 to `max`.
pub fn page_limit(value: Option<&str>, default: u32, max: u32) -> Result<u32, ApiError> {
    match value {
        None => Ok(default),
        Some(value) => value
            .parse::<u32>()
            .ok()
            .filter(|limit| (1..=max).contains(limit))
            .ok_or_else(|| ApiError::invalid("limit", format!("must be 1 to {max}"))),
    }
}

/// A list's `cursor` query parameter: the `next_cursor` of an earlier page.
pub fn page_cursor(value: Option<&str>) -> Result<Option<uuid::Uuid>, ApiError> {
    value
        .map(|value| {
            uuid::Uuid::parse_str(value)
                .map_err(|_| ApiError::invalid("cursor", "not a cursor from this API"))
        })
        .transpose()
}
