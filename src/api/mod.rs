//! The HTTP layer: translates requests into store and domain calls and back.
//! Every route and schema is in the OpenAPI document served at
//! `/openapi.json` and checked in as `openapi/openapi.json`.

mod audit;
mod auth;
mod browsers;
mod docs;
mod engines;
pub mod error;
mod events;
mod extract;
mod health;
mod jobs;
mod metrics;
mod source_ids;
mod sources;
mod ui;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::access::{AccessControl, RouteToken};
use crate::credentials::{DockerConfig, JobCredentials};
use crate::domain::access::Patterns;
use crate::domain::spec::Limits;
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::progress::ProgressHub;
use crate::registry::Registry;
use crate::store::{Instance, Store};
use crate::webhooks::CallbackFence;
use crate::worker::Cancellations;
pub use browsers::Fence;
use error::{ApiError, InternalErrorDetail};
pub use events::EventStreams;
pub use source_ids::SourceIds;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    /// This instance: its engine decides which jobs' sources it looks up.
    pub instance: Arc<Instance>,
    /// `None` with `--docker-host none`: registry sources only.
    pub engine: Option<Arc<dyn Engine>>,
    /// Submissions' source lookups on the engine, shared by concurrent
    /// submissions.
    pub source_ids: SourceIds,
    /// Reads registry sources at submission.
    pub registry: Arc<dyn Registry>,
    /// The docker config's credentials, for registry sources.
    pub credentials: DockerConfig,
    pub cancellations: Cancellations,
    /// Wakes idle worker lanes when a job is queued.
    pub wake: Arc<Notify>,
    pub limits: Limits,
    /// Past this many pending targets, new jobs are refused with 503.
    pub max_queued_targets: usize,
    pub job_credentials: JobCredentials,
    /// The tokens in force, and who each is.
    pub access: AccessControl,
    /// What browsers may send (`--allow-origin`, `--public-url`).
    pub fence: Fence,
    /// Registry hosts the operator allows at all (`--allow-registry`).
    pub allow_registry: Arc<Patterns>,
    /// Live push progress, for event streams.
    pub progress: ProgressHub,
    /// The event streams' bounds and their jobs' pollers.
    pub streams: EventStreams,
    /// A webhook secret is set, so jobs may name a `callback_url`.
    pub webhooks_enabled: bool,
    /// Where callbacks may go: checked at submission.
    pub callbacks: CallbackFence,
    /// Cancelled when the service stops: event streams end (their clients
    /// resume with `Last-Event-ID`) instead of holding the drain.
    pub stopping: CancellationToken,
    pub metrics: Metrics,
    /// What `/metrics` requires when set (`--metrics-token`).
    pub metrics_token: Option<RouteToken>,
    /// Choices the operator made against advice (an engine over plain
    /// TCP), said by `/readyz`.
    pub warnings: Arc<[String]>,
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
         (name = "engines", description = "The engines and instances sharing the database"),
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
    let (router, mut document) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(jobs::create_job, jobs::list_jobs))
        .routes(routes!(jobs::get_job))
        .routes(routes!(jobs::cancel_job))
        .routes(routes!(events::job_events))
        .routes(routes!(audit::list_audit))
        .routes(routes!(engines::list_engines))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(metrics::metrics))
        .split_for_parts();
    // Once every route is in: the fence answers on every one.
    utoipa::Modify::modify(&browsers::FenceResponses, &mut document);
    (router, document)
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
        .merge(docs::routes())
        .merge(ui::routes())
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
        // Before the token is looked at: without tokens every caller is an
        // admin, so what a page made a browser send is refused first.
        .layer(middleware::from_fn_with_state(
            state.fence.clone(),
            browsers::fence,
        ))
        .layer(middleware::from_fn(log_internal_errors))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            metrics::measure,
        ))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        // The caller's `x-request-id`, or a new one: on every log line of
        // the request and in the answer, so a report names its request.
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// The span every line about a request is logged in.
fn request_span(request: &Request) -> tracing::Span {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        request_id,
        // Recorded once the request names a job (see `jobs::about_job`).
        job_id = tracing::field::Empty,
    )
}

/// Logs the detail of a 500 (or a database 503) that the answer itself
/// keeps private.
async fn log_internal_errors(request: Request, next: Next) -> Response {
    // The request's span already says which request this was.
    let response = next.run(request).await;
    if let Some(InternalErrorDetail(detail)) = response.extensions().get::<InternalErrorDetail>() {
        let status = response.status().as_u16();
        tracing::error!(status, error = %detail, "request failed");
    }
    response
}
