//! The publish procedure for one target: tag -> push -> verify -> untag, with
//! retries per step and its clean-up guarantees. The only code that drives
//! the engine for a job.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::credentials::RegistryAuth;
use crate::domain::access::{Patterns, missing_labels};
use crate::domain::labels::{LabelInput, werf_labels};
use crate::domain::naming::{Repository, content_tag, target_reference};
use crate::domain::platform::Platform;
use crate::domain::publish_via::{PublishedVia, Seed, SeedKey, may_skip_engine};
use crate::domain::retry::{FailureKind, classify_engine_error, classify_registry_message};
use crate::domain::source::{RegistrySource, ResolvedSource};
use crate::domain::spec::TagStrategy;
use crate::domain::status::TargetStatus;
use crate::domain::text::cut;
use crate::engine::{
    Engine, EngineError, LabelBuild, LabelledImage, PushProgress, SourceImage, TagMethod,
};
use crate::metrics::StepOutcome;
use crate::progress::Progress;
use crate::registry::{
    LayersFrom, ManifestForm, RegistryError, RegistryImage, RemoteImage, Source, SourceManifest,
    Written,
};
use crate::store::{Bound, ClaimedTarget, TargetOutcome};

use super::seed_turns::TurnOrWait;
use super::{LOG_LIMIT, WorkerContext};

mod from_registry;

/// How long one try of each step may take.
#[derive(Debug, Clone, Copy)]
pub struct StepTimeouts {
    /// Inspecting the source, making the labelled image, reading the registry.
    pub tag: Duration,
    pub push: Duration,
    pub untag: Duration,
}

/// How often a push's progress is told to followers, at most.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// What can interrupt a run: a cancel of its job, the service stopping, or
/// the run's lease being lost.
pub struct Signals<'a> {
    pub cancel: &'a CancellationToken,
    pub stop: &'a CancellationToken,
    /// The claim could not be kept: stop at once and touch nothing more, the
    /// run that takes the target over undoes what this one left.
    pub lease_lost: &'a CancellationToken,
}

/// How a run of the procedure ended.
#[derive(Debug)]
pub enum Finish {
    Done {
        outcome: TargetOutcome,
        warnings: Vec<String>,
    },
    /// Another target is working on the same reference: the target went back
    /// to the queue untouched.
    Deferred,
    /// The service is stopping: the engine is clean and the target can go
    /// back to the queue.
    Release,
    /// The service is stopping and the engine could not be cleaned: leave the
    /// target mid-step for the next start's recovery.
    Abandon,
    /// The lease was lost: the run stopped where it was.
    LeaseLost,
    /// Another run is making the seed of this target's source (its turn
    /// `turn` of `key`): the target goes back to the queue to wait for it,
    /// untouched.
    AwaitSeed { key: SeedKey, turn: u64 },
}

/// What a cancel of the job does to a step.
#[derive(Debug, Clone, Copy)]
enum OnCancel {
    /// Stop at once, even mid-try: for reads, and for the push (dropping its
    /// stream stops it on the engine).
    Interrupt,
    /// Let a try finish, then stop: for the load, which the engine completes
    /// even when its caller is gone, so the untag must come after it.
    BetweenTries,
    /// Run to the end: the untag.
    Ignore,
}

/// Why a step did not produce its result.
enum Stop {
    Failed(String),
    Cancelled,
    ShuttingDown,
    LeaseLost,
    Store(anyhow::Error),
}

/// One failed try.
struct Failure {
    kind: FailureKind,
    message: String,
}

impl Failure {
    fn permanent(message: String) -> Failure {
        Failure {
            kind: FailureKind::Permanent,
            message,
        }
    }
}

impl From<EngineError> for Failure {
    fn from(error: EngineError) -> Failure {
        let kind = match &error {
            EngineError::Unreachable(_) => FailureKind::Outage,
            // A target left from a run with an engine, met by a publishd
            // without one: it cannot run here, and waiting would hold a lane.
            EngineError::Absent => FailureKind::Permanent,
            EngineError::Api { status, message } => classify_engine_error(*status, message),
            EngineError::Push(message) => classify_registry_message(message),
            EngineError::Protocol(_) => FailureKind::Transient,
        };
        Failure {
            kind,
            message: error.to_string(),
        }
    }
}

impl From<RegistryError> for Failure {
    fn from(error: RegistryError) -> Failure {
        Failure {
            kind: error.kind,
            message: error.to_string(),
        }
    }
}

