//! The worker pool: lanes that claim targets from the store and run the
//! publish procedure on them, leases that fence a lane that lost its claim,
//! recovery after a crash, a lane or a lease is lost, and graceful shutdown.

mod cancellations;
pub mod procedure;
mod seed_turns;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{Instrument, error, info, info_span, warn};

pub use cancellations::Cancellations;
pub use procedure::StepTimeouts;

use crate::credentials::{DockerConfig, JobCredentials};
use crate::domain::access::Patterns;
use crate::domain::publish_via::PublishVia;
use crate::domain::retry::RetryPolicy;
use crate::domain::text::cut;
use crate::engine::{Engine, EngineError, TagMethod};
use crate::metrics::Metrics;
use crate::progress::ProgressHub;
use crate::registry::Registry;
use crate::store::{
    Claim, ClaimLost, ClaimedTarget, Release, Released, Store, TakeOver, TargetOutcome,
};
use procedure::{Finish, Signals, restore_reference};
pub use seed_turns::SeedTurns;

/// Everything a lane needs.
pub struct WorkerContext {
    pub store: Store,
    pub engine: Arc<dyn Engine>,
    pub registry: Arc<dyn Registry>,
    pub credentials: DockerConfig,
    /// Registry hosts the operator allows (`--allow-registry`), checked
    /// again on each reference before anything is pushed or written.
    pub allow_registry: Arc<Patterns>,
    pub job_credentials: JobCredentials,
    pub cancellations: Cancellations,
    pub timeouts: StepTimeouts,
    pub retry: RetryPolicy,
    /// How the tag step makes the labelled image (`auto`: by the engine's store).
    pub tag_method: TagMethod,
    /// Which ways targets may take unless their job says (`--publish-via`).
    pub publish_via: PublishVia,
    /// Runs a target may start without finishing before it is dead-lettered.
    pub max_target_runs: u32,
    /// How long targets of a job whose credentials a restart lost wait for
    /// the job to be resubmitted.
    pub credential_wait: Duration,
    /// Where push progress goes, for the event streams.
    pub progress: ProgressHub,
    pub metrics: Metrics,
    /// Which run makes the seed of a source, and who waits for it.
    pub seed_turns: SeedTurns,
    /// How long a claim holds without being renewed. A lane renews it every
    /// third of that; one that cannot stops its work a third before it ends,
    /// so the run that takes the target over never meets it.
    pub lease: Duration,
}

/// Most bytes of a peer's message written to one log line: a registry that
/// answers megabytes cannot fill the log.
const LOG_LIMIT: usize = 2048;

/// How often an idle lane looks for work it was not woken for.
const IDLE_POLL: Duration = Duration::from_millis(500);
/// How soon a target waiting for a seed is claimed again if nothing woke it
/// (the run making the seed died with its process).
const SEED_RECHECK: Duration = Duration::from_secs(5);
/// How soon a target waiting for its job's credentials is looked at again.
const CREDENTIAL_RECHECK: Duration = Duration::from_secs(5);

/// The claim a lane is working on, for its supervisor to recover if the
/// lane dies.
type LaneSlot = Arc<Mutex<Option<Claim>>>;

/// A running pool; `shutdown` stops it.
pub struct WorkerPool {
    supervisor: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
    /// Past the grace period: abort what still runs.
    abort: CancellationToken,
}

impl WorkerPool {
    /// Recovers targets a dead process left mid-step, then starts `lanes`
    /// lanes, replacing any that dies. `wake` is notified when new work is
    /// queued.
    pub fn start(ctx: Arc<WorkerContext>, lanes: usize, wake: Arc<Notify>) -> WorkerPool {
        let stop = CancellationToken::new();
        let abort = CancellationToken::new();
        let supervisor = tokio::spawn(supervise(ctx, lanes, wake, stop.clone(), abort.clone()));
        WorkerPool {
            supervisor,
            stop,
            abort,
        }
    }

