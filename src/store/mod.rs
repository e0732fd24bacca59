//! The only code that speaks SQL: jobs, their targets, the queue, events,
//! webhook deliveries, the audit trail and seeds. One interface, [`Store`],
//! over two databases:
//! - SQLite (`sqlite/`), the default: one publishd owns one database file.
//! - PostgreSQL (`postgres/`): several publishd instances share one
//!   database, and it is where they coordinate (claims, leases, per-reference
//!   exclusion, cancels), since nothing is shared in memory between hosts.
//!
//! Both keep the same records with the same meaning; `rows.rs` maps the
//! columns of either to the API's types.

mod audit;
mod batch;
mod events;
pub mod model;
#[cfg(test)]
mod page_plans;
mod postgres;
mod queue;
mod read_cache;
mod rows;
#[cfg(test)]
mod schema_parity;
mod sql;
mod sqlite;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

pub use audit::{AuditEntry, AuditEvent, AuditPage};
pub use events::{
    AttemptResult, Delivery, DeliveryAttempt, DeliveryOutcome, DueDelivery, Event, UnderWay,
};
pub use model::{
    AttemptError, ClaimedTarget, Deleted, EngineStatus, InstanceStatus, Job, JobFilter, JobImage,
    JobPage, QueueCounts, SEARCH_WINDOW, Target, TargetOutcome,
};
pub use queue::{Bound, Claim, ClaimLost, Release, Released, TakeOver};

use crate::domain::publish_via::{Seed, SeedKey};
use crate::domain::source::ResolvedSource;
use crate::domain::spec::Plan;
use crate::domain::status::{JobStatus, TargetStatus};

/// The store's failures are the database's: always an internal error to callers.
pub type StoreResult<T> = anyhow::Result<T>;

/// Where the store keeps its records, as `--database` names it. Shown
/// (`Display`, `Debug`) without a URL's password.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    /// A SQLite file, created if missing.
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL (`postgres://` or `postgresql://`).
    Postgres(String),
}

impl Location {
    /// A `postgres://` or `postgresql://` URL names PostgreSQL; anything
    /// else is a SQLite file's path.
    pub fn parse(text: &str) -> Location {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            Location::Postgres(text.to_owned())
        } else {
            Location::Sqlite(PathBuf::from(text))
        }
    }

    /// As `--database` takes it.
    pub fn to_argument(&self) -> std::ffi::OsString {
        match self {
            Location::Sqlite(path) => path.clone().into_os_string(),
            Location::Postgres(url) => url.into(),
        }
    }
}

impl std::str::FromStr for Location {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Location, Self::Err> {
        Ok(Location::parse(text))
    }
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Location({self})")
    }
}

impl std::fmt::Display for Location {
    /// Never shows a URL's password: this goes into logs and errors.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "{}", path.display()),
            Location::Postgres(url) => match url::Url::parse(url) {
                Ok(mut url) => {
                    if url.password().is_some() {
                        let _ = url.set_password(Some("***"));
                    }
                    // A password may also come as a parameter.
                    let query: Vec<(String, String)> = url
                        .query_pairs()
                        .map(|(key, value)| {
                            let value = if key == "password" {
                                "***".into()
                            } else {
                                value
                            };
                            (key.into_owned(), value.into_owned())
                        })
                        .collect();
                    if !query.is_empty() {
                        url.query_pairs_mut().clear().extend_pairs(query);
                    }
                    write!(f, "{url}")
                }
                Err(_) => f.write_str("(a PostgreSQL URL that does not parse)"),
            },
        }
    }
}

/// This publishd as the store knows it: instances that share a database
/// coordinate through these records, not through memory.
#[derive(Debug, Clone)]
pub struct Instance {
    /// New at every start: a restarted process is another instance.
    pub id: Uuid,
    /// The engine it drives (`--engine-name`): it claims only targets of
    /// jobs on that engine, and of jobs with registry sources only. `None`
    /// without an engine (`--docker-host none`).
    pub engine: Option<String>,
    /// Where it listens, so that operators can tell instances apart.
    pub address: String,
}