/// Runs one claimed target. Store failures abort the run (the target is then
/// recovered like after a crash); engine and registry failures are retried as
/// their kind allows and otherwise become the target's outcome.
pub async fn run(
    ctx: &WorkerContext,
    target: &ClaimedTarget,
    signals: Signals<'_>,
) -> anyhow::Result<Finish> {
    // Where every reference of the target is, read once as at submission.
    let Some(repository) =
        Repository::of_targets(&target.repo, target.repo_mode, target.image_name.as_deref())
    else {
        return conclude(
            Err(Stop::Failed(format!(
                "{:?} is not a valid repository",
                target.repo
            ))),
            Vec::new(),
        );
    };
    let run = Run {
        ctx,
        target,
        repository,
        signals,
    };
    if let Some(source) = RegistrySource::parse(&target.source) {
        return match source {
            Ok(source) => run.publish_registry_source(&source).await,
            Err(message) => conclude(Err(Stop::Failed(message)), Vec::new()),
        };
    }
    // The job's image is the one its source named when it was resolved:
    // every target of the image publishes that id, whatever the name
    // points at by now.
    let source_id = match &target.source_image_id {
        Some(id) => id.clone(),
        None => {
            let found = match run
                .tries("tag", ctx.timeouts.tag, OnCancel::Interrupt, || {
                    run.resolve_source()
                })
                .await
            {
                Ok(found) => found,
                Err(stop) => return conclude(Err(stop), Vec::new()),
            };
            ctx.store
                .resolve_source(
                    target.job_id,
                    target.image_position,
                    &ResolvedSource::local(found),
                )
                .await?
                .image_id
        }
    };
    let source = match run
        .tries("tag", ctx.timeouts.tag, OnCancel::Interrupt, || {
            run.source_image(&source_id)
        })
        .await
    {
        Ok(source) => source,
        Err(stop) => return conclude(Err(stop), Vec::new()),
    };

    let Some((tag, reference)) = run.tag_and_reference(&source.id).await? else {
        return Ok(Finish::Deferred);
    };

    let auth = match run.before_writing(&reference, &source.id, None).await? {
        Ok(auth) => auth,
        Err(finish) => return Ok(finish),
    };

    let description = match run
        .tries("tag", ctx.timeouts.tag, OnCancel::Interrupt, || async {
            Ok(ctx.engine.describe().await?)
        })
        .await
    {
        Ok(description) => description,
        Err(stop) => return conclude(Err(stop), Vec::new()),
    };
    let method = ctx.tag_method.on(description.image_store);
    let labels = werf_labels(&LabelInput {
        reference: &reference,
        strategy: target.strategy,
        image_name: target.image_name.as_deref(),
        tag: &tag,
        source_image_id: &source.id,
    });

    // Registry-side, when the engine (of this format) has pushed this
    // source to the registry before: its push is the template, with this
    // target's labelled config in place of its own; the engine is not
    // touched (no tag, so no untag). Without a seed, one target of the
    // source at a time goes through the engine to make one, and the others
    // wait for it (`SeedTurns`).
    let registry = &run.repository.registry;
    let seed_key = SeedKey {
        source_image_id: source.id.clone(),
        registry: registry.clone(),
        engine: description.seed_format(method),
    };
    // A seed the submitter may not read is not mounted from: the engine
    // pushes, and its push records a seed of this repository.
    let readable = |seed: &Seed| {
        run.may_read(&Repository {
            registry: registry.clone(),
            path: seed.repository.clone(),
        })
    };
    // Read once: it decides the way here and whether the push below records one.
    let mut seed = ctx.store.seed(&seed_key).await?.filter(readable);
    // Held until the run ends: its waiters are woken after the seed is recorded.
    let mut _turn = None;
    let mut mount_refused = false;
    if may_skip_engine(target.publish_via, ctx.publish_via) {
        let key = &seed_key;
        if seed.is_none() {
            match ctx.seed_turns.take(key, target.id) {
                TurnOrWait::Turn(turn) => {
                    _turn = Some(turn);
                    // One may have been recorded since the read above.
                    seed = ctx.store.seed(key).await?.filter(readable);
                }
                TurnOrWait::Engine => {}
                TurnOrWait::Wait { turn } => {
                    return Ok(Finish::AwaitSeed {
                        key: key.clone(),
                        turn,
                    });
                }
            }
        }
        if let Some(seed) = &seed
            && let Some(image) = sibling(method, &source, &labels, seed)
        {
            let template = template(seed);
            let wanted = RegistryImage {
                config: image.config(),
                layers: &seed.layers,
                layers_from: LayersFrom {
                    registry,
                    repository: &seed.repository,
                    auth: &auth,
                    copy: false,
                },
                manifest: ManifestForm::Like(&template),
            };
            let write = || ctx.registry.write_image(&reference, &wanted, &auth);
            match run.write_registry_side(&reference, &auth, write).await? {
                Ok(Some(digest)) => {
                    info!(%digest, image_id = %image.id, from = %seed.repository, "published registry-side");
                    let published = Published {
                        digest,
                        image_id: Some(image.id),
                        via: PublishedVia::Registry,
                    };
                    return conclude(Ok(published), Vec::new());
                }
                Ok(None) => mount_refused = true,
                Err(stop) => return conclude(Err(stop), Vec::new()),
            }
        }
    }

    // Tag. What the reference names now, and the new image's id (a load) or
    // the temporary name it is built under (a build), are recorded before
    // the engine is asked to make it, so that a crash at any point can be
    // undone.
    let prior = match run
        .tries("tag", ctx.timeouts.tag, OnCancel::Interrupt, || async {
            Ok(ctx.engine.image_id(&reference).await?)
        })
        .await
    {
        Ok(prior) => prior,
        Err(stop) => return conclude(Err(stop), Vec::new()),
    };
    // A name pointing at the image an earlier run of this target made is that
    // run's leftover (its load finished after its process died), not the
    // user's: the earlier run's record of what the name held stays true.
    let prior = match &target.previous_created_image_id {
        Some(created) if prior.as_ref() == Some(created) => target.previous_prior_image_id.clone(),
        _ => prior,
    };
    let staging = (method == TagMethod::Build).then(|| staging_reference(target));
    let (created, tagged) = match &staging {
        None => {
            let image = LabelledImage::new(&source, &labels);
            ctx.store
                .record_tag_plan(&target.claim, prior.as_deref(), Some(&image.id), None)
                .await?;
            let loaded = run
                .step("tag", ctx.timeouts.tag, OnCancel::BetweenTries, || async {
                    Ok(ctx.engine.load_image(&image, &reference).await?)
                })
                .await;
            (Some(image.id), loaded)
        }
        Some(staging) => {
            ctx.store
                .record_tag_plan(&target.claim, prior.as_deref(), None, Some(staging))
                .await?;
            run.build(&source, &labels, staging, &reference).await?
        }
    };

    let published = match tagged {
        Ok(()) => {
            info!(
                image_id = created.as_deref(),
                prior = prior.as_deref(),
                ?method,
                "tagged"
            );
            ctx.store
                .set_step(&target.claim, TargetStatus::Pushing)
                .await?;
            run.push_and_verify(&reference, &auth).await
        }
        Err(stop) => Err(stop),
    };

    // Untag, whatever happened above.
    ctx.store
        .set_step(&target.claim, TargetStatus::Untagging)
        .await?;
    let untagged = run
        .step("untag", ctx.timeouts.untag, OnCancel::Ignore, || async {
            Ok(restore_reference(
                ctx.engine.as_ref(),
                &reference,
                created.as_deref(),
                prior.as_deref(),
                staging.as_deref(),
            )
            .await?)
        })
        .await;
    let mut warnings = Vec::new();
    match untagged {
        Ok(()) => {}
        Err(Stop::Store(error)) => return Err(error),
        // Stopping mid-way through the untag: the next start finishes it.
        Err(Stop::ShuttingDown) => return Ok(Finish::Abandon),
        Err(Stop::LeaseLost) => return Ok(Finish::LeaseLost),
        Err(Stop::Failed(message)) => {
            warn!(message = %cut(&message, LOG_LIMIT), "untag failed");
            warnings.push(message);
        }
        // The untag ignores cancels; nothing else yields this.
        Err(Stop::Cancelled) => warnings.push("untag: interrupted".to_owned()),
    }

    // The engine pushed a labelled image of the source: its layers are in
    // the registry now, and its further targets there can be written
    // registry-side. Recorded once per source, registry and engine format
    // (again after a refused mount: the layers are where this push left
    // them).
    if let Ok(digest) = &published
        && (mount_refused || seed.is_none())
    {
        let made = MadeBy {
            method,
            source: &source,
            labels: &labels,
        };
        run.record_seed(&seed_key, &run.repository.path, digest, &made, &auth)
            .await?;
    }

    let published = published.map(|digest| Published {
        digest,
        image_id: created,
        via: PublishedVia::Engine,
    });
    conclude(published, warnings)
}

