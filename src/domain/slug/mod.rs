//! werf's docker-tag slug (`DockerTag` in werf's `pkg/slug`, as in werf
//! v1.1/v1.2), so a git branch or tag gets the very Docker tag werf would
//! give it.

mod map;

use map::SLUG_MAP;

/// Longest Docker tag.
pub const DOCKER_TAG_MAX_LEN: usize = 128;

/// A Docker tag is `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`; this is also werf's
/// test (`^[\w][\w.-]*$` and at most 128 bytes) for keeping a value unslugged.
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

/// Slugs `value` into a Docker tag exactly as werf does. A value that already
/// is a valid tag is kept as it is, and so is the empty value (werf's rule; it
/// is then no tag at all). Anything else becomes its slug, see [`slug`].
pub fn docker_tag(value: &str) -> String {
    if value.is_empty() || is_valid_docker_tag(value) {
        return value.to_owned();
    }
    slug(value, DOCKER_TAG_MAX_LEN)
}

/// werf's `slug`: the slugified value cut to leave room for `-` and the hash,
/// then `-` and the MurmurHash3 (x86, 32-bit, seed 0) of the original value in
/// unpadded lowercase hex; only the hash when nothing of the value is left.
fn slug(value: &str, max_len: usize) -> String {
    let hash = format!("{:x}", murmur3_32(value));
    let mut slugged = slugify(value);
    if slugged.is_empty() {
        return hash;
    }
    // The table maps to ASCII only, so cutting by bytes never splits a
    // character. werf then drops a last `-` only when the cut starts with `-`
    // (a legacy `HasPrefix` kept for reproducibility), which a slug never
    // does: a cut that ends on `-` keeps it, and the tag gets `--` before
    // the hash.
    slugged.truncate(max_len - hash.len() - 1);
    slugged.push('-');
    slugged.push_str(&hash);
    slugged
}

fn murmur3_32(value: &str) -> u32 {
    // Reading from a byte slice cannot fail.
    murmur3::murmur3_32(&mut value.as_bytes(), 0).unwrap_or_default()
}

/// werf's `slugify`: each character through werf's table, then no dash at
/// the start, no run of dashes and no dash at the end.
fn slugify(value: &str) -> String {
    let mut slugged = String::with_capacity(value.len());
    for c in value.chars() {
        let mapped = map_char(c);
        if mapped == "-" && (slugged.is_empty() || slugged.ends_with('-')) {
            continue;
        }
        slugged.push_str(mapped);
    }
    if slugged.ends_with('-') {
        slugged.pop();
    }
    slugged
}

