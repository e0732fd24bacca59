//! The publish job a pipeline submits, and its validation into a plan of
//! targets (one per image and tag).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::naming::{
    RepoMode, Repository, check_repository, check_tagged_reference, content_tag, normalize_repo,
    target_reference,
};
use super::platform::Platform;
use super::publish_via::PublishVia;
use super::slug::{docker_tag, is_valid_docker_tag};
use super::source::{REGISTRY_SOURCE_PREFIX, RegistrySource, ResolvedSource};

/// A publish job as submitted.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// The images repo, e.g. `127.0.0.1:5000/acme/shop`; a trailing `/` is trimmed.
    #[schema(example = "127.0.0.1:5000/acme/shop")]
    pub repo: String,
    #[serde(default)]
    pub repo_mode: RepoMode,
    /// The built images to publish.
    pub images: Vec<ImageSpec>,
    /// The tags each image is published under.
    pub tags: Vec<TagSpec>,
    /// Push even when the registry already holds the tag with the same
    /// `werf-content-signature`.
    #[serde(default)]
    pub force: bool,
    /// `engine`: publish every target through the engine (tag, push,
    /// untag). `auto`: a further target of an image the engine already
    /// pushed to the registry is written registry-side (same image, same
    /// digest). Absent: the service's `--publish-via`.
    #[serde(default)]
    pub publish_via: Option<PublishVia>,
    /// Credentials for the repo's registry, for this job only: held in memory,
    /// never stored or answered. Without them the service's docker config is used.
    #[serde(default)]
    pub registry_auth: Option<RegistryAuthSpec>,
    /// Called when the job ends: an `http://` or `https://` URL that gets a
    /// POST of the job's JSON, signed (`X-Publishd-Signature`).
    #[serde(default)]
    #[schema(example = "https://ci.example.com/hooks/publishd")]
    pub callback_url: Option<String>,
    /// The engine the local sources are on, by the name its instances give
    /// it (`GET /api/v1/engines`): only instances that drive it publish the
    /// job. May be left out when one engine is driven, and is not needed
    /// when every source is `docker://`.
    #[serde(default)]
    #[schema(example = "ci-runner-7")]
    pub engine: Option<String>,
    /// The platforms to publish of each source that is an image index, as
    /// `os/arch` or `os/arch/variant`: the published index lists their
    /// images (and the attestations of those) only. Every one must be in
    /// every source. Absent: every platform.
    #[serde(default)]
    #[schema(example = json!(["linux/amd64", "linux/arm64"]))]
    pub platforms: Option<Vec<String>>,
}

/// Per-job registry credentials: a username and password, or an identity token.
#[derive(Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistryAuthSpec {
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub identity_token: Option<String>,
}

impl std::fmt::Debug for RegistryAuthSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuthSpec")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// One built image.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    /// werf image name; null or absent for the nameless image.
    #[serde(default)]
    #[schema(example = "backend")]
    pub name: Option<String>,
    /// A local image reference or image id on the engine, or an image a
    /// remote builder pushed: `docker://REGISTRY/REPOSITORY@sha256:...` (or
    /// `:TAG`, read once per job), published wholly in the registry.
    #[schema(example = "acme/backend:build-42")]
    pub source: String,
}

/// One tag, by strategy.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TagSpec {
    pub strategy: TagStrategy,
    /// The custom tag, git branch, git tag or commit id; absent for `content`.
    #[serde(default)]
    #[schema(example = "v1.2.3")]
    pub value: Option<String>,
}

/// werf's tag strategies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TagStrategy {
    Custom,
    GitBranch,
    GitTag,
    GitCommit,
    Content,
}

impl TagStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            TagStrategy::Custom => "custom",
            TagStrategy::GitBranch => "git-branch",
            TagStrategy::GitTag => "git-tag",
            TagStrategy::GitCommit => "git-commit",
            TagStrategy::Content => "content",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        [
            TagStrategy::Custom,
            TagStrategy::GitBranch,
            TagStrategy::GitTag,
            TagStrategy::GitCommit,
            TagStrategy::Content,
        ]
        .into_iter()
        .find(|strategy| strategy.as_str() == value)
    }
}

