//! Platforms as image indexes and `--platform` name them: `os/arch` with an
//! optional `/variant` (`linux/amd64`, `linux/arm/v7`).

use std::fmt;

/// One platform of an image.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// `os/arch[/variant]`, each part lower-case letters, digits, `_` or
    /// `.`, as OCI's platform values are written.
    pub fn parse(text: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = text.split('/').collect();
        let valid = |part: &&str| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(valid) {
            return Err(format!(
                "{text:?} is not a platform: write os/arch or os/arch/variant, e.g. linux/amd64 \
                 or linux/arm/v7"
            ));
        }
        Ok(Platform {
            os: parts[0].to_owned(),
            architecture: parts[1].to_owned(),
            variant: parts.get(2).map(|variant| (*variant).to_owned()),
        })
    }

    /// The platform an index entry's `platform` object, or an image
    /// config, names (`os`, `architecture`, `variant`); `None` without an
    /// os and an architecture.
    pub fn from_json(value: &serde_json::Value) -> Option<Platform> {
        let field = |name: &str| {
            value[name]
                .as_str()
                .filter(|text| !text.is_empty())
                .map(str::to_owned)
        };
        Some(Platform {
            os: field("os")?,
            architecture: field("architecture")?,
            variant: field("variant"),
        })
    }

    /// Whether `self`, as asked for, names `offered`: the same os and
    /// architecture, and the same variant when one is asked for.
    pub fn matches(&self, offered: &Platform) -> bool {
        self.os == offered.os
            && self.architecture == offered.architecture
            && (self.variant.is_none() || self.variant == offered.variant)
    }

    /// `unknown/unknown`: what BuildKit gives entries that are not an
    /// image of a platform (attestations).
    pub fn is_unknown(&self) -> bool {
        self.os == "unknown" && self.architecture == "unknown"
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

/// `platforms` as a list for people: `linux/amd64, linux/arm64`.
pub fn listed(platforms: &[Platform]) -> String {
    platforms
        .iter()
        .map(Platform::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_parse_and_print_back() {
        for text in [
            "linux/amd64",
            "linux/arm/v7",
            "windows/amd64",
            "linux/ppc64le",
        ] {
            assert_eq!(Platform::parse(text).unwrap().to_string(), text);
        }
        for bad in [
            "linux",
            "linux/",
            "/amd64",
            "Linux/amd64",
            "a/b/c/d",
            "linux/amd 64",
        ] {
            assert!(Platform::parse(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn a_platform_without_a_variant_matches_every_variant() {
        let arm = Platform::parse("linux/arm").unwrap();
        let v7 = Platform::parse("linux/arm/v7").unwrap();
        assert!(arm.matches(&v7));
        assert!(!v7.matches(&arm));
        assert!(v7.matches(&v7));
        assert!(!arm.matches(&Platform::parse("linux/arm64").unwrap()));
    }

    #[test]
    fn platforms_are_read_from_index_entries_and_configs() {
        let entry = serde_json::json!({"os": "linux", "architecture": "arm64", "variant": "v8"});
        assert_eq!(
            Platform::from_json(&entry).unwrap().to_string(),
            "linux/arm64/v8"
        );
        assert_eq!(
            Platform::from_json(&serde_json::json!({"os": "linux"})),
            None
        );
        let unknown = serde_json::json!({"os": "unknown", "architecture": "unknown"});
        assert!(Platform::from_json(&unknown).unwrap().is_unknown());
    }
}
