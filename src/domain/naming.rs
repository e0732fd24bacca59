//! werf v1.0 naming rules: where an image lands in the images repo.

use oci_spec::distribution::Reference;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How images share the images repo.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RepoMode {
    /// One repository per image: `REPO/IMAGE_NAME:TAG`.
    #[default]
    Multirepo,
    /// All images in one repository: `REPO:IMAGE_NAME-TAG`.
    Monorepo,
}

impl RepoMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RepoMode::Multirepo => "multirepo",
            RepoMode::Monorepo => "monorepo",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "multirepo" => Some(RepoMode::Multirepo),
            "monorepo" => Some(RepoMode::Monorepo),
            _ => None,
        }
    }
}

/// The target reference of one image and one tag. `image_name` is `None` for
/// the nameless image, which always lands at `REPO:TAG`.
pub fn target_reference(repo: &str, mode: RepoMode, image_name: Option<&str>, tag: &str) -> String {
    match (image_name, mode) {
        (None, _) => format!("{repo}:{tag}"),
        (Some(name), RepoMode::Multirepo) => format!("{repo}/{name}:{tag}"),
        (Some(name), RepoMode::Monorepo) => format!("{repo}:{name}-{tag}"),
    }
}

/// The `content` strategy's tag: the hex of the source image id.
pub fn content_tag(image_id: &str) -> String {
    image_id.trim_start_matches("sha256:").to_owned()
}

/// What two references that name the same tag have in common: `app:v1`,
/// `docker.io/library/app:v1` and `index.docker.io/library/app:v1` are one
/// name on the engine and in the registry. Answers the reference itself if
/// it does not parse (validation refuses those before they get here).
pub fn reference_key(reference: &str) -> String {
    Reference::try_from(reference)
        .map(|parsed| parsed.whole())
        .unwrap_or_else(|_| reference.to_owned())
}

/// werf trims a trailing `/` from the images repo.
pub fn normalize_repo(repo: &str) -> &str {
    repo.trim_end_matches('/')
}

/// Checks that `reference` is a `REPOSITORY:TAG` Docker reference (no digest)
/// and says what is wrong when it is not.
pub fn check_tagged_reference(reference: &str) -> Result<(), String> {
    let (repository, _) = reference.rsplit_once(':').unwrap_or((reference, ""));
    if has_uppercase_path(repository) {
        return Err(format!(
            "repository path of {reference:?} must be lowercase"
        ));
    }
    let parsed = Reference::try_from(reference)
        .map_err(|error| format!("{reference:?} is not a valid Docker reference: {error}"))?;
    if parsed.digest().is_some() {
        return Err(format!("{reference:?} must name a tag, not a digest"));
    }
    Ok(())
}

/// Checks that `repo` is a repository name (registry host and path, no tag,
/// no digest) and says what is wrong when it is not.
pub fn check_repository(repo: &str) -> Result<(), String> {
    if has_uppercase_path(repo) {
        return Err(format!("the repository path of {repo:?} must be lowercase"));
    }
    let parsed = Reference::try_from(format!("{repo}:latest"))
        .map_err(|error| format!("{repo:?} is not a valid repository: {error}"))?;
    if parsed.tag() != Some("latest") || parsed.digest().is_some() {
        return Err(format!(
            "{repo:?} must name a repository, without a tag or digest"
        ));
    }
    Ok(())
}

/// The reference grammar rejects capitals in a repository path with a bare
/// "invalid reference format"; this lets the answer say what is wrong. The
/// registry host may hold capitals (it is a DNS name); the path may not.
fn has_uppercase_path(repository: &str) -> bool {
    let path = repository
        .split_once('/')
        .map(|(_, path)| path)
        .unwrap_or(repository);
    path.chars().any(|c| c.is_ascii_uppercase())
}

/// A repository as the engine and the registry read it: the registry's host
/// and the path in it, normalised as the registry's API names it (`alpine`
/// is `docker.io` and `library/alpine`). Every check of where a job
/// publishes runs on this, and the worker publishes to it unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Repository {
    pub registry: String,
    pub path: String,
}