    /// Stops claiming and lets the steps under way finish, for at most
    /// `grace`; a target still running then is left to the next start's
    /// recovery.
    pub async fn shutdown(mut self, grace: Duration) {
        self.stop.cancel();
        if tokio::time::timeout(grace, &mut self.supervisor)
            .await
            .is_err()
        {
            warn!(
                ?grace,
                "targets still running after the grace period; the next start recovers them"
            );
            self.abort.cancel();
            // The supervisor waits for the aborted lanes to be dropped, so
            // that nothing of this pool (the store's lock among it) outlives it.
            let _ = self.supervisor.await;
        }
    }
}

/// Runs recovery, then the lanes; a lane that panics is replaced after its
/// target is recovered.
async fn supervise(
    ctx: Arc<WorkerContext>,
    lanes: usize,
    wake: Arc<Notify>,
    stop: CancellationToken,
    abort: CancellationToken,
) {
    let mut tasks = JoinSet::new();
    {
        let (ctx, stop) = (ctx.clone(), stop.clone());
        tasks.spawn(async move { reap_expired_leases(&ctx, &stop).await });
    }
    // No lane claims before recovery: claiming first could clobber a
    // user's image that a dead run's undo must put back.
    tokio::select! {
        _ = recover(&ctx, &stop) => {}
        _ = abort.cancelled() => {}
    }
    // Which lane a task is, and its slot, kept beside the JoinSet: a task
    // that panics yields only its id.
    let mut lane_of: HashMap<tokio::task::Id, (usize, LaneSlot)> = HashMap::new();
    if !stop.is_cancelled() {
        for lane in 0..lanes {
            let slot = LaneSlot::default();
            let handle = spawn_lane_with(&mut tasks, &ctx, &stop, &wake, lane, slot.clone());
            lane_of.insert(handle, (lane, slot));
        }
    }
    loop {
        let joined = tokio::select! {
            joined = tasks.join_next_with_id() => joined,
            _ = abort.cancelled() => {
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                return;
            }
        };
        let Some(joined) = joined else { return };
        let id = match &joined {
            Ok((id, ())) => *id,
            Err(error) => error.id(),
        };
        let Some((lane, slot)) = lane_of.remove(&id) else {
            continue;
        };
        let Err(error) = joined else { continue };
        if !error.is_panic() {
            continue;
        }
        error!(
            lane,
            "a worker lane panicked; recovering its target and replacing it"
        );
        let claim = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(claim) = claim {
            recover_abandoned(
                &ctx,
                claim.target_id,
                TakeOver::Held {
                    token: &claim.token,
                },
                Some("its worker crashed".to_owned()),
            )
            .await;
            wake.notify_waiters();
        }
        if !stop.is_cancelled() {
            let slot = LaneSlot::default();
            let handle = spawn_lane_with(&mut tasks, &ctx, &stop, &wake, lane, slot.clone());
            lane_of.insert(handle, (lane, slot));
        }
    }
}

fn spawn_lane_with(
    tasks: &mut JoinSet<()>,
    ctx: &Arc<WorkerContext>,
    stop: &CancellationToken,
    wake: &Arc<Notify>,
    lane: usize,
    slot: LaneSlot,
) -> tokio::task::Id {
    let (ctx, stop, wake) = (ctx.clone(), stop.clone(), wake.clone());
    tasks
        .spawn(async move {
            run_lane(&ctx, &stop, &wake, &slot)
                .instrument(info_span!("lane", lane))
                .await;
        })
        .id()
}

async fn run_lane(ctx: &WorkerContext, stop: &CancellationToken, wake: &Notify, slot: &LaneSlot) {
    while !stop.is_cancelled() {
        match ctx.store.claim_target(ctx.lease).await {
            Ok(Some(target)) => {
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(target.claim.clone());
                process(ctx, target, stop).await;
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = None;
                // A finished target may unblock others waiting on its reference.
                wake.notify_waiters();
            }
            Ok(None) => {
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                    _ = stop.cancelled() => {}
                }
            }
            Err(error) => {
                error!(error = format!("{error:#}"), "claiming a target failed");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.cancelled() => {}
                }
            }
        }
    }
}

