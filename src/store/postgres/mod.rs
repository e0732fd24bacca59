//! PostgreSQL's dialect: several publishd instances share one database and
//! coordinate through it alone. What differs from SQLite, and why:
//! - claims skip rows other instances hold (`FOR UPDATE … SKIP LOCKED`), and
//!   a partial unique index keeps two targets of one reference out of
//!   flight at once even when two instances claim at the same moment;
//! - leases run on the database's clock (`clock_timestamp()`), the one clock
//!   every instance reads, and recovery is by lease expiry only: at start-up
//!   nothing in flight is known to be dead (another instance may run it);
//! - the pending count and the event counter are one-row tables whose row
//!   locks make the queue limit exact and event ids commit-ordered;
//! - nothing is answered from memory: another instance writes behind this
//!   one's back.
//!
//! Lock order, so that transactions never deadlock: a job's row before its
//! targets' (every transaction that changes a target and then its job locks
//! the job first; a claim locks both at once, skipping either if held),
//! then `pending_targets`, then `owners`; `event_counter` last of all, at
//! commit (see the migration).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use sqlx::Postgres;
use sqlx::postgres::{PgConnection, PgPoolOptions};
use uuid::Uuid;

use super::rows::{DueDeliveryRow, InstanceRow};
use super::sql::{Dialect, KeyRace, ONE_IN_FLIGHT, SqlStore, WriteOp};
use super::{
    AuditEntry, AuditOf, Claim, ClaimedTarget, Created, DueDelivery, IN_FLIGHT, Instance,
    InstanceStatus, LIVE_WITHIN, Location, NewJob, StoreResult, TakeOver, now,
};
use crate::domain::naming::reference_key;

/// Connections per instance: lanes, the API and the background loops share them.
const MAX_CONNECTIONS: u32 = 10;

/// How long a caller waits for a connection before the store says it is
/// unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// An instance whose heartbeat is older than this is gone for good: its
/// record is removed.
const FORGET_AFTER: &str = "1 hour";

/// How many times a submission is made again after losing a key race.
const KEY_RACE_TRIES: usize = 3;

/// Claims made again after a race for a reference was lost: the next try
/// sees the winner's claim and takes another target.
const CLAIM_TRIES: usize = 3;

/// How far a delivery handed to this instance is put off for the others:
/// longer than an attempt may take. The attempt's outcome then sets its
/// next attempt.
const TAKEN_FOR: Duration = Duration::from_secs(60);

/// Connects to the database at `url` and applies migrations. Several
/// instances may start at once: sqlx's migrator holds an advisory lock
/// while it migrates.
pub(super) async fn open(url: &str, instance: Instance) -> StoreResult<SqlStore<Postgres>> {
    let location = Location::Postgres(url.to_owned());
    let pool = PgPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect(url)
        .await
        .with_context(|| format!("opening the database {location}"))?;
    sqlx::migrate!("./migrations/postgres")
        .run(&pool)
        .await
        .with_context(|| format!("applying migrations to {location}"))?;
    Ok(SqlStore {
        reader: pool.clone(),
        writer: pool,
        instance: Arc::new(instance),
        kept: None,
        local: (),
    })
}

/// The end of a lease `lease` from now on the database's clock, where `$n`
/// is the lease in seconds.
fn lease_end(n: u8) -> String {
    format!("clock_timestamp() + make_interval(secs => ${n})")
}

#[async_trait]
impl Dialect for Postgres {
    type Local = ();
    const KIND: &'static str = "postgres";
    const SHARED: bool = true;
    const ILIKE: &'static str = "ILIKE";
    const LOCK_JOB: &'static str = " FOR NO KEY UPDATE";
    const SKIP_LOCKED: &'static str = " FOR UPDATE SKIP LOCKED";
    const SNAPSHOT: Option<&'static str> =
        Some("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY");
    const LEASE_COLUMN: &'static str = "lease_expires_at";
    /// Its row lock, held to commit, makes `--max-queued-targets` exact
    /// across instances (and makes submissions with one idempotency key
    /// meet one after the other).
    const PENDING_COUNT: &'static str = "SELECT count FROM pending_targets WHERE id = 1 FOR UPDATE";

