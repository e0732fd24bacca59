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

mod submit;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use sqlx::Postgres;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use uuid::Uuid;

use super::rows::{DueDeliveryRow, InstanceRow, JobRow, job_of_json};
use super::sql::{Dialect, SqlStore, WriteOp};
use super::{
    AuditEntry, AuditOf, Claim, ClaimedTarget, Created, DueDelivery, IN_FLIGHT, Instance,
    InstanceStatus, Job, LIVE_WITHIN, Location, NewJob, SessionLimits, StoreResult, TakeOver,
    UnderWay, now,
};

/// Connections per instance: lanes, the API and the background loops share them.
const MAX_CONNECTIONS: u32 = 10;

/// How long a caller waits for a connection before the store says it is
/// unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// An instance whose heartbeat is older than this is gone for good: its
/// record is removed.
const FORGET_AFTER: &str = "1 hour";

/// How far a delivery handed to this instance is put off for the others:
/// longer than an attempt may take. The attempt's outcome then sets its
/// next attempt.
const TAKEN_FOR: Duration = Duration::from_secs(60);

/// What only the PostgreSQL store keeps.
pub(super) struct PgLocal {
    /// This instance's submissions, in batches.
    submissions: submit::Submissions,
}

/// Connects to the database at `url` and applies migrations. Several
/// instances may start at once: sqlx's migrator holds an advisory lock
/// while it migrates.
pub(super) async fn open(
    url: &str,
    instance: Instance,
    limits: SessionLimits,
) -> StoreResult<SqlStore<Postgres>> {
    let location = Location::Postgres(url.to_owned());
    let millis = |limit: Duration| limit.as_millis().to_string();
    let seconds = |limit: Duration| limit.as_secs().max(1).to_string();
    let options = PgConnectOptions::from_str(url)
        .with_context(|| format!("reading the database URL {location}"))?
        .options([
            ("statement_timeout", millis(limits.statement_timeout)),
            ("lock_timeout", millis(limits.lock_timeout)),
            (
                "idle_in_transaction_session_timeout",
                millis(limits.idle_in_transaction),
            ),
            ("tcp_keepalives_idle", seconds(limits.keepalive)),
            ("tcp_keepalives_interval", seconds(limits.keepalive / 3)),
            ("tcp_keepalives_count", "3".to_owned()),
        ]);
    let pool = PgPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
        .with_context(|| format!("opening the database {location}"))?;
    sqlx::migrate!("./migrations/postgres")
        .run(&pool)
        .await
        .with_context(|| format!("applying migrations to {location}"))?;
    let id = instance.id;
    Ok(SqlStore {
        reader: pool.clone(),
        writer: pool.clone(),
        instance: Arc::new(instance),
        kept: None,
        local: PgLocal {
            submissions: submit::start(pool, id),
        },
    })
}

/// The end of a lease `lease` from now on the database's clock, where `$n`
/// is the lease in seconds.
fn lease_end(n: u8) -> String {
    format!("clock_timestamp() + make_interval(secs => ${n})")
}

#[async_trait]
impl Dialect for Postgres {
    type Local = PgLocal;
    const KIND: &'static str = "postgres";
    const SHARED: bool = true;
    const ILIKE: &'static str = "ILIKE";
    const SKIP_LOCKED: &'static str = " FOR UPDATE SKIP LOCKED";
    const INDEXED_BY: bool = false;
    const SNAPSHOT: Option<&'static str> =
        Some("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY");
    const LEASE_COLUMN: &'static str = "lease_expires_at";

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

