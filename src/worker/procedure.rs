//! The publish procedure for one target: tag -> push -> untag, with its
//! clean-up guarantees. The only code that drives the engine for a job.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::domain::labels::{LabelInput, werf_labels};
use crate::domain::naming::{registry_host, target_reference};
use crate::domain::spec::TagStrategy;
use crate::domain::status::TargetStatus;
use crate::engine::{Engine, EngineError, LabelledImage};
use crate::store::{ClaimedTarget, TargetOutcome};

use super::WorkerContext;

/// How long each step may take.
#[derive(Debug, Clone, Copy)]
pub struct StepTimeouts {
    /// Inspecting the source and making the labelled image.
    pub tag: Duration,
    pub push: Duration,
    pub untag: Duration,
}

/// How a run of the procedure ended.
pub enum Finish {
    Done {
        outcome: TargetOutcome,
        warnings: Vec<String>,
    },
    /// Another target is working on the same reference: the target went back
    /// to the queue untouched.
    Deferred,
}

/// Runs one claimed target. Store failures abort the run (the target is then
/// recovered like after a crash); every engine or registry failure becomes
/// the target's outcome.
pub async fn run(
    ctx: &WorkerContext,
    target: &ClaimedTarget,
    cancel: &CancellationToken,
) -> anyhow::Result<Finish> {
    let engine = ctx.engine.as_ref();
    let timeouts = ctx.timeouts;
    let failed = |error: String| Finish::Done {
        outcome: TargetOutcome::Failed { error },
        warnings: Vec::new(),
    };

    let source = match bounded(timeouts.tag, engine.inspect_image(&target.source)).await {
        Ok(Some(source)) => source,
        Ok(None) => {
            return Ok(failed(format!(
                "source image {:?} does not exist on the docker engine",
                target.source
            )));
        }
        Err(error) => return Ok(failed(format!("tag: inspecting the source image: {error}"))),
    };
    ctx.store.record_source_image(target.id, &source.id).await?;

    let (tag, reference) = match (&target.tag, &target.reference) {
        (Some(tag), Some(reference)) => (tag.clone(), reference.clone()),
        _ if target.strategy == TagStrategy::Content => {
            let tag = source.id.trim_start_matches("sha256:").to_owned();
            let reference = target_reference(
                &target.repo,
                target.repo_mode,
                target.image_name.as_deref(),
                &tag,
            );
            if !ctx
                .store
                .bind_reference(target.id, &tag, &reference)
                .await?
            {
                return Ok(Finish::Deferred);
            }
            (tag, reference)
        }
        _ => anyhow::bail!("target {} has no reference", target.id),
    };
    if cancel.is_cancelled() {
        return Ok(Finish::Done {
            outcome: TargetOutcome::Cancelled,
            warnings: Vec::new(),
        });
    }

    // Tag. What the reference named before is recorded first, and the new
    // image's id (known before the engine sees it) next, so that a crash at
    // any point can be undone.
    let prior = match bounded(timeouts.tag, engine.image_id(&reference)).await {
        Ok(prior) => prior,
        Err(error) => return Ok(failed(format!("tag: inspecting {reference}: {error}"))),
    };
    ctx.store
        .record_prior_image(target.id, prior.as_deref())
        .await?;
    let labels = werf_labels(&LabelInput {
        reference: &reference,
        strategy: target.strategy,
        image_name: target.image_name.as_deref(),
        tag: &tag,
        source_image_id: &source.id,
    });
    let image = LabelledImage::new(&source, &labels);
    ctx.store.record_created_image(target.id, &image.id).await?;
    let tagged = bounded(timeouts.tag, engine.load_image(&image, &reference)).await;

    let outcome = match tagged {
        Err(error) => TargetOutcome::Failed {
            error: format!("tag: {error}"),
        },
        Ok(()) if cancel.is_cancelled() => TargetOutcome::Cancelled,
        Ok(()) => {
            info!(image_id = %image.id, "tagged");
            ctx.store.set_step(target.id, TargetStatus::Pushing).await?;
            push(ctx, &reference, cancel).await
        }
    };

    // Untag, whatever happened above.
    ctx.store
        .set_step(target.id, TargetStatus::Untagging)
        .await?;
    let mut warnings = Vec::new();
    let restored = bounded(
        timeouts.untag,
        restore_reference(engine, &reference, &image.id, prior.as_deref()),
    )
    .await;
    if let Err(error) = restored {
        warn!(%error, "untag failed");
        warnings.push(format!("untag: {error}"));
    }
    Ok(Finish::Done { outcome, warnings })
}

async fn push(ctx: &WorkerContext, reference: &str, cancel: &CancellationToken) -> TargetOutcome {
    let Some(registry) = registry_host(reference) else {
        return TargetOutcome::Failed {
            error: format!("push: no registry in {reference}"),
        };
    };
    let auth = match ctx.credentials.auth_for(&registry).await {
        Ok(auth) => auth,
        Err(error) => {
            return TargetOutcome::Failed {
                error: format!("push: {error:#}"),
            };
        }
    };
    // Dropping the push future drops the engine's stream, which stops the push.
    tokio::select! {
        _ = cancel.cancelled() => TargetOutcome::Cancelled,
        pushed = bounded(ctx.timeouts.push, ctx.engine.push(reference, &auth)) => match pushed {
            Ok(digest) => {
                info!(%digest, "pushed");
                TargetOutcome::Succeeded { digest }
            }
            Err(error) => TargetOutcome::Failed { error: push_error(error, &registry, auth.is_anonymous()) },
        },
    }
}

/// Adds what a pipeline needs to fix an authentication failure.
fn push_error(error: StepError, registry: &str, anonymous: bool) -> String {
    let message = error.to_string();
    let denied = [
        "unauthorized",
        "authentication required",
        "denied",
        "no basic auth credentials",
    ]
    .iter()
    .any(|word| message.to_lowercase().contains(word));
    if denied && anonymous {
        format!("push: {message} (no credentials for {registry} in the docker config)")
    } else {
        format!("push: {message}")
    }
}

/// Leaves `reference` as it was before the tag step: removes it if it names
/// the image we made, and points it back at the user's own image if it named
/// one. Never removes any other name.
pub async fn restore_reference(
    engine: &dyn Engine,
    reference: &str,
    created_image_id: &str,
    prior_image_id: Option<&str>,
) -> Result<(), EngineError> {
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

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
}

async fn bounded<T>(
    limit: Duration,
    step: impl Future<Output = Result<T, EngineError>>,
) -> Result<T, StepError> {
    match tokio::time::timeout(limit, step).await {
        Ok(result) => result.map_err(StepError::from),
        Err(_) => Err(StepError::TimedOut(limit)),
    }
}
