//! Registry credentials: the docker config (`auths` entries, `credsStore`,
//! `credHelpers`) chosen by registry host the way the docker CLI chooses
//! them, and the per-job credentials jobs bring. Credentials live in memory
//! only, for the length of one push.
//!
//! Read here rather than through a credentials crate: a helper must be
//! time-boxed and killed when it hangs, its "credentials not found" answer
//! means anonymous (as for the docker CLI), and nothing a helper prints may
//! reach an error message, since helpers print secrets.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

/// Docker Hub's key in a docker config and for credential helpers.
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";
/// What a credential helper prints when it holds nothing for a server
/// (docker-credential-helpers' `errCredentialsNotFoundMessage`).
const HELPER_NOT_FOUND: &str = "credentials not found in native keychain";
/// Longest output read from a helper: far above any real credential.
const HELPER_OUTPUT_LIMIT: u64 = 1 << 20;

/// What the engine and the registry client need to authenticate to one
/// registry. `Debug` never shows secrets.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RegistryAuth {
    username: Option<String>,
    password: Option<String>,
    /// An OAuth2 refresh token (`docker login` against a token server).
    identity_token: Option<String>,
    /// A bearer token for the registry itself.
    registry_token: Option<String>,
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
            server_address: Some(server.to_owned()),
            ..RegistryAuth::default()
        }
    }

    pub fn identity_token(server: &str, token: &str) -> RegistryAuth {
        RegistryAuth {
            identity_token: Some(token.to_owned()),
            server_address: Some(server.to_owned()),
            ..RegistryAuth::default()
        }
    }

    pub fn registry_token(server: &str, token: &str) -> RegistryAuth {
        RegistryAuth {
            registry_token: Some(token.to_owned()),
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

    /// The refresh token to exchange at the registry's token server.
    pub fn refresh_token(&self) -> Option<&str> {
        self.identity_token.as_deref()
    }

    /// A bearer token to send as it is.
    pub fn bearer_token(&self) -> Option<&str> {
        self.registry_token.as_deref()
    }

    pub fn is_anonymous(&self) -> bool {
        self.username.is_none() && self.identity_token.is_none() && self.registry_token.is_none()
    }

    /// A digest of the credentials, to key what is cached per credentials
    /// (tokens, clients) without keeping a secret as a key. Never stored.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        for part in [
            &self.username,
            &self.password,
            &self.identity_token,
            &self.registry_token,
        ] {
            hasher.update(part.as_deref().unwrap_or("\u{0}").as_bytes());
            hasher.update([0xff]);
        }
        hasher.finalize().into()
    }

    /// What the engine takes as `X-Registry-Auth` (the engine adapter sends
    /// it in URL-safe base64).
    pub fn engine_credentials(&self) -> bollard::auth::DockerCredentials {
        bollard::auth::DockerCredentials {
            username: self.username.clone(),
            password: self.password.clone(),
            identitytoken: self.identity_token.clone(),
            registrytoken: self.registry_token.clone(),
            serveraddress: self.server_address.clone(),
            ..Default::default()
        }
    }
}

impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |secret: &Option<String>| secret.as_ref().map(|_| "<redacted>");
        f.debug_struct("RegistryAuth")
            .field("username", &self.username)
            .field("password", &redacted(&self.password))
            .field("identity_token", &redacted(&self.identity_token))
            .field("registry_token", &redacted(&self.registry_token))
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

/// `config.json` as far as credentials go.
#[derive(Debug, Default, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

/// What a credential helper answers to `get`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HelperAnswer {
    username: String,
    secret: String,
}

/// Reads credentials from `<dir>/config.json`, each time anew, so a config
/// changed by `docker login` is seen without a restart.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    dir: PathBuf,
    helper_timeout: Duration,
}

impl DockerConfig {
    pub fn new(dir: PathBuf, helper_timeout: Duration) -> DockerConfig {
        DockerConfig {
            dir,
            helper_timeout,
        }
    }

