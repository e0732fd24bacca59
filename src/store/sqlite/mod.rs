//! SQLite's dialect: one publishd owns one database file (a lock file says
//! so). WAL mode, with one writer connection, so write transactions never
//! race for the lock, and every write goes through the group-commit writer
//! (`group_commit.rs`); a small pool of readers (WAL lets them read while
//! the writer writes). Leases are measured on this process's monotonic
//! clock: with one process per file, no lease outlives its clock.

mod group_commit;
mod submit;
#[cfg(test)]
mod tests;

use std::any::Any;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use sqlx::Sqlite;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use uuid::Uuid;

use group_commit::{GroupCommit, QueueWrite, Write, Written};

use super::read_cache::{KeptReads, WriterCheckouts};
use super::rows::DueDeliveryRow;
use super::sql::{Dialect, SqlStore, WriteOp};
use super::{
    AuditEntry, AuditOf, Claim, ClaimedTarget, Created, DueDelivery, IN_FLIGHT, Instance,
    InstanceStatus, Job, NewJob, StoreResult, TakeOver, UnderWay, now,
};

/// What only the SQLite store keeps.
pub(super) struct SqliteLocal {
    /// Every write, in batches (group commit).
    batches: GroupCommit,
    /// Leases are measured from here, on a clock that does not jump.
    epoch: Instant,
    /// Held while the store lives: one publishd per database, so targets
    /// found mid-step at start-up belong to a dead process, not a live one.
    _owner: std::fs::File,
    started_at: String,
}

