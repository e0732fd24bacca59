//! The engine through bollard (and, for push and version discovery, the bare
//! client in `http.rs`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use async_trait::async_trait;
use bollard::Docker;
use bollard::image::{ImportImageOptions, RemoveImageOptions, TagImageOptions};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};

use super::http::EngineHttp;
use super::{Engine, EngineError, LabelledImage, SourceImage};
use crate::credentials::RegistryAuth;
use crate::domain::naming::split_tag;

/// The newest Engine API version this code speaks; older engines are spoken
/// to in their own version.
const NEWEST_API: (usize, usize) = (1, 47);
const DEFAULT_SOCKET: &str = "unix:///var/run/docker.sock";
/// Bounds each non-streaming request; streamed pushes are bounded by the worker.
const REQUEST_TIMEOUT_SECS: u64 = 120;

/// History entries kept per image id: an id's history never changes, and a
/// job usually publishes one source under several tags.
const HISTORY_CACHE_SIZE: usize = 1024;

#[derive(Clone)]
pub struct DockerEngine {
    docker: Docker,
    http: EngineHttp,
    api_version: String,
    /// Image id -> its config's `history`, or `None` where it cannot be used.
    history: Arc<Mutex<HashMap<String, Option<Value>>>>,
}

impl DockerEngine {
    /// Connects to `docker_host` (`unix://…` or `tcp://…`; the default socket
    /// if `None`) and settles on an API version both sides speak.
    pub async fn connect(docker_host: Option<&str>) -> anyhow::Result<DockerEngine> {
        let host = docker_host.unwrap_or(DEFAULT_SOCKET);
        let http = if let Some(path) = host.strip_prefix("unix://") {
            EngineHttp::unix(PathBuf::from(path))
        } else if let Some(authority) = host
            .strip_prefix("tcp://")
            .or_else(|| host.strip_prefix("http://"))
        {
            EngineHttp::tcp(authority.trim_end_matches('/').to_owned())
        } else {
            anyhow::bail!("DOCKER_HOST {host:?} is neither unix:// nor tcp://");
        };
        let server = http
            .api_version()
            .await
            .with_context(|| format!("asking the docker engine at {host} for its API version"))?;
        let (major, minor) = parse_version(&server)
            .with_context(|| format!("the engine reports API version {server:?}"))?;
        let (major, minor) = (major, minor).min(NEWEST_API);
        let version = bollard::ClientVersion {
            major_version: major,
            minor_version: minor,
        };
        let docker = if host.starts_with("unix://") {
            Docker::connect_with_unix(host, REQUEST_TIMEOUT_SECS, &version)
        } else {
            Docker::connect_with_http(host, REQUEST_TIMEOUT_SECS, &version)
        }
        .with_context(|| format!("connecting to the docker engine at {host}"))?;
        tracing::info!(engine = host, api_version = %format!("{major}.{minor}"), "docker engine connected");
        Ok(DockerEngine {
            docker,
            http,
            api_version: format!("{major}.{minor}"),
            history: Arc::default(),
        })
    }

    async fn source_image(&self, name: &str) -> Result<Option<SourceImage>, EngineError> {
        let inspect = match self.docker.inspect_image(name).await {
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
        let mut config = json!({
            "architecture": inspect.architecture,
            "os": inspect.os,
            "created": inspect.created,
            "config": inspect.config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let optional = [
            ("variant", inspect.variant.clone()),
            ("os.version", inspect.os_version.clone()),
            ("author", inspect.author.clone()),
            ("docker_version", inspect.docker_version.clone()),
            ("comment", inspect.comment.clone()),
        ];
        for (key, value) in optional {
            if let Some(value) = value.filter(|v| !v.is_empty()) {
                config[key] = Value::String(value);
            }
        }
        if let Some(history) = self.config_history(&id, diff_ids.len()).await? {
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
    async fn config_history(&self, id: &str, layers: usize) -> Result<Option<Value>, EngineError> {
        if let Some(cached) = self.lock_history().get(id) {
            return Ok(cached.clone());
        }
        // By id, not by name: the name may have moved since the inspect.
        let items = self.docker.image_history(id).await.map_err(engine_error)?;
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
        let mut cache = self.lock_history();
        if cache.len() >= HISTORY_CACHE_SIZE {
            cache.clear();
        }
        cache.insert(id.to_owned(), history.clone());
        Ok(history)
    }

    fn lock_history(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<Value>>> {
        self.history
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl Engine for DockerEngine {
    async fn ping(&self) -> Result<(), EngineError> {
        self.docker.ping().await.map(|_| ()).map_err(engine_error)
    }

    async fn inspect_image(&self, name: &str) -> Result<Option<SourceImage>, EngineError> {
        self.source_image(name).await
    }

    async fn image_id(&self, reference: &str) -> Result<Option<String>, EngineError> {
        match self.docker.inspect_image(reference).await {
            Ok(inspect) => Ok(inspect.id),
            Err(error) if is_not_found(&error) => Ok(None),
            Err(error) => Err(engine_error(error)),
        }
    }

    async fn load_image(&self, image: &LabelledImage, reference: &str) -> Result<(), EngineError> {
        let archive = image.archive(reference).map_err(|error| {
            EngineError::Protocol(format!("building the image archive: {error}"))
        })?;
        let mut stream = self.docker.import_image(
            ImportImageOptions { quiet: true },
            Bytes::from(archive),
            None,
        );
        // The load answers 200 whatever happens; its stream says what it did.
        let loaded = format!("Loaded image: {reference}");
        let mut named = false;
        while let Some(item) = stream.next().await {
            let item = item.map_err(engine_error)?;
            if let Some(detail) = item.error_detail.and_then(|d| d.message).or(item.error) {
                return Err(EngineError::Api {
                    status: 200,
                    message: detail,
                });
            }
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

    async fn push(&self, reference: &str, auth: &RegistryAuth) -> Result<String, EngineError> {
        let (repository, tag) = split_tag(reference);
        self.http
            .push(&self.api_version, repository, tag, auth.engine_header())
            .await
    }

    async fn remove_reference(&self, reference: &str) -> Result<(), EngineError> {
        let options = RemoveImageOptions {
            force: false,
            noprune: false,
        };
        match self
            .docker
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
        self.docker
            .tag_image(image_id, Some(TagImageOptions { repo, tag }))
            .await
            .map_err(engine_error)
    }
}

fn parse_version(version: &str) -> Option<(usize, usize)> {
    let (major, minor) = version.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
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
        Error::HyperResponseError { .. }
        | Error::HyperLegacyError { .. }
        | Error::IOError { .. }
        | Error::SocketNotFoundError(_)
        | Error::RequestTimeoutError => EngineError::Unreachable(error.to_string()),
        other => EngineError::Protocol(other.to_string()),
    }
}