impl Instance {
    /// An instance without an engine, for tools and tests that only read
    /// and write records.
    pub fn unbound() -> Instance {
        Instance {
            id: Uuid::now_v7(),
            engine: None,
            address: String::new(),
        }
    }
}

/// How often an instance says it is alive; one whose heartbeat is three of
/// these old counts as gone in `GET /api/v1/engines`.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// The store: a handle on one of the two databases, cheap to clone. Every
/// operation is a method of [`Records`], documented there once.
#[derive(Clone)]
pub struct Store(Arc<dyn Records>);

impl std::ops::Deref for Store {
    type Target = dyn Records;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

/// Most bytes of an error or a warning kept on a target: a registry or
/// engine that answers megabytes cannot fill the database.
const MESSAGE_LIMIT: usize = 4096;

/// `message`, cut visibly to what a target keeps.
fn bounded(message: &str) -> String {
    if message.len() <= MESSAGE_LIMIT {
        return message.to_owned();
    }
    let mut end = MESSAGE_LIMIT;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}… (truncated, {} bytes in all)",
        &message[..end],
        message.len()
    )
}

/// What `create_job` did.
pub enum Created {
    New(Job),
    /// The idempotency key was seen before with the same body.
    Existing(Job),
    /// The idempotency key was seen before with another body.
    KeyReused,
    /// Queuing the job would take the pending targets past the limit.
    Overloaded {
        pending: i64,
    },
    /// Queuing the job would take its submitter's pending targets past the
    /// submitter's own limit.
    SubmitterOverloaded {
        pending: i64,
        limit: usize,
    },
}

/// What `cancel_job` did.
pub enum Cancelled {
    NotFound,
    AlreadyFinished(Job),
    Requested(Job),
}

/// What a new job is made of: owned, since the task that writes
/// submissions (`group_commit.rs`) takes it over.
pub struct NewJob {
    /// Chosen by the caller, so that what belongs to the job in memory (its
    /// credentials) can be in place before a lane can claim it.
    pub id: Uuid,
    pub plan: Plan,
    /// Most pending targets there may be once the job is queued.
    pub max_pending: usize,
    pub has_registry_auth: bool,
    pub idempotency_key: Option<String>,
    pub spec_hash: String,
    pub submitter: Submitter,
    /// The engine its local sources are on; `None` when it has registry
    /// sources only.
    pub engine: Option<String>,
}

/// Who submits a job, and what their scope grants it.
#[derive(Debug, Clone)]
pub struct Submitter {
    /// The token's name; `None` when the service has no tokens.
    pub name: Option<String>,
    /// Share of the lanes relative to other submitters.
    pub weight: u32,
    /// Most targets the submitter may have queued at once.
    pub max_queued_targets: Option<usize>,
    pub use_service_credentials: bool,
    pub required_labels: BTreeMap<String, String>,
    /// The repositories the submitter may read, as patterns.
    pub read_repos: Vec<String>,
}

impl Submitter {
    /// Anyone, when the service has no tokens.
    pub fn anonymous() -> Submitter {
        Submitter {
            name: None,
            weight: 1,
            max_queued_targets: None,
            use_service_credentials: true,
            required_labels: BTreeMap::new(),
            read_repos: vec!["**".to_owned()],
        }
    }
}

/// The answer of [`Store::engines`], from either database's rows: the
/// instances with their engines, and per engine its queued and in-flight
/// targets. Each engine once, by name.
fn engines_of(
    instances: Vec<(Option<String>, InstanceStatus)>,
    targets: Vec<rows::EngineTargetsRow>,
) -> Vec<EngineStatus> {
    let mut engines: BTreeMap<Option<String>, EngineStatus> = BTreeMap::new();
    fn named(name: Option<String>) -> EngineStatus {
        EngineStatus {
            name,
            instances: Vec::new(),
            queued_targets: 0,
            in_flight_targets: 0,
        }
    }
    for (name, instance) in instances {
        let engine = engines.entry(name.clone()).or_insert_with(|| named(name));
        engine.instances.push(instance);
    }
    for row in targets {
        let name = Some(row.engine);
        let engine = engines.entry(name.clone()).or_insert_with(|| named(name));
        engine.queued_targets += row.queued;
        engine.in_flight_targets += row.in_flight;
    }
    let mut engines: Vec<EngineStatus> = engines.into_values().collect();
    for engine in &mut engines {
        engine
            .instances
            .sort_by(|a, b| a.heartbeat_age_seconds.total_cmp(&b.heartbeat_age_seconds));
    }
    engines
}

