//! The store, written once for both databases: [`SqlStore`] implements
//! [`Records`] with the SQL they share (sqlx's `$N` placeholders, which
//! SQLite takes too), and asks its [`Dialect`] for what differs: how a
//! write is committed (SQLite's group commit, PostgreSQL's transactions),
//! claims and leases (a monotonic clock in one process, or the database's
//! clock and row locks shared by instances), the JSON functions, and what
//! only one of them keeps (instances, the read cache).

mod jobs;

#[cfg(test)]
pub(super) use jobs::{PageSql, page_index, rows_of_jobs_sql};

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use futures_util::future::BoxFuture;
use sqlx::{Database, Executor, IntoArguments, Pool};
use uuid::Uuid;

use super::queue::fenced;
use super::read_cache::KeptReads;
use super::rows::{AuditRow, EngineTargetsRow, EventRow, parse_enum};
use super::{
    AuditEntry, AuditOf, AuditPage, Bound, Cancelled, Claim, ClaimLost, ClaimedTarget, Created,
    Deleted, DeliveryAttempt, DeliveryOutcome, DueDelivery, EngineStatus, Event, IN_FLIGHT,
    Instance, InstanceStatus, Job, JobFilter, JobPage, NewJob, PageKey, QueueCounts, Records,
    Release, Released, StoreResult, TakeOver, TargetOutcome, UnderWay, bounded, engines_of, now,
};
use crate::domain::publish_via::{PublishedVia, Seed, SeedKey};
use crate::domain::source::ResolvedSource;
use crate::domain::status::{JobStatus, TargetStatus};

/// One store over database `D`.
pub(super) struct SqlStore<D: Dialect> {
    /// Where reads go: SQLite's read-only connections, PostgreSQL's pool.
    pub reader: Pool<D>,
    /// Where writes go: SQLite's one writer connection, PostgreSQL's pool.
    pub writer: Pool<D>,
    pub instance: Arc<Instance>,
    /// Jobs and pages as last read, while nothing was written since: only
    /// where every write is this process's own (SQLite).
    pub kept: Option<KeptReads>,
    /// What only this database's store keeps.
    pub local: D::Local,
}

/// A write, run on one connection of the writer in one transaction.
pub(super) type WriteOp<D, T> = Box<
    dyn for<'c> FnOnce(&'c mut <D as Database>::Connection) -> BoxFuture<'c, StoreResult<T>> + Send,
>;

/// What differs between the databases: SQL fragments, how writes are
/// committed, and the operations written for each (claims, leases,
/// submissions, instances, taking deliveries).
#[async_trait]
pub(super) trait Dialect: Database + Sized {
    type Local: Send + Sync + 'static;
    /// `sqlite` or `postgres`.
    const KIND: &'static str;
    /// Whether other instances share the database.
    const SHARED: bool;
    /// A LIKE that ignores case (SQLite's LIKE does, for ASCII).
    const ILIKE: &'static str;
    /// Appended to a SELECT of rows one instance takes for itself.
    const SKIP_LOCKED: &'static str;
    /// Whether a table's name in a FROM may name the index to read it
    /// through (SQLite's `INDEXED BY`): the statement then fails rather
    /// than scan if the index cannot serve it.
    const INDEXED_BY: bool;
    /// Makes a read transaction just begun read one snapshot throughout
    /// (SQLite's read transactions do already).
    const SNAPSHOT: Option<&'static str>;
    /// The column of a claim's lease end: milliseconds on one process's
    /// monotonic clock (SQLite), or a time on the database's (PostgreSQL).
    const LEASE_COLUMN: &'static str;

    /// SQL: the JSON array (text) `array` with `element` appended (a JSON
    /// object expression, or a text that becomes a JSON string).
    fn json_push(array: &str, element: &str) -> String;
    /// SQL: the JSON arrays (texts) `array` and `more` concatenated.
    fn json_concat(array: &str, more: &str) -> String;
    /// SQL: a JSON object (as text) of alternating key and value expressions.
    fn json_object(fields: &str) -> String;
    /// SQL: JSON text parsed, as an element for `json_push`.
    fn json_parse(text: &str) -> String;
    /// SQL: the strings of the JSON array `list`, as a subquery for `IN`.
    fn text_list(list: &str) -> String;
    /// SQL: the greater of two values.
    fn greatest(a: &str, b: &str) -> String;

