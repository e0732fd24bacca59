//! Images as builders push them, written by the test straight into a real
//! registry: real layers (gzip-compressed tars an engine can unpack), image
//! configs of a platform, manifests in OCI or Docker format, BuildKit's
//! attestation manifests, and indexes (OCI image indexes, Docker manifest
//! lists) over them.

use std::io::Write;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::registry::Registry;
use super::unique;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// The two manifest formats builders push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// BuildKit's.
    Oci,
    /// dockerd's and kaniko's.
    Docker,
}

impl Format {
    pub fn manifest(self) -> &'static str {
        match self {
            Format::Oci => OCI_MANIFEST,
            Format::Docker => DOCKER_MANIFEST,
        }
    }

    pub fn index(self) -> &'static str {
        match self {
            Format::Oci => OCI_INDEX,
            Format::Docker => DOCKER_LIST,
        }
    }
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A layer of one file with unique content: the gzip blob, and the digest
/// of the tar inside it (the config's diff id).
pub fn layer(file: &str) -> (Vec<u8>, String) {
    let content = unique("content");
    let mut archive = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    archive
        .append_data(&mut header, file, content.as_bytes())
        .unwrap();
    let tar = archive.into_inner().unwrap();
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gzip.write_all(&tar).unwrap();
    (gzip.finish().unwrap(), sha256(&tar))
}

/// One platform's image as pushed (by digest, untagged).
#[derive(Debug, Clone)]
pub struct PlatformImage {
    pub platform: &'static str,
    pub digest: String,
    pub size: usize,
    pub media_type: &'static str,
    pub config_digest: String,
    /// Layer blob digests, and the diff ids of what they hold.
    pub layers: Vec<String>,
    pub diff_ids: Vec<String>,
}

impl PlatformImage {
    /// Its descriptor in an index, with its platform.
    pub fn descriptor(&self) -> Value {
        let mut parts = self.platform.split('/');
        let mut platform =
            json!({"os": parts.next().unwrap(), "architecture": parts.next().unwrap()});
        if let Some(variant) = parts.next() {
            platform["variant"] = variant.into();
        }
        json!({"mediaType": self.media_type, "size": self.size, "digest": self.digest,
               "platform": platform})
    }
}

/// Pushes an image of two fresh layers for `platform` (`os/arch[/variant]`)
/// into `repository` in `format`; its config carries a label and an Env of
/// its own.
pub async fn push_platform_image(
    registry: &Registry,
    repository: &str,
    platform: &'static str,
    format: Format,
) -> PlatformImage {
    let (config_type, layer_type) = match format {
        Format::Oci => (OCI_CONFIG, OCI_GZIP_LAYER),
        Format::Docker => (DOCKER_CONFIG, DOCKER_LAYER),
    };
    let (mut layers, mut diff_ids, mut descriptors) = (Vec::new(), Vec::new(), Vec::new());
    for file in ["app.txt", "lib.txt"] {
        let (blob, diff_id) = layer(file);
        let digest = registry.put_blob(repository, &blob).await;
        descriptors.push(json!({"mediaType": layer_type, "size": blob.len(), "digest": digest}));
        layers.push(digest);
        diff_ids.push(diff_id);
    }
    let mut parts = platform.split('/');
    let mut config = json!({
        "os": parts.next().unwrap(),
        "architecture": parts.next().unwrap(),
        "config": {"Env": ["MODE=ci"], "Cmd": ["/app.txt"], "Labels": {"built-by": "ci"}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "COPY app.txt /"}, {"created_by": "COPY lib.txt /"}],
    });
    if let Some(variant) = parts.next() {
        config["variant"] = variant.into();
    }
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_digest = registry.put_blob(repository, &config_bytes).await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": format.manifest(),
        "config": {"mediaType": config_type, "size": config_bytes.len(), "digest": config_digest},
        "layers": descriptors,
    }))
    .unwrap();
    let digest = registry
        .put_manifest(repository, &sha256(&manifest), format.manifest(), &manifest)
        .await;
    PlatformImage {
        platform,
        digest,
        size: manifest.len(),
        media_type: format.manifest(),
        config_digest,
        layers,
        diff_ids,
    }
}

/// Pushes the provenance attestation BuildKit pushes beside `subject`: an
/// OCI manifest of an in-toto statement naming the subject's manifest
/// digest; answers its descriptor in an index (on `unknown/unknown`, with
/// BuildKit's annotations).
pub async fn push_attestation(
    registry: &Registry,
    repository: &str,
    subject: &PlatformImage,
) -> Value {
    let statement = serde_json::to_vec(&json!({
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": "https://slsa.dev/provenance/v0.2",
        "subject": [{"name": format!("pkg:docker/{repository}?platform={}", subject.platform),
                     "digest": {"sha256": subject.digest.trim_start_matches("sha256:")}}],
        "predicate": {"buildType": "https://mobyproject.org/buildkit@v1", "nonce": unique("n")},
    }))
    .unwrap();
    let statement_digest = registry.put_blob(repository, &statement).await;
    let config = serde_json::to_vec(&json!({
        "architecture": "unknown", "os": "unknown", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [statement_digest]},
    }))
    .unwrap();
    let config_digest = registry.put_blob(repository, &config).await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "size": config.len(), "digest": config_digest},
        "layers": [{"mediaType": "application/vnd.in-toto+json", "size": statement.len(),
                    "digest": statement_digest,
                    "annotations": {"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"}}],
    }))
    .unwrap();
    let digest = registry
        .put_manifest(repository, &sha256(&manifest), OCI_MANIFEST, &manifest)
        .await;
    json!({
        "mediaType": OCI_MANIFEST, "size": manifest.len(), "digest": digest,
        "annotations": {"vnd.docker.reference.digest": subject.digest,
                        "vnd.docker.reference.type": "attestation-manifest"},
        "platform": {"architecture": "unknown", "os": "unknown"},
    })
}

/// Puts an index of `format` listing `entries` as `repository:tag`, with
/// an annotation of its own (OCI only: Docker's lists have none); answers
/// its digest and bytes.
pub async fn push_index(
    registry: &Registry,
    repository: &str,
    tag: &str,
    format: Format,
    entries: &[Value],
) -> (String, Vec<u8>) {
    let mut index = json!({"schemaVersion": 2, "mediaType": format.index(), "manifests": entries});
    if format == Format::Oci {
        index["annotations"] = json!({"org.opencontainers.image.created": "2026-12-18T00:00:00Z"});
    }
    let bytes = serde_json::to_vec(&index).unwrap();
    let digest = registry
        .put_manifest(repository, tag, format.index(), &bytes)
        .await;
    (digest, bytes)
}
