//! Reads the real registry over its v2 API: what was pushed, under which
//! digest, with which config.

use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const MANIFEST_TYPES: &str = "application/vnd.docker.distribution.manifest.v2+json, \
                              application/vnd.oci.image.manifest.v1+json";
const ALL_MANIFEST_TYPES: &str = "application/vnd.docker.distribution.manifest.v2+json, \
                                  application/vnd.oci.image.manifest.v1+json, \
                                  application/vnd.docker.distribution.manifest.list.v2+json, \
                                  application/vnd.oci.image.index.v1+json";

pub struct Registry {
    host: String,
    scheme: &'static str,
    auth: Option<(String, String)>,
    client: reqwest::Client,
}

/// A pushed image as the registry serves it.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub digest: String,
    pub manifest: Value,
    /// The manifest and the config as the registry serves them.
    pub manifest_bytes: Vec<u8>,
    pub config_bytes: Vec<u8>,
    pub config: Value,
}

impl Pushed {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.config["config"]["Labels"][name].as_str()
    }

    /// The manifest's layer digests, in order.
    pub fn layer_digests(&self) -> Vec<&str> {
        self.manifest["layers"]
            .as_array()
            .map(|layers| {
                layers
                    .iter()
                    .map(|layer| layer["digest"].as_str().unwrap())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn diff_ids(&self) -> Vec<String> {
        self.config["rootfs"]["diff_ids"]
            .as_array()
            .map(|ids| {
                ids.iter()
                    .map(|id| id.as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Registry {
    pub fn open(host: &str) -> Registry {
        Registry {
            host: host.to_owned(),
            scheme: "http",
            auth: None,
            client: reqwest::Client::new(),
        }
    }

    /// A registry with htpasswd auth, or behind a token server: the
    /// credentials answer either challenge.
    pub fn with_auth(host: &str, user: &str, password: &str) -> Registry {
        Registry {
            auth: Some((user.to_owned(), password.to_owned())),
            ..Registry::open(host)
        }
    }

    /// A registry over TLS whose certificate `ca` (PEM) signed.
    pub fn tls(host: &str, ca: &std::path::Path) -> Registry {
        let pem = std::fs::read(ca).expect("test CA");
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("PEM CA"))
            .build()
            .unwrap();
        Registry {
            scheme: "https",
            client,
            ..Registry::open(host)
        }
    }

    async fn get(&self, path: &str, accept: Option<&str>) -> reqwest::Response {
        let url = format!("{}://{}/v2/{path}", self.scheme, self.host);
        let headers: Vec<(&str, &str)> = accept.map(|a| ("Accept", a)).into_iter().collect();
        self.send(reqwest::Method::GET, &url, &headers, Vec::new())
            .await
    }

    /// One request to `url`, answering a Bearer challenge with a token.
    async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> reqwest::Response {
        let request = |authorization: Option<&str>| {
            let mut request = self.client.request(method.clone(), url).body(body.clone());
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            match (authorization, &self.auth) {
                (Some(value), _) => request.header("Authorization", value),
                (None, Some((user, password))) => request.basic_auth(user, Some(password)),
                (None, None) => request,
            }
        };
        let response = request(None).send().await.expect("registry answers");
        let challenge = response
            .headers()
            .get("www-authenticate")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        match challenge {
            Some(challenge) if response.status() == 401 && challenge.starts_with("Bearer") => {
                let token = self.token(&challenge).await;
                request(Some(&format!("Bearer {token}")))
                    .send()
                    .await
                    .expect("registry answers")
            }
            _ => response,
        }
    }

    /// Uploads `bytes` as a blob of `repository`; answers its digest.
    pub async fn put_blob(&self, repository: &str, bytes: &[u8]) -> String {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        let base = format!("{}://{}", self.scheme, self.host);
        let started = self
            .send(
                reqwest::Method::POST,
                &format!("{base}/v2/{repository}/blobs/uploads/"),
                &[],
                Vec::new(),
            )
            .await;
        assert_eq!(started.status(), 202, "starting an upload to {repository}");
        let location = started.headers()["location"].to_str().unwrap().to_owned();
        let location = if location.starts_with('/') {
            format!("{base}{location}")
        } else {
            location
        };
        let separator = if location.contains('?') { '&' } else { '?' };
        let finished = self
            .send(
                reqwest::Method::PUT,
                &format!("{location}{separator}digest={digest}"),
                &[("Content-Type", "application/octet-stream")],
                bytes.to_vec(),
            )
            .await;
        assert_eq!(finished.status(), 201, "uploading {digest}");
        digest
    }

    /// Puts `manifest` (of `media_type`) as `repository:tag_or_digest`;
    /// answers its digest.
    pub async fn put_manifest(
        &self,
        repository: &str,
        tag_or_digest: &str,
        media_type: &str,
        manifest: &[u8],
    ) -> String {
        let url = format!(
            "{}://{}/v2/{repository}/manifests/{tag_or_digest}",
            self.scheme, self.host
        );
        let response = self
            .send(
                reqwest::Method::PUT,
                &url,
                &[("Content-Type", media_type)],
                manifest.to_vec(),
            )
            .await;
        let status = response.status();
        let answer = response.text().await.unwrap_or_default();
        assert_eq!(
            status, 201,
            "putting {repository}:{tag_or_digest}: {answer}"
        );
        format!("sha256:{}", hex::encode(Sha256::digest(manifest)))
    }

    /// Whether `repository` holds the blob `digest`.
    pub async fn has_blob(&self, repository: &str, digest: &str) -> bool {
        let url = format!(
            "{}://{}/v2/{repository}/blobs/{digest}",
            self.scheme, self.host
        );
        let response = self
            .send(reqwest::Method::HEAD, &url, &[], Vec::new())
            .await;
        response.status().is_success()
    }

    /// A token from the challenge's realm, with the basic credentials.
    async fn token(&self, challenge: &str) -> String {
        let param = |name: &str| {
            challenge
                .split(&format!("{name}=\""))
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .map(str::to_owned)
        };
        let realm = param("realm").expect("realm");
        let mut query = vec![];
        if let Some(service) = param("service") {
            query.push(("service", service));
        }
        if let Some(scope) = param("scope") {
            query.push(("scope", scope));
        }
        let mut request = self.client.get(realm).query(&query);
        if let Some((user, password)) = &self.auth {
            request = request.basic_auth(user, Some(password));
        }
        let answer: Value = request
            .send()
            .await
            .expect("token server")
            .json()
            .await
            .unwrap();
        answer["token"]
            .as_str()
            .or(answer["access_token"].as_str())
            .expect("a token")
            .to_owned()
    }

    /// The image `repository:tag` as pushed, or `None` if the tag is absent.
    pub async fn pushed(&self, reference: &str) -> Option<Pushed> {
        let path = reference
            .strip_prefix(&format!("{}/", self.host))
            .expect("reference in this registry");
        let (repository, tag) = path.rsplit_once(':').unwrap();
        self.image(repository, tag).await
    }

    /// `job` succeeded, and the registry serves each target's recorded digest.
    pub async fn assert_holds(&self, job: &Value) {
        assert_eq!(job["status"], "succeeded", "{job:#}");
        for target in job["targets"].as_array().unwrap() {
            let reference = target["reference"].as_str().unwrap();
            let pushed = self
                .pushed(reference)
                .await
                .unwrap_or_else(|| panic!("{reference} is not in the registry"));
            assert_eq!(
                pushed.digest,
                target["digest"].as_str().unwrap(),
                "{reference}"
            );
        }
    }

    /// What `repository` serves for `tag_or_digest`, any manifest or index
    /// format accepted: its digest and bytes, or `None`.
    pub async fn raw_manifest(
        &self,
        repository: &str,
        tag_or_digest: &str,
    ) -> Option<(String, Vec<u8>)> {
        let response = self
            .get(
                &format!("{repository}/manifests/{tag_or_digest}"),
                Some(ALL_MANIFEST_TYPES),
            )
            .await;
        if response.status() == StatusCode::NOT_FOUND {
            return None;
        }
        assert_eq!(response.status(), 200, "{repository}:{tag_or_digest}");
        let digest = response.headers()["docker-content-digest"]
            .to_str()
            .unwrap()
            .to_owned();
        Some((digest, response.bytes().await.unwrap().to_vec()))
    }

    /// The image stored under `digest` in `repository`.
    pub async fn by_digest(&self, repository: &str, digest: &str) -> Pushed {
        let image = self.image(repository, digest).await;
        image.unwrap_or_else(|| panic!("no manifest {repository}@{digest}"))
    }

    /// A manifest by tag or digest, with its config.
    async fn image(&self, repository: &str, tag_or_digest: &str) -> Option<Pushed> {
        let response = self
            .get(
                &format!("{repository}/manifests/{tag_or_digest}"),
                Some(MANIFEST_TYPES),
            )
            .await;
        if response.status() == StatusCode::NOT_FOUND {
            return None;
        }
        assert_eq!(
            response.status(),
            200,
            "manifest {repository}:{tag_or_digest}"
        );
        let digest = response.headers()["docker-content-digest"]
            .to_str()
            .unwrap()
            .to_owned();
        let manifest_bytes = response.bytes().await.unwrap().to_vec();
        let manifest: Value = serde_json::from_slice(&manifest_bytes).unwrap();
        let config_digest = manifest["config"]["digest"].as_str().unwrap();
        let config_bytes = self
            .get(&format!("{repository}/blobs/{config_digest}"), None)
            .await
            .bytes()
            .await
            .unwrap()
            .to_vec();
        let config: Value = serde_json::from_slice(&config_bytes).unwrap();
        Some(Pushed {
            digest,
            manifest,
            manifest_bytes,
            config_bytes,
            config,
        })
    }

    pub async fn tags(&self, repository: &str) -> Vec<String> {
        let response = self.get(&format!("{repository}/tags/list"), None).await;
        if response.status() == StatusCode::NOT_FOUND {
            return Vec::new();
        }
        let body: Value = response.json().await.unwrap();
        body["tags"]
            .as_array()
            .map(|tags| {
                tags.iter()
                    .map(|t| t.as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// An image as a remote builder pushes it: two fresh layers and a config.
pub struct Built {
    pub repository: String,
    pub digest: String,
    pub config_digest: String,
    pub layers: Vec<String>,
}

/// Pushes a new two-layer image as `repository:tag` in `media_type`'s
/// format (OCI, as BuildKit does, or Docker schema 2, as kaniko does).
pub async fn push_source(
    registry: &Registry,
    repository: &str,
    tag: &str,
    media_type: &str,
) -> Built {
    let (layer_type, config_type) = if media_type == OCI_MANIFEST {
        (
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.oci.image.config.v1+json",
        )
    } else {
        (
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "application/vnd.docker.container.image.v1+json",
        )
    };
    let mut layers = Vec::new();
    let mut descriptors = Vec::new();
    for index in 0..2 {
        let bytes: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8 ^ index)
            .chain(super::unique("layer").into_bytes())
            .collect();
        let digest = registry.put_blob(repository, &bytes).await;
        descriptors.push(json!({"mediaType": layer_type, "size": bytes.len(), "digest": digest}));
        layers.push(digest);
    }
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["MODE=ci"], "Cmd": ["/app"], "Labels": {"built-by": "ci"}},
        "rootfs": {"type": "layers", "diff_ids": layers},
        "history": [{"created_by": "COPY app /app"}, {"created_by": "COPY lib /lib"}],
    });
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_digest = registry.put_blob(repository, &config_bytes).await;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": config_type, "size": config_bytes.len(), "digest": config_digest},
        "layers": descriptors,
    });
    let digest = registry
        .put_manifest(
            repository,
            tag,
            media_type,
            &serde_json::to_vec(&manifest).unwrap(),
        )
        .await;
    Built {
        repository: repository.to_owned(),
        digest,
        config_digest,
        layers,
    }
}
