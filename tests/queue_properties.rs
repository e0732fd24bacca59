//! Issue 7: a property test over the store's queue. Random interleavings of
//! what lanes, the lease reaper, recovery, the API and restarts do to the
//! queue (claim, renew, bind, steps, failed tries, finish, release, wait for
//! credentials, cancel, reap, a lane crash, a restart, and writes for claims
//! that were lost), through the public store API only: no engine, no
//! registry, a fresh SQLite file per case.
//!
//! The model keeps every claim ever handed out, live or lost, which jobs and
//! targets exist, and what each terminal target and job looked like when it
//! ended. After every operation the store is read back whole and checked:
//!
//! 1. at most one target in flight per reference key, whatever its spelling;
//! 2. a target in flight holds exactly the claim the model says is live, and
//!    a target not in flight holds none; a write for a lost claim fails with
//!    [`ClaimLost`] (or answers false / `None`) and changes nothing at all;
//! 3. a terminal target (and a terminal job) never changes again;
//! 4. a job's status is `job_status` of its targets (terminal iff they all
//!    are), its `finished_at` is set iff it is terminal;
//! 5. a job whose cancel was requested never gets a target claimed, and keeps
//!    no pending target (which no lane would ever claim);
//! 6. attempts and runs never go negative (and runs never exceed attempts).
//!
//! Each case then drains the queue (releases what is held, runs or cancels
//! what is left) and checks every job ended, across one more restart.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Debug;
use std::path::PathBuf;
use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::{Index, subsequence};
use publishd::domain::naming::reference_key;
use publishd::domain::spec::{JobSpec, Limits, TagStrategy, plan};
use publishd::domain::status::{JobStatus, TargetStatus, job_status};
use publishd::store::{
    Bound, Cancelled, Claim, ClaimLost, ClaimedTarget, Created, Job, JobFilter, NewJob, Release,
    Released, Store, TakeOver, Target, TargetOutcome,
};
use serde_json::{Value, json};
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(3600);

/// Images repos: the first three are spellings of one Docker Hub repository.
const REPOS: &[&str] = &[
    "foo",
    "docker.io/library/foo",
    "index.docker.io/library/foo",
    "127.0.0.1:5000/shop",
];
const NAMES: &[&str] = &["api", "web", "db"];
/// What a `content` target is bound to: colliding with each other and with
/// the custom tags' references, in several spellings.
const BIND_POOL: &[&str] = &[
    "foo:v1",
    "docker.io/library/foo:v1",
    "index.docker.io/library/foo:c1",
    "foo:c1",
    "127.0.0.1:5000/shop/api:v1",
];
/// `not_before` values for a target put back to wait for credentials.
const LONG_AGO: &str = "2000-01-01T00:00:00.000000Z";
const FAR_AHEAD: &str = "2999-01-01T00:00:00.000000Z";

// ---------------------------------------------------------------------------
// Operations

#[derive(Debug, Clone)]
struct JobShape {
    repo: usize,
    monorepo: bool,
    /// Indexes into `NAMES`; empty for the nameless image.
    images: Vec<usize>,
    /// 0: custom v1, 1: custom v2, 2: content.
    tags: Vec<usize>,
}

/// Which claim an operation uses: a live one if `live` and there is one,
/// else any claim ever handed out (most are lost ones, late in a case).
#[derive(Debug, Clone, Copy)]
struct Pick {
    live: bool,
    index: Index,
}

#[derive(Debug, Clone, Copy)]
enum Step {
    Pushing,
    Untagging,
    TagPlan,
    CreatedImage,
}

#[derive(Debug, Clone, Copy)]
enum Outcome {
    Succeeded,
    Failed,
    Cancelled,
}

#[derive(Debug, Clone)]
enum Op {
    CreateJob(JobShape),
    Claim {
        long: bool,
    },
    Renew {
        pick: Pick,
        long: bool,
    },
    /// `bind_reference` for a claimed `content` target not bound yet (what a
    /// lane does); a lost claim of any target. `reference` indexes
    /// `BIND_POOL`; past its end, another spelling of a reference in flight.
    Bind {
        pick: Pick,
        reference: usize,
    },
    Step {
        pick: Pick,
        step: Step,
    },
    FailedAttempt {
        pick: Pick,
        retrying: bool,
    },
    Finish {
        pick: Pick,
        outcome: Outcome,
    },
    ReleaseStopped {
        pick: Pick,
    },
    ReleaseAbandoned {
        pick: Pick,
        max_runs: u32,
    },
    WaitForCredentials {
        pick: Pick,
        far: bool,
    },
    CredentialsArrived {
        job: Index,
    },
    Cancel {
        job: Index,
    },
    /// The reaper: every expired lease taken over and released abandoned.
    Reap {
        max_runs: u32,
    },
    /// A lane panicked: its supervisor takes its claim over (`Held`) and
    /// releases it abandoned; or (`give_up`: the engine could not be
    /// reached to undo the run) hands it back with a zero lease, for the
    /// reaper to take over later.
    LaneCrash {
        pick: Pick,
        max_runs: u32,
        give_up: bool,
    },
    /// The process dies and starts again: every target in flight is taken
    /// over (`Any`) and released abandoned.
    Restart {
        max_runs: u32,
    },
}

fn job_shape() -> impl Strategy<Value = JobShape> {
    (
        0..REPOS.len(),
        any::<bool>(),
        prop_oneof![
            Just(Vec::new()),
            subsequence((0..NAMES.len()).collect::<Vec<_>>(), 1..=3).prop_shuffle(),
        ],
        subsequence(vec![0usize, 1, 2], 1..=2).prop_shuffle(),
    )
        .prop_map(|(repo, monorepo, images, tags)| JobShape {
            repo,
            monorepo,
            images,
            tags,
        })
}

fn pick() -> impl Strategy<Value = Pick> {
    (prop::bool::weighted(0.7), any::<Index>()).prop_map(|(live, index)| Pick { live, index })
}

