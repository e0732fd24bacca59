//! Manifests as publishd writes them. An image manifest another writer
//! made (an engine's push, a remote builder's) with another config in place
//! of its own, changed in place, so that every other byte stays as that
//! writer made it. For an engine's manifest that is the one the engine
//! would push for the new config: dockerd 20.10 writes Go's `MarshalIndent`
//! with three spaces, containerd four, Podman compact JSON, and the digest
//! of a registry-side target on the load method is the engine path's. And
//! a registry source's indexes, rewritten around their new manifests: which
//! media types publishd knows, and the rewrite itself.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::domain::index::REFERENCE_DIGEST;
use crate::domain::publish_via::Descriptor;

/// The Docker schema 2 image manifest's media type.
pub const MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const CONFIG_V1: &str = "application/vnd.docker.container.image.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The image manifests a registry source may be (or an index may list).
pub const IMAGE_MANIFEST_TYPES: [&str; 2] = [MANIFEST_V2, OCI_MANIFEST];
/// The indexes a registry source may be.
pub const INDEX_TYPES: [&str; 2] = [DOCKER_LIST, OCI_INDEX];
/// Image configs: what werf's labels are added to.
const CONFIG_TYPES: [&str; 2] = [CONFIG_V1, OCI_CONFIG];
/// Layers publishd copies or mounts as blobs.
const LAYER_TYPES: [&str; 4] = [
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    ZSTD_LAYER,
];
const ZSTD_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Layers a registry may not hold (Windows base layers): they are fetched
/// from their `urls`, and publishd does not copy them.
const FOREIGN_LAYER_TYPES: [&str; 4] = [
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
];

/// Why an image manifest of `config` over `layers` cannot be published,
/// naming the part; `None` if it can.
pub fn unsupported_part(config: &Descriptor, layers: &[Descriptor]) -> Option<String> {
    if !CONFIG_TYPES.contains(&config.media_type.as_str()) {
        return Some(format!(
            "its config is {:?}, not an image config: publishd adds werf's labels to image \
             configs ({})",
            config.media_type,
            CONFIG_TYPES.join(", ")
        ));
    }
    layers.iter().enumerate().find_map(|(index, layer)| {
        if FOREIGN_LAYER_TYPES.contains(&layer.media_type.as_str()) {
            Some(format!(
                "its layer {index} ({}) is a foreign (non-distributable) layer, {:?}, which \
                 registries need not hold and publishd does not copy",
                layer.digest, layer.media_type
            ))
        } else if !LAYER_TYPES.contains(&layer.media_type.as_str()) {
            Some(format!(
                "its layer {index} ({}) has the unknown media type {:?}; publishd copies \
                 layers of {}",
                layer.digest,
                layer.media_type,
                LAYER_TYPES.join(", ")
            ))
        } else {
            None
        }
    })
}

/// The layers compressed with zstd, which some registries refuse.
pub fn zstd_layers(layers: &[Descriptor]) -> Vec<&Descriptor> {
    layers
        .iter()
        .filter(|layer| layer.media_type == ZSTD_LAYER)
        .collect()
}

/// One entry of an index as written there.
#[derive(Debug, Deserialize)]
pub struct IndexDescriptor {
    #[serde(default, rename = "mediaType")]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub platform: Option<serde_json::Value>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// `index` with only the entries at `kept` (in its order): an entry in
/// `replaced` points at its new manifest (digest and size), and every
/// `vnd.docker.reference.digest` annotation that named a replaced manifest
/// names its new one. Everything else (the index's media type and
/// annotations, each entry's media type, platform and annotations) stays.
pub fn rewrite_index(
    index: &[u8],
    kept: &[usize],
    replaced: &HashMap<usize, (String, usize)>,
) -> Result<Vec<u8>, String> {
    let mut index: serde_json::Value =
        serde_json::from_slice(index).map_err(|error| error.to_string())?;
    let entries = index
        .get_mut("manifests")
        .and_then(serde_json::Value::as_array_mut)
        .ok_or("it has no manifests")?;
    let mut repointed: HashMap<String, String> = HashMap::new();
    for (position, (digest, _)) in replaced {
        let old = entries
            .get(*position)
            .and_then(|entry| entry["digest"].as_str())
            .ok_or_else(|| format!("it has no entry {position}"))?;
        repointed.insert(old.to_owned(), digest.clone());
    }
    let mut written = Vec::with_capacity(kept.len());
    for &position in kept {
        let mut entry = entries
            .get(position)
            .cloned()
            .ok_or_else(|| format!("it has no entry {position}"))?;
        let fields = entry
            .as_object_mut()
            .ok_or_else(|| format!("its entry {position} is not an object"))?;
        if let Some((digest, size)) = replaced.get(&position) {
            fields.insert("digest".to_owned(), digest.as_str().into());
            fields.insert("size".to_owned(), (*size).into());
        }
        if let Some(described) = fields
            .get_mut("annotations")
            .and_then(|annotations| annotations.get_mut(REFERENCE_DIGEST))
            && let Some(new) = described.as_str().and_then(|old| repointed.get(old))
        {
            *described = new.as_str().into();
        }
        written.push(entry);
    }
    *entries = written;
    serde_json::to_vec(&index).map_err(|error| error.to_string())
}

/// The manifest's top level: only where its config descriptor is.
#[derive(Deserialize)]
struct Outer<'a> {
    #[serde(borrow)]
    config: &'a RawValue,
}