/// An instance whose heartbeat is older than this is taken to be gone.
const LIVE_WITHIN: Duration = Duration::from_secs(3 * HEARTBEAT.as_secs());

/// Statuses of a target a lane is working on, for SQL.
const IN_FLIGHT: &str = "('tagging', 'pushing', 'untagging')";

/// How a shared database bounds what a session may hold, so that a client
/// cut off by the network (no FIN, no RST) never holds a lock for long.
/// PostgreSQL only: SQLite is one process's file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Longest a statement may run (`statement_timeout`).
    pub statement_timeout: Duration,
    /// Longest a statement waits for a lock (`lock_timeout`).
    pub lock_timeout: Duration,
    /// Longest a transaction may sit idle waiting for its client
    /// (`idle_in_transaction_session_timeout`).
    pub idle_in_transaction: Duration,
    /// Idle time before the server probes a silent client's connection
    /// (`tcp_keepalives_idle`; probes every third of it, three times).
    pub keepalive: Duration,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            statement_timeout: Duration::from_secs(30),
            lock_timeout: Duration::from_secs(10),
            idle_in_transaction: Duration::from_secs(30),
            keepalive: Duration::from_secs(15),
        }
    }
}

impl Store {
    /// Opens (creating if needed) the database, applies its migrations and
    /// registers `instance` (its first heartbeat).
    pub async fn open(location: &Location, instance: Instance) -> StoreResult<Store> {
        Store::open_with(location, instance, SessionLimits::default()).await
    }

    /// `open`, with a shared database's sessions bounded by `limits`.
    pub async fn open_with(
        location: &Location,
        instance: Instance,
        limits: SessionLimits,
    ) -> StoreResult<Store> {
        let records: Arc<dyn Records> = match location {
            Location::Sqlite(path) => Arc::new(sqlite::open(path, instance).await?),
            Location::Postgres(url) => Arc::new(postgres::open(url, instance, limits).await?),
        };
        records.heartbeat().await?;
        Ok(Store(records))
    }

    /// Opens the SQLite database at `path` for an instance without an engine.
    pub async fn open_sqlite(path: &Path) -> StoreResult<Store> {
        Store::open(&Location::Sqlite(path.to_owned()), Instance::unbound()).await
    }
}

/// Everything the service records and reads, whichever database keeps it
/// (`sql::SqlStore` implements it once for both, with `sql::Dialect` saying
/// what differs). Writes a lane makes name its [`Claim`] and answer
/// [`ClaimLost`] when the claim is no longer the target's.
#[async_trait::async_trait]
pub trait Records: Send + Sync {
    /// Whether other instances may share the database: then cancels and
    /// lease expiries come from them too, and only the database says so.
    fn is_shared(&self) -> bool;

    /// `sqlite` or `postgres`.
    fn kind(&self) -> &'static str;

    /// Batches the store's writing task had to answer with an error because
    /// writing them panicked (the task goes on with the next).
    fn writer_restarts(&self) -> u64;

    /// Records that this instance is alive (every [`HEARTBEAT`]); nothing
    /// on SQLite, where one publishd owns the file.
    async fn heartbeat(&self) -> StoreResult<()>;

    /// Takes this instance's record away: it stopped.
    async fn leave(&self) -> StoreResult<()>;

    /// The engine of the submitter's job with idempotency key `key`, if
    /// there is such a job (`Some(None)`: it has no engine).
    async fn engine_of_key(
        &self,
        submitter: &str,
        key: &str,
    ) -> StoreResult<Option<Option<String>>>;

    /// The names of the engines that running instances (a recent
    /// heartbeat) drive: what a job may name. Read at every submission, so
    /// it reads the instances alone, not the queue.
    async fn live_engines(&self) -> StoreResult<Vec<String>>;

