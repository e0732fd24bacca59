//! Reads registries over the distribution v2 API with the push's credentials:
//! checks the digest a push left there, and answers werf's up-to-date
//! question. A registry is reached the way the engine reached it (its
//! insecure-registry settings, `certs.d`), and authenticated the way the
//! engine does (basic, or a Bearer token from the registry's token server,
//! with a password or by exchanging an identity token).

mod challenge;
mod client;

use async_trait::async_trait;

pub use client::HttpRegistry;

use crate::credentials::RegistryAuth;
use crate::domain::retry::FailureKind;

/// A tag as the registry serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteImage {
    pub digest: String,
    /// The `werf-content-signature` label of its config, if any.
    pub content_signature: Option<String>,
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
}