    /// Runs `write` as one transaction and answers after its commit.
    async fn write<T: Send + 'static>(
        store: &SqlStore<Self>,
        write: WriteOp<Self, T>,
    ) -> StoreResult<T>;
    /// Runs `write`, one statement, committed on its own where the database
    /// allows (PostgreSQL: no BEGIN and COMMIT round trips).
    async fn write_single<T: Send + 'static>(
        store: &SqlStore<Self>,
        write: WriteOp<Self, T>,
    ) -> StoreResult<T>;
    fn rows_affected(result: &Self::QueryResult) -> u64;
    /// Whether `error` is a unique violation of `index`: another instance
    /// raced this one to it.
    fn violates(error: &sqlx::Error, index: &str) -> bool;

    /// Batches the writing task answered with an error after a panic.
    fn writer_restarts(store: &SqlStore<Self>) -> u64;
    async fn heartbeat(store: &SqlStore<Self>) -> StoreResult<()>;
    /// A job whole, as of one moment.
    async fn read_job(store: &SqlStore<Self>, id: Uuid) -> StoreResult<Option<Job>>;
    /// The jobs `sql` selects (rows of `jobs`; `values` bound to `$1`,
    /// `$2`, ...), whole, as of one moment (the caller's transaction's,
    /// if it has one).
    async fn read_jobs(
        conn: &mut Self::Connection,
        sql: &str,
        values: &[String],
    ) -> StoreResult<Vec<Job>>;
    async fn leave(store: &SqlStore<Self>) -> StoreResult<()>;
    async fn live_engines(store: &SqlStore<Self>) -> StoreResult<Vec<String>>;
    /// The instances, each with the engine it drives.
    async fn instances(
        store: &SqlStore<Self>,
    ) -> StoreResult<Vec<(Option<String>, InstanceStatus)>>;
    async fn create_job(
        store: &SqlStore<Self>,
        new: NewJob,
        audit: Option<AuditOf>,
    ) -> StoreResult<(Created, Option<AuditEntry>)>;
    async fn record_audit(store: &SqlStore<Self>, entry: AuditEntry) -> StoreResult<()>;
    async fn claim_target(
        store: &SqlStore<Self>,
        lease: Duration,
    ) -> StoreResult<Option<ClaimedTarget>>;
    async fn renew_lease(
        store: &SqlStore<Self>,
        claim: &Claim,
        lease: Duration,
    ) -> StoreResult<bool>;
    async fn take_over(
        store: &SqlStore<Self>,
        target_id: i64,
        condition: TakeOver<'_>,
        lease: Duration,
    ) -> StoreResult<Option<Claim>>;
    async fn in_flight_targets(store: &SqlStore<Self>) -> StoreResult<Vec<i64>>;
    async fn expired_leases(store: &SqlStore<Self>) -> StoreResult<Vec<(i64, String)>>;
    async fn due_deliveries(
        store: &SqlStore<Self>,
        limit: u32,
        per_submitter: u32,
        under_way: &[UnderWay],
    ) -> StoreResult<Vec<DueDelivery>>;
}

/// The partial unique index that keeps two targets of one reference out of
/// flight at once.
pub(super) const ONE_IN_FLIGHT: &str = "targets_one_in_flight_per_reference";

/// Whether a store error was caused by a unique violation of `index`.
pub(super) fn violated<D: Dialect>(error: &anyhow::Error, index: &str) -> bool {
    error
        .chain()
        .filter_map(|cause| cause.downcast_ref::<sqlx::Error>())
        .any(|error| D::violates(error, index))
}

