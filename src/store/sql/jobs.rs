//! The statements the operations of `mod.rs` are made of, on a connection
//! of the caller's (in its transaction): a job read whole, its status
//! brought up to date, a page of jobs, a claimed target, a reference bound,
//! an audit record, a retention batch.

use anyhow::Context;
use sqlx::{Executor, IntoArguments};
use uuid::Uuid;

use super::{Dialect, SqlStore};
use crate::domain::status::JobStatus;
use crate::store::queue::fenced;
use crate::store::rows::{
    CLAIMED, ClaimedRow, DeliveryRow, ImageRow, JobRow, TargetRow, job_of, page_of,
};
use crate::store::{
    AuditEntry, Bound, Claim, ClaimedTarget, Deleted, IN_FLIGHT, Job, JobPage, PageKey,
    StoreResult, now,
};

/// Targets one retention batch may delete (with their events, about six
/// rows each): a batch of jobs with hundreds of targets each must not hold
/// the writer any longer than one of small jobs.
const TARGETS_PER_BATCH: i64 = 2000;

/// The jobs of one page of `search_jobs`, newest first.
fn page_sql<D: Dialect>() -> String {
    format!(
        "SELECT * FROM jobs
         WHERE (CAST($1 AS TEXT) IS NULL OR status = $1)
           AND (CAST($2 AS TEXT) IS NULL OR id < $2)
           AND (CAST($4 AS TEXT) IS NULL OR submitted_by = $4)
           AND (CAST($5 AS TEXT) IS NULL OR repo {like} $5 ESCAPE '\\'
                OR EXISTS (SELECT 1 FROM targets s
                           WHERE s.job_id = jobs.id AND s.reference {like} $5 ESCAPE '\\'))
         ORDER BY id DESC LIMIT $3",
        like = D::ILIKE
    )
}

