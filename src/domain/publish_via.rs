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

/// What the engine pushed of a source image to one registry: the layers of
/// its manifest there, and a repository that holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    pub layers: Vec<Descriptor>,
    pub repository: String,
}

/// Whether a target may skip the engine at all. The job's choice wins over
/// the service's. Only the load tag method qualifies: there the labelled
/// config is the source's config plus the labels, byte for byte what
/// publishd computes, so writing it to the registry gives the very image
/// (and digest) the engine path would push. A build's config is the
/// builder's (it may add an `Env`, and stamps times), known only after it ran.
pub fn may_skip_engine(job: Option<PublishVia>, service: PublishVia, config_known: bool) -> bool {
    job.unwrap_or(service) == PublishVia::Auto && config_known
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_job_wins_and_only_a_known_config_skips_the_engine() {
        use PublishVia::{Auto, Engine};
        assert!(may_skip_engine(None, Auto, true));
        assert!(!may_skip_engine(None, Engine, true));
        assert!(may_skip_engine(Some(Auto), Engine, true));
        assert!(!may_skip_engine(Some(Engine), Auto, true));
        assert!(!may_skip_engine(Some(Auto), Auto, false));
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
