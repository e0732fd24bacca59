//! The SQLite store: one publishd owns one database file. WAL mode, with
//! one writer connection (so write transactions never race for the lock)
//! and a small pool of readers (WAL lets them read while the writer writes).

mod answers;
mod audit;
mod events;
mod group_commit;
mod queue;
mod retention;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::future::BoxFuture;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{FromRow, Row, SqliteConnection};
use uuid::Uuid;

use answers::{Answers, Writes};
use group_commit::{GroupCommit, QueueWrite, Write, Written};

use super::rows::{
    CLAIMED, ClaimedRow, EngineTargetsRow, JobRow, job_of, page_of, parse_enum, parse_uuid,
};
use super::shared;
use super::{
    AuditEntry, Cancelled, ClaimedTarget, Created, EngineStatus, IN_FLIGHT, Instance,
    InstanceStatus, Job, JobPage, NewJob, PageKey, StoreResult, engines_of, job_state, now,
    queued_job,
};
use crate::domain::naming::reference_key;
use crate::domain::publish_via::PublishVia;
use crate::domain::publish_via::Seed;
use crate::domain::status::{JobStatus, TargetStatus};
use crate::store::{Event, QueueCounts};

#[derive(Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    /// Submissions, audit records and the lanes' queue writes, written in
    /// batches (group commit).
    batches: GroupCommit,
    /// Times `writer` was handed out, and the jobs and pages read while it
    /// was idle.
    writes: Writes,
    jobs: Answers<Uuid, Job>,
    pages: Answers<PageKey, JobPage>,
    /// Held while the store lives: one publishd per database, so targets
    /// found mid-step at start-up belong to a dead process, not a live one.
    _owner: Arc<std::fs::File>,
    /// Leases are measured from here, on a clock that does not jump.
    epoch: Instant,
    instance: Arc<Instance>,
    started_at: String,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies migrations.
    pub async fn open(path: &Path, instance: Instance) -> StoreResult<SqliteStore> {
        let owner = lock_database(path)?;
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a job that was answered 202 must survive a power cut too.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        migrate(path, &options).await?;
        let writes = Writes::default();
        let (acquired, connected) = (writes.clone(), writes.clone());
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            // A write that fails for a full disk or an I/O error can make
            // SQLite roll the transaction back itself; sqlx's ROLLBACK then
            // fails and it goes on counting the transaction as open: later
            // transactions on the connection become savepoints, and after
            // the next rollback nothing on it is committed again while every
            // commit reports success. Such a connection is replaced.
            .before_acquire(move |connection, _| {
                // Handed out, it may write: reads kept so far are old
                // (`answers.rs`).
                acquired.taken();
                let usable = !sqlx::Connection::is_in_transaction(connection);
                Box::pin(async move { Ok(usable) })
            })
            // A new connection is handed out without `before_acquire`.
            .after_connect(move |_, _| {
                connected.taken();
                Box::pin(async { Ok(()) })
            })
            .connect_with(options.clone())
            .await
            .with_context(|| format!("opening the database {}", path.display()))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await
            .with_context(|| format!("opening readers on {}", path.display()))?;
        Ok(SqliteStore {
            batches: GroupCommit::start(writer.clone()),
            writes,
            jobs: Answers::default(),
            pages: Answers::default(),
            writer,
            reader,
            _owner: Arc::new(owner),
            epoch: Instant::now(),
            instance: Arc::new(instance),
            started_at: now(),
        })
    }

    /// Checks that the database reads and takes writes: a locked database, a
    /// read-only file system or a full disk shows here, not at the next POST.
    pub async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .context("reading the database")?;
        sqlx::query("REPLACE INTO liveness (id, checked_at) VALUES (1, ?)")
            .bind(now())
            .execute(&self.writer)
            .await
            .context("writing to the database")?;
        Ok(())
    }

    /// Nothing to record: one publishd per file, and it is this one (the
    /// file's lock says so), so nobody reads a heartbeat.
    pub async fn heartbeat(&self) -> StoreResult<()> {
        Ok(())
    }

    pub async fn leave(&self) -> StoreResult<()> {
        Ok(())
    }

    pub async fn engine_of_key(
        &self,
        submitter: &str,
        key: &str,
    ) -> StoreResult<Option<Option<String>>> {
        let engine = sqlx::query_scalar(
            "SELECT engine FROM jobs WHERE submitted_by = ? AND idempotency_key = ?",
        )
        .bind(submitter)
        .bind(key)
        .fetch_optional(&self.reader)
        .await
        .context("looking up the idempotency key")?;
        Ok(engine)
    }

    /// One publishd per file: its own engine, if it has one.
    pub async fn live_engines(&self) -> StoreResult<Vec<String>> {
        Ok(self.instance.engine.iter().cloned().collect())
    }

    pub async fn engines(&self) -> StoreResult<Vec<EngineStatus>> {
        let targets: Vec<EngineTargetsRow> = sqlx::query_as(&format!(
            "SELECT j.engine AS engine,
                    sum(t.status = 'pending') AS queued,
                    sum(t.status IN {IN_FLIGHT}) AS in_flight
             FROM targets t JOIN jobs j ON j.id = t.job_id
             WHERE j.engine IS NOT NULL AND (t.status = 'pending' OR t.status IN {IN_FLIGHT})
             GROUP BY j.engine"
        ))
        .fetch_all(&self.reader)
        .await
        .context("counting targets by engine")?;
        let this = InstanceStatus {
            id: self.instance.id,
            address: self.instance.address.clone(),
            started_at: self.started_at.clone(),
            heartbeat_age_seconds: 0.0,
            live: true,
        };
        Ok(engines_of(
            vec![(self.instance.engine.clone(), this)],
            targets,
        ))
    }

    /// Records a job and its targets, honouring the idempotency key; answers
    /// once the transaction that holds it has committed (with others: see
    /// `group_commit.rs`).
    pub async fn create_job(&self, new: NewJob) -> StoreResult<Created> {
        match self
            .batches
            .write(Write::Job {
                new: Box::new(new),
                audit: None,
            })
            .await?
        {
            Written::Job(written) => Ok(written.0),
            Written::Audited | Written::Queue(_) => unreachable!("a job's write answers a job"),
        }
    }

    /// Runs `write` in the group-committed writer (`group_commit.rs`), in a
    /// savepoint of a batch's transaction; answers after that commit.
    pub(super) async fn write_batched<T, F>(&self, write: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, StoreResult<T>>
            + Send
            + 'static,
    {
        let write: QueueWrite = Box::new(move |conn| {
            Box::pin(async move {
                let answer = write(conn).await?;
                Ok(Box::new(answer) as Box<dyn std::any::Any + Send>)
            })
        });
        match self.batches.write(Write::Queue(write)).await? {
            Written::Queue(answer) => answer
                .downcast::<T>()
                .map(|answer| *answer)
                .map_err(|_| anyhow::anyhow!("a queue write answered another type")),
            _ => unreachable!("a queue write answers a queue write"),
        }
    }

    /// `create_job`, with the submission's audit record in the same
    /// transaction: `audit` makes it from what was done.
    pub async fn create_audited_job(
        &self,
        new: NewJob,
        audit: impl FnOnce(&Created) -> AuditEntry + Send + 'static,
    ) -> StoreResult<(Created, AuditEntry)> {
        let write = Write::Job {
            new: Box::new(new),
            audit: Some(Box::new(audit)),
        };
        match self.batches.write(write).await? {
            Written::Job(written) => match *written {
                (created, Some(entry)) => Ok((created, entry)),
                (_, None) => unreachable!("an audited job's write answers its record"),
            },
            Written::Audited | Written::Queue(_) => unreachable!("a job's write answers a job"),
        }
    }

    /// The job; as read before if nothing was written since (`answers.rs`).
    pub async fn get_job(&self, id: Uuid) -> StoreResult<Option<Job>> {
        let writes = self.writes.idle_after(&self.writer);
        if let Some(job) = writes.and_then(|writes| self.jobs.get(&id, writes)) {
            return Ok(Some(job));
        }
        let mut conn = self.reader.acquire().await?;
        let job = load_job(&mut conn, id).await?;
        if let (Some(job), Some(writes)) = (&job, writes) {
            self.jobs.put(id, job, writes);
        }
        Ok(job)
    }

    /// A page of jobs; as read before if nothing was written since
    /// (`answers.rs`).
    pub async fn search_jobs(&self, key: PageKey) -> StoreResult<JobPage> {
        let writes = self.writes.idle_after(&self.writer);
        if let Some(page) = writes.and_then(|writes| self.pages.get(&key, writes)) {
            return Ok(page);
        }
        let page = self.read_page(&key).await?;
        if let Some(writes) = writes {
            self.pages.put(key, &page, writes);
        }
        Ok(page)
    }

    async fn read_page(&self, key: &PageKey) -> StoreResult<JobPage> {
        let pattern = key.pattern();
        let filter = PageFilter {
            status: key.status,
            before: key.before,
            limit: key.limit,
            submitted_by: key.submitted_by.as_deref(),
            pattern: pattern.as_deref(),
        };
        // Four queries for the page, whatever its size: the jobs, then all
        // their targets, images and deliveries through the same filter
        // (`rows_of_page`), in one read transaction: one snapshot.
        let mut tx = self.reader.begin().await?;
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
        page_of(jobs, images, targets, deliveries, key.limit)
    }

    /// Cancels what has not started and flags the job, so the targets under
    /// way stop after their current step.
    pub async fn cancel_job(&self, id: Uuid) -> StoreResult<Cancelled> {
        let mut tx = self.writer.begin().await?;
        let Some(job) = load_job(&mut tx, id).await? else {
            return Ok(Cancelled::NotFound);
        };
        if job.status.is_terminal() {
            return Ok(Cancelled::AlreadyFinished(job));
        }
        let now = now();
        sqlx::query("UPDATE jobs SET cancel_requested = 1 WHERE id = ?")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE targets SET status = 'cancelled', finished_at = ?, error = 'cancelled before it started'
             WHERE job_id = ? AND status = 'pending'",
        )
        .bind(&now)
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

/// Writes one submission on `conn` (in the caller's transaction): the
/// idempotency key, the queue limits, the submitter's share, the job.
/// `owner_current`: the submitter's share was already brought up to date by
/// an earlier job of the same transaction, which left it with queued targets;
/// the statement would change nothing.
async fn insert_job(
    conn: &mut sqlx::SqliteConnection,
    new: &NewJob,
    owner_current: bool,
) -> StoreResult<Created> {
    let submitter = new.submitter.name.as_deref().unwrap_or("");
    if let Some(key) = &new.idempotency_key {
        // Keys are the submitter's own: another token's job is never found.
        let seen = sqlx::query(
            "SELECT id, spec_hash FROM jobs WHERE submitted_by = ? AND idempotency_key = ?",
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

    // Read in the same transaction as the insert: concurrent submissions
    // cannot overshoot the limit together. A count kept by triggers
    // (`pending_targets`), since counting the rows costs as much as the
    // queue is long, for every submission.
    let pending: i64 = sqlx::query_scalar("SELECT count FROM pending_targets")
        .fetch_one(&mut *conn)
        .await
        .context("reading the number of pending targets")?;
    if pending.saturating_add(new.plan.targets.len() as i64) > new.max_pending as i64 {
        return Ok(Created::Overloaded { pending });
    }
    if let Some(limit) = new.submitter.max_queued_targets {
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM targets t JOIN jobs j ON j.id = t.job_id
             WHERE t.status = 'pending' AND j.submitted_by = ?",
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
    // still queued, not with the credit of its idle time.
    if !owner_current {
        sqlx::query(&format!(
            "INSERT INTO owners (name, weight, pass) VALUES (?1, ?2,
             COALESCE((SELECT MIN(o.pass) FROM owners o WHERE EXISTS (
                 SELECT 1 FROM jobs j JOIN targets t ON t.job_id = j.id
                 WHERE j.submitted_by = o.name
                   AND (t.status = 'pending' OR t.status IN {IN_FLIGHT}))), 0))
         ON CONFLICT (name) DO UPDATE SET weight = excluded.weight,
             pass = CASE WHEN EXISTS (
                     SELECT 1 FROM jobs j JOIN targets t ON t.job_id = j.id
                     WHERE j.submitted_by = owners.name
                       AND (t.status = 'pending' OR t.status IN {IN_FLIGHT}))
                 THEN owners.pass ELSE MAX(owners.pass, excluded.pass) END"
        ))
        .bind(submitter)
        .bind(i64::from(new.submitter.weight))
        .execute(&mut *conn)
        .await
        .context("recording the submitter's share")?;
    }

    let id = new.id;
    let now = now();
    sqlx::query(
        "INSERT INTO jobs (id, status, repo, repo_mode, force, has_registry_auth,
                           idempotency_key, spec_hash, created_at, submitted_by,
                           use_service_credentials, required_labels, callback_url,
                           publish_via, engine)
         VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
    .execute(&mut *conn)
    .await
    .context("inserting the job")?;
    for (position, image) in new.plan.images.iter().enumerate() {
        sqlx::query(
            "INSERT INTO job_images (job_id, position, name, source, source_image_id, source_digest)
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(id.to_string())
        .bind(position as i64)
        .bind(&image.name)
        .bind(&image.source)
        .bind(&image.source_image_id)
        .bind(&image.source_digest)
        .execute(&mut *conn)
        .await
        .context("inserting an image")?;
    }
    for (position, target) in new.plan.targets.iter().enumerate() {
        sqlx::query(
            "INSERT INTO targets (job_id, position, image_position, image_name, source, strategy,
                                  tag, reference, reference_key, status)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending')",
        )
        .bind(id.to_string())
        .bind(position as i64)
        .bind(target.image_index as i64)
        .bind(&target.image_name)
        .bind(&target.source)
        .bind(target.strategy.as_str())
        .bind(&target.tag)
        .bind(&target.reference)
        .bind(target.reference.as_deref().map(reference_key))
        .execute(&mut *conn)
        .await
        .context("inserting a target")?;
    }
    Ok(Created::New(queued_job(new, now)))
}

/// Applies the migrations on a connection of its own without foreign key
/// enforcement, so that a migration may rebuild a table the way SQLite
/// documents it (foreign keys cannot be switched off inside the transaction
/// each migration runs in); then checks every foreign key.
async fn migrate(path: &Path, options: &SqliteConnectOptions) -> StoreResult<()> {
    let migrating = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options.clone().foreign_keys(false))
        .await
        .with_context(|| format!("opening the database {}", path.display()))?;
    let applied = || async {
        // No table yet: a new database, nothing applied.
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM _sqlx_migrations")
            .fetch_one(&migrating)
            .await
            .unwrap_or(0)
    };
    let before = applied().await;
    sqlx::migrate!("./migrations/sqlite")
        .run(&migrating)
        .await
        .with_context(|| format!("applying migrations to {}", path.display()))?;
    // The check reads every row: only after a migration, which may have
    // rebuilt a table, not at every start (4 s for a million jobs).
    let broken: Vec<SqliteRow> = if applied().await == before {
        Vec::new()
    } else {
        sqlx::query("PRAGMA foreign_key_check")
            .fetch_all(&migrating)
            .await
            .context("checking foreign keys after migrating")?
    };
    migrating.close().await;
    if !broken.is_empty() {
        anyhow::bail!(
            "after migrating {}, {} rows refer to rows that do not exist",
            path.display(),
            broken.len()
        );
    }
    Ok(())
}

/// Takes the database's lock file, or says which database is in use.
fn lock_database(path: &Path) -> StoreResult<std::fs::File> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening the lock file {}", lock_path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "the database {} is in use by another publishd (its lock file {} is held)",
            path.display(),
            Path::new(&lock_path).display()
        ),
        Err(std::fs::TryLockError::Error(error)) => {
            Err(error).with_context(|| format!("locking {}", Path::new(&lock_path).display()))
        }
    }
}

