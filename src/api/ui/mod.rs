//! The web dashboard under `/ui/`: server-rendered HTML (maud) with one
//! small script, everything embedded in the binary. Pages read the store
//! as the API does, with the caller's token deciding what they show.
//!
//! Reading works without JavaScript where the service has no tokens. With
//! tokens, a browser cannot put a bearer header on a link it follows, so a
//! page asked for without one answers a sign-in page; the script keeps the
//! token in session storage and fetches each page with it (the sign-in
//! form is a POST, so that without the script no token lands in a URL:
//! the post only answers the sign-in page again). The same script
//! refreshes the jobs page, follows a job's event stream (live steps and
//! push progress), and cancels a job through the API.

mod pages;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::header::{self, HeaderValue};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::Markup;
use serde::Deserialize;
use uuid::Uuid;

use super::AppState;
use super::auth::principal_of;
use crate::domain::access::Principal;
use crate::domain::status::JobStatus;
use crate::engine::{Engine, NoEngine};
use crate::store::JobFilter;
use std::sync::Arc;

const SCRIPT: &str = include_str!("../../../assets/ui/app.js");
const STYLE: &str = include_str!("../../../assets/ui/app.css");

/// Jobs a page shows.
const PAGE_SIZE: u32 = 25;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(jobs))
        .route("/ui/jobs/{id}", get(job))
        .route("/ui/engines", get(engines))
        // Only without JavaScript: the script signs in without posting.
        .route("/ui/sign-in", post(|| async { sign_in("Sign in") }))
        .route("/ui/assets/app.js", get(script))
        .route("/ui/assets/app.css", get(style))
}

#[derive(Debug, Deserialize)]
struct JobsQuery {
    status: Option<String>,
    failed: Option<String>,
    submitter: Option<String>,
    repo: Option<String>,
    q: Option<String>,
    cursor: Option<String>,
}

async fn jobs(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<JobsQuery>,
) -> Response {
    let Some(caller) = principal_of(&state.access, &headers) else {
        return sign_in("Jobs");
    };
    let cursor = query
        .cursor
        .as_deref()
        .and_then(|c| Uuid::parse_str(c).ok());
    let given = |text: Option<String>| {
        text.map(|text| text.trim().to_owned())
            .filter(|text| !text.is_empty())
    };
    // A publisher sees its own jobs only: the form has no submitter for it.
    let own = caller.lists_jobs_of();
    let filter = JobFilter {
        status: query.status.as_deref().and_then(JobStatus::parse),
        has_failed_target: query.failed.as_deref() == Some("true"),
        submitted_by: own.map(str::to_owned).or(given(query.submitter)),
        repo_prefix: given(query.repo),
        search: given(query.q),
    };
    match state.store.list_jobs(&filter, PAGE_SIZE, cursor).await {
        Ok(page) => html(StatusCode::OK, pages::jobs(&page, &filter, own.is_none())),
        Err(error) => trouble(&format!("{error:#}")),
    }
}

async fn job(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let Some(caller) = principal_of(&state.access, &headers) else {
        return sign_in("Job");
    };
    let found = match Uuid::parse_str(&id) {
        Ok(id) => state.store.get_job(id).await,
        Err(_) => Ok(None),
    };
    match found {
        Ok(Some(job)) if caller.can_see(job.submitted_by.as_deref()) => {
            let cancellable = can_cancel(&caller, &job);
            // The page shows the job as of its last event: the script
            // follows the events after it.
            match state.store.last_event_of(job.id).await {
                Ok(last_event) => html(
                    StatusCode::OK,
                    pages::job(&job, cancellable, last_event.unwrap_or(0)),
                ),
                Err(error) => trouble(&format!("{error:#}")),
            }
        }
        Ok(_) => html(StatusCode::NOT_FOUND, pages::not_found(&id)),
        Err(error) => trouble(&format!("{error:#}")),
    }
}

fn can_cancel(caller: &Principal, job: &crate::store::Job) -> bool {
    !job.status.is_terminal() && caller.can_cancel(job.submitted_by.as_deref())
}

async fn engines(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some(caller) = principal_of(&state.access, &headers) else {
        return sign_in("Engines");
    };
    if !caller.sees_engines() {
        return html(
            StatusCode::FORBIDDEN,
            pages::forbidden(
                "Engines",
                "The engines, their instances and their errors are shown to admin tokens only.",
            ),
        );
    }
    let engine: Arc<dyn Engine> = state.engine.clone().unwrap_or_else(|| Arc::new(NoEngine));
    let (ping, description) = tokio::join!(engine.ping(), engine.describe());
    let database = state
        .store
        .ping()
        .await
        .map_err(|error| format!("{error:#}"));
    html(
        StatusCode::OK,
        pages::engines(
            ping.map_err(|error| error.to_string()),
            description.map_err(|error| error.to_string()),
            database,
        ),
    )
}

/// The sign-in page, for a page asked for without a token it needs.
fn sign_in(title: &str) -> Response {
    html(StatusCode::UNAUTHORIZED, pages::sign_in(title))
}

fn trouble(detail: &str) -> Response {
    tracing::error!(error = %detail, "rendering a dashboard page");
    html(StatusCode::SERVICE_UNAVAILABLE, pages::trouble())
}

fn html(status: StatusCode, markup: Markup) -> Response {
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            // Pages change with every job; the script asks again itself.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; script-src 'self'; style-src 'self'; \
                     connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                     form-action 'self'; frame-ancestors 'none'",
                ),
            ),
        ],
        markup,
    )
        .into_response()
}

async fn script() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/javascript; charset=utf-8"),
        )],
        SCRIPT,
    )
}

async fn style() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/css; charset=utf-8"),
        )],
        STYLE,
    )
}