/// The config descriptor: only where its digest and size are.
#[derive(Deserialize)]
struct ConfigDescriptor<'a> {
    #[serde(borrow)]
    digest: &'a RawValue,
    #[serde(borrow)]
    size: &'a RawValue,
}

/// `manifest` with its config descriptor's digest and size replaced where
/// they stand: the layout, field order, media types, layers and annotations
/// stay byte for byte.
pub fn with_config(
    manifest: &[u8],
    config_digest: &str,
    config_size: usize,
) -> Result<Vec<u8>, String> {
    let text = std::str::from_utf8(manifest).map_err(|error| error.to_string())?;
    let outer: Outer = serde_json::from_str(text).map_err(|error| error.to_string())?;
    let config_at = offset(text, outer.config.get());
    let config: ConfigDescriptor =
        serde_json::from_str(outer.config.get()).map_err(|error| error.to_string())?;
    let digest_at = config_at + offset(outer.config.get(), config.digest.get());
    let size_at = config_at + offset(outer.config.get(), config.size.get());
    let new_digest = serde_json::Value::from(config_digest).to_string();
    let new_size = config_size.to_string();
    let mut replacements = [
        (digest_at, config.digest.get().len(), new_digest.as_str()),
        (size_at, config.size.get().len(), new_size.as_str()),
    ];
    replacements.sort_by_key(|(at, _, _)| *at);
    let mut out = String::with_capacity(text.len() + 16);
    let mut done = 0;
    for (at, len, with) in replacements {
        out.push_str(&text[done..at]);
        out.push_str(with);
        done = at + len;
    }
    out.push_str(&text[done..]);
    Ok(out.into_bytes())
}