impl<D> SqlStore<D>
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
    /// Puts a claimed target back (`wait_for_credentials`, `wait_for_seed`),
    /// not claimed again before `retry_at`: not a run, nor a try, and
    /// cancelled instead if its job was. A credentials wait keeps the end
    /// of its first wait.
    pub(super) async fn put_back(
        &self,
        claim: &Claim,
        retry_at: &str,
        credentials_wait_until: Option<&str>,
    ) -> StoreResult<()> {
        let (claim, wait_until, retry_at) = (
            claim.clone(),
            credentials_wait_until.map(str::to_owned),
            retry_at.to_owned(),
        );
        let cancelled = "(SELECT cancel_requested FROM jobs WHERE jobs.id = targets.job_id)";
        let sql = format!(
            "UPDATE targets SET
                 status = CASE WHEN {cancelled} THEN 'cancelled' ELSE 'pending' END,
                 error = CASE WHEN {cancelled} THEN 'cancelled' ELSE error END,
                 finished_at = CASE WHEN {cancelled} THEN $1 ELSE NULL END,
                 attempts = attempts - 1, runs = runs - 1,
                 claim_token = NULL, {} = NULL, not_before = $2,
                 credentials_wait_until = COALESCE(credentials_wait_until, $3)
             WHERE id = $4 AND claim_token = $5 AND status IN {IN_FLIGHT}",
            D::LEASE_COLUMN,
        );
        D::write_single(
            self,
            Box::new(move |conn| {
                Box::pin(async move {
                    let result = sqlx::query(&sql)
                        .bind(now())
                        .bind(retry_at)
                        .bind(wait_until)
                        .bind(claim.target_id)
                        .bind(&claim.token)
                        .execute(&mut *conn)
                        .await
                        .context("putting a target back to wait")?;
                    fenced(D::rows_affected(&result), &claim)
                })
            }),
        )
        .await
    }

    /// Makes the read transaction just begun read one snapshot.
    pub(super) async fn snapshot(conn: &mut D::Connection) -> StoreResult<()> {
        if let Some(sql) = D::SNAPSHOT {
            sqlx::query(sql)
                .execute(conn)
                .await
                .context("starting a read transaction")?;
        }
        Ok(())
    }

    pub(in crate::store) async fn load_job(
        conn: &mut D::Connection,
        id: Uuid,
    ) -> StoreResult<Option<Job>> {
        let Some(job) = sqlx::query_as::<D, JobRow>("SELECT * FROM jobs WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&mut *conn)
            .await
            .context("loading a job")?
        else {
            return Ok(None);
        };
        let targets: Vec<TargetRow> =
            sqlx::query_as("SELECT * FROM targets WHERE job_id = $1 ORDER BY position")
                .bind(id.to_string())
                .fetch_all(&mut *conn)
                .await
                .context("loading a job's targets")?;
        let images: Vec<ImageRow> =
            sqlx::query_as("SELECT * FROM job_images WHERE job_id = $1 ORDER BY position")
                .bind(id.to_string())
                .fetch_all(&mut *conn)
                .await
                .context("loading a job's images")?;
        let deliveries: Vec<DeliveryRow> =
            sqlx::query_as("SELECT * FROM deliveries WHERE job_id = $1 ORDER BY created_at")
                .bind(id.to_string())
                .fetch_all(&mut *conn)
                .await
                .context("loading a job's deliveries")?;
        job_of(job, images, targets, deliveries).map(Some)
    }

    /// A page of jobs: four queries whatever its size (the jobs, then all
    /// their targets, images and deliveries through the same filter), in
    /// one read transaction: one snapshot.
    pub(super) async fn read_page(&self, key: &PageKey) -> StoreResult<JobPage> {
        let page = page_sql::<D>();
        let of_page = |table: &str, order: &str| {
            format!(
                "SELECT * FROM {table} WHERE job_id IN (SELECT id FROM ({page}) AS page)
                 ORDER BY job_id, {order}"
            )
        };
        let mut tx = self.reader.begin().await?;
        Self::snapshot(&mut tx).await?;
        let jobs = Self::page_rows(&mut tx, &page, key, 1)
            .await
            .context("listing jobs")?;
        let targets = Self::page_rows(&mut tx, &of_page("targets", "position"), key, 0)
            .await
            .context("listing the jobs' targets")?;
        let images = Self::page_rows(&mut tx, &of_page("job_images", "position"), key, 0)
            .await
            .context("listing the jobs' images")?;
        let deliveries = Self::page_rows(&mut tx, &of_page("deliveries", "created_at"), key, 0)
            .await
            .context("listing the jobs' deliveries")?;
        tx.commit().await?;
        page_of(jobs, images, targets, deliveries, key.limit)
    }

    /// The rows `sql` selects through the page's filter, of `key.limit +
    /// extra` jobs.
    async fn page_rows<R>(
        conn: &mut D::Connection,
        sql: &str,
        key: &PageKey,
        extra: i64,
    ) -> Result<Vec<R>, sqlx::Error>
    where
        R: for<'r> sqlx::FromRow<'r, D::Row> + Send + Unpin,
    {
        sqlx::query_as(sql)
            .bind(key.status.map(JobStatus::as_str))
            .bind(key.before.map(|id| id.to_string()))
            .bind(i64::from(key.limit) + extra)
            .bind(key.submitted_by.clone())
            .bind(key.pattern())
            .fetch_all(conn)
            .await
    }

    pub(in crate::store) async fn load_claimed(
        conn: &mut D::Connection,
        id: i64,
    ) -> StoreResult<ClaimedTarget> {
        let row: ClaimedRow = sqlx::query_as(&format!("{CLAIMED} $1"))
            .bind(id)
            .fetch_one(conn)
            .await
            .context("loading a claimed target")?;
        row.into_claimed()
    }

    /// `bind_reference` in one statement; `busy_for_sure`: the reference
    /// was found taken by a target this statement cannot see (another
    /// instance's, racing it to the unique index). Deferring is not a run of
    /// the target, nor a try.
    pub(super) async fn bind(
        conn: &mut D::Connection,
        claim: &crate::store::Claim,
        tag: &str,
        reference: &str,
        key: &str,
        busy_for_sure: bool,
    ) -> StoreResult<Bound> {
        let status: String = sqlx::query_scalar(&format!(
            "WITH decided AS (
                 SELECT CASE
                     WHEN NOT ($7 OR EXISTS (SELECT 1 FROM targets
                                             WHERE reference_key = $3 AND id <> $5
                                               AND status IN {IN_FLIGHT})) THEN 'bound'
                     WHEN (SELECT j.cancel_requested FROM targets t JOIN jobs j ON j.id = t.job_id
                           WHERE t.id = $5) THEN 'cancelled'
                     ELSE 'busy' END AS outcome)
             UPDATE targets SET tag = $1, reference = $2, reference_key = $3,
                 status = CASE (SELECT outcome FROM decided) WHEN 'bound' THEN 'tagging'
                              WHEN 'busy' THEN 'pending' ELSE 'cancelled' END,
                 finished_at = CASE (SELECT outcome FROM decided) WHEN 'cancelled' THEN $4 END,
                 error = CASE (SELECT outcome FROM decided)
                             WHEN 'cancelled' THEN 'cancelled before it started' END,
                 claim_token = CASE (SELECT outcome FROM decided)
                                   WHEN 'bound' THEN claim_token END,
                 runs = runs - CASE (SELECT outcome FROM decided) WHEN 'bound' THEN 0 ELSE 1 END,
                 attempts = attempts
                     - CASE (SELECT outcome FROM decided) WHEN 'bound' THEN 0 ELSE 1 END
             WHERE id = $5 AND claim_token = $6 AND status IN {IN_FLIGHT}
             RETURNING status"
        ))
        .bind(tag)
        .bind(reference)
        .bind(key)
        .bind(now())
        .bind(claim.target_id)
        .bind(&claim.token)
        .bind(busy_for_sure)
        .fetch_optional(&mut *conn)
        .await
        .context("binding a content reference")?
        .ok_or(crate::store::ClaimLost {
            target_id: claim.target_id,
        })?;
        Ok(match status.as_str() {
            "tagging" => Bound::Bound,
            "pending" => Bound::Busy,
            _ => Bound::Cancelled,
        })
    }

    /// Writes one audit record (in the caller's transaction).
    pub(in crate::store) async fn insert_audit(
        conn: &mut D::Connection,
        entry: &AuditEntry,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO audit (id, at, actor, action, outcome, job_id, detail)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(Uuid::now_v7().to_string())
        .bind(now())
        .bind(entry.actor.clone())
        .bind(entry.action)
        .bind(entry.outcome)
        .bind(entry.job_id.map(|id| id.to_string()))
        .bind(entry.detail.to_string())
        .execute(conn)
        .await
        .context("recording an audit event")?;
        Ok(())
    }

    /// One retention batch (see `Records::delete_finished_before`); jobs
    /// another instance's retention is deleting are skipped.
    pub(super) async fn delete_batch(
        conn: &mut D::Connection,
        cutoff: &str,
        pending_cutoff: &str,
        batch: u32,
    ) -> StoreResult<Deleted> {
        let found: Vec<(String, i64)> = sqlx::query_as(&format!(
            "SELECT id, (SELECT count(*) FROM targets WHERE targets.job_id = jobs.id) AS targets
             FROM jobs
             WHERE finished_at IS NOT NULL AND finished_at < $1
               AND status IN ('succeeded', 'failed', 'cancelled')
               AND (finished_at < $2
                    OR NOT EXISTS (SELECT 1 FROM deliveries
                                   WHERE deliveries.job_id = jobs.id AND state = 'pending'))
             ORDER BY finished_at LIMIT $3{}",
            D::SKIP_LOCKED
        ))
        .bind(cutoff)
        .bind(pending_cutoff)
        .bind(i64::from(batch))
        .fetch_all(&mut *conn)
        .await
        .context("finding jobs past retention")?;
        let mut targets = 0;
        let ids: Vec<&String> = found
            .iter()
            .take_while(|(_, count)| {
                let first = targets == 0;
                targets += count;
                first || targets <= TARGETS_PER_BATCH
            })
            .map(|(id, _)| id)
            .collect();
        let more = ids.len() < found.len() || found.len() == batch as usize;
        let ids = serde_json::to_string(&ids)?;
        let in_ids = D::text_list("$1");
        for table in ["events", "deliveries", "targets", "job_images"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE job_id IN {in_ids}"))
                .bind(ids.as_str())
                .execute(&mut *conn)
                .await
                .with_context(|| format!("deleting old jobs' {table}"))?;
        }
        let jobs = sqlx::query(&format!("DELETE FROM jobs WHERE id IN {in_ids}"))
            .bind(ids.as_str())
            .execute(&mut *conn)
            .await
            .context("deleting old jobs")?;
        let audit = sqlx::query(
            "DELETE FROM audit WHERE id IN
                 (SELECT id FROM audit WHERE at < $1 ORDER BY at LIMIT $2)",
        )
        .bind(cutoff)
        .bind(i64::from(batch))
        .execute(&mut *conn)
        .await
        .context("deleting old audit records")?;
        let seeds = sqlx::query(
            "DELETE FROM seeds WHERE (source_image_id, registry) IN
                 (SELECT source_image_id, registry FROM seeds
                  WHERE recorded_at < $1 ORDER BY recorded_at LIMIT $2)",
        )
        .bind(cutoff)
        .bind(i64::from(batch))
        .execute(&mut *conn)
        .await
        .context("deleting old seeds")?;
        Ok(Deleted {
            jobs: D::rows_affected(&jobs),
            audit: D::rows_affected(&audit),
            seeds: D::rows_affected(&seeds),
            more,
        })
    }
}
