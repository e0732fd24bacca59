//! The engine through bollard: dockerd, or any engine with its API (Podman's
//! `podman system service`). bollard makes the typed calls over this
//! module's transport; the push is read by `push.rs` over the same one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, ImportImageOptionsBuilder, RemoveImageOptionsBuilder,
    TagImageOptionsBuilder,
};
use bollard::{API_DEFAULT_VERSION, BollardRequest, Docker, body_full};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use super::settings::{EngineDescription, InfoReport, VersionReport};
use super::transport::{BOLLARD_ADDRESS, EngineTransport};
use super::{Engine, EngineError, LabelBuild, LabelledImage, PushProgress, SourceImage};
use crate::credentials::RegistryAuth;
use crate::domain::naming::split_tag;

const DEFAULT_SOCKET: &str = "unix:///var/run/docker.sock";
/// Bounds how long the engine may take to start answering a request (the
/// response headers); streamed answers are bounded by the worker's timeouts.
const REQUEST_TIMEOUT_SECS: u64 = 120;

/// History entries kept per image id: an id's history never changes, and a
/// job usually publishes one source under several tags.
const HISTORY_CACHE_SIZE: usize = 1024;

/// How long the engine's description is trusted before it is read again:
/// its registry settings change on a daemon reload, its store on a restart.
const DESCRIPTION_TTL: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct DockerEngine {
    host: String,
    transport: EngineTransport,
    /// Made on first use, when the API version is settled: the engine may
    /// not be up yet when publishd starts.
    docker: Arc<OnceCell<Docker>>,
    /// Image id -> its config's `history`, or `None` where it cannot be used.
    history: Arc<Mutex<HashMap<String, Option<Value>>>>,
    description: Arc<Mutex<Option<(Instant, EngineDescription)>>>,
}

impl DockerEngine {
    /// An engine at `docker_host` (`unix://…` or `tcp://…`; the default
    /// socket if `None`). Nothing is asked of the engine yet.
    pub fn new(docker_host: Option<&str>) -> anyhow::Result<DockerEngine> {
        let host = docker_host.unwrap_or(DEFAULT_SOCKET).to_owned();
        Ok(DockerEngine {
            transport: EngineTransport::new(&host)?,
            host,
            docker: Arc::default(),
            history: Arc::default(),
            description: Arc::default(),
        })
    }

    /// The engine's address when publishd reaches it over plain TCP (no
    /// TLS), where registry credentials travel in clear.
    pub fn plain_tcp(&self) -> Option<&str> {
        self.transport.plain_tcp()
    }

    /// The client, connected and its API version settled on first use.
    async fn docker(&self) -> Result<&Docker, EngineError> {
        self.docker
            .get_or_try_init(|| async {
                let transport = self.transport.clone();
                let docker = Docker::connect_with_custom_transport(
                    move |request: BollardRequest| {
                        let transport = transport.clone();
                        async move { transport.send(request).await }
                    },
                    Some(BOLLARD_ADDRESS),
                    REQUEST_TIMEOUT_SECS,
                    API_DEFAULT_VERSION,
                )
                .map_err(engine_error)?
                .with_request_modifier(url_safe_registry_auth);
                let docker = docker.negotiate_version().await.map_err(engine_error)?;
                let version = docker.client_version();
                tracing::info!(
                    engine = %self.host,
                    api_version = %format!("{}.{}", version.major_version, version.minor_version),
                    "docker engine connected"
                );
                Ok(docker)
            })
            .await
    }

