//! A target whose source is an image a remote builder pushed
//! (`docker://...`): published wholly in the registry. The source's
//! manifest (read once per job, by digest after that) and config are read,
//! the labelled config is uploaded, the layers are mounted next to it (or
//! copied from another registry), and a manifest like the source's is put
//! and read back. The engine is never touched, so there is nothing to untag.

use tracing::info;

use super::{Failure, Finish, OnCancel, Run, Stop, conclude};
use crate::credentials::RegistryAuth;
use crate::domain::access::missing_labels;
use crate::domain::labels::{LabelInput, werf_labels};
use crate::domain::publish_via::PublishedVia;
use crate::domain::source::{
    RegistrySource, ResolvedSource, SourceCredentials, source_credentials,
};
use crate::engine::{LabelledImage, SourceImage};
use crate::registry::{LayersFrom, ManifestForm, RegistryImage, SourceManifest};

impl Run<'_> {
    pub(super) async fn publish_registry_source(
        &self,
        source: &RegistrySource,
    ) -> anyhow::Result<Finish> {
        let target = self.target;
        // Checked at submission; again here, where it is read and its layers
        // are mounted from.
        if !self.may_read(&source.repository()) {
            let message = format!(
                "forbidden: the submitter's read_repos do not cover {}",
                source.repository()
            );
            return conclude(Err(Stop::Failed(message)), Vec::new());
        }
        let source_auth = match self.source_auth(source).await {
            Ok(auth) => auth,
            Err(message) => return conclude(Err(Stop::Failed(message)), Vec::new()),
        };
        let manifest = match self.source_manifest(source, &source_auth).await? {
            Ok(manifest) => manifest,
            Err(stop) => return conclude(Err(stop), Vec::new()),
        };
        let image = match self.source_config(&manifest) {
            Ok(image) => image,
            Err(message) => return conclude(Err(Stop::Failed(message)), Vec::new()),
        };
        let Some((tag, reference)) = self.tag_and_reference(&image.id).await? else {
            return Ok(Finish::Deferred);
        };
        let auth = match self.before_writing(&reference, &image).await? {
            Ok(auth) => auth,
            Err(finish) => return Ok(finish),
        };
        let labels = werf_labels(&LabelInput {
            reference: &reference,
            strategy: target.strategy,
            image_name: target.image_name.as_deref(),
            tag: &tag,
            source_image_id: &image.id,
        });
        let labelled = LabelledImage::new(&image, &labels);
        let wanted = RegistryImage {
            config: labelled.config(),
            layers: &manifest.layers,
            layers_from: LayersFrom {
                registry: &source.registry,
                repository: &source.repository,
                auth: &source_auth,
                copy: true,
            },
            manifest: ManifestForm::Like(&manifest),
        };
        let written = match self.write_registry_side(&reference, &wanted, &auth).await? {
            Ok(Some(digest)) => {
                info!(%digest, image_id = %labelled.id, source = %manifest.digest, "published from the registry source");
                Ok((digest, PublishedVia::Registry))
            }
            // Layers that cannot be mounted are copied, so this does not
            // happen; if it did, there is no engine path to fall back to.
            Ok(None) => Err(Stop::Failed(
                "a layer of the registry source could not be made present".to_owned(),
            )),
            Err(stop) => Err(stop),
        };
        conclude(written, Vec::new())
    }

    /// Credentials that read the source (`domain::source::source_credentials`).
    async fn source_auth(&self, source: &RegistrySource) -> Result<RegistryAuth, String> {
        let target = self.target;
        match source_credentials(
            self.repository.registry == source.registry,
            target.has_registry_auth,
            target.use_service_credentials,
        ) {
            // The job's, or why they are gone.
            SourceCredentials::Job => self.auth().await,
            SourceCredentials::Service => self
                .ctx
                .credentials
                .auth_for(&source.registry)
                .await
                .map_err(|error| format!("reading the source: {error:#}")),
            SourceCredentials::Anonymous => Ok(RegistryAuth::anonymous()),
        }
    }

    /// The source's manifest: by the digest the job resolved it to, or, on
    /// the job's first read, by what the source names (then recorded, so
    /// every target of the job publishes this one manifest).
    async fn source_manifest(
        &self,
        source: &RegistrySource,
        auth: &RegistryAuth,
    ) -> anyhow::Result<Result<SourceManifest, Stop>> {
        let (ctx, target) = (self.ctx, self.target);
        let known = target.source_digest.as_deref().or(source.digest());
        let read = |digest: Option<String>| {
            let reference = source.reference(digest.as_deref());
            async move {
                self.tries("tag", ctx.timeouts.tag, OnCancel::Interrupt, || async {
                    match ctx.registry.source_image(&reference, auth).await? {
                        Some(manifest) => Ok(manifest),
                        None => Err(Failure::permanent(format!(
                            "the registry source {:?} does not exist ({reference} not found)",
                            target.source
                        ))),
                    }
                })
                .await
            }
        };
        let manifest = match read(known.map(str::to_owned)).await {
            Ok(manifest) => manifest,
            Err(Stop::Store(error)) => return Err(error),
            Err(stop) => return Ok(Err(stop)),
        };
        if target.source_digest.is_some() {
            return Ok(Ok(manifest));
        }
        let resolved = ctx
            .store
            .resolve_source(
                target.job_id,
                target.image_position,
                &ResolvedSource {
                    image_id: manifest.config_digest.clone(),
                    manifest_digest: Some(manifest.digest.clone()),
                },
            )
            .await?;
        // Another target of the job read the tag first, and it has moved
        // since: publish what the job resolved.
        match resolved.manifest_digest {
            Some(digest) if digest != manifest.digest => match read(Some(digest)).await {
                Ok(manifest) => Ok(Ok(manifest)),
                Err(Stop::Store(error)) => Err(error),
                Err(stop) => Ok(Err(stop)),
            },
            _ => Ok(Ok(manifest)),
        }
    }

    /// The source's config as the labelled image's base; it must carry the
    /// labels the submitter's scope requires.
    fn source_config(&self, manifest: &SourceManifest) -> Result<SourceImage, String> {
        let config: serde_json::Value = serde_json::from_slice(&manifest.config)
            .ok()
            .filter(serde_json::Value::is_object)
            .ok_or_else(|| {
                format!(
                    "the config of the registry source {:?} is not a JSON object",
                    self.target.source
                )
            })?;
        let image = SourceImage {
            id: manifest.config_digest.clone(),
            config,
            layer_count: manifest.layers.len(),
        };
        let missing = missing_labels(&self.target.required_labels, &image.labels());
        if !missing.is_empty() {
            return Err(format!(
                "forbidden: the source image {:?} lacks the labels its submitter's scope \
                 requires: {}",
                self.target.source,
                missing.join(", ")
            ));
        }
        Ok(image)
    }
}
