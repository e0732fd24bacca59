//! `/api/v1/engines`: the engines the instances on this database drive,
//! with their instances and targets: where a fleet's work is, and whether
//! anyone is there to do it.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use crate::store::EngineStatus;

#[derive(Debug, Serialize, ToSchema)]
pub struct Engines {
    /// Every engine an instance drives or a queued job waits for, by name.
    pub engines: Vec<EngineStatus>,
    /// The engine this instance drives; null without one.
    pub this_instance_engine: Option<String>,
}

/// List the engines, their instances (with heartbeat age) and their queued
/// and in-flight targets. Admin tokens only.
#[utoipa::path(
    get,
    path = "/api/v1/engines",
    tag = "engines",
    responses(
        (status = 200, description = "The engines", body = Engines),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 403, description = "Not an admin token", body = ErrorBody),
        (status = 503, description = "The database is busy; see Retry-After", body = ErrorBody,
         headers(("Retry-After" = String, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn list_engines(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<Json<Engines>, ApiError> {
    if !caller.sees_engines() {
        return Err(ApiError::Forbidden {
            field: None,
            rule: "role".to_owned(),
            message: format!(
                "{} is not an admin: the engines and instances are shown to admins",
                caller.name.as_deref().unwrap_or("this token")
            ),
        });
    }
    Ok(Json(Engines {
        engines: state.store.engines().await?,
        this_instance_engine: state.instance.engine.clone(),
    }))
}
