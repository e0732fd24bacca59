//! The HTTP layer: translates requests into store and domain calls and back.
//! Every route and schema is in the OpenAPI document served at
//! `/openapi.json` and checked in as `openapi/openapi.json`.

mod audit;
mod auth;
pub mod error;
mod extract;
mod health;
mod jobs;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Json};
use tokio::sync::Notify;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::access::AccessControl;
use crate::credentials::JobCredentials;
use crate::domain::access::Patterns;
use crate::domain::spec::Limits;
use crate::engine::Engine;
use crate::store::Store;
use crate::worker::Cancellations;
use error::{ApiError, InternalErrorDetail};

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub engine: Arc<dyn Engine>,
    pub cancellations: Cancellations,
    /// Wakes idle worker lanes when a job is queued.
    pub wake: Arc<Notify>,
    pub limits: Limits,
    /// Past this many pending targets, new jobs are refused with 503.
    pub max_queued_targets: usize,
    pub job_credentials: JobCredentials,
    /// The tokens in force, and who each is.
    pub access: AccessControl,
    /// Registry hosts the operator allows at all (`--allow-registry`).
    pub allow_registry: Arc<Patterns>,
}

/// Bounds every request; a slow client cannot hold a connection open forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(OpenApi)]
#[openapi(
    info(
        title = "publishd",
        description = "werf-style image publishing (tag with meta labels, push, untag) as a durable HTTP service."
    ),
    tags((name = "jobs", description = "Publish jobs"), (name = "audit", description = "Who did what"),
         (name = "health", description = "Probes")),
    modifiers(&BearerScheme)
)]
struct ApiDoc;

/// Documents the bearer tokens `/api/` takes when tokens are configured.
struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

fn parts() -> (axum::Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(jobs::create_job, jobs::list_jobs))
        .routes(routes!(jobs::get_job))
        .routes(routes!(jobs::cancel_job))
        .routes(routes!(audit::list_audit))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .split_for_parts()
}

/// The OpenAPI document, as served.
pub fn openapi() -> utoipa::openapi::OpenApi {
    parts().1
}

pub fn router(state: AppState) -> axum::Router {
    let (router, document) = parts();
    let document = Arc::new(document);
    router
        .route(
            "/openapi.json",
            get(move || async move { Json(document.as_ref().clone()) }),
        )
        .fallback(|| async { ApiError::NotFound("no such route".to_owned()) })
        .method_not_allowed_fallback(|| async {
            ApiError::MethodNotAllowed("method not allowed on this route".to_owned())
        })
        .layer(DefaultBodyLimit::max(extract::BODY_LIMIT))
        .layer(Extension(Arc::new(health::ReadinessCache::default())))
        .layer(middleware::from_fn_with_state(
            state.access.clone(),
            auth::identify,
        ))
        .layer(middleware::from_fn(log_internal_errors))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Logs the detail of a 500 (or a database 503) that the answer itself
/// keeps private.
async fn log_internal_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    if let Some(InternalErrorDetail(detail)) = response.extensions().get::<InternalErrorDetail>() {
        let status = response.status().as_u16();
        tracing::error!(%method, %path, status, error = %detail, "request failed");
    }
    response
}