/// Limits on what one job may ask for.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_targets: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_targets: 256 }
    }
}

/// Why a spec was refused, naming the field at fault (`images[0].source`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

impl ValidationError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A validated job: what the store records and the worker runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub repo: String,
    pub repo_mode: RepoMode,
    /// The images repo as its targets read it (`Repository::of_images_repo`):
    /// its registry is every target's.
    pub repository: Repository,
    pub force: bool,
    /// The job's own choice; `None` takes the service's.
    pub publish_via: Option<PublishVia>,
    pub images: Vec<PlannedImage>,
    pub targets: Vec<PlannedTarget>,
    /// Where to POST the job when it ends.
    pub callback: Option<Callback>,
    /// The platforms to publish; empty: every one.
    pub platforms: Vec<Platform>,
}

/// A webhook URL, checked: `http` or `https`, with a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callback {
    pub url: String,
    /// The URL's host: a name, or an address (IPv6 without brackets) in its
    /// one canonical spelling.
    pub host: String,
    /// The port, the scheme's own when the URL names none.
    pub port: u16,
}

/// Longest callback URL accepted.
const MAX_CALLBACK_LEN: usize = 2048;

impl Callback {
    /// `url`, checked and parsed.
    pub fn parse(url: &str) -> Result<Callback, ValidationError> {
        let invalid = |message: String| ValidationError::new("callback_url", message);
        if url.len() > MAX_CALLBACK_LEN {
            return Err(invalid(format!("longer than {MAX_CALLBACK_LEN} bytes")));
        }
        let parsed =
            url::Url::parse(url).map_err(|error| invalid(format!("not a URL: {error}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(invalid("must be an http:// or https:// URL".to_owned()));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(invalid("must not carry credentials".to_owned()));
        }
        let host = match parsed.host() {
            Some(url::Host::Domain(name)) if !name.is_empty() => name.to_owned(),
            Some(url::Host::Ipv4(address)) => address.to_string(),
            Some(url::Host::Ipv6(address)) => address.to_string(),
            _ => return Err(invalid("has no host".to_owned())),
        };
        let port = parsed
            .port_or_known_default()
            .ok_or_else(|| invalid("has no port".to_owned()))?;
        Ok(Callback {
            url: url.to_owned(),
            host,
            port,
        })
    }
}

/// One image of the job: every target of it publishes the one image its
/// source names when it is resolved (at acceptance, or at its first claim).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedImage {
    pub name: Option<String>,
    pub source: String,
    /// The source's image id, once known.
    pub source_image_id: Option<String>,
    /// A registry source's manifest digest, once known.
    pub source_digest: Option<String>,
}

impl PlannedImage {
    /// Whether the source is an image in a registry (`docker://`).
    pub fn in_registry(&self) -> bool {
        self.source.starts_with(REGISTRY_SOURCE_PREFIX)
    }
}

impl Plan {
    /// Records what each image's source resolved to (`None` where it could
    /// not be read yet); a `content` target of a resolved image then has its
    /// tag and reference at once.
    pub fn resolve_sources(&mut self, resolved: &[Option<ResolvedSource>]) {
        for (image, resolved) in self.images.iter_mut().zip(resolved) {
            image.source_image_id = resolved.as_ref().map(|r| r.image_id.clone());
            image.source_digest = resolved.as_ref().and_then(|r| r.manifest_digest.clone());
        }
        for target in &mut self.targets {
            let image = &self.images[target.image_index];
            if let (TagStrategy::Content, Some(id)) = (target.strategy, &image.source_image_id) {
                let tag = content_tag(id);
                target.reference = Some(target_reference(
                    &self.repo,
                    self.repo_mode,
                    image.name.as_deref(),
                    &tag,
                ));
                target.tag = Some(tag);
            }
        }
    }
}

/// One image under one tag. For the `content` strategy the tag, and so the
/// reference, is known only once the source image id is read on the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTarget {
    /// Which of the plan's images.
    pub image_index: usize,
    pub image_name: Option<String>,
    pub source: String,
    pub strategy: TagStrategy,
    pub tag: Option<String>,
    pub reference: Option<String>,
}

