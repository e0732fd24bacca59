//! Reads the registry over its v2 API with the push's credentials: checks
//! the digest a push left there, and answers werf's up-to-date question.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth as OciAuth;
use oci_client::{Client, Reference, client::ClientConfig, client::ClientProtocol};
use sha2::{Digest, Sha256};

use crate::credentials::RegistryAuth;
use crate::domain::retry::{FailureKind, classify_registry_message};

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

/// The registry through oci-client. Loopback registries are spoken to over
/// plain HTTP, as the engine does (127.0.0.0/8 is insecure by default);
/// every other registry over HTTPS.
#[derive(Default, Clone)]
pub struct OciRegistry {
    clients: Arc<Mutex<HashMap<ClientKey, Client>>>,
}

/// A registry host and a digest of the credentials used with it.
type ClientKey = (String, [u8; 32]);

/// Clients kept for reuse (their connections and tokens with them).
const CLIENT_CACHE_SIZE: usize = 64;

impl OciRegistry {
    /// A client for this registry and these credentials. oci-client keeps the
    /// first credentials it sees per registry, and two jobs may bring
    /// different ones, so clients are kept per registry and credentials (by a
    /// digest of them, in memory only).
    fn client(&self, reference: &Reference, auth: &RegistryAuth) -> Client {
        let registry = reference.registry().to_owned();
        let key = (
            registry.clone(),
            Sha256::digest(auth.engine_header().as_bytes()).into(),
        );
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(client) = clients.get(&key) {
            return client.clone();
        }
        let protocol = if is_loopback(&registry) {
            ClientProtocol::HttpsExcept(vec![registry])
        } else {
            ClientProtocol::Https
        };
        let client = Client::new(ClientConfig {
            protocol,
            ..ClientConfig::default()
        });
        if clients.len() >= CLIENT_CACHE_SIZE {
            clients.clear();
        }
        clients.insert(key, client.clone());
        client
    }
}

#[async_trait]
impl Registry for OciRegistry {
    async fn digest(
        &self,
        reference: &str,
        auth: &RegistryAuth,
    ) -> Result<Option<String>, RegistryError> {
        let reference = parse(reference)?;
        match self
            .client(&reference, auth)
            .fetch_manifest_digest(&reference, &oci_auth(auth))
            .await
        {
            Ok(digest) => Ok(Some(digest)),
            Err(error) if is_not_found(&error) => Ok(None),
            Err(error) => Err(registry_error(error)),
        }
    }

    async fn image(
        &self,
        reference: &str,
        auth: &RegistryAuth,
    ) -> Result<Option<RemoteImage>, RegistryError> {
        let reference = parse(reference)?;
        let pulled = self
            .client(&reference, auth)
            .pull_manifest_and_config(&reference, &oci_auth(auth))
            .await;
        let (_, digest, config) = match pulled {
            Ok(pulled) => pulled,
            Err(error) if is_not_found(&error) => return Ok(None),
            Err(error) => return Err(registry_error(error)),
        };
        let config: serde_json::Value =
            serde_json::from_str(&config).map_err(|error| RegistryError {
                kind: FailureKind::Transient,
                message: format!("image config is not JSON: {error}"),
            })?;
        let content_signature = config["config"]["Labels"]["werf-content-signature"]
            .as_str()
            .map(str::to_owned);
        Ok(Some(RemoteImage {
            digest,
            content_signature,
        }))
    }
}

fn parse(reference: &str) -> Result<Reference, RegistryError> {
    reference.parse().map_err(|error| RegistryError {
        kind: FailureKind::Permanent,
        message: format!("{reference:?} is not a valid reference: {error}"),
    })
}

fn is_loopback(registry: &str) -> bool {
    let host = registry
        .rsplit_once(':')
        .map(|(host, _)| host)
        .unwrap_or(registry);
    host == "localhost" || host.starts_with("127.") || host == "[::1]"
}

fn oci_auth(auth: &RegistryAuth) -> OciAuth {
    match (auth.basic(), auth.token()) {
        (Some((username, password)), _) => OciAuth::Basic(username.to_owned(), password.to_owned()),
        (None, Some(token)) => OciAuth::Bearer(token.to_owned()),
        (None, None) => OciAuth::Anonymous,
    }
}

fn is_not_found(error: &OciDistributionError) -> bool {
    match error {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::ServerError { code: 404, .. } => true,
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|e| {
            matches!(
                e.code,
                OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown
            )
        }),
        _ => false,
    }
}

fn registry_error(error: OciDistributionError) -> RegistryError {
    let kind = match &error {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => FailureKind::Permanent,
        OciDistributionError::ServerError { code, .. } if *code >= 500 || *code == 429 => {
            FailureKind::Transient
        }
        OciDistributionError::RequestError(request) if request.is_connect() => FailureKind::Outage,
        OciDistributionError::RequestError(_) => FailureKind::Transient,
        other => classify_registry_message(&other.to_string()),
    };
    RegistryError {
        kind,
        message: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_plain_http() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("localhost"));
        assert!(!is_loopback("registry.example.com"));
        assert!(!is_loopback("10.0.0.1:5000"));
    }
}
