//! Registry credentials from a docker config directory: `auths` entries and
//! credential helpers (`credsStore`, `credHelpers`), chosen by registry host.
//! Credentials live in memory only, for the length of one push.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE;
use docker_credential::{CredentialRetrievalError, DockerCredential};
use serde::Serialize;
use uuid::Uuid;

/// Docker Hub's key in a docker config.
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// What the engine needs to push to one registry. `Debug` never shows secrets.
#[derive(Clone, Default, Serialize)]
pub struct RegistryAuth {
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<String>,
    #[serde(rename = "identitytoken", skip_serializing_if = "Option::is_none")]
    identity_token: Option<String>,
    #[serde(rename = "serveraddress", skip_serializing_if = "Option::is_none")]
    server_address: Option<String>,
}

impl RegistryAuth {
    pub fn anonymous() -> RegistryAuth {
        RegistryAuth::default()
    }

    pub fn password(server: &str, username: &str, password: &str) -> RegistryAuth {
        RegistryAuth {
            username: Some(username.to_owned()),
            password: Some(password.to_owned()),
            identity_token: None,
            server_address: Some(server.to_owned()),
        }
    }

    pub fn identity_token(server: &str, token: &str) -> RegistryAuth {
        RegistryAuth {
            identity_token: Some(token.to_owned()),
            server_address: Some(server.to_owned()),
            ..RegistryAuth::default()
        }
    }

    /// Username and password, when these are the credentials.
    pub fn basic(&self) -> Option<(&str, &str)> {
        Some((
            self.username.as_deref()?,
            self.password.as_deref().unwrap_or(""),
        ))
    }

    pub fn token(&self) -> Option<&str> {
        self.identity_token.as_deref()
    }

    pub fn is_anonymous(&self) -> bool {
        self.username.is_none() && self.identity_token.is_none()
    }

    /// The `X-Registry-Auth` header: JSON in URL-safe base64, the alphabet the
    /// engine decodes with (it silently drops a header it cannot decode).
    pub fn engine_header(&self) -> String {
        URL_SAFE.encode(serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec()))
    }
}

impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field(
                "identity_token",
                &self.identity_token.as_ref().map(|_| "<redacted>"),
            )
            .field("server_address", &self.server_address)
            .finish()
    }
}

/// Credentials jobs brought with them, by job: in memory only, dropped when
/// the job ends, gone after a restart.
#[derive(Clone, Default)]
pub struct JobCredentials {
    jobs: Arc<Mutex<HashMap<Uuid, RegistryAuth>>>,
}

impl JobCredentials {
    pub fn insert(&self, job_id: Uuid, auth: RegistryAuth) {
        self.lock().insert(job_id, auth);
    }

    pub fn get(&self, job_id: Uuid) -> Option<RegistryAuth> {
        self.lock().get(&job_id).cloned()
    }

    pub fn remove(&self, job_id: Uuid) {
        self.lock().remove(&job_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, RegistryAuth>> {
        self.jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Reads credentials from `<dir>/config.json`, each time anew, so a config
/// changed by `docker login` is seen without a restart.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    dir: PathBuf,
}

impl DockerConfig {
    pub fn new(dir: PathBuf) -> DockerConfig {
        DockerConfig { dir }
    }

    /// The credentials for `registry` (a host such as `127.0.0.1:5000`), or
    /// anonymous ones when the config has none for it.
    pub async fn auth_for(&self, registry: &str) -> anyhow::Result<RegistryAuth> {
        let path = self.dir.join("config.json");
        let registry = registry.to_owned();
        // Credential helpers are programs: run them off the async threads.
        tokio::task::spawn_blocking(move || {
            let file = match std::fs::File::open(&path) {
                Ok(file) => file,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    return Ok(RegistryAuth::anonymous());
                }
                Err(error) => {
                    return Err(error).with_context(|| format!("reading {}", path.display()));
                }
            };
            let key = if registry == "docker.io" {
                DOCKER_HUB_KEY
            } else {
                registry.as_str()
            };
            match docker_credential::get_credential_from_reader(std::io::BufReader::new(file), key)
            {
                Ok(DockerCredential::UsernamePassword(username, password)) => {
                    Ok(RegistryAuth::password(key, &username, &password))
                }
                Ok(DockerCredential::IdentityToken(token)) => {
                    Ok(RegistryAuth::identity_token(key, &token))
                }
                Err(CredentialRetrievalError::NoCredentialConfigured) => {
                    Ok(RegistryAuth::anonymous())
                }
                Err(error) => Err(anyhow::anyhow!(
                    "reading credentials for {registry} from {}: {error}",
                    path.display()
                )),
            }
        })
        .await
        .context("credential lookup task")?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    #[test]
    fn header_is_url_safe_base64_json() {
        let auth = RegistryAuth::password("127.0.0.1:5000", "u", "s3cr?t>>>???~~~");
        let header = auth.engine_header();
        assert!(!header.contains('+') && !header.contains('/'), "{header}");
        let json: serde_json::Value =
            serde_json::from_slice(&URL_SAFE.decode(&header).unwrap()).unwrap();
        assert_eq!(json["password"], "s3cr?t>>>???~~~");
        assert_eq!(json["serveraddress"], "127.0.0.1:5000");
        // The standard alphabet would have differed: this password is a real test.
        let standard = STANDARD.encode(serde_json::to_vec(&auth).unwrap());
        assert!(standard.contains('+') || standard.contains('/'));
    }

    #[test]
    fn anonymous_is_an_empty_object() {
        assert_eq!(
            URL_SAFE
                .decode(RegistryAuth::anonymous().engine_header())
                .unwrap(),
            b"{}"
        );
    }

    #[test]
    fn debug_hides_secrets() {
        let auth = RegistryAuth::password("r", "u", "hunter2");
        assert!(!format!("{auth:?}").contains("hunter2"));
        let auth = RegistryAuth::identity_token("r", "tok123");
        assert!(!format!("{auth:?}").contains("tok123"));
    }

    #[tokio::test]
    async fn reads_auths_entries_by_host() {
        let dir = tempfile::tempdir().unwrap();
        let encoded = STANDARD.encode("alice:pa+ss/word");
        std::fs::write(
            dir.path().join("config.json"),
            format!(r#"{{"auths":{{"127.0.0.1:5000":{{"auth":"{encoded}"}}}}}}"#),
        )
        .unwrap();
        let config = DockerConfig::new(dir.path().to_owned());
        let auth = config.auth_for("127.0.0.1:5000").await.unwrap();
        assert_eq!(auth.username.as_deref(), Some("alice"));
        assert_eq!(auth.password.as_deref(), Some("pa+ss/word"));
        assert!(
            config
                .auth_for("127.0.0.1:6000")
                .await
                .unwrap()
                .is_anonymous()
        );
    }

    #[tokio::test]
    async fn missing_config_means_anonymous() {
        let dir = tempfile::tempdir().unwrap();
        let config = DockerConfig::new(dir.path().to_owned());
        assert!(
            config
                .auth_for("127.0.0.1:5000")
                .await
                .unwrap()
                .is_anonymous()
        );
    }
}
