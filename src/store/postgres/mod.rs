//! The PostgreSQL store: several publishd instances share one database and
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

mod audit;
mod events;
mod queue;
mod retention;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{FromRow, Row};
use uuid::Uuid;

use super::rows::{
    CLAIMED, ClaimedRow, EngineTargetsRow, InstanceRow, JobRow, job_of, page_of, parse_enum,
    parse_uuid,
};
use super::shared;
use super::{
    AuditEntry, Cancelled, ClaimedTarget, Created, EngineStatus, IN_FLIGHT, Instance, Job, JobPage,
    LIVE_WITHIN, Location, NewJob, PageKey, StoreResult, engines_of, job_state, now, queued_job,
};
use crate::domain::naming::reference_key;
use crate::domain::publish_via::PublishVia;
use crate::domain::publish_via::Seed;
use crate::domain::status::{JobStatus, TargetStatus};
use crate::store::{Event, QueueCounts};

/// Connections per instance: lanes, the API and the background loops share them.
const MAX_CONNECTIONS: u32 = 10;

/// How long a caller waits for a connection before the store says it is
/// unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// An instance whose heartbeat is older than this is gone for good: its
/// record is removed.
const FORGET_AFTER: &str = "1 hour";

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    instance: Arc<Instance>,
}

type AuditOf = Box<dyn FnOnce(&Created) -> AuditEntry + Send>;

/// Another instance inserted a job with the same idempotency key between
/// this submission's look-up and its insert: the submission is made again,
/// and then finds that job.
#[derive(Debug, thiserror::Error)]
#[error("another submission with the same idempotency key was committed first")]
struct KeyRace;

/// How many times a submission is made again after losing a key race.
const KEY_RACE_TRIES: usize = 3;

/// Whether `error` is a unique violation of `index`.
fn violates(error: &sqlx::Error, index: &str) -> bool {
    match error {
        sqlx::Error::Database(error) => {
            error.code().as_deref() == Some("23505") && error.constraint() == Some(index)
        }
        _ => false,
    }
}

impl PgStore {
    /// Connects to the database at `url` and applies migrations. Several
    /// instances may start at once: sqlx's migrator holds an advisory lock
    /// while it migrates.
    pub async fn open(url: &str, instance: Instance) -> StoreResult<PgStore> {
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
        Ok(PgStore {
            pool,
            instance: Arc::new(instance),
        })
    }

