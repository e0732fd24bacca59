//! `/metrics`: Prometheus text, for scrapers; open like the probes, or
//! behind a token of its own (`--metrics-token`).

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::auth::bearer_digest;
use super::error::{ApiError, ErrorBody};
use crate::metrics::{CONTENT_TYPE, Metrics};

/// Metrics in the Prometheus text format.
///
/// Jobs by status, queued and in-flight targets (read from the database at
/// each scrape), step durations by step and outcome, bytes pushed, retries
/// by kind, webhook deliveries by outcome, HTTP requests by route template
/// and status with their latency, and the build's version. With
/// `--metrics-token`, only for `Authorization: Bearer` that token (the API
/// tokens do not open it, nor does it open the API).
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses(
        (status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String),
        (status = 401, description = "`--metrics-token` is set and the request does not carry it", body = ErrorBody),
        (status = 503, description = "The database is busy; see Retry-After"),
    ))]
pub async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(token) = &state.metrics_token
        && !bearer_digest(&headers).is_some_and(|presented| token.matches(&presented))
    {
        return Err(ApiError::Unauthorized);
    }
    let text = state.metrics.render(&state.store).await?;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response())
}

/// Counts and times every request by its route's template. Requests that
/// match no route share one label, so a scan of random paths cannot grow
/// the number of series.
pub async fn measure(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let response = next.run(request).await;
    metrics.http_request(
        method.as_str(),
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}
