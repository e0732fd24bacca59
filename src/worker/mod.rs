//! The worker pool: lanes that claim targets from the store and run the
//! publish procedure on them, recovery after a crash, and graceful shutdown.

mod cancellations;
pub mod procedure;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

pub use cancellations::Cancellations;
pub use procedure::StepTimeouts;

use crate::credentials::{DockerConfig, JobCredentials};
use crate::domain::retry::RetryPolicy;
use crate::engine::{Engine, TagMethod};
use crate::registry::Registry;
use crate::store::{ClaimedTarget, LEASE, Store};
use procedure::{Finish, Signals, restore_reference};

/// Everything a lane needs.
pub struct WorkerContext {
    pub store: Store,
    pub engine: Arc<dyn Engine>,
    pub registry: Arc<dyn Registry>,
    pub credentials: DockerConfig,
    pub job_credentials: JobCredentials,
    pub cancellations: Cancellations,
    pub timeouts: StepTimeouts,
    pub retry: RetryPolicy,
    /// How the tag step makes the labelled image (`auto`: by the engine's store).
    pub tag_method: TagMethod,
    /// Runs a target may start without finishing before it is dead-lettered.
    pub max_target_runs: u32,
    /// How long targets of a job whose credentials a restart lost wait for
    /// the job to be resubmitted.
    pub credential_wait: Duration,
}

/// How often an idle lane looks for work it was not woken for.
const IDLE_POLL: Duration = Duration::from_millis(500);

/// A running pool; `shutdown` stops it.
pub struct WorkerPool {
    lanes: JoinSet<()>,
    stop: CancellationToken,
}

impl WorkerPool {
    /// Recovers targets a dead process left mid-step, then starts `lanes`
    /// lanes. `wake` is notified when new work is queued.
    pub fn start(ctx: Arc<WorkerContext>, lanes: usize, wake: Arc<Notify>) -> WorkerPool {
        let stop = CancellationToken::new();
        let mut set = JoinSet::new();
        // Cancelled once recovery is done: lanes wait for it before claiming.
        let recovered = CancellationToken::new();
        {
            let (ctx, stop, recovered) = (ctx.clone(), stop.clone(), recovered.clone());
            set.spawn(async move {
                recover(&ctx, &stop).await;
                recovered.cancel();
                reap_expired_leases(&ctx, &stop).await;
            });
        }
        for lane in 0..lanes {
            let (ctx, stop, wake, recovered) =
                (ctx.clone(), stop.clone(), wake.clone(), recovered.clone());
            set.spawn(async move {
                tokio::select! {
                    _ = recovered.cancelled() => {}
                    _ = stop.cancelled() => return,
                }
                run_lane(&ctx, &stop, &wake)
                    .instrument(info_span!("lane", lane))
                    .await;
            });
        }
        WorkerPool { lanes: set, stop }
    }

    /// Stops claiming and lets the steps under way finish, for at most
    /// `grace`; a target still running then is left to the next start's
    /// recovery.
    pub async fn shutdown(mut self, grace: Duration) {
        self.stop.cancel();
        let drained = tokio::time::timeout(grace, async {
            while self.lanes.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                ?grace,
                "targets still running after the grace period; the next start recovers them"
            );
            self.lanes.abort_all();
            // Wait for the aborted tasks to be dropped, so that nothing of
            // this pool (the store's lock among it) outlives it.
            while self.lanes.join_next().await.is_some() {}
        }
    }
}

