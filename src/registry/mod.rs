//! Reads registries over the distribution v2 API with the push's credentials:
//! checks the digest a push left there, and answers werf's up-to-date
//! question. A registry is reached the way the engine reached it (its
//! insecure-registry settings, `certs.d`), and authenticated the way the
//! engine does (basic, or a Bearer token from the registry's token server,
//! with a password or by exchanging an identity token). It also writes
//! images registry-side: a labelled config and a manifest in the format of
//! the engine's own push (or the remote builder's), next to layers the
//! engine (or the builder) pushed before, and publishes registry sources,
//! single images and image indexes, wholly in the registry.

mod challenge;
mod client;
mod manifest;
mod source_cache;

use async_trait::async_trait;

pub use challenge::TokenRealms;
pub use client::HttpRegistry;

use crate::credentials::RegistryAuth;
use crate::domain::index::EntryView;
use crate::domain::platform::Platform;
use crate::domain::publish_via::Descriptor;
use crate::domain::retry::FailureKind;

/// A tag as the registry serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteImage {
    pub digest: String,
    /// The `werf-content-signature` label of its config, if any; for an
    /// index, the one every platform image carries, if they agree.
    pub content_signature: Option<String>,
    /// What werf calls its image id: the config digest, or an index's own
    /// digest (as the containerd image store names it).
    pub image_id: String,
    /// For an index, the platforms of its images in order; `None` for a
    /// single image.
    pub platforms: Option<Vec<Platform>>,
}

/// An image to write registry-side.
#[derive(Debug, Clone, Copy)]
pub struct RegistryImage<'a> {
    /// The labelled config: for a local source on the load method the very
    /// bytes the engine path would load (and push), so its digest is that
    /// path's image id.
    pub config: &'a [u8],
    /// The layers, as the manifest lists them.
    pub layers: &'a [Descriptor],
    /// Where the layers are.
    pub layers_from: LayersFrom<'a>,
    /// The manifest to write around the config and the layers.
    pub manifest: ManifestForm<'a>,
}

/// A repository that holds an image's layers.
#[derive(Debug, Clone, Copy)]
pub struct LayersFrom<'a> {
    pub registry: &'a str,
    pub repository: &'a str,
    /// The credentials that read it.
    pub auth: &'a RegistryAuth,
    /// Copy a layer that cannot be mounted (another registry, a refused
    /// mount) through publishd; otherwise the write ends `MountRefused`.
    pub copy: bool,
}

/// The manifest a registry-side write puts.
#[derive(Debug, Clone, Copy)]
pub enum ManifestForm<'a> {
    /// A manifest its writer made (a registry source's builder, or the
    /// engine's push of a seed), byte for byte, with the labelled config in
    /// place of its config: its format, layout and annotations stay.
    Like(&'a SourceManifest),
}

/// What a registry source names: one image, or an index of them.
#[derive(Debug, Clone)]
pub enum Source {
    Image(SourceManifest),
    Index(SourceIndex),
}

impl Source {
    /// The digest of what the source names: the manifest's, or the index's.
    pub fn digest(&self) -> &str {
        match self {
            Source::Image(image) => &image.digest,
            Source::Index(index) => &index.digest,
        }
    }

    /// The id werf's content signature and `content` tag are made of: the
    /// image's config digest (its image id), or the index's digest.
    pub fn content_id(&self) -> &str {
        match self {
            Source::Image(image) => &image.config_digest,
            Source::Index(index) => &index.digest,
        }
    }

    /// The platform images it holds: itself, or the index's.
    pub fn images(&self) -> Vec<&SourceManifest> {
        match self {
            Source::Image(image) => vec![image],
            Source::Index(index) => index.images().map(|(_, image)| image).collect(),
        }
    }

    /// Bytes held of it, for the cache's bound.
    pub fn weight(&self) -> usize {
        match self {
            Source::Image(image) => image.manifest.len() + image.config.len(),
            Source::Index(index) => {
                index.index.len()
                    + index
                        .entries
                        .iter()
                        .map(|entry| match &entry.content {
                            EntryContent::Image(image) => image.manifest.len() + image.config.len(),
                            EntryContent::Carried(carried) => carried.manifest.len(),
                        })
                        .sum::<usize>()
            }
        }
    }
}

/// An image a remote builder pushed, as its registry holds it.
#[derive(Debug, Clone)]
pub struct SourceManifest {
    /// The manifest's digest.
    pub digest: String,
    pub media_type: String,
    pub manifest: Vec<u8>,
    /// The config's bytes; their digest is the image id.
    pub config: Vec<u8>,
    pub config_digest: String,
    pub layers: Vec<Descriptor>,
    /// The platform its config names, if it names one.
    pub platform: Option<Platform>,
}