async fn process(ctx: &WorkerContext, target: ClaimedTarget, stop: &CancellationToken) {
    let span = info_span!(
        "target",
        job_id = %target.job_id,
        reference = target.reference.as_deref().unwrap_or("(content tag)"),
        attempt = target.attempts,
    );
    async {
        if target.has_registry_auth && ctx.job_credentials.get(target.job_id).is_none() {
            wait_for_credentials(ctx, &target).await;
            return;
        }
        let guard = ctx.cancellations.register(target.job_id);
        // A cancel that came before the registration is seen in the store.
        match ctx.store.cancel_requested(target.job_id).await {
            Ok(true) => guard.token().cancel(),
            Ok(false) => {}
            Err(error) => warn!(
                error = format!("{error:#}"),
                "reading the job's cancel flag"
            ),
        }
        info!("started");
        let lease_lost = CancellationToken::new();
        let signals = Signals {
            cancel: guard.token(),
            stop,
            lease_lost: &lease_lost,
        };
        // On a shared database the cancel may come through another
        // instance: only the database says so.
        // Stopped when dropped, however the run ends (a lane may panic).
        let _watcher = ctx.store.is_shared().then(|| {
            AbortOnDropHandle::new(tokio::spawn(watch_for_cancel(
                ctx.store.clone(),
                target.job_id,
                guard.token().clone(),
            )))
        });
        let run = procedure::run(ctx, &target, signals);
        let finish = keep_lease(ctx, &target.claim, &lease_lost, run).await;
        conclude_run(ctx, &target, finish).await;
    }
    .instrument(span)
    .await
}

/// How often a running target's job is checked for a cancel made through
/// another instance: the bound on how late such a cancel is seen.
const CANCEL_POLL: Duration = Duration::from_secs(1);

/// Cancels `cancel` once the job's cancel is recorded.
async fn watch_for_cancel(store: Store, job_id: uuid::Uuid, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(CANCEL_POLL);
    loop {
        tick.tick().await;
        match store.cancel_requested(job_id).await {
            Ok(true) => {
                info!("cancelled through another instance");
                cancel.cancel();
                return;
            }
            Ok(false) => {}
            Err(error) => warn!(
                error = format!("{error:#}"),
                "reading the job's cancel flag"
            ),
        }
    }
}

/// Drives `run` while renewing the claim's lease. A renewal that fails (the
/// writer is held, the disk is slow) is tried again; once the lease is
/// within a third of its end without a renewal, or the claim turns out to
/// be taken over, `lease_lost` stops the run at once: past its end the
/// target may be taken over, and the new run must not meet this one.
async fn keep_lease<T>(
    ctx: &WorkerContext,
    claim: &Claim,
    lease_lost: &CancellationToken,
    run: impl Future<Output = T>,
) -> T {
    tokio::pin!(run);
    let renew_every = ctx.lease / 3;
    let mut deadline = Instant::now() + ctx.lease;
    let mut renewal = tokio::time::interval(renew_every);
    renewal.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    renewal.tick().await;
    loop {
        tokio::select! {
            finish = &mut run => return finish,
            _ = renewal.tick(), if !lease_lost.is_cancelled() => {
                let asked = Instant::now();
                match tokio::time::timeout(renew_every, ctx.store.renew_lease(claim, ctx.lease)).await {
                    Ok(Ok(true)) => deadline = asked + ctx.lease,
                    Ok(Ok(false)) => {
                        warn!("the claim was taken over; stopping this run");
                        lease_lost.cancel();
                    }
                    Ok(Err(error)) => warn!(error = format!("{error:#}"), "renewing the lease failed"),
                    Err(_) => warn!("renewing the lease took too long"),
                }
                if !lease_lost.is_cancelled() && Instant::now() + renew_every >= deadline {
                    warn!("the lease could not be renewed; stopping this run before it ends");
                    lease_lost.cancel();
                }
            }
        }
    }
}

