//! Where a job's image is: on the engine (an image id or a local name), or
//! already in a registry (`docker://REGISTRY/REPO@sha256:...` or `:TAG`),
//! pushed there by a remote builder. A registry source is published wholly
//! in the registry: nothing is pulled, the engine is not involved.

use oci_spec::distribution::Reference;

use super::naming::Repository;

/// What marks a source as a registry source (skopeo's transport name).
pub const REGISTRY_SOURCE_PREFIX: &str = "docker://";

/// An image in a registry, by tag or by manifest digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrySource {
    /// The registry's host (`docker.io` for Docker Hub).
    pub registry: String,
    /// The repository path in it, as the registry's API names it.
    pub repository: String,
    /// What the source names: a tag, or a manifest digest.
    pub pin: Pin,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pin {
    Tag(String),
    Digest(String),
}

impl RegistrySource {
    /// `None` when `source` is not a registry source (it names a local
    /// image); otherwise the parsed source, or why it is not one.
    pub fn parse(source: &str) -> Option<Result<RegistrySource, String>> {
        let rest = source.strip_prefix(REGISTRY_SOURCE_PREFIX)?;
        Some(Self::parse_reference(rest).map_err(|error| {
            format!(
                "{source:?} is not a valid registry source (docker://REGISTRY/REPOSITORY@sha256:... \
                 or :TAG): {error}"
            )
        }))
    }

    fn parse_reference(reference: &str) -> Result<RegistrySource, String> {
        let parsed = Reference::try_from(reference).map_err(|error| error.to_string())?;
        // A digest pins the image; a tag beside it would only be misleading.
        let pin = match (parsed.digest(), parsed.tag()) {
            (Some(digest), _) if reference.contains('@') => Pin::Digest(digest.to_owned()),
            (_, Some(tag)) if has_explicit_tag(reference) => Pin::Tag(tag.to_owned()),
            _ => return Err("name the image by @sha256:... or by :TAG".to_owned()),
        };
        if let Pin::Digest(digest) = &pin {
            check_sha256(digest)?;
        }
        Ok(RegistrySource {
            registry: parsed.registry().to_owned(),
            repository: parsed.repository().to_owned(),
            pin,
        })
    }

    /// The source as a reference the registry client takes, pinned to
    /// `digest` when it is known (once per job: every target publishes
    /// the manifest the tag named when it was first read).
    pub fn reference(&self, digest: Option<&str>) -> String {
        let repository = format!("{}/{}", self.registry, self.repository);
        match (digest, &self.pin) {
            (Some(digest), _) => format!("{repository}@{digest}"),
            (None, Pin::Digest(digest)) => format!("{repository}@{digest}"),
            (None, Pin::Tag(tag)) => format!("{repository}:{tag}"),
        }
    }

    /// The repository the source is read from (and its layers mounted from).
    pub fn repository(&self) -> Repository {
        Repository {
            registry: self.registry.clone(),
            path: self.repository.clone(),
        }
    }

    /// The manifest digest the source names itself, if it does.
    pub fn digest(&self) -> Option<&str> {
        match &self.pin {
            Pin::Digest(digest) => Some(digest),
            Pin::Tag(_) => None,
        }
    }
}

/// Whose credentials read a registry source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceCredentials {
    /// The job's own `registry_auth`.
    Job,
    /// The service's docker config, for the source's registry.
    Service,
    Anonymous,
}

/// The credentials a registry source is read with, at submission and by the
/// worker alike. A job's own credentials are for its repo's registry, so
/// they read a source there; a source in another registry is read with the
/// service's, which `access::check_submission` allowed for that registry
/// (or refused the job); in the repo's registry the service's are used
/// where the submitter's scope allows them there.
pub fn source_credentials(
    in_repo_registry: bool,
    job_brought_credentials: bool,
    service_credentials_for_repo: bool,
) -> SourceCredentials {
    if !in_repo_registry || (!job_brought_credentials && service_credentials_for_repo) {
        SourceCredentials::Service
    } else if job_brought_credentials {
        SourceCredentials::Job
    } else {
        SourceCredentials::Anonymous
    }
}

/// What a job's source resolved to, once per job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedSource {
    /// The image id; for a registry source its config digest, the id an
    /// engine would give the image (and what werf's content signature and
    /// `content` tags are made of).
    pub image_id: String,
    /// For a registry source, the manifest every target publishes.
    pub manifest_digest: Option<String>,
}

impl ResolvedSource {
    pub fn local(image_id: String) -> ResolvedSource {
        ResolvedSource {
            image_id,
            manifest_digest: None,
        }
    }
}

/// Whether the last path component carries a `:tag` (a port does not count).
fn has_explicit_tag(reference: &str) -> bool {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    last.contains(':')
}

/// `digest` must be a sha256 digest (what a registry path may carry).
pub fn check_sha256(digest: &str) -> Result<(), String> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(()),
        _ => Err(format!("{digest:?} is not a sha256 digest")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn local_sources_are_not_registry_sources() {
        assert_eq!(RegistrySource::parse("acme/app:build-1"), None);
        assert_eq!(RegistrySource::parse("sha256:abc"), None);
    }

    #[test]
    fn a_registry_source_is_pinned_by_digest_or_tag() {
        let by_digest = RegistrySource::parse(&format!("docker://127.0.0.1:5000/ci/app@{DIGEST}"))
            .unwrap()
            .unwrap();
        assert_eq!(by_digest.registry, "127.0.0.1:5000");
        assert_eq!(by_digest.repository, "ci/app");
        assert_eq!(by_digest.digest(), Some(DIGEST));
        assert_eq!(
            by_digest.reference(None),
            format!("127.0.0.1:5000/ci/app@{DIGEST}")
        );

        let by_tag = RegistrySource::parse("docker://127.0.0.1:5000/ci/app:build-7")
            .unwrap()
            .unwrap();
        assert_eq!(by_tag.pin, Pin::Tag("build-7".to_owned()));
        assert_eq!(by_tag.reference(None), "127.0.0.1:5000/ci/app:build-7");
        assert_eq!(
            by_tag.reference(Some(DIGEST)),
            format!("127.0.0.1:5000/ci/app@{DIGEST}")
        );

        let hub = RegistrySource::parse("docker://alpine:3").unwrap().unwrap();
        assert_eq!(
            (hub.registry.as_str(), hub.repository.as_str()),
            ("docker.io", "library/alpine")
        );
    }

    #[test]
    fn a_source_is_read_with_the_credentials_for_its_registry() {
        use SourceCredentials::{Anonymous, Job, Service};
        assert_eq!(source_credentials(true, true, true), Job);
        assert_eq!(source_credentials(true, true, false), Job);
        assert_eq!(source_credentials(true, false, true), Service);
        assert_eq!(source_credentials(true, false, false), Anonymous);
        assert_eq!(source_credentials(false, true, false), Service);
        assert_eq!(source_credentials(false, false, false), Service);
    }

    #[test]
    fn a_registry_source_must_say_which_image() {
        for bad in [
            "docker://127.0.0.1:5000/ci/app",
            "docker://",
            "docker://127.0.0.1:5000/CI/app:1",
            "docker://127.0.0.1:5000/ci/app@sha256:abc",
        ] {
            assert!(
                matches!(RegistrySource::parse(bad), Some(Err(_))),
                "{bad} was accepted"
            );
        }
    }
}
