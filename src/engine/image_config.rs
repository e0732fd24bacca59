//! The labelled image the tag step makes, in the two ways the engine can make
//! it. The load way: the source's image config, as the engine reports it,
//! plus werf's labels, loaded with the source's own layers; the engine loads
//! it in about 46 ms without reading a layer (it finds them by chain id), and
//! unlike a build it adds nothing else to the config (see ENGINE-NOTES). The
//! build way: `FROM <source id>` and one `LABEL` instruction, which every
//! engine with the build API can run, whatever its image store.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// A local image as the tag step needs it.
#[derive(Debug, Clone)]
pub struct SourceImage {
    /// `sha256:...`
    pub id: String,
    /// The image config (the JSON whose sha256 is the image id), rebuilt from
    /// what the engine reports.
    pub config: Value,
    pub layer_count: usize,
}

impl SourceImage {
    /// The image's own labels.
    pub fn labels(&self) -> BTreeMap<String, String> {
        self.config["config"]["Labels"]
            .as_object()
            .map(|labels| {
                labels
                    .iter()
                    .filter_map(|(key, value)| Some((key.clone(), value.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A labelled copy of a source image, ready to load.
#[derive(Debug, Clone)]
pub struct LabelledImage {
    /// `sha256:...`: the engine names an image by its config's digest.
    pub id: String,
    config: Vec<u8>,
    layer_count: usize,
}

impl LabelledImage {
    /// The source config with `labels` added to (and winning over) its own.
    pub fn new(source: &SourceImage, labels: &BTreeMap<String, String>) -> LabelledImage {
        let mut config = source.config.clone();
        let container_config = config
            .as_object_mut()
            .map(|root| root.entry("config").or_insert_with(|| json!({})));
        if let Some(Value::Object(container_config)) = container_config {
            let current = container_config.entry("Labels").or_insert(Value::Null);
            if !current.is_object() {
                *current = json!({});
            }
            if let Value::Object(current) = current {
                for (key, value) in labels {
                    current.insert(key.clone(), Value::String(value.clone()));
                }
            }
        }
        let bytes = serde_json::to_vec(&config).unwrap_or_default();
        let id = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        LabelledImage {
            id,
            config: bytes,
            layer_count: source.layer_count,
        }
    }

    /// A `docker save` style archive holding only the manifest and the config:
    /// the layer files are named, as the manifest must list one per diff id,
    /// but absent, since the engine already holds every layer.
    pub fn archive(&self, reference: &str) -> std::io::Result<Vec<u8>> {
        let config_name = format!("{}.json", self.id.trim_start_matches("sha256:"));
        let layers: Vec<String> = (0..self.layer_count)
            .map(|index| format!("{index}/layer.tar"))
            .collect();
        let manifest = serde_json::to_vec(&json!([{
            "Config": config_name,
            "RepoTags": [reference],
            "Layers": layers,
        }]))?;
        let mut archive = tar::Builder::new(Vec::new());
        append(&mut archive, &config_name, &self.config)?;
        append(&mut archive, "manifest.json", &manifest)?;
        archive.into_inner()
    }

    pub fn config(&self) -> &[u8] {
        &self.config
    }

    /// The image a build of `LabelBuild` made for one target (`built`: its
    /// config as the engine pushed it), made the image of a sibling target
    /// of the same source, labelled `labels`: what a build with `labels`
    /// would give, but for the build's time. werf's labels are set in
    /// `config` (and in `container_config`, where the builder copies
    /// them, as Podman does), and the history entry that records the
    /// build's `LABEL` instruction is made to record the sibling's. `None`
    /// when `built` does not carry the labels' keys or its history has no
    /// record of the instruction in a form publishd knows: no sibling is
    /// made from it then.
    pub fn relabelled(built: &[u8], labels: &BTreeMap<String, String>) -> Option<LabelledImage> {
        let mut config: Value = serde_json::from_slice(built).ok()?;
        let built_labels: BTreeMap<String, String> = labels
            .keys()
            .map(|key| {
                let value = config["config"]["Labels"][key].as_str()?;
                Some((key.clone(), value.to_owned()))
            })
            .collect::<Option<_>>()?;
        // What ends with the build's instruction, rewritten to end with the
        // sibling's; the same text, or none.
        let rewrite = |text: &mut Value| -> bool {
            let Some(written) = text.as_str() else {
                return false;
            };
            let rewritten = RECORDED_LABEL_FORMS.iter().find_map(|form| {
                let prefix = written.strip_suffix(&label_instruction(&built_labels, *form))?;
                Some(format!("{prefix}{}", label_instruction(labels, *form)))
            });
            rewritten
                .map(|rewritten| *text = Value::String(rewritten))
                .is_some()
        };
        let history = config.get_mut("history")?.as_array_mut()?;
        let recorded = history
            .iter_mut()
            .rev()
            .find_map(|entry| entry.get_mut("created_by").filter(|text| text.is_string()))
            .is_some_and(&rewrite);
        if !recorded {
            return None;
        }
        // dockerd 20.10's classic builder also keeps the instruction as the
        // last word of `container_config.Cmd`.
        if let Some(last) = config
            .pointer_mut("/container_config/Cmd")
            .and_then(Value::as_array_mut)
            .and_then(|cmd| cmd.last_mut())
        {
            rewrite(last);
        }
        for part in ["config", "container_config"] {
            if let Some(Value::Object(current)) =
                config.get_mut(part).and_then(|part| part.get_mut("Labels"))
            {
                if part == "container_config"
                    && !built_labels.keys().all(|key| current.contains_key(key))
                {
                    continue;
                }
                for (key, value) in labels {
                    current.insert(key.clone(), Value::String(value.clone()));
                }
            }
        }
        let layer_count = config["rootfs"]["diff_ids"].as_array()?.len();
        let bytes = serde_json::to_vec(&config).ok()?;
        Some(LabelledImage {
            id: format!("sha256:{}", hex::encode(Sha256::digest(&bytes))),
            config: bytes,
            layer_count,
        })
    }
}

/// A build of the labelled image: `FROM` the source image by id (so a name
/// that moved meanwhile cannot change what is built) and the labels.
#[derive(Debug, Clone)]
pub struct LabelBuild {
    dockerfile: String,
}

impl LabelBuild {
    pub fn new(source_id: &str, labels: &BTreeMap<String, String>) -> LabelBuild {
        // The bare hex is what `FROM` takes as an image id on every engine.
        let dockerfile = format!(
            "FROM {}\n{}\n",
            source_id.trim_start_matches("sha256:"),
            label_instruction(labels, quoted)
        );
        LabelBuild { dockerfile }
    }

    pub fn dockerfile(&self) -> &str {
        &self.dockerfile
    }

    /// The build context: the Dockerfile alone.
    pub fn context(&self) -> std::io::Result<Vec<u8>> {
        let mut archive = tar::Builder::new(Vec::new());
        append(&mut archive, "Dockerfile", self.dockerfile.as_bytes())?;
        archive.into_inner()
    }
}

/// The `LABEL` instruction of `labels`, each key and value written by `write`.
fn label_instruction(labels: &BTreeMap<String, String>, write: fn(&str) -> String) -> String {
    let mut instruction = "LABEL".to_owned();
    for (key, value) in labels {
        instruction.push_str(&format!(" {}={}", write(key), write(value)));
    }
    instruction
}

/// How a builder records the `LABEL` instruction of a `LabelBuild` in the
/// image's history (`created_by` ends with it): as written (Podman's
/// buildah), or as dockerd's classic builder parsed it, unquoted.
const RECORDED_LABEL_FORMS: [fn(&str) -> String; 2] = [quoted, str::to_owned];

/// A Dockerfile string in double quotes: `\`, `"` and `$` (which LABEL
/// would expand as a variable) escaped, so a value arrives as written.
fn quoted(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for c in value.chars() {
        if matches!(c, '\\' | '"' | '$') {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

fn append(archive: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    archive.append_data(&mut header, name, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> SourceImage {
        SourceImage {
            id: "sha256:00".to_owned(),
            config: json!({
                "architecture": "amd64", "os": "linux",
                "config": {"Env": ["A=1"], "Cmd": ["/app"], "Labels": {"keep": "me", "werf-image": "old"}},
                "rootfs": {"type": "layers", "diff_ids": ["sha256:aa"]}
            }),
            layer_count: 1,
        }
    }

    #[test]
    fn labels_are_added_and_everything_else_kept() {
        let labels = BTreeMap::from([("werf-image".to_owned(), "true".to_owned())]);
        let image = LabelledImage::new(&source(), &labels);
        let config: Value = serde_json::from_slice(image.config()).unwrap();
        assert_eq!(
            config["config"]["Labels"],
            json!({"keep": "me", "werf-image": "true"})
        );
        assert_eq!(config["config"]["Env"], json!(["A=1"]));
        assert_eq!(config["rootfs"]["diff_ids"], json!(["sha256:aa"]));
        assert_eq!(
            image.id,
            format!("sha256:{}", hex::encode(Sha256::digest(image.config())))
        );
    }

    #[test]
    fn a_config_without_labels_gets_them() {
        let mut source = source();
        source.config["config"]["Labels"] = Value::Null;
        let labels = BTreeMap::from([("werf-image".to_owned(), "true".to_owned())]);
        let image = LabelledImage::new(&source, &labels);
        let config: Value = serde_json::from_slice(image.config()).unwrap();
        assert_eq!(config["config"]["Labels"], json!({"werf-image": "true"}));
    }

    #[test]
    fn the_build_is_from_the_source_id_with_quoted_labels() {
        let labels = BTreeMap::from([
            ("werf-image".to_owned(), "true".to_owned()),
            ("odd".to_owned(), r#"a "b" $c \d"#.to_owned()),
        ]);
        let build = LabelBuild::new("sha256:abc123", &labels);
        assert_eq!(
            build.dockerfile(),
            "FROM abc123\nLABEL \"odd\"=\"a \\\"b\\\" \\$c \\\\d\" \"werf-image\"=\"true\"\n"
        );
        let context = build.context().unwrap();
        let mut archive = tar::Archive::new(context.as_slice());
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|entry| entry.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["Dockerfile"]);
    }

    #[test]
    fn a_builds_image_is_relabelled_for_a_sibling() {
        let first = BTreeMap::from([
            ("werf-docker-image-name".to_owned(), "reg/app:v1".to_owned()),
            ("werf-image-tag".to_owned(), "v 1".to_owned()),
        ]);
        let second = BTreeMap::from([
            ("werf-docker-image-name".to_owned(), "reg/app:v2".to_owned()),
            ("werf-image-tag".to_owned(), "v2".to_owned()),
        ]);
        // dockerd's classic builder records the instruction unquoted;
        // buildah as written, and copies the labels into container_config.
        for (created_by, copied) in [
            (
                "/bin/sh -c #(nop)  LABEL werf-docker-image-name=reg/app:v1 werf-image-tag=v 1",
                false,
            ),
            (
                "/bin/sh -c #(nop) LABEL \"werf-docker-image-name\"=\"reg/app:v1\" \"werf-image-tag\"=\"v 1\"",
                true,
            ),
        ] {
            let mut labels = json!({"keep": "me"});
            for (key, value) in &first {
                labels[key] = json!(value);
            }
            let mut built = json!({
                "architecture": "amd64",
                "config": {"Env": ["PATH=/bin"], "Labels": labels},
                "rootfs": {"type": "layers", "diff_ids": ["sha256:aa"]},
                "history": [{"created_by": "COPY a /a"},
                            {"created_by": created_by, "empty_layer": true}]
            });
            if copied {
                built["container_config"] = json!({"Labels": labels});
            }
            let sibling =
                LabelledImage::relabelled(&serde_json::to_vec(&built).unwrap(), &second).unwrap();
            let config: Value = serde_json::from_slice(sibling.config()).unwrap();
            let expected = json!({"keep": "me", "werf-docker-image-name": "reg/app:v2",
                                  "werf-image-tag": "v2"});
            assert_eq!(config["config"]["Labels"], expected);
            assert_eq!(config["config"]["Env"], json!(["PATH=/bin"]));
            assert_eq!(config["history"][0], json!({"created_by": "COPY a /a"}));
            let recorded = config["history"][1]["created_by"].as_str().unwrap();
            assert!(
                recorded.contains("reg/app:v2") && !recorded.contains("v1"),
                "{recorded}"
            );
            if copied {
                assert_eq!(config["container_config"]["Labels"], expected);
            }
            assert_eq!(sibling.layer_count, 1);
            // Back again: the first target's config, as the build made it.
            let back = LabelledImage::relabelled(sibling.config(), &first).unwrap();
            let back: Value = serde_json::from_slice(back.config()).unwrap();
            assert_eq!(back, built);
        }
    }

    #[test]
    fn a_build_without_a_record_of_its_labels_has_no_siblings() {
        let labels = BTreeMap::from([("werf-image".to_owned(), "true".to_owned())]);
        let unlabelled = json!({"config": {}, "rootfs": {"diff_ids": []},
                                "history": [{"created_by": "LABEL werf-image=true"}]});
        let unrecorded = json!({"config": {"Labels": {"werf-image": "true"}},
                                "rootfs": {"diff_ids": []},
                                "history": [{"created_by": "LABEL other=thing"}]});
        for built in [unlabelled, unrecorded] {
            let bytes = serde_json::to_vec(&built).unwrap();
            assert!(
                LabelledImage::relabelled(&bytes, &labels).is_none(),
                "{built}"
            );
        }
    }

    #[test]
    fn archive_lists_manifest_and_config() {
        let image = LabelledImage::new(&source(), &BTreeMap::new());
        let bytes = image.archive("reg/app:v1").unwrap();
        let mut archive = tar::Archive::new(bytes.as_slice());
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|entry| entry.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names.len(), 2);
        assert!(names.contains(&"manifest.json".to_owned()));
    }
}