fn map_char(c: char) -> &'static str {
    SLUG_MAP
        .binary_search_by_key(&c, |&(from, _)| from)
        .map_or("", |index| SLUG_MAP[index].1)
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

    /// werf's `TestDockerTag` (pkg/slug/slug_test.go) and the docker-tag
    /// examples of `werf slugify` (docs/_includes/reference/cli/werf_slugify.md).
    #[test]
    fn werf_docker_tag_vectors() {
        let too_long = "x".repeat(129);
        let too_long_slug = format!("{}-8cca70eb", "x".repeat(119));
        let cases = [
            ("", ""),
            ("-data", "data-a871d86e"),
            ("da/ta", "da-ta-afa96f8"),
            (&too_long, &too_long_slug),
            ("helo/ehlo", "helo-ehlo-b6f6ab1f"),
            ("16.04", "16.04"),
        ];
        for (value, expected) in cases {
            assert_eq!(docker_tag(value), expected, "{value:?}");
        }
    }

    /// werf's other slug formats call the same `slug` with their own limit;
    /// these inputs are slugged under each format's rules, so werf's vectors
    /// for them are `slug` vectors: `TestSlug` (limits 42 and 48),
    /// `TestHelmRelease` (53), `TestKubernetesNamespace` (63), and the
    /// `werf slugify` examples for those formats.
    #[test]
    fn werf_slug_vectors() {
        let x43 = "x".repeat(43);
        let x43_slug = format!("{}-27e2f02f", "x".repeat(33));
        let x54 = "x".repeat(54);
        let x54_slug = format!("{}-18c5dfb9", "x".repeat(44));
        let x64 = "x".repeat(64);
        let x64_slug = format!("{}-afd4efcd", "x".repeat(54));
        let cases: [(&str, usize, &str); 13] = [
            ("A", 42, "a-54dcf7ce"),
            (&x43, 42, &x43_slug),
            // werf's own vectors of a cut ending on `-`.
            (
                "postgres-feature-31981-change-delivery-date-del-result",
                48,
                "postgres-feature-31981-change-delivery--852739dc",
            ),
            (
                "php_fpm_exporter-monitoring-dev-encrypt-1",
                48,
                "php-fpm-exporter-monitoring-dev-encrypt--83286e5",
            ),
            ("-data", 53, "data-a871d86e"),
            ("da/ta", 53, "da-ta-afa96f8"),
            (&x54, 53, &x54_slug),
            ("da_ta", 63, "da-ta-3b339d14"),
            ("kubernetes.namespace", 63, "kubernetes-namespace-1507f75c"),
            (&x64, 63, &x64_slug),
            ("branch/one/!@#4.4-3", 63, "branch-one-4-4-3-4fe08955"),
            ("My_branch", 63, "my-branch-8ebf2d1d"),
            (
                "looooooooooooooooooooooooooooooooooooooooooong_string",
                53,
                "looooooooooooooooooooooooooooooooooooooooooo-b150a895",
            ),
        ];
        for (value, max_len, expected) in cases {
            assert_eq!(slug(value, max_len), expected, "{value:?}");
        }
    }

    // The vectors below follow werf's rules by hand; each hash is the
    // MurmurHash3 of the whole input, from the same function that gives
    // werf's vectors above.

    #[test]
    fn valid_tags_are_kept_unchanged() {
        // Uppercase too: werf only slugs what is not already a valid tag.
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
    fn values_that_are_no_tag_are_slugged() {
        // A tag must not start with `.`; the `.` maps to a leading dash, dropped.
        assert_eq!(docker_tag(".hidden"), "hidden-829fcfc");
        // Go's `$` matches only at the very end, so a trailing newline makes
        // the value invalid; the newline is not in the table and is dropped.
        assert_eq!(docker_tag("main\n"), "main-6935b3c2");
    }

    #[test]
    fn cyrillic_is_transliterated_letter_by_letter() {
        // Н→n о→o в→v а→a я→ya, ф→f у→u н→n к→k ц→c и→i я→ya; `/` and `-` → `-`.
        assert_eq!(
            docker_tag("feature/Новая-функция"),
            "feature-novaya-funkciya-22d735d4"
        );
        // е→ye (not e), `_` → `-`, ш→sh.
        assert_eq!(
            docker_tag("bugfix/Исправление_ошибки"),
            "bugfix-ispravlyeniye-oshibki-29e5bbe9"
        );
        // Ё→yo, Щ→shch, space → `-`.
        assert_eq!(
            docker_tag("feature/Ёлка Щука"),
            "feature-yolka-shchuka-d02e28c3"
        );
        // Ukrainian ї is not in the table: К→k и→i ї→(dropped) в→v.
        assert_eq!(docker_tag("Київ"), "kiv-63cc0175");
    }

    #[test]
    fn hard_and_soft_signs_are_dropped() {
        // о→o б→b ъ→"" я→ya ...; с→s т→t а→a т→t ь→"" я→ya.
        assert_eq!(
            docker_tag("объявление/статья"),
            "obyavlyeniye-statya-a1f240e0"
        );
        // A sign after the last dash leaves that dash last, so it is dropped.
        assert_eq!(docker_tag("fix-ь"), "fix-c183e1ad");
        // Nothing but signs and dashes: an empty slug, so the hash alone.
        assert_eq!(docker_tag("Ъ-ъ-Ь"), "dd94f721");
    }

    #[test]
    fn latin_letters_follow_werfs_table() {
        // Ł→l ó→o ź→z, ő→o, Ş→s ş→s, Ž→z á→a.
        assert_eq!(docker_tag("Łódź/Gőz-Şiş-Žár"), "lodz-goz-sis-zar-a1152ac8");
        // Æ→ae ø→o, Þ→th, Œ→oe.
        assert_eq!(docker_tag("Ærø/Þing/Œuvre"), "aero-thing-oeuvre-cacc2788");
        // ß→b, not ss.
        assert_eq!(docker_tag("Straße"), "strabe-5d13b5ee");
        // İ→l and ı→l, not i (note the 7-digit hash: %x does not pad).
        assert_eq!(docker_tag("İstanbul/ılık"), "lstanbul-lllk-d652f40");
        // ×→x, ²→2.
        assert_eq!(docker_tag("1920×1080"), "1920x1080-8959f148");
        assert_eq!(docker_tag("x²"), "x2-3a621c96");
        // The Kelvin and Angstrom signs have entries of their own.
        assert_eq!(docker_tag("\u{212A}-\u{212B}"), "k-a-580faaa8");
    }

    #[test]
    fn full_width_letters_and_marks_are_mapped() {
        // Ａ→a Ｂ→b Ｃ→c, ＿→-, ｘ→x ｙ→y ｚ→z, ～→-, ｖ→v; full-width digits
        // are not in the table, so １ is dropped.
        assert_eq!(docker_tag("ＡＢＣ＿ｘｙｚ～ｖ１"), "abc-xyz-v-ab03fdb6");
    }

    #[test]
    fn characters_not_in_the_table_vanish() {
        assert_eq!(docker_tag("fix#12@home!"), "fix12home-ea4f2779");
        assert_eq!(docker_tag("😀/feat"), "feat-2d08d1d7");
        assert_eq!(docker_tag("###"), "b782331e");
        // Leading dashes, runs of dashes and a trailing dash collapse.
        assert_eq!(docker_tag("-a--b__c..d/"), "a-b-c-d-65d09370");
    }

    #[test]
    fn a_cut_ending_on_a_dash_keeps_it() {
        // Slug: 118 × a, `-`, 10 × b (129 bytes). The hash has 8 digits, so
        // the cut keeps 128 - 8 - 1 = 119 bytes, the last being the `-`.
        let value = format!("{}/{}", "a".repeat(118), "b".repeat(10));
        let expected = format!("{}--a7585a1e", "a".repeat(118));
        assert_eq!(docker_tag(&value), expected);
        assert_eq!(expected.len(), DOCKER_TAG_MAX_LEN);
    }

    #[test]
    fn table_is_werfs_whole_map_sorted_and_ascii() {
        // 971 entries in werf's map.go.
        assert_eq!(SLUG_MAP.len(), 971);
        assert!(SLUG_MAP.windows(2).all(|pair| pair[0].0 < pair[1].0));
        // Slugs are lowercase ASCII letters, digits and dashes, which the
        // byte cut and the validity of every slug rely on.
        assert!(SLUG_MAP.iter().all(|(_, to)| {
            to.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        }));
    }

    #[test]
    fn every_slug_is_a_valid_docker_tag() {
        let mut values: Vec<String> = ["/", "ü", "Ω/branch", "@@@/---", "a b c", "😀/feat", "ъ"]
            .map(str::to_owned)
            .into();
        values.push("x".repeat(500));
        values.push("я".repeat(200));
        // Move a dash across the place where the cut falls.
        values
            .extend((100..125).map(|prefix| format!("{}/{}", "a".repeat(prefix), "b".repeat(50))));
        for value in values {
            let slug = docker_tag(&value);
            assert!(is_valid_docker_tag(&slug), "{value:?} -> {slug:?}");
        }
    }
}
