//! Which way a target is published: through the engine (tag, push, untag),
//! or registry-side, where publishd's own registry client writes the
//! labelled config and the manifest next to layers the engine pushed before.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Which ways a job's targets may take (`--publish-via`, and per job).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PublishVia {
    /// Registry-side where it gives the image the engine path would give,
    /// the engine path otherwise.
    #[default]
    Auto,
    /// Every target through the engine.
    Engine,
}

impl PublishVia {
    pub fn as_str(self) -> &'static str {
        match self {
            PublishVia::Auto => "auto",
            PublishVia::Engine => "engine",
        }
    }

    pub fn parse(value: &str) -> Option<PublishVia> {
        [PublishVia::Auto, PublishVia::Engine]
            .into_iter()
            .find(|via| via.as_str() == value)
    }
}

/// Which way a published target went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PublishedVia {
    /// Tagged on the engine, pushed by it, untagged.
    Engine,
    /// Config and manifest written by publishd's registry client; the
    /// engine was not touched.
    Registry,
}

impl PublishedVia {
    pub fn as_str(self) -> &'static str {
        match self {
            PublishedVia::Engine => "engine",
            PublishedVia::Registry => "registry",
        }
    }

    pub fn parse(value: &str) -> Option<PublishedVia> {
        [PublishedVia::Engine, PublishedVia::Registry]
            .into_iter()
            .find(|via| via.as_str() == value)
    }
}

/// One blob of a manifest as the registry holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub size: u64,
    pub digest: String,
}

/// What the engine pushed of a source image to one registry: the manifest
/// and the config exactly as the registry holds them (the template of the
/// source's further targets there), the manifest's layers, and a repository
/// that holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    pub manifest: String,
    /// The manifest's media type (Docker schema 2 or OCI, as the engine pushed).
    pub media_type: String,
    pub config: String,
    pub layers: Vec<Descriptor>,
    pub repository: String,
}

/// Which seed a target may use: one the engine pushed of its source to its
/// registry, in the format of the engine the target would go through. The
/// format is what decides the pushed bytes: the engine's product, version
/// and image store, and the tag method (a load keeps the source's config,
/// a build is the builder's), so an engine upgrade never mixes formats.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SeedKey {
    pub source_image_id: String,
    /// `host[:port]`, as in references.
    pub registry: String,
    /// e.g. `docker 26.1.5 containerd build` (`engine::EngineDescription::seed_format`).
    pub engine: String,
}

/// Whether a target may skip the engine at all: the job's choice wins over
/// the service's. Where it may, a target whose source the engine has pushed
/// to its registry before (a seed) is written registry-side, in the format
/// of that push.
pub fn may_skip_engine(job: Option<PublishVia>, service: PublishVia) -> bool {
    job.unwrap_or(service) == PublishVia::Auto
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_job_wins() {
        use PublishVia::{Auto, Engine};
        assert!(may_skip_engine(None, Auto));
        assert!(!may_skip_engine(None, Engine));
        assert!(may_skip_engine(Some(Auto), Engine));
        assert!(!may_skip_engine(Some(Engine), Auto));
    }

    #[test]
    fn names_round_trip() {
        for via in [PublishVia::Auto, PublishVia::Engine] {
            assert_eq!(PublishVia::parse(via.as_str()), Some(via));
        }
        for via in [PublishedVia::Engine, PublishedVia::Registry] {
            assert_eq!(PublishedVia::parse(via.as_str()), Some(via));
        }
        assert_eq!(PublishVia::parse("registry"), None);
    }
}