    fn json_push(array: &str, element: &str) -> String {
        format!("(CAST({array} AS jsonb) || jsonb_build_array({element}))::text")
    }

    fn json_concat(array: &str, more: &str) -> String {
        format!("(CAST({array} AS jsonb) || CAST({more} AS jsonb))::text")
    }

    fn json_object(fields: &str) -> String {
        format!("jsonb_build_object({fields})")
    }

    fn json_parse(text: &str) -> String {
        format!("CAST({text} AS jsonb)")
    }

    fn text_list(list: &str) -> String {
        format!("(SELECT jsonb_array_elements_text(CAST({list} AS jsonb)))")
    }

    fn greatest(a: &str, b: &str) -> String {
        format!("GREATEST({a}, {b})")
    }

    async fn write<T: Send + 'static>(
        store: &SqlStore<Postgres>,
        write: WriteOp<Postgres, T>,
    ) -> StoreResult<T> {
        let mut tx = store.writer.begin().await?;
        let answer = write(&mut tx).await?;
        tx.commit().await.context("committing a write")?;
        Ok(answer)
    }

    async fn write_single<T: Send + 'static>(
        store: &SqlStore<Postgres>,
        write: WriteOp<Postgres, T>,
    ) -> StoreResult<T> {
        let mut conn = store.writer.acquire().await?;
        write(&mut conn).await
    }

    fn rows_affected(result: &sqlx::postgres::PgQueryResult) -> u64 {
        result.rows_affected()
    }

    fn violates(error: &sqlx::Error, index: &str) -> bool {
        match error {
            sqlx::Error::Database(error) => {
                error.code().as_deref() == Some("23505") && error.constraint() == Some(index)
            }
            _ => false,
        }
    }

    async fn insert_images(conn: &mut PgConnection, new: &NewJob) -> StoreResult<()> {
        let images = &new.plan.images;
        sqlx::query(
            "INSERT INTO job_images (job_id, position, name, source, source_image_id,
                                     source_digest)
             SELECT $1, position, name, source, source_image_id, source_digest
             FROM UNNEST($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[])
                  AS image (position, name, source, source_image_id, source_digest)",
        )
        .bind(new.id.to_string())
        .bind((0..images.len() as i64).collect::<Vec<_>>())
        .bind(images.iter().map(|i| i.name.clone()).collect::<Vec<_>>())
        .bind(images.iter().map(|i| i.source.clone()).collect::<Vec<_>>())
        .bind(
            images
                .iter()
                .map(|i| i.source_image_id.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            images
                .iter()
                .map(|i| i.source_digest.clone())
                .collect::<Vec<_>>(),
        )
        .execute(conn)
        .await
        .context("inserting the images")?;
        Ok(())
    }

    async fn insert_targets(conn: &mut PgConnection, new: &NewJob) -> StoreResult<()> {
        let targets = &new.plan.targets;
        let column = |value: fn(&crate::domain::spec::PlannedTarget) -> Option<String>| {
            targets.iter().map(value).collect::<Vec<_>>()
        };
        sqlx::query(
            "INSERT INTO targets (job_id, position, image_position, image_name, source, strategy,
                                  tag, reference, reference_key, status, submitted_by)
             SELECT $1, position, image_position, image_name, source, strategy, tag, reference,
                    reference_key, 'pending', $10
             FROM UNNEST($2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[],
                         $7::text[], $8::text[], $9::text[])
                  AS target (position, image_position, image_name, source, strategy, tag,
                             reference, reference_key)
             ORDER BY position",
        )
        .bind(new.id.to_string())
        .bind((0..targets.len() as i64).collect::<Vec<_>>())
        .bind(
            targets
                .iter()
                .map(|t| t.image_index as i64)
                .collect::<Vec<_>>(),
        )
        .bind(column(|t| t.image_name.clone()))
        .bind(column(|t| Some(t.source.clone())))
        .bind(column(|t| Some(t.strategy.as_str().to_owned())))
        .bind(column(|t| t.tag.clone()))
        .bind(column(|t| t.reference.clone()))
        .bind(column(|t| t.reference.as_deref().map(reference_key)))
        .bind(new.submitter.name.as_deref().unwrap_or(""))
        .execute(conn)
        .await
        .context("inserting the targets")?;
        Ok(())
    }

    /// Records that this instance is alive, on the database's clock, and
    /// forgets instances silent for long.
    async fn heartbeat(store: &SqlStore<Postgres>) -> StoreResult<()> {
        let instance = &store.instance;
        sqlx::query(
            "INSERT INTO instances (id, engine, address, started_at, heartbeat_at)
             VALUES ($1, $2, $3, $4, clock_timestamp())
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = clock_timestamp()",
        )
        .bind(instance.id.to_string())
        .bind(&instance.engine)
        .bind(&instance.address)
        .bind(now())
        .execute(&store.writer)
        .await
        .context("recording this instance's heartbeat")?;
        sqlx::query(&format!(
            "DELETE FROM instances
             WHERE heartbeat_at < clock_timestamp() - interval '{FORGET_AFTER}'"
        ))
        .execute(&store.writer)
        .await
        .context("forgetting instances gone")?;
        Ok(())
    }

    async fn leave(store: &SqlStore<Postgres>) -> StoreResult<()> {
        sqlx::query("DELETE FROM instances WHERE id = $1")
            .bind(store.instance.id.to_string())
            .execute(&store.writer)
            .await
            .context("removing this instance's record")?;
        Ok(())
    }

    async fn live_engines(store: &SqlStore<Postgres>) -> StoreResult<Vec<String>> {
        let engines = sqlx::query_scalar(
            "SELECT DISTINCT engine FROM instances
             WHERE engine IS NOT NULL
               AND heartbeat_at > clock_timestamp() - make_interval(secs => $1)
             ORDER BY engine",
        )
        .bind(LIVE_WITHIN.as_secs_f64())
        .fetch_all(&store.reader)
        .await
        .context("listing the engines driven")?;
        Ok(engines)
    }

    async fn instances(
        store: &SqlStore<Postgres>,
    ) -> StoreResult<Vec<(Option<String>, InstanceStatus)>> {
        let instances: Vec<InstanceRow> = sqlx::query_as(
            "SELECT id, engine, address, started_at,
                    EXTRACT(EPOCH FROM clock_timestamp() - heartbeat_at)::float8
                        AS heartbeat_age_seconds
             FROM instances",
        )
        .fetch_all(&store.reader)
        .await
        .context("listing instances")?;
        instances
            .into_iter()
            .map(InstanceRow::into_instance)
            .collect()
    }

    /// One transaction per submission. Two submissions of one key at once
    /// both miss the key's look-up; the unique index stops the second at
    /// its insert (`KeyRace`), and it is made again and finds the first.
    async fn create_job(
        store: &SqlStore<Postgres>,
        new: NewJob,
        audit: Option<AuditOf>,
    ) -> StoreResult<(Created, Option<AuditEntry>)> {
        let mut tries = 0;
        loop {
            tries += 1;
            let mut tx = store.writer.begin().await?;
            let created =
                match SqlStore::<Postgres>::insert_job(&mut tx, &new, store.instance.id, false)
                    .await
                {
                    Ok(created) => created,
                    Err(error) if error.is::<KeyRace>() && tries < KEY_RACE_TRIES => {
                        tx.rollback().await?;
                        continue;
                    }
                    Err(error) => return Err(error),
                };
            if !matches!(created, Created::New(_)) {
                // A refusal may come after the job's rows were written: only
                // its audit record stays.
                tx.rollback().await?;
                tx = store.writer.begin().await?;
            }
            let entry = audit.map(|audit| audit(&created));
            if let Some(entry) = &entry {
                SqlStore::<Postgres>::insert_audit(&mut tx, entry).await?;
            }
            tx.commit().await.context("committing a submission")?;
            return Ok((created, entry));
        }
    }

    async fn record_audit(store: &SqlStore<Postgres>, entry: AuditEntry) -> StoreResult<()> {
        let mut conn = store.writer.acquire().await?;
        SqlStore::<Postgres>::insert_audit(&mut conn, &entry).await
    }

    /// Skips targets and jobs another transaction holds. Two instances that
    /// pick two targets of one reference at the same moment meet at the
    /// unique index: the loser tries again, and then sees the winner's claim.
    async fn claim_target(
        store: &SqlStore<Postgres>,
        lease: Duration,
    ) -> StoreResult<Option<ClaimedTarget>> {
        let now = now();
        for _ in 0..CLAIM_TRIES {
            let token = Uuid::now_v7().to_string();
            let mut tx = store.writer.begin().await?;
            let claimed = sqlx::query_scalar::<_, i64>(&format!(
                "UPDATE targets
                 SET status = 'tagging', attempts = attempts + 1, runs = runs + 1, error = NULL,
                     started_at = COALESCE(started_at, $1), claim_token = $2,
                     lease_expires_at = {lease_end},
                     previous_prior_image_id = CASE WHEN created_image_id IS NOT NULL
                         THEN prior_image_id ELSE previous_prior_image_id END,
                     previous_created_image_id = COALESCE(created_image_id, previous_created_image_id),
                     prior_image_id = NULL, created_image_id = NULL, staging_reference = NULL,
                     not_before = NULL
                 WHERE id = (
                     SELECT t.id FROM targets t JOIN jobs j ON j.id = t.job_id
                          LEFT JOIN owners o ON o.name = t.submitted_by
                     WHERE t.status = 'pending' AND NOT j.cancel_requested
                       AND (j.engine IS NULL OR j.engine = $4)
                       AND (j.accepted_by IS NULL OR j.accepted_by = $5 OR NOT EXISTS (
                            SELECT 1 FROM instances i WHERE i.id = j.accepted_by
                              AND i.heartbeat_at > clock_timestamp() - make_interval(secs => $6)))
                       AND (t.not_before IS NULL OR t.not_before <= $1)
                       AND (t.reference_key IS NULL OR NOT EXISTS (
                            SELECT 1 FROM targets u
                            WHERE u.reference_key = t.reference_key AND u.status IN {IN_FLIGHT}))
                     ORDER BY COALESCE(o.pass, 0), t.job_id, t.position
                     LIMIT 1
                     FOR UPDATE OF t SKIP LOCKED FOR NO KEY UPDATE OF j SKIP LOCKED)
                 RETURNING id",
                lease_end = lease_end(3)
            ))
            .bind(&now)
            .bind(&token)
            .bind(lease.as_secs_f64())
            .bind(&store.instance.engine)
            .bind(store.instance.id.to_string())
            .bind(LIVE_WITHIN.as_secs_f64())
            .fetch_optional(&mut *tx)
            .await;
            let id = match claimed {
                Ok(Some(id)) => id,
                Ok(None) => {
                    tx.rollback().await?;
                    return Ok(None);
                }
                Err(error) if Self::violates(&error, ONE_IN_FLIGHT) => {
                    tx.rollback().await?;
                    continue;
                }
                Err(error) => return Err(error).context("claiming a target"),
            };
            let target = SqlStore::<Postgres>::claimed(&mut tx, id).await?;
            tx.commit().await.context("committing a claim")?;
            return Ok(Some(target));
        }
        Ok(None)
    }

    async fn renew_lease(
        store: &SqlStore<Postgres>,
        claim: &Claim,
        lease: Duration,
    ) -> StoreResult<bool> {
        let result = sqlx::query(&format!(
            "UPDATE targets SET lease_expires_at = {}
             WHERE id = $2 AND claim_token = $3 AND status IN {IN_FLIGHT}",
            lease_end(1)
        ))
        .bind(lease.as_secs_f64())
        .bind(claim.target_id)
        .bind(&claim.token)
        .execute(&store.writer)
        .await
        .context("renewing a lease")?;
        Ok(result.rows_affected() == 1)
    }

    /// Takes over on an expired lease on the database's clock.
    async fn take_over(
        store: &SqlStore<Postgres>,
        target_id: i64,
        condition: TakeOver<'_>,
        lease: Duration,
    ) -> StoreResult<Option<Claim>> {
        let token = Uuid::now_v7().to_string();
        let (held_by, expired) = match condition {
            TakeOver::Any => (None, false),
            TakeOver::Expired { token } => (Some(token), true),
            TakeOver::Held { token } => (Some(token), false),
        };
        let result = sqlx::query(&format!(
            "UPDATE targets SET claim_token = $1, lease_expires_at = {}
             WHERE id = $3 AND status IN {IN_FLIGHT}
               AND ($4::text IS NULL OR claim_token = $4)
               AND (NOT $5 OR lease_expires_at IS NULL OR lease_expires_at < clock_timestamp())",
            lease_end(2)
        ))
        .bind(&token)
        .bind(lease.as_secs_f64())
        .bind(target_id)
        .bind(held_by)
        .bind(expired)
        .execute(&store.writer)
        .await
        .context("taking over a target")?;
        Ok((result.rows_affected() == 1).then_some(Claim { target_id, token }))
    }

    /// Nothing: with several instances on one database, a target in flight
    /// at start-up may well be another instance's. Recovery is by lease
    /// expiry only.
    async fn in_flight_targets(_store: &SqlStore<Postgres>) -> StoreResult<Vec<i64>> {
        Ok(Vec::new())
    }

    /// Of jobs on this instance's engine (or on none) only: only an
    /// instance on that engine can undo what was done there.
    async fn expired_leases(store: &SqlStore<Postgres>) -> StoreResult<Vec<(i64, String)>> {
        let expired = sqlx::query_as(&format!(
            "SELECT t.id, t.claim_token FROM targets t JOIN jobs j ON j.id = t.job_id
             WHERE t.status IN {IN_FLIGHT} AND t.claim_token IS NOT NULL
               AND (t.lease_expires_at IS NULL OR t.lease_expires_at < clock_timestamp())
               AND (j.engine IS NULL OR j.engine = $1)
             ORDER BY t.id"
        ))
        .bind(&store.instance.engine)
        .fetch_all(&store.reader)
        .await
        .context("listing expired leases")?;
        Ok(expired)
    }

    /// Taken for this instance: in the same statement their next attempt
    /// moves a little into the future, so no other instance sends them
    /// meanwhile (rows another instance is taking are skipped, not waited
    /// for). Due by the database's clock, the one the trigger that makes a
    /// delivery writes its first time with.
    async fn due_deliveries(
        store: &SqlStore<Postgres>,
        limit: u32,
    ) -> StoreResult<Vec<DueDelivery>> {
        let rows: Vec<DueDeliveryRow> = sqlx::query_as(
            "WITH due AS (
                 SELECT id, next_attempt_at AS due_at FROM deliveries
                 WHERE state = 'pending' AND next_attempt_at <= publishd_now()
                 ORDER BY next_attempt_at LIMIT $1
                 FOR UPDATE SKIP LOCKED),
             taken AS (
                 UPDATE deliveries d
                 SET next_attempt_at = to_char((clock_timestamp() + make_interval(secs => $2))
                                                   AT TIME ZONE 'UTC',
                                               'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')
                 FROM due WHERE d.id = due.id
                 RETURNING d.id, d.job_id, d.url, d.created_at, d.body,
                           jsonb_array_length(d.attempts::jsonb)::bigint AS tries, due.due_at)
             SELECT * FROM taken ORDER BY due_at, id",
        )
        .bind(i64::from(limit))
        .bind(TAKEN_FOR.as_secs_f64())
        .fetch_all(&store.writer)
        .await
        .context("taking due deliveries")?;
        rows.into_iter().map(DueDeliveryRow::into_due).collect()
    }
}
