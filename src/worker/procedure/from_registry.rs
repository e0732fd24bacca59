//! A target whose source is an image a remote builder pushed
//! (`docker://...`): published wholly in the registry. The source's
//! manifest or index (read once per job, by digest after that) and configs
//! are read, the labelled configs are uploaded, the layers are mounted next
//! to them (or copied from another registry), and a manifest like the
//! source's is put and read back; for an index, each platform image is
//! written that way, the attestations as they are, and a new index over
//! them. The engine is never touched, so there is nothing to untag.

use tracing::info;

use super::{Failure, Finish, OnCancel, Published, Run, Stop, conclude};
use crate::credentials::RegistryAuth;
use crate::domain::access::missing_labels;
use crate::domain::index::{check_single, select};
use crate::domain::labels::{LabelInput, werf_labels};
use crate::domain::platform::Platform;
use crate::domain::publish_via::PublishedVia;
use crate::domain::source::{
    RegistrySource, ResolvedSource, SourceCredentials, source_credentials,
};
use crate::engine::{LabelledImage, SourceImage};
use crate::registry::{
    KeptEntry, LayersFrom, ManifestForm, RegistryImage, RegistryIndex, Source, SourceManifest,
};

/// What a target publishes of its source.
struct Chosen<'s> {
    /// For an index, the positions of the entries kept (images and the
    /// manifests carried), in its order.
    kept: Vec<usize>,
    /// The platform images, each with its position and its config.
    images: Vec<(usize, &'s SourceManifest, SourceImage)>,
}

