//! Who may publish what: roles, scopes and the decisions made with them.
//! Plain rules over a validated plan; the tokens themselves are read by
//! `crate::access`, the engine is asked about labels by the caller.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use globset::{Glob, GlobBuilder, GlobMatcher};
use serde::{Deserialize, Serialize};

use super::naming::reference_key;
use super::source::RegistrySource;
use super::spec::Plan;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Submit jobs within its scope; read and cancel its own.
    Publisher,
    /// Read every job.
    Reader,
    /// Everything, the audit trail included.
    Admin,
}

/// Shell-style patterns over names with `/`: `*` stays within one path
/// segment, `**` crosses them. `X/**` also matches `X` itself:
/// `registry.example.com/team-a/**` allows the repo `…/team-a` as well as
/// everything under it.
#[derive(Debug, Clone)]
pub struct Patterns {
    written: Vec<String>,
    /// Shared by the clones: each compiled matcher keeps its own search
    /// caches, which a fresh clone would build again on its first match.
    matchers: Arc<[GlobMatcher]>,
    /// One of the patterns is `**`: every name matches, without a search.
    /// The scope of every request to a service without tokens.
    everything: bool,
}

impl Patterns {
    pub fn new(patterns: &[String]) -> Result<Patterns, globset::Error> {
        let compile = |pattern: &str| {
            GlobBuilder::new(pattern)
                .literal_separator(true)
                .build()
                .map(|glob: Glob| glob.compile_matcher())
        };
        let mut matchers = Vec::with_capacity(patterns.len());
        for pattern in patterns {
            matchers.push(compile(pattern)?);
            if let Some(parent) = pattern.strip_suffix("/**") {
                matchers.push(compile(parent)?);
            }
        }
        Ok(Patterns {
            written: patterns.to_vec(),
            matchers: matchers.into(),
            everything: patterns.iter().any(|pattern| pattern == "**"),
        })
    }

    /// Matches everything. Compiled once: a service without tokens gives
    /// every request an unlimited scope (`Principal::anonymous`).
    pub fn any() -> Patterns {
        static ANY: LazyLock<Patterns> =
            LazyLock::new(|| Patterns::new(&["**".to_owned()]).expect("`**` is a pattern"));
        ANY.clone()
    }

    pub fn matches(&self, name: &str) -> bool {
        self.everything || self.matchers.iter().any(|matcher| matcher.is_match(name))
    }

    pub fn written(&self) -> &[String] {
        &self.written
    }
}

/// What a scoped token may publish.
#[derive(Debug, Clone)]
pub struct Scope {
    /// Over the images repo as its targets read it (`docker.io/acme/shop`
    /// for `acme/shop`; see `naming::Repository::of_images_repo`).
    pub repos: Patterns,
    /// Over the repositories the token may read (`registry/path`): each
    /// `docker://` source, and each repository a layer is mounted from.
    pub read_repos: Patterns,
    /// Over each source reference, as written or normalised.
    pub sources: Patterns,
    /// Labels every source image must carry, with these values.
    pub source_labels: BTreeMap<String, String>,
    /// Registry hosts where the service's own docker config may be used.
    pub service_credentials: Patterns,
    /// Refuse a job that would push without credentials of its own to a
    /// host where the service's may not be used (rather than push it
    /// anonymously).
    pub require_registry_auth: bool,
    pub force: bool,
}

impl Scope {
    /// An admin's, or no tokens at all: everything.
    pub fn unlimited() -> Scope {
        Scope {
            repos: Patterns::any(),
            read_repos: Patterns::any(),
            sources: Patterns::any(),
            source_labels: BTreeMap::new(),
            service_credentials: Patterns::any(),
            require_registry_auth: false,
            force: true,
        }
    }
}

/// Who is asking.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The token's name, recorded as `submitted_by`; `None` when the service
    /// has no tokens.
    pub name: Option<String>,
    pub role: Role,
    pub scope: Scope,
    /// A share of the lanes relative to other owners (round robin by weight).
    pub weight: u32,
    /// Most targets this token may have queued at once.
    pub max_queued_targets: Option<usize>,
}

impl Principal {
    /// The caller of a service without tokens: one team, no limits.
    pub fn anonymous() -> Principal {
        Principal {
            name: None,
            role: Role::Admin,
            scope: Scope::unlimited(),
            weight: 1,
            max_queued_targets: None,
        }
    }

    /// May this caller see (and, if a publisher or admin, cancel) a job
    /// submitted by `owner`?
    pub fn can_see(&self, owner: Option<&str>) -> bool {
        match self.role {
            Role::Admin | Role::Reader => true,
            Role::Publisher => self.name.is_some() && self.name.as_deref() == owner,
        }
    }