/// A target published: the digest the registry serves for it, the image's
/// id (`Target::image_id`) where known, and the way it went.
struct Published {
    digest: String,
    image_id: Option<String>,
    via: PublishedVia,
}

/// How a run ends: what was published, or why nothing was; `warnings` are
/// what the untag could not clean up.
fn conclude(published: Result<Published, Stop>, warnings: Vec<String>) -> anyhow::Result<Finish> {
    let outcome = match published {
        Ok(Published {
            digest,
            image_id,
            via,
        }) => TargetOutcome::Succeeded {
            digest,
            image_id,
            up_to_date: false,
            published_via: Some(via),
        },
        Err(Stop::Failed(error)) => TargetOutcome::Failed { error },
        Err(Stop::Cancelled) => TargetOutcome::Cancelled,
        Err(Stop::Store(error)) => return Err(error),
        Err(Stop::LeaseLost) => return Ok(Finish::LeaseLost),
        // Stopping: a clean engine lets the target go back to the queue;
        // otherwise the next start's recovery cleans up first.
        Err(Stop::ShuttingDown) => {
            return Ok(if warnings.is_empty() {
                Finish::Release
            } else {
                Finish::Abandon
            });
        }
    };
    Ok(Finish::Done { outcome, warnings })
}

impl Signals<'_> {
    /// A cancel or a stop that came while nothing was being done.
    fn interruption(&self) -> Option<Stop> {
        if self.lease_lost.is_cancelled() {
            Some(Stop::LeaseLost)
        } else if self.cancel.is_cancelled() {
            Some(Stop::Cancelled)
        } else if self.stop.is_cancelled() {
            Some(Stop::ShuttingDown)
        } else {
            None
        }
    }
}

