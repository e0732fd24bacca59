//! Registry sources read lately, by manifest (or index) digest: every
//! target of a job reads the same source, and what a digest names never
//! changes. An index is kept whole, with its manifests and configs. Entries
//! are per registry, repository and credentials (a cached answer is never
//! given to credentials that did not read it), live a minute, and are
//! bounded in bytes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Source;

/// How long an answer is reused: long enough for a job's targets, short
/// enough that revoked access is noticed soon.
const SOURCE_TTL: Duration = Duration::from_secs(60);
/// Most bytes of manifests and configs kept.
const SOURCE_BYTES: usize = 16 << 20;

/// Registry, repository, credential fingerprint, manifest digest.
pub type SourceKey = (String, String, [u8; 32], String);

#[derive(Default)]
pub struct SourceCache {
    entries: Mutex<HashMap<SourceKey, (Instant, Source)>>,
}

impl SourceCache {
    pub fn get(&self, key: &SourceKey) -> Option<Source> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(key)
            .filter(|(at, _)| at.elapsed() < SOURCE_TTL)
            .map(|(_, source)| source.clone())
    }

    pub fn insert(&self, key: SourceKey, source: &Source) {
        let size = source.weight();
        if size > SOURCE_BYTES {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|_, (at, _)| at.elapsed() < SOURCE_TTL);
        let mut total: usize = entries.values().map(|(_, source)| source.weight()).sum();
        while total + size > SOURCE_BYTES {
            let Some(oldest) = entries
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(key, _)| key.clone())
            else {
                break;
            };
            if let Some((_, gone)) = entries.remove(&oldest) {
                total -= gone.weight();
            }
        }
        entries.insert(key, (Instant::now(), source.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::SourceManifest;

    fn source(bytes: usize) -> Source {
        Source::Image(SourceManifest {
            digest: "sha256:m".to_owned(),
            media_type: String::new(),
            manifest: vec![0; bytes],
            config: Vec::new(),
            config_digest: "sha256:c".to_owned(),
            layers: Vec::new(),
            platform: None,
        })
    }

    fn key(digest: &str, credentials: u8) -> SourceKey {
        (
            "r".to_owned(),
            "a".to_owned(),
            [credentials; 32],
            digest.to_owned(),
        )
    }

    #[test]
    fn answers_only_the_same_credentials_and_stays_within_its_bytes() {
        let cache = SourceCache::default();
        cache.insert(key("one", 1), &source(10 << 20));
        assert!(cache.get(&key("one", 1)).is_some());
        assert!(cache.get(&key("one", 2)).is_none());
        cache.insert(key("two", 1), &source(10 << 20));
        assert!(cache.get(&key("one", 1)).is_none(), "the oldest made room");
        assert!(cache.get(&key("two", 1)).is_some());
        cache.insert(key("huge", 1), &source(SOURCE_BYTES + 1));
        assert!(cache.get(&key("huge", 1)).is_none());
    }
}