impl Run<'_> {
    pub(super) async fn publish_registry_source(
        &self,
        source: &RegistrySource,
    ) -> anyhow::Result<Finish> {
        let (ctx, target) = (self.ctx, self.target);
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
        let read = match self.source_manifest(source, &source_auth).await? {
            Ok(read) => read,
            Err(stop) => return conclude(Err(stop), Vec::new()),
        };
        let chosen = match self.chosen(&read) {
            Ok(chosen) => chosen,
            Err(message) => return conclude(Err(Stop::Failed(message)), Vec::new()),
        };
        let content_id = read.content_id();
        let Some((tag, reference)) = self.tag_and_reference(content_id).await? else {
            return Ok(Finish::Deferred);
        };
        // An index is up to date when the tag holds one of the same
        // platforms; a single image when it holds a single image.
        let platforms: Option<Vec<Platform>> = match &read {
            Source::Image(_) => None,
            Source::Index(index) => Some(
                chosen
                    .images
                    .iter()
                    .filter_map(|(position, _, _)| index.entries[*position].platform.clone())
                    .collect(),
            ),
        };
        let auth = match self
            .before_writing(&reference, content_id, platforms.as_deref())
            .await?
        {
            Ok(auth) => auth,
            Err(finish) => return Ok(finish),
        };
        // The same labels for every platform, as werf gives them.
        let labels = werf_labels(&LabelInput {
            reference: &reference,
            strategy: target.strategy,
            image_name: target.image_name.as_deref(),
            tag: &tag,
            source_image_id: content_id,
        });
        let labelled: Vec<LabelledImage> = chosen
            .images
            .iter()
            .map(|(_, _, image)| LabelledImage::new(image, &labels))
            .collect();
        let layers_from = LayersFrom {
            registry: &source.registry,
            repository: &source.repository,
            auth: &source_auth,
            copy: true,
        };
        let written = match &read {
            Source::Image(manifest) => {
                let wanted = RegistryImage {
                    config: labelled[0].config(),
                    layers: &manifest.layers,
                    layers_from,
                    manifest: ManifestForm::Like(manifest),
                };
                let write = || ctx.registry.write_image(&reference, &wanted, &auth);
                self.write_registry_side(&reference, &auth, write).await?
            }
            Source::Index(index) => {
                let kept: Vec<KeptEntry<'_>> = chosen
                    .kept
                    .iter()
                    .map(|&position| {
                        match chosen.images.iter().position(|(at, _, _)| *at == position) {
                            Some(image) => KeptEntry::Image {
                                position,
                                config: labelled[image].config(),
                            },
                            None => KeptEntry::Carried { position },
                        }
                    })
                    .collect();
                let wanted = RegistryIndex {
                    source: index,
                    kept: &kept,
                    layers_from,
                };
                let write = || ctx.registry.write_index(&reference, &wanted, &auth);
                self.write_registry_side(&reference, &auth, write).await?
            }
        };
        let published = match written {
            Ok(Some(digest)) => {
                // werf's image id of an index is the index's own digest.
                let image_id = match &read {
                    Source::Image(_) => labelled[0].id.clone(),
                    Source::Index(_) => digest.clone(),
                };
                info!(%digest, %image_id, source = %read.digest(), "published from the registry source");
                Ok(Published {
                    digest,
                    image_id: Some(image_id),
                    via: PublishedVia::Registry,
                })
            }
            // Layers that cannot be mounted are copied, so this does not
            // happen; if it did, there is no engine path to fall back to.
            Ok(None) => Err(Stop::Failed(
                "a layer of the registry source could not be made present".to_owned(),
            )),
            Err(stop) => Err(stop),
        };
        conclude(published, Vec::new())
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

    /// The source's manifest or index: by the digest the job resolved it
    /// to, or, on the job's first read, by what the source names (then
    /// recorded, so every target of the job publishes this one).
    async fn source_manifest(
        &self,
        source: &RegistrySource,
        auth: &RegistryAuth,
    ) -> anyhow::Result<Result<Source, Stop>> {
        let (ctx, target) = (self.ctx, self.target);
        let known = target.source_digest.as_deref().or(source.digest());
        let read = |digest: Option<String>| {
            let reference = source.reference(digest.as_deref());
            async move {
                self.tries("tag", ctx.timeouts.tag, OnCancel::Interrupt, || async {
                    match ctx.registry.source_image(&reference, auth).await? {
                        Some(read) => Ok(read),
                        None => Err(Failure::permanent(format!(
                            "the registry source {:?} does not exist ({reference} not found)",
                            target.source
                        ))),
                    }
                })
                .await
            }
        };
        let read_now = match read(known.map(str::to_owned)).await {
            Ok(read) => read,
            Err(Stop::Store(error)) => return Err(error),
            Err(stop) => return Ok(Err(stop)),
        };
        if target.source_digest.is_some() {
            return Ok(Ok(read_now));
        }
        let resolved = ctx
            .store
            .resolve_source(
                target.job_id,
                target.image_position,
                &ResolvedSource {
                    image_id: read_now.content_id().to_owned(),
                    manifest_digest: Some(read_now.digest().to_owned()),
                },
            )
            .await?;
        // Another target of the job read the tag first, and it has moved
        // since: publish what the job resolved.
        match resolved.manifest_digest {
            Some(digest) if digest != read_now.digest() => match read(Some(digest)).await {
                Ok(read) => Ok(Ok(read)),
                Err(Stop::Store(error)) => Err(error),
                Err(stop) => Ok(Err(stop)),
            },
            _ => Ok(Ok(read_now)),
        }
    }

    /// What the job publishes of `read`: every platform, or those the job
    /// names (a platform `read` lacks is why not), each image with the
    /// labelled image's base (its config must carry the labels the
    /// submitter's scope requires).
    fn chosen<'s>(&self, read: &'s Source) -> Result<Chosen<'s>, String> {
        let wanted = &self.target.platforms;
        let named = |why: String| format!("the registry source {:?}: {why}", self.target.source);
        let (kept, images): (Vec<usize>, Vec<(usize, &SourceManifest)>) = match read {
            Source::Image(image) => {
                check_single(image.platform.as_ref(), wanted).map_err(named)?;
                (Vec::new(), vec![(0, image)])
            }
            Source::Index(index) => {
                let kept = select(&index.views(), wanted).map_err(named)?;
                let images = index
                    .images()
                    .filter(|(position, _)| kept.contains(position))
                    .collect();
                (kept, images)
            }
        };
        let images = images
            .into_iter()
            .map(|(position, manifest)| Ok((position, manifest, self.source_config(manifest)?)))
            .collect::<Result<_, String>>()?;
        Ok(Chosen { kept, images })
    }

    /// A platform image's config as the labelled image's base; it must
    /// carry the labels the submitter's scope requires.
    fn source_config(&self, manifest: &SourceManifest) -> Result<SourceImage, String> {
        let config: serde_json::Value = serde_json::from_slice(&manifest.config)
            .ok()
            .filter(serde_json::Value::is_object)
            .ok_or_else(|| {
                format!(
                    "the config of the registry source {:?} ({}) is not a JSON object",
                    self.target.source, manifest.digest
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