/// Records how a run ended, as far as its claim still holds.
async fn conclude_run(ctx: &WorkerContext, target: &ClaimedTarget, finish: anyhow::Result<Finish>) {
    let claim = &target.claim;
    match finish {
        Ok(Finish::Done { outcome, warnings }) => {
            match &outcome {
                TargetOutcome::Failed { error } => {
                    info!(error = %cut(error, LOG_LIMIT), "finished: failed")
                }
                other => info!(outcome = ?other, "finished"),
            }
            match ctx.store.finish_target(claim, &outcome, &warnings).await {
                Ok(status) if status.is_terminal() => ctx.job_credentials.remove(target.job_id),
                Ok(_) => {}
                Err(error) if ClaimLost::is(&error) => {
                    warn!("finished, but the target was taken over meanwhile: outcome not recorded")
                }
                Err(error) => {
                    error!(error = format!("{error:#}"), "recording the outcome failed");
                }
            }
        }
        Ok(Finish::AwaitSeed { key, turn }) => {
            let retry_at =
                crate::store::format_time(time::OffsetDateTime::now_utc() + SEED_RECHECK);
            match ctx.store.wait_for_seed(claim, &retry_at).await {
                Ok(()) => {
                    info!("waiting for the engine's push of its source to the registry (a seed)");
                    // The turn ended before the target was back: nobody woke it.
                    if !ctx.seed_turns.is_held(&key, turn)
                        && let Err(error) = ctx.store.wake_targets(&[target.id]).await
                    {
                        warn!(
                            error = format!("{error:#}"),
                            "waking a target that waited for a seed"
                        );
                    }
                }
                Err(error) => warn!(
                    error = format!("{error:#}"),
                    "putting the target back to wait for a seed"
                ),
            }
        }
        Ok(Finish::Deferred) => {
            info!("reference busy: back in the queue (or cancelled, if its job was)")
        }
        Ok(Finish::Release) => {
            info!("stopping: back in the queue for the next start");
            if let Err(error) = ctx.store.release_target(claim, Release::Stopped).await {
                error!(error = format!("{error:#}"), "releasing the target failed");
            }
        }
        Ok(Finish::Abandon) => warn!("stopping mid-step: the next start recovers this target"),
        // Whoever takes the target over undoes what this run left.
        Ok(Finish::LeaseLost) => warn!("lease lost: left to recovery"),
        Err(error) if ClaimLost::is(&error) => {
            warn!("the target was taken over; this run stopped without touching it again")
        }
        Err(error) => {
            error!(
                error = format!("{error:#}"),
                "run aborted by a store failure"
            );
            // Undo what the run left on the engine, as after a crash.
            recover_abandoned(
                ctx,
                claim.target_id,
                TakeOver::Held {
                    token: &claim.token,
                },
                None,
            )
            .await;
        }
    }
}

/// A target of a job whose credentials a restart lost: back to the queue to
/// wait for the job to be resubmitted with them, or failed once the wait is
/// over. Nothing is asked of the engine.
async fn wait_for_credentials(ctx: &WorkerContext, target: &ClaimedTarget) {
    let now = time::OffsetDateTime::now_utc();
    let wait_until = match target.credentials_wait_until.as_deref() {
        Some(until) => until.to_owned(),
        None => crate::store::format_time(now + ctx.credential_wait),
    };
    if crate::store::format_time(now) >= wait_until {
        let outcome = TargetOutcome::Failed {
            error: format!(
                "the job's registry credentials were lost when publishd restarted (they are \
                 never stored) and the job was not resubmitted with them within {}s: resubmit it",
                ctx.credential_wait.as_secs()
            ),
        };
        match ctx.store.finish_target(&target.claim, &outcome, &[]).await {
            Ok(status) if status.is_terminal() => ctx.job_credentials.remove(target.job_id),
            Ok(_) => {}
            Err(error) => warn!(error = format!("{error:#}"), "failing a target"),
        }
        return;
    }
    info!(%wait_until, "waiting for the job to be resubmitted with its credentials");
    let retry_at = crate::store::format_time(now + CREDENTIAL_RECHECK);
    if let Err(error) = ctx
        .store
        .wait_for_credentials(&target.claim, &wait_until, &retry_at)
        .await
    {
        warn!(
            error = format!("{error:#}"),
            "putting the target back to wait"
        );
    }
}