/// Where `part`, a slice borrowed from `whole`, starts in it.
fn offset(whole: &str, part: &str) -> usize {
    part.as_ptr() as usize - whole.as_ptr() as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A manifest in the layout dockerd 20.10.24 pushes (digests made up).
    const DOCKERD: &str = "{\n   \"schemaVersion\": 2,\n   \"mediaType\": \"application/vnd.docker.distribution.manifest.v2+json\",\n   \"config\": {\n      \"mediaType\": \"application/vnd.docker.container.image.v1+json\",\n      \"size\": 1021,\n      \"digest\": \"sha256:7f3a1e0e1c7b8c6a1f4a62a83e7e7c2b7d4f6a0e4c1f9b7a5d3c2e1f0a9b8c7d\"\n   },\n   \"layers\": [\n      {\n         \"mediaType\": \"application/vnd.docker.image.rootfs.diff.tar.gzip\",\n         \"size\": 187,\n         \"digest\": \"sha256:1b930d010525941c1d56ec53b97bd057a67ae1865eebf042686d2a2d18271ced\"\n      }\n   ]\n}";

    #[test]
    fn only_the_config_descriptor_changes() {
        let new = "sha256:aaaa";
        let written =
            String::from_utf8(with_config(DOCKERD.as_bytes(), new, 99999).unwrap()).unwrap();
        let expected = DOCKERD
            .replace(
                "sha256:7f3a1e0e1c7b8c6a1f4a62a83e7e7c2b7d4f6a0e4c1f9b7a5d3c2e1f0a9b8c7d",
                new,
            )
            .replace("\"size\": 1021", "\"size\": 99999");
        assert_eq!(written, expected);
    }

    #[test]
    fn any_layout_and_field_order_is_kept() {
        // containerd's four spaces, digest before size; and compact JSON
        // with annotations, as Podman and BuildKit write.
        let oci = "{\n    \"mediaType\": \"application/vnd.oci.image.manifest.v1+json\",\n    \"schemaVersion\": 2,\n    \"config\": {\n        \"mediaType\": \"application/vnd.oci.image.config.v1+json\",\n        \"digest\": \"sha256:0d59\",\n        \"size\": 707\n    },\n    \"layers\": []\n}";
        let written = with_config(oci.as_bytes(), "sha256:bb", 7).unwrap();
        assert_eq!(
            String::from_utf8(written).unwrap(),
            oci.replace("sha256:0d59", "sha256:bb").replace("707", "7")
        );
        let compact = r#"{"schemaVersion":2,"config":{"size":5,"digest":"sha256:c1","mediaType":"x"},"layers":[{"size":5,"digest":"sha256:c1"}],"annotations":{"a":"b"}}"#;
        let written = with_config(compact.as_bytes(), "sha256:c2", 6).unwrap();
        assert_eq!(
            String::from_utf8(written).unwrap(),
            r#"{"schemaVersion":2,"config":{"size":6,"digest":"sha256:c2","mediaType":"x"},"layers":[{"size":5,"digest":"sha256:c1"}],"annotations":{"a":"b"}}"#
        );
    }

    fn blob(media_type: &str, digest: &str) -> Descriptor {
        Descriptor {
            media_type: media_type.to_owned(),
            size: 1,
            digest: digest.to_owned(),
        }
    }

    #[test]
    fn the_unsupported_part_is_named() {
        let config = blob(OCI_CONFIG, "sha256:c");
        let gzip = blob("application/vnd.oci.image.layer.v1.tar+gzip", "sha256:l0");
        assert_eq!(unsupported_part(&config, std::slice::from_ref(&gzip)), None);
        let zstd = blob(ZSTD_LAYER, "sha256:l1");
        assert_eq!(
            unsupported_part(&config, &[gzip.clone(), zstd.clone()]),
            None
        );
        assert_eq!(zstd_layers(&[gzip.clone(), zstd]).len(), 1);

        let helm = blob("application/vnd.cncf.helm.config.v1+json", "sha256:c");
        let why = unsupported_part(&helm, std::slice::from_ref(&gzip)).unwrap();
        assert!(why.contains("not an image config"), "{why}");
        let foreign = blob(FOREIGN_LAYER_TYPES[0], "sha256:win");
        let why = unsupported_part(&config, &[gzip.clone(), foreign]).unwrap();
        assert!(why.contains("layer 1 (sha256:win) is a foreign"), "{why}");
        let odd = blob("application/x-odd", "sha256:odd");
        let why = unsupported_part(&config, &[odd]).unwrap();
        assert!(
            why.contains("unknown media type \"application/x-odd\""),
            "{why}"
        );
    }

    #[test]
    fn an_index_is_rewritten_around_its_new_manifests() {
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "annotations": {"org.opencontainers.image.created": "today"},
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": "sha256:amd", "size": 10,
                 "platform": {"os": "linux", "architecture": "amd64"}},
                {"mediaType": OCI_MANIFEST, "digest": "sha256:arm", "size": 11,
                 "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                {"mediaType": OCI_MANIFEST, "digest": "sha256:att-amd", "size": 12,
                 "platform": {"os": "unknown", "architecture": "unknown"},
                 "annotations": {"vnd.docker.reference.type": "attestation-manifest",
                                 "vnd.docker.reference.digest": "sha256:amd"}},
                {"mediaType": OCI_MANIFEST, "digest": "sha256:att-arm", "size": 13,
                 "platform": {"os": "unknown", "architecture": "unknown"},
                 "annotations": {"vnd.docker.reference.type": "attestation-manifest",
                                 "vnd.docker.reference.digest": "sha256:arm"}}
            ]
        });
        let bytes = serde_json::to_vec(&index).unwrap();
        let replaced = HashMap::from([
            (0, ("sha256:new-amd".to_owned(), 20)),
            (1, ("sha256:new-arm".to_owned(), 21)),
        ]);
        let written: serde_json::Value =
            serde_json::from_slice(&rewrite_index(&bytes, &[0, 1, 2, 3], &replaced).unwrap())
                .unwrap();
        let mut expected = index.clone();
        expected["manifests"][0]["digest"] = "sha256:new-amd".into();
        expected["manifests"][0]["size"] = 20.into();
        expected["manifests"][1]["digest"] = "sha256:new-arm".into();
        expected["manifests"][1]["size"] = 21.into();
        expected["manifests"][2]["annotations"][REFERENCE_DIGEST] = "sha256:new-amd".into();
        expected["manifests"][3]["annotations"][REFERENCE_DIGEST] = "sha256:new-arm".into();
        assert_eq!(written, expected);

        // A subset: the arm64 image and its attestation, nothing else.
        let replaced = HashMap::from([(1, ("sha256:new-arm".to_owned(), 21))]);
        let written: serde_json::Value =
            serde_json::from_slice(&rewrite_index(&bytes, &[1, 3], &replaced).unwrap()).unwrap();
        assert_eq!(
            written["manifests"],
            serde_json::json!([expected["manifests"][1], expected["manifests"][3]])
        );
        assert_eq!(written["annotations"], index["annotations"]);
    }

    #[test]
    fn a_manifest_without_a_config_is_refused() {
        assert!(with_config(br#"{"manifests":[]}"#, "sha256:a", 1).is_err());
        assert!(with_config(br#"{"config":{"digest":"sha256:a"}}"#, "sha256:b", 1).is_err());
        assert!(with_config(b"not json", "sha256:b", 1).is_err());
    }
}
