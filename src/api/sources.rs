//! What a submission's sources are, where it can be said within a moment:
//! the job then publishes the image the pipeline had just built (or pushed),
//! even if the name moves before a lane gets to it. Sources that cannot be
//! read in time are resolved when their first target runs. What can be
//! refused is refused here, before anything is tagged: labels the
//! submitter's scope requires, a registry source publishd cannot publish
//! (an unknown media type, a foreign layer, a platform the job names that
//! it lacks) or that does not exist, a local source on a publishd without
//! an engine.

use std::time::Duration;

use futures_util::future::join_all;

use super::AppState;
use super::error::ApiError;
use crate::credentials::RegistryAuth;
use crate::domain::access::{Grant, missing_labels};
use crate::domain::index::{check_single, select};
use crate::domain::retry::FailureKind;
use crate::domain::source::{
    RegistrySource, ResolvedSource, SourceCredentials, source_credentials,
};
use crate::domain::spec::{Plan, PlannedImage};
use crate::engine::{NO_ENGINE, SourceImage};
use crate::registry::Source;

/// How long a submission waits for the engine or a registry to say what
/// its sources are.
const SOURCE_LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// Each image's source as far as it can be said now (`None`: at its first
/// claim). `job_auth` is the job's own credentials, for its repo's registry.
///
/// Local sources are looked up only when the job is on this instance's
/// engine (`on_this_engine`); another engine's are looked up by the instance
/// that claims their first target.
pub async fn resolve_sources(
    state: &AppState,
    plan: &Plan,
    grant: &Grant,
    job_auth: Option<&RegistryAuth>,
    on_this_engine: bool,
) -> Result<Vec<Option<ResolvedSource>>, ApiError> {
    let lookups = plan
        .images
        .iter()
        .enumerate()
        .map(|(index, image)| async move {
            let field = format!("images[{index}].source");
            match RegistrySource::parse(&image.source) {
                Some(Ok(source)) => {
                    resolve_in_registry(state, plan, grant, job_auth, image, &source, &field).await
                }
                Some(Err(message)) => Err(ApiError::invalid(field, message)),
                None if on_this_engine => resolve_on_engine(state, grant, image, &field).await,
                None => Ok(None),
            }
        });
    join_all(lookups).await.into_iter().collect()
}

async fn resolve_on_engine(
    state: &AppState,
    grant: &Grant,
    image: &PlannedImage,
    field: &str,
) -> Result<Option<ResolvedSource>, ApiError> {
    let Some(engine) = &state.engine else {
        return Err(ApiError::invalid(field, NO_ENGINE));
    };
    if grant.required_labels.is_empty() {
        let id = state
            .source_ids
            .image_id(engine, &image.source, SOURCE_LOOKUP_TIMEOUT)
            .await;
        return Ok(id.map(ResolvedSource::local));
    }
    let found = tokio::time::timeout(SOURCE_LOOKUP_TIMEOUT, engine.inspect_image(&image.source));
    match found.await {
        Ok(Ok(Some(found))) => {
            check_labels(grant, image, &found, field)?;
            Ok(Some(ResolvedSource::local(found.id)))
        }
        _ => Ok(None),
    }
}

async fn resolve_in_registry(
    state: &AppState,
    plan: &Plan,
    grant: &Grant,
    job_auth: Option<&RegistryAuth>,
    image: &PlannedImage,
    source: &RegistrySource,
    field: &str,
) -> Result<Option<ResolvedSource>, ApiError> {
    // The same credentials the worker reads it with.
    let in_repo_registry = plan.repository.registry == source.registry;
    let auth = match (
        source_credentials(
            in_repo_registry,
            job_auth.is_some(),
            grant.service_credentials,
        ),
        job_auth,
    ) {
        (SourceCredentials::Job, Some(auth)) => auth.clone(),
        (SourceCredentials::Service, _) => match state.credentials.auth_for(&source.registry).await
        {
            Ok(auth) => auth,
            // The worker meets (and reports) the same trouble.
            Err(_) => return Ok(None),
        },
        _ => RegistryAuth::anonymous(),
    };
    let reference = source.reference(None);
    let read = tokio::time::timeout(
        SOURCE_LOOKUP_TIMEOUT,
        state.registry.source_image(&reference, &auth),
    );
    match read.await {
        Ok(Ok(Some(found))) => {
            // The platforms the job names must be there (for an index, the
            // images kept are those of the platforms named).
            let kept = match &found {
                Source::Image(single) => {
                    check_single(single.platform.as_ref(), &plan.platforms).map(|()| vec![single])
                }
                Source::Index(index) => select(&index.views(), &plan.platforms).map(|kept| {
                    index
                        .images()
                        .filter(|(position, _)| kept.contains(position))
                        .map(|(_, image)| image)
                        .collect()
                }),
            }
            .map_err(|message| ApiError::invalid(field, format!("{reference}: {message}")))?;
            for manifest in kept {
                let found = SourceImage {
                    id: manifest.config_digest.clone(),
                    config: serde_json::from_slice(&manifest.config).unwrap_or_default(),
                    layer_count: manifest.layers.len(),
                };
                check_labels(grant, image, &found, field)?;
            }
            Ok(Some(ResolvedSource {
                image_id: found.content_id().to_owned(),
                manifest_digest: Some(found.digest().to_owned()),
            }))
        }
        Ok(Ok(None)) => Err(ApiError::invalid(
            field,
            format!("{reference} is not in the registry"),
        )),
        Ok(Err(error)) if error.kind == FailureKind::Permanent => {
            Err(ApiError::invalid(field, error.message))
        }
        Ok(Err(_)) | Err(_) => Ok(None),
    }
}

/// A source must carry the labels the submitter's scope requires.
fn check_labels(
    grant: &Grant,
    image: &PlannedImage,
    found: &SourceImage,
    field: &str,
) -> Result<(), ApiError> {
    let missing = missing_labels(&grant.required_labels, &found.labels());
    if missing.is_empty() {
        return Ok(());
    }
    Err(ApiError::Forbidden {
        field: Some(field.to_owned()),
        rule: "source_labels".to_owned(),
        message: format!(
            "the source {:?} lacks the labels its submitter's scope requires: {}",
            image.source,
            missing.join(", ")
        ),
    })
}
