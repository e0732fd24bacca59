//! Reads registries over the distribution v2 API with the push's credentials:
//! checks the digest a push left there, and answers werf's up-to-date
//! question. A registry is reached the way the engine reached it (its
//! insecure-registry settings, `certs.d`), and authenticated the way the
//! engine does (basic, or a Bearer token from the registry's token server,
//! with a password or by exchanging an identity token). It also writes
//! images registry-side: a labelled config and a manifest in the format of
//! the engine's own push (or the remote builder's), next to layers the
//! engine (or the builder) pushed before.

mod challenge;
mod client;
mod manifest;
mod source_cache;

use async_trait::async_trait;

pub use challenge::TokenRealms;
pub use client::HttpRegistry;

use crate::credentials::RegistryAuth;
use crate::domain::publish_via::Descriptor;
use crate::domain::retry::FailureKind;

/// A tag as the registry serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteImage {
    pub digest: String,
    /// The `werf-content-signature` label of its config, if any.
    pub content_signature: Option<String>,
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

    /// The single-platform image `reference` (a tag or a digest) names,
    /// with its config, or `None` if there is none; an image index is a
    /// permanent error (see `source_image`'s implementation for why).
    async fn source_image(
        &self,
        reference: &str,
        auth: &RegistryAuth,
    ) -> Result<Option<SourceManifest>, RegistryError>;

    /// Writes `image` under `reference` (a tagged reference): every layer
    /// made present in its repository (there already, mounted, or copied),
    /// the config uploaded, the manifest put.
    async fn write_image(
        &self,
        reference: &str,
        image: &RegistryImage<'_>,
        auth: &RegistryAuth,
    ) -> Result<Written, RegistryError>;
}
