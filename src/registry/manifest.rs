//! Image manifests written registry-side: a manifest another writer made
//! (an engine's push, a remote builder's) with another config in place of
//! its own, changed in place, so that every other byte stays as that writer
//! made it. For an engine's manifest that is the one the engine would push
//! for the new config: dockerd 20.10 writes Go's `MarshalIndent` with three
//! spaces, containerd four, Podman compact JSON, and the digest of a
//! registry-side target on the load method is the engine path's.

use serde::Deserialize;
use serde_json::value::RawValue;

/// The Docker schema 2 image manifest's media type.
pub const MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";

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

    #[test]
    fn a_manifest_without_a_config_is_refused() {
        assert!(with_config(br#"{"manifests":[]}"#, "sha256:a", 1).is_err());
        assert!(with_config(br#"{"config":{"digest":"sha256:a"}}"#, "sha256:b", 1).is_err());
        assert!(with_config(b"not json", "sha256:b", 1).is_err());
    }
}
