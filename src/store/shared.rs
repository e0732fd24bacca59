//! What both databases read and write with the same SQL, written once,
//! generic over sqlx's database (`$N` placeholders, which SQLite takes too
//! when each appears once and in order): a job's events, the counts for
//! the metrics (read at each scrape, from indexes), and the seeds of
//! registry-side publishing (what the engine pushed of a source image to a
//! registry, per source image id and registry host).

use anyhow::Context;
use sqlx::{Database, Executor, FromRow, IntoArguments};

use uuid::Uuid;

use super::rows::EventRow;
use super::{Event, QueueCounts, StoreResult, now};
use crate::domain::publish_via::Seed;
use crate::domain::status::{JobStatus, TargetStatus};

/// The job's events after `after` (an event id; 0 for all), oldest first.
pub(super) async fn job_events<'c, DB, E>(
    db: E,
    job_id: Uuid,
    after: i64,
    limit: u32,
) -> StoreResult<Vec<Event>>
where
    DB: Database,
    for<'q> <DB as Database>::Arguments<'q>: IntoArguments<'q, DB>,
    for<'r> EventRow: FromRow<'r, DB::Row>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    E: Executor<'c, Database = DB>,
{
    let rows: Vec<EventRow> = sqlx::query_as(
        "SELECT id, job_id, at, kind, position, data FROM events
         WHERE job_id = $1 AND id > $2 ORDER BY id LIMIT $3",
    )
    .bind(job_id.to_string())
    .bind(after)
    .bind(i64::from(limit))
    .fetch_all(db)
    .await
    .context("reading a job's events")?;
    rows.into_iter().map(EventRow::into_event).collect()
}

/// The id of the job's last event, if it has any.
pub(super) async fn last_event_of<'c, DB, E>(db: E, job_id: Uuid) -> StoreResult<Option<i64>>
where
    DB: Database,
    for<'q> <DB as Database>::Arguments<'q>: IntoArguments<'q, DB>,
    for<'r> (Option<i64>,): FromRow<'r, DB::Row>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    E: Executor<'c, Database = DB>,
{
    let (last,): (Option<i64>,) = sqlx::query_as("SELECT max(id) FROM events WHERE job_id = $1")
        .bind(job_id.to_string())
        .fetch_one(db)
        .await
        .context("reading a job's last event")?;
    Ok(last)
}

pub(super) async fn queue_counts<'c, DB, E>(db: E) -> StoreResult<QueueCounts>
where
    DB: Database,
    for<'q> <DB as Database>::Arguments<'q>: IntoArguments<'q, DB>,
    for<'r> (String, i64): FromRow<'r, DB::Row>,
    E: Executor<'c, Database = DB> + Copy,
{
    let mut counts = QueueCounts::default();
    let jobs: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) AS n FROM jobs GROUP BY status")
            .fetch_all(db)
            .await
            .context("counting jobs")?;
    for (status, n) in jobs {
        if let Some(status) = JobStatus::parse(&status) {
            counts.jobs.insert(status, n);
        }
    }
    let targets: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) AS n FROM targets
         WHERE status IN ('pending', 'tagging', 'pushing', 'untagging') GROUP BY status",
    )
    .fetch_all(db)
    .await
    .context("counting targets")?;
    for (status, n) in targets {
        match TargetStatus::parse(&status) {
            Some(TargetStatus::Pending) => counts.targets_queued += n,
            Some(status) if status.is_in_flight() => counts.targets_in_flight += n,
            _ => {}
        }
    }
    Ok(counts)
}

/// The seed of `source_image_id` in `registry`, if the engine pushed it there.
pub(super) async fn seed<'c, DB, E>(
    db: E,
    source_image_id: &str,
    registry: &str,
) -> StoreResult<Option<Seed>>
where
    DB: Database,
    for<'q> <DB as Database>::Arguments<'q>: IntoArguments<'q, DB>,
    for<'r> (String, String): FromRow<'r, DB::Row>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    E: Executor<'c, Database = DB>,
{
    let row: Option<(String, String)> = sqlx::query_as(
        "SELECT layers, repository FROM seeds WHERE source_image_id = $1 AND registry = $2",
    )
    .bind(source_image_id)
    .bind(registry)
    .fetch_optional(db)
    .await
    .context("reading a seed")?;
    let Some((layers, repository)) = row else {
        return Ok(None);
    };
    Ok(Some(Seed {
        layers: serde_json::from_str(&layers).context("bad seed layers in the database")?,
        repository,
    }))
}

/// Records (or replaces: the last push that left the layers somewhere is
/// the best place to mount them from) the seed of `source_image_id`.
pub(super) async fn record_seed<'c, DB, E>(
    db: E,
    source_image_id: &str,
    registry: &str,
    seed: &Seed,
) -> StoreResult<()>
where
    DB: Database,
    for<'q> <DB as Database>::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    E: Executor<'c, Database = DB>,
{
    sqlx::query(
        "INSERT INTO seeds (source_image_id, registry, layers, repository, recorded_at)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (source_image_id, registry) DO UPDATE SET
             layers = excluded.layers, repository = excluded.repository,
             recorded_at = excluded.recorded_at",
    )
    .bind(source_image_id)
    .bind(registry)
    .bind(serde_json::to_string(&seed.layers)?)
    .bind(seed.repository.as_str())
    .bind(now())
    .execute(db)
    .await
    .context("recording a seed")?;
    Ok(())
}