fn op() -> impl Strategy<Value = Op> {
    let max_runs = 2u32..=4;
    prop_oneof![
        4 => job_shape().prop_map(Op::CreateJob),
        8 => any::<bool>().prop_map(|long| Op::Claim { long }),
        2 => (pick(), any::<bool>()).prop_map(|(pick, long)| Op::Renew { pick, long }),
        5 => (pick(), 0..BIND_POOL.len() + 3).prop_map(|(pick, reference)| Op::Bind { pick, reference }),
        2 => (pick(), prop_oneof![
            Just(Step::Pushing),
            Just(Step::Untagging),
            Just(Step::TagPlan),
            Just(Step::CreatedImage),
        ])
        .prop_map(|(pick, step)| Op::Step { pick, step }),
        1 => (pick(), any::<bool>())
            .prop_map(|(pick, retrying)| Op::FailedAttempt { pick, retrying }),
        3 => (pick(), prop_oneof![
            Just(Outcome::Succeeded),
            Just(Outcome::Failed),
            Just(Outcome::Cancelled),
        ])
        .prop_map(|(pick, outcome)| Op::Finish { pick, outcome }),
        1 => pick().prop_map(|pick| Op::ReleaseStopped { pick }),
        1 => (pick(), max_runs.clone())
            .prop_map(|(pick, max_runs)| Op::ReleaseAbandoned { pick, max_runs }),
        1 => (pick(), any::<bool>()).prop_map(|(pick, far)| Op::WaitForCredentials { pick, far }),
        1 => any::<Index>().prop_map(|job| Op::CredentialsArrived { job }),
        1 => any::<Index>().prop_map(|job| Op::Cancel { job }),
        1 => max_runs.clone().prop_map(|max_runs| Op::Reap { max_runs }),
        1 => (pick(), max_runs.clone(), prop::bool::weighted(0.3))
            .prop_map(|(pick, max_runs, give_up)| Op::LaneCrash { pick, max_runs, give_up }),
        1 => max_runs.prop_map(|max_runs| Op::Restart { max_runs }),
    ]
}

/// A case: a first job (so there is work), then up to 40 operations.
fn ops() -> impl Strategy<Value = Vec<Op>> {
    (job_shape(), prop::collection::vec(op(), 0..40)).prop_map(|(first, mut ops)| {
        ops.insert(0, Op::CreateJob(first));
        ops
    })
}

// ---------------------------------------------------------------------------
// The model and the checks

struct JobModel {
    id: Uuid,
    targets: Vec<i64>,
}

struct TargetModel {
    job: Uuid,
    position: usize,
    /// Put back to wait for credentials with `not_before` far ahead: not
    /// claimable until `credentials_arrived`.
    waiting: bool,
}

#[derive(Debug)]
struct ClaimModel {
    claim: Claim,
    live: bool,
    /// Its lease was last set long (else zero: it expires at once).
    long_lease: bool,
}

/// The whole store as read back.
#[derive(Clone)]
struct Snapshot {
    jobs: HashMap<Uuid, Job>,
    /// Each job and each target as JSON, to compare them.
    job_json: HashMap<Uuid, String>,
    target_json: HashMap<i64, String>,
    /// Each target as a lane sees it, and that as text.
    claimed: BTreeMap<i64, ClaimedTarget>,
    claimed_text: HashMap<i64, String>,
    /// Everything above, to compare two snapshots.
    text: String,
}

impl Snapshot {
    fn token(&self, id: i64) -> &str {
        &self.claimed[&id].claim.token
    }
}

struct Harness {
    path: PathBuf,
    store: Option<Store>,
    jobs: Vec<JobModel>,
    targets: BTreeMap<i64, TargetModel>,
    claims: Vec<ClaimModel>,
    next_target_id: i64,
    /// Each terminal target as it ended (its record and its token).
    frozen_targets: HashMap<i64, String>,
    frozen_jobs: HashMap<Uuid, String>,
    cancel_seen: HashSet<Uuid>,
    last: Snapshot,
    /// Digests, errors and such made unique per write.
    counter: u64,
    /// Snapshots taken: which job `get_job` reads next.
    reads: usize,
}

fn lease(long: bool) -> Duration {
    if long { LONG } else { Duration::ZERO }
}

fn expected_release(cancel_requested: bool, runs: i64, release: &Release) -> Released {
    match release {
        _ if cancel_requested => Released::Cancelled,
        Release::Abandoned { max_runs, .. } if runs >= i64::from(*max_runs) => Released::DeadLetter,
        _ => Released::Queued,
    }
}

fn expect_lost<T: Debug>(what: &str, result: anyhow::Result<T>) {
    match result {
        Ok(value) => panic!("{what} with a lost claim succeeded: {value:?}"),
        Err(error) => assert!(
            ClaimLost::is(&error),
            "{what} with a lost claim failed, but not with ClaimLost: {error:#}"
        ),
    }
}

impl Harness {
    async fn new(path: PathBuf) -> Harness {
        let store = Store::open_sqlite(&path).await.expect("opening the store");
        let mut harness = Harness {
            path,
            store: Some(store),
            jobs: Vec::new(),
            targets: BTreeMap::new(),
            claims: Vec::new(),
            next_target_id: 1,
            frozen_targets: HashMap::new(),
            frozen_jobs: HashMap::new(),
            cancel_seen: HashSet::new(),
            last: Snapshot {
                jobs: HashMap::new(),
                job_json: HashMap::new(),
                target_json: HashMap::new(),
                claimed: BTreeMap::new(),
                claimed_text: HashMap::new(),
                text: String::new(),
            },
            counter: 0,
            reads: 0,
        };
        harness.refresh().await;
        harness
    }

    fn store(&self) -> &Store {
        self.store.as_ref().expect("the store is open")
    }

