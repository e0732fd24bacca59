//! The image manifest exactly as dockerd 20.10 pushes it: Docker schema 2,
//! marshalled by Go's `json.MarshalIndent(m, "", "   ")` (distribution's
//! `schema2.FromStruct`). Registry-side publishing writes these bytes, so
//! that its manifest digest is the one the engine path gives; a seed is
//! only accepted when its own manifest comes out of this rendering byte for
//! byte.

use serde::Deserialize;

use crate::domain::publish_via::Descriptor;

pub const MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const CONFIG_V1: &str = "application/vnd.docker.container.image.v1+json";

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
