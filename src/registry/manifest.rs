//! Manifests as publishd writes them. The image manifest exactly as dockerd
//! 20.10 pushes it: Docker schema 2, marshalled by Go's
//! `json.MarshalIndent(m, "", "   ")` (distribution's `schema2.FromStruct`).
//! Registry-side publishing writes these bytes, so that its manifest digest
//! is the one the engine path gives; a seed is only accepted when its own
//! manifest comes out of this rendering byte for byte. And a registry
//! source's manifests and indexes, rewritten around labelled configs: which
//! media types publishd knows, and the rewrites themselves.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use crate::domain::index::REFERENCE_DIGEST;
use crate::domain::publish_via::Descriptor;

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

/// A schema 2 manifest as read from a registry. Fields this type does not
/// know (`urls`, annotations) are dropped, so such a manifest does not
/// render back to its bytes and is not used as a seed.
#[derive(Deserialize)]
struct Schema2 {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: String,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// The manifest dockerd writes for an image of `config` over `layers`.
pub fn render(config: &Descriptor, layers: &[Descriptor]) -> Vec<u8> {
    let mut out = String::with_capacity(256 + 160 * layers.len());
    out.push_str("{\n   \"schemaVersion\": 2,\n");
    out.push_str(&format!("   \"mediaType\": {},\n", string(MANIFEST_V2)));
    out.push_str("   \"config\": ");
    descriptor(&mut out, config, "   ");
    out.push_str(",\n   \"layers\": [");
    for (index, layer) in layers.iter().enumerate() {
        out.push_str(if index == 0 { "\n      " } else { ",\n      " });
        descriptor(&mut out, layer, "      ");
    }
    out.push_str(if layers.is_empty() {
        "]\n}"
    } else {
        "\n   ]\n}"
    });
    out.into_bytes()
}

/// The layers of `manifest`, if it is a schema 2 manifest that `render`
/// reproduces exactly (so publishd can write its siblings); `None` for any
/// other format (OCI, a list, another pusher's layout).
pub fn reproducible_layers(manifest: &[u8]) -> Option<Vec<Descriptor>> {
    let parsed: Schema2 = serde_json::from_slice(manifest).ok()?;
    if parsed.schema_version != 2 || parsed.media_type != MANIFEST_V2 {
        return None;
    }
    (render(&parsed.config, &parsed.layers) == manifest).then_some(parsed.layers)
}

/// `manifest` (a registry source's, in its own format) with the config
/// descriptor pointing at another config: everything else (media types,
/// layers with their annotations) stays as the builder wrote it.
pub fn with_config(
    manifest: &[u8],
    config_digest: &str,
    config_size: usize,
) -> Result<Vec<u8>, String> {
    let mut manifest: serde_json::Value =
        serde_json::from_slice(manifest).map_err(|error| error.to_string())?;
    let config = manifest
        .get_mut("config")
        .and_then(serde_json::Value::as_object_mut)
        .ok_or("it has no config descriptor")?;
    config.insert("digest".to_owned(), config_digest.into());
    config.insert("size".to_owned(), config_size.into());
    serde_json::to_vec(&manifest).map_err(|error| error.to_string())
}

/// One descriptor at `indent`: Go's field order (mediaType, size, digest).
fn descriptor(out: &mut String, descriptor: &Descriptor, indent: &str) {
    out.push_str(&format!(
        "{{\n{indent}   \"mediaType\": {},\n{indent}   \"size\": {},\n{indent}   \"digest\": {}\n{indent}}}",
        string(&descriptor.media_type),
        descriptor.size,
        string(&descriptor.digest),
    ));
}

/// A JSON string as Go writes it: serde_json's escaping plus Go's HTML-safe
/// escapes of `<`, `>` and `&`.
fn string(value: &str) -> String {
    serde_json::Value::from(value)
        .to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A manifest in the layout dockerd 20.10.24 pushes (digests made up;
    /// `tests/registry_side.rs` checks the rendering against real pushes:
    /// no seed, so no registry-side target, without a byte-exact match).
    const PUSHED: &str = "{\n   \"schemaVersion\": 2,\n   \"mediaType\": \"application/vnd.docker.distribution.manifest.v2+json\",\n   \"config\": {\n      \"mediaType\": \"application/vnd.docker.container.image.v1+json\",\n      \"size\": 1021,\n      \"digest\": \"sha256:7f3a1e0e1c7b8c6a1f4a62a83e7e7c2b7d4f6a0e4c1f9b7a5d3c2e1f0a9b8c7d\"\n   },\n   \"layers\": [\n      {\n         \"mediaType\": \"application/vnd.docker.image.rootfs.diff.tar.gzip\",\n         \"size\": 187,\n         \"digest\": \"sha256:1b930d010525941c1d56ec53b97bd057a67ae1865eebf042686d2a2d18271ced\"\n      },\n      {\n         \"mediaType\": \"application/vnd.docker.image.rootfs.diff.tar.gzip\",\n         \"size\": 2811,\n         \"digest\": \"sha256:2c930d010525941c1d56ec53b97bd057a67ae1865eebf042686d2a2d18271cee\"\n      }\n   ]\n}";

    #[test]
    fn dockerds_manifest_renders_back_byte_for_byte() {
        let layers = reproducible_layers(PUSHED.as_bytes()).expect("reproducible");
        assert_eq!(layers.len(), 2);
        assert_eq!(layers[0].size, 187);
        let config = Descriptor {
            media_type: CONFIG_V1.to_owned(),
            size: 1021,
            digest: "sha256:7f3a1e0e1c7b8c6a1f4a62a83e7e7c2b7d4f6a0e4c1f9b7a5d3c2e1f0a9b8c7d"
                .to_owned(),
        };
        assert_eq!(String::from_utf8(render(&config, &layers)).unwrap(), PUSHED);
    }

    #[test]
    fn other_layouts_are_not_seeds() {
        let compact: serde_json::Value = serde_json::from_str(PUSHED).unwrap();
        assert!(reproducible_layers(compact.to_string().as_bytes()).is_none());
        let with_urls = PUSHED.replace(
            "\"size\": 187,",
            "\"size\": 187,\n         \"urls\": [\"https://example.com/layer\"],",
        );
        assert!(reproducible_layers(with_urls.as_bytes()).is_none());
        let oci = PUSHED.replace(
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.oci.image.manifest.v1+json",
        );
        assert!(reproducible_layers(oci.as_bytes()).is_none());
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
    fn no_layers_is_an_empty_array() {
        let config = Descriptor {
            media_type: CONFIG_V1.to_owned(),
            size: 2,
            digest: "sha256:00".to_owned(),
        };
        let rendered = String::from_utf8(render(&config, &[])).unwrap();
        assert!(rendered.ends_with("\"layers\": []\n}"), "{rendered}");
    }
}