/// Longest git name accepted before slugging; far above any real branch.
const MAX_GIT_NAME_LEN: usize = 1024;

/// A `content` tag is the 64 hex digits of an image id; used to check up front
/// that the eventual reference will be valid.
const CONTENT_TAG_PLACEHOLDER: &str =
    "0000000000000000000000000000000000000000000000000000000000000000";

/// Validates `spec` and expands it into targets, image by image, tag by tag.
pub fn plan(spec: &JobSpec, limits: Limits) -> Result<Plan, ValidationError> {
    let repo = normalize_repo(spec.repo.trim_start()).to_owned();
    if repo.is_empty() {
        return Err(ValidationError::new("repo", "repo must not be empty"));
    }
    check_repository(&repo).map_err(|message| ValidationError::new("repo", message))?;

    if spec.images.is_empty() {
        return Err(ValidationError::new(
            "images",
            "at least one image is required",
        ));
    }
    if spec.tags.is_empty() {
        return Err(ValidationError::new("tags", "at least one tag is required"));
    }
    let count = spec.images.len().saturating_mul(spec.tags.len());
    if count > limits.max_targets {
        return Err(ValidationError::new(
            "tags",
            format!(
                "{} images x {} tags = {count} targets, more than the limit of {}",
                spec.images.len(),
                spec.tags.len(),
                limits.max_targets
            ),
        ));
    }
    if spec.images.len() > 1 && spec.images.iter().any(|image| image.name.is_none()) {
        let index = spec
            .images
            .iter()
            .position(|image| image.name.is_none())
            .unwrap_or(0);
        return Err(ValidationError::new(
            format!("images[{index}].name"),
            "the nameless image cannot be published together with other images",
        ));
    }

    let tags = resolve_tags(&spec.tags)?;
    let mut seen_names: HashMap<&str, usize> = HashMap::new();
    let mut images = Vec::with_capacity(spec.images.len());
    let mut targets = Vec::with_capacity(count);
    for (index, image) in spec.images.iter().enumerate() {
        if let Some(name) = &image.name {
            if let Some(first) = seen_names.insert(name.as_str(), index) {
                return Err(ValidationError::new(
                    format!("images[{index}].name"),
                    format!("image name {name:?} is already used by images[{first}]"),
                ));
            }
            check_image_name(&repo, spec.repo_mode, name).map_err(|message| {
                ValidationError::new(format!("images[{index}].name"), message)
            })?;
        }
        check_source(&image.source)
            .map_err(|message| ValidationError::new(format!("images[{index}].source"), message))?;
        images.push(PlannedImage {
            name: image.name.clone(),
            source: image.source.clone(),
            source_image_id: None,
            source_digest: None,
        });
        for tag in &tags {
            let reference = tag
                .value
                .as_deref()
                .map(|value| target_reference(&repo, spec.repo_mode, image.name.as_deref(), value));
            targets.push(PlannedTarget {
                image_index: index,
                image_name: image.name.clone(),
                source: image.source.clone(),
                strategy: tag.strategy,
                tag: tag.value.clone(),
                reference,
            });
        }
    }
    // Every image reads the repo one way (all named, or the one nameless):
    // the first image's reading is the job's.
    let repository = Repository::of_images_repo(&repo, spec.repo_mode, images[0].name.as_deref())
        .map_err(|message| ValidationError::new("repo", message))?;
    if let Some(auth) = &spec.registry_auth {
        check_registry_auth(auth)?;
    }
    if spec.publish_via == Some(PublishVia::Engine)
        && let Some(index) = images.iter().position(PlannedImage::in_registry)
    {
        return Err(ValidationError::new(
            "publish_via",
            format!(
                "images[{index}] has a registry source, which is published in the registry: \
                 \"engine\" needs every source on the engine"
            ),
        ));
    }
    let callback = spec
        .callback_url
        .as_deref()
        .map(Callback::parse)
        .transpose()?;
    let platforms = check_platforms(spec.platforms.as_deref().unwrap_or_default())?;
    Ok(Plan {
        repo,
        repo_mode: spec.repo_mode,
        repository,
        force: spec.force,
        publish_via: spec.publish_via,
        images,
        targets,
        callback,
        platforms,
    })
}