async fn run_lane(ctx: &WorkerContext, stop: &CancellationToken, wake: &Notify) {
    while !stop.is_cancelled() {
        match ctx.store.claim_target().await {
            Ok(Some(target)) => {
                process(ctx, target, stop).await;
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
                tokio::time::sleep(Duration::from_secs(1)).await;
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
        let signals = Signals {
            cancel: guard.token(),
            stop,
        };
        let run = procedure::run(ctx, &target, signals);
        tokio::pin!(run);
        let mut renewal = tokio::time::interval(LEASE / 3);
        renewal.tick().await;
        let finish = loop {
            tokio::select! {
                finish = &mut run => break finish,
                _ = renewal.tick() => {
                    if let Err(error) = ctx.store.renew_lease(target.id).await {
                        warn!(error = format!("{error:#}"), "renewing the lease failed");
                    }
                }
            }
        };
        match finish {
            Ok(Finish::Done { outcome, warnings }) => {
                info!(?outcome, "finished");
                match ctx
                    .store
                    .finish_target(target.id, &outcome, &warnings)
                    .await
                {
                    Ok(status) if status.is_terminal() => ctx.job_credentials.remove(target.job_id),
                    Ok(_) => {}
                    Err(error) => {
                        error!(error = format!("{error:#}"), "recording the outcome failed");
                    }
                }
            }
            Ok(Finish::Deferred) => info!("reference busy; back in the queue"),
            Ok(Finish::Release) => {
                info!("stopping: back in the queue for the next start");
                if let Err(error) = ctx.store.release_target(target.id).await {
                    error!(error = format!("{error:#}"), "releasing the target failed");
                }
            }
            Ok(Finish::Abandon) => warn!("stopping mid-step: the next start recovers this target"),
            Err(error) => {
                error!(
                    error = format!("{error:#}"),
                    "run aborted by a store failure"
                );
                // Undo what the run left on the engine, as after a crash.
                if let Err(error) = recover_target(ctx, target.id).await {
                    error!(
                        error = format!("{error:#}"),
                        "the next start recovers this target"
                    );
                }
            }
        }
    }
    .instrument(span)
    .await
}

/// Targets found mid-step belong to a process that died: undo what their
/// tag step left on the engine, then queue them again. Retries until the
/// engine answers, since claiming before that could clobber a user's image.
async fn recover(ctx: &WorkerContext, stop: &CancellationToken) {
    let mut delay = Duration::from_millis(500);
    loop {
        match recover_once(ctx).await {
            Ok(0) => return,
            Ok(count) => {
                info!(
                    count,
                    "recovered targets left running by a previous process"
                );
                return;
            }
            Err(error) => {
                warn!(
                    error = format!("{error:#}"),
                    ?delay,
                    "recovery failed; retrying"
                );
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

async fn recover_once(ctx: &WorkerContext) -> anyhow::Result<usize> {
    let ids = ctx.store.in_flight_targets().await?;
    for id in &ids {
        recover_target(ctx, *id).await?;
    }
    Ok(ids.len())
}

/// Recovers targets whose lane stopped renewing its lease (a lane that
/// panicked, or was aborted), as often as leases are renewed.
async fn reap_expired_leases(ctx: &WorkerContext, stop: &CancellationToken) {
    let mut tick = tokio::time::interval(LEASE / 3);
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
        for id in expired {
            warn!(target_id = id, "lease expired; recovering the target");
            if let Err(error) = recover_target(ctx, id).await {
                warn!(
                    error = format!("{error:#}"),
                    "recovering an expired target failed"
                );
            }
        }
    }
}

/// Undoes what a run of the target left on the engine and queues it again.
async fn recover_target(ctx: &WorkerContext, id: i64) -> anyhow::Result<()> {
    let target = ctx.store.claimed_target(id).await?;
    let made_something = target.created_image_id.is_some() || target.staging_reference.is_some();
    if let (Some(reference), true) = (&target.reference, made_something) {
        let span = info_span!("recover", job_id = %target.job_id, reference = %reference);
        async {
            info!("undoing what an interrupted run left on the engine");
            restore_reference(
                ctx.engine.as_ref(),
                reference,
                target.created_image_id.as_deref(),
                target.prior_image_id.as_deref(),
                target.staging_reference.as_deref(),
            )
            .await
        }
        .instrument(span)
        .await?;
    }
    ctx.store.release_target(id).await?;
    Ok(())
}