/// Brings a job's status in line with its targets' and answers it.
async fn refresh_job(conn: &mut SqliteConnection, id: Uuid) -> StoreResult<JobStatus> {
    let rows = sqlx::query("SELECT status FROM targets WHERE job_id = ?")
        .bind(id.to_string())
        .fetch_all(&mut *conn)
        .await?;
    let statuses = rows
        .iter()
        .map(|row| parse_enum(row.get("status"), TargetStatus::parse, "target status"))
        .collect::<StoreResult<Vec<_>>>()?;
    let cancel_requested: bool =
        sqlx::query_scalar("SELECT cancel_requested FROM jobs WHERE id = ?")
            .bind(id.to_string())
            .fetch_one(&mut *conn)
            .await?;
    let (status, error) = job_state(&statuses, cancel_requested);
    let now = now();
    sqlx::query(
        "UPDATE jobs SET status = ?1, error = ?2,
             started_at = CASE WHEN ?1 <> 'queued' THEN COALESCE(started_at, ?3) ELSE started_at END,
             finished_at = CASE WHEN ?4 THEN COALESCE(finished_at, ?3) ELSE NULL END
         WHERE id = ?5",
    )
    .bind(status.as_str())
    .bind(error)
    .bind(&now)
    .bind(status.is_terminal())
    .bind(id.to_string())
    .execute(&mut *conn)
    .await
    .context("updating the job status")?;
    Ok(status)
}