    /// The engines instances drive or jobs wait for, with their instances
    /// and targets.
    async fn engines(&self) -> StoreResult<Vec<EngineStatus>>;

    /// Checks that the database reads and takes writes: a locked database, a
    /// read-only file system or a full disk shows here, not at the next POST.
    async fn ping(&self) -> StoreResult<()>;

    /// Records a job and its targets, honouring the idempotency key and the
    /// queue limits; answers once it is committed.
    async fn create_job(&self, new: NewJob) -> StoreResult<Created>;

    /// `create_job`, with the submission's audit record in the same
    /// transaction: `audit` makes it from what was done.
    async fn create_audited_job(
        &self,
        new: NewJob,
        audit: AuditOf,
    ) -> StoreResult<(Created, AuditEntry)>;

    async fn get_job(&self, id: Uuid) -> StoreResult<Option<Job>>;

    /// Jobs newest first, of those `filter` selects; `before` is the last
    /// id of the previous page. Ids are uuid v7, so their order is creation
    /// order and the cursor is stable while new jobs arrive.
    async fn list_jobs(
        &self,
        filter: &JobFilter,
        limit: u32,
        before: Option<Uuid>,
    ) -> StoreResult<JobPage>;

    /// Cancels what has not started and flags the job, so the targets under
    /// way stop after their current step.
    async fn cancel_job(&self, id: Uuid) -> StoreResult<Cancelled>;

    /// Claims the oldest pending target (by the submitters' fair share)
    /// whose reference no other target is working on: two lanes can never
    /// hold one reference. A `content` target whose source was not resolved
    /// yet has no reference; it takes one with [`Records::bind_reference`].
    /// What the previous run recorded of the engine moves to `previous_*`, so
    /// a run that dies before recording its own plan is never undone with
    /// another run's records.
    async fn claim_target(&self, lease: Duration) -> StoreResult<Option<ClaimedTarget>>;

    /// Extends a claim's lease; answers false if the claim is no longer
    /// the target's.
    async fn renew_lease(&self, claim: &Claim, lease: Duration) -> StoreResult<bool>;

    /// Gives a claimed `content` target its tag and reference, unless
    /// another target is working on that reference right now: then the
    /// target goes back to the queue with its reference (so it waits for the
    /// other), or is cancelled if its job was.
    async fn bind_reference(&self, claim: &Claim, tag: &str, reference: &str)
    -> StoreResult<Bound>;

    /// Records, before the tag step touches the engine, what the reference
    /// named and the image about to be made: what recovery needs to undo
    /// the step whenever the process dies. `created_image_id` is known in
    /// advance for a load; a build's image is known only once built, so its
    /// temporary name is recorded instead.
    async fn record_tag_plan(
        &self,
        claim: &Claim,
        prior_image_id: Option<&str>,
        created_image_id: Option<&str>,
        staging_reference: Option<&str>,
    ) -> StoreResult<()>;

    /// Records the image a build made, before its target reference is
    /// pointed at it.
    async fn record_created_image(&self, claim: &Claim, created_image_id: &str) -> StoreResult<()>;

    async fn set_step(&self, claim: &Claim, status: TargetStatus) -> StoreResult<()>;

    /// Records a failed try of `step`; when another try follows, counts it.
    async fn record_failed_attempt(
        &self,
        claim: &Claim,
        step: &str,
        error: &str,
        retrying: bool,
    ) -> StoreResult<()>;

    /// Records how a target ended and brings its job's status up to date;
    /// answers the job's new status.
    async fn finish_target(
        &self,
        claim: &Claim,
        outcome: &TargetOutcome,
        warnings: &[String],
    ) -> StoreResult<JobStatus>;

    /// Puts a claimed target back in the queue, cancels it if its job was
    /// cancelled, or fails it as a dead letter after too many runs that
    /// never finished.
    async fn release_target(&self, claim: &Claim, release: Release) -> StoreResult<Released>;