/// Opens (creating if needed) the database file and applies migrations.
pub(super) async fn open(path: &Path, instance: Instance) -> StoreResult<SqlStore<Sqlite>> {
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
    let checkouts = WriterCheckouts::default();
    let (acquired, connected) = (checkouts.clone(), checkouts.clone());
    let writer = SqlitePoolOptions::new()
        .max_connections(1)
        // A write that fails for a full disk or an I/O error can make
        // SQLite roll the transaction back itself; sqlx's ROLLBACK then
        // fails and it goes on counting the transaction as open: later
        // transactions on the connection become savepoints, and after the
        // next rollback nothing on it is committed again while every commit
        // reports success. Such a connection is replaced.
        .before_acquire(move |connection, _| {
            // Handed out, it may write: reads kept so far are old.
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
    Ok(SqlStore {
        kept: Some(KeptReads::new(writer.clone(), checkouts)),
        local: SqliteLocal {
            batches: group_commit::start(writer.clone()),
            epoch: Instant::now(),
            _owner: owner,
            started_at: now(),
        },
        reader,
        writer,
        instance: Arc::new(instance),
    })
}

impl SqliteLocal {
    /// Milliseconds on this store's monotonic clock.
    fn now_ms(&self) -> i64 {
        i64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    fn lease_end_ms(&self, lease: Duration) -> i64 {
        self.now_ms()
            .saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX))
    }
}

#[async_trait]
impl Dialect for Sqlite {
    type Local = SqliteLocal;
    const KIND: &'static str = "sqlite";
    const SHARED: bool = false;
    const ILIKE: &'static str = "LIKE";
    const SKIP_LOCKED: &'static str = "";
    const INDEXED_BY: bool = true;
    const SNAPSHOT: Option<&'static str> = None;
    const LEASE_COLUMN: &'static str = "lease_expires_ms";

    fn json_push(array: &str, element: &str) -> String {
        format!("json_insert({array}, '$[#]', {element})")
    }

    fn json_concat(array: &str, more: &str) -> String {
        format!(
            "(SELECT json_group_array(value) FROM (
                 SELECT 0 AS part, key, value FROM json_each({array})
                 UNION ALL SELECT 1, key, value FROM json_each({more})
                 ORDER BY part, key))"
        )
    }

    fn json_object(fields: &str) -> String {
        format!("json_object({fields})")
    }

    fn json_parse(text: &str) -> String {
        format!("json({text})")
    }

    fn text_list(list: &str) -> String {
        format!("(SELECT value FROM json_each({list}))")
    }

    fn greatest(a: &str, b: &str) -> String {
        format!("max({a}, {b})")
    }

    async fn write<T: Send + 'static>(
        store: &SqlStore<Sqlite>,
        write: WriteOp<Sqlite, T>,
    ) -> StoreResult<T> {
        let queued: QueueWrite = Box::new(move |conn| {
            Box::pin(async move {
                let answer = write(conn).await?;
                Ok(Box::new(answer) as Box<dyn Any + Send>)
            })
        });
        match store.local.batches.write(Write::Queue(queued)).await? {
            Written::Queue(answer) => answer
                .downcast::<T>()
                .map(|answer| *answer)
                .map_err(|_| anyhow::anyhow!("a queue write answered another type")),
            _ => unreachable!("a queue write answers a queue write"),
        }
    }

    /// Every write is committed with others: an fsync for each would bound
    /// the lanes and the submissions by the disk's sync rate.
    async fn write_single<T: Send + 'static>(
        store: &SqlStore<Sqlite>,
        write: WriteOp<Sqlite, T>,
    ) -> StoreResult<T> {
        Self::write(store, write).await
    }

    /// One writer: nothing ever races this store to a unique index.
    fn writer_restarts(store: &SqlStore<Self>) -> u64 {
        store.local.batches.panics()
    }

    fn rows_affected(result: &sqlx::sqlite::SqliteQueryResult) -> u64 {
        result.rows_affected()
    }

    fn violates(_error: &sqlx::Error, _index: &str) -> bool {
        false
    }

    /// In one read transaction: in-process statements cost next to nothing.
    async fn read_job(store: &SqlStore<Sqlite>, id: Uuid) -> StoreResult<Option<Job>> {
        let mut tx = store.reader.begin().await?;
        let job = SqlStore::<Sqlite>::load_job(&mut tx, id).await?;
        tx.commit().await?;
        Ok(job)
    }

    /// Four statements in one read transaction (a savepoint of the
    /// caller's, if it has one).
    async fn read_jobs(
        conn: &mut SqliteConnection,
        sql: &str,
        values: &[String],
    ) -> StoreResult<Vec<Job>> {
        let mut tx = sqlx::Connection::begin(conn).await?;
        let jobs = SqlStore::<Sqlite>::load_jobs(&mut tx, sql, values).await?;
        tx.commit().await?;
        Ok(jobs)
    }

    /// Nothing to record: one publishd per file, and it is this one (the
    /// file's lock says so), so nobody reads a heartbeat.
    async fn heartbeat(_store: &SqlStore<Sqlite>) -> StoreResult<()> {
        Ok(())
    }

    async fn leave(_store: &SqlStore<Sqlite>) -> StoreResult<()> {
        Ok(())
    }

    /// One publishd per file: its own engine, if it has one.
    async fn live_engines(store: &SqlStore<Sqlite>) -> StoreResult<Vec<String>> {
        Ok(store.instance.engine.iter().cloned().collect())
    }

    async fn instances(
        store: &SqlStore<Sqlite>,
    ) -> StoreResult<Vec<(Option<String>, InstanceStatus)>> {
        let this = InstanceStatus {
            id: store.instance.id,
            address: store.instance.address.clone(),
            started_at: store.local.started_at.clone(),
            heartbeat_age_seconds: 0.0,
            live: true,
        };
        Ok(vec![(store.instance.engine.clone(), this)])
    }

    /// Answers once the transaction that holds it has committed (with
    /// others: see `group_commit.rs`).
    async fn create_job(
        store: &SqlStore<Sqlite>,
        new: NewJob,
        audit: Option<AuditOf>,
    ) -> StoreResult<(Created, Option<AuditEntry>)> {
        let write = Write::Job {
            new: Box::new(new),
            audit,
            accepted_by: store.instance.id,
        };
        match store.local.batches.write(write).await? {
            Written::Job(written) => Ok(*written),
            Written::Audited | Written::Queue(_) => unreachable!("a job's write answers a job"),
        }
    }

    /// Committed with the submissions written at the same time.
    async fn record_audit(store: &SqlStore<Sqlite>, entry: AuditEntry) -> StoreResult<()> {
        store.local.batches.write(Write::Audit(entry)).await?;
        Ok(())
    }

    async fn claim_target(
        store: &SqlStore<Sqlite>,
        lease: Duration,
    ) -> StoreResult<Option<ClaimedTarget>> {
        // Idle lanes look for work twice a second each: with nothing
        // pending, a look on a reader leaves the writer connection free, and
        // the reads kept while it is idle current. A target committed after
        // this look wakes the lanes.
        let pending: i64 = sqlx::query_scalar(submit::PENDING_COUNT)
            .fetch_one(&store.reader)
            .await
            .context("reading the number of pending targets")?;
        if pending == 0 {
            return Ok(None);
        }
        let token = Uuid::now_v7().to_string();
        let lease_end = store.local.lease_end_ms(lease);
        Self::write(
            store,
            Box::new(move |conn| {
                Box::pin(async move {
                    // Taken when the claim is written, not when it was
                    // queued: a claim written after a finish in the same
                    // batch starts after it.
                    let now = now();
                    // The least-served submitter (by `pass`) with a target
                    // to claim, and its first: one probe of
                    // `targets_to_claim` per submitter.
                    let claimed: Option<i64> = sqlx::query_scalar(&format!(
                        "UPDATE targets
                         SET status = 'tagging', attempts = attempts + 1, runs = runs + 1,
                             error = NULL, started_at = COALESCE(started_at, $1),
                             claim_token = $2, lease_expires_ms = $3,
                             previous_prior_image_id = CASE WHEN created_image_id IS NOT NULL
                                 THEN prior_image_id ELSE previous_prior_image_id END,
                             previous_created_image_id =
                                 COALESCE(created_image_id, previous_created_image_id),
                             prior_image_id = NULL, created_image_id = NULL,
                             staging_reference = NULL, not_before = NULL
                         WHERE id = (
                             SELECT candidate FROM (
                                 SELECT o.pass, (
                                     SELECT t.id FROM targets t JOIN jobs j ON j.id = t.job_id
                                     WHERE t.submitted_by = o.name AND t.status = 'pending'
                                       AND NOT j.cancel_requested
                                       AND (t.not_before IS NULL OR t.not_before <= $1)
                                       AND (t.reference_key IS NULL OR NOT EXISTS (
                                            SELECT 1 FROM targets u
                                            WHERE u.reference_key = t.reference_key
                                              AND u.status IN {IN_FLIGHT}))
                                     ORDER BY t.job_id, t.position LIMIT 1) AS candidate
                                 FROM owners o)
                             WHERE candidate IS NOT NULL ORDER BY pass, candidate LIMIT 1)
                         RETURNING id"
                    ))
                    .bind(&now)
                    .bind(&token)
                    .bind(lease_end)
                    .fetch_optional(&mut *conn)
                    .await
                    .context("claiming a target")?;
                    let Some(id) = claimed else {
                        return Ok(None);
                    };
                    // The submitter's turn is taken: the next claim goes to
                    // whoever has had the least, by weight.
                    sqlx::query(
                        "UPDATE owners SET pass = pass + CAST(1 AS DOUBLE PRECISION) / weight
                         WHERE name = (SELECT submitted_by FROM targets WHERE id = $1)",
                    )
                    .bind(id)
                    .execute(&mut *conn)
                    .await
                    .context("advancing the submitter's turn")?;
                    SqlStore::<Sqlite>::load_claimed(conn, id).await.map(Some)
                })
            }),
        )
        .await
    }

    async fn renew_lease(
        store: &SqlStore<Sqlite>,
        claim: &Claim,
        lease: Duration,
    ) -> StoreResult<bool> {
        let (claim, lease_end) = (claim.clone(), store.local.lease_end_ms(lease));
        Self::write(
            store,
            Box::new(move |conn| {
                Box::pin(async move {
                    let result = sqlx::query(&format!(
                        "UPDATE targets SET lease_expires_ms = $1
                         WHERE id = $2 AND claim_token = $3 AND status IN {IN_FLIGHT}"
                    ))
                    .bind(lease_end)
                    .bind(claim.target_id)
                    .bind(&claim.token)
                    .execute(conn)
                    .await
                    .context("renewing a lease")?;
                    Ok(result.rows_affected() == 1)
                })
            }),
        )
        .await
    }

    async fn take_over(
        store: &SqlStore<Sqlite>,
        target_id: i64,
        condition: TakeOver<'_>,
        lease: Duration,
    ) -> StoreResult<Option<Claim>> {
        let token = Uuid::now_v7().to_string();
        let (held_by, expired_before) = match condition {
            TakeOver::Any => (None, None),
            TakeOver::Expired { token } => (Some(token.to_owned()), Some(store.local.now_ms())),
            TakeOver::Held { token } => (Some(token.to_owned()), None),
        };
        let lease_end = store.local.lease_end_ms(lease);
        Self::write(
            store,
            Box::new(move |conn| {
                Box::pin(async move {
                    let result = sqlx::query(&format!(
                        "UPDATE targets SET claim_token = $1, lease_expires_ms = $2
                         WHERE id = $3 AND status IN {IN_FLIGHT}
                           AND ($4 IS NULL OR claim_token = $4)
                           AND ($5 IS NULL OR lease_expires_ms IS NULL
                                OR lease_expires_ms < $5)"
                    ))
                    .bind(&token)
                    .bind(lease_end)
                    .bind(target_id)
                    .bind(held_by)
                    .bind(expired_before)
                    .execute(conn)
                    .await
                    .context("taking over a target")?;
                    Ok((result.rows_affected() == 1).then_some(Claim { target_id, token }))
                })
            }),
        )
        .await
    }

    /// Targets left mid-step: at start-up these belong to a process that died.
    async fn in_flight_targets(store: &SqlStore<Sqlite>) -> StoreResult<Vec<i64>> {
        let ids = sqlx::query_scalar(&format!(
            "SELECT id FROM targets WHERE status IN {IN_FLIGHT}"
        ))
        .fetch_all(&store.reader)
        .await
        .context("listing targets in flight")?;
        Ok(ids)
    }

    /// Read without the writer, so it answers while the writer is held.
    async fn expired_leases(store: &SqlStore<Sqlite>) -> StoreResult<Vec<(i64, String)>> {
        let expired = sqlx::query_as(&format!(
            "SELECT id, claim_token FROM targets
             WHERE status IN {IN_FLIGHT} AND claim_token IS NOT NULL
               AND (lease_expires_ms IS NULL OR lease_expires_ms < $1)"
        ))
        .bind(store.local.now_ms())
        .fetch_all(&store.reader)
        .await
        .context("listing expired leases")?;
        Ok(expired)
    }

    /// Those under way are still due here (nothing else sends them): they
    /// are left out by id.
    async fn due_deliveries(
        store: &SqlStore<Sqlite>,
        limit: u32,
        per_submitter: u32,
        under_way: &[UnderWay],
    ) -> StoreResult<Vec<DueDelivery>> {
        let rows: Vec<DueDeliveryRow> = sqlx::query_as(
            "WITH busy AS (
                 SELECT json_extract(value, '$.id') AS id,
                        json_extract(value, '$.submitter') AS submitter
                 FROM json_each($3)),
             due AS (
                 SELECT d.id, d.job_id, d.url, d.created_at, d.body,
                        json_array_length(d.attempts) AS tries, d.next_attempt_at,
                        COALESCE(j.submitted_by, '') AS submitter,
                        row_number() OVER (PARTITION BY COALESCE(j.submitted_by, '')
                                           ORDER BY d.next_attempt_at, d.id) AS turn
                 FROM deliveries d LEFT JOIN jobs j ON j.id = d.job_id
                 WHERE d.state = 'pending' AND d.next_attempt_at <= $1
                   AND d.id NOT IN (SELECT id FROM busy))
             SELECT id, job_id, submitter, url, created_at, body, tries FROM due
             WHERE turn + (SELECT count(*) FROM busy WHERE busy.submitter = due.submitter) <= $4
             ORDER BY turn, next_attempt_at, id
             LIMIT $2",
        )
        .bind(now())
        .bind(i64::from(limit))
        .bind(serde_json::to_string(under_way)?)
        .bind(i64::from(per_submitter))
        .fetch_all(&store.reader)
        .await
        .context("listing due deliveries")?;
        rows.into_iter().map(DueDeliveryRow::into_due).collect()
    }
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
