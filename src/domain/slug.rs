//! werf's docker-tag slug, so a git branch or tag gets the very Docker tag
//! werf would give it.

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// Longest Docker tag.
pub const DOCKER_TAG_MAX_LEN: usize = 128;

/// A Docker tag is `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn is_valid_docker_tag(value: &str) -> bool {
    value.len() <= DOCKER_TAG_MAX_LEN && is_tag_shaped(value)
}

fn is_tag_shaped(value: &str) -> bool {
    let mut chars = value.chars();
    match chars.next() {
        Some(first) if first.is_ascii_alphanumeric() || first == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Slugs `value` into a Docker tag the way werf does: a value that already is
/// a valid tag is kept as it is; anything else becomes its slugged form plus
/// `-` and the MurmurHash3 (x86, 32-bit, seed 0) of the original value, so
/// that two different values never share a slug.
pub fn docker_tag(value: &str) -> String {
    if is_valid_docker_tag(value) {
        return value.to_owned();
    }
    let hash = format!("{:x}", murmur3_32(value));
    let mut slugged = slugify(value);
    // Leave room for the separator and the hash; the slug is ASCII, so
    // truncating by bytes never splits a character.
    let room = DOCKER_TAG_MAX_LEN - hash.len() - 1;
    if slugged.len() > room {
        slugged.truncate(room);
    }
    let slugged = slugged.trim_end_matches('-');
    if slugged.is_empty() {
        hash
    } else {
        format!("{slugged}-{hash}")
    }
}

fn murmur3_32(value: &str) -> u32 {
    // Reading from a byte slice cannot fail.
    murmur3::murmur3_32(&mut value.as_bytes(), 0).unwrap_or_default()
}

/// Maps each character, then drops leading dashes, collapses runs of dashes
/// and drops a trailing dash.
fn slugify(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        for mapped in map_char(c).chars() {
            if mapped == '-' && (out.is_empty() || out.ends_with('-')) {
                continue;
            }
            out.push(mapped);
        }
    }
    while out.ends_with('-') {
        out.pop();
    }
    out
}

/// What one character of a git name becomes in a slug: a lowercase ASCII
/// letter or digit, a dash, a short transliteration, or nothing.
fn map_char(c: char) -> String {
    if c.is_ascii_alphanumeric() {
        return c.to_ascii_lowercase().to_string();
    }
    if matches!(
        c,
        '&' | '('
            | ')'
            | '{'
            | '}'
            | '-'
            | '_'
            | '['
            | ']'
            | ','
            | '.'
            | ';'
            | ':'
            | '='
            | '+'
            | '<'
            | '>'
            | '~'
            | '/'
            | ' '
    ) {
        return "-".to_owned();
    }
    let special = match c {
        'æ' | 'Æ' => Some("ae"),
        'œ' | 'Œ' => Some("oe"),
        'ø' | 'Ø' => Some("o"),
        'ß' => Some("ss"),
        'đ' | 'Đ' => Some("d"),
        'ł' | 'Ł' => Some("l"),
        'þ' | 'Þ' => Some("th"),
        _ => None,
    };
    if let Some(special) = special {
        return special.to_owned();
    }
    // Accented Latin letters: decompose (é -> e + U+0301) and keep the base
    // letter when everything after it is a combining mark.
    let mut decomposed = c.nfd();
    match decomposed.next() {
        Some(base) if base.is_ascii_alphabetic() && decomposed.all(is_combining_mark) => {
            base.to_ascii_lowercase().to_string()
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn werf_documentation_example() {
        assert_eq!(
            docker_tag("core/feature/ADD_SETTINGS"),
            "core-feature-add-settings-df80fdc3"
        );
    }

    #[test]
    fn valid_tags_are_kept_unchanged() {
        for tag in [
            "main",
            "v1.2.3",
            "Feature_X",
            "_under",
            "release-2024.01",
            "A",
        ] {
            assert_eq!(docker_tag(tag), tag);
        }
        let longest = "a".repeat(128);
        assert_eq!(docker_tag(&longest), longest);
    }

    #[test]
    fn special_characters_become_dashes_or_vanish() {
        let slug = docker_tag("feature/Login");
        assert!(slug.starts_with("feature-login-"), "{slug}");
        let slug = docker_tag("fix#12@home!");
        assert!(slug.starts_with("fix12home-"), "{slug}");
        let slug = docker_tag("-a--b__c..d/");
        assert!(slug.starts_with("a-b-c-d-"), "{slug}");
    }

    #[test]
    fn accented_letters_are_transliterated() {
        let slug = docker_tag("fonctionnalité/Ärger-Straße");
        assert!(slug.starts_with("fonctionnalite-arger-strasse-"), "{slug}");
    }

    #[test]
    fn hash_is_of_the_original_value_in_unpadded_lowercase_hex() {
        let value = "feature/Login";
        let hash = format!("{:x}", murmur3_32(value));
        assert_eq!(docker_tag(value), format!("feature-login-{hash}"));
        // Two values that slug alike still differ by their hash.
        assert_ne!(docker_tag("a/b"), docker_tag("a.b/"));
    }

    #[test]
    fn long_values_are_cut_to_128_characters_with_the_hash_kept() {
        let value = format!("feature/{}", "x".repeat(300));
        let slug = docker_tag(&value);
        assert!(slug.len() <= 128, "{}", slug.len());
        assert!(slug.ends_with(&format!("-{:x}", murmur3_32(&value))));
        assert!(is_valid_docker_tag(&slug));
        // A valid tag longer than 128 bytes is slugged too.
        let long_tag = "v".repeat(129);
        assert!(docker_tag(&long_tag).len() <= 128);
    }

    #[test]
    fn a_cut_never_leaves_a_double_dash_before_the_hash() {
        // Move a dash across the place where the cut falls.
        for prefix in 100..125 {
            let value = format!("{}/{}", "a".repeat(prefix), "b".repeat(50));
            let slug = docker_tag(&value);
            assert!(!slug.contains("--"), "{slug}");
            assert!(slug.len() <= 128);
        }
    }

    #[test]
    fn nothing_sluggable_leaves_only_the_hash() {
        let slug = docker_tag("###");
        assert_eq!(slug, format!("{:x}", murmur3_32("###")));
        assert!(is_valid_docker_tag(&slug));
    }

    #[test]
    fn every_slug_is_a_valid_docker_tag() {
        for value in [
            "/",
            "ü",
            "Ω/branch",
            "@@@/---",
            "a b c",
            "😀/feat",
            "x".repeat(500).as_str(),
        ] {
            let slug = docker_tag(value);
            assert!(is_valid_docker_tag(&slug), "{value:?} -> {slug:?}");
        }
    }
}