    /// Checks that the database reads and takes writes.
    pub async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .context("reading the database")?;
        sqlx::query(
            "INSERT INTO liveness (id, checked_at) VALUES (1, $1)
             ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at",
        )
        .bind(now())
        .execute(&self.pool)
        .await
        .context("writing to the database")?;
        Ok(())
    }

    /// Records that this instance is alive, on the database's clock, and
    /// forgets instances silent for long.
    pub async fn heartbeat(&self) -> StoreResult<()> {
        let instance = &self.instance;
        sqlx::query(
            "INSERT INTO instances (id, engine, address, started_at, heartbeat_at)
             VALUES ($1, $2, $3, $4, clock_timestamp())
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = clock_timestamp()",
        )
        .bind(instance.id.to_string())
        .bind(&instance.engine)
        .bind(&instance.address)
        .bind(now())
        .execute(&self.pool)
        .await
        .context("recording this instance's heartbeat")?;
        sqlx::query(&format!(
            "DELETE FROM instances
             WHERE heartbeat_at < clock_timestamp() - interval '{FORGET_AFTER}'"
        ))
        .execute(&self.pool)
        .await
        .context("forgetting instances gone")?;
        Ok(())
    }

    pub async fn leave(&self) -> StoreResult<()> {
        sqlx::query("DELETE FROM instances WHERE id = $1")
            .bind(self.instance.id.to_string())
            .execute(&self.pool)
            .await
            .context("removing this instance's record")?;
        Ok(())
    }

    pub async fn engine_of_key(
        &self,
        submitter: &str,
        key: &str,
    ) -> StoreResult<Option<Option<String>>> {
        let engine = sqlx::query_scalar(
            "SELECT engine FROM jobs WHERE submitted_by = $1 AND idempotency_key = $2",
        )
        .bind(submitter)
        .bind(key)
        .fetch_optional(&self.pool)
        .await
        .context("looking up the idempotency key")?;
        Ok(engine)
    }

    pub async fn live_engines(&self) -> StoreResult<Vec<String>> {
        let engines = sqlx::query_scalar(
            "SELECT DISTINCT engine FROM instances
             WHERE engine IS NOT NULL
               AND heartbeat_at > clock_timestamp() - make_interval(secs => $1)
             ORDER BY engine",
        )
        .bind(LIVE_WITHIN.as_secs_f64())
        .fetch_all(&self.pool)
        .await
        .context("listing the engines driven")?;
        Ok(engines)
    }

    pub async fn engines(&self) -> StoreResult<Vec<EngineStatus>> {
        let mut tx = self.pool.begin().await?;
        snapshot(&mut tx).await?;
        let instances: Vec<InstanceRow> = sqlx::query_as(
            "SELECT id, engine, address, started_at,
                    EXTRACT(EPOCH FROM clock_timestamp() - heartbeat_at)::float8
                        AS heartbeat_age_seconds
             FROM instances",
        )
        .fetch_all(&mut *tx)
        .await
        .context("listing instances")?;
        let targets: Vec<EngineTargetsRow> = sqlx::query_as(&format!(
            "SELECT j.engine AS engine,
                    count(*) FILTER (WHERE t.status = 'pending') AS queued,
                    count(*) FILTER (WHERE t.status IN {IN_FLIGHT}) AS in_flight
             FROM targets t JOIN jobs j ON j.id = t.job_id
             WHERE j.engine IS NOT NULL AND (t.status = 'pending' OR t.status IN {IN_FLIGHT})
             GROUP BY j.engine"
        ))
        .fetch_all(&mut *tx)
        .await
        .context("counting targets by engine")?;
        tx.commit().await?;
        let instances = instances
            .into_iter()
            .map(InstanceRow::into_instance)
            .collect::<StoreResult<_>>()?;
        Ok(engines_of(instances, targets))
    }

    /// Records a job and its targets, honouring the idempotency key and the
    /// queue limits; answers once it is committed.
    pub async fn create_job(&self, new: NewJob) -> StoreResult<Created> {
        Ok(self.write_job(new, None).await?.0)
    }

    /// `create_job`, with the submission's audit record in the same
    /// transaction: `audit` makes it from what was done.
    pub async fn create_audited_job(
        &self,
        new: NewJob,
        audit: impl FnOnce(&Created) -> AuditEntry + Send + 'static,
    ) -> StoreResult<(Created, AuditEntry)> {
        match self.write_job(new, Some(Box::new(audit))).await? {
            (created, Some(entry)) => Ok((created, entry)),
            (_, None) => unreachable!("an audited job's write answers its record"),
        }
    }

    async fn write_job(
        &self,
        new: NewJob,
        audit: Option<AuditOf>,
    ) -> StoreResult<(Created, Option<AuditEntry>)> {
        let mut tries = 0;
        loop {
            tries += 1;
            let mut tx = self.pool.begin().await?;
            let created = match insert_job(&mut tx, &new, self.instance.id).await {
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
                tx = self.pool.begin().await?;
            }
            let entry = audit.map(|audit| audit(&created));
            if let Some(entry) = &entry {
                audit::insert_audit(&mut tx, entry).await?;
            }
            tx.commit().await.context("committing a submission")?;
            return Ok((created, entry));
        }
    }

    pub async fn get_job(&self, id: Uuid) -> StoreResult<Option<Job>> {
        let mut tx = self.pool.begin().await?;
        snapshot(&mut tx).await?;
        let job = load_job(&mut tx, id).await?;
        tx.commit().await?;
        Ok(job)
    }

    /// A page of jobs, read in one snapshot.
    pub async fn search_jobs(&self, key: PageKey) -> StoreResult<JobPage> {
        let pattern = key.pattern();
        let filter = PageFilter {
            status: key.status,
            before: key.before,
            limit: key.limit,
            submitted_by: key.submitted_by.as_deref(),
            pattern: pattern.as_deref(),
        };
        let mut tx = self.pool.begin().await?;
        snapshot(&mut tx).await?;
        let jobs: Vec<JobRow> = sqlx::query_as(PAGE)
            .bind(filter.status.map(JobStatus::as_str))
            .bind(filter.before.map(|id| id.to_string()))
            .bind(i64::from(filter.limit) + 1)
            .bind(filter.submitted_by)
            .bind(filter.pattern)
            .fetch_all(&mut *tx)
            .await
            .context("listing jobs")?;
        let targets = rows_of_page(&mut tx, "targets", "position", &filter).await?;
        let images = rows_of_page(&mut tx, "job_images", "position", &filter).await?;
        let deliveries = rows_of_page(&mut tx, "deliveries", "created_at", &filter).await?;
        tx.commit().await?;
        page_of(jobs, images, targets, deliveries, key.limit)
    }

    /// Cancels what has not started and flags the job, so the targets under
    /// way stop after their current step.
    pub async fn cancel_job(&self, id: Uuid) -> StoreResult<Cancelled> {
        let mut tx = self.pool.begin().await?;
        // The job first (the lock order): a target going back to the queue
        // meanwhile reads the flag after this commits.
        let found: Option<String> =
            sqlx::query_scalar("SELECT id FROM jobs WHERE id = $1 FOR NO KEY UPDATE")
                .bind(id.to_string())
                .fetch_optional(&mut *tx)
                .await
                .context("locking a job to cancel")?;
        if found.is_none() {
            return Ok(Cancelled::NotFound);
        }
        let job = load_job(&mut tx, id).await?.context("job vanished")?;
        if job.status.is_terminal() {
            return Ok(Cancelled::AlreadyFinished(job));
        }
        sqlx::query("UPDATE jobs SET cancel_requested = true WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE targets SET status = 'cancelled', finished_at = $1,
                                error = 'cancelled before it started'
             WHERE job_id = $2 AND status = 'pending'",
        )
        .bind(now())
        .bind(id.to_string())
        .execute(&mut *tx)
        .await
        .context("cancelling pending targets")?;
        refresh_job(&mut tx, id).await?;
        let job = load_job(&mut tx, id).await?.context("job vanished")?;
        tx.commit().await?;
        Ok(Cancelled::Requested(job))
    }
}