    /// Whose jobs a listing shows this principal: a publisher its own
    /// (`Some` submitter), readers and admins everyone's (`None`).
    pub fn lists_jobs_of(&self) -> Option<&str> {
        match self.role {
            Role::Publisher => Some(self.name.as_deref().unwrap_or("")),
            Role::Reader | Role::Admin => None,
        }
    }

    pub fn can_cancel(&self, owner: Option<&str>) -> bool {
        self.role != Role::Reader && self.can_see(owner)
    }

    /// May this caller see the `callback_url` of a job submitted by
    /// `owner`? Its submitter and admins: the URL may carry a secret of the
    /// submitter's (a receiver's token in its query), and it says where
    /// the submitter's systems are.
    pub fn sees_callback_of(&self, owner: Option<&str>) -> bool {
        self.role == Role::Admin || (self.name.is_some() && self.name.as_deref() == owner)
    }

    /// May this caller see the fleet: the engines, the instances' addresses,
    /// their queues and the engines' errors? Admins only.
    pub fn sees_engines(&self) -> bool {
        self.role == Role::Admin
    }
}

/// A request outside the caller's scope: which field, and which rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forbidden {
    pub field: Option<String>,
    pub rule: String,
    pub message: String,
}

impl Forbidden {
    fn new(field: Option<String>, rule: &str, message: String) -> Forbidden {
        Forbidden {
            field,
            rule: rule.to_owned(),
            message,
        }
    }
}

/// What a permitted submission may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Whether the service's own registry credentials may be used for the
    /// repo's registry (else the push is anonymous, or the job's own).
    pub service_credentials: bool,
    /// Labels each source must carry, checked on the engine before anything
    /// is tagged.
    pub required_labels: BTreeMap<String, String>,
    /// The scope's `read_repos` as written: kept with the job, so that the
    /// worker checks the repositories it mounts layers from against them.
    pub read_repos: Vec<String>,
}

/// Decides whether `principal` may submit `plan` (with its own credentials
/// or not), and where the operator allows registries (`allow_registry`,
/// which bounds every token). Answers what the job may use.
pub fn check_submission(
    principal: &Principal,
    plan: &Plan,
    brings_credentials: bool,
    allow_registry: &Patterns,
) -> Result<Grant, Forbidden> {
    let who = principal.name.as_deref().unwrap_or("this token");
    if principal.role == Role::Reader {
        return Err(Forbidden::new(
            None,
            "role",
            format!("{who} is a reader: it may read jobs, not submit them"),
        ));
    }
    // The registry and repository every target of the plan is read in.
    let repository = &plan.repository;
    let host = &repository.registry;
    if !allow_registry.matches(host) {
        return Err(Forbidden::new(
            Some("repo".to_owned()),
            "allow-registry",
            format!("publishd does not publish to {host} (not in --allow-registry)"),
        ));
    }
    let scope = &principal.scope;
    if !scope.repos.matches(&repository.to_string()) {
        return Err(Forbidden::new(
            Some("repo".to_owned()),
            "repos",
            format!(
                "{who} may not publish to {repository} (its repos: {})",
                scope.repos.written().join(", ")
            ),
        ));
    }
    for (index, image) in plan.images.iter().enumerate() {
        let Some(Ok(source)) = RegistrySource::parse(&image.source) else {
            continue;
        };
        let field = Some(format!("images[{index}].source"));
        if !allow_registry.matches(&source.registry) {
            return Err(Forbidden::new(
                field,
                "allow-registry",
                format!(
                    "publishd does not read from {} (not in --allow-registry)",
                    source.registry
                ),
            ));
        }
        let read = source.repository();
        if !scope.read_repos.matches(&read.to_string()) {
            return Err(Forbidden::new(
                field,
                "read_repos",
                format!(
                    "{who} may not read {read} (its read_repos: {})",
                    scope.read_repos.written().join(", ")
                ),
            ));
        }
        // A source in another registry is read with publishd's own
        // credentials for it (the job's are for its repo's registry): only
        // for a token that may use them there.
        if source.registry != *host && !scope.service_credentials.matches(&source.registry) {
            return Err(Forbidden::new(
                field,
                "service_credentials",
                format!(
                    "{who} may not read {} with publishd's own credentials: take the source \
                     from {host}",
                    source.registry
                ),
            ));
        }
    }
    for (index, image) in plan.images.iter().enumerate() {
        let normalised = reference_key(&image.source);
        if !(scope.sources.matches(&image.source) || scope.sources.matches(&normalised)) {
            return Err(Forbidden::new(
                Some(format!("images[{index}].source")),
                "sources",
                format!(
                    "{who} may not publish the source {:?} (its sources: {})",
                    image.source,
                    scope.sources.written().join(", ")
                ),
            ));
        }
    }
    if plan.force && !scope.force {
        return Err(Forbidden::new(
            Some("force".to_owned()),
            "force",
            format!("{who} may not force a push over an up-to-date tag"),
        ));
    }
    let service_credentials = scope.service_credentials.matches(host);
    if !brings_credentials && !service_credentials && scope.require_registry_auth {
        return Err(Forbidden::new(
            Some("registry_auth".to_owned()),
            "service_credentials",
            format!(
                "{who} may not use publishd's own credentials for {host}: the job must bring \
                 registry_auth"
            ),
        ));
    }
    Ok(Grant {
        service_credentials,
        required_labels: scope.source_labels.clone(),
        read_repos: scope.read_repos.written().to_vec(),
    })
}