impl Repository {
    /// The repository of a reference (`NAME[:TAG][@DIGEST]`) or of a
    /// repository name, read as docker reads it: the first path component
    /// is the registry when it has a `.` or a `:` or is `localhost`, and
    /// otherwise the registry is Docker Hub.
    pub fn of(reference: &str) -> Option<Repository> {
        Reference::try_from(reference).ok().map(|r| Repository {
            registry: r.registry().to_owned(),
            path: r.repository().to_owned(),
        })
    }

    /// Where the targets of the image `image_name` land: the repository of
    /// its [`target_reference`]s (which tag does not matter).
    pub fn of_targets(repo: &str, mode: RepoMode, image_name: Option<&str>) -> Option<Repository> {
        Repository::of(&target_reference(repo, mode, image_name, "latest"))
    }

    /// The images repo as the targets of `image_name` read it, which is
    /// what a scope's `repos` are matched against: `REPO:TAG` and
    /// `REPO:NAME-TAG` read the repo alone, `REPO/NAME:TAG` reads it as the
    /// first part of a longer name. The two readings differ in their
    /// registry for a one-word repo such as `reg.example` (alone on Docker
    /// Hub, `docker.io/library/reg.example`; in `reg.example/app:v1` the
    /// registry itself): such a repo is refused, naming both readings.
    pub fn of_images_repo(
        repo: &str,
        mode: RepoMode,
        image_name: Option<&str>,
    ) -> Result<Repository, String> {
        let unreadable = || format!("{repo:?} is not a valid repository");
        let alone = Repository::of(repo).ok_or_else(unreadable)?;
        let targets = Repository::of_targets(repo, mode, image_name).ok_or_else(unreadable)?;
        if targets.registry != alone.registry {
            let example = target_reference(repo, mode, image_name, "TAG");
            return Err(format!(
                "{repo:?} reads two ways: alone it is the repository {alone} (on {}), but in \
                 its targets, such as {example}, {:?} is the registry's host: write the \
                 registry and a repository out ({}/NAME, or {alone})",
                alone.registry, targets.registry, targets.registry
            ));
        }
        Ok(match (mode, image_name) {
            (RepoMode::Multirepo, Some(name)) => Repository {
                path: targets
                    .path
                    .strip_suffix(&format!("/{name}"))
                    .unwrap_or(&targets.path)
                    .to_owned(),
                registry: targets.registry,
            },
            _ => targets,
        })
    }
}

/// `registry/path`, as scopes and `--allow-registry` are written.
impl std::fmt::Display for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.registry, self.path)
    }
}

