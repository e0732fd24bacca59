//! Bearer tokens for `/api/`: the caller's token becomes the request's
//! `Principal`, which the handlers check against what each route needs.
//! Probes and the OpenAPI document stay open.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::access::AccessControl;
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
    let table = access.current();
    let principal = if table.is_empty() {
        Some(Principal::anonymous())
    } else {
        request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .and_then(|token| table.principal(token.trim()))
    };
    match principal {
        Some(principal) => {
            request.extensions_mut().insert(Caller(principal));
            next.run(request).await
        }
        None => ApiError::Unauthorized.into_response(),
    }
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