/// Makes the transaction just begun read one snapshot throughout.
async fn snapshot(conn: &mut PgConnection) -> StoreResult<()> {
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(conn)
        .await
        .context("starting a read transaction")?;
    Ok(())
}

/// Writes one submission on `conn` (in the caller's transaction): the
/// idempotency key, the queue limits, the submitter's share, the job.
async fn insert_job(conn: &mut PgConnection, new: &NewJob, me: Uuid) -> StoreResult<Created> {
    let submitter = new.submitter.name.as_deref().unwrap_or("");
    if let Some(key) = &new.idempotency_key {
        // Keys are the submitter's own: another token's job is never found.
        // Two submissions of one key at once both miss here; the unique
        // index stops the second at its insert (`KeyRace`), and it is made
        // again and finds the first.
        let seen = sqlx::query(
            "SELECT id, spec_hash FROM jobs WHERE submitted_by = $1 AND idempotency_key = $2",
        )
        .bind(submitter)
        .bind(key)
        .fetch_optional(&mut *conn)
        .await
        .context("looking up the idempotency key")?;
        if let Some(row) = seen {
            let hash: String = row.get("spec_hash");
            if hash != new.spec_hash {
                return Ok(Created::KeyReused);
            }
            let id = parse_uuid(row.get("id"))?;
            let job = load_job(conn, id).await?.context("job vanished")?;
            return Ok(Created::Existing(job));
        }
    }

    // The job and its images first: they take no lock that others wait
    // for. Submissions on every instance meet at the pending count's row,
    // which the limit check below locks to commit: the less done after it,
    // the more submissions a second.
    let id = new.id;
    let now = now();
    let inserted = sqlx::query(
        "INSERT INTO jobs (id, status, repo, repo_mode, force, has_registry_auth,
                           idempotency_key, spec_hash, created_at, submitted_by,
                           use_service_credentials, required_labels, callback_url,
                           publish_via, engine, accepted_by)
         VALUES ($1, 'queued', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
    )
    .bind(id.to_string())
    .bind(&new.plan.repo)
    .bind(new.plan.repo_mode.as_str())
    .bind(new.plan.force)
    .bind(new.has_registry_auth)
    .bind(&new.idempotency_key)
    .bind(&new.spec_hash)
    .bind(&now)
    .bind(submitter)
    .bind(new.submitter.use_service_credentials)
    .bind(serde_json::to_string(&new.submitter.required_labels)?)
    .bind(new.plan.callback.as_ref().map(|callback| &callback.url))
    .bind(new.plan.publish_via.map(PublishVia::as_str))
    .bind(&new.engine)
    .bind(new.has_registry_auth.then(|| me.to_string()))
    .execute(&mut *conn)
    .await;
    match inserted {
        Err(error) if violates(&error, "jobs_by_idempotency_key") => return Err(KeyRace.into()),
        inserted => inserted.context("inserting the job")?,
    };
    let images = &new.plan.images;
    sqlx::query(
        "INSERT INTO job_images (job_id, position, name, source, source_image_id, source_digest)
         SELECT $1, position, name, source, source_image_id, source_digest
         FROM UNNEST($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[])
              AS image (position, name, source, source_image_id, source_digest)",
    )
    .bind(id.to_string())
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
    .execute(&mut *conn)
    .await
    .context("inserting the images")?;

    let pending: i64 =
        sqlx::query_scalar("SELECT count FROM pending_targets WHERE id = 1 FOR UPDATE")
            .fetch_one(&mut *conn)
            .await
            .context("reading the number of pending targets")?;
    if pending.saturating_add(new.plan.targets.len() as i64) > new.max_pending as i64 {
        return Ok(Created::Overloaded { pending });
    }
    if let Some(limit) = new.submitter.max_queued_targets {
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM targets WHERE submitted_by = $1 AND status = 'pending'",
        )
        .bind(submitter)
        .fetch_one(&mut *conn)
        .await
        .context("counting the submitter's pending targets")?;
        if pending.saturating_add(new.plan.targets.len() as i64) > limit as i64 {
            return Ok(Created::SubmitterOverloaded { pending, limit });
        }
    }
    // A submitter that was idle starts level with the least-served one
    // still queued, not with the credit of its idle time. After the count's
    // lock, as claims take them (the lock order).
    sqlx::query(&format!(
        "INSERT INTO owners (name, weight, pass) VALUES ($1, $2,
         COALESCE((SELECT MIN(o.pass) FROM owners o WHERE EXISTS (
             SELECT 1 FROM targets t
             WHERE t.submitted_by = o.name
               AND (t.status = 'pending' OR t.status IN {IN_FLIGHT}))), 0))
         ON CONFLICT (name) DO UPDATE SET weight = excluded.weight,
             pass = CASE WHEN EXISTS (
                     SELECT 1 FROM targets t
                     WHERE t.submitted_by = owners.name
                       AND (t.status = 'pending' OR t.status IN {IN_FLIGHT}))
                 THEN owners.pass ELSE GREATEST(owners.pass, excluded.pass) END"
    ))
    .bind(submitter)
    .bind(i64::from(new.submitter.weight))
    .execute(&mut *conn)
    .await
    .context("recording the submitter's share")?;
    let targets = &new.plan.targets;
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
    .bind(id.to_string())
    .bind((0..targets.len() as i64).collect::<Vec<_>>())
    .bind(
        targets
            .iter()
            .map(|t| t.image_index as i64)
            .collect::<Vec<_>>(),
    )
    .bind(
        targets
            .iter()
            .map(|t| t.image_name.clone())
            .collect::<Vec<_>>(),
    )
    .bind(targets.iter().map(|t| t.source.clone()).collect::<Vec<_>>())
    .bind(
        targets
            .iter()
            .map(|t| t.strategy.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(targets.iter().map(|t| t.tag.clone()).collect::<Vec<_>>())
    .bind(
        targets
            .iter()
            .map(|t| t.reference.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        targets
            .iter()
            .map(|t| t.reference.as_deref().map(reference_key))
            .collect::<Vec<_>>(),
    )
    .bind(submitter)
    .execute(&mut *conn)
    .await
    .context("inserting the targets")?;
    Ok(Created::New(queued_job(new, now)))
}

/// Locks the job of target `target_id` (the lock order: a job before its
/// targets) and answers its id; `None` if there is no such target.
async fn lock_job_of(conn: &mut PgConnection, target_id: i64) -> StoreResult<Option<Uuid>> {
    let id: Option<String> = sqlx::query_scalar(
        "SELECT id FROM jobs WHERE id = (SELECT job_id FROM targets WHERE id = $1)
         FOR NO KEY UPDATE",
    )
    .bind(target_id)
    .fetch_optional(&mut *conn)
    .await
    .context("locking a target's job")?;
    id.map(parse_uuid).transpose()
}

/// Brings a job's status in line with its targets' and answers it.
async fn refresh_job(conn: &mut PgConnection, id: Uuid) -> StoreResult<JobStatus> {
    let rows = sqlx::query("SELECT status FROM targets WHERE job_id = $1")
        .bind(id.to_string())
        .fetch_all(&mut *conn)
        .await?;
    let statuses = rows
        .iter()
        .map(|row| parse_enum(row.get("status"), TargetStatus::parse, "target status"))
        .collect::<StoreResult<Vec<_>>>()?;
    let cancel_requested: bool =
        sqlx::query_scalar("SELECT cancel_requested FROM jobs WHERE id = $1")
            .bind(id.to_string())
            .fetch_one(&mut *conn)
            .await?;
    let (status, error) = job_state(&statuses, cancel_requested);
    sqlx::query(
        "UPDATE jobs SET status = $1, error = $2,
             started_at = CASE WHEN $1 <> 'queued' THEN COALESCE(started_at, $3) ELSE started_at END,
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

async fn load_claimed(conn: &mut PgConnection, id: i64) -> StoreResult<ClaimedTarget> {
    let row = sqlx::query(&format!("{CLAIMED} $1"))
        .bind(id)
        .fetch_one(&mut *conn)
        .await
        .context("loading a claimed target")?;
    ClaimedRow::from_row(&row)?.into_claimed()
}

/// The jobs of one page of `list_jobs`, newest first. ILIKE: SQLite's LIKE
/// ignores (ASCII) case.
const PAGE: &str = "SELECT * FROM jobs
     WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR id < $2)
       AND ($4::text IS NULL OR submitted_by = $4)
       AND ($5::text IS NULL OR repo ILIKE $5 ESCAPE '\\'
            OR EXISTS (SELECT 1 FROM targets s
                       WHERE s.job_id = jobs.id AND s.reference ILIKE $5 ESCAPE '\\'))
     ORDER BY id DESC LIMIT $3";

/// What selects a page of jobs.
struct PageFilter<'a> {
    status: Option<JobStatus>,
    before: Option<Uuid>,
    limit: u32,
    submitted_by: Option<&'a str>,
    /// A LIKE pattern the repository or a reference matches.
    pattern: Option<&'a str>,
}

/// The rows of `table` that belong to the jobs of a page, by job.
async fn rows_of_page<R>(
    conn: &mut PgConnection,
    table: &str,
    order: &str,
    filter: &PageFilter<'_>,
) -> StoreResult<Vec<R>>
where
    R: for<'r> FromRow<'r, PgRow> + Send + Unpin,
{
    let rows = sqlx::query_as(&format!(
        "SELECT * FROM {table} WHERE job_id IN (SELECT id FROM ({PAGE}) AS page)
         ORDER BY job_id, {order}"
    ))
    .bind(filter.status.map(JobStatus::as_str))
    .bind(filter.before.map(|id| id.to_string()))
    .bind(i64::from(filter.limit))
    .bind(filter.submitted_by)
    .bind(filter.pattern)
    .fetch_all(&mut *conn)
    .await
    .with_context(|| format!("listing the jobs' {table}"))?;
    Ok(rows)
}

async fn load_job(conn: &mut PgConnection, id: Uuid) -> StoreResult<Option<Job>> {
    let Some(job) = sqlx::query_as::<_, JobRow>("SELECT * FROM jobs WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await
        .context("loading a job")?
    else {
        return Ok(None);
    };
    let targets = sqlx::query_as("SELECT * FROM targets WHERE job_id = $1 ORDER BY position")
        .bind(id.to_string())
        .fetch_all(&mut *conn)
        .await
        .context("loading a job's targets")?;
    let images = sqlx::query_as("SELECT * FROM job_images WHERE job_id = $1 ORDER BY position")
        .bind(id.to_string())
        .fetch_all(&mut *conn)
        .await
        .context("loading a job's images")?;
    let deliveries =
        sqlx::query_as("SELECT * FROM deliveries WHERE job_id = $1 ORDER BY created_at")
            .bind(id.to_string())
            .fetch_all(&mut *conn)
            .await
            .context("loading a job's deliveries")?;
    job_of(job, images, targets, deliveries).map(Some)
}

/// The SQL both stores share (`store/shared.rs`).
impl PgStore {
    pub async fn job_events(
        &self,
        job_id: Uuid,
        after: i64,
        limit: u32,
    ) -> StoreResult<Vec<Event>> {
        shared::job_events(&self.pool, job_id, after, limit).await
    }

    pub async fn last_event_of(&self, job_id: Uuid) -> StoreResult<Option<i64>> {
        shared::last_event_of(&self.pool, job_id).await
    }

    pub async fn queue_counts(&self) -> StoreResult<QueueCounts> {
        shared::queue_counts(&self.pool).await
    }

    pub async fn seed(&self, source_image_id: &str, registry: &str) -> StoreResult<Option<Seed>> {
        shared::seed(&self.pool, source_image_id, registry).await
    }

    pub async fn record_seed(
        &self,
        source_image_id: &str,
        registry: &str,
        seed: &Seed,
    ) -> StoreResult<()> {
        shared::record_seed(&self.pool, source_image_id, registry, seed).await
    }
}