    /// The credentials for `registry` (a host such as `127.0.0.1:5000`, or
    /// `docker.io`), or anonymous ones when the config has none for it. The
    /// docker CLI's order: the host's `credHelpers` entry, else `credsStore`,
    /// else the `auths` entry.
    pub async fn auth_for(&self, registry: &str) -> anyhow::Result<RegistryAuth> {
        let path = self.dir.join("config.json");
        let config: ConfigFile = match tokio::fs::read(&path).await {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a docker config", path.display()))?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(RegistryAuth::anonymous());
            }
            Err(error) => {
                return Err(error).with_context(|| format!("reading {}", path.display()));
            }
        };
        let server = if registry == "docker.io" {
            DOCKER_HUB_KEY
        } else {
            registry
        };
        let helper = config
            .cred_helpers
            .get(registry)
            .filter(|name| !name.is_empty())
            .or(config.creds_store.as_ref().filter(|name| !name.is_empty()));
        match helper {
            Some(helper) => self.ask_helper(helper, server).await,
            None => Ok(from_auths(&config.auths, registry, server)?),
        }
    }

    /// Runs `docker-credential-HELPER get` with the server on stdin, for at
    /// most the helper timeout; a helper that does not answer is killed.
    async fn ask_helper(&self, helper: &str, server: &str) -> anyhow::Result<RegistryAuth> {
        let program = format!("docker-credential-{helper}");
        let mut child = tokio::process::Command::new(&program)
            .arg("get")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("running the credential helper {program}"))?;
        let exchange = async {
            let mut stdin = child.stdin.take().context("helper stdin")?;
            // A helper may answer without reading its input; its exit status
            // and output say how it went, not a broken pipe.
            let _ = stdin.write_all(server.as_bytes()).await;
            drop(stdin);
            let mut output = Vec::new();
            child
                .stdout
                .take()
                .context("helper stdout")?
                .take(HELPER_OUTPUT_LIMIT)
                .read_to_end(&mut output)
                .await?;
            let status = child.wait().await?;
            anyhow::Ok((status, output))
        };
        let (status, output) = match tokio::time::timeout(self.helper_timeout, exchange).await {
            Ok(result) => result.with_context(|| format!("talking to {program}"))?,
            Err(_) => {
                // Dropping the child kills it (kill_on_drop); reap it too.
                let _ = child.start_kill();
                anyhow::bail!(
                    "the credential helper {program} did not answer within {}s and was stopped",
                    self.helper_timeout.as_secs_f64()
                );
            }
        };
        if !status.success() {
            if String::from_utf8_lossy(&output).trim() == HELPER_NOT_FOUND {
                return Ok(RegistryAuth::anonymous());
            }
            // What the helper printed is not repeated: it may hold a secret.
            anyhow::bail!("the credential helper {program} failed ({status})");
        }
        let answer: HelperAnswer = serde_json::from_slice(&output).map_err(|_| {
            anyhow::anyhow!("the credential helper {program} answered no credentials")
        })?;
        Ok(if answer.username == "<token>" {
            RegistryAuth::identity_token(server, &answer.secret)
        } else {
            RegistryAuth::password(server, &answer.username, &answer.secret)
        })
    }
}

/// The `auths` entry for `registry`: by its exact key, or by a key that names
/// the same host (`https://host/v1/`, `http://host`).
fn from_auths(
    auths: &HashMap<String, AuthEntry>,
    registry: &str,
    server: &str,
) -> anyhow::Result<RegistryAuth> {
    let entry = auths.get(server).or_else(|| {
        auths
            .iter()
            .find(|(key, _)| key_host(key) == key_host(server))
            .map(|(_, entry)| entry)
    });
    let Some(entry) = entry else {
        return Ok(RegistryAuth::anonymous());
    };
    if let Some(token) = entry.identitytoken.as_deref().filter(|t| !t.is_empty()) {
        return Ok(RegistryAuth::identity_token(server, token));
    }
    if let Some(token) = entry.registrytoken.as_deref().filter(|t| !t.is_empty()) {
        return Ok(RegistryAuth::registry_token(server, token));
    }
    if let Some(encoded) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let decoded = STANDARD
            .decode(encoded.trim_end_matches('='))
            .or_else(|_| {
                base64::engine::general_purpose::STANDARD_NO_PAD
                    .decode(encoded.trim_end_matches('='))
            })
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .with_context(|| format!("the docker config's auth for {registry} is not base64"))?;
        let (username, password) = decoded.split_once(':').with_context(|| {
            format!("the docker config's auth for {registry} is not user:password")
        })?;
        return Ok(RegistryAuth::password(server, username, password));
    }
    match (&entry.username, &entry.password) {
        (Some(username), Some(password)) => Ok(RegistryAuth::password(server, username, password)),
        _ => Ok(RegistryAuth::anonymous()),
    }
}

