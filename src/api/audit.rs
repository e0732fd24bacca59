//! `/api/v1/audit`: the audit trail, for admins.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::extract::{page_cursor, page_limit};
use crate::domain::access::Role;
use crate::store::AuditPage;

const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 500;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
// Read as text and checked by hand, as for jobs.
pub struct AuditParams {
    /// Page size (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// List audit events, newest first: every submission (accepted or refused),
/// cancel and token reload, with who made it. Admins only.
#[utoipa::path(
    get,
    path = "/api/v1/audit",
    tag = "audit",
    params(AuditParams),
    responses(
        (status = 200, description = "A page of audit events", body = AuditPage),
        (status = 400, description = "Unreadable query string", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 403, description = "Not an admin token", body = ErrorBody),
        (status = 422, description = "Invalid parameter", body = ErrorBody),
        (status = 503, description = "The database is busy; see Retry-After", body = ErrorBody,
         headers(("Retry-After" = String, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn list_audit(
    State(state): State<AppState>,
    Caller(caller): Caller,
    params: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    if caller.role != Role::Admin {
        return Err(ApiError::Forbidden {
            field: None,
            rule: "role".to_owned(),
            message: "the audit trail is for admin tokens".to_owned(),
        });
    }
    let Query(params) =
        params.map_err(|rejection| ApiError::MalformedJson(rejection.body_text()))?;
    let limit = page_limit(params.limit.as_deref(), DEFAULT_PAGE, MAX_PAGE)?;
    let cursor = page_cursor(params.cursor.as_deref())?;
    Ok(Json(state.store.list_audit(limit, cursor).await?))
}
