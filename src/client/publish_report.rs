//! werf v1.1's publish report (`--publish-report-path`,
//! `--publish-report-format json`), which deploy steps read: for each image
//! name, the tag werf published last, as werf v1.1's `PublishImagesPhase`
//! writes it (`json.Marshal` of `{"Images": {NAME: record}}`, then a
//! newline), plus `DockerImageDigest`, which werf does not write and its
//! readers ignore.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, anyhow};
use serde::Serialize;
use serde_json::Value;

/// The report: a map, so its keys come out sorted, as Go marshals maps.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Report {
    images: BTreeMap<String, Record>,
}

/// One image's record, its fields in werf's order.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Record {
    /// The werf image name; `""` for the nameless image (werf's
    /// `img.GetName()`), which is also its key.
    werf_image_name: String,
    /// The reference without its tag: `REPO/NAME` (multirepo; `REPO` for
    /// the nameless image) or `REPO` (monorepo).
    docker_repo: String,
    /// The tag as it is in the registry: `TAG`, or `NAME-TAG` in monorepo.
    docker_tag: String,
    /// The published image's id: werf's `MustGetBuiltId()` for a pushed
    /// image, the registry image's config digest for an up-to-date one;
    /// for an image index, its digest.
    #[serde(rename = "DockerImageID")]
    docker_image_id: String,
    /// The manifest (or index) digest the registry serves for the tag.
    docker_image_digest: String,
}

/// The report of `job`, a succeeded job as the API answers it. werf
/// publishes an image's tags one after another and each overwrites the
/// image's record, so the record is the image's last target in the job's
/// order (the CLI puts `content`, werf's last, last).
pub fn report(job: &Value) -> anyhow::Result<Vec<u8>> {
    let mut images = BTreeMap::new();
    for target in job["targets"]
        .as_array()
        .context("the job has no targets")?
    {
        let field = |name: &str| {
            target[name]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("target {target} has no {name}"))
        };
        let reference = field("reference")?;
        let (repo, tag) = reference
            .rsplit_once(':')
            .filter(|(_, tag)| !tag.contains('/'))
            .ok_or_else(|| anyhow!("{reference:?} has no tag"))?;
        let name = target["image"].as_str().unwrap_or_default().to_owned();
        let record = Record {
            werf_image_name: name.clone(),
            docker_repo: repo.to_owned(),
            docker_tag: tag.to_owned(),
            docker_image_id: field("image_id")?,
            docker_image_digest: field("digest")?,
        };
        images.insert(name, record);
    }
    let mut bytes = serde_json::to_vec(&Report { images })?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Writes the report of `job` to `path`.
pub fn write(job: &Value, path: &Path) -> anyhow::Result<()> {
    let bytes = report(job)?;
    std::fs::write(path, bytes)
        .with_context(|| format!("writing the publish report to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn target(image: Value, reference: &str, id: &str) -> Value {
        json!({"image": image, "reference": reference, "image_id": id, "digest": format!("{id}-m")})
    }

    #[test]
    fn each_image_is_reported_with_its_last_tag_as_werf_writes_it() {
        let job = json!({"targets": [
            target(json!("backend"), "reg:5000/acme/backend:v1", "sha256:b1"),
            target(json!("backend"), "reg:5000/acme/backend:0123abc", "sha256:b2"),
            target(json!("frontend"), "reg:5000/acme:frontend-v1", "sha256:f1"),
        ]});
        let written = String::from_utf8(report(&job).unwrap()).unwrap();
        assert_eq!(
            written,
            concat!(
                r#"{"Images":{"backend":{"WerfImageName":"backend","DockerRepo":"reg:5000/acme/backend","#,
                r#""DockerTag":"0123abc","DockerImageID":"sha256:b2","DockerImageDigest":"sha256:b2-m"},"#,
                r#""frontend":{"WerfImageName":"frontend","DockerRepo":"reg:5000/acme","#,
                r#""DockerTag":"frontend-v1","DockerImageID":"sha256:f1","DockerImageDigest":"sha256:f1-m"}}}"#,
                "\n"
            )
        );
    }

    #[test]
    fn the_nameless_image_is_keyed_by_the_empty_name() {
        let job = json!({"targets": [target(Value::Null, "reg/acme:v1", "sha256:a")]});
        let written: Value = serde_json::from_slice(&report(&job).unwrap()).unwrap();
        assert_eq!(written["Images"][""]["WerfImageName"], "");
        assert_eq!(written["Images"][""]["DockerRepo"], "reg/acme");
        assert_eq!(written["Images"][""]["DockerTag"], "v1");
    }
}