/// Targets found mid-step belong to a process that died: undo what their
/// tag step left on the engine, then queue them again. Waits while the
/// engine cannot be reached (claiming before could clobber a user's image);
/// any other engine error is a warning on that target, which is queued
/// again anyway, so one bad target never holds the queue.
async fn recover(ctx: &WorkerContext, stop: &CancellationToken) {
    let mut delay = Duration::from_millis(500);
    loop {
        let ids = match ctx.store.in_flight_targets().await {
            Ok(ids) => ids,
            Err(error) => {
                warn!(
                    error = format!("{error:#}"),
                    "listing targets to recover failed"
                );
                Vec::new()
            }
        };
        let mut waiting = false;
        for id in &ids {
            waiting |= !recover_abandoned(ctx, *id, TakeOver::Any, None).await;
        }
        if !waiting {
            if !ids.is_empty() {
                info!(
                    count = ids.len(),
                    "recovered targets left running by a previous process"
                );
            }
            return;
        }
        warn!(
            ?delay,
            "the engine cannot be reached; recovery waits for it"
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// Recovers targets whose lease ran out (their lane stopped renewing it),
/// as often as leases are renewed.
async fn reap_expired_leases(ctx: &WorkerContext, stop: &CancellationToken) {
    let mut tick = tokio::time::interval(ctx.lease / 3);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let expired = match ctx.store.expired_leases().await {
            Ok(expired) => expired,
            Err(error) => {
                warn!(
                    error = format!("{error:#}"),
                    "looking for expired leases failed"
                );
                continue;
            }
        };
        for (id, token) in expired {
            recover_abandoned(
                ctx,
                id,
                TakeOver::Expired { token: &token },
                Some("its lease ran out".to_owned()),
            )
            .await;
        }
    }
}

/// Takes an abandoned target over (if `condition` holds), undoes what its
/// run left on the engine as far as it can, and releases it: queued again,
/// or a dead letter after too many runs. Answers false only when the engine
/// could not be reached, leaving the target for a later try.
async fn recover_abandoned(
    ctx: &WorkerContext,
    id: i64,
    condition: TakeOver<'_>,
    why: Option<String>,
) -> bool {
    let claim = match ctx.store.take_over(id, condition, ctx.lease).await {
        Ok(Some(claim)) => claim,
        // Renewed meanwhile, finished, or already taken over: not ours.
        Ok(None) => return true,
        Err(error) => {
            warn!(
                error = format!("{error:#}"),
                target_id = id,
                "taking a target over failed"
            );
            return true;
        }
    };
    let target = match ctx.store.claimed_target(id).await {
        Ok(target) => target,
        Err(error) => {
            warn!(
                error = format!("{error:#}"),
                target_id = id,
                "reading a target to recover"
            );
            return true;
        }
    };
    let span = info_span!(
        "recover",
        job_id = %target.job_id,
        reference = target.reference.as_deref().unwrap_or("(content tag)")
    );
    async {
        // Logged here, in the span that names the job and the reference.
        if let Some(why) = &why {
            warn!(target_id = id, "recovering the target: {why}");
        }
        let mut warning = None;
        if let Some(reference) = &target.reference {
            info!("undoing what an interrupted run left on the engine");
            let undone = restore_reference(
                ctx.engine.as_ref(),
                reference,
                target.created_image_id.as_deref(),
                target.prior_image_id.as_deref(),
                target.staging_reference.as_deref(),
            )
            .await;
            match undone {
                Ok(()) => {}
                Err(EngineError::Unreachable(message)) => {
                    warn!(message = %cut(&message, LOG_LIMIT), "engine unreachable; recovery waits");
                    // Give the claim up so a later pass can take it again.
                    let _ = ctx
                        .store
                        .take_over(
                            id,
                            TakeOver::Held {
                                token: &claim.token,
                            },
                            Duration::ZERO,
                        )
                        .await;
                    return false;
                }
                Err(error) => {
                    warn!(error = %cut(&error.to_string(), LOG_LIMIT), "recovery could not undo everything");
                    warning = Some(format!(
                        "recovery after an interrupted run could not clean up the engine: {error}"
                    ));
                }
            }
        }
        let warning = match (why, warning) {
            (Some(why), Some(warning)) => Some(format!("{warning} (the run ended because {why})")),
            (_, warning) => warning,
        };
        let release = Release::Abandoned {
            warning,
            max_runs: ctx.max_target_runs,
        };
        match ctx.store.release_target(&claim, release).await {
            Ok(Released::DeadLetter) => error!("a dead letter: too many runs never finished"),
            Ok(_) => {}
            Err(error) => warn!(error = format!("{error:#}"), "releasing a recovered target"),
        }
        true
    }
    .instrument(span)
    .await
}