    async fn source_image(&self, name: &str) -> Result<Option<SourceImage>, EngineError> {
        let docker = self.docker().await?;
        let inspect = match docker.inspect_image(name).await {
            Ok(inspect) => inspect,
            Err(error) if is_not_found(&error) => return Ok(None),
            Err(error) => return Err(engine_error(error)),
        };
        let id = inspect
            .id
            .clone()
            .ok_or_else(|| EngineError::Protocol("image without id".into()))?;
        let diff_ids = inspect
            .root_fs
            .as_ref()
            .and_then(|fs| fs.layers.clone())
            .unwrap_or_default();
        let mut container_config = serde_json::to_value(&inspect.config)
            .map_err(|error| EngineError::Protocol(format!("image config: {error}")))?;
        // bollard reads an absent map as an empty one; write it back absent,
        // as the source has it.
        if let Value::Object(fields) = &mut container_config {
            fields.retain(|_, value| value.as_object().is_none_or(|map| !map.is_empty()));
        }
        let mut config = json!({
            "architecture": inspect.architecture,
            "os": inspect.os,
            "created": inspect.created,
            "config": container_config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let optional = [
            ("variant", inspect.variant.clone()),
            ("os.version", inspect.os_version.clone()),
            ("author", inspect.author.clone()),
            ("comment", inspect.comment.clone()),
        ];
        for (key, value) in optional {
            if let Some(value) = value.filter(|v| !v.is_empty()) {
                config[key] = Value::String(value);
            }
        }
        if let Some(history) = self.config_history(docker, &id, diff_ids.len()).await? {
            config["history"] = history;
        }
        Ok(Some(SourceImage {
            id,
            config,
            layer_count: diff_ids.len(),
        }))
    }

    /// The image's history as its config holds it: oldest first, where the
    /// API answers newest first. The engine insists that non-empty entries
    /// match the layers one to one; when the sizes cannot tell us that, the
    /// history is left out (`None`).
    async fn config_history(
        &self,
        docker: &Docker,
        id: &str,
        layers: usize,
    ) -> Result<Option<Value>, EngineError> {
        if let Some(cached) = lock(&self.history).get(id) {
            return Ok(cached.clone());
        }
        // By id, not by name: the name may have moved since the inspect.
        let items = docker.image_history(id).await.map_err(engine_error)?;
        let non_empty = items.iter().filter(|item| item.size != 0).count();
        let history = (non_empty == layers).then(|| {
            let entries = items.iter().rev().map(|item| {
                let mut entry =
                    json!({"created": rfc3339(item.created), "created_by": item.created_by});
                if !item.comment.is_empty() {
                    entry["comment"] = Value::String(item.comment.clone());
                }
                if item.size == 0 {
                    entry["empty_layer"] = Value::Bool(true);
                }
                entry
            });
            Value::Array(entries.collect())
        });
        let mut cache = lock(&self.history);
        if cache.len() >= HISTORY_CACHE_SIZE {
            cache.clear();
        }
        cache.insert(id.to_owned(), history.clone());
        Ok(history)
    }

    async fn read_description(&self) -> Result<EngineDescription, EngineError> {
        let docker = self.docker().await?;
        let (version, info) =
            tokio::try_join!(docker.version(), docker.info()).map_err(engine_error)?;
        // bollard's models serialize under the Engine API's own names, which
        // is what the description reads.
        let reread = |value: Result<Value, serde_json::Error>| {
            value.map_err(|error| EngineError::Protocol(error.to_string()))
        };
        let version: VersionReport = serde_json::from_value(reread(serde_json::to_value(version))?)
            .map_err(|error| EngineError::Protocol(format!("/version: {error}")))?;
        let info: InfoReport = serde_json::from_value(reread(serde_json::to_value(info))?)
            .map_err(|error| EngineError::Protocol(format!("/info: {error}")))?;
        Ok(EngineDescription::from_reports(&version, &info))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// bollard encodes `X-Registry-Auth` in standard base64; the engine decodes
/// it as URL-safe and silently drops what it cannot decode, so a password
/// whose encoding holds `+` or `/` would push as anonymous. Re-encode it.
pub fn url_safe_registry_auth(mut request: BollardRequest) -> BollardRequest {
    let reencoded = request
        .headers()
        .get("X-Registry-Auth")
        .and_then(|value| STANDARD.decode(value.as_bytes()).ok())
        .and_then(|json| URL_SAFE.encode(json).parse().ok());
    if let Some(value) = reencoded {
        request.headers_mut().insert("X-Registry-Auth", value);
    }
    request
}

#[async_trait]
impl Engine for DockerEngine {
    async fn ping(&self) -> Result<(), EngineError> {
        self.docker()
            .await?
            .ping()
            .await
            .map(|_| ())
            .map_err(engine_error)
    }

    async fn describe(&self) -> Result<EngineDescription, EngineError> {
        if let Some((at, description)) = lock(&self.description).as_ref()
            && at.elapsed() < DESCRIPTION_TTL
        {
            return Ok(description.clone());
        }
        let description = self.read_description().await?;
        *lock(&self.description) = Some((Instant::now(), description.clone()));
        Ok(description)
    }

    async fn inspect_image(&self, name: &str) -> Result<Option<SourceImage>, EngineError> {
        self.source_image(name).await
    }

    async fn image_id(&self, reference: &str) -> Result<Option<String>, EngineError> {
        match self.docker().await?.inspect_image(reference).await {
            Ok(inspect) => Ok(inspect.id),
            Err(error) if is_not_found(&error) => Ok(None),
            Err(error) => Err(engine_error(error)),
        }
    }

    async fn load_image(&self, image: &LabelledImage, reference: &str) -> Result<(), EngineError> {
        let archive = image.archive(reference).map_err(|error| {
            EngineError::Protocol(format!("building the image archive: {error}"))
        })?;
        let docker = self.docker().await?;
        let mut stream = docker.import_image(
            ImportImageOptionsBuilder::default().quiet(true).build(),
            body_full(Bytes::from(archive)),
            None,
        );
        // The load answers 200 whatever happens; its stream says what it did.
        let loaded = format!("Loaded image: {reference}");
        let mut named = false;
        while let Some(item) = stream.next().await {
            let item = item.map_err(engine_error)?;
            named |= item.stream.is_some_and(|text| text.trim_end() == loaded);
        }
        if named {
            Ok(())
        } else {
            Err(EngineError::Protocol(format!(
                "the load did not name {reference}"
            )))
        }
    }

    async fn build_image(&self, build: &LabelBuild, name: &str) -> Result<String, EngineError> {
        let context = build.context().map_err(|error| {
            EngineError::Protocol(format!("building the build context: {error}"))
        })?;
        let options = BuildImageOptionsBuilder::default()
            .dockerfile("Dockerfile")
            .t(name)
            .rm(true)
            .forcerm(true)
            .q(true)
            .build();
        let docker = self.docker().await?;
        let mut stream = docker.build_image(options, None, Some(body_full(Bytes::from(context))));
        while let Some(item) = stream.next().await {
            let item = item.map_err(engine_error)?;
            if let Some(message) = item.error_detail.and_then(|detail| detail.message) {
                return Err(EngineError::Api {
                    status: 200,
                    message: format!("build: {message}"),
                });
            }
        }
        // The id as the engine names it now: the build's own report of it
        // differs in form between engines.
        self.image_id(name)
            .await?
            .ok_or_else(|| EngineError::Protocol(format!("the build did not name {name}")))
    }

    async fn push(
        &self,
        reference: &str,
        auth: &RegistryAuth,
        progress: &(dyn Fn(PushProgress) + Send + Sync),
    ) -> Result<String, EngineError> {
        let (repository, tag) = split_tag(reference);
        let credentials = serde_json::to_vec(&auth.engine_credentials())
            .map_err(|error| EngineError::Protocol(error.to_string()))?;
        if let Some(digest) =
            super::push::push(&self.transport, repository, tag, &credentials, progress).await?
        {
            return Ok(digest);
        }
        // An engine that reported no digest records it among the image's
        // repo digests.
        let inspect = self
            .docker()
            .await?
            .inspect_image(reference)
            .await
            .map_err(engine_error)?;
        inspect
            .repo_digests
            .unwrap_or_default()
            .iter()
            .find_map(|pinned| {
                let (name, digest) = pinned.split_once('@')?;
                same_repository(name, repository).then(|| digest.to_owned())
            })
            .ok_or_else(|| {
                EngineError::Push("the push stream ended without reporting a digest".to_owned())
            })
    }

    async fn remove_reference(&self, reference: &str) -> Result<(), EngineError> {
        let options = RemoveImageOptionsBuilder::default()
            .force(false)
            .noprune(false)
            .build();
        match self
            .docker()
            .await?
            .remove_image(reference, Some(options), None)
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if is_not_found(&error) => Ok(()),
            Err(error) => Err(engine_error(error)),
        }
    }

    async fn tag_image(&self, image_id: &str, reference: &str) -> Result<(), EngineError> {
        let (repo, tag) = split_tag(reference);
        let options = TagImageOptionsBuilder::default()
            .repo(repo)
            .tag(tag)
            .build();
        self.docker()
            .await?
            .tag_image(image_id, Some(options))
            .await
            .map_err(engine_error)
    }
}

/// Repo digests name the repository as the engine normalises it
/// (`docker.io/library/app` for `app`).
fn same_repository(a: &str, b: &str) -> bool {
    let normal = |name: &str| {
        oci_spec::distribution::Reference::try_from(name)
            .map(|parsed| format!("{}/{}", parsed.registry(), parsed.repository()))
            .unwrap_or_else(|_| name.to_owned())
    };
    normal(a) == normal(b)
}

fn rfc3339(unix_seconds: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix_seconds)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
}

fn is_not_found(error: &bollard::errors::Error) -> bool {
    matches!(
        error,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

fn engine_error(error: bollard::errors::Error) -> EngineError {
    use bollard::errors::Error;
    match error {
        Error::DockerResponseServerError {
            status_code,
            message,
        } => EngineError::Api {
            status: status_code,
            message,
        },
        Error::DockerStreamError { error } => EngineError::Api {
            status: 200,
            message: error,
        },
        Error::HyperResponseError { .. }
        | Error::HyperLegacyError { .. }
        | Error::IOError { .. }
        | Error::SocketNotFoundError(_)
        | Error::RequestTimeoutError => EngineError::Unreachable(error.to_string()),
        other => EngineError::Protocol(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_auth_is_reencoded_url_safe() {
        // A payload whose standard base64 holds both `+` and `/`.
        let json = br#"{"password":"s3cr?t>>>???~~~>?>?"}"#;
        let standard = STANDARD.encode(json);
        assert!(standard.contains('+') && standard.contains('/'));
        let request = BollardRequest::new(bollard::body_full(Bytes::new()));
        let mut request = request;
        request
            .headers_mut()
            .insert("X-Registry-Auth", standard.parse().unwrap());
        let request = url_safe_registry_auth(request);
        let header = request.headers()["X-Registry-Auth"].to_str().unwrap();
        assert_eq!(URL_SAFE.decode(header).unwrap(), json);
    }

    #[test]
    fn repositories_compare_normalised() {
        assert!(same_repository("docker.io/library/app", "app"));
        assert!(same_repository("127.0.0.1:5000/a/b", "127.0.0.1:5000/a/b"));
        assert!(!same_repository("127.0.0.1:5000/a/b", "127.0.0.1:5000/a/c"));
    }
}
