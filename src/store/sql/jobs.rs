//! The statements the operations of `mod.rs` are made of, on a connection
//! of the caller's (in its transaction): a job read whole, its status
//! brought up to date, a page of jobs, a claimed target, a reference bound,
//! an audit record, a retention batch.

use anyhow::Context;
use sqlx::{Executor, IntoArguments};
use uuid::Uuid;

use super::{Dialect, SqlStore};
use crate::domain::publish_via::PublishVia;
use crate::domain::status::{JobStatus, TargetStatus};
use crate::store::queue::fenced;
use crate::store::rows::{
    CLAIMED, ClaimedRow, DeliveryRow, ImageRow, JobRow, TargetRow, job_of, page_of, parse_enum,
    parse_uuid,
};
use crate::store::{
    AuditEntry, Bound, ClaimedTarget, Created, Deleted, IN_FLIGHT, Job, JobPage, NewJob, PageKey,
    StoreResult, job_state, now, queued_job,
};

/// Another instance inserted a job with the same idempotency key between
/// this submission's look-up and its insert: the submission is made again,
/// and then finds that job.
#[derive(Debug, thiserror::Error)]
#[error("another submission with the same idempotency key was committed first")]
pub(in crate::store) struct KeyRace;

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

    /// Brings a job's status in line with its targets' and answers it.
    pub(in crate::store) async fn refresh_job(
        conn: &mut D::Connection,
        id: Uuid,
    ) -> StoreResult<JobStatus> {
        let statuses: Vec<String> =
            sqlx::query_scalar("SELECT status FROM targets WHERE job_id = $1")
                .bind(id.to_string())
                .fetch_all(&mut *conn)
                .await
                .context("reading a job's target statuses")?;
        let statuses = statuses
            .iter()
            .map(|status| parse_enum(status, TargetStatus::parse, "target status"))
            .collect::<StoreResult<Vec<_>>>()?;
        let cancel_requested: bool =
            sqlx::query_scalar("SELECT cancel_requested FROM jobs WHERE id = $1")
                .bind(id.to_string())
                .fetch_one(&mut *conn)
                .await
                .context("reading a job's cancel flag")?;
        let (status, error) = job_state(&statuses, cancel_requested);
        sqlx::query(
            "UPDATE jobs SET status = $1, error = $2,
                 started_at = CASE WHEN $1 <> 'queued' THEN COALESCE(started_at, $3)
                                   ELSE started_at END,
                 finished_at = CASE WHEN $4 THEN COALESCE(finished_at, $3) ELSE NULL END
             WHERE id = $5",
        )
        .bind(status.as_str())
        .bind(error)
        .bind(now())
        .bind(status.is_terminal())
        .bind(id.to_string())
        .execute(&mut *conn)
        .await
        .context("updating the job status")?;
        Ok(status)
    }

    /// Locks the job of target `target_id` (the lock order: a job before
    /// its targets) and answers its id; `None` if there is no such target.
    pub(super) async fn lock_job_of(
        conn: &mut D::Connection,
        target_id: i64,
    ) -> StoreResult<Option<Uuid>> {
        let id: Option<String> = sqlx::query_scalar(&format!(
            "SELECT id FROM jobs WHERE id = (SELECT job_id FROM targets WHERE id = $1){}",
            D::LOCK_JOB
        ))
        .bind(target_id)
        .fetch_optional(&mut *conn)
        .await
        .context("locking a target's job")?;
        id.map(parse_uuid).transpose()
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

    /// What every claim does once its statement took target `id`: the
    /// submitter's turn is taken (the next claim goes to whoever has had the
    /// least, by weight), the job's status follows, and the target is
    /// answered as a lane needs it.
    pub(in crate::store) async fn claimed(
        conn: &mut D::Connection,
        id: i64,
    ) -> StoreResult<ClaimedTarget> {
        let target = Self::load_claimed(conn, id).await?;
        sqlx::query(
            "UPDATE owners SET pass = pass + CAST(1 AS DOUBLE PRECISION) / weight
             WHERE name = (SELECT submitted_by FROM jobs WHERE id = $1)",
        )
        .bind(target.job_id.to_string())
        .execute(&mut *conn)
        .await
        .context("advancing the submitter's turn")?;
        Self::refresh_job(conn, target.job_id).await?;
        Ok(target)
    }

    /// `bind_reference` in the caller's transaction; `busy_for_sure`: the
    /// reference was found taken by a target this transaction cannot see.
    /// Deferring is not a run of the target, nor a try.
    pub(super) async fn bind(
        conn: &mut D::Connection,
        claim: &crate::store::Claim,
        tag: &str,
        reference: &str,
        key: &str,
        busy_for_sure: bool,
    ) -> StoreResult<Bound> {
        let job_id =
            Self::lock_job_of(conn, claim.target_id)
                .await?
                .ok_or(crate::store::ClaimLost {
                    target_id: claim.target_id,
                })?;
        let (busy, cancelled): (bool, bool) = sqlx::query_as(&format!(
            "SELECT EXISTS (SELECT 1 FROM targets
                            WHERE reference_key = $1 AND id <> $2 AND status IN {IN_FLIGHT}),
                    (SELECT cancel_requested FROM jobs WHERE id = $3)"
        ))
        .bind(key)
        .bind(claim.target_id)
        .bind(job_id.to_string())
        .fetch_one(&mut *conn)
        .await
        .context("looking at a content reference")?;
        let bound = match (busy || busy_for_sure, cancelled) {
            (false, _) => Bound::Bound,
            (true, false) => Bound::Busy,
            (true, true) => Bound::Cancelled,
        };
        let result = sqlx::query(&format!(
            "UPDATE targets SET tag = $1, reference = $2, reference_key = $3,
                 status = CASE $4 WHEN 'bound' THEN 'tagging' WHEN 'busy' THEN 'pending'
                                  ELSE 'cancelled' END,
                 finished_at = CASE $4 WHEN 'cancelled' THEN $5 ELSE NULL END,
                 error = CASE $4 WHEN 'cancelled' THEN 'cancelled before it started'
                                 ELSE NULL END,
                 claim_token = CASE $4 WHEN 'bound' THEN claim_token ELSE NULL END,
                 runs = CASE $4 WHEN 'bound' THEN runs ELSE runs - 1 END,
                 attempts = CASE $4 WHEN 'bound' THEN attempts ELSE attempts - 1 END
             WHERE id = $6 AND claim_token = $7 AND status IN {IN_FLIGHT}"
        ))
        .bind(tag)
        .bind(reference)
        .bind(key)
        .bind(match bound {
            Bound::Bound => "bound",
            Bound::Busy => "busy",
            Bound::Cancelled => "cancelled",
        })
        .bind(now())
        .bind(claim.target_id)
        .bind(&claim.token)
        .execute(&mut *conn)
        .await
        .context("binding a content reference")?;
        fenced(D::rows_affected(&result), claim)?;
        Self::refresh_job(conn, job_id).await?;
        Ok(bound)
    }

    /// What an earlier submission with the same idempotency key (keys are
    /// the submitter's own: another token's job is never found) says of
    /// this one: its job, a refusal if the body differs, or `None`.
    async fn keyed_submission(
        conn: &mut D::Connection,
        new: &NewJob,
    ) -> StoreResult<Option<Created>> {
        let Some(key) = &new.idempotency_key else {
            return Ok(None);
        };
        let seen: Option<(String, String)> = sqlx::query_as(
            "SELECT id, spec_hash FROM jobs WHERE submitted_by = $1 AND idempotency_key = $2",
        )
        .bind(new.submitter.name.as_deref().unwrap_or(""))
        .bind(key.as_str())
        .fetch_optional(&mut *conn)
        .await
        .context("looking up the idempotency key")?;
        let Some((id, hash)) = seen else {
            return Ok(None);
        };
        if hash != new.spec_hash {
            return Ok(Some(Created::KeyReused));
        }
        let job = Self::load_job(conn, parse_uuid(id)?)
            .await?
            .context("job vanished")?;
        Ok(Some(Created::Existing(job)))
    }

    /// Writes one submission (in the caller's transaction): the
    /// idempotency key, the queue limits, the submitter's share, the job.
    /// The job and its images come first: they take no lock that other
    /// instances wait for, while PostgreSQL's pending count is locked to
    /// the commit (the less done after it, the more submissions a second).
    /// A refusal may come after rows were written: the caller rolls them
    /// back. `owner_current`: an earlier job of the same transaction already
    /// brought the submitter's share up to date and left it queued targets.
    pub(in crate::store) async fn insert_job(
        conn: &mut D::Connection,
        new: &NewJob,
        accepted_by: Uuid,
        owner_current: bool,
    ) -> StoreResult<Created> {
        if let Some(created) = Self::keyed_submission(conn, new).await? {
            return Ok(created);
        }
        let submitter = new.submitter.name.as_deref().unwrap_or("");
        let now = now();
        let inserted = sqlx::query(
            "INSERT INTO jobs (id, status, repo, repo_mode, force, has_registry_auth,
                               idempotency_key, spec_hash, created_at, submitted_by,
                               use_service_credentials, required_labels, callback_url,
                               publish_via, engine, accepted_by)
             VALUES ($1, 'queued', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        )
        .bind(new.id.to_string())
        .bind(new.plan.repo.as_str())
        .bind(new.plan.repo_mode.as_str())
        .bind(new.plan.force)
        .bind(new.has_registry_auth)
        .bind(new.idempotency_key.clone())
        .bind(new.spec_hash.as_str())
        .bind(now.as_str())
        .bind(submitter)
        .bind(new.submitter.use_service_credentials)
        .bind(serde_json::to_string(&new.submitter.required_labels)?)
        .bind(
            new.plan
                .callback
                .as_ref()
                .map(|callback| callback.url.clone()),
        )
        .bind(new.plan.publish_via.map(PublishVia::as_str))
        .bind(new.engine.clone())
        .bind(new.has_registry_auth.then(|| accepted_by.to_string()))
        .execute(&mut *conn)
        .await;
        match inserted {
            Err(error) if D::violates(&error, "jobs_by_idempotency_key") => {
                return Err(KeyRace.into());
            }
            inserted => inserted.context("inserting the job")?,
        };
        D::insert_images(conn, new).await?;
        // Read in the same transaction as the insert: concurrent submissions
        // cannot overshoot the limit together. A count kept by triggers,
        // since counting the rows costs as much as the queue is long.
        let pending: i64 = sqlx::query_scalar(D::PENDING_COUNT)
            .fetch_one(&mut *conn)
            .await
            .context("reading the number of pending targets")?;
        if pending.saturating_add(new.plan.targets.len() as i64) > new.max_pending as i64 {
            return Ok(Created::Overloaded { pending });
        }
        if let Some(overloaded) = Self::submitter_overloaded(conn, new).await? {
            return Ok(overloaded);
        }
        // A submitter that was idle starts level with the least-served one
        // still queued, not with the credit of its idle time.
        if !owner_current {
            let active = |owner: &str| {
                format!(
                    "EXISTS (SELECT 1 FROM targets t WHERE t.submitted_by = {owner}
                             AND (t.status = 'pending' OR t.status IN {IN_FLIGHT}))"
                )
            };
            sqlx::query(&format!(
                "INSERT INTO owners (name, weight, pass) VALUES ($1, $2,
                     COALESCE((SELECT MIN(o.pass) FROM owners o WHERE {}), 0))
                 ON CONFLICT (name) DO UPDATE SET weight = excluded.weight,
                     pass = CASE WHEN {} THEN owners.pass ELSE {} END",
                active("o.name"),
                active("owners.name"),
                D::greatest("owners.pass", "excluded.pass"),
            ))
            .bind(submitter)
            .bind(i64::from(new.submitter.weight))
            .execute(&mut *conn)
            .await
            .context("recording the submitter's share")?;
        }
        D::insert_targets(conn, new).await?;
        Ok(Created::New(queued_job(new, now)))
    }

    /// The submitter's own limit on pending targets, if `new` would pass it.
    async fn submitter_overloaded(
        conn: &mut D::Connection,
        new: &NewJob,
    ) -> StoreResult<Option<Created>> {
        let Some(limit) = new.submitter.max_queued_targets else {
            return Ok(None);
        };
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM targets WHERE submitted_by = $1 AND status = 'pending'",
        )
        .bind(new.submitter.name.as_deref().unwrap_or(""))
        .fetch_one(&mut *conn)
        .await
        .context("counting the submitter's pending targets")?;
        Ok(
            (pending.saturating_add(new.plan.targets.len() as i64) > limit as i64)
                .then_some(Created::SubmitterOverloaded { pending, limit }),
        )
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
