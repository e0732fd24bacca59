//! werf's meta-information labels, carried by every published image.

/// werf v1.1's `image.WerfImageVersion`: the version of werf's label
/// layout, set on every image its publish makes.
pub const WERF_IMAGE_VERSION: &str = "1";

use std::collections::BTreeMap;

use super::spec::TagStrategy;

/// What the labels of one published image are made from.
pub struct LabelInput<'a> {
    pub reference: &'a str,
    pub strategy: TagStrategy,
    pub image_name: Option<&'a str>,
    /// The tag without a monorepo prefix.
    pub tag: &'a str,
    /// The source image id, `sha256:...`.
    pub source_image_id: &'a str,
}

/// The labels werf adds in its tag step; werf reads them back (for example
/// `werf-content-signature` for its up-to-date check), so names and values
/// follow werf exactly.
pub fn werf_labels(input: &LabelInput<'_>) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "werf-docker-image-name".to_owned(),
            input.reference.to_owned(),
        ),
        (
            "werf-tag-strategy".to_owned(),
            input.strategy.as_str().to_owned(),
        ),
        ("werf-image".to_owned(), "true".to_owned()),
        (
            "werf-image-name".to_owned(),
            input.image_name.unwrap_or("").to_owned(),
        ),
        ("werf-image-tag".to_owned(), input.tag.to_owned()),
        (
            "werf-content-signature".to_owned(),
            input.source_image_id.to_owned(),
        ),
        (
            "werf-image-version".to_owned(),
            WERF_IMAGE_VERSION.to_owned(),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_of_a_nameless_content_image() {
        let labels = werf_labels(&LabelInput {
            reference: "reg/app:abc",
            strategy: TagStrategy::Content,
            image_name: None,
            tag: "abc",
            source_image_id: "sha256:abc",
        });
        assert_eq!(labels["werf-docker-image-name"], "reg/app:abc");
        assert_eq!(labels["werf-tag-strategy"], "content");
        assert_eq!(labels["werf-image"], "true");
        assert_eq!(labels["werf-image-name"], "");
        assert_eq!(labels["werf-image-tag"], "abc");
        assert_eq!(labels["werf-content-signature"], "sha256:abc");
        assert_eq!(labels["werf-image-version"], "1");
        assert_eq!(labels.len(), 7);
    }
}