    fn writer_restarts(store: &SqlStore<Self>) -> u64 {
        store.local.submissions.panics()
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

    /// In one statement, so one round trip and one snapshot: the job's row
    /// with its targets, images and deliveries as JSON arrays.
    async fn read_job(store: &SqlStore<Postgres>, id: Uuid) -> StoreResult<Option<Job>> {
        let mut conn = store.reader.acquire().await?;
        let mut jobs = Self::read_jobs(
            &mut conn,
            "SELECT * FROM jobs WHERE id = $1",
            &[id.to_string()],
        )
        .await
        .context("loading a job")?;
        Ok(jobs.pop())
    }

    /// In one statement: each job's rows of other tables as JSON arrays.
    async fn read_jobs(
        conn: &mut PgConnection,
        sql: &str,
        values: &[String],
    ) -> StoreResult<Vec<Job>> {
        let whole = format!(
            "SELECT j.*,
                    COALESCE((SELECT json_agg(i ORDER BY i.position) FROM job_images i
                              WHERE i.job_id = j.id), '[]')::text AS images_json,
                    COALESCE((SELECT json_agg(t ORDER BY t.position) FROM targets t
                              WHERE t.job_id = j.id), '[]')::text AS targets_json,
                    COALESCE((SELECT json_agg(d ORDER BY d.created_at) FROM deliveries d
                              WHERE d.job_id = j.id), '[]')::text AS deliveries_json
             FROM ({sql}) AS j ORDER BY j.id DESC"
        );
        let mut query = sqlx::query(&whole);
        for value in values {
            query = query.bind(value.as_str());
        }
        let rows: Vec<(JobRow, String, String, String)> = query
            .try_map(|row: sqlx::postgres::PgRow| {
                use sqlx::{FromRow, Row};
                Ok((
                    JobRow::from_row(&row)?,
                    row.try_get("images_json")?,
                    row.try_get("targets_json")?,
                    row.try_get("deliveries_json")?,
                ))
            })
            .fetch_all(conn)
            .await
            .context("loading jobs")?;
        rows.into_iter()
            .map(|(job, images, targets, deliveries)| {
                job_of_json(job, &images, &targets, &deliveries)
            })
            .collect()
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

    /// Batched with what this instance receives at the same time (see
    /// `submit.rs`).
    async fn create_job(
        store: &SqlStore<Postgres>,
        new: NewJob,
        audit: Option<AuditOf>,
    ) -> StoreResult<(Created, Option<AuditEntry>)> {
        store
            .local
            .submissions
            .write(submit::Submission { new, audit })
            .await
    }

    async fn record_audit(store: &SqlStore<Postgres>, entry: AuditEntry) -> StoreResult<()> {
        let mut conn = store.writer.acquire().await?;
        SqlStore::<Postgres>::insert_audit(&mut conn, &entry).await
    }

    /// One call of `publishd_claim` (see the migration): no transaction
    /// spans a round trip. The claimed target is read after its commit; a
    /// claim whose answer a cut connection lost is found by its token.
    async fn claim_target(
        store: &SqlStore<Postgres>,
        lease: Duration,
    ) -> StoreResult<Option<ClaimedTarget>> {
        let token = Uuid::now_v7().to_string();
        let claimed =
            sqlx::query_scalar::<_, Option<i64>>("SELECT publishd_claim($1, $2, $3, $4, $5, $6)")
                .bind(&token)
                .bind(now())
                .bind(lease.as_secs_f64())
                .bind(&store.instance.engine)
                .bind(store.instance.id.to_string())
                .bind(LIVE_WITHIN.as_secs_f64())
                .fetch_one(&store.writer)
                .await;
        let id = match claimed {
            Ok(id) => id,
            Err(error) if cut_off(&error) => {
                sqlx::query_scalar("SELECT id FROM targets WHERE claim_token = $1")
                    .bind(&token)
                    .fetch_optional(&store.reader)
                    .await
                    .context("looking for a claim whose answer was lost")?
            }
            Err(error) => return Err(error).context("claiming a target"),
        };
        match id {
            Some(id) => {
                let mut conn = store.reader.acquire().await?;
                SqlStore::<Postgres>::load_claimed(&mut conn, id)
                    .await
                    .map(Some)
            }
            None => Ok(None),
        }
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
    /// for; those under way here are not due any more). Due by the
    /// database's clock, the one the trigger that makes a delivery writes
    /// its first time with. The turns are counted without locks; the rows
    /// are locked, and checked still due, after.
    async fn due_deliveries(
        store: &SqlStore<Postgres>,
        limit: u32,
        per_submitter: u32,
        under_way: &[UnderWay],
    ) -> StoreResult<Vec<DueDelivery>> {
        let rows: Vec<DueDeliveryRow> = sqlx::query_as(
            "WITH busy AS (
                 SELECT value ->> 'id' AS id, value ->> 'submitter' AS submitter
                 FROM jsonb_array_elements($3::jsonb)),
             ranked AS (
                 SELECT d.id, d.next_attempt_at AS due_at,
                        COALESCE(j.submitted_by, '') AS submitter,
                        row_number() OVER (PARTITION BY COALESCE(j.submitted_by, '')
                                           ORDER BY d.next_attempt_at, d.id) AS turn
                 FROM deliveries d LEFT JOIN jobs j ON j.id = d.job_id
                 WHERE d.state = 'pending' AND d.next_attempt_at <= publishd_now()
                   AND d.id NOT IN (SELECT id FROM busy)),
             due AS (
                 SELECT d.id, ranked.due_at, ranked.submitter, ranked.turn
                 FROM deliveries d JOIN ranked ON ranked.id = d.id
                 WHERE d.state = 'pending' AND d.next_attempt_at <= publishd_now()
                   AND ranked.turn + (SELECT count(*) FROM busy
                                      WHERE busy.submitter = ranked.submitter) <= $4
                 ORDER BY ranked.turn, ranked.due_at, d.id LIMIT $1
                 FOR UPDATE OF d SKIP LOCKED),
             taken AS (
                 UPDATE deliveries d
                 SET next_attempt_at = to_char((clock_timestamp() + make_interval(secs => $2))
                                                   AT TIME ZONE 'UTC',
                                               'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')
                 FROM due WHERE d.id = due.id
                 RETURNING d.id, d.job_id, due.submitter, d.url, d.created_at, d.body,
                           jsonb_array_length(d.attempts::jsonb)::bigint AS tries,
                           due.due_at, due.turn)
             SELECT * FROM taken ORDER BY turn, due_at, id",
        )
        .bind(i64::from(limit))
        .bind(TAKEN_FOR.as_secs_f64())
        .bind(serde_json::to_string(under_way)?)
        .bind(i64::from(per_submitter))
        .fetch_all(&store.writer)
        .await
        .context("taking due deliveries")?;
        rows.into_iter().map(DueDeliveryRow::into_due).collect()
    }
}

/// Whether `error` says the connection went away: what was sent may or may
/// not have been committed.
fn cut_off(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Io(_) | sqlx::Error::Protocol(_))
}
