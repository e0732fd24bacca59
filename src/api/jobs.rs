//! `/api/v1/jobs`: submit, read, list and cancel publish jobs.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use utoipa::IntoParams;
use uuid::Uuid;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::JsonBody;
use crate::domain::spec::{JobSpec, plan};
use crate::domain::status::JobStatus;
use crate::store::{Cancelled, Created, Job, JobPage, NewJob};

const IDEMPOTENCY_KEY: &str = "idempotency-key";
const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;
const DEFAULT_PAGE: u32 = 20;
const MAX_PAGE: u32 = 100;

/// Submit a publish job.
///
/// The job is recorded before the answer; its targets run in the background.
/// With an `Idempotency-Key`, the same key and body answer the existing job
/// (200) and the same key with another body answers 409.
#[utoipa::path(
    post,
    path = "/api/v1/jobs",
    tag = "jobs",
    request_body = JobSpec,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retried submissions safe")),
    responses(
        (status = 202, description = "Accepted", body = Job,
         headers(("Location" = String, description = "The job's URL"))),
        (status = 200, description = "Same Idempotency-Key and body as an earlier job", body = Job),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 409, description = "Idempotency-Key reused with another body", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Invalid spec", body = ErrorBody),
    )
)]
pub async fn create_job(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: JsonBody<JobSpec>,
) -> Result<Response, ApiError> {
    let idempotency_key = idempotency_key(&headers)?;
    let plan = plan(&body.value, state.limits)?;
    let spec_hash = hex::encode(Sha256::digest(&body.canonical));
    let created = state
        .store
        .create_job(NewJob {
            plan: &plan,
            idempotency_key: idempotency_key.as_deref(),
            spec_hash: &spec_hash,
        })
        .await?;
    match created {
        Created::New(job) => {
            tracing::info!(job_id = %job.id, targets = job.targets.len(), "job accepted");
            state.wake.notify_waiters();
            let location = format!("/api/v1/jobs/{}", job.id);
            Ok((
                StatusCode::ACCEPTED,
                [(header::LOCATION, location)],
                Json(job),
            )
                .into_response())
        }
        Created::Existing(job) => {
            let location = format!("/api/v1/jobs/{}", job.id);
            Ok((StatusCode::OK, [(header::LOCATION, location)], Json(job)).into_response())
        }
        Created::KeyReused => Err(ApiError::IdempotencyConflict(
            "this Idempotency-Key was used for a job with a different body".to_owned(),
        )),
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| ApiError::invalid("Idempotency-Key", "must be visible ASCII"))?;
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(ApiError::invalid(
            "Idempotency-Key",
            format!("must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters"),
        ));
    }
    Ok(Some(key.to_owned()))
}

/// Read one job with its targets.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}",
    tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job", body = Job),
        (status = 404, description = "No such job", body = ErrorBody),
    )
)]
pub async fn get_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    let id = job_id(&id)?;
    state
        .store
        .get_job(id)
        .await?
        .map(Json)
        .ok_or_else(|| no_such_job(id))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only jobs in this status: queued, running, succeeded, failed, cancelled.
    status: Option<String>,
    /// Page size, 1 to 100 (default 20).
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// List jobs, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/jobs",
    tag = "jobs",
    params(ListParams),
    responses(
        (status = 200, description = "A page of jobs", body = JobPage),
        (status = 400, description = "Unreadable query string", body = ErrorBody),
        (status = 422, description = "Invalid parameter", body = ErrorBody),
    )
)]
pub async fn list_jobs(
    State(state): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<JobPage>, ApiError> {
    let Query(params) =
        params.map_err(|rejection| ApiError::MalformedJson(rejection.body_text()))?;
    let status = params
        .status
        .as_deref()
        .map(|value| {
            JobStatus::parse(value)
                .ok_or_else(|| ApiError::invalid("status", format!("unknown status {value:?}")))
        })
        .transpose()?;
    let limit = match params.limit.as_deref() {
        None => DEFAULT_PAGE,
        Some(value) => value
            .parse::<u32>()
            .ok()
            .filter(|limit| (1..=MAX_PAGE).contains(limit))
            .ok_or_else(|| ApiError::invalid("limit", format!("must be 1 to {MAX_PAGE}")))?,
    };
    let cursor = params
        .cursor
        .as_deref()
        .map(|value| {
            Uuid::parse_str(value)
                .map_err(|_| ApiError::invalid("cursor", "not a cursor from this API"))
        })
        .transpose()?;
    Ok(Json(state.store.list_jobs(status, limit, cursor).await?))
}

/// Cancel a job.
///
/// Targets not yet started are cancelled at once; targets under way stop
/// after their current step (a push is interrupted) and still clean up.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{id}/cancel",
    tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "Cancel recorded; the job as it is now", body = Job),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 409, description = "The job has already finished", body = ErrorBody),
    )
)]
pub async fn cancel_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    let id = job_id(&id)?;
    match state.store.cancel_job(id).await? {
        Cancelled::NotFound => Err(no_such_job(id)),
        Cancelled::AlreadyFinished(job) => Err(ApiError::Conflict(format!(
            "job {id} has already finished ({})",
            job.status.as_str()
        ))),
        Cancelled::Requested(job) => {
            state.cancellations.cancel(id);
            tracing::info!(job_id = %id, "cancel requested");
            Ok(Json(job))
        }
    }
}

fn job_id(text: &str) -> Result<Uuid, ApiError> {
    // An id that cannot exist is simply not found.
    Uuid::parse_str(text).map_err(|_| ApiError::NotFound(format!("no job {text:?}")))
}

fn no_such_job(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("no job {id}"))
}
