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
mod events;
pub mod model;
mod postgres;
mod queue;
mod rows;
mod shared;
mod sqlite;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use uuid::Uuid;

pub use audit::{AuditEntry, AuditEvent, AuditPage};
pub use events::{Delivery, DeliveryAttempt, DeliveryOutcome, DueDelivery, Event};
pub use model::{
    AttemptError, ClaimedTarget, Deleted, EngineStatus, InstanceStatus, Job, JobImage, JobPage,
    QueueCounts, Target, TargetOutcome,
};
pub use queue::{Bound, Claim, ClaimLost, Release, Released, TakeOver};

use crate::domain::publish_via::Seed;
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

#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

/// Calls the same method on whichever store this is.
macro_rules! dispatch {
    ($self:ident, $store:ident => $call:expr) => {
        match &$self.backend {
            Backend::Sqlite($store) => $call,
            Backend::Postgres($store) => $call,
        }
    };
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

impl Store {
    /// Opens (creating if needed) the database, applies its migrations and
    /// registers `instance` (its first heartbeat).
    pub async fn open(location: &Location, instance: Instance) -> StoreResult<Store> {
        let backend = match location {
            Location::Sqlite(path) => {
                Backend::Sqlite(sqlite::SqliteStore::open(path, instance).await?)
            }
            Location::Postgres(url) => {
                Backend::Postgres(postgres::PgStore::open(url, instance).await?)
            }
        };
        let store = Store { backend };
        store.heartbeat().await?;
        Ok(store)
    }

    /// Opens the SQLite database at `path` for an instance without an engine.
    pub async fn open_sqlite(path: &Path) -> StoreResult<Store> {
        Store::open(&Location::Sqlite(path.to_owned()), Instance::unbound()).await
    }

    /// Whether other instances may share the database: then cancels and
    /// lease expiries come from them too, and only the database says so.
    pub fn is_shared(&self) -> bool {
        match &self.backend {
            Backend::Sqlite(_) => false,
            Backend::Postgres(_) => true,
        }
    }

    /// `sqlite` or `postgres`.
    pub fn kind(&self) -> &'static str {
        match &self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Records that this instance is alive (every [`HEARTBEAT`]).
    pub async fn heartbeat(&self) -> StoreResult<()> {
        dispatch!(self, store => store.heartbeat().await)
    }

    /// Takes this instance's record away: it stopped.
    pub async fn leave(&self) -> StoreResult<()> {
        dispatch!(self, store => store.leave().await)
    }

    /// The engine of the submitter's job with idempotency key `key`, if
    /// there is such a job (`Some(None)`: it has no engine).
    pub async fn engine_of_key(
        &self,
        submitter: &str,
        key: &str,
    ) -> StoreResult<Option<Option<String>>> {
        dispatch!(self, store => store.engine_of_key(submitter, key).await)
    }

    /// The names of the engines that running instances (a recent
    /// heartbeat) drive: what a job may name. Read at every submission, so
    /// it reads the instances alone, not the queue.
    pub async fn live_engines(&self) -> StoreResult<Vec<String>> {
        dispatch!(self, store => store.live_engines().await)
    }

    /// The engines instances drive or jobs wait for, with their instances
    /// and targets.
    pub async fn engines(&self) -> StoreResult<Vec<EngineStatus>> {
        dispatch!(self, store => store.engines().await)
    }

    /// Checks that the database reads and takes writes: a locked database, a
    /// read-only file system or a full disk shows here, not at the next POST.
    pub async fn ping(&self) -> StoreResult<()> {
        dispatch!(self, store => store.ping().await)
    }

    /// Records a job and its targets, honouring the idempotency key and the
    /// queue limits; answers once it is committed.
    pub async fn create_job(&self, new: NewJob) -> StoreResult<Created> {
        dispatch!(self, store => store.create_job(new).await)
    }

    /// `create_job`, with the submission's audit record in the same
    /// transaction: `audit` makes it from what was done.
    pub async fn create_audited_job(
        &self,
        new: NewJob,
        audit: impl FnOnce(&Created) -> AuditEntry + Send + 'static,
    ) -> StoreResult<(Created, AuditEntry)> {
        dispatch!(self, store => store.create_audited_job(new, audit).await)
    }

    pub async fn get_job(&self, id: Uuid) -> StoreResult<Option<Job>> {
        dispatch!(self, store => store.get_job(id).await)
    }

    /// Jobs newest first; `before` is the last id of the previous page. Ids are
    /// uuid v7, so their order is creation order and the cursor is stable
    /// while new jobs arrive.
    pub async fn list_jobs(
        &self,
        status: Option<JobStatus>,
        submitted_by: Option<&str>,
        limit: u32,
        before: Option<Uuid>,
    ) -> StoreResult<JobPage> {
        self.search_jobs(status, submitted_by, None, limit, before)
            .await
    }

    /// `list_jobs` of the jobs whose repository or one of whose references
    /// contains `search`.
    pub async fn search_jobs(
        &self,
        status: Option<JobStatus>,
        submitted_by: Option<&str>,
        search: Option<&str>,
        limit: u32,
        before: Option<Uuid>,
    ) -> StoreResult<JobPage> {
        let key = PageKey {
            status,
            submitted_by: submitted_by.map(str::to_owned),
            search: search.map(str::to_owned),
            limit,
            before,
        };
        dispatch!(self, store => store.search_jobs(key).await)
    }

    /// Cancels what has not started and flags the job, so the targets under
    /// way stop after their current step.
    pub async fn cancel_job(&self, id: Uuid) -> StoreResult<Cancelled> {
        dispatch!(self, store => store.cancel_job(id).await)
    }

    /// Claims the oldest pending target (by the submitters' fair share)
    /// whose reference no other target is working on: two lanes can never
    /// hold one reference.
    pub async fn claim_target(&self, lease: Duration) -> StoreResult<Option<ClaimedTarget>> {
        dispatch!(self, store => store.claim_target(lease).await)
    }

    /// Extends a claim's lease; answers false if the claim is no longer
    /// the target's.
    pub async fn renew_lease(&self, claim: &Claim, lease: Duration) -> StoreResult<bool> {
        dispatch!(self, store => store.renew_lease(claim, lease).await)
    }

    /// Gives a claimed `content` target its tag and reference, unless
    /// another target is working on that reference right now.
    pub async fn bind_reference(
        &self,
        claim: &Claim,
        tag: &str,
        reference: &str,
    ) -> StoreResult<Bound> {
        dispatch!(self, store => store.bind_reference(claim, tag, reference).await)
    }

    /// Records, before the tag step touches the engine, what the reference
    /// named and the image about to be made: what recovery needs to undo
    /// the step whenever the process dies.
    pub async fn record_tag_plan(
        &self,
        claim: &Claim,
        prior_image_id: Option<&str>,
        created_image_id: Option<&str>,
        staging_reference: Option<&str>,
    ) -> StoreResult<()> {
        dispatch!(self, store => store
            .record_tag_plan(claim, prior_image_id, created_image_id, staging_reference)
            .await)
    }

    /// Records the image a build made, before its target reference is
    /// pointed at it.
    pub async fn record_created_image(
        &self,
        claim: &Claim,
        created_image_id: &str,
    ) -> StoreResult<()> {
        dispatch!(self, store => store.record_created_image(claim, created_image_id).await)
    }

    pub async fn set_step(&self, claim: &Claim, status: TargetStatus) -> StoreResult<()> {
        dispatch!(self, store => store.set_step(claim, status).await)
    }

    /// Records a failed try of `step`; when another try follows, counts it.
    pub async fn record_failed_attempt(
        &self,
        claim: &Claim,
        step: &str,
        error: &str,
        retrying: bool,
    ) -> StoreResult<()> {
        dispatch!(self, store => store.record_failed_attempt(claim, step, error, retrying).await)
    }

    /// Records how a target ended and brings its job's status up to date;
    /// answers the job's new status.
    pub async fn finish_target(
        &self,
        claim: &Claim,
        outcome: &TargetOutcome,
        warnings: &[String],
    ) -> StoreResult<JobStatus> {
        dispatch!(self, store => store.finish_target(claim, outcome, warnings).await)
    }

    /// Puts a claimed target back in the queue, cancels it if its job was
    /// cancelled, or fails it as a dead letter after too many runs that
    /// never finished.
    pub async fn release_target(&self, claim: &Claim, release: Release) -> StoreResult<Released> {
        dispatch!(self, store => store.release_target(claim, release).await)
    }

    /// Puts back a target whose job brought credentials that a restart lost.
    pub async fn wait_for_credentials(
        &self,
        claim: &Claim,
        wait_until: &str,
        retry_at: &str,
    ) -> StoreResult<()> {
        dispatch!(self, store => store.wait_for_credentials(claim, wait_until, retry_at).await)
    }

    /// The job was resubmitted with its credentials: its waiting targets may
    /// be claimed at once.
    pub async fn credentials_arrived(&self, job_id: Uuid) -> StoreResult<()> {
        dispatch!(self, store => store.credentials_arrived(job_id).await)
    }

    /// Takes a target in flight over from the run that held it, if
    /// `condition` holds, with a fresh claim for recovery to use.
    pub async fn take_over(
        &self,
        target_id: i64,
        condition: TakeOver<'_>,
        lease: Duration,
    ) -> StoreResult<Option<Claim>> {
        dispatch!(self, store => store.take_over(target_id, condition, lease).await)
    }

    /// Targets that, at start-up, are known to belong to a process that
    /// died: on SQLite every target in flight (one publishd per file); on a
    /// shared database none (other instances may be running them: their
    /// leases say when they are not). On a shared database
    /// none: another instance may be running them; their leases tell.
    pub async fn in_flight_targets(&self) -> StoreResult<Vec<i64>> {
        dispatch!(self, store => store.in_flight_targets().await)
    }

    /// Claims whose lease ran out: (target id, claim token); on a shared
    /// database only those of jobs on this instance's engine (or on none),
    /// since only that engine holds what their runs did. On a shared
    /// database, on its clock, and only of jobs on this instance's engine
    /// (or on none).
    pub async fn expired_leases(&self) -> StoreResult<Vec<(i64, String)>> {
        dispatch!(self, store => store.expired_leases().await)
    }

    pub async fn cancel_requested(&self, job_id: Uuid) -> StoreResult<bool> {
        dispatch!(self, store => store.cancel_requested(job_id).await)
    }

    /// A target as a lane sees it, with what its last run recorded.
    pub async fn claimed_target(&self, id: i64) -> StoreResult<ClaimedTarget> {
        dispatch!(self, store => store.claimed_target(id).await)
    }

    /// Records what an image of a job resolved to, unless another target of
    /// the image resolved it first; answers what every target of the image
    /// publishes.
    pub async fn resolve_source(
        &self,
        job_id: Uuid,
        image_position: i64,
        resolved: &ResolvedSource,
    ) -> StoreResult<ResolvedSource> {
        dispatch!(self, store => store.resolve_source(job_id, image_position, resolved).await)
    }

    /// Records an audit event.
    pub async fn record_audit(&self, entry: AuditEntry) -> StoreResult<()> {
        dispatch!(self, store => store.record_audit(entry).await)
    }

    /// Audit events newest first; `before` is the last id of the previous page.
    pub async fn list_audit(&self, limit: u32, before: Option<Uuid>) -> StoreResult<AuditPage> {
        dispatch!(self, store => store.list_audit(limit, before).await)
    }

    /// Counts for the metrics.
    pub async fn queue_counts(&self) -> StoreResult<QueueCounts> {
        dispatch!(self, store => store.queue_counts().await)
    }

    /// The job's events after `after` (an event id; 0 for all), oldest first.
    pub async fn job_events(
        &self,
        job_id: Uuid,
        after: i64,
        limit: u32,
    ) -> StoreResult<Vec<Event>> {
        dispatch!(self, store => store.job_events(job_id, after, limit).await)
    }

    /// The id of the job's last event, if it has any.
    pub async fn last_event_of(&self, job_id: Uuid) -> StoreResult<Option<i64>> {
        dispatch!(self, store => store.last_event_of(job_id).await)
    }

    /// Deliveries whose next attempt is due, oldest first. On a shared
    /// database they are taken for this instance: no other is handed them
    /// until the attempt is recorded (or a minute has passed).
    pub async fn due_deliveries(&self, limit: u32) -> StoreResult<Vec<DueDelivery>> {
        dispatch!(self, store => store.due_deliveries(limit).await)
    }

    /// Keeps the body of a delivery's first attempt, so every retry sends
    /// (and signs) the very same bytes; answers the body kept (another
    /// instance's, if it was first).
    pub async fn set_delivery_body(&self, id: &str, body: &str) -> StoreResult<String> {
        dispatch!(self, store => store.set_delivery_body(id, body).await)
    }

    /// Records an attempt of a delivery still pending (a late attempt of a
    /// delivery another instance finished changes nothing).
    pub async fn record_delivery_attempt(
        &self,
        id: &str,
        attempt: &DeliveryAttempt,
        outcome: &DeliveryOutcome,
    ) -> StoreResult<()> {
        dispatch!(self, store => store.record_delivery_attempt(id, attempt, outcome).await)
    }

    /// Deletes up to `batch` finished jobs past `cutoff` with everything of
    /// theirs, and audit records and seeds older than it (`retention.rs`).
    pub async fn delete_finished_before(
        &self,
        cutoff: &str,
        pending_cutoff: &str,
        batch: u32,
    ) -> StoreResult<Deleted> {
        dispatch!(self, store => store.delete_finished_before(cutoff, pending_cutoff, batch).await)
    }

    /// The seed of `source_image_id` in `registry`, if the engine pushed it there.
    pub async fn seed(&self, source_image_id: &str, registry: &str) -> StoreResult<Option<Seed>> {
        dispatch!(self, store => store.seed(source_image_id, registry).await)
    }

    /// Records (or replaces) the seed of `source_image_id` in `registry`.
    pub async fn record_seed(
        &self,
        source_image_id: &str,
        registry: &str,
        seed: &Seed,
    ) -> StoreResult<()> {
        dispatch!(self, store => store.record_seed(source_image_id, registry, seed).await)
    }
}

/// What a page of `search_jobs` was asked with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PageKey {
    pub status: Option<JobStatus>,
    pub submitted_by: Option<String>,
    pub search: Option<String>,
    pub limit: u32,
    pub before: Option<Uuid>,
}

impl PageKey {
    /// A LIKE pattern (escaped with `\`) that matches the searched text
    /// itself, wherever it is.
    fn pattern(&self) -> Option<String> {
        self.search.as_deref().map(|text| {
            let escaped = text
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            format!("%{escaped}%")
        })
    }
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
    }
}

/// A job's status as its targets' statuses make it, and why it did not
/// succeed, in short.
fn job_state(statuses: &[TargetStatus], cancel_requested: bool) -> (JobStatus, Option<String>) {
    let status = crate::domain::status::job_status(statuses, cancel_requested);
    let failed = statuses
        .iter()
        .filter(|&&s| s == TargetStatus::Failed)
        .count();
    let error = match status {
        JobStatus::Failed => Some(format!("{failed} of {} targets failed", statuses.len())),
        JobStatus::Cancelled => Some("cancelled".to_owned()),
        _ => None,
    };
    (status, error)
}