struct Run<'a> {
    ctx: &'a WorkerContext,
    target: &'a ClaimedTarget,
    /// The repository the target's references are in (its registry is the
    /// one credentials, seeds and source reads are chosen by).
    repository: Repository,
    signals: Signals<'a>,
}

/// A temporary name for a build, unique to this run (and saying whose it
/// is): recovery may remove any name it recorded without touching anything
/// of the user's.
fn staging_reference(target: &ClaimedTarget) -> String {
    format!(
        "publishd-staging/{}-{}:{}",
        target.job_id.simple(),
        target.id,
        uuid::Uuid::now_v7().simple()
    )
}

impl Run<'_> {
    /// The id the target's source names now.
    async fn resolve_source(&self) -> Result<String, Failure> {
        match self.ctx.engine.image_id(&self.target.source).await? {
            Some(id) => Ok(id),
            None => Err(Failure::permanent(format!(
                "source image {:?} does not exist on the docker engine",
                self.target.source
            ))),
        }
    }

    /// The job's image, by the id its source resolved to; it must carry the
    /// labels the submitter's scope requires.
    async fn source_image(&self, id: &str) -> Result<SourceImage, Failure> {
        match self.ctx.engine.inspect_image(id).await? {
            Some(source) => {
                let missing = missing_labels(&self.target.required_labels, &source.labels());
                if missing.is_empty() {
                    Ok(source)
                } else {
                    Err(Failure::permanent(format!(
                        "forbidden: the source image {:?} lacks the labels its submitter's \
                         scope requires: {}",
                        self.target.source,
                        missing.join(", ")
                    )))
                }
            }
            None => Err(Failure::permanent(format!(
                "source image {:?} ({id}, as resolved for this job) no longer exists on the \
                 docker engine",
                self.target.source
            ))),
        }
    }

    /// The build method: build under the temporary name, record the image
    /// it made, then name it `reference`. Answers the image id (once built)
    /// and how the step went; store failures abort the run.
    async fn build(
        &self,
        source: &SourceImage,
        labels: &std::collections::BTreeMap<String, String>,
        staging: &str,
        reference: &str,
    ) -> anyhow::Result<(Option<String>, Result<(), Stop>)> {
        let ctx = self.ctx;
        let build = LabelBuild::new(&source.id, labels);
        let built = self
            .step("tag", ctx.timeouts.tag, OnCancel::BetweenTries, || async {
                Ok(ctx.engine.build_image(&build, staging).await?)
            })
            .await;
        let id = match built {
            Ok(id) => id,
            Err(Stop::Store(error)) => return Err(error),
            Err(stop) => return Ok((None, Err(stop))),
        };
        ctx.store
            .record_created_image(&self.target.claim, &id)
            .await?;
        let named = self
            .tries("tag", ctx.timeouts.tag, OnCancel::BetweenTries, || async {
                ctx.engine.tag_image(&id, reference).await?;
                Ok(ctx.engine.remove_reference(staging).await?)
            })
            .await;
        match named {
            Err(Stop::Store(error)) => Err(error),
            named => Ok((Some(id), named)),
        }
    }

    /// The target's tag and reference: a `content` target's are made of the
    /// source's id and bound now. `None`: another target is working on the
    /// same reference (or the job was cancelled), and this one goes back to
    /// the queue untouched.
    async fn tag_and_reference(&self, source_id: &str) -> anyhow::Result<Option<(String, String)>> {
        let target = self.target;
        match (&target.tag, &target.reference) {
            (Some(tag), Some(reference)) => Ok(Some((tag.clone(), reference.clone()))),
            _ if target.strategy == TagStrategy::Content => {
                let tag = content_tag(source_id);
                let reference = target_reference(
                    &target.repo,
                    target.repo_mode,
                    target.image_name.as_deref(),
                    &tag,
                );
                match self
                    .ctx
                    .store
                    .bind_reference(&target.claim, &tag, &reference)
                    .await?
                {
                    Bound::Bound => Ok(Some((tag, reference))),
                    Bound::Busy | Bound::Cancelled => Ok(None),
                }
            }
            _ => anyhow::bail!("target {} has no reference", target.id),
        }
    }

    /// What comes before anything is written: the reference in the job's
    /// registry and that registry allowed, the credentials, and werf's
    /// up-to-date rule unless the target is forced (`signature` is the
    /// content signature the image gets; `platforms`, for an index, those
    /// its images are of). `Err` is how the run ends instead (not allowed,
    /// already published, no credentials, a cancel).
    async fn before_writing(
        &self,
        reference: &str,
        signature: &str,
        platforms: Option<&[Platform]>,
    ) -> anyhow::Result<Result<RegistryAuth, Finish>> {
        if let Err(message) = self.check_registry(reference) {
            return conclude(Err(Stop::Failed(message)), Vec::new()).map(Err);
        }
        let auth = match self.auth().await {
            Ok(auth) => auth,
            Err(message) => return conclude(Err(Stop::Failed(message)), Vec::new()).map(Err),
        };
        if !self.target.force
            && let Some(remote) = self
                .up_to_date(reference, signature, platforms, &auth)
                .await
        {
            info!(digest = %remote.digest, "registry already up to date; not published again");
            let outcome = TargetOutcome::Succeeded {
                digest: remote.digest,
                image_id: Some(remote.image_id),
                up_to_date: true,
                published_via: None,
            };
            return Ok(Err(Finish::Done {
                outcome,
                warnings: Vec::new(),
            }));
        }
        if let Some(stop) = self.signals.interruption() {
            return conclude(Err(stop), Vec::new()).map(Err);
        }
        Ok(Ok(auth))
    }

    /// The submission checked the job's registry against `--allow-registry`;
    /// checked again on the reference itself as the engine and the registry
    /// will read it, since the list may have changed since and a reference
    /// read in another registry than the job's must never be pushed.
    fn check_registry(&self, reference: &str) -> Result<(), String> {
        let registry = Repository::of(reference)
            .map(|repository| repository.registry)
            .ok_or_else(|| format!("{reference} is not a valid reference"))?;
        if registry != self.repository.registry {
            return Err(format!(
                "{reference} is in the registry {registry}, not the job's {}",
                self.repository.registry
            ));
        }
        if !self.ctx.allow_registry.matches(&registry) {
            return Err(format!(
                "forbidden: publishd does not publish to {registry} (not in --allow-registry)"
            ));
        }
        Ok(())
    }

    /// Whether the submitter's scope lets the job read `repository` (a
    /// source, or where layers are mounted from): its `read_repos`, kept
    /// with the job.
    fn may_read(&self, repository: &Repository) -> bool {
        Patterns::new(&self.target.read_repos)
            .is_ok_and(|read_repos| read_repos.matches(&repository.to_string()))
    }

    /// The job's own credentials if it brought some, else the docker config's
    /// for the job's registry.
    async fn auth(&self) -> Result<RegistryAuth, String> {
        if self.target.has_registry_auth {
            return self
                .ctx
                .job_credentials
                .get(self.target.job_id)
                .ok_or_else(|| {
                    "the job's registry credentials were lost when publishd restarted (they are \
                 never stored): resubmit the job"
                        .to_owned()
                });
        }
        if !self.target.use_service_credentials {
            // The submitter's scope does not let it use the service's own
            // credentials for this registry.
            return Ok(RegistryAuth::anonymous());
        }
        self.ctx
            .credentials
            .auth_for(&self.repository.registry)
            .await
            .map_err(|error| format!("push: {error:#}"))
    }

    /// werf's rule: a tag whose image carries the source's id as its
    /// content signature is already published; for an index, a tag holding
    /// an index of the same platforms whose images all carry it. A registry
    /// that cannot answer is no reason to fail: the push will meet (and
    /// retry) the same problem.
    async fn up_to_date(
        &self,
        reference: &str,
        signature: &str,
        platforms: Option<&[Platform]>,
        auth: &RegistryAuth,
    ) -> Option<RemoteImage> {
        let read = tokio::time::timeout(
            self.ctx.timeouts.tag,
            self.ctx.registry.image(reference, auth),
        );
        let read = tokio::select! {
            read = read => read,
            // The caller sees the cancel right after.
            _ = self.signals.cancel.cancelled() => return None,
        };
        match read {
            Ok(Ok(Some(remote)))
                if remote.content_signature.as_deref() == Some(signature)
                    && remote.platforms.as_deref() == platforms =>
            {
                Some(remote)
            }
            Ok(Ok(_)) => None,
            Ok(Err(error)) => {
                warn!(error = %cut(&error.to_string(), LOG_LIMIT), "up-to-date check failed; pushing");
                None
            }
            Err(_) => {
                warn!("up-to-date check timed out; pushing");
                None
            }
        }
    }

    async fn push_and_verify(&self, reference: &str, auth: &RegistryAuth) -> Result<String, Stop> {
        let ctx = self.ctx;
        // Followers get a few updates a second, and the last one.
        let last_report = std::sync::Mutex::new(None::<(Instant, PushProgress)>);
        let report = |progress: PushProgress| {
            let mut last = last_report.lock().unwrap_or_else(|p| p.into_inner());
            let finished = progress.bytes_done == progress.bytes_total;
            let due = match *last {
                None => true,
                Some((_, sent)) if sent == progress => false,
                Some((at, _)) => finished || at.elapsed() >= PROGRESS_EVERY,
            };
            if due {
                *last = Some((Instant::now(), progress));
                ctx.progress.publish(Progress {
                    job_id: self.target.job_id,
                    target: self.target.position,
                    reference: reference.to_owned(),
                    bytes_done: progress.bytes_done,
                    bytes_total: progress.bytes_total,
                });
            }
        };
        let digest = self
            .step("push", ctx.timeouts.push, OnCancel::Interrupt, || async {
                *last_report.lock().unwrap_or_else(|p| p.into_inner()) = None;
                let pushed = ctx.engine.push(reference, auth, &report).await;
                // What each try uploaded counts, a failed one's too.
                ctx.metrics.pushed(uploaded(&last_report));
                pushed.map_err(|error| {
                    let mut failure = Failure::from(error);
                    if failure.kind == FailureKind::Permanent && auth.is_anonymous() {
                        let host = &self.repository.registry;
                        let why = if self.target.use_service_credentials {
                            format!("no credentials for {host} in the docker config")
                        } else {
                            format!(
                                "the submitter's scope does not allow publishd's own \
                                 credentials for {host}; the job may bring registry_auth"
                            )
                        };
                        failure.message = format!("{} ({why})", failure.message);
                    }
                    failure
                })
            })
            .await?;
        info!(%digest, bytes = uploaded(&last_report), "pushed");
        self.verify(reference, &digest, auth, "the engine pushed")
            .await?;
        Ok(digest)
    }

    /// Reads the tag back: the registry, not the writer's report, is the
    /// truth. The image is published now, so a cancel no longer stops it.
    async fn verify(
        &self,
        reference: &str,
        digest: &str,
        auth: &RegistryAuth,
        writer: &str,
    ) -> Result<(), Stop> {
        let ctx = self.ctx;
        self.step("verify", ctx.timeouts.tag, OnCancel::Ignore, || async {
            match ctx.registry.digest(reference, auth).await? {
                Some(served) if served == digest => Ok(()),
                Some(served) => Err(Failure::permanent(format!(
                    "the registry serves {served} for {reference}, {writer} {digest}"
                ))),
                None => Err(Failure {
                    kind: FailureKind::Transient,
                    message: format!("{reference} is not in the registry right after its push"),
                }),
            }
        })
        .await
    }

    /// Writes an image or index under `reference` registry-side (`write`
    /// is one try of it) and reads it back. `Ok(None)`: a layer could not
    /// be mounted into the reference's repository, nothing was tagged, and
    /// the engine path is to publish the target. Store failures abort the
    /// run.
    async fn write_registry_side<Write, Fut>(
        &self,
        reference: &str,
        auth: &RegistryAuth,
        write: Write,
    ) -> anyhow::Result<Result<Option<String>, Stop>>
    where
        Write: Fn() -> Fut,
        Fut: Future<Output = Result<Written, RegistryError>>,
    {
        let ctx = self.ctx;
        ctx.store
            .set_step(&self.target.claim, TargetStatus::Pushing)
            .await?;
        let written = self
            .step("push", ctx.timeouts.push, OnCancel::Interrupt, || async {
                Ok(write().await?)
            })
            .await;
        let digest = match written {
            Ok(Written::Published { digest }) => digest,
            Ok(Written::MountRefused { layer, why }) => {
                info!(%layer, why = %cut(&why, LOG_LIMIT), "layer not mountable; publishing through the engine");
                ctx.store
                    .set_step(&self.target.claim, TargetStatus::Tagging)
                    .await?;
                return Ok(Ok(None));
            }
            Err(Stop::Store(error)) => return Err(error),
            Err(stop) => return Ok(Err(stop)),
        };
        match self
            .verify(reference, &digest, auth, "publishd wrote")
            .await
        {
            Ok(()) => Ok(Ok(Some(digest))),
            Err(Stop::Store(error)) => Err(error),
            Err(stop) => Ok(Err(stop)),
        }
    }

    /// Records the seed the engine's push (as `digest`, into `repository`)
    /// left: the manifest and config the registry holds, if publishd can
    /// write siblings from them (`sibling`). One it cannot use marks the
    /// key unseedable, so its further targets go through the engine at once;
    /// not being able to read it only means they do for now.
    async fn record_seed(
        &self,
        key: &SeedKey,
        repository: &str,
        digest: &str,
        made: &MadeBy<'_>,
        auth: &RegistryAuth,
    ) -> anyhow::Result<()> {
        let ctx = self.ctx;
        let pushed = format!("{}/{repository}@{digest}", key.registry);
        let read =
            tokio::time::timeout(ctx.timeouts.tag, ctx.registry.source_image(&pushed, auth)).await;
        match read {
            Ok(Ok(Some(pushed))) => {
                // An index read back (what the containerd store pushes for
                // a multi-platform or attested source) is no template of
                // one image: its targets stay on the engine path.
                let seed = match pushed {
                    Source::Image(image) => made.seed(image, repository),
                    Source::Index(_) => None,
                };
                match seed {
                    Some(seed) => ctx.store.record_seed(key, &seed).await?,
                    None => {
                        info!(%digest, "the pushed image is not one publishd writes siblings of; its further targets go through the engine");
                        ctx.seed_turns.unseedable(key);
                    }
                }
            }
            Ok(Ok(None)) => {
                warn!(%digest, "the pushed manifest is not in the registry; no seed recorded")
            }
            Ok(Err(error)) if error.kind == FailureKind::Permanent => {
                info!(error = %cut(&error.to_string(), LOG_LIMIT), "the pushed image is not one publishd writes siblings of; its further targets go through the engine");
                ctx.seed_turns.unseedable(key);
            }
            Ok(Err(error)) => {
                warn!(error = %cut(&error.to_string(), LOG_LIMIT), "reading the pushed image failed; no seed recorded")
            }
            Err(_) => warn!("reading the pushed image timed out; no seed recorded"),
        }
        Ok(())
    }

    /// Runs one step with its timeout and retries (see `tries`), and times
    /// it for the step duration metric. The lookups before the tag (the
    /// source, the engine, what the reference names) and the naming after a
    /// build go through `tries` alone, so the metric counts one tag, push,
    /// verify and untag per run.
    async fn step<T, Op, Fut>(
        &self,
        step: &'static str,
        limit: Duration,
        on_cancel: OnCancel,
        op: Op,
    ) -> Result<T, Stop>
    where
        Op: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let started = Instant::now();
        let result = self.tries(step, limit, on_cancel, op).await;
        let outcome = match &result {
            Ok(_) => StepOutcome::Succeeded,
            Err(Stop::Failed(_)) => StepOutcome::Failed,
            Err(Stop::Cancelled) => StepOutcome::Cancelled,
            Err(Stop::ShuttingDown | Stop::LeaseLost | Stop::Store(_)) => StepOutcome::Abandoned,
        };
        self.ctx
            .metrics
            .step_finished(step, outcome, started.elapsed());
        result
    }

    /// The tries of one step with its timeout, as the retry policy allows:
    /// transient failures up to the policy's attempts, outages until the
    /// outage limit, permanent failures never. Every failed try is recorded
    /// on the target. `on_cancel` says what a cancel of the job does to it.
    async fn tries<T, Op, Fut>(
        &self,
        step: &'static str,
        limit: Duration,
        on_cancel: OnCancel,
        mut op: Op,
    ) -> Result<T, Stop>
    where
        Op: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let policy = self.ctx.retry;
        let never = CancellationToken::new();
        let (mid_try, between_tries) = match on_cancel {
            OnCancel::Interrupt => (self.signals.cancel, self.signals.cancel),
            OnCancel::BetweenTries => (&never, self.signals.cancel),
            OnCancel::Ignore => (&never, &never),
        };
        let (mut tries, mut outage_waits) = (0u32, 0u32);
        let (mut transient_since, mut outage_since): (Option<Instant>, Option<Instant>) =
            (None, None);
        loop {
            let attempt = async {
                match tokio::time::timeout(limit, op()).await {
                    Ok(result) => result,
                    Err(_) => Err(Failure {
                        kind: FailureKind::Transient,
                        message: format!("timed out after {}s", limit.as_secs_f64()),
                    }),
                }
            };
            let failure = tokio::select! {
                // A try that has finished counts, even if a cancel came in
                // the same instant: a push that completed was published.
                biased;
                result = attempt => match result {
                    Ok(value) => return Ok(value),
                    Err(failure) => failure,
                },
                _ = self.signals.lease_lost.cancelled() => return Err(Stop::LeaseLost),
                _ = mid_try.cancelled() => return Err(Stop::Cancelled),
            };
            let retry_number = match failure.kind {
                FailureKind::Permanent => None,
                FailureKind::Transient => {
                    // The count is a floor; the time budget lets a pipeline
                    // wait out a flaky registry rather than fail.
                    let since = *transient_since.get_or_insert_with(Instant::now);
                    tries += 1;
                    (tries < policy.attempts || since.elapsed() < policy.max_elapsed)
                        .then_some(tries)
                }
                FailureKind::Outage => {
                    let since = *outage_since.get_or_insert_with(Instant::now);
                    outage_waits += 1;
                    (since.elapsed() < policy.outage_limit).then_some(outage_waits)
                }
            };
            let message = format!("{step}: {}", failure.message);
            self.ctx
                .store
                .record_failed_attempt(&self.target.claim, step, &message, retry_number.is_some())
                .await
                .map_err(Stop::Store)?;
            let Some(retry_number) = retry_number else {
                let message = match failure.kind {
                    FailureKind::Transient => format!(
                        "{message} (gave up after {tries} tries in {}s)",
                        transient_since.map_or(0, |since| since.elapsed().as_secs())
                    ),
                    FailureKind::Outage => format!(
                        "{message} (gave up after waiting {}s for it)",
                        policy.outage_limit.as_secs()
                    ),
                    FailureKind::Permanent => message,
                };
                return Err(Stop::Failed(message));
            };
            self.ctx.metrics.retried(failure.kind);
            let wait = policy.backoff(retry_number, fastrand::f64());
            warn!(message = %cut(&message, LOG_LIMIT), ?wait, "step failed; retrying");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.signals.lease_lost.cancelled() => return Err(Stop::LeaseLost),
                _ = between_tries.cancelled() => return Err(Stop::Cancelled),
                _ = self.signals.stop.cancelled() => return Err(Stop::ShuttingDown),
            }
        }
    }
}