/// Most platforms a job may name.
const MAX_PLATFORMS: usize = 32;

fn check_platforms(platforms: &[String]) -> Result<Vec<Platform>, ValidationError> {
    if platforms.len() > MAX_PLATFORMS {
        return Err(ValidationError::new(
            "platforms",
            format!("at most {MAX_PLATFORMS} platforms"),
        ));
    }
    let mut parsed: Vec<Platform> = Vec::with_capacity(platforms.len());
    for (index, text) in platforms.iter().enumerate() {
        let field = format!("platforms[{index}]");
        let platform =
            Platform::parse(text).map_err(|message| ValidationError::new(&field, message))?;
        if let Some(first) = parsed.iter().position(|seen| *seen == platform) {
            return Err(ValidationError::new(
                field,
                format!("{text:?} is already platforms[{first}]"),
            ));
        }
        parsed.push(platform);
    }
    Ok(parsed)
}

struct ResolvedTag {
    strategy: TagStrategy,
    /// `None` for `content`.
    value: Option<String>,
}

fn resolve_tags(tags: &[TagSpec]) -> Result<Vec<ResolvedTag>, ValidationError> {
    let mut seen: HashMap<Option<String>, usize> = HashMap::new();
    let mut resolved = Vec::with_capacity(tags.len());
    for (index, tag) in tags.iter().enumerate() {
        let field = format!("tags[{index}].value");
        let value = match (tag.strategy, tag.value.as_deref()) {
            (TagStrategy::Content, None) => None,
            (TagStrategy::Content, Some(_)) => {
                return Err(ValidationError::new(
                    field,
                    "the content strategy takes no value",
                ));
            }
            (_, None | Some("")) => {
                return Err(ValidationError::new(
                    field,
                    format!("the {} strategy needs a value", tag.strategy.as_str()),
                ));
            }
            (TagStrategy::Custom, Some(value)) => {
                if !is_valid_docker_tag(value) {
                    return Err(ValidationError::new(
                        field,
                        format!(
                            "{value:?} is not a valid Docker tag ([A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})"
                        ),
                    ));
                }
                Some(value.to_owned())
            }
            (TagStrategy::GitBranch | TagStrategy::GitTag, Some(value)) => {
                if value.len() > MAX_GIT_NAME_LEN {
                    return Err(ValidationError::new(
                        field,
                        format!("git names longer than {MAX_GIT_NAME_LEN} bytes are not accepted"),
                    ));
                }
                Some(docker_tag(value))
            }
            (TagStrategy::GitCommit, Some(value)) => {
                let is_commit =
                    (7..=64).contains(&value.len()) && value.chars().all(|c| c.is_ascii_hexdigit());
                if !is_commit {
                    return Err(ValidationError::new(
                        field,
                        format!("{value:?} is not a git commit id (7 to 64 hex digits)"),
                    ));
                }
                Some(value.to_owned())
            }
        };
        if let Some(first) = seen.insert(value.clone(), index) {
            return Err(ValidationError::new(
                format!("tags[{index}]"),
                format!("yields the same tag as tags[{first}]"),
            ));
        }
        resolved.push(ResolvedTag {
            strategy: tag.strategy,
            value,
        });
    }
    Ok(resolved)
}

