//! Bearer tokens for `/api/`: the caller's token becomes the request's
//! `Principal`, which the handlers check against what each route needs.
//! Probes and the OpenAPI document stay open.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::access::{AccessControl, token_digest};
use crate::domain::access::Principal;

/// Answers 401 for an `/api/` request without a valid bearer token when
/// tokens are configured; otherwise puts the caller into the request.
pub async fn identify(
    State(access): State<AccessControl>,
    mut request: Request,
    next: Next,
) -> Response {
    if !request.uri().path().starts_with("/api/") {
        return next.run(request).await;
    }
    match principal_of(&access, request.headers()) {
        Some(principal) => {
            request.extensions_mut().insert(Caller(principal));
            next.run(request).await
        }
        None => ApiError::Unauthorized.into_response(),
    }
}

/// Who the request's bearer token names: anyone when the service has no
/// tokens, nobody for a missing or unknown token.
pub fn principal_of(access: &AccessControl, headers: &HeaderMap) -> Option<Principal> {
    access.current().identify(bearer_digest(headers).as_ref())
}

/// The digest of the request's bearer token, if it has one.
pub fn bearer_digest(headers: &HeaderMap) -> Option<[u8; 32]> {
    headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(|token| token_digest(token.trim()))
}

/// The caller of an `/api/` route, as `identify` found them.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Caller, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or(ApiError::Unauthorized)
    }
}