/// How the engine path made the image whose push may become a seed.
struct MadeBy<'a> {
    method: TagMethod,
    source: &'a SourceImage,
    labels: &'a BTreeMap<String, String>,
}

impl MadeBy<'_> {
    /// `pushed` (the engine's push, read back) as a seed, if publishd can
    /// write siblings from it: on the load method the engine pushed the
    /// very config publishd loaded, on the build method the build's record
    /// of its labels can be rewritten (`LabelledImage::relabelled`); one
    /// layer per diff id either way.
    fn seed(&self, pushed: SourceManifest, repository: &str) -> Option<Seed> {
        let ours = match self.method {
            TagMethod::Load => {
                LabelledImage::new(self.source, self.labels).config() == pushed.config.as_slice()
            }
            TagMethod::Build | TagMethod::Auto => {
                LabelledImage::relabelled(&pushed.config, self.labels).is_some()
            }
        };
        if !ours || pushed.layers.len() != self.source.layer_count {
            return None;
        }
        Some(Seed {
            manifest: String::from_utf8(pushed.manifest).ok()?,
            media_type: pushed.media_type,
            config: String::from_utf8(pushed.config).ok()?,
            layers: pushed.layers,
            repository: repository.to_owned(),
        })
    }
}

/// The labelled image of a sibling of the seed's target, labelled
/// `labels`: on the load method the config the engine path loads (so the
/// registry-side target's digest is the engine path's), on the build
/// method the seed's build relabelled (the builder's config but for its
/// time). `None` when the seed cannot make one.
fn sibling(
    method: TagMethod,
    source: &SourceImage,
    labels: &BTreeMap<String, String>,
    seed: &Seed,
) -> Option<LabelledImage> {
    if seed.layers.len() != source.layer_count {
        return None;
    }
    match method {
        TagMethod::Load => Some(LabelledImage::new(source, labels)),
        TagMethod::Build | TagMethod::Auto => {
            LabelledImage::relabelled(seed.config.as_bytes(), labels)
        }
    }
}