/// An image name must give a valid reference with any valid tag: checked with
/// the longest tag a `content` strategy could give.
fn check_image_name(repo: &str, mode: RepoMode, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("image name must not be empty; use null for the nameless image".to_owned());
    }
    let reference = target_reference(repo, mode, Some(name), CONTENT_TAG_PLACEHOLDER);
    if mode == RepoMode::Monorepo {
        let tag = format!("{name}-{CONTENT_TAG_PLACEHOLDER}");
        if !is_valid_docker_tag(&tag) {
            return Err(format!(
                "in monorepo mode the image name becomes part of the tag: {name:?} must be \
                 made of [A-Za-z0-9_.-] and at most 63 characters"
            ));
        }
    }
    check_tagged_reference(&reference).map_err(|message| format!("invalid image name: {message}"))
}

fn check_registry_auth(auth: &RegistryAuthSpec) -> Result<(), ValidationError> {
    let filled = |value: &Option<String>| value.as_deref().is_some_and(|v| !v.is_empty());
    match (
        filled(&auth.username),
        filled(&auth.password),
        filled(&auth.identity_token),
    ) {
        (true, true, false) | (false, false, true) => Ok(()),
        _ => Err(ValidationError::new(
            "registry_auth",
            "give either username and password, or identity_token",
        )),
    }
}