    /// Puts back a target whose job brought credentials that a restart lost:
    /// it is not claimed again before `retry_at`, and fails once
    /// `wait_until` (kept from the first wait) has passed. Not a run, nor a
    /// try. Cancelled instead if its job was cancelled meanwhile (a pending
    /// target of a cancelled job would never be claimed again).
    async fn wait_for_credentials(
        &self,
        claim: &Claim,
        wait_until: &str,
        retry_at: &str,
    ) -> StoreResult<()>;

    /// The job was resubmitted with its credentials: its waiting targets may
    /// be claimed at once, and this instance, which holds them now, claims
    /// the job's targets from here on.
    async fn credentials_arrived(&self, job_id: Uuid) -> StoreResult<()>;

    /// Puts back a target whose source's seed another run is making: it is
    /// not claimed again before `retry_at`, or before `wake_targets` wakes
    /// it. Not a run, nor a try; cancelled instead if its job was.
    async fn wait_for_seed(&self, claim: &Claim, retry_at: &str) -> StoreResult<()>;

    /// The waiting targets `ids` may be claimed at once (the seed they
    /// waited for is there, or its maker gave up); targets not pending, or
    /// waiting for credentials, stay as they are.
    async fn wake_targets(&self, ids: &[i64]) -> StoreResult<()>;

    /// Takes a target in flight over from the run that held it, if
    /// `condition` holds, with a fresh claim for recovery to use: from then
    /// on every write of the old run changes nothing.
    async fn take_over(
        &self,
        target_id: i64,
        condition: TakeOver<'_>,
        lease: Duration,
    ) -> StoreResult<Option<Claim>>;

    /// Targets that, at start-up, are known to belong to a process that
    /// died: on SQLite every target in flight (one publishd per file); on a
    /// shared database none (other instances may be running them: their
    /// leases say when they are not).
    async fn in_flight_targets(&self) -> StoreResult<Vec<i64>>;

    /// Claims whose lease ran out: (target id, claim token). On a shared
    /// database on its clock, and only of jobs on this instance's engine
    /// (or on none), since only that engine holds what their runs did.
    async fn expired_leases(&self) -> StoreResult<Vec<(i64, String)>>;

    async fn cancel_requested(&self, job_id: Uuid) -> StoreResult<bool>;

    /// A target as a lane sees it, with what its last run recorded.
    async fn claimed_target(&self, id: i64) -> StoreResult<ClaimedTarget>;

    /// Records what an image of a job resolved to, unless another target of
    /// the image resolved it first (both columns are set together: the
    /// first resolution wins whole); answers what every target of the image
    /// publishes.
    async fn resolve_source(
        &self,
        job_id: Uuid,
        image_position: i64,
        resolved: &ResolvedSource,
    ) -> StoreResult<ResolvedSource>;

    /// Records an audit event.
    async fn record_audit(&self, entry: AuditEntry) -> StoreResult<()>;

    /// Audit events newest first; `before` is the last id of the previous page.
    async fn list_audit(&self, limit: u32, before: Option<Uuid>) -> StoreResult<AuditPage>;

    /// Counts for the metrics.
    async fn queue_counts(&self) -> StoreResult<QueueCounts>;

    /// The job's events after `after` (an event id; 0 for all), oldest first.
    async fn job_events(&self, job_id: Uuid, after: i64, limit: u32) -> StoreResult<Vec<Event>>;

    /// The id of the job's last event, if it has any.
    async fn last_event_of(&self, job_id: Uuid) -> StoreResult<Option<i64>>;

    /// Up to `limit` deliveries whose next attempt is due, none of those
    /// `under_way`, in turns: each submitter's oldest first, then each
    /// one's second, and so on, and at most `per_submitter` of a submitter
    /// with those under way counted. So one submitter's backlog (thousands
    /// of deliveries to a receiver that never answers) cannot hold another's
    /// behind it. On a shared database they are taken for this instance:
    /// no other is handed them until the attempt is recorded (or a minute
    /// has passed).
    async fn due_deliveries(
        &self,
        limit: u32,
        per_submitter: u32,
        under_way: &[UnderWay],
    ) -> StoreResult<Vec<DueDelivery>>;

