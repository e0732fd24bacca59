//! What the store hands out: jobs and targets as recorded. These are also the
//! API's answer bodies, so their field names are the HTTP contract.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::naming::RepoMode;
use crate::domain::platform::Platform;
use crate::domain::publish_via::{PublishVia, PublishedVia};
use crate::domain::spec::TagStrategy;
use crate::domain::status::{JobStatus, TargetStatus};

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Job {
    pub id: Uuid,
    pub status: JobStatus,
    pub repo: String,
    pub repo_mode: RepoMode,
    /// RFC 3339, UTC.
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub started_at: Option<String>,
    #[schema(format = DateTime)]
    pub finished_at: Option<String>,
    /// Why the job did not succeed, in short; each target says more.
    pub error: Option<String>,
    pub cancel_requested: bool,
    /// The name of the token that submitted the job; null when the service
    /// has no tokens.
    pub submitted_by: Option<String>,
    /// Called with the job's JSON when the job ends. Answered to its
    /// submitter and admins only; null for other callers.
    pub callback_url: Option<String>,
    /// The job's `publish_via`; null: the service's `--publish-via`.
    pub publish_via: Option<PublishVia>,
    /// The job's images, each with the one image id its targets publish.
    pub images: Vec<JobImage>,
    pub targets: Vec<Target>,
    /// Webhook deliveries of the finished job to `callback_url`.
    pub deliveries: Vec<crate::store::Delivery>,
    /// The engine the job's local sources are on: only instances that drive
    /// it publish them. Null when every source is a `docker://` one.
    pub engine: Option<String>,
    /// The platforms published of each source that is an image index;
    /// null: every platform.
    pub platforms: Option<Vec<String>>,
}

/// One image of a job.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobImage {
    /// The werf image name; null for the nameless image.
    pub name: Option<String>,
    pub source: String,
    /// The image id `source` named when the job was accepted (or, if the
    /// engine could not say then, when its first target ran): every target
    /// of this image publishes this id. For a `docker://` source, its
    /// config digest, or for an image index the index's digest (what its
    /// `werf-content-signature` and `content` tag name). Null until known.
    pub source_image_id: Option<String>,
    /// For a `docker://` source, the manifest (or index) digest it named
    /// when it was first read: every target publishes that. Null for a
    /// local source, and until known.
    pub source_digest: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Target {
    /// The werf image name; null for the nameless image.
    pub image: Option<String>,
    pub source: String,
    pub strategy: TagStrategy,
    /// The Docker tag (without a monorepo prefix); null until a `content` tag is known.
    pub tag: Option<String>,
    /// The full target reference; null until a `content` tag is known.
    pub reference: Option<String>,
    pub status: TargetStatus,
    /// The manifest digest the registry accepted (for an image index, the
    /// new index's).
    pub digest: Option<String>,
    /// The published image's id, werf's `DockerImageID`: its config digest
    /// (what the engine names it by; on a containerd image store, what that
    /// store names it by), or for an image index the index's digest. Null
    /// until it succeeds.
    pub image_id: Option<String>,
    /// Tries of the target's steps so far, retries and reruns after a restart included.
    pub attempts: i64,
    pub error: Option<String>,
    /// Every failed try, oldest first.
    pub attempt_errors: Vec<AttemptError>,
    /// The registry already held this image (same `werf-content-signature`),
    /// so it was not pushed again; `digest` is the registry's.
    pub up_to_date: bool,
    /// Which way the target was published: `engine` (tagged, pushed and
    /// untagged on the engine) or `registry` (config and manifest written
    /// registry-side next to layers the engine pushed before). Null until
    /// it succeeds, and when it was up to date.
    pub published_via: Option<PublishedVia>,
    /// Problems that did not fail the target, such as a failed clean-up.
    pub warnings: Vec<String>,
    /// Runs of the target started so far that were not cut short by the
    /// service stopping (a run is one claim by a worker).
    pub runs: i64,
    /// The target failed because `runs` reached `--max-target-runs` without
    /// a run finishing (each crashed its worker or the process).
    pub dead_letter: bool,
    /// After a restart lost the job's own registry credentials: the target
    /// waits until then for the job to be resubmitted with them, then fails.
    #[schema(format = DateTime)]
    pub credentials_wait_until: Option<String>,
    #[schema(format = DateTime)]
    pub started_at: Option<String>,
    #[schema(format = DateTime)]
    pub finished_at: Option<String>,
}

/// One failed try of a step.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AttemptError {
    pub attempt: i64,
    /// `tag`, `push`, `verify` or `untag`.
    pub step: String,
    pub error: String,
    #[schema(format = DateTime)]
    pub at: String,
}