/// An image index (OCI) or manifest list (Docker) a builder pushed, with
/// every manifest it lists.
#[derive(Debug, Clone)]
pub struct SourceIndex {
    pub digest: String,
    pub media_type: String,
    /// The index as the registry holds it.
    pub index: Vec<u8>,
    /// Its entries, in its order.
    pub entries: Vec<IndexEntry>,
}

impl SourceIndex {
    /// The platform images, with their positions.
    pub fn images(&self) -> impl Iterator<Item = (usize, &SourceManifest)> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(position, entry)| match &entry.content {
                EntryContent::Image(image) => Some((position, image)),
                EntryContent::Carried(_) => None,
            })
    }

    /// The entries as `domain::index` chooses among them.
    pub fn views(&self) -> Vec<EntryView<'_>> {
        self.entries
            .iter()
            .map(|entry| EntryView {
                digest: &entry.digest,
                platform: entry.platform.as_ref(),
                carried: matches!(entry.content, EntryContent::Carried(_)),
                describes: entry.describes.as_deref(),
            })
            .collect()
    }
}

/// One manifest an index lists.
#[derive(Debug, Clone)]
pub struct IndexEntry {
    pub digest: String,
    /// The entry's platform, else (for an image) its config's.
    pub platform: Option<Platform>,
    /// The manifest it describes (`vnd.docker.reference.digest`).
    pub describes: Option<String>,
    pub content: EntryContent,
}

#[derive(Debug, Clone)]
pub enum EntryContent {
    /// A platform's image: labelled, and written with its new config.
    Image(SourceManifest),
    /// Anything else (an attestation manifest): written byte for byte.
    Carried(CarriedManifest),
}

/// A manifest carried as it is, with the blobs it names.
#[derive(Debug, Clone)]
pub struct CarriedManifest {
    pub media_type: String,
    pub manifest: Vec<u8>,
    pub blobs: Vec<Descriptor>,
}

/// An index to write registry-side: the source's, with the entries kept.
#[derive(Debug, Clone, Copy)]
pub struct RegistryIndex<'a> {
    pub source: &'a SourceIndex,
    /// The entries kept, in the source's order.
    pub kept: &'a [KeptEntry<'a>],
    /// Where the blobs are (copied when they cannot be mounted).
    pub layers_from: LayersFrom<'a>,
}

/// One entry of a written index.
#[derive(Debug, Clone, Copy)]
pub enum KeptEntry<'a> {
    /// A platform image, at `position` of the source, with its labelled
    /// config in place of its own.
    Image { position: usize, config: &'a [u8] },
    /// A carried manifest, at `position` of the source.
    Carried { position: usize },
}

/// How writing an image registry-side ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// The registry accepted the manifest under the tag; its digest.
    Published { digest: String },
    /// A layer missing from the target repository could not be mounted
    /// from `layers_from` (the registry offered an upload instead, or the
    /// credentials do not reach that repository): nothing was tagged, and
    /// the engine path can push the layers itself.
    MountRefused { layer: String, why: String },
}

#[derive(Debug, thiserror::Error)]
#[error("registry: {message}")]
pub struct RegistryError {
    pub kind: FailureKind,
    pub message: String,
}

impl RegistryError {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> RegistryError {
        RegistryError {
            kind,
            message: message.into(),
        }
    }
}

#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// The manifest digest `reference` (a tagged reference) has, or `None`.
    async fn digest(
        &self,
        reference: &str,
        auth: &RegistryAuth,
    ) -> Result<Option<String>, RegistryError>;

    /// The image `reference` names with its werf content signature, or `None`.
    async fn image(
        &self,
        reference: &str,
        auth: &RegistryAuth,
    ) -> Result<Option<RemoteImage>, RegistryError>;

    /// The image or index `reference` (a tag or a digest) names, with
    /// every manifest and config it needs, or `None` if there is none. What
    /// publishd cannot publish (an unknown media type, a foreign layer, a
    /// nested index) is a permanent error that names the part.
    async fn source_image(
        &self,
        reference: &str,
        auth: &RegistryAuth,
    ) -> Result<Option<Source>, RegistryError>;

    /// Writes `image` under `reference` (a tagged reference): every layer
    /// made present in its repository (there already, mounted, or copied),
    /// the config uploaded, the manifest put.
    async fn write_image(
        &self,
        reference: &str,
        image: &RegistryImage<'_>,
        auth: &RegistryAuth,
    ) -> Result<Written, RegistryError>;

    /// Writes `index` under `reference` (a tagged reference): each platform
    /// image kept written with its labelled config (by digest), each
    /// carried manifest as it is, then the new index under the tag.
    async fn write_index(
        &self,
        reference: &str,
        index: &RegistryIndex<'_>,
        auth: &RegistryAuth,
    ) -> Result<Written, RegistryError>;
}