/// The labels `required` that `labels` (a source image's) lack or differ in,
/// as `key=value` each.
pub fn missing_labels(
    required: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> Vec<String> {
    required
        .iter()
        .filter(|(key, value)| labels.get(*key) != Some(*value))
        .map(|(key, value)| format!("{key}={value}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::spec::{JobSpec, Limits, plan};

    fn plan_of(json: serde_json::Value) -> Plan {
        let spec: JobSpec = serde_json::from_value(json).unwrap();
        plan(&spec, Limits::default()).unwrap()
    }

    fn team_a() -> Principal {
        Principal {
            name: Some("team-a".to_owned()),
            role: Role::Publisher,
            scope: Scope {
                repos: Patterns::new(&["registry.example.com/team-a/**".to_owned()]).unwrap(),
                read_repos: Patterns::new(&["registry.example.com/team-a/**".to_owned()]).unwrap(),
                sources: Patterns::new(&["team-a/**".to_owned()]).unwrap(),
                source_labels: BTreeMap::from([("team".to_owned(), "a".to_owned())]),
                service_credentials: Patterns::new(&["registry.example.com".to_owned()]).unwrap(),
                require_registry_auth: false,
                force: false,
            },
            weight: 1,
            max_queued_targets: None,
        }
    }

    fn job(repo: &str, source: &str) -> serde_json::Value {
        serde_json::json!({"repo": repo, "images": [{"name": "app", "source": source}],
                           "tags": [{"strategy": "custom", "value": "v1"}]})
    }

    #[test]
    fn a_publisher_publishes_its_own_sources_to_its_own_repos() {
        let grant = check_submission(
            &team_a(),
            &plan_of(job("registry.example.com/team-a/shop", "team-a/app:b1")),
            false,
            &Patterns::any(),
        )
        .unwrap();
        assert!(grant.service_credentials);
        assert_eq!(grant.required_labels["team"], "a");
    }

    #[test]
    fn refusals_name_the_field_and_the_rule() {
        let refuse = |json: serde_json::Value, allow: &Patterns| {
            check_submission(&team_a(), &plan_of(json), false, allow).unwrap_err()
        };
        let any = Patterns::any();
        let other_repo = refuse(
            job("registry.example.com/team-b/shop", "team-a/app:b1"),
            &any,
        );
        assert_eq!(
            (other_repo.field.as_deref(), other_repo.rule.as_str()),
            (Some("repo"), "repos")
        );
        let other_source = refuse(
            job("registry.example.com/team-a/shop", "team-b/app:b1"),
            &any,
        );
        assert_eq!(other_source.field.as_deref(), Some("images[0].source"));
        assert_eq!(other_source.rule, "sources");
        // `X/**` covers `X` too.
        let under = Patterns::new(&["reg/team-a/**".to_owned()]).unwrap();
        assert!(under.matches("reg/team-a") && under.matches("reg/team-a/x/y"));
        assert!(!under.matches("reg/team-ab"));
        // One `*` does not cross a `/`.
        let nested = Patterns::new(&["team-a/*".to_owned()]).unwrap();
        assert!(nested.matches("team-a/app:b1") && !nested.matches("team-a/x/app:b1"));
        let mut forced = job("registry.example.com/team-a/shop", "team-a/app:b1");
        forced["force"] = serde_json::json!(true);
        assert_eq!(refuse(forced, &any).field.as_deref(), Some("force"));
        let allowed = Patterns::new(&["127.0.0.1:*".to_owned()]).unwrap();
        let outside = refuse(
            job("registry.example.com/team-a/shop", "team-a/app:b1"),
            &allowed,
        );
        assert_eq!(outside.rule, "allow-registry");
        // Another team's image in the registry, by its repository.
        let mut reading = team_a();
        reading.scope.sources = Patterns::any();
        let private = "docker://registry.example.com/team-b/private:latest";
        let refused = check_submission(
            &reading,
            &plan_of(job("registry.example.com/team-a/shop", private)),
            false,
            &any,
        )
        .unwrap_err();
        assert_eq!(
            (refused.field.as_deref(), refused.rule.as_str()),
            (Some("images[0].source"), "read_repos")
        );
        let own = "docker://registry.example.com/team-a/ci/app:b1";
        let plan = plan_of(job("registry.example.com/team-a/shop", own));
        assert!(check_submission(&reading, &plan, false, &any).is_ok());
        let mut reader = team_a();
        reader.role = Role::Reader;
        let plan = plan_of(job("registry.example.com/team-a/shop", "team-a/app:b1"));
        assert_eq!(
            check_submission(&reader, &plan, false, &any)
                .unwrap_err()
                .rule,
            "role"
        );
    }

    #[test]
    fn service_credentials_are_granted_by_host_or_the_job_must_bring_its_own() {
        let mut principal = team_a();
        principal.scope.repos = Patterns::any();
        let plan = plan_of(job("other.example.com/team-a/shop", "team-a/app:b1"));
        let grant = check_submission(&principal, &plan, false, &Patterns::any()).unwrap();
        assert!(
            !grant.service_credentials,
            "another host: pushed anonymously"
        );
        principal.scope.require_registry_auth = true;
        let refused = check_submission(&principal, &plan, false, &Patterns::any()).unwrap_err();
        assert_eq!(refused.field.as_deref(), Some("registry_auth"));
        assert!(check_submission(&principal, &plan, true, &Patterns::any()).is_ok());
    }

    #[test]
    fn docker_hub_repos_are_matched_normalised() {
        let mut principal = team_a();
        principal.scope.repos = Patterns::new(&["docker.io/team-a/**".to_owned()]).unwrap();
        principal.scope.sources = Patterns::any();
        let plan = plan_of(job("team-a/shop", "x:1"));
        assert!(check_submission(&principal, &plan, false, &Patterns::any()).is_ok());
        let plan = plan_of(job("index.docker.io/team-a/shop", "x:1"));
        assert!(check_submission(&principal, &plan, false, &Patterns::any()).is_ok());
        // `acme` alone would be `docker.io/library/acme`; its target
        // `acme/app:v1` is in `docker.io/acme`, which is what is matched.
        principal.scope.repos = Patterns::new(&["docker.io/library/**".to_owned()]).unwrap();
        let refused = check_submission(
            &principal,
            &plan_of(job("acme", "x:1")),
            false,
            &Patterns::any(),
        )
        .unwrap_err();
        assert_eq!(refused.rule, "repos");
        assert!(
            refused.message.contains("docker.io/acme "),
            "{}",
            refused.message
        );
    }

    #[test]
    fn who_sees_and_cancels_what() {
        let publisher = team_a();
        assert!(publisher.can_see(Some("team-a")) && publisher.can_cancel(Some("team-a")));
        assert!(!publisher.can_see(Some("team-b")) && !publisher.can_see(None));
        let mut reader = team_a();
        reader.role = Role::Reader;
        assert!(reader.can_see(Some("team-b")) && !reader.can_cancel(Some("team-b")));
        assert!(Principal::anonymous().can_cancel(None));
        assert!(!publisher.sees_engines() && !reader.sees_engines());
        assert!(publisher.sees_callback_of(Some("team-a")));
        assert!(!publisher.sees_callback_of(Some("team-b")) && !publisher.sees_callback_of(None));
        assert!(!reader.sees_callback_of(Some("team-b")));
        assert!(Principal::anonymous().sees_callback_of(Some("team-b")));
        assert!(Principal::anonymous().sees_engines());
    }

    #[test]
    fn missing_labels_are_listed() {
        let required = BTreeMap::from([("team".to_owned(), "a".to_owned())]);
        let labels = BTreeMap::from([("team".to_owned(), "b".to_owned())]);
        assert_eq!(missing_labels(&required, &labels), ["team=a"]);
        let labels = BTreeMap::from([("team".to_owned(), "a".to_owned())]);
        assert!(missing_labels(&required, &labels).is_empty());
    }
}