    /// Keeps the body of a delivery's first attempt, so every retry sends
    /// (and signs) the very same bytes; answers the body kept (another
    /// instance's, if it was first).
    async fn set_delivery_body(&self, id: &str, body: &str) -> StoreResult<String>;

    /// Records an attempt of a delivery still pending (a late attempt of a
    /// delivery another instance finished changes nothing).
    async fn record_delivery_attempt(
        &self,
        id: &str,
        attempt: &DeliveryAttempt,
        outcome: &DeliveryOutcome,
    ) -> StoreResult<()>;

    /// Deletes up to `batch` jobs (fewer if they have many targets) that
    /// finished before `cutoff` (an RFC 3339 time) with their targets,
    /// images, events and deliveries, and up to `batch` audit records and
    /// seeds older than it, in one short transaction: the writer is never
    /// held for long, whatever the backlog. A job whose webhook is still
    /// being tried stays until that ends, unless it finished before
    /// `pending_cutoff` too: a delivery nobody sends (the service restarted
    /// without a webhook secret) must not keep its job forever. Its
    /// idempotency key, kept on the job, goes with it.
    async fn delete_finished_before(
        &self,
        cutoff: &str,
        pending_cutoff: &str,
        batch: u32,
    ) -> StoreResult<Deleted>;

    /// The seed `key` names, if the engine pushed one.
    async fn seed(&self, key: &SeedKey) -> StoreResult<Option<Seed>>;

    /// Records (or replaces: the last push that left the layers somewhere is
    /// the best place to mount them from) the seed `key` names.
    async fn record_seed(&self, key: &SeedKey, seed: &Seed) -> StoreResult<()>;
}

/// Makes a submission's audit record from what the store did with it.
pub type AuditOf = Box<dyn Fn(&Created) -> AuditEntry + Send + Sync>;

/// What a page of `list_jobs` was asked with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PageKey {
    pub filter: JobFilter,
    pub limit: u32,
    pub before: Option<Uuid>,
}

fn now() -> String {
    format_time(time::OffsetDateTime::now_utc())
}

/// RFC 3339 in UTC with a fixed six-digit fraction, so that text order is
/// time order (in SQL, for leases, and for clients).
pub(crate) fn format_time(at: time::OffsetDateTime) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    at.format(FORMAT).unwrap_or_else(|_| at.to_string())
}

/// The answer for a job just inserted, as it reads back: made here, since
/// reading it back costs four queries for every submission.
fn queued_job(new: &NewJob, created_at: String) -> Job {
    let plan = &new.plan;
    Job {
        id: new.id,
        status: JobStatus::Queued,
        repo: plan.repo.clone(),
        repo_mode: plan.repo_mode,
        created_at,
        started_at: None,
        finished_at: None,
        error: None,
        cancel_requested: false,
        submitted_by: new.submitter.name.clone().filter(|name| !name.is_empty()),
        callback_url: plan.callback.as_ref().map(|callback| callback.url.clone()),
        publish_via: plan.publish_via,
        images: plan
            .images
            .iter()
            .map(|image| JobImage {
                name: image.name.clone(),
                source: image.source.clone(),
                source_image_id: image.source_image_id.clone(),
                source_digest: image.source_digest.clone(),
            })
            .collect(),
        targets: plan
            .targets
            .iter()
            .map(|target| Target {
                image: target.image_name.clone(),
                source: target.source.clone(),
                strategy: target.strategy,
                tag: target.tag.clone(),
                reference: target.reference.clone(),
                status: TargetStatus::Pending,
                digest: None,
                image_id: None,
                attempts: 0,
                error: None,
                attempt_errors: Vec::new(),
                up_to_date: false,
                published_via: None,
                warnings: Vec::new(),
                runs: 0,
                dead_letter: false,
                credentials_wait_until: None,
                started_at: None,
                finished_at: None,
            })
            .collect(),
        deliveries: Vec::new(),
        engine: new.engine.clone(),
        platforms: (!plan.platforms.is_empty())
            .then(|| plan.platforms.iter().map(ToString::to_string).collect()),
    }
}