    fn unique(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    /// Reads the store back: every job through `list_jobs`, one (`full`:
    /// each) also through `get_job`, and the targets' claim records.
    async fn snapshot(&self, focus: Option<i64>, full: bool) -> Snapshot {
        let store = self.store();
        let page = store
            .list_jobs(&JobFilter::default(), 1000, None)
            .await
            .expect("list_jobs");
        assert!(page.next_cursor.is_none());
        assert_eq!(
            page.jobs.len(),
            self.jobs.len(),
            "list_jobs lost or grew jobs"
        );
        let mut text = String::new();
        let mut jobs = HashMap::new();
        let mut job_json = HashMap::new();
        for (index, job) in page.jobs.into_iter().enumerate() {
            let json = serde_json::to_string(&job).unwrap();
            if full || index == self.reads % self.jobs.len() {
                let single = store.get_job(job.id).await.expect("get_job").expect("job");
                assert_eq!(
                    serde_json::to_string(&single).unwrap(),
                    json,
                    "get_job and list_jobs disagree"
                );
            }
            text.push_str(&json);
            text.push('\n');
            job_json.insert(job.id, json);
            jobs.insert(job.id, job);
        }
        // A target's claim record (its token, what its run recorded of the
        // engine) changes only with its public record, while it is in
        // flight, or by a write naming it (`focus`); the others are kept from
        // the last read, but every 16th read (and each `full` one) reads all.
        let full = full || self.reads.is_multiple_of(16);
        let mut target_json = HashMap::new();
        let mut claimed = BTreeMap::new();
        let mut claimed_text = HashMap::new();
        for (&id, model) in &self.targets {
            let target = &jobs[&model.job].targets[model.position];
            // A job that reads the same has the same targets.
            let json = match self.last.target_json.get(&id) {
                Some(json) if self.last.job_json.get(&model.job) == job_json.get(&model.job) => {
                    json.clone()
                }
                _ => serde_json::to_string(target).unwrap(),
            };
            let keep = !full
                && focus != Some(id)
                && !target.status.is_in_flight()
                && self.last.target_json.get(&id) == Some(&json);
            let (record, record_text) = match self.last.claimed.get(&id) {
                Some(kept) if keep => (kept.clone(), self.last.claimed_text[&id].clone()),
                _ => {
                    let record = store.claimed_target(id).await.expect("claimed_target");
                    let record_text = format!("{record:?}");
                    (record, record_text)
                }
            };
            text.push_str(&record_text);
            text.push('\n');
            target_json.insert(id, json);
            claimed.insert(id, record);
            claimed_text.insert(id, record_text);
        }
        Snapshot {
            jobs,
            job_json,
            target_json,
            claimed,
            claimed_text,
            text,
        }
    }

    fn target<'a>(&self, snapshot: &'a Snapshot, id: i64) -> &'a Target {
        let model = &self.targets[&id];
        &snapshot.jobs[&model.job].targets[model.position]
    }

    fn job_of<'a>(&self, snapshot: &'a Snapshot, id: i64) -> &'a Job {
        &snapshot.jobs[&self.targets[&id].job]
    }

    /// Reads the store back, checks every invariant, and keeps the snapshot.
    async fn refresh(&mut self) {
        self.refresh_with(None, false).await;
    }

    async fn refresh_with(&mut self, focus: Option<i64>, full: bool) {
        let snapshot = self.snapshot(focus, full).await;
        self.reads += 1;
        self.check(&snapshot).await;
        self.last = snapshot;
    }

    async fn check(&mut self, snap: &Snapshot) {
        // (2) claims: the model's live claims are exactly the tokens held.
        let mut live_of: HashMap<i64, &ClaimModel> = HashMap::new();
        for claim in self.claims.iter().filter(|c| c.live) {
            let previous = live_of.insert(claim.claim.target_id, claim);
            assert!(
                previous.is_none(),
                "the model holds two live claims on target {}",
                claim.claim.target_id
            );
        }
        let mut in_flight_keys: HashMap<String, i64> = HashMap::new();
        let mut in_flight = BTreeSet::new();
        for (&id, model) in &self.targets {
            let target = self.target(snap, id);
            let token = snap.token(id);
            let claimed = &snap.claimed[&id];
            assert_eq!(claimed.job_id, model.job);
            assert_eq!(claimed.status, target.status);
            // (6)
            assert!(
                target.attempts >= 0 && target.runs >= 0,
                "target {id}: attempts {} runs {}",
                target.attempts,
                target.runs
            );
            assert!(
                target.runs <= target.attempts,
                "target {id}: runs {} > attempts {}",
                target.runs,
                target.attempts
            );
            if target.status.is_in_flight() {
                in_flight.insert(id);
                let live = live_of.get(&id).unwrap_or_else(|| {
                    panic!(
                        "target {id} is {:?} but no live claim holds it",
                        target.status
                    )
                });
                assert_eq!(token, live.claim.token, "target {id} holds another claim");
                // (1)
                if let Some(reference) = &target.reference {
                    let key = reference_key(reference);
                    if let Some(other) = in_flight_keys.insert(key.clone(), id) {
                        panic!("targets {other} and {id} are both in flight on {key}");
                    }
                }
            } else {
                assert!(
                    !live_of.contains_key(&id),
                    "target {id} is {:?} but the claim {:?} is still live",
                    target.status,
                    live_of[&id]
                );
                assert_eq!(
                    token, "",
                    "target {id} is {:?} but holds a claim",
                    target.status
                );
            }
            if target.strategy != TagStrategy::Content {
                assert!(target.reference.is_some());
            }
            if target.dead_letter {
                assert_eq!(target.status, TargetStatus::Failed);
            }
            // (3)
            if target.status.is_terminal() {
                let record = format!("{}\n{token}", snap.target_json[&id]);
                let frozen = self
                    .frozen_targets
                    .entry(id)
                    .or_insert_with(|| record.clone());
                assert_eq!(
                    *frozen, record,
                    "terminal target {id} changed after it ended"
                );
                assert!(target.finished_at.is_some());
            } else {
                assert!(
                    !self.frozen_targets.contains_key(&id),
                    "terminal target {id} is {:?} again",
                    target.status
                );
            }
        }
        let listed: BTreeSet<i64> = self
            .store()
            .in_flight_targets()
            .await
            .expect("in_flight_targets")
            .into_iter()
            .collect();
        assert_eq!(
            listed, in_flight,
            "in_flight_targets disagrees with the targets"
        );

        for model in &self.jobs {
            let job = &snap.jobs[&model.id];
            // (5): the cancel flag stays, and leaves nothing pending.
            if self.cancel_seen.contains(&model.id) {
                assert!(job.cancel_requested, "job {} lost its cancel flag", job.id);
            }
            if job.cancel_requested {
                self.cancel_seen.insert(model.id);
                let pending: Vec<i64> = model
                    .targets
                    .iter()
                    .copied()
                    .filter(|&id| self.target(snap, id).status == TargetStatus::Pending)
                    .collect();
                assert!(
                    pending.is_empty(),
                    "job {} was cancelled but targets {pending:?} are pending: no lane will \
                     ever claim them, so the job never ends",
                    job.id
                );
            }
            // (4)
            let statuses: Vec<TargetStatus> = job.targets.iter().map(|t| t.status).collect();
            assert_eq!(
                job.status,
                job_status(&statuses, job.cancel_requested),
                "job {} status disagrees with its targets {statuses:?}",
                job.id
            );
            assert_eq!(
                job.status.is_terminal(),
                statuses.iter().all(|s| s.is_terminal())
            );
            assert_eq!(job.finished_at.is_some(), job.status.is_terminal());
            // (3) for jobs.
            if job.status.is_terminal() {
                let record = snap.job_json[&job.id].clone();
                let frozen = self
                    .frozen_jobs
                    .entry(job.id)
                    .or_insert_with(|| record.clone());
                assert_eq!(
                    *frozen, record,
                    "terminal job {} changed after it ended",
                    job.id
                );
            } else {
                assert!(!self.frozen_jobs.contains_key(&job.id));
            }
        }
    }

    fn pick(&self, pick: Pick) -> Option<usize> {
        if self.claims.is_empty() {
            return None;
        }
        let live: Vec<usize> = (0..self.claims.len())
            .filter(|&i| self.claims[i].live)
            .collect();
        if pick.live && !live.is_empty() {
            Some(live[pick.index.index(live.len())])
        } else {
            Some(pick.index.index(self.claims.len()))
        }
    }

    /// Like `pick`, but a live pick is among the claims a lane would bind
    /// (`content` targets without a reference yet), if there are any.
    fn pick_unbound(&self, pick: Pick) -> Option<usize> {
        let unbound: Vec<usize> = (0..self.claims.len())
            .filter(|&i| {
                let target = self.target(&self.last, self.claims[i].claim.target_id);
                self.claims[i].live
                    && target.strategy == TagStrategy::Content
                    && target.reference.is_none()
            })
            .collect();
        if pick.live && !unbound.is_empty() {
            return Some(unbound[pick.index.index(unbound.len())]);
        }
        self.pick(pick)
    }

    fn live_claim_on(&self, id: i64) -> Option<usize> {
        self.claims
            .iter()
            .position(|c| c.live && c.claim.target_id == id)
    }

    /// The target `claim_target` must answer: the first pending one, in
    /// (job id, position) order, of a job not cancelled, not waiting, whose
    /// reference no target in flight holds.
    fn expected_claim(&self, snap: &Snapshot) -> Option<i64> {
        let busy: HashSet<String> = snap
            .jobs
            .values()
            .flat_map(|job| &job.targets)
            .filter(|t| t.status.is_in_flight())
            .filter_map(|t| t.reference.as_deref().map(reference_key))
            .collect();
        let mut jobs: Vec<&JobModel> = self.jobs.iter().collect();
        jobs.sort_by_key(|job| job.id.to_string());
        for model in jobs {
            let job = &snap.jobs[&model.id];
            if job.cancel_requested {
                continue;
            }
            for &id in &model.targets {
                let target = self.target(snap, id);
                if target.status != TargetStatus::Pending || self.targets[&id].waiting {
                    continue;
                }
                match &target.reference {
                    Some(reference) if busy.contains(&reference_key(reference)) => continue,
                    _ => return Some(id),
                }
            }
        }
        None
    }

    // -----------------------------------------------------------------------
    // Operations

    async fn apply(&mut self, op: &Op) {
        match op {
            Op::CreateJob(shape) => self.create_job(shape).await,
            Op::Claim { long } => {
                self.claim(*long).await;
            }
            Op::Renew { pick, long } => {
                if let Some(ci) = self.pick(*pick) {
                    self.renew(ci, *long).await;
                }
            }
            Op::Bind { pick, reference } => {
                if let Some(ci) = self.pick_unbound(*pick) {
                    let reference = match BIND_POOL.get(*reference) {
                        Some(reference) => reference.to_string(),
                        None => self.busy_reference(),
                    };
                    self.bind(ci, &reference).await;
                }
            }
            Op::Step { pick, step } => {
                if let Some(ci) = self.pick(*pick) {
                    self.step(ci, *step).await;
                }
            }
            Op::FailedAttempt { pick, retrying } => {
                if let Some(ci) = self.pick(*pick) {
                    self.failed_attempt(ci, *retrying).await;
                }
            }
            Op::Finish { pick, outcome } => {
                if let Some(ci) = self.pick(*pick) {
                    self.finish(ci, *outcome).await;
                }
            }
            Op::ReleaseStopped { pick } => {
                if let Some(ci) = self.pick(*pick) {
                    self.release(ci, Release::Stopped).await;
                }
            }
            Op::ReleaseAbandoned { pick, max_runs } => {
                if let Some(ci) = self.pick(*pick) {
                    let release = Release::Abandoned {
                        warning: Some("its lane gave up".to_owned()),
                        max_runs: *max_runs,
                    };
                    self.release(ci, release).await;
                }
            }
            Op::WaitForCredentials { pick, far } => {
                if let Some(ci) = self.pick(*pick) {
                    self.wait_for_credentials(ci, *far).await;
                }
            }
            Op::CredentialsArrived { job } => {
                if !self.jobs.is_empty() {
                    let id = self.jobs[job.index(self.jobs.len())].id;
                    self.credentials_arrived(id).await;
                }
            }
            Op::Cancel { job } => {
                if !self.jobs.is_empty() {
                    let id = self.jobs[job.index(self.jobs.len())].id;
                    self.cancel(id).await;
                }
            }
            Op::Reap { max_runs } => self.reap(*max_runs).await,
            Op::LaneCrash {
                pick,
                max_runs,
                give_up,
            } => {
                if let Some(ci) = self.pick(*pick) {
                    self.lane_crash(ci, *max_runs, *give_up).await;
                }
            }
            Op::Restart { max_runs } => self.restart(*max_runs).await,
        }
    }

    async fn create_job(&mut self, shape: &JobShape) {
        let images: Vec<Value> = if shape.images.is_empty() {
            vec![json!({"source": "src:1"})]
        } else {
            shape
                .images
                .iter()
                .map(|&i| json!({"name": NAMES[i], "source": format!("{}:1", NAMES[i])}))
                .collect()
        };
        let tags: Vec<Value> = shape
            .tags
            .iter()
            .map(|&t| match t {
                0 => json!({"strategy": "custom", "value": "v1"}),
                1 => json!({"strategy": "custom", "value": "v2"}),
                _ => json!({"strategy": "content"}),
            })
            .collect();
        let spec: JobSpec = serde_json::from_value(json!({
            "repo": REPOS[shape.repo],
            "repo_mode": if shape.monorepo { "monorepo" } else { "multirepo" },
            "images": images,
            "tags": tags,
        }))
        .unwrap();
        let plan = plan(&spec, Limits::default()).expect("a valid spec");
        let id = Uuid::now_v7();
        let new = NewJob {
            id,
            plan: plan.clone(),
            max_pending: 100_000,
            has_registry_auth: false,
            idempotency_key: None,
            spec_hash: "h".to_owned(),
            submitter: publishd::store::Submitter::anonymous(),
            engine: None,
        };
        let Created::New(job) = self.store().create_job(new).await.expect("create_job") else {
            panic!("the job was not created");
        };
        assert_eq!(job.id, id);
        assert_eq!(job.status, JobStatus::Queued);
        assert_eq!(job.targets.len(), plan.targets.len());
        let mut ids = Vec::new();
        for (position, planned) in plan.targets.iter().enumerate() {
            // Target ids are the table's AUTOINCREMENT, in position order.
            let target_id = self.next_target_id;
            self.next_target_id += 1;
            let claimed = self
                .store()
                .claimed_target(target_id)
                .await
                .expect("the new target by id");
            assert_eq!(claimed.job_id, id);
            assert_eq!(claimed.strategy, planned.strategy);
            assert_eq!(claimed.reference, planned.reference);
            assert_eq!(job.targets[position].status, TargetStatus::Pending);
            self.targets.insert(
                target_id,
                TargetModel {
                    job: id,
                    position,
                    waiting: false,
                },
            );
            ids.push(target_id);
        }
        self.jobs.push(JobModel { id, targets: ids });
        self.refresh().await;
    }

    /// Claims as a lane does; answers the claim's index in the model.
    async fn claim(&mut self, long: bool) -> Option<usize> {
        let before = self.last.clone();
        let expected = self.expected_claim(&before);
        let claimed = self
            .store()
            .claim_target(lease(long))
            .await
            .expect("claim_target");
        assert_eq!(
            claimed.as_ref().map(|t| t.id),
            expected,
            "claim_target did not answer the oldest claimable target"
        );
        let target = claimed?;
        let id = target.id;
        let job = self.job_of(&before, id);
        assert!(
            !job.cancel_requested,
            "a target of cancelled job {} was claimed",
            job.id
        );
        let old = &before.claimed[&id];
        let old_target = self.target(&before, id);
        assert_eq!(target.claim.target_id, id);
        assert_eq!(target.status, TargetStatus::Tagging);
        assert_eq!(target.attempts, old_target.attempts + 1);
        assert_eq!(target.reference, old_target.reference);
        assert!(
            target.prior_image_id.is_none()
                && target.created_image_id.is_none()
                && target.staging_reference.is_none()
        );
        // What the previous run recorded of the engine moves to `previous_*`.
        let (previous_prior, previous_created) = match &old.created_image_id {
            Some(created) => (old.prior_image_id.clone(), Some(created.clone())),
            None => (
                old.previous_prior_image_id.clone(),
                old.previous_created_image_id.clone(),
            ),
        };
        assert_eq!(target.previous_prior_image_id, previous_prior);
        assert_eq!(target.previous_created_image_id, previous_created);
        self.targets.get_mut(&id).unwrap().waiting = false;
        self.claims.push(ClaimModel {
            claim: target.claim.clone(),
            live: true,
            long_lease: long,
        });
        self.refresh().await;
        let after = self.target(&self.last, id);
        assert_eq!(after.runs, old_target.runs + 1);
        assert_eq!(after.error, None);
        assert!(after.started_at.is_some());
        Some(self.claims.len() - 1)
    }

    /// After a write for claim `ci`: if the claim was lost, nothing changed.
    async fn after_write(&mut self, live: bool, id: i64, what: &str) {
        let before = self.last.text.clone();
        self.refresh_with(Some(id), false).await;
        if !live {
            assert_eq!(
                before, self.last.text,
                "{what} with a lost claim changed the store"
            );
        }
    }

    async fn renew(&mut self, ci: usize, long: bool) {
        let live = self.claims[ci].live;
        let renewed = self
            .store()
            .renew_lease(&self.claims[ci].claim, lease(long))
            .await
            .expect("renew_lease");
        assert_eq!(
            renewed, live,
            "renew_lease answered {renewed} for a claim live={live}"
        );
        if live {
            self.claims[ci].long_lease = long;
        }
        self.after_write(live, self.claims[ci].claim.target_id, "renew_lease")
            .await;
    }

    /// Another spelling of the reference of a target in flight (the first),
    /// or of `foo:v1` if none is.
    fn busy_reference(&self) -> String {
        let reference = self
            .targets
            .keys()
            .map(|&id| self.target(&self.last, id))
            .filter(|t| t.status.is_in_flight())
            .find_map(|t| t.reference.clone())
            .unwrap_or_else(|| "foo:v1".to_owned());
        match reference.strip_prefix("docker.io/library/") {
            Some(short) => short.to_owned(),
            None if reference.starts_with("foo") => format!("index.docker.io/library/{reference}"),
            None => reference,
        }
    }

    async fn bind(&mut self, ci: usize, reference: &str) {
        let ClaimModel { claim, live, .. } = &self.claims[ci];
        let (claim, live) = (claim.clone(), *live);
        let id = claim.target_id;
        let tag = reference.rsplit_once(':').unwrap().1;
        if !live {
            let result = self.store().bind_reference(&claim, tag, reference).await;
            expect_lost("bind_reference", result);
            return self.after_write(false, id, "bind_reference").await;
        }
        let before = self.last.clone();
        let target = self.target(&before, id).clone();
        // A lane binds only a content target whose reference is not known yet.
        if target.strategy != TagStrategy::Content || target.reference.is_some() {
            return;
        }
        let key = reference_key(reference);
        let busy = self.targets.keys().any(|&other| {
            let t = self.target(&before, other);
            other != id
                && t.status.is_in_flight()
                && t.reference.as_deref().map(reference_key) == Some(key.clone())
        });
        let cancelled = self.job_of(&before, id).cancel_requested;
        let expected = match (busy, cancelled) {
            (false, _) => Bound::Bound,
            (true, false) => Bound::Busy,
            (true, true) => Bound::Cancelled,
        };
        let bound = self
            .store()
            .bind_reference(&claim, tag, reference)
            .await
            .expect("bind_reference");
        assert_eq!(
            bound, expected,
            "bind_reference of target {id} to {reference}"
        );
        if bound != Bound::Bound {
            self.claims[ci].live = false;
        }
        self.refresh().await;
        let after = self.target(&self.last, id);
        assert_eq!(after.reference.as_deref(), Some(reference));
        assert_eq!(after.tag.as_deref(), Some(tag));
        let (status, runs, attempts) = match bound {
            Bound::Bound => (TargetStatus::Tagging, target.runs, target.attempts),
            Bound::Busy => (TargetStatus::Pending, target.runs - 1, target.attempts - 1),
            Bound::Cancelled => (
                TargetStatus::Cancelled,
                target.runs - 1,
                target.attempts - 1,
            ),
        };
        assert_eq!(
            (after.status, after.runs, after.attempts),
            (status, runs, attempts)
        );
    }

    async fn step(&mut self, ci: usize, step: Step) {
        let (claim, live) = (self.claims[ci].claim.clone(), self.claims[ci].live);
        let id = claim.target_id;
        let n = self.unique();
        let store = self.store();
        let result = match step {
            Step::Pushing => store.set_step(&claim, TargetStatus::Pushing).await,
            Step::Untagging => store.set_step(&claim, TargetStatus::Untagging).await,
            Step::TagPlan if n.is_multiple_of(2) => {
                let created = format!("sha256:created{n}");
                store
                    .record_tag_plan(&claim, Some("sha256:prior"), Some(&created), None)
                    .await
            }
            Step::TagPlan => {
                store
                    .record_tag_plan(&claim, None, None, Some("publishd-staging:x"))
                    .await
            }
            Step::CreatedImage => {
                store
                    .record_created_image(&claim, &format!("sha256:built{n}"))
                    .await
            }
        };
        let what = format!("{step:?}");
        if !live {
            expect_lost(&what, result);
            return self.after_write(false, id, &what).await;
        }
        result.unwrap_or_else(|error| panic!("{what} with a live claim: {error:#}"));
        self.refresh().await;
        let after = &self.last.claimed[&id];
        match step {
            Step::Pushing => assert_eq!(after.status, TargetStatus::Pushing),
            Step::Untagging => assert_eq!(after.status, TargetStatus::Untagging),
            Step::TagPlan if n.is_multiple_of(2) => {
                assert_eq!(after.created_image_id, Some(format!("sha256:created{n}")))
            }
            Step::TagPlan => {
                assert_eq!(
                    after.staging_reference.as_deref(),
                    Some("publishd-staging:x")
                )
            }
            Step::CreatedImage => {
                assert_eq!(after.created_image_id, Some(format!("sha256:built{n}")))
            }
        }
    }

    async fn failed_attempt(&mut self, ci: usize, retrying: bool) {
        let (claim, live) = (self.claims[ci].claim.clone(), self.claims[ci].live);
        let id = claim.target_id;
        let result = self
            .store()
            .record_failed_attempt(&claim, "push", "registry said no", retrying)
            .await;
        if !live {
            expect_lost("record_failed_attempt", result);
            return self.after_write(false, id, "record_failed_attempt").await;
        }
        result.expect("record_failed_attempt with a live claim");
        let before = self.target(&self.last, id).clone();
        self.refresh().await;
        let after = self.target(&self.last, id);
        assert_eq!(after.attempts, before.attempts + i64::from(retrying));
        assert_eq!(after.attempt_errors.len(), before.attempt_errors.len() + 1);
        assert_eq!(
            after.attempt_errors.last().unwrap().attempt,
            before.attempts
        );
    }

    async fn finish(&mut self, ci: usize, outcome: Outcome) {
        let (claim, live) = (self.claims[ci].claim.clone(), self.claims[ci].live);
        let id = claim.target_id;
        let n = self.unique();
        let outcome = match outcome {
            Outcome::Succeeded => TargetOutcome::Succeeded {
                digest: format!("sha256:{n:064x}"),
                image_id: None,
                up_to_date: n.is_multiple_of(3),
                published_via: None,
            },
            Outcome::Failed => TargetOutcome::Failed {
                error: format!("failure {n}"),
            },
            Outcome::Cancelled => TargetOutcome::Cancelled,
        };
        let result = self
            .store()
            .finish_target(&claim, &outcome, &["a warning".to_owned()])
            .await;
        if !live {
            expect_lost("finish_target", result);
            return self.after_write(false, id, "finish_target").await;
        }
        let status = result.expect("finish_target with a live claim");
        self.claims[ci].live = false;
        self.refresh().await;
        let after = self.target(&self.last, id);
        assert_eq!(self.job_of(&self.last, id).status, status);
        let (expected, digest) = match &outcome {
            TargetOutcome::Succeeded { digest, .. } => (TargetStatus::Succeeded, Some(digest)),
            TargetOutcome::Failed { .. } => (TargetStatus::Failed, None),
            TargetOutcome::Cancelled => (TargetStatus::Cancelled, None),
        };
        assert_eq!(after.status, expected);
        assert_eq!(after.digest.as_ref(), digest);
        assert_eq!(after.error.is_some(), expected != TargetStatus::Succeeded);
    }

    async fn release(&mut self, ci: usize, release: Release) {
        let (claim, live) = (self.claims[ci].claim.clone(), self.claims[ci].live);
        let result = self.store().release_target(&claim, release.clone()).await;
        if !live {
            expect_lost("release_target", result);
            return self
                .after_write(false, claim.target_id, "release_target")
                .await;
        }
        let released = result.expect("release_target with a live claim");
        self.claims[ci].live = false;
        self.after_release(claim.target_id, &release, released)
            .await;
    }

    /// Checks what releasing `id` did against the snapshot taken before it.
    async fn after_release(&mut self, id: i64, release: &Release, released: Released) {
        let before = self.target(&self.last, id).clone();
        let cancel_requested = self.job_of(&self.last, id).cancel_requested;
        assert_eq!(
            released,
            expected_release(cancel_requested, before.runs, release),
            "releasing target {id} ({release:?}, runs {})",
            before.runs
        );
        self.refresh().await;
        let after = self.target(&self.last, id);
        let status = match released {
            Released::Queued => TargetStatus::Pending,
            Released::Cancelled => TargetStatus::Cancelled,
            Released::DeadLetter => TargetStatus::Failed,
        };
        assert_eq!(after.status, status);
        assert_eq!(after.dead_letter, released == Released::DeadLetter);
        let (runs, attempts) = match release {
            Release::Stopped => (before.runs - 1, before.attempts - 1),
            Release::Abandoned { .. } => (before.runs, before.attempts),
        };
        assert_eq!(after.runs, runs);
        assert_eq!(after.attempts, attempts);
    }

    async fn wait_for_credentials(&mut self, ci: usize, far: bool) {
        let (claim, live) = (self.claims[ci].claim.clone(), self.claims[ci].live);
        let id = claim.target_id;
        let retry_at = if far { FAR_AHEAD } else { LONG_AGO };
        let result = self
            .store()
            .wait_for_credentials(&claim, FAR_AHEAD, retry_at)
            .await;
        if !live {
            expect_lost("wait_for_credentials", result);
            return self.after_write(false, id, "wait_for_credentials").await;
        }
        result.expect("wait_for_credentials with a live claim");
        self.claims[ci].live = false;
        self.targets.get_mut(&id).unwrap().waiting = far;
        let before = self.target(&self.last, id).clone();
        let cancel_requested = self.job_of(&self.last, id).cancel_requested;
        self.refresh().await;
        let after = self.target(&self.last, id);
        let expected = if cancel_requested {
            TargetStatus::Cancelled
        } else {
            TargetStatus::Pending
        };
        assert_eq!(after.status, expected);
        assert_eq!(after.runs, before.runs - 1);
        assert_eq!(after.attempts, before.attempts - 1);
        assert!(after.credentials_wait_until.is_some());
    }

    async fn credentials_arrived(&mut self, job: Uuid) {
        self.store()
            .credentials_arrived(job)
            .await
            .expect("credentials_arrived");
        let pending: Vec<i64> = self
            .targets
            .iter()
            .filter(|(id, t)| {
                t.job == job && self.target(&self.last, **id).status == TargetStatus::Pending
            })
            .map(|(id, _)| *id)
            .collect();
        for id in pending {
            self.targets.get_mut(&id).unwrap().waiting = false;
        }
        self.refresh().await;
    }

    async fn cancel(&mut self, id: Uuid) {
        let before = self.last.jobs[&id].clone();
        let cancelled = self.store().cancel_job(id).await.expect("cancel_job");
        let answered = match cancelled {
            Cancelled::NotFound => panic!("job {id} not found"),
            Cancelled::AlreadyFinished(job) => {
                assert!(
                    before.status.is_terminal(),
                    "cancel of a running job refused"
                );
                job
            }
            Cancelled::Requested(job) => {
                assert!(!before.status.is_terminal(), "a finished job was cancelled");
                assert!(job.cancel_requested);
                for (old, new) in before.targets.iter().zip(&job.targets) {
                    match old.status {
                        TargetStatus::Pending => assert_eq!(new.status, TargetStatus::Cancelled),
                        status => assert_eq!(new.status, status),
                    }
                }
                job
            }
        };
        self.refresh().await;
        assert_eq!(
            serde_json::to_string(&answered).unwrap(),
            self.last.job_json[&id]
        );
    }

    async fn reap(&mut self, max_runs: u32) {
        // Past the end of every zero lease (leases are whole milliseconds).
        tokio::time::sleep(Duration::from_millis(2)).await;
        let expired: BTreeSet<(i64, String)> = self
            .store()
            .expired_leases()
            .await
            .expect("expired_leases")
            .into_iter()
            .collect();
        let expected: BTreeSet<(i64, String)> = self
            .claims
            .iter()
            .filter(|c| c.live && !c.long_lease)
            .map(|c| (c.claim.target_id, c.claim.token.clone()))
            .collect();
        assert_eq!(expired, expected, "expired_leases");
        // A live lease is not taken over as expired.
        let unexpired: Vec<Claim> = self
            .claims
            .iter()
            .filter(|c| c.live && c.long_lease)
            .map(|c| c.claim.clone())
            .collect();
        for claim in unexpired {
            let condition = TakeOver::Expired {
                token: &claim.token,
            };
            let taken = self
                .store()
                .take_over(claim.target_id, condition, LONG)
                .await
                .expect("take_over");
            assert_eq!(taken, None, "a live lease was taken over as expired");
            self.after_write(false, claim.target_id, "take_over(Expired) of a live lease")
                .await;
        }
        for (id, token) in expired {
            let condition = TakeOver::Expired { token: &token };
            let taken = self
                .store()
                .take_over(id, condition, LONG)
                .await
                .expect("take_over")
                .expect("an expired lease is taken over");
            self.recover(id, taken, max_runs, "its lease ran out").await;
        }
    }

    /// Recovery holds `taken` (a take-over of `id`): the old claim is lost;
    /// releases the target abandoned.
    async fn recover(&mut self, id: i64, taken: Claim, max_runs: u32, why: &str) {
        let old = self.live_claim_on(id).expect("a live claim was taken over");
        self.claims[old].live = false;
        self.claims.push(ClaimModel {
            claim: taken.clone(),
            live: true,
            long_lease: true,
        });
        let recovery = self.claims.len() - 1;
        self.refresh().await;
        // The old claim is fenced out now.
        let lost = self.claims[old].claim.clone();
        let result = self.store().set_step(&lost, TargetStatus::Pushing).await;
        expect_lost("set_step after a take-over", result);
        self.after_write(false, id, "set_step after a take-over")
            .await;
        let release = Release::Abandoned {
            warning: Some(format!("recovered: {why}")),
            max_runs,
        };
        let released = self
            .store()
            .release_target(&taken, release.clone())
            .await
            .expect("releasing a recovered target");
        self.claims[recovery].live = false;
        self.after_release(id, &release, released).await;
    }

    async fn lane_crash(&mut self, ci: usize, max_runs: u32, give_up: bool) {
        let (claim, live) = (self.claims[ci].claim.clone(), self.claims[ci].live);
        let condition = TakeOver::Held {
            token: &claim.token,
        };
        let taken = self
            .store()
            .take_over(claim.target_id, condition, LONG)
            .await
            .expect("take_over");
        if !live {
            assert_eq!(taken, None, "a lost claim was taken over as held");
            return self
                .after_write(false, claim.target_id, "take_over(Held)")
                .await;
        }
        let taken = taken.expect("a held claim is taken over");
        if !give_up {
            return self
                .recover(claim.target_id, taken, max_runs, "its lane panicked")
                .await;
        }
        // Recovery could not undo the run: it gives its claim up, with a
        // lease already over, and forgets the token.
        let condition = TakeOver::Held {
            token: &taken.token,
        };
        let handed_back = self
            .store()
            .take_over(claim.target_id, condition, Duration::ZERO)
            .await
            .expect("take_over")
            .expect("recovery's own claim is taken over");
        self.claims[ci].live = false;
        self.claims.push(ClaimModel {
            claim: taken,
            live: false,
            long_lease: true,
        });
        self.claims.push(ClaimModel {
            claim: handed_back,
            live: true,
            long_lease: false,
        });
        self.refresh().await;
    }

    async fn restart(&mut self, max_runs: u32) {
        // Every clone of the store goes: its lock file is free again.
        self.store = None;
        self.store = Some(
            Store::open_sqlite(&self.path)
                .await
                .expect("reopening the store"),
        );
        let before = self.last.text.clone();
        self.refresh_with(None, true).await;
        assert_eq!(before, self.last.text, "a restart changed the store");
        let in_flight = self
            .store()
            .in_flight_targets()
            .await
            .expect("in_flight_targets");
        for id in in_flight {
            let taken = self
                .store()
                .take_over(id, TakeOver::Any, LONG)
                .await
                .expect("take_over")
                .expect("a target in flight is taken over at start-up");
            self.recover(id, taken, max_runs, "publishd restarted")
                .await;
        }
        assert!(
            self.store()
                .expired_leases()
                .await
                .expect("expired_leases")
                .is_empty()
        );
    }

    /// Ends the case: what is held is released, what is left runs to the
    /// end (or its job is cancelled), and every job must be terminal.
    async fn drain(&mut self, by_cancel: bool) {
        let live: Vec<usize> = (0..self.claims.len())
            .filter(|&i| self.claims[i].live)
            .collect();
        for ci in live {
            self.release(ci, Release::Stopped).await;
        }
        let jobs: Vec<Uuid> = self.jobs.iter().map(|j| j.id).collect();
        for &id in &jobs {
            self.credentials_arrived(id).await;
        }
        if by_cancel {
            for &id in &jobs {
                self.cancel(id).await;
            }
        }
        let mut rounds = 0;
        while let Some(ci) = self.claim(true).await {
            rounds += 1;
            assert!(rounds <= 4 * self.targets.len(), "the drain never ends");
            let id = self.claims[ci].claim.target_id;
            if self.target(&self.last, id).reference.is_none() {
                // A reference of its own: never busy.
                let reference = format!("127.0.0.1:5000/drain/t{id}:c");
                self.bind(ci, &reference).await;
                assert!(self.claims[ci].live);
            }
            self.step(ci, Step::Pushing).await;
            self.finish(ci, Outcome::Succeeded).await;
        }
        for &id in self.targets.keys() {
            let target = self.target(&self.last, id);
            assert!(
                target.status.is_terminal(),
                "target {id} is {:?} after draining",
                target.status
            );
        }
        for job in self.last.jobs.values() {
            assert!(
                job.status.is_terminal(),
                "job {} is {:?} after draining",
                job.id,
                job.status
            );
        }
        // Terminal states survive a restart untouched.
        self.restart(2).await;
    }
}