/// The host a config key names, as the docker CLI reduces it: without a
/// scheme or path, Docker Hub's aliases as one.
fn key_host(key: &str) -> &str {
    let without_scheme = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = without_scheme.split('/').next().unwrap_or(without_scheme);
    match host {
        "docker.io" | "registry-1.docker.io" => "index.docker.io",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn config_in(dir: &std::path::Path, json: &str) -> DockerConfig {
        std::fs::write(dir.join("config.json"), json).unwrap();
        DockerConfig::new(dir.to_owned(), Duration::from_secs(5))
    }

    fn helper(dir: &std::path::Path, name: &str, script: &str) {
        let path = dir.join(format!("docker-credential-{name}"));
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn debug_hides_secrets() {
        let auth = RegistryAuth::password("r", "u", "hunter2");
        assert!(!format!("{auth:?}").contains("hunter2"));
        let auth = RegistryAuth::identity_token("r", "tok123");
        assert!(!format!("{auth:?}").contains("tok123"));
    }

    #[test]
    fn fingerprints_tell_credentials_apart() {
        let a = RegistryAuth::password("r", "u", "p1").fingerprint();
        let b = RegistryAuth::password("r", "u", "p2").fingerprint();
        let c = RegistryAuth::identity_token("r", "p1").fingerprint();
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, RegistryAuth::password("r", "u", "p1").fingerprint());
    }

    #[tokio::test]
    async fn reads_auths_entries_by_host() {
        let dir = tempfile::tempdir().unwrap();
        let encoded = STANDARD.encode("alice:pa+ss/word");
        let config = config_in(
            dir.path(),
            &format!(
                r#"{{"auths":{{"127.0.0.1:5000":{{"auth":"{encoded}"}},
                    "http://10.0.0.1:5000/v2/":{{"username":"bob","password":"pw"}},
                    "https://index.docker.io/v1/":{{"identitytoken":"refresh-me"}}}}}}"#
            ),
        );
        let auth = config.auth_for("127.0.0.1:5000").await.unwrap();
        assert_eq!(auth.basic(), Some(("alice", "pa+ss/word")));
        let auth = config.auth_for("10.0.0.1:5000").await.unwrap();
        assert_eq!(auth.basic(), Some(("bob", "pw")));
        let auth = config.auth_for("docker.io").await.unwrap();
        assert_eq!(auth.refresh_token(), Some("refresh-me"));
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
        let config = DockerConfig::new(dir.path().to_owned(), Duration::from_secs(5));
        assert!(
            config
                .auth_for("127.0.0.1:5000")
                .await
                .unwrap()
                .is_anonymous()
        );
    }

    /// One test for every helper case: helpers are found on PATH, which the
    /// test changes, and tests run in parallel threads.
    #[tokio::test]
    async fn helpers_answer_tokens_and_not_found_fail_quietly_and_are_time_boxed() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path();
        helper(
            bin,
            "unit-token",
            r#"read s; printf '{"ServerURL":"%s","Username":"<token>","Secret":"rt"}' "$s""#,
        );
        helper(
            bin,
            "unit-none",
            &format!("echo '{HELPER_NOT_FOUND}'; echo 'secret-in-stderr' >&2; exit 1"),
        );
        helper(bin, "unit-broken", "echo 'leaked-secret'; exit 3");
        helper(bin, "unit-hang", "exec sleep 30");
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        // SAFETY: no other test of this crate reads PATH.
        unsafe { std::env::set_var("PATH", path) };
        let mut config = config_in(
            bin,
            r#"{"credsStore":"unit-none",
                "credHelpers":{"a.test":"unit-token","b.test":"unit-broken","h.test":"unit-hang"}}"#,
        );
        config.helper_timeout = Duration::from_millis(300);

        let auth = config.auth_for("a.test").await.unwrap();
        assert_eq!(auth.refresh_token(), Some("rt"));
        assert!(config.auth_for("c.test").await.unwrap().is_anonymous());
        let error = format!("{:#}", config.auth_for("b.test").await.unwrap_err());
        assert!(
            error.contains("docker-credential-unit-broken failed"),
            "{error}"
        );
        assert!(!error.contains("leaked-secret"), "{error}");
        let started = std::time::Instant::now();
        let error = format!("{:#}", config.auth_for("h.test").await.unwrap_err());
        assert!(error.contains("did not answer"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