async fn load_claimed(conn: &mut SqliteConnection, id: i64) -> StoreResult<ClaimedTarget> {
    let row = sqlx::query(&format!("{CLAIMED} ?"))
        .bind(id)
        .fetch_one(&mut *conn)
        .await
        .context("loading a claimed target")?;
    ClaimedRow::from_row(&row)?.into_claimed()
}

/// The jobs of one page of `list_jobs`, newest first.
const PAGE: &str = "SELECT * FROM jobs
     WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR id < ?2)
       AND (?4 IS NULL OR submitted_by = ?4)
       AND (?5 IS NULL OR repo LIKE ?5 ESCAPE '\\'
            OR EXISTS (SELECT 1 FROM targets s
                       WHERE s.job_id = jobs.id AND s.reference LIKE ?5 ESCAPE '\\'))
     ORDER BY id DESC LIMIT ?3";

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
    conn: &mut sqlx::SqliteConnection,
    table: &str,
    order: &str,
    filter: &PageFilter<'_>,
) -> StoreResult<Vec<R>>
where
    R: for<'r> FromRow<'r, SqliteRow> + Send + Unpin,
{
    let rows = sqlx::query_as(&format!(
        "SELECT * FROM {table} WHERE job_id IN (SELECT id FROM ({PAGE}))
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

async fn load_job(conn: &mut sqlx::SqliteConnection, id: Uuid) -> StoreResult<Option<Job>> {
    let Some(job) = sqlx::query_as::<_, JobRow>("SELECT * FROM jobs WHERE id = ?")
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await
        .context("loading a job")?
    else {
        return Ok(None);
    };
    let targets = sqlx::query_as("SELECT * FROM targets WHERE job_id = ? ORDER BY position")
        .bind(id.to_string())
        .fetch_all(&mut *conn)
        .await
        .context("loading a job's targets")?;
    let images = sqlx::query_as("SELECT * FROM job_images WHERE job_id = ? ORDER BY position")
        .bind(id.to_string())
        .fetch_all(&mut *conn)
        .await
        .context("loading a job's images")?;
    let deliveries =
        sqlx::query_as("SELECT * FROM deliveries WHERE job_id = ? ORDER BY created_at")
            .bind(id.to_string())
            .fetch_all(&mut *conn)
            .await
            .context("loading a job's deliveries")?;
    job_of(job, images, targets, deliveries).map(Some)
}

/// The SQLite store's own: migrations from old schemas and the lock file.
/// What both stores do is tested in `store/tests.rs`.
/// The SQL both stores share (`store/shared.rs`).
impl SqliteStore {
    pub async fn job_events(
        &self,
        job_id: Uuid,
        after: i64,
        limit: u32,
    ) -> StoreResult<Vec<Event>> {
        shared::job_events(&self.reader, job_id, after, limit).await
    }

    pub async fn last_event_of(&self, job_id: Uuid) -> StoreResult<Option<i64>> {
        shared::last_event_of(&self.reader, job_id).await
    }

    pub async fn queue_counts(&self) -> StoreResult<QueueCounts> {
        shared::queue_counts(&self.reader).await
    }

    pub async fn seed(&self, source_image_id: &str, registry: &str) -> StoreResult<Option<Seed>> {
        shared::seed(&self.reader, source_image_id, registry).await
    }

    pub async fn record_seed(
        &self,
        source_image_id: &str,
        registry: &str,
        seed: &Seed,
    ) -> StoreResult<()> {
        shared::record_seed(&self.writer, source_image_id, registry, seed).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::spec::{JobSpec, Limits, plan};
    use crate::store::{Store, Submitter};

    const LEASE: Duration = Duration::from_secs(30);

    /// A database written before jobs had owners keeps its jobs, their
    /// idempotency keys and their targets through the migration that
    /// rebuilds the jobs table.
    #[tokio::test]
    async fn a_database_from_before_owners_is_migrated_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("publishd.db");
        // The migrations as they stood before owners, from the repository.
        let old_migrations = dir.path().join("old-migrations");
        std::fs::create_dir(&old_migrations).unwrap();
        let mut files: Vec<_> =
            std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"))
                .unwrap()
                .map(|entry| entry.unwrap().path())
                .collect();
        files.sort();
        let before_owners = files
            .iter()
            .take_while(|file| !file.to_string_lossy().contains("owners_and_audit"));
        for file in before_owners {
            std::fs::copy(file, old_migrations.join(file.file_name().unwrap())).unwrap();
        }
        let options = SqliteConnectOptions::from_str("sqlite://")
            .unwrap()
            .filename(&path)
            .create_if_missing(true)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .connect_with(options)
            .await
            .unwrap();
        sqlx::migrate::Migrator::new(old_migrations.as_path())
            .await
            .unwrap()
            .run(&pool)
            .await
            .unwrap();
        let id = Uuid::now_v7().to_string();
        sqlx::query(
            "INSERT INTO jobs (id, status, repo, repo_mode, idempotency_key, spec_hash, created_at)
             VALUES (?, 'queued', '127.0.0.1:5000/a', 'multirepo', 'key-1', 'h', '2026-01-01T00:00:00.000000Z')",
        )
        .bind(&id)
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO job_images (job_id, position, name, source) VALUES (?, 0, 'app', 'src:1')",
        )
        .bind(&id)
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO targets (job_id, position, image_name, source, strategy, tag, reference,
                                  reference_key, status)
             VALUES (?, 0, 'app', 'src:1', 'custom', 'v1', '127.0.0.1:5000/a/app:v1',
                     '127.0.0.1:5000/a/app:v1', 'pending')",
        )
        .bind(&id)
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;

        let store = Store::open_sqlite(&path).await.unwrap();
        let job = store
            .get_job(Uuid::parse_str(&id).unwrap())
            .await
            .unwrap()
            .expect("the job survived");
        assert_eq!(job.submitted_by, None);
        assert_eq!(job.targets.len(), 1);
        assert_eq!(job.images[0].source, "src:1");
        // Its key is still its submitter's (nobody's), and only theirs.
        let spec: JobSpec = serde_json::from_value(serde_json::json!({
            "repo": "127.0.0.1:5000/a", "images": [{"name": "app", "source": "src:1"}],
            "tags": [{"strategy": "custom", "value": "v1"}]
        }))
        .unwrap();
        let plan = plan(&spec, Limits::default()).unwrap();
        let new = |submitter| NewJob {
            id: Uuid::now_v7(),
            plan: plan.clone(),
            max_pending: 100,
            has_registry_auth: false,
            idempotency_key: Some("key-1".to_owned()),
            spec_hash: "h".to_owned(),
            submitter,
            engine: None,
        };
        assert!(matches!(
            store.create_job(new(Submitter::anonymous())).await.unwrap(),
            Created::Existing(existing) if existing.id == job.id
        ));
        let team = Submitter {
            name: Some("team-a".to_owned()),
            ..Submitter::anonymous()
        };
        assert!(matches!(
            store.create_job(new(team)).await.unwrap(),
            Created::New(_)
        ));
        assert_eq!(
            store.claim_target(LEASE).await.unwrap().unwrap().job_id,
            job.id
        );
    }

    #[tokio::test]
    async fn one_process_per_database() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("publishd.db"))
            .await
            .unwrap();
        let error = Store::open_sqlite(&dir.path().join("publishd.db"))
            .await
            .err()
            .expect("refused");
        assert!(
            error.to_string().contains("in use by another publishd"),
            "{error}"
        );
        drop(store);
        Store::open_sqlite(&dir.path().join("publishd.db"))
            .await
            .expect("free again");
    }
}