/// Splits `REPOSITORY:TAG` into its two parts.
pub fn split_tag(reference: &str) -> (&str, &str) {
    match reference.rsplit_once(':') {
        Some((repository, tag)) if !tag.contains('/') => (repository, tag),
        _ => (reference, "latest"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPO: &str = "127.0.0.1:5000/acme/shop";

    #[test]
    fn multirepo_puts_each_image_in_its_own_repository() {
        assert_eq!(
            target_reference(REPO, RepoMode::Multirepo, Some("backend"), "v1"),
            "127.0.0.1:5000/acme/shop/backend:v1"
        );
    }

    #[test]
    fn monorepo_prefixes_the_tag_with_the_image_name() {
        assert_eq!(
            target_reference(REPO, RepoMode::Monorepo, Some("backend"), "v1"),
            "127.0.0.1:5000/acme/shop:backend-v1"
        );
    }

    #[test]
    fn nameless_image_lands_at_repo_tag_in_both_modes() {
        for mode in [RepoMode::Multirepo, RepoMode::Monorepo] {
            assert_eq!(
                target_reference(REPO, mode, None, "v1"),
                format!("{REPO}:v1")
            );
        }
    }

    #[test]
    fn trailing_slashes_are_trimmed() {
        assert_eq!(normalize_repo("reg/acme//"), "reg/acme");
        assert_eq!(normalize_repo("reg/acme"), "reg/acme");
    }

    #[test]
    fn tagged_references_are_checked() {
        assert!(check_tagged_reference("127.0.0.1:5000/acme/shop/backend:v1").is_ok());
        assert!(check_tagged_reference("localhost:5000/a:b").is_ok());
        assert!(
            check_tagged_reference("reg/Acme:v1")
                .unwrap_err()
                .contains("lowercase")
        );
        assert!(check_tagged_reference("reg/a/../b:v1").is_err());
        assert!(check_tagged_reference("reg/a:-bad").is_err());
        let digest = format!("reg/a@sha256:{}", "a".repeat(64));
        assert!(check_tagged_reference(&digest).is_err());
    }

    #[test]
    fn repositories_are_checked() {
        assert!(check_repository("127.0.0.1:5000/acme/shop").is_ok());
        assert!(check_repository("acme").is_ok());
        assert!(
            check_repository("reg/Acme")
                .unwrap_err()
                .contains("lowercase")
        );
        assert!(check_repository("reg/acme:v1").is_err());
        assert!(check_repository("reg/a/../b").is_err());
        assert!(check_repository(&format!("reg/a@sha256:{}", "a".repeat(64))).is_err());
    }

    #[test]
    fn spellings_of_one_reference_share_a_key() {
        let key = reference_key("docker.io/library/foo:v1");
        assert_eq!(key, "docker.io/library/foo:v1");
        assert_eq!(reference_key("foo:v1"), key);
        assert_eq!(reference_key("index.docker.io/library/foo:v1"), key);
        assert_eq!(reference_key("index.docker.io/foo:v1"), key);
        assert_ne!(reference_key("127.0.0.1:5000/foo:v1"), key);
        assert_eq!(
            reference_key("127.0.0.1:5000/a/b:v1"),
            "127.0.0.1:5000/a/b:v1"
        );
        assert_eq!(content_tag("sha256:abc"), "abc");
    }

    #[test]
    fn repositories_are_read_as_docker_reads_them() {
        let of = |reference: &str| Repository::of(reference).unwrap().to_string();
        assert_eq!(of("127.0.0.1:5000/a/b:v1"), "127.0.0.1:5000/a/b");
        assert_eq!(of("127.0.0.1:5000/a"), "127.0.0.1:5000/a");
        assert_eq!(of("acme/app:v1"), "docker.io/acme/app");
        assert_eq!(of("app:v1"), "docker.io/library/app");
        // The first component is a host with a `.`, a `:`, or as `localhost`.
        assert_eq!(of("reg.example/app:v1"), "reg.example/app");
        assert_eq!(of("localhost/app:v1"), "localhost/app");
        assert_eq!(of("reg.example"), "docker.io/library/reg.example");
        assert_eq!(
            split_tag("127.0.0.1:5000/a/b:v1"),
            ("127.0.0.1:5000/a/b", "v1")
        );
        assert_eq!(
            split_tag("127.0.0.1:5000/a/b"),
            ("127.0.0.1:5000/a/b", "latest")
        );
    }

    #[test]
    fn the_images_repo_is_read_as_its_targets_read_it() {
        use RepoMode::{Monorepo, Multirepo};
        let images_repo = |repo: &str, mode: RepoMode, name: Option<&str>| {
            Repository::of_images_repo(repo, mode, name).map(|r| r.to_string())
        };
        assert_eq!(
            images_repo(REPO, Multirepo, Some("app")).unwrap(),
            "127.0.0.1:5000/acme/shop"
        );
        assert_eq!(
            images_repo(REPO, Monorepo, Some("app")).unwrap(),
            "127.0.0.1:5000/acme/shop"
        );
        // `acme/app:v1` is Docker Hub's `acme/app`, not `library/acme/app`.
        assert_eq!(
            images_repo("acme", Multirepo, Some("app")).unwrap(),
            "docker.io/acme"
        );
        assert_eq!(
            images_repo("acme", Monorepo, Some("app")).unwrap(),
            "docker.io/library/acme"
        );
        // A one-word host: one reading alone and in `REPO:TAG`, another in
        // `REPO/NAME:TAG`.
        for host in ["reg.example", "localhost", "reg.example.com"] {
            let refused = images_repo(host, Multirepo, Some("app")).unwrap_err();
            assert!(
                refused.contains(&format!("docker.io/library/{host}"))
                    && refused.contains(&format!("{host}/app:TAG")),
                "{refused}"
            );
            assert_eq!(
                images_repo(host, Monorepo, Some("app")).unwrap(),
                format!("docker.io/library/{host}")
            );
            assert_eq!(
                images_repo(host, Multirepo, None).unwrap(),
                format!("docker.io/library/{host}")
            );
        }
        assert_eq!(
            Repository::of_targets("reg.example", Multirepo, Some("app"))
                .unwrap()
                .registry,
            "reg.example"
        );
    }
}
