//! Liveness and readiness.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;

/// How long a dependency may take to answer a readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a readiness report answers probes. The check writes through
/// the database's one writer connection, which claims and lease renewals
/// need: however many probes come, it runs at most once in this time.
const REPORT_FRESH: Duration = Duration::from_secs(1);

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`
    status: String,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "Up", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".to_owned(),
    })
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `unavailable`.
    status: String,
    /// `ok`, or why the database cannot be used.
    database: String,
    /// `ok`, or why the docker engine cannot be used; `none` when publishd
    /// runs without one (`--docker-host none`).
    engine: String,
    /// `sqlite` or `postgres`.
    database_kind: String,
    /// The name of the engine this instance drives (`--engine-name`); null
    /// without one.
    engine_name: Option<String>,
    /// Batches of writes that failed because the task writing them
    /// panicked; it went on with the next (the store's batching writer is
    /// supervised). Anything but 0 is a bug to report.
    writer_restarts: u64,
    /// What the operator chose against advice: an engine reached without
    /// TLS (`--allow-plain-engine`). Empty when nothing.
    warnings: Vec<String>,
}

/// What readiness says of the engine of a publishd without one.
const NOT_PROBED: &str = "none";

/// The last readiness report and when it was made.
#[derive(Default)]
pub struct ReadinessCache(tokio::sync::Mutex<Option<(Instant, Readiness)>>);

/// The database and the Docker engine both answer (checked at most once a second;
/// probes in between get the last report).
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "A dependency does not answer", body = Readiness),
    ))]
pub async fn readyz(
    State(state): State<AppState>,
    Extension(cache): Extension<Arc<ReadinessCache>>,
) -> (StatusCode, Json<Readiness>) {
    // Held across the check, so probes that come meanwhile wait for it and
    // share its report instead of checking again.
    let mut last = cache.0.lock().await;
    let report = match last.as_ref() {
        Some((made, report)) if made.elapsed() < REPORT_FRESH => report.clone(),
        _ => {
            let report = check(&state).await;
            *last = Some((Instant::now(), report.clone()));
            report
        }
    };
    let status = if report.status == "ready" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report))
}

async fn check(state: &AppState) -> Readiness {
    let (database, engine) = tokio::join!(
        probe(async { state.store.ping().await.map_err(|e| format!("{e:#}")) }),
        async {
            match &state.engine {
                Some(engine) => {
                    probe(async { engine.ping().await.map_err(|e| e.to_string()) }).await
                }
                None => NOT_PROBED.to_owned(),
            }
        },
    );
    let ready = database == "ok" && (engine == "ok" || engine == NOT_PROBED);
    Readiness {
        status: if ready { "ready" } else { "unavailable" }.to_owned(),
        database,
        engine,
        database_kind: state.store.kind().to_owned(),
        engine_name: state.instance.engine.clone(),
        writer_restarts: state.store.writer_restarts(),
        warnings: state.warnings.to_vec(),
    }
}

async fn probe(check: impl Future<Output = Result<(), String>>) -> String {
    match tokio::time::timeout(PROBE_TIMEOUT, check).await {
        Ok(Ok(())) => "ok".to_owned(),
        Ok(Err(error)) => error,
        Err(_) => format!("no answer within {PROBE_TIMEOUT:?}"),
    }
}
