//! The statements the operations of `mod.rs` are made of, on a connection
//! of the caller's (in its transaction): a job read whole, its status
//! brought up to date, a page of jobs, a claimed target, a reference bound,
//! an audit record, a retention batch.

use anyhow::Context;
use sqlx::{Executor, IntoArguments};
use uuid::Uuid;

use super::{Dialect, SqlStore};
use crate::store::JobFilter;
use crate::store::queue::fenced;
use crate::store::rows::{
    CLAIMED, ClaimedRow, DeliveryRow, ImageRow, JobRow, TargetRow, job_of, jobs_of,
};
use crate::store::{
    AuditEntry, Bound, Claim, ClaimedTarget, Deleted, IN_FLIGHT, Job, JobPage, PageKey,
    SEARCH_WINDOW, StoreResult, now,
};

/// Targets one retention batch may delete (with their events, about six
/// rows each): a batch of jobs with hundreds of targets each must not hold
/// the writer any longer than one of small jobs.
const TARGETS_PER_BATCH: i64 = 2000;

/// The statements of one page of `list_jobs`, written for the filters given
/// only: a condition on a filter not given (`$1 IS NULL OR status = $1`)
/// would keep the planner from the index that serves the others. Each
/// combination has its index (`page_index`), read newest first from the
/// cursor on, and SQLite is told to take it (its planner has no statistics
/// to choose between a partial index and a full one); the plans are checked
/// in `store/page_plans.rs`.
#[derive(Debug)]
pub(in crate::store) struct PageSql {
    /// The page's jobs (one more than it shows: whether there are more).
    pub jobs: String,
    /// Of a search: the id where its window ended (none if it did not fill).
    pub window_end: Option<String>,
    /// The texts bound to `$1`, `$2`, ... of both, in order.
    pub values: Vec<String>,
}

/// The index that serves a page of `filter`, or none for the table's own
/// order (no filter). Status and submitter, each, both or neither, over
/// all jobs or, for `has_failed_target`, over the jobs with a failed target
/// (the few); a prefix is a range of repositories, sorted: it costs in
/// proportion to the jobs under it, whatever else is asked. A search reads
/// through the index of the other filters (`SEARCH_WINDOW` jobs at most).
pub(in crate::store) fn page_index(filter: &JobFilter) -> Option<&'static str> {
    let JobFilter {
        status,
        has_failed_target,
        submitted_by,
        repo_prefix,
        search: _,
    } = filter;
    if repo_prefix.is_some() {
        return Some("jobs_by_repo");
    }
    match (has_failed_target, submitted_by.is_some(), status.is_some()) {
        (false, false, false) => None,
        (false, false, true) => Some("jobs_by_status"),
        (false, true, false) => Some("jobs_by_submitter"),
        (false, true, true) => Some("jobs_by_submitter_status"),
        (true, false, false) => Some("jobs_failed"),
        (true, false, true) => Some("jobs_failed_by_status"),
        (true, true, false) => Some("jobs_failed_by_submitter"),
        (true, true, true) => Some("jobs_failed_by_submitter_status"),
    }
}

impl PageSql {
    pub(in crate::store) fn of<D: Dialect>(key: &PageKey) -> PageSql {
        let filter = &key.filter;
        let mut values = Vec::new();
        let mut conditions = Vec::new();
        let mut value = |text: String| {
            values.push(text);
            format!("${}", values.len())
        };
        if let Some(status) = filter.status {
            conditions.push(format!("status = {}", value(status.as_str().to_owned())));
        }
        if filter.has_failed_target {
            // As the partial indexes say it: the planner matches the text.
            conditions.push("failed_targets > 0".to_owned());
        }
        if let Some(submitter) = &filter.submitted_by {
            conditions.push(format!("submitted_by = {}", value(submitter.clone())));
        }
        if let Some(prefix) = &filter.repo_prefix {
            conditions.push(format!("repo >= {}", value(prefix.clone())));
            if let Some(end) = prefix_end(prefix) {
                conditions.push(format!("repo < {}", value(end)));
            }
        }
        if let Some(before) = key.before {
            conditions.push(format!("id < {}", value(before.to_string())));
        }
        let from = match page_index(filter) {
            Some(index) if D::INDEXED_BY => format!("jobs INDEXED BY {index}"),
            _ => "jobs".to_owned(),
        };
        let filtered = |more: &[String]| {
            let all: Vec<&str> = conditions.iter().chain(more).map(String::as_str).collect();
            if all.is_empty() {
                format!("SELECT * FROM {from}")
            } else {
                format!("SELECT * FROM {from} WHERE {}", all.join(" AND "))
            }
        };
        let page = u64::from(key.limit) + 1;
        let Some(pattern) = filter.search.as_deref().map(like_pattern) else {
            return PageSql {
                jobs: format!("{} ORDER BY id DESC LIMIT {page}", filtered(&[])),
                window_end: None,
                values,
            };
        };
        let pattern = value(pattern);
        // The window is the jobs from its last id on: the page is then read
        // through the same index, in its order, as without a search.
        let window_end = format!(
            "SELECT id FROM ({} ORDER BY id DESC LIMIT 1 OFFSET {last}) AS window_end",
            filtered(&[]),
            last = SEARCH_WINDOW - 1
        );
        // OFFSET 0 (SQLite wants a LIMIT before it) keeps PostgreSQL from
        // hashing every target's reference, a read of the whole table,
        // instead of looking up the window's jobs' targets.
        let found = format!(
            "(repo {like} {pattern} ESCAPE '\\'
              OR EXISTS (SELECT 1 FROM targets s
                         WHERE s.job_id = jobs.id AND s.reference {like} {pattern} ESCAPE '\\'
                         LIMIT 1 OFFSET 0))",
            like = D::ILIKE
        );
        let within = format!("id >= COALESCE(({window_end}), '')");
        PageSql {
            jobs: format!(
                "{} ORDER BY id DESC LIMIT {page}",
                filtered(&[within, found])
            ),
            window_end: Some(window_end),
            values,
        }
    }
}