#[async_trait]
impl<D> Records for SqlStore<D>
where
    D: Dialect,
    for<'c> &'c mut D::Connection: Executor<'c, Database = D>,
    for<'q> D::Arguments<'q>: IntoArguments<'q, D>,
    for<'q> String: sqlx::Encode<'q, D> + sqlx::Decode<'q, D> + sqlx::Type<D>,
    for<'q> Option<String>: sqlx::Encode<'q, D>,
    for<'q> &'q str: sqlx::Encode<'q, D> + sqlx::Type<D>,
    for<'q> Option<&'q str>: sqlx::Encode<'q, D>,
    for<'q> i64: sqlx::Encode<'q, D> + sqlx::Decode<'q, D> + sqlx::Type<D>,
    for<'q> Option<i64>: sqlx::Encode<'q, D>,
    for<'q> bool: sqlx::Encode<'q, D> + sqlx::Decode<'q, D> + sqlx::Type<D>,
    for<'q> f64: sqlx::Decode<'q, D> + sqlx::Type<D>,
    for<'r> &'r str: sqlx::ColumnIndex<D::Row>,
    usize: sqlx::ColumnIndex<D::Row>,
{
    fn is_shared(&self) -> bool {
        D::SHARED
    }

    fn kind(&self) -> &'static str {
        D::KIND
    }

    fn writer_restarts(&self) -> u64 {
        D::writer_restarts(self)
    }

    async fn heartbeat(&self) -> StoreResult<()> {
        D::heartbeat(self).await
    }

    async fn leave(&self) -> StoreResult<()> {
        D::leave(self).await
    }

    async fn engine_of_key(
        &self,
        submitter: &str,
        key: &str,
    ) -> StoreResult<Option<Option<String>>> {
        let engine = sqlx::query_scalar(
            "SELECT engine FROM jobs WHERE submitted_by = $1 AND idempotency_key = $2",
        )
        .bind(submitter)
        .bind(key)
        .fetch_optional(&self.reader)
        .await
        .context("looking up the idempotency key")?;
        Ok(engine)
    }

    async fn live_engines(&self) -> StoreResult<Vec<String>> {
        D::live_engines(self).await
    }

    async fn engines(&self) -> StoreResult<Vec<EngineStatus>> {
        let instances = D::instances(self).await?;
        let targets: Vec<EngineTargetsRow> = sqlx::query_as(&format!(
            "SELECT engine,
                    CAST(COALESCE(sum(n) FILTER (WHERE status = 'pending'), 0) AS BIGINT)
                        AS queued,
                    CAST(COALESCE(sum(n) FILTER (WHERE status IN {IN_FLIGHT}), 0) AS BIGINT)
                        AS in_flight
             FROM counts WHERE kind = 'target' AND engine <> ''
             GROUP BY engine HAVING sum(n) FILTER (WHERE status = 'pending' OR status IN {IN_FLIGHT}) > 0"
        ))
        .fetch_all(&self.reader)
        .await
        .context("counting targets by engine")?;
        Ok(engines_of(instances, targets))
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .context("reading the database")?;
        let now = now();
        D::write_single(
            self,
            Box::new(move |conn| {
                Box::pin(async move {
                    sqlx::query(
                        "INSERT INTO liveness (id, checked_at) VALUES (1, $1)
                         ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at",
                    )
                    .bind(now)
                    .execute(conn)
                    .await
                    .context("writing to the database")?;
                    Ok(())
                })
            }),
        )
        .await
    }

    async fn create_job(&self, new: NewJob) -> StoreResult<Created> {
        Ok(D::create_job(self, new, None).await?.0)
    }

    async fn create_audited_job(
        &self,
        new: NewJob,
        audit: AuditOf,
    ) -> StoreResult<(Created, AuditEntry)> {
        match D::create_job(self, new, Some(audit)).await? {
            (created, Some(entry)) => Ok((created, entry)),
            (_, None) => unreachable!("an audited job's write answers its record"),
        }
    }

    async fn get_job(&self, id: Uuid) -> StoreResult<Option<Job>> {
        let checkouts = self.kept.as_ref().and_then(|kept| kept.writer_idle());
        if let (Some(kept), Some(checkouts)) = (&self.kept, checkouts)
            && let Some(job) = kept.jobs.get(&id, checkouts)
        {
            return Ok(Some(job));
        }
        let job = D::read_job(self, id).await?;
        if let (Some(kept), Some(checkouts), Some(job)) = (&self.kept, checkouts, &job) {
            kept.jobs.put(id, job, checkouts);
        }
        Ok(job)
    }

    async fn list_jobs(
        &self,
        filter: &JobFilter,
        limit: u32,
        before: Option<Uuid>,
    ) -> StoreResult<JobPage> {
        let key = PageKey {
            filter: filter.clone(),
            limit,
            before,
        };
        let checkouts = self.kept.as_ref().and_then(|kept| kept.writer_idle());
        if let (Some(kept), Some(checkouts)) = (&self.kept, checkouts)
            && let Some(page) = kept.pages.get(&key, checkouts)
        {
            return Ok(page);
        }
        let page = self.read_page(&key).await?;
        if let (Some(kept), Some(checkouts)) = (&self.kept, checkouts) {
            kept.pages.put(key, &page, checkouts);
        }
        Ok(page)
    }

    /// The flag first: from its commit on no claim takes a target of the
    /// job, and a target going back to the queue is cancelled instead; then
    /// what is still pending. Two statements, neither waiting for the other.
    async fn cancel_job(&self, id: Uuid) -> StoreResult<Cancelled> {
        D::write_single(
            self,
            Box::new(move |conn| {
                Box::pin(async move {
                    let flagged: Option<String> = sqlx::query_scalar(
                        "UPDATE jobs SET cancel_requested = TRUE
                         WHERE id = $1 AND status NOT IN ('succeeded', 'failed', 'cancelled')
                         RETURNING id",
                    )
                    .bind(id.to_string())
                    .fetch_optional(&mut *conn)
                    .await
                    .context("flagging a job cancelled")?;
                    if flagged.is_some() {
                        sqlx::query(
                            "UPDATE targets SET status = 'cancelled', finished_at = $1,
                                                error = 'cancelled before it started'
                             WHERE job_id = $2 AND status = 'pending'",
                        )
                        .bind(now())
                        .bind(id.to_string())
                        .execute(&mut *conn)
                        .await
                        .context("cancelling pending targets")?;
                    }
                    Ok(match (Self::load_job(conn, id).await?, flagged) {
                        (None, _) => Cancelled::NotFound,
                        (Some(job), None) => Cancelled::AlreadyFinished(job),
                        (Some(job), Some(_)) => Cancelled::Requested(job),
                    })
                })
            }),
        )
        .await
    }

    async fn claim_target(&self, lease: Duration) -> StoreResult<Option<ClaimedTarget>> {
        D::claim_target(self, lease).await
    }

    async fn renew_lease(&self, claim: &Claim, lease: Duration) -> StoreResult<bool> {
        D::renew_lease(self, claim, lease).await
    }

    async fn bind_reference(
        &self,
        claim: &Claim,
        tag: &str,
        reference: &str,
    ) -> StoreResult<Bound> {
        let key = crate::domain::naming::reference_key(reference);
        // Busy for sure: another instance's target took the reference
        // after this one looked (the unique index said so).
        let mut busy_for_sure = false;
        loop {
            let (claim, tag, reference, key) = (
                claim.clone(),
                tag.to_owned(),
                reference.to_owned(),
                key.clone(),
            );
            let bound = D::write_single(
                self,
                Box::new(move |conn| {
                    Box::pin(async move {
                        Self::bind(conn, &claim, &tag, &reference, &key, busy_for_sure).await
                    })
                }),
            )
            .await;
            match bound {
                Err(error) if violated::<D>(&error, ONE_IN_FLIGHT) && !busy_for_sure => {
                    busy_for_sure = true;
                }
                bound => return bound,
            }
        }
    }

    async fn record_tag_plan(
        &self,
        claim: &Claim,
        prior_image_id: Option<&str>,
        created_image_id: Option<&str>,
        staging_reference: Option<&str>,
    ) -> StoreResult<()> {
        let claim = claim.clone();
        let (prior, created, staging) = (
            prior_image_id.map(str::to_owned),
            created_image_id.map(str::to_owned),
            staging_reference.map(str::to_owned),
        );
        D::write_single(
            self,
            Box::new(move |conn| {
                Box::pin(async move {
                    let result = sqlx::query(
                        "UPDATE targets
                         SET prior_image_id = $1, created_image_id = $2, staging_reference = $3
                         WHERE id = $4 AND claim_token = $5",
                    )
                    .bind(prior)
                    .bind(created)
                    .bind(staging)
                    .bind(claim.target_id)
                    .bind(&claim.token)
                    .execute(conn)
                    .await
                    .context("recording the tag step's plan")?;
                    fenced(D::rows_affected(&result), &claim)
                })
            }),
        )
        .await
    }

    async fn record_created_image(&self, claim: &Claim, created_image_id: &str) -> StoreResult<()> {
        let (claim, created) = (claim.clone(), created_image_id.to_owned());
        D::write_single(
            self,
            Box::new(move |conn| {
                Box::pin(async move {
                    let result = sqlx::query(
                        "UPDATE targets SET created_image_id = $1
                         WHERE id = $2 AND claim_token = $3",
                    )
                    .bind(created)
                    .bind(claim.target_id)
                    .bind(&claim.token)
                    .execute(conn)
                    .await
                    .context("recording the built image")?;
                    fenced(D::rows_affected(&result), &claim)
                })
            }),
        )
        .await
    }

    async fn set_step(&self, claim: &Claim, status: TargetStatus) -> StoreResult<()> {
        let claim = claim.clone();
        D::write_single(
            self,
            Box::new(move |conn| {
                Box::pin(async move {
                    let result = sqlx::query(
                        "UPDATE targets SET status = $1 WHERE id = $2 AND claim_token = $3",
                    )
                    .bind(status.as_str())
                    .bind(claim.target_id)
                    .bind(&claim.token)
                    .execute(conn)
                    .await
                    .context("recording a step")?;
                    fenced(D::rows_affected(&result), &claim)
                })
            }),
        )
        .await
    }

    async fn record_failed_attempt(
        &self,
        claim: &Claim,
        step: &str,
        error: &str,
        retrying: bool,
    ) -> StoreResult<()> {
        let (claim, step, error) = (claim.clone(), step.to_owned(), bounded(error));
        let attempt = D::json_object(
            "'attempt', attempts, 'step', CAST($1 AS TEXT), 'error', CAST($2 AS TEXT),
             'at', CAST($3 AS TEXT)",
        );
        let sql = format!(
            "UPDATE targets SET attempt_errors = {}, attempts = attempts + $4
             WHERE id = $5 AND claim_token = $6",
            D::json_push("attempt_errors", &attempt)
        );
        D::write_single(
            self,
            Box::new(move |conn| {
                Box::pin(async move {
                    let result = sqlx::query(&sql)
                        .bind(step)
                        .bind(error)
                        .bind(now())
                        .bind(i64::from(retrying))
                        .bind(claim.target_id)
                        .bind(&claim.token)
                        .execute(conn)
                        .await
                        .context("recording a failed attempt")?;
                    fenced(D::rows_affected(&result), &claim)
                })
            }),
        )
        .await
    }

    async fn finish_target(
        &self,
        claim: &Claim,
        outcome: &TargetOutcome,
        warnings: &[String],
    ) -> StoreResult<JobStatus> {
        let (status, digest, image_id, error, up_to_date, via) = match outcome {
            TargetOutcome::Succeeded {
                digest,
                image_id,
                up_to_date,
                published_via,
            } => (
                "succeeded",
                Some(digest.clone()),
                image_id.clone(),
                None,
                *up_to_date,
                published_via.map(PublishedVia::as_str),
            ),
            TargetOutcome::Failed { error } => {
                ("failed", None, None, Some(bounded(error)), false, None)
            }
            TargetOutcome::Cancelled => (
                "cancelled",
                None,
                None,
                Some("cancelled".to_owned()),
                false,
                None,
            ),
        };
        let warnings: Vec<String> = warnings.iter().map(|w| bounded(w)).collect();
        let warnings = serde_json::to_string(&warnings)?;
        let claim = claim.clone();
        let sql = format!(
            "UPDATE targets SET status = $1, digest = $2, error = $3, up_to_date = $4,
                                published_via = $5, warnings = {},
                                finished_at = $7, claim_token = NULL, {} = NULL,
                                image_id = $10
             WHERE id = $8 AND claim_token = $9 AND status IN {IN_FLIGHT}
             RETURNING job_id",
            D::json_concat("targets.warnings", "$6"),
            D::LEASE_COLUMN,
        );
        D::write_single(
            self,
            Box::new(move |conn| {
                Box::pin(async move {
                    let job_id: String = sqlx::query_scalar(&sql)
                        .bind(status)
                        .bind(digest)
                        .bind(error)
                        .bind(up_to_date)
                        .bind(via)
                        .bind(warnings)
                        .bind(now())
                        .bind(claim.target_id)
                        .bind(&claim.token)
                        .bind(image_id)
                        .fetch_optional(&mut *conn)
                        .await
                        .context("finishing a target")?
                        .ok_or(ClaimLost {
                            target_id: claim.target_id,
                        })?;
                    // As the triggers left it.
                    let status: String =
                        sqlx::query_scalar("SELECT status FROM jobs WHERE id = $1")
                            .bind(job_id)
                            .fetch_one(&mut *conn)
                            .await
                            .context("reading a job's status")?;
                    parse_enum(&status, JobStatus::parse, "job status")
                })
            }),
        )
        .await
    }

    async fn release_target(&self, claim: &Claim, release: Release) -> StoreResult<Released> {
        let (counts, max_runs, warning) = match &release {
            Release::Stopped => (false, u32::MAX, None),
            Release::Abandoned { warning, max_runs } => (true, *max_runs, warning.clone()),
        };
        let claim = claim.clone();
        let cancelled = "(SELECT cancel_requested FROM jobs WHERE jobs.id = targets.job_id)";
        let sql = format!(
            "UPDATE targets SET
                 runs = runs - CASE WHEN $1 THEN 0 ELSE 1 END,
                 attempts = attempts - CASE WHEN $1 THEN 0 ELSE 1 END,
                 status = CASE WHEN {cancelled} THEN 'cancelled'
                               WHEN $1 AND runs >= $2 THEN 'failed'
                               ELSE 'pending' END,
                 dead_letter = CASE WHEN {cancelled} THEN FALSE
                                    WHEN $1 AND runs >= $2 THEN TRUE ELSE FALSE END,
                 error = CASE
                     WHEN {cancelled} THEN 'cancelled'
                     WHEN $1 AND runs >= $2 THEN 'dead letter: ' || runs || ' runs of this target '
                         || 'never finished (each was cut short: its worker crashed, it lost its '
                         || 'lease, or publishd died); it is not run again'
                     ELSE NULL END,
                 finished_at = CASE WHEN {cancelled} OR ($1 AND runs >= $2) THEN $3 ELSE NULL END,
                 warnings = CASE WHEN CAST($4 AS TEXT) IS NULL THEN warnings ELSE {} END,
                 claim_token = NULL, {} = NULL
             WHERE id = $5 AND claim_token = $6 AND status IN {IN_FLIGHT}
             RETURNING status",
            D::json_push("warnings", "CAST($4 AS TEXT)"),
            D::LEASE_COLUMN,
        );
        D::write_single(
            self,
            Box::new(move |conn| {
                Box::pin(async move {
                    let status: String = sqlx::query_scalar(&sql)
                        .bind(counts)
                        .bind(i64::from(max_runs))
                        .bind(now())
                        .bind(warning.as_deref().map(bounded))
                        .bind(claim.target_id)
                        .bind(&claim.token)
                        .fetch_optional(&mut *conn)
                        .await
                        .context("releasing a target")?
                        .ok_or(ClaimLost {
                            target_id: claim.target_id,
                        })?;
                    Ok(match status.as_str() {
                        "cancelled" => Released::Cancelled,
                        "failed" => Released::DeadLetter,
                        _ => Released::Queued,
                    })
                })
            }),
        )
        .await
    }

    async fn wait_for_credentials(
        &self,
        claim: &Claim,
        wait_until: &str,
        retry_at: &str,
    ) -> StoreResult<()> {
        self.put_back(claim, retry_at, Some(wait_until)).await
    }

    async fn wait_for_seed(&self, claim: &Claim, retry_at: &str) -> StoreResult<()> {
        self.put_back(claim, retry_at, None).await
    }

    async fn wake_targets(&self, ids: &[i64]) -> StoreResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let placeholders: Vec<String> = (1..=ids.len()).map(|n| format!("${n}")).collect();
        let sql = format!(
            "UPDATE targets SET not_before = NULL
             WHERE id IN ({}) AND status = 'pending' AND credentials_wait_until IS NULL",
            placeholders.join(", ")
        );
        let ids = ids.to_vec();
        D::write_single(
            self,
            Box::new(move |conn| {
                Box::pin(async move {
                    let mut query = sqlx::query(&sql);
                    for id in ids {
                        query = query.bind(id);
                    }
                    query
                        .execute(conn)
                        .await
                        .context("waking targets that waited for a seed")?;
                    Ok(())
                })
            }),
        )
        .await
    }

    async fn credentials_arrived(&self, job_id: Uuid) -> StoreResult<()> {
        let me = self.instance.id.to_string();
        D::write_single(
            self,
            Box::new(move |conn| {
                Box::pin(async move {
                    sqlx::query(
                        "UPDATE jobs SET accepted_by = $2 WHERE id = $1 AND has_registry_auth",
                    )
                    .bind(job_id.to_string())
                    .bind(me)
                    .execute(&mut *conn)
                    .await
                    .context("recording who holds a job's credentials")?;
                    sqlx::query(
                        "UPDATE targets SET not_before = NULL, credentials_wait_until = NULL
                         WHERE job_id = $1 AND status = 'pending'",
                    )
                    .bind(job_id.to_string())
                    .execute(&mut *conn)
                    .await
                    .context("waking targets that waited for credentials")?;
                    Ok(())
                })
            }),
        )
        .await
    }

    async fn take_over(
        &self,
        target_id: i64,
        condition: TakeOver<'_>,
        lease: Duration,
    ) -> StoreResult<Option<Claim>> {
        D::take_over(self, target_id, condition, lease).await
    }

    async fn in_flight_targets(&self) -> StoreResult<Vec<i64>> {
        D::in_flight_targets(self).await
    }

    async fn expired_leases(&self) -> StoreResult<Vec<(i64, String)>> {
        D::expired_leases(self).await
    }

    async fn cancel_requested(&self, job_id: Uuid) -> StoreResult<bool> {
        let requested = sqlx::query_scalar("SELECT cancel_requested FROM jobs WHERE id = $1")
            .bind(job_id.to_string())
            .fetch_one(&self.reader)
            .await
            .context("reading a job's cancel flag")?;
        Ok(requested)
    }

    async fn claimed_target(&self, id: i64) -> StoreResult<ClaimedTarget> {
        let mut conn = self.reader.acquire().await?;
        Self::load_claimed(&mut conn, id).await
    }

    async fn resolve_source(
        &self,
        job_id: Uuid,
        image_position: i64,
        resolved: &ResolvedSource,
    ) -> StoreResult<ResolvedSource> {
        let resolved = resolved.clone();
        D::write_single(
            self,
            Box::new(move |conn| {
                Box::pin(async move {
                    let (image_id, manifest_digest) = sqlx::query_as(
                        "UPDATE job_images
                         SET source_digest = CASE WHEN source_image_id IS NULL THEN $1
                                                  ELSE source_digest END,
                             source_image_id = COALESCE(source_image_id, $2)
                         WHERE job_id = $3 AND position = $4
                         RETURNING source_image_id, source_digest",
                    )
                    .bind(resolved.manifest_digest)
                    .bind(resolved.image_id)
                    .bind(job_id.to_string())
                    .bind(image_position)
                    .fetch_one(conn)
                    .await
                    .context("recording a resolved source")?;
                    Ok(ResolvedSource {
                        image_id,
                        manifest_digest,
                    })
                })
            }),
        )
        .await
    }

    async fn record_audit(&self, entry: AuditEntry) -> StoreResult<()> {
        D::record_audit(self, entry).await
    }

    async fn list_audit(&self, limit: u32, before: Option<Uuid>) -> StoreResult<AuditPage> {
        let rows: Vec<AuditRow> = sqlx::query_as(
            "SELECT * FROM audit WHERE (CAST($1 AS TEXT) IS NULL OR id < $1)
             ORDER BY id DESC LIMIT $2",
        )
        .bind(before.map(|id| id.to_string()))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.reader)
        .await
        .context("listing audit events")?;
        let more = rows.len() > limit as usize;
        let events = rows
            .into_iter()
            .take(limit as usize)
            .map(AuditRow::into_event)
            .collect::<StoreResult<Vec<_>>>()?;
        let next_cursor = if more {
            events.last().map(|event| event.id.to_string())
        } else {
            None
        };
        Ok(AuditPage {
            events,
            next_cursor,
        })
    }

    /// From the counts the triggers keep: a scrape reads a few rows, not
    /// every job.
    async fn queue_counts(&self) -> StoreResult<QueueCounts> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT kind, status, CAST(sum(n) AS BIGINT) FROM counts GROUP BY kind, status",
        )
        .fetch_all(&self.reader)
        .await
        .context("reading the counts")?;
        let mut counts = QueueCounts::default();
        for (kind, status, n) in rows {
            match (
                kind.as_str(),
                JobStatus::parse(&status),
                TargetStatus::parse(&status),
            ) {
                ("job", Some(status), _) => {
                    counts.jobs.insert(status, n);
                }
                ("target", _, Some(TargetStatus::Pending)) => counts.targets_queued += n,
                ("target", _, Some(status)) if status.is_in_flight() => {
                    counts.targets_in_flight += n
                }
                _ => {}
            }
        }
        Ok(counts)
    }

    async fn job_events(&self, job_id: Uuid, after: i64, limit: u32) -> StoreResult<Vec<Event>> {
        let rows: Vec<EventRow> = sqlx::query_as(
            "SELECT id, job_id, at, kind, position, data FROM events
             WHERE job_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(job_id.to_string())
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .context("reading a job's events")?;
        rows.into_iter().map(EventRow::into_event).collect()
    }

    async fn last_event_of(&self, job_id: Uuid) -> StoreResult<Option<i64>> {
        let last: Option<i64> = sqlx::query_scalar("SELECT max(id) FROM events WHERE job_id = $1")
            .bind(job_id.to_string())
            .fetch_one(&self.reader)
            .await
            .context("reading a job's last event")?;
        Ok(last)
    }

    async fn due_deliveries(
        &self,
        limit: u32,
        per_submitter: u32,
        under_way: &[UnderWay],
    ) -> StoreResult<Vec<DueDelivery>> {
        D::due_deliveries(self, limit, per_submitter, under_way).await
    }

    async fn set_delivery_body(&self, id: &str, body: &str) -> StoreResult<String> {
        let (id, body) = (id.to_owned(), body.to_owned());
        D::write_single(
            self,
            Box::new(move |conn| {
                Box::pin(async move {
                    let kept = sqlx::query_scalar(
                        "UPDATE deliveries SET body = COALESCE(body, $1) WHERE id = $2
                         RETURNING body",
                    )
                    .bind(body)
                    .bind(id)
                    .fetch_one(conn)
                    .await
                    .context("recording a delivery's body")?;
                    Ok(kept)
                })
            }),
        )
        .await
    }

    async fn record_delivery_attempt(
        &self,
        id: &str,
        attempt: &DeliveryAttempt,
        outcome: &DeliveryOutcome,
    ) -> StoreResult<()> {
        let (state, next) = match outcome {
            DeliveryOutcome::Delivered => ("delivered", None),
            DeliveryOutcome::RetryAt(at) => ("pending", Some(at.clone())),
            DeliveryOutcome::GaveUp => ("failed", None),
        };
        let (id, attempt) = (id.to_owned(), serde_json::to_string(attempt)?);
        let sql = format!(
            "UPDATE deliveries SET attempts = {}, state = $2, next_attempt_at = $3
             WHERE id = $4 AND state = 'pending'",
            D::json_push("attempts", &D::json_parse("$1"))
        );
        D::write_single(
            self,
            Box::new(move |conn| {
                Box::pin(async move {
                    sqlx::query(&sql)
                        .bind(attempt)
                        .bind(state)
                        .bind(next)
                        .bind(id)
                        .execute(conn)
                        .await
                        .context("recording a delivery attempt")?;
                    Ok(())
                })
            }),
        )
        .await
    }

    async fn delete_finished_before(
        &self,
        cutoff: &str,
        pending_cutoff: &str,
        batch: u32,
    ) -> StoreResult<Deleted> {
        let (cutoff, pending_cutoff) = (cutoff.to_owned(), pending_cutoff.to_owned());
        D::write(
            self,
            Box::new(move |conn| {
                Box::pin(
                    async move { Self::delete_batch(conn, &cutoff, &pending_cutoff, batch).await },
                )
            }),
        )
        .await
    }

    async fn seed(&self, key: &SeedKey) -> StoreResult<Option<Seed>> {
        let row: Option<(String, String, String, String, String)> = sqlx::query_as(
            "SELECT manifest, media_type, config, layers, repository FROM seeds
             WHERE source_image_id = $1 AND registry = $2 AND engine = $3",
        )
        .bind(&key.source_image_id)
        .bind(&key.registry)
        .bind(&key.engine)
        .fetch_optional(&self.reader)
        .await
        .context("reading a seed")?;
        let Some((manifest, media_type, config, layers, repository)) = row else {
            return Ok(None);
        };
        Ok(Some(Seed {
            manifest,
            media_type,
            config,
            layers: serde_json::from_str(&layers).context("bad seed layers in the database")?,
            repository,
        }))
    }

    async fn record_seed(&self, key: &SeedKey, seed: &Seed) -> StoreResult<()> {
        let (key, seed, layers) = (
            key.clone(),
            seed.clone(),
            serde_json::to_string(&seed.layers)?,
        );
        D::write_single(
            self,
            Box::new(move |conn| {
                Box::pin(async move {
                    sqlx::query(
                        "INSERT INTO seeds (source_image_id, registry, engine, manifest,
                                            media_type, config, layers, repository, recorded_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                         ON CONFLICT (source_image_id, registry, engine) DO UPDATE SET
                             manifest = excluded.manifest, media_type = excluded.media_type,
                             config = excluded.config, layers = excluded.layers,
                             repository = excluded.repository,
                             recorded_at = excluded.recorded_at",
                    )
                    .bind(key.source_image_id)
                    .bind(key.registry)
                    .bind(key.engine)
                    .bind(seed.manifest)
                    .bind(seed.media_type)
                    .bind(seed.config)
                    .bind(layers)
                    .bind(seed.repository)
                    .bind(now())
                    .execute(conn)
                    .await
                    .context("recording a seed")?;
                    Ok(())
                })
            }),
        )
        .await
    }
}