/// A source is an image id (`sha256:...` or a hex prefix), a local
/// reference, or a registry source (`docker://...`).
fn check_source(source: &str) -> Result<(), String> {
    if let Some(parsed) = RegistrySource::parse(source) {
        return parsed.map(|_| ());
    }
    if source.is_empty() {
        return Err("source must name a local image".to_owned());
    }
    if let Some(hex) = source.strip_prefix("sha256:") {
        let is_id = (1..=64).contains(&hex.len()) && hex.chars().all(|c| c.is_ascii_hexdigit());
        return if is_id {
            Ok(())
        } else {
            Err(format!("{source:?} is not a valid image id"))
        };
    }
    oci_spec::distribution::Reference::try_from(source)
        .map(|_| ())
        .map_err(|error| format!("{source:?} is not a valid image reference or id: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> JobSpec {
        serde_json::from_value(json).expect("test spec parses")
    }

    fn plan_of(json: serde_json::Value) -> Result<Plan, ValidationError> {
        plan(&spec(json), Limits::default())
    }

    fn field_of(json: serde_json::Value) -> String {
        plan_of(json).expect_err("spec must be refused").field
    }

    #[test]
    fn expands_images_times_tags_in_order() {
        let plan = plan_of(serde_json::json!({
            "repo": "127.0.0.1:5000/acme/shop/",
            "images": [{"name": "backend", "source": "acme/backend:build-42"},
                       {"name": "frontend", "source": "acme/frontend:build-42"}],
            "tags": [{"strategy": "custom", "value": "v1.2.3"},
                     {"strategy": "git-branch", "value": "core/feature/ADD_SETTINGS"}]
        }))
        .unwrap();
        assert_eq!(plan.repo, "127.0.0.1:5000/acme/shop");
        assert_eq!(plan.repository.registry, "127.0.0.1:5000");
        assert_eq!(plan.repository.path, "acme/shop");
        let references: Vec<_> = plan
            .targets
            .iter()
            .map(|t| t.reference.clone().unwrap())
            .collect();
        assert_eq!(
            references,
            [
                "127.0.0.1:5000/acme/shop/backend:v1.2.3",
                "127.0.0.1:5000/acme/shop/backend:core-feature-add-settings-df80fdc3",
                "127.0.0.1:5000/acme/shop/frontend:v1.2.3",
                "127.0.0.1:5000/acme/shop/frontend:core-feature-add-settings-df80fdc3",
            ]
        );
    }

    #[test]
    fn monorepo_and_nameless() {
        let plan = plan_of(serde_json::json!({
            "repo": "reg/acme", "repo_mode": "monorepo",
            "images": [{"name": "api", "source": "x"}],
            "tags": [{"strategy": "git-commit", "value": "0123abcd"}]
        }))
        .unwrap();
        assert_eq!(
            plan.targets[0].reference.as_deref(),
            Some("reg/acme:api-0123abcd")
        );
        let plan = plan_of(serde_json::json!({
            "repo": "reg/acme", "repo_mode": "monorepo",
            "images": [{"source": "x"}],
            "tags": [{"strategy": "git-tag", "value": "v1.0"}]
        }))
        .unwrap();
        assert_eq!(plan.targets[0].reference.as_deref(), Some("reg/acme:v1.0"));
        assert_eq!(plan.targets[0].image_name, None);
    }

    #[test]
    fn resolved_sources_give_content_targets_their_reference() {
        let mut plan = plan_of(serde_json::json!({
            "repo": "127.0.0.1:5000/shop", "repo_mode": "monorepo",
            "images": [{"name": "api", "source": "api:b1"}, {"name": "web", "source": "web:b1"}],
            "tags": [{"strategy": "content"}, {"strategy": "custom", "value": "v1"}]
        }))
        .unwrap();
        let id = format!("sha256:{}", "ab".repeat(32));
        plan.resolve_sources(&[Some(ResolvedSource::local(id.clone())), None]);
        assert_eq!(plan.images[0].source_image_id.as_deref(), Some(id.as_str()));
        let content = &plan.targets[0];
        assert_eq!(content.tag.as_deref(), Some("ab".repeat(32).as_str()));
        assert_eq!(
            content.reference.as_deref(),
            Some(format!("127.0.0.1:5000/shop:api-{}", "ab".repeat(32)).as_str())
        );
        // The unresolved image's content target waits for its first claim.
        assert_eq!(plan.targets[2].image_index, 1);
        assert_eq!(plan.targets[2].reference, None);
        assert_eq!(
            plan.targets[3].reference.as_deref(),
            Some("127.0.0.1:5000/shop:web-v1")
        );
    }

    #[test]
    fn callback_urls_are_http_with_a_host() {
        let with = |url: &str| {
            plan_of(serde_json::json!({
                "repo": "127.0.0.1:5000/a", "images": [{"source": "s:1"}],
                "tags": [{"strategy": "custom", "value": "v1"}], "callback_url": url
            }))
        };
        let callback = with("https://ci.example.com:8443/hooks?job=1")
            .unwrap()
            .callback
            .unwrap();
        assert_eq!(
            (callback.host.as_str(), callback.port),
            ("ci.example.com", 8443)
        );
        // Addresses in their one spelling, whatever the URL wrote.
        let callback = with("http://[::ffff:7f00:1]/h").unwrap().callback.unwrap();
        assert_eq!(
            (callback.host.as_str(), callback.port),
            ("::ffff:127.0.0.1", 80)
        );
        let callback = with("http://2130706433/h").unwrap().callback.unwrap();
        assert_eq!(callback.host, "127.0.0.1");
        for bad in [
            "ftp://x/y",
            "not a url",
            "http://user:pw@x/",
            "file:///etc/passwd",
        ] {
            assert_eq!(with(bad).unwrap_err().field, "callback_url", "{bad}");
        }
    }

    #[test]
    fn content_targets_wait_for_the_source_id() {
        let plan = plan_of(serde_json::json!({
            "repo": "reg/acme", "images": [{"name": "a", "source": "x"}],
            "tags": [{"strategy": "content"}]
        }))
        .unwrap();
        assert_eq!(plan.targets[0].tag, None);
        assert_eq!(plan.targets[0].reference, None);
    }

    #[test]
    fn refusals_name_the_field() {
        let ok_images = serde_json::json!([{"name": "a", "source": "x"}]);
        let ok_tags = serde_json::json!([{"strategy": "custom", "value": "v1"}]);
        let cases = [
            (
                serde_json::json!({"repo": "", "images": ok_images, "tags": ok_tags}),
                "repo",
            ),
            (
                serde_json::json!({"repo": "reg/Acme", "images": ok_images, "tags": ok_tags}),
                "repo",
            ),
            (
                serde_json::json!({"repo": "reg/a/../b", "images": ok_images, "tags": ok_tags}),
                "repo",
            ),
            (
                serde_json::json!({"repo": "reg/a:v1", "images": ok_images, "tags": ok_tags}),
                "repo",
            ),
            (
                serde_json::json!({"repo": "reg.example", "images": ok_images, "tags": ok_tags}),
                "repo",
            ),
            (
                serde_json::json!({"repo": "r/a", "images": [], "tags": ok_tags}),
                "images",
            ),
            (
                serde_json::json!({"repo": "r/a", "images": ok_images, "tags": []}),
                "tags",
            ),
            (
                serde_json::json!({"repo": "r/a", "images": [{"name": "a", "source": "x"}, {"source": "y"}], "tags": ok_tags}),
                "images[1].name",
            ),
            (
                serde_json::json!({"repo": "r/a", "images": [{"name": "a", "source": "x"}, {"name": "a", "source": "y"}], "tags": ok_tags}),
                "images[1].name",
            ),
            (
                serde_json::json!({"repo": "r/a", "images": [{"name": "Backend", "source": "x"}], "tags": ok_tags}),
                "images[0].name",
            ),
            (
                serde_json::json!({"repo": "r/a", "repo_mode": "monorepo", "images": [{"name": "a/b", "source": "x"}], "tags": ok_tags}),
                "images[0].name",
            ),
            (
                serde_json::json!({"repo": "r/a", "images": [{"name": "a", "source": ""}], "tags": ok_tags}),
                "images[0].source",
            ),
            (
                serde_json::json!({"repo": "r/a", "images": [{"name": "a", "source": "acme/App"}], "tags": ok_tags}),
                "images[0].source",
            ),
            (
                serde_json::json!({"repo": "r/a", "images": [{"name": "a", "source": "docker://reg/ci/a"}], "tags": ok_tags}),
                "images[0].source",
            ),
            (
                serde_json::json!({"repo": "r/a", "publish_via": "engine", "images": [{"name": "a", "source": "docker://reg/ci/a:1"}], "tags": ok_tags}),
                "publish_via",
            ),
            (
                serde_json::json!({"repo": "r/a", "images": ok_images, "tags": [{"strategy": "custom", "value": "-bad"}]}),
                "tags[0].value",
            ),
            (
                serde_json::json!({"repo": "r/a", "images": ok_images, "tags": [{"strategy": "custom", "value": format!("sha256:{}", "a".repeat(64))}]}),
                "tags[0].value",
            ),
            (
                serde_json::json!({"repo": "r/a", "images": ok_images, "tags": [{"strategy": "custom"}]}),
                "tags[0].value",
            ),
            (
                serde_json::json!({"repo": "r/a", "images": ok_images, "tags": [{"strategy": "git-commit", "value": "xyz1234"}]}),
                "tags[0].value",
            ),
            (
                serde_json::json!({"repo": "r/a", "images": ok_images, "tags": [{"strategy": "content", "value": "v1"}]}),
                "tags[0].value",
            ),
            (
                serde_json::json!({"repo": "r/a", "images": ok_images, "tags": [{"strategy": "custom", "value": "v1"}, {"strategy": "git-tag", "value": "v1"}]}),
                "tags[1]",
            ),
        ];
        for (json, field) in cases {
            assert_eq!(field_of(json.clone()), field, "{json}");
        }
    }

    #[test]
    fn target_count_is_limited() {
        let images: Vec<_> = (0..20)
            .map(|i| serde_json::json!({"name": format!("i{i}"), "source": "x"}))
            .collect();
        let tags: Vec<_> = (0..20)
            .map(|i| serde_json::json!({"strategy": "custom", "value": format!("t{i}")}))
            .collect();
        let error = plan_of(serde_json::json!({"repo": "r/a", "images": images, "tags": tags}))
            .unwrap_err();
        assert_eq!(error.field, "tags");
        assert!(error.message.contains("400 targets"), "{}", error.message);
    }

    #[test]
    fn sources_may_be_image_ids() {
        let id = format!("sha256:{}", "ab".repeat(32));
        assert!(check_source(&id).is_ok());
        assert!(check_source("sha256:xyz").is_err());
        assert!(check_source("abc123").is_ok());
    }
}