/// A target a worker lane has claimed, with what it needs to run it.
#[derive(Debug, Clone)]
pub struct ClaimedTarget {
    pub id: i64,
    /// Its position in the job (what events name it by).
    pub position: i64,
    /// The hold this run has on the target; every write it makes names it.
    pub claim: crate::store::Claim,
    pub job_id: Uuid,
    pub repo: String,
    pub repo_mode: RepoMode,
    pub image_name: Option<String>,
    pub source: String,
    pub strategy: TagStrategy,
    pub tag: Option<String>,
    pub reference: Option<String>,
    pub status: TargetStatus,
    pub attempts: i64,
    pub force: bool,
    pub has_registry_auth: bool,
    pub prior_image_id: Option<String>,
    pub created_image_id: Option<String>,
    pub staging_reference: Option<String>,
    /// What the last run that made an image recorded (see `claim_target`).
    pub previous_prior_image_id: Option<String>,
    pub previous_created_image_id: Option<String>,
    pub image_position: i64,
    /// What the job's image resolved to, once known.
    pub source_image_id: Option<String>,
    /// A registry source's manifest digest, once known.
    pub source_digest: Option<String>,
    pub credentials_wait_until: Option<String>,
    /// The service's docker config may be used for the repo's registry.
    pub use_service_credentials: bool,
    /// Labels each source must carry (the submitter's scope).
    pub required_labels: std::collections::BTreeMap<String, String>,
    /// The repositories (`registry/path` patterns) the submitter may read:
    /// where layers may be mounted from (the submitter's scope).
    pub read_repos: Vec<String>,
    /// The job's own choice of way; `None` takes the service's.
    pub publish_via: Option<PublishVia>,
    /// The platforms to publish of an index; empty: every one.
    pub platforms: Vec<Platform>,
}

/// How a target's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetOutcome {
    Succeeded {
        digest: String,
        /// The published image's id (`Target::image_id`), where known.
        image_id: Option<String>,
        up_to_date: bool,
        /// Which way it was published; `None` when it was up to date.
        published_via: Option<PublishedVia>,
    },
    Failed {
        error: String,
    },
    Cancelled,
}

/// Which jobs a list shows: every filter given holds for each. Each
/// combination is read through an index (`store/sql/jobs.rs`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    /// Only jobs with at least one failed target (finished or not).
    pub has_failed_target: bool,
    /// The submitter's token name ('' when the service has no tokens).
    pub submitted_by: Option<String>,
    /// Only jobs whose repository starts with this, byte for byte.
    pub repo_prefix: Option<String>,
    /// Only jobs whose repository or one of whose references contains
    /// this, ignoring ASCII case; a page looks through at most
    /// `SEARCH_WINDOW` jobs.
    pub search: Option<String>,
}

/// The most jobs one page of a search looks through, newest first, of those
/// the other filters select: a substring is found by no index, so a search
/// costs the same at a million jobs as at ten thousand. A page that looked
/// through as many and found fewer than it asked for still has a
/// `next_cursor`, from where it stopped.
pub const SEARCH_WINDOW: u32 = 10_000;

/// A page of jobs, newest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    /// Pass as `cursor` for the next page; null on the last page. A search
    /// (`q`) may answer fewer jobs than `limit` with a cursor still to follow.
    pub next_cursor: Option<String>,
}

/// Jobs by status, and the targets waiting and under way: for the metrics.
#[derive(Debug, Clone, Default)]
pub struct QueueCounts {
    pub jobs: std::collections::HashMap<JobStatus, i64>,
    pub targets_queued: i64,
    pub targets_in_flight: i64,
}

/// What one retention batch deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Deleted {
    pub jobs: u64,
    pub audit: u64,
    /// Seeds not recorded again since the cutoff: the layers they point at
    /// may be gone by now (a registry's garbage collection), and the next
    /// engine push of their source records a fresh one.
    pub seeds: u64,
    /// More jobs are past retention than this batch took.
    pub more: bool,
}

/// An engine that instances drive or that jobs wait for.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EngineStatus {
    /// The engine's name (an instance's `--engine-name`); null for the
    /// instances without an engine, which publish registry sources only.
    pub name: Option<String>,
    /// The instances that drive it, most recent heartbeat first.
    pub instances: Vec<InstanceStatus>,
    /// Targets of jobs on this engine waiting to be claimed.
    pub queued_targets: i64,
    /// Targets of jobs on this engine being tagged, pushed or untagged.
    pub in_flight_targets: i64,
}

/// One publishd instance working on the database.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InstanceStatus {
    /// New at every start of the process.
    pub id: Uuid,
    /// Where it listens.
    pub address: String,
    #[schema(format = DateTime)]
    pub started_at: String,
    /// Seconds since its last heartbeat (it beats every 5 s).
    pub heartbeat_age_seconds: f64,
    /// Its heartbeat is recent (under 15 s old): it is taken to be running.
    pub live: bool,
}
