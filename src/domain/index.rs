//! Image indexes (OCI image indexes, Docker manifest lists) as a publish
//! sees them: entries that are a platform's image, which get werf's labels
//! and are written anew, and entries that are not (BuildKit's attestation
//! manifests, on `unknown/unknown`), which are carried as they are, with
//! the reference to the image they describe re-pointed at its new manifest.

use super::platform::{Platform, listed};

/// The annotation BuildKit puts on an index entry that is not an image
/// (`attestation-manifest`).
pub const REFERENCE_TYPE: &str = "vnd.docker.reference.type";
/// The annotation naming the manifest an attestation describes.
pub const REFERENCE_DIGEST: &str = "vnd.docker.reference.digest";

/// One entry of an index, as the choice of what to publish needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryView<'a> {
    pub digest: &'a str,
    /// A platform image's platform (the entry's, else its config's).
    pub platform: Option<&'a Platform>,
    /// Not a platform's image: carried byte for byte.
    pub carried: bool,
    /// The manifest the entry describes (`vnd.docker.reference.digest`).
    pub describes: Option<&'a str>,
}

/// Whether an entry with `platform` and `reference_type` (its
/// annotation) is carried rather than labelled: anything BuildKit marks
/// as a reference to another manifest, or puts on `unknown/unknown`.
pub fn is_carried(platform: Option<&Platform>, reference_type: Option<&str>) -> bool {
    reference_type.is_some() || platform.is_some_and(Platform::is_unknown)
}

/// The positions of the entries a publish of `wanted` keeps, in the
/// index's order: every platform image when `wanted` is empty, else those
/// of the platforms asked for; and the carried entries, except those that
/// describe an image left out. Every platform asked for must be there.
pub fn select(entries: &[EntryView<'_>], wanted: &[Platform]) -> Result<Vec<usize>, String> {
    if let Some(missing) = wanted.iter().find(|wanted| {
        !entries.iter().filter(|entry| !entry.carried).any(|entry| {
            entry
                .platform
                .is_some_and(|offered| wanted.matches(offered))
        })
    }) {
        return Err(format!(
            "the source has no image for {missing}: it is {}",
            describe(entries)
        ));
    }
    let kept_image = |entry: &EntryView<'_>| {
        wanted.is_empty()
            || entry
                .platform
                .is_some_and(|offered| wanted.iter().any(|wanted| wanted.matches(offered)))
    };
    let dropped: Vec<&str> = entries
        .iter()
        .filter(|entry| !entry.carried && !kept_image(entry))
        .map(|entry| entry.digest)
        .collect();
    Ok(entries
        .iter()
        .enumerate()
        .filter(|(_, entry)| {
            if entry.carried {
                entry
                    .describes
                    .is_none_or(|digest| !dropped.contains(&digest))
            } else {
                kept_image(entry)
            }
        })
        .map(|(position, _)| position)
        .collect())
}

/// An index in words, for refusals: `an image index of 1 platform
/// (linux/amd64) and 1 attestation manifest`. One platform plus its
/// attestations is not a multi-platform image, and is not called one.
pub fn describe(entries: &[EntryView<'_>]) -> String {
    let platforms: Vec<Platform> = entries
        .iter()
        .filter(|entry| !entry.carried)
        .filter_map(|entry| entry.platform.cloned())
        .collect();
    let images = entries.iter().filter(|entry| !entry.carried).count();
    let carried = entries.len() - images;
    let mut text = match images {
        1 => "an image index of 1 platform".to_owned(),
        count => format!("an image index of {count} platforms"),
    };
    if !platforms.is_empty() {
        text += &format!(" ({})", listed(&platforms));
    }
    match carried {
        0 => {}
        1 => text += " and 1 attestation or other manifest",
        count => text += &format!(" and {count} attestation or other manifests"),
    }
    text
}

/// A single image (not an index) against the platforms asked for: it must
/// be of every one of them, so of at most one.
pub fn check_single(platform: Option<&Platform>, wanted: &[Platform]) -> Result<(), String> {
    let lacking = wanted
        .iter()
        .find(|wanted| !platform.is_some_and(|offered| wanted.matches(offered)));
    match (lacking, platform) {
        (None, _) => Ok(()),
        (Some(missing), Some(offered)) => Err(format!(
            "the source has no image for {missing}: it is a single image, for {offered}"
        )),
        (Some(missing), None) => Err(format!(
            "the source has no image for {missing}: it is a single image whose config names \
             no platform"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform(text: &str) -> Platform {
        Platform::parse(text).unwrap()
    }

    /// BuildKit's `--platform linux/amd64,linux/arm64` output: two images,
    /// each followed by its attestation.
    fn buildkit(platforms: &[Platform]) -> Vec<EntryView<'_>> {
        const DIGESTS: [&str; 2] = ["sha256:amd", "sha256:arm"];
        let mut entries = Vec::new();
        for (index, platform) in platforms.iter().enumerate() {
            entries.push(EntryView {
                digest: DIGESTS[index],
                platform: Some(platform),
                carried: false,
                describes: None,
            });
        }
        for digest in DIGESTS.iter().take(platforms.len()) {
            entries.push(EntryView {
                digest: "sha256:attestation",
                platform: None,
                carried: true,
                describes: Some(digest),
            });
        }
        entries
    }

    #[test]
    fn everything_is_kept_when_no_platform_is_asked_for() {
        let platforms = [platform("linux/amd64"), platform("linux/arm64")];
        let entries = buildkit(&platforms);
        assert_eq!(select(&entries, &[]).unwrap(), [0, 1, 2, 3]);
    }

    #[test]
    fn a_subset_keeps_its_images_and_their_attestations_only() {
        let platforms = [platform("linux/amd64"), platform("linux/arm64")];
        let entries = buildkit(&platforms);
        assert_eq!(
            select(&entries, &[platform("linux/arm64")]).unwrap(),
            [1, 3]
        );
    }

    #[test]
    fn a_missing_platform_is_refused_with_what_there_is() {
        let platforms = [platform("linux/amd64")];
        let entries = buildkit(&platforms);
        let error = select(&entries, &[platform("linux/arm64")]).unwrap_err();
        assert_eq!(
            error,
            "the source has no image for linux/arm64: it is an image index of 1 platform \
             (linux/amd64) and 1 attestation or other manifest"
        );
        assert!(!error.contains("multi-platform"), "{error}");
    }

    #[test]
    fn entries_on_unknown_or_marked_as_references_are_carried() {
        assert!(is_carried(Some(&platform("unknown/unknown")), None));
        assert!(is_carried(None, Some("attestation-manifest")));
        assert!(!is_carried(Some(&platform("linux/amd64")), None));
        assert!(!is_carried(None, None));
    }

    #[test]
    fn a_single_image_must_be_of_the_platforms_asked_for() {
        let amd = platform("linux/amd64");
        assert!(check_single(Some(&amd), &[]).is_ok());
        assert!(check_single(Some(&amd), &[platform("linux/amd64")]).is_ok());
        let error = check_single(
            Some(&amd),
            &[platform("linux/amd64"), platform("linux/arm64")],
        )
        .unwrap_err();
        assert!(error.contains("no image for linux/arm64"), "{error}");
        assert!(error.contains("single image, for linux/amd64"), "{error}");
    }
}