/// A page of the first `limit` of `jobs`, read one past it: whether there
/// are more says whether it has a `next_cursor`.
fn page_of(mut jobs: Vec<Job>, limit: u32) -> JobPage {
    let more = jobs.len() > limit as usize;
    jobs.truncate(limit as usize);
    let next_cursor = jobs.last().filter(|_| more).map(|job| job.id.to_string());
    JobPage { jobs, next_cursor }
}

/// The statements that read the targets, images and deliveries of the jobs
/// whose ids `$1` lists (a JSON array), in their jobs' order.
pub(in crate::store) fn rows_of_jobs_sql<D: Dialect>() -> [String; 3] {
    [
        ("targets", "position"),
        ("job_images", "position"),
        ("deliveries", "created_at"),
    ]
    .map(|(table, order)| {
        format!(
            "SELECT * FROM {table} WHERE job_id IN {ids} ORDER BY job_id, {order}",
            ids = D::text_list("$1")
        )
    })
}

/// The least text greater than every text that starts with `prefix` (in
/// byte order, which is code point order): its last character that has a
/// successor, stepped. None when every text from `prefix` on starts with it.
fn prefix_end(prefix: &str) -> Option<String> {
    let mut end: Vec<char> = prefix.chars().collect();
    while let Some(last) = end.pop() {
        let next = (u32::from(last) + 1..=u32::from(char::MAX)).find_map(char::from_u32);
        if let Some(next) = next {
            end.push(next);
            return Some(end.into_iter().collect());
        }
    }
    None
}

/// A LIKE pattern (escaped with `\`) that matches `text` itself, wherever
/// it is.
fn like_pattern(text: &str) -> String {
    let escaped = text
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
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

    /// A page of jobs as of one moment: one statement on PostgreSQL
    /// (`Dialect::read_jobs`), and in a transaction with it, where a search
    /// found fewer than it asked for, where its window ended.
    pub(super) async fn read_page(&self, key: &PageKey) -> StoreResult<JobPage> {
        let page = PageSql::of::<D>(key);
        let Some(window_end) = &page.window_end else {
            let mut conn = self.reader.acquire().await?;
            let jobs = D::read_jobs(&mut conn, &page.jobs, &page.values)
                .await
                .context("listing jobs")?;
            return Ok(page_of(jobs, key.limit));
        };
        let mut tx = self.reader.begin().await?;
        Self::snapshot(&mut tx).await?;
        let jobs = D::read_jobs(&mut tx, &page.jobs, &page.values)
            .await
            .context("listing jobs")?;
        let mut found = page_of(jobs, key.limit);
        if found.next_cursor.is_none() {
            let mut query = sqlx::query_scalar(window_end);
            for value in &page.values {
                query = query.bind(value.as_str());
            }
            found.next_cursor = query
                .fetch_optional(&mut *tx)
                .await
                .context("finding where a search stopped")?;
        }
        tx.commit().await?;
        Ok(found)
    }

    /// The jobs `sql` selects (a SELECT of rows of `jobs`, `values` bound in
    /// order), whole: four statements whatever their number.
    pub(in crate::store) async fn load_jobs(
        conn: &mut D::Connection,
        sql: &str,
        values: &[String],
    ) -> StoreResult<Vec<Job>> {
        let mut query = sqlx::query_as::<D, JobRow>(sql);
        for value in values {
            query = query.bind(value.as_str());
        }
        let jobs = query.fetch_all(&mut *conn).await?;
        let ids = serde_json::to_string(&jobs.iter().map(|job| &job.id).collect::<Vec<_>>())?;
        let [of_targets, of_images, of_deliveries] = rows_of_jobs_sql::<D>();
        let targets: Vec<TargetRow> = sqlx::query_as(&of_targets)
            .bind(ids.as_str())
            .fetch_all(&mut *conn)
            .await
            .context("listing the jobs' targets")?;
        let images: Vec<ImageRow> = sqlx::query_as(&of_images)
            .bind(ids.as_str())
            .fetch_all(&mut *conn)
            .await
            .context("listing the jobs' images")?;
        let deliveries: Vec<DeliveryRow> = sqlx::query_as(&of_deliveries)
            .bind(ids.as_str())
            .fetch_all(&mut *conn)
            .await
            .context("listing the jobs' deliveries")?;
        jobs_of(jobs, images, targets, deliveries)
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