async fn run_case(ops: Vec<Op>, drain_by_cancel: bool) {
    let dir = scratch_dir();
    let mut harness = Harness::new(dir.path().join("publishd.db")).await;
    for op in &ops {
        harness.apply(op).await;
    }
    harness.drain(drain_by_cancel).await;
}

fn config() -> ProptestConfig {
    let default = ProptestConfig::default();
    ProptestConfig {
        // PROPTEST_CASES, when set, runs more (or fewer).
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            default.cases
        } else {
            64
        },
        // Failures print their minimal case; nothing is written to the tree.
        failure_persistence: None,
        ..default
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn queue_invariants_hold_under_random_interleavings(
        ops in ops(),
        drain_by_cancel in any::<bool>(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(run_case(ops, drain_by_cancel));
    }
}

/// A directory for one case's database: in memory where the system has a
/// tmpfs (every commit is an fsync with `synchronous = FULL`, which on a disk
/// is most of a case's time), else the usual temporary directory.
fn scratch_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::Builder::new()
            .prefix("queue-properties")
            .tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().unwrap()
}

/// The smallest case the property finds, pinned: a lane claims a target of
/// a job whose own registry credentials a restart lost, the job is cancelled
/// meanwhile, and the lane puts the target back to wait for the credentials.
/// The target must not stay pending: `claim_target` never claims a target of
/// a cancelled job, so the job would never end.
#[test]
fn a_target_put_back_to_wait_for_credentials_after_its_job_was_cancelled_still_ends() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = scratch_dir();
        let store = Store::open_sqlite(&dir.path().join("publishd.db"))
            .await
            .unwrap();
        let spec: JobSpec = serde_json::from_value(json!({
            "repo": "foo", "images": [{"source": "src:1"}],
            "tags": [{"strategy": "custom", "value": "v1"}]
        }))
        .unwrap();
        let plan = plan(&spec, Limits::default()).unwrap();
        let id = Uuid::now_v7();
        let new = NewJob {
            id,
            plan: plan.clone(),
            max_pending: 100,
            has_registry_auth: true,
            idempotency_key: None,
            spec_hash: "h".to_owned(),
            submitter: publishd::store::Submitter::anonymous(),
            engine: None,
        };
        assert!(matches!(
            store.create_job(new).await.unwrap(),
            Created::New(_)
        ));
        let target = store.claim_target(LONG).await.unwrap().unwrap();
        assert!(matches!(
            store.cancel_job(id).await.unwrap(),
            Cancelled::Requested(_)
        ));
        store
            .wait_for_credentials(&target.claim, FAR_AHEAD, LONG_AGO)
            .await
            .unwrap();
        assert!(store.claim_target(LONG).await.unwrap().is_none());
        let job = store.get_job(id).await.unwrap().unwrap();
        assert_ne!(
            job.targets[0].status,
            TargetStatus::Pending,
            "the target of a cancelled job is pending again: no lane will claim it"
        );
        assert!(
            job.status.is_terminal(),
            "the cancelled job never ends: {:?}",
            job.status
        );
    });
}
