//! `/api/v1/jobs`: submit, read, list and cancel publish jobs.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use utoipa::IntoParams;
use uuid::Uuid;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::extract::{JsonBody, page_cursor, page_limit};
use super::sources::resolve_sources;
use crate::credentials::RegistryAuth;
use crate::domain::access::{Principal, check_submission};
use crate::domain::spec::{Callback, Plan};
use crate::domain::spec::{JobSpec, RegistryAuthSpec, plan};
use crate::domain::status::JobStatus;
use crate::store::{AuditEntry, Cancelled, Created, Job, JobFilter, JobPage, NewJob, Submitter};
use crate::webhooks::Fenced;

const IDEMPOTENCY_KEY: &str = "idempotency-key";
const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;
const DEFAULT_PAGE: u32 = 20;
/// How long a submission waits for the engine to say what its sources are.
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
        (status = 415, description = "The body is not Content-Type: application/json", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 403, description = "Outside the token's role or scope: `field` and `rule` say where", body = ErrorBody),
        (status = 422, description = "Invalid spec", body = ErrorBody),
        (status = 503, description = "Too many targets queued, or the database is busy or full; see Retry-After",
         body = ErrorBody, headers(("Retry-After" = String, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn create_job(
    State(state): State<AppState>,
    Caller(caller): Caller,
    headers: HeaderMap,
    body: Result<JsonBody<JobSpec>, ApiError>,
) -> Result<Response, ApiError> {
    let (submitted, recorded) = submit(&state, &caller, &headers, body).await;
    match (&submitted, recorded) {
        (_, Some(entry)) => log_audit(&entry),
        (Err(error), None) => {
            audit(
                &state,
                &caller,
                "job.submit",
                "refused",
                None,
                refusal(error),
            )
            .await?;
        }
        (Ok(_), None) => unreachable!("a job the store took has its audit record"),
    }
    let (status, job) = submitted?;
    about_job(job.id);
    if status == StatusCode::ACCEPTED {
        tracing::info!(
            targets = job.targets.len(),
            submitted_by = job.submitted_by.as_deref(),
            "job accepted"
        );
    }
    state.wake.notify_waiters();
    let location = format!("/api/v1/jobs/{}", job.id);
    Ok((status, [(header::LOCATION, location)], Json(job)).into_response())
}

/// Checks a submission against the caller's scope and records it; answers
/// 202 and the new job, or 200 and the job an earlier submission with the
/// same key and body made. Also answers the submission's audit record when
/// the store wrote it, in the job's transaction; a submission refused before
/// the store, or whose write failed, has none yet.
async fn submit(
    state: &AppState,
    caller: &Principal,
    headers: &HeaderMap,
    body: Result<JsonBody<JobSpec>, ApiError>,
) -> (Result<(StatusCode, Job), ApiError>, Option<AuditEntry>) {
    let (new, auth) = match prepare(state, caller, headers, body).await {
        Ok(prepared) => prepared,
        Err(error) => return (Err(error), None),
    };
    // The credentials are in place before the job exists: a lane may claim
    // it the moment it is committed.
    let id = new.id;
    if let Some(auth) = &auth {
        state.job_credentials.insert(id, auth.clone());
    }
    let who = caller.name.clone();
    let limit = state.max_queued_targets;
    let stored = state
        .store
        .create_audited_job(
            new,
            Box::new(move |created| submission_audit(created, who.as_deref(), limit)),
        )
        .await;
    if !matches!(stored, Ok((Created::New(_), _))) {
        state.job_credentials.remove(id);
    }
    let (created, entry) = match stored {
        Ok(stored) => stored,
        Err(error) => return (Err(error.into()), None),
    };
    let answer = match created {
        Created::New(job) => Ok((StatusCode::ACCEPTED, job)),
        Created::Existing(job) => replay(state, auth, job).await,
        refused => Err(refusal_of(&refused, caller.name.as_deref(), limit)),
    };
    (answer, Some(entry))
}

/// Reads, validates and checks a submission and looks its sources up: the
/// job to record, and the credentials it brought.
async fn prepare(
    state: &AppState,
    caller: &Principal,
    headers: &HeaderMap,
    body: Result<JsonBody<JobSpec>, ApiError>,
) -> Result<(NewJob, Option<RegistryAuth>), ApiError> {
    let body = body?;
    let idempotency_key = idempotency_key(headers)?;
    let mut plan = plan(&body.value, state.limits)?;
    if plan.callback.is_some() && !state.webhooks_enabled {
        return Err(ApiError::invalid(
            "callback_url",
            "this publishd has no webhook secret to sign callbacks with (--webhook-secret)",
        ));
    }
    let brings_credentials = body.value.registry_auth.is_some();
    let grant = check_submission(caller, &plan, brings_credentials, &state.allow_registry)?;
    if let Some(callback) = &plan.callback {
        check_callback(state, callback).await?;
    }
    let auth = body
        .value
        .registry_auth
        .as_ref()
        .map(|auth| registry_auth(&plan.repository.registry, auth));
    let engine = match job_engine(state, &body.value, &plan).await {
        Ok(engine) => engine,
        // A resubmission is answered its job, whatever the engines now.
        Err(refusal) => match submitted_engine(state, caller, idempotency_key.as_deref()).await? {
            Some(engine) => engine,
            None => return Err(refusal),
        },
    };
    let on_this_engine = engine == state.instance.engine;
    if auth.is_some() && !on_this_engine && engine.is_some() && state.store.is_shared() {
        return Err(ApiError::invalid(
            "registry_auth",
            format!(
                "a job's own registry credentials are held only in the memory of the instance \
                 that accepts them, which must drive its engine ({}): submit it to an instance \
                 on that engine, or leave the credentials to the service's docker config",
                engine.as_deref().unwrap_or_default()
            ),
        ));
    }
    let sources = resolve_sources(state, &plan, &grant, auth.as_ref(), on_this_engine).await?;
    plan.resolve_sources(&sources);
    let new = NewJob {
        id: Uuid::now_v7(),
        max_pending: state.max_queued_targets,
        has_registry_auth: auth.is_some(),
        idempotency_key,
        spec_hash: spec_hash(&body.json),
        submitter: Submitter {
            name: caller.name.clone(),
            weight: caller.weight,
            max_queued_targets: caller.max_queued_targets,
            use_service_credentials: grant.service_credentials,
            required_labels: grant.required_labels,
            read_repos: grant.read_repos,
        },
        plan,
        engine,
    };
    Ok((new, auth))
}

/// A callback's host must resolve, and only to addresses the operator
/// allows (the same check runs again before each attempt).
async fn check_callback(state: &AppState, callback: &Callback) -> Result<(), ApiError> {
    match state.callbacks.addresses(callback).await {
        Ok(_) => Ok(()),
        Err(Fenced::Refused(refusal)) => Err(ApiError::Forbidden {
            field: Some("callback_url".to_owned()),
            rule: "allow-callback".to_owned(),
            message: refusal.0,
        }),
        Err(Fenced::Unresolved(why)) => Err(ApiError::invalid("callback_url", why)),
    }
}

/// The engine of the job a resubmission with `key` made, if there is one.
async fn submitted_engine(
    state: &AppState,
    caller: &Principal,
    key: Option<&str>,
) -> Result<Option<Option<String>>, ApiError> {
    let Some(key) = key else {
        return Ok(None);
    };
    let submitter = caller.name.as_deref().unwrap_or("");
    Ok(state.store.engine_of_key(submitter, key).await?)
}

/// The engine a job's local sources are on: the one it names, which an
/// instance must drive, or, when it names none, the only one driven. `None`
/// when its sources are all `docker://` (any instance publishes those), or
/// when no engine is driven at all (the local sources are then refused).
async fn job_engine(
    state: &AppState,
    spec: &JobSpec,
    plan: &Plan,
) -> Result<Option<String>, ApiError> {
    let local = plan.images.iter().any(|image| !image.in_registry());
    if !local {
        return Ok(None);
    }
    let mine = &state.instance.engine;
    if spec.engine.is_some() && spec.engine == *mine {
        return Ok(mine.clone());
    }
    let driven = state.store.live_engines().await?;
    match (&spec.engine, driven.as_slice()) {
        (Some(name), _) if driven.contains(name) => Ok(Some(name.clone())),
        (Some(name), _) => Err(ApiError::invalid(
            "engine",
            format!(
                "no running instance drives an engine named {name:?}; the engines driven are: {}",
                names(&driven)
            ),
        )),
        (None, []) => Ok(mine.clone()),
        (None, [only]) => Ok(Some(only.clone())),
        (None, several) => Err(ApiError::invalid(
            "engine",
            format!(
                "several engines are driven ({}): name the one the local sources are on",
                names(several)
            ),
        )),
    }
}

fn names(engines: &[String]) -> String {
    if engines.is_empty() {
        return "none".to_owned();
    }
    engines.join(", ")
}

/// The answer to a submission the store found already made. A resubmission
/// brings the credentials again, which revives a job whose credentials a
/// restart lost, as long as it has not ended.
async fn replay(
    state: &AppState,
    auth: Option<RegistryAuth>,
    job: Job,
) -> Result<(StatusCode, Job), ApiError> {
    if let Some(auth) = auth
        && !job.status.is_terminal()
    {
        state.job_credentials.insert(job.id, auth);
        // Targets waiting for them since a restart may go at once.
        state.store.credentials_arrived(job.id).await?;
    }
    Ok((StatusCode::OK, job))
}

/// The error a submission the store refused answers.
fn refusal_of(created: &Created, who: Option<&str>, limit: usize) -> ApiError {
    match *created {
        Created::KeyReused => ApiError::IdempotencyConflict(
            "this Idempotency-Key was used for a job with a different body".to_owned(),
        ),
        Created::Overloaded { pending } => ApiError::Overloaded { pending, limit },
        Created::SubmitterOverloaded { pending, limit } => ApiError::SubmitterOverloaded {
            who: who.unwrap_or_default().to_owned(),
            pending,
            limit,
        },
        Created::New(_) | Created::Existing(_) => unreachable!("the store took the job"),
    }
}

/// The audit record of a submission that reached the store, written in the
/// same transaction as the job.
fn submission_audit(created: &Created, who: Option<&str>, limit: usize) -> AuditEntry {
    let taken = |status: StatusCode, job: &Job| json!({"status": status.as_u16(), "repo": job.repo, "targets": job.targets.len()});
    let (outcome, job_id, detail) = match created {
        Created::New(job) => ("accepted", Some(job.id), taken(StatusCode::ACCEPTED, job)),
        Created::Existing(job) => ("replayed", Some(job.id), taken(StatusCode::OK, job)),
        refused => ("refused", None, refusal(&refusal_of(refused, who, limit))),
    };
    AuditEntry {
        actor: who.map(str::to_owned),
        action: "job.submit",
        outcome,
        job_id,
        detail,
    }
}

/// What an audit record says of a refused request: never more than the
/// answer itself said.
fn refusal(error: &ApiError) -> Value {
    let (status, code) = error.status_and_code();
    let mut detail = json!({"status": status.as_u16(), "code": code, "message": error.to_string()});
    match error {
        ApiError::Forbidden { field, rule, .. } => {
            detail["field"] = json!(field);
            detail["rule"] = json!(rule);
        }
        ApiError::Invalid { field, .. } => detail["field"] = json!(field),
        _ => {}
    }
    detail
}

/// Records an audit event (and logs it as a structured line).
async fn audit(
    state: &AppState,
    caller: &Principal,
    action: &'static str,
    outcome: &'static str,
    job_id: Option<Uuid>,
    detail: Value,
) -> Result<(), ApiError> {
    let entry = AuditEntry {
        actor: caller.name.clone(),
        action,
        outcome,
        job_id,
        detail,
    };
    log_audit(&entry);
    state.store.record_audit(entry).await?;
    Ok(())
}

/// An audit event as a structured log line.
fn log_audit(entry: &AuditEntry) {
    tracing::info!(
        audit = true,
        actor = entry.actor.as_deref().unwrap_or(""),
        action = entry.action,
        outcome = entry.outcome,
        detail = %entry.detail,
        "audit"
    );
}

/// The body's identity for idempotency: canonical JSON (serde_json's maps
/// are ordered by key) without the credentials, so that no digest of a
/// secret is ever stored.
fn spec_hash(json: &Value) -> String {
    let mut json = json.clone();
    if let Some(object) = json.as_object_mut() {
        object.remove("registry_auth");
    }
    hex::encode(Sha256::digest(json.to_string().as_bytes()))
}

/// The job's own credentials, for the registry its targets are in.
fn registry_auth(registry: &str, spec: &RegistryAuthSpec) -> RegistryAuth {
    match (&spec.username, &spec.password, &spec.identity_token) {
        (Some(username), Some(password), _) => RegistryAuth::password(registry, username, password),
        (_, _, Some(token)) => RegistryAuth::identity_token(registry, token),
        _ => RegistryAuth::anonymous(),
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
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such job (or another token's)", body = ErrorBody),
        (status = 503, description = "The database is busy; see Retry-After", body = ErrorBody,
         headers(("Retry-After" = String, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn get_job(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    let id = job_id(&id)?;
    let job = visible_job(&state, &caller, id).await?;
    Ok(Json(as_seen_by(&caller, job)))
}

/// The job as `caller` may see it: its `callback_url` only for its
/// submitter and admins (`Principal::sees_callback_of`).
fn as_seen_by(caller: &Principal, mut job: Job) -> Job {
    if !caller.sees_callback_of(job.submitted_by.as_deref()) {
        job.callback_url = None;
        for delivery in &mut job.deliveries {
            delivery.url = None;
        }
    }
    job
}

/// The job, if the caller may see it; another token's job is not found, so
/// its id tells a publisher nothing.
pub(super) async fn visible_job(
    state: &AppState,
    caller: &Principal,
    id: Uuid,
) -> Result<Job, ApiError> {
    state
        .store
        .get_job(id)
        .await?
        .filter(|job| caller.can_see(job.submitted_by.as_deref()))
        .ok_or_else(|| no_such_job(id))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
// Read as text and checked by hand, so that a bad value gets this API's 422
// naming the parameter; the documented types are what is accepted.
pub struct ListParams {
    /// Only jobs in this status.
    #[param(value_type = Option<JobStatus>)]
    status: Option<String>,
    /// `true`: only jobs with at least one failed target (finished or not).
    #[param(value_type = Option<bool>)]
    has_failed_target: Option<String>,
    /// Only jobs of this submitter (a token's name); a publisher token
    /// lists its own jobs only, and naming another is forbidden.
    submitted_by: Option<String>,
    /// Only jobs whose repository starts with this text (case counts).
    repo_prefix: Option<String>,
    /// Only jobs whose repository or one of whose target references
    /// contains this text, ignoring ASCII case. A page looks through at most
    /// 10,000 jobs (newest first, of those the other filters select): it
    /// may hold fewer than `limit` jobs and still have a `next_cursor`.
    q: Option<String>,
    /// Page size (default 20).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
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
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 403, description = "A publisher token named another submitter", body = ErrorBody),
        (status = 422, description = "Invalid parameter", body = ErrorBody),
        (status = 503, description = "The database is busy; see Retry-After", body = ErrorBody,
         headers(("Retry-After" = String, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn list_jobs(
    State(state): State<AppState>,
    Caller(caller): Caller,
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
    let has_failed_target = match params.has_failed_target.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(ApiError::invalid("has_failed_target", "true or false")),
    };
    let filter = JobFilter {
        status,
        has_failed_target,
        submitted_by: params.submitted_by,
        repo_prefix: params.repo_prefix.filter(|prefix| !prefix.is_empty()),
        search: params.q.filter(|text| !text.is_empty()),
    };
    let filter = visible_jobs(&caller, filter)?;
    let limit = page_limit(params.limit.as_deref(), DEFAULT_PAGE, MAX_PAGE)?;
    let cursor = page_cursor(params.cursor.as_deref())?;
    let mut page = state.store.list_jobs(&filter, limit, cursor).await?;
    page.jobs = page
        .jobs
        .into_iter()
        .map(|job| as_seen_by(&caller, job))
        .collect();
    Ok(Json(page))
}

/// `filter` restricted to the jobs the caller may see: a publisher's own.
pub(super) fn visible_jobs(caller: &Principal, filter: JobFilter) -> Result<JobFilter, ApiError> {
    let Some(own) = caller.lists_jobs_of() else {
        return Ok(filter);
    };
    if filter
        .submitted_by
        .as_deref()
        .is_some_and(|asked| asked != own)
    {
        return Err(ApiError::Forbidden {
            field: Some("submitted_by".to_owned()),
            rule: "role".to_owned(),
            message: "a publisher token lists its own jobs only".to_owned(),
        });
    }
    Ok(JobFilter {
        submitted_by: Some(own.to_owned()),
        ..filter
    })
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
        (status = 403, description = "A reader token may not cancel", body = ErrorBody),
        (status = 404, description = "No such job (or another token's)", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 409, description = "The job has already finished", body = ErrorBody),
        (status = 415, description = "A body that is not Content-Type: application/json (none is needed)", body = ErrorBody),
        (status = 503, description = "The database is busy or full; see Retry-After", body = ErrorBody,
         headers(("Retry-After" = String, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn cancel_job(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    let cancelled = cancel(&state, &caller, &id).await;
    let (outcome, detail) = match &cancelled {
        Ok(job) => (
            "requested",
            json!({"status": 200, "job_status": job.status}),
        ),
        Err(error) => ("refused", refusal(error)),
    };
    let job_id = Uuid::parse_str(&id).ok();
    audit(&state, &caller, "job.cancel", outcome, job_id, detail).await?;
    cancelled.map(|job| Json(as_seen_by(&caller, job)))
}

async fn cancel(state: &AppState, caller: &Principal, id: &str) -> Result<Job, ApiError> {
    let id = job_id(id)?;
    let job = visible_job(state, caller, id).await?;
    if !caller.can_cancel(job.submitted_by.as_deref()) {
        return Err(ApiError::Forbidden {
            field: None,
            rule: "role".to_owned(),
            message: format!(
                "{} is a reader: it may read jobs, not cancel them",
                caller.name.as_deref().unwrap_or("this token")
            ),
        });
    }
    match state.store.cancel_job(id).await? {
        Cancelled::NotFound => Err(no_such_job(id)),
        Cancelled::AlreadyFinished(job) => Err(ApiError::Conflict(format!(
            "job {id} has already finished ({})",
            job.status.as_str()
        ))),
        Cancelled::Requested(job) => {
            state.cancellations.cancel(id);
            if job.status.is_terminal() {
                state.job_credentials.remove(id);
            }
            tracing::info!("cancel requested");
            Ok(job)
        }
    }
}

pub(super) fn job_id(text: &str) -> Result<Uuid, ApiError> {
    // An id that cannot exist is simply not found.
    let id = Uuid::parse_str(text).map_err(|_| ApiError::NotFound(format!("no job {text:?}")))?;
    about_job(id);
    Ok(id)
}

/// Names the job in the request's span, so each of the request's log lines
/// (its response line too) carries the `job_id` a job's lines are found by.
fn about_job(id: Uuid) {
    tracing::Span::current().record("job_id", tracing::field::display(id));
}

fn no_such_job(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("no job {id}"))
}