/// The seed's manifest, as the template a registry-side write follows.
fn template(seed: &Seed) -> SourceManifest {
    let digest = |bytes: &[u8]| format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
    SourceManifest {
        digest: digest(seed.manifest.as_bytes()),
        media_type: seed.media_type.clone(),
        manifest: seed.manifest.clone().into_bytes(),
        config: seed.config.clone().into_bytes(),
        config_digest: digest(seed.config.as_bytes()),
        layers: seed.layers.clone(),
        platform: serde_json::from_str(&seed.config)
            .ok()
            .as_ref()
            .and_then(Platform::from_json),
    }
}

/// Leaves `reference` as it was before the tag step: removes it if it names
/// the image we made, and points it back at the user's own image if it named
/// one; removes the build's temporary name. Never removes any other name.
pub async fn restore_reference(
    engine: &dyn Engine,
    reference: &str,
    created_image_id: Option<&str>,
    prior_image_id: Option<&str>,
    staging_reference: Option<&str>,
) -> Result<(), EngineError> {
    if let Some(staging) = staging_reference {
        engine.remove_reference(staging).await?;
    }
    let Some(created_image_id) = created_image_id else {
        // Nothing was made under the reference itself.
        return Ok(());
    };
    if prior_image_id == Some(created_image_id) {
        // The user already had this very image under this name.
        return Ok(());
    }
    if engine.image_id(reference).await?.as_deref() == Some(created_image_id) {
        engine.remove_reference(reference).await?;
    }
    if let Some(prior) = prior_image_id
        && engine.image_id(reference).await?.as_deref() != Some(prior)
    {
        engine.tag_image(prior, reference).await?;
    }
    Ok(())
}

/// The bytes the last reported progress of a push had uploaded.
fn uploaded(last_report: &std::sync::Mutex<Option<(Instant, PushProgress)>>) -> u64 {
    last_report
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .map_or(0, |(_, progress)| progress.bytes_done)
}
