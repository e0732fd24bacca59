//! API tokens: scoped ones from the auth config file, unscoped admin ones
//! from `--api-token-file` / `PUBLISHD_API_TOKENS`, all kept as SHA-256
//! digests and compared in constant time. Read again on SIGHUP; a file that
//! does not load leaves the tokens as they were.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::watch;

use crate::domain::access::{Patterns, Principal, Role, Scope};

/// Where the tokens come from.
#[derive(Debug, Clone, Default)]
pub struct TokenSources {
    /// The auth config file (TOML).
    pub auth_config: Option<PathBuf>,
    /// A file of unscoped tokens, one per line.
    pub token_file: Option<PathBuf>,
    /// Unscoped tokens given directly, separated by commas or newlines.
    pub tokens: Option<String>,
}

/// A token as it is kept: its SHA-256 digest.
pub fn token_digest(presented: &str) -> [u8; 32] {
    Sha256::digest(presented.as_bytes()).into()
}

/// How the queue is shared among tokens that name no cap of their own
/// (`max_queued_targets`): each gets a share of the whole by its weight, so
/// that no one token can fill the queue for every other.
#[derive(Debug, Clone, Copy)]
pub struct QueueShare {
    /// `--max-queued-targets`: the whole queue.
    pub queued_targets: usize,
    /// The least share: one job's most targets (`--max-targets-per-job`),
    /// or a token could never submit its largest job.
    pub at_least: usize,
}

impl QueueShare {
    /// Gives each principal that may submit and names no cap its share,
    /// by weight among all that may submit.
    fn apply(&self, principals: &mut [&mut Principal]) {
        let submits = |principal: &Principal| principal.role != Role::Reader;
        let total: u128 = principals
            .iter()
            .filter(|principal| submits(principal))
            .map(|principal| u128::from(principal.weight))
            .sum();
        for principal in principals.iter_mut() {
            if submits(principal) && principal.max_queued_targets.is_none() {
                let share = self.queued_targets as u128 * u128::from(principal.weight) / total;
                let share = usize::try_from(share).unwrap_or(usize::MAX);
                principal.max_queued_targets =
                    Some(share.max(self.at_least).min(self.queued_targets));
            }
        }
    }
}

/// The tokens in force.
#[derive(Debug, Default)]
pub struct TokenTable {
    entries: Vec<([u8; 32], Principal)>,
}

impl TokenTable {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The principal whose token this is.
    pub fn principal(&self, presented: &str) -> Option<Principal> {
        self.principal_of_digest(&token_digest(presented))
    }

    /// Who a caller whose bearer token has `digest` (`None`: no token) is:
    /// anyone, when the service has no tokens; nobody, for a missing or
    /// unknown token.
    pub fn identify(&self, digest: Option<&[u8; 32]>) -> Option<Principal> {
        if self.is_empty() {
            return Some(Principal::anonymous());
        }
        self.principal_of_digest(digest?)
    }

    /// Every digest is compared, so the time taken does not tell which one
    /// matched.
    fn principal_of_digest(&self, digest: &[u8; 32]) -> Option<Principal> {
        let mut found = None;
        for (candidate, principal) in &self.entries {
            if bool::from(candidate.ct_eq(digest)) {
                found = Some(principal.clone());
            }
        }
        found
    }
}

/// A bearer token of its own for one route (`--metrics-token`), kept as
/// its digest and compared in constant time.
#[derive(Clone)]
pub struct RouteToken([u8; 32]);

impl RouteToken {
    pub fn new(token: &str) -> RouteToken {
        RouteToken(token_digest(token))
    }

    /// Whether a presented token whose digest is `presented` is this one.
    pub fn matches(&self, presented: &[u8; 32]) -> bool {
        bool::from(presented.ct_eq(&self.0))
    }
}

impl std::fmt::Debug for RouteToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RouteToken(***)")
    }
}

/// The auth config file's shape.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthConfig {
    #[serde(default, rename = "token")]
    tokens: Vec<TokenEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    sha256: String,
    role: Role,
    #[serde(default)]
    repos: Option<Vec<String>>,
    #[serde(default)]
    read_repos: Option<Vec<String>>,
    #[serde(default)]
    sources: Option<Vec<String>>,
    #[serde(default)]
    source_labels: BTreeMap<String, String>,
    #[serde(default)]
    service_credentials: Vec<String>,
    #[serde(default)]
    require_registry_auth: bool,
    #[serde(default)]
    force: bool,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default)]
    max_queued_targets: Option<usize>,
}

fn one() -> u32 {
    1
}

impl TokenSources {
    /// Reads every source into a table, each token's queue cap its own or
    /// its `share`.
    pub fn load(&self, share: QueueShare) -> anyhow::Result<TokenTable> {
        let mut entries = Vec::new();
        if let Some(path) = &self.auth_config {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the auth config {}", path.display()))?;
            entries.extend(
                parse_auth_config(&text)
                    .with_context(|| format!("in the auth config {}", path.display()))?,
            );
        }
        let mut unscoped = self.tokens.clone().unwrap_or_default();
        if let Some(path) = &self.token_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the API token file {}", path.display()))?;
            unscoped.push('\n');
            unscoped.push_str(&text);
        }
        entries.extend(unscoped_tokens(&unscoped));
        let mut principals: Vec<&mut Principal> =
            entries.iter_mut().map(|(_, principal)| principal).collect();
        share.apply(&mut principals);
        Ok(TokenTable { entries })
    }
}

/// Scoped tokens from the auth config's TOML.
fn parse_auth_config(text: &str) -> anyhow::Result<Vec<([u8; 32], Principal)>> {
    let config: AuthConfig = toml::from_str(text)?;
    let mut names = HashSet::new();
    let mut entries = Vec::new();
    for token in config.tokens {
        let name = token.name.clone();
        if !names.insert(name.clone()) {
            bail!("two tokens are named {name:?}");
        }
        let digest = parse_digest(&token.sha256)
            .with_context(|| format!("token {name:?}: sha256 must be 64 hex digits"))?;
        let principal = principal(token).with_context(|| format!("token {name:?}"))?;
        entries.push((digest, principal));
    }
    Ok(entries)
}

fn principal(token: TokenEntry) -> anyhow::Result<Principal> {
    let patterns = |written: &[String], what: &str| {
        Patterns::new(written).with_context(|| format!("a pattern in {what}"))
    };
    let scope = match token.role {
        Role::Admin | Role::Reader => Scope::unlimited(),
        Role::Publisher => {
            // A publisher says where it publishes: no default could be safe.
            let repos = token
                .repos
                .context("a publisher needs `repos`, the repositories it may publish to")?;
            Scope {
                repos: patterns(&repos, "repos")?,
                // What it may publish, it may read back.
                read_repos: patterns(token.read_repos.as_deref().unwrap_or(&repos), "read_repos")?,
                sources: patterns(
                    token.sources.as_deref().unwrap_or(&["**".to_owned()]),
                    "sources",
                )?,
                source_labels: token.source_labels,
                service_credentials: patterns(&token.service_credentials, "service_credentials")?,
                require_registry_auth: token.require_registry_auth,
                force: token.force,
            }
        }
    };
    if token.weight == 0 {
        bail!("weight must be at least 1");
    }
    Ok(Principal {
        name: Some(token.name),
        role: token.role,
        scope,
        weight: token.weight,
        max_queued_targets: token.max_queued_targets,
    })
}

/// Unscoped tokens: admins, named by a fingerprint of the token (the first
/// eight hex digits of its SHA-256), since they have no name of their own.
fn unscoped_tokens(text: &str) -> Vec<([u8; 32], Principal)> {
    text.split(['\n', ','])
        .map(str::trim)
        .filter(|token| !token.is_empty() && !token.starts_with('#'))
        .map(|token| {
            let digest = token_digest(token);
            let principal = Principal {
                name: Some(format!("api-token:{}", &hex::encode(digest)[..8])),
                ..Principal::anonymous()
            };
            (digest, principal)
        })
        .collect()
}

fn parse_digest(text: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(text.trim()).ok()?;
    bytes.try_into().ok()
}

/// The tokens in force, replaced whole on a reload; whoever holds on to
/// what a token allowed (an event stream) watches for reloads.
#[derive(Clone)]
pub struct AccessControl {
    sources: TokenSources,
    share: QueueShare,
    table: Arc<watch::Sender<Arc<TokenTable>>>,
}

impl AccessControl {
    pub fn new(sources: TokenSources, share: QueueShare) -> anyhow::Result<AccessControl> {
        let table = sources.load(share)?;
        Ok(AccessControl {
            sources,
            share,
            table: Arc::new(watch::Sender::new(Arc::new(table))),
        })
    }

    pub fn current(&self) -> Arc<TokenTable> {
        self.table.borrow().clone()
    }

    /// The tokens in force, told again after each reload.
    pub fn watch(&self) -> watch::Receiver<Arc<TokenTable>> {
        self.table.subscribe()
    }

    /// Reads the sources again; answers how many tokens are now in force.
    /// On an error the tokens stay as they were.
    pub fn reload(&self) -> anyhow::Result<usize> {
        let table = self.sources.load(self.share)?;
        let count = table.len();
        self.table.send_replace(Arc::new(table));
        Ok(count)
    }
}

impl TokenTable {
    /// Unscoped admin tokens, one per line or separated by commas.
    pub fn unscoped(text: &str) -> TokenTable {
        TokenTable {
            entries: unscoped_tokens(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(token: &str) -> String {
        hex::encode(Sha256::digest(token.as_bytes()))
    }

    #[test]
    fn scoped_tokens_are_read_from_toml() {
        let text = format!(
            r#"
            [[token]]
            name = "team-a"
            sha256 = "{}"
            role = "publisher"
            repos = ["registry.example.com/team-a/**"]
            sources = ["team-a/**"]
            source_labels = {{ team = "a" }}
            service_credentials = ["registry.example.com"]
            force = false
            weight = 3
            max_queued_targets = 1000

            [[token]]
            name = "auditor"
            sha256 = "{}"
            role = "reader"
            "#,
            sha("secret-a"),
            sha("secret-r")
        );
        let table = TokenTable {
            entries: parse_auth_config(&text).unwrap(),
        };
        let team_a = table.principal("secret-a").unwrap();
        assert_eq!(team_a.name.as_deref(), Some("team-a"));
        assert_eq!(team_a.role, Role::Publisher);
        assert_eq!(team_a.weight, 3);
        assert_eq!(team_a.max_queued_targets, Some(1000));
        assert!(
            team_a
                .scope
                .repos
                .matches("registry.example.com/team-a/shop")
        );
        assert_eq!(team_a.scope.source_labels["team"], "a");
        assert_eq!(
            team_a.scope.read_repos.written(),
            ["registry.example.com/team-a/**"],
            "read_repos default to repos"
        );
        assert_eq!(table.principal("secret-r").unwrap().role, Role::Reader);
        assert!(table.principal("secret-b").is_none());
        assert!(table.principal("").is_none());
    }

    const SHARE: QueueShare = QueueShare {
        queued_targets: 1000,
        at_least: 100,
    };

    #[test]
    fn tokens_without_a_cap_share_the_queue_by_weight() {
        let entry = |name: &str, role: &str, extra: &str| {
            format!(
                "[[token]]\nname = \"{name}\"\nsha256 = \"{}\"\nrole = \"{role}\"\n\
                 repos = [\"**\"]\n{extra}\n",
                sha(name)
            )
        };
        let text = [
            entry("light", "publisher", ""),
            entry("heavy", "publisher", "weight = 3"),
            entry("own", "publisher", "max_queued_targets = 5000"),
            entry("tiny", "publisher", "weight = 1"),
            entry("auditor", "reader", ""),
        ]
        .concat();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.toml");
        std::fs::write(&path, text).unwrap();
        let table = TokenSources {
            auth_config: Some(path),
            tokens: Some("admin-token".to_owned()),
            ..TokenSources::default()
        }
        .load(SHARE)
        .unwrap();
        let cap = |token: &str| table.principal(token).unwrap().max_queued_targets;
        // Weights 1 + 3 + 1 + 1 and the admin's 1 (the reader submits
        // nothing): a seventh each, the heavy one three; its own cap kept.
        assert_eq!(cap("light"), Some(142));
        assert_eq!(cap("heavy"), Some(428));
        assert_eq!(cap("own"), Some(5000));
        assert_eq!(cap("admin-token"), Some(142));
        assert_eq!(cap("auditor"), None);
        // Never less than one job's most targets.
        let crowded = QueueShare {
            queued_targets: 300,
            at_least: 100,
        };
        let mut principals = [Principal::anonymous(), Principal::anonymous()];
        let mut refs: Vec<&mut Principal> = principals.iter_mut().collect();
        crowded.apply(&mut refs);
        assert_eq!(principals[0].max_queued_targets, Some(150));
        let mut many: Vec<Principal> = (0..10).map(|_| Principal::anonymous()).collect();
        let mut refs: Vec<&mut Principal> = many.iter_mut().collect();
        crowded.apply(&mut refs);
        assert_eq!(many[0].max_queued_targets, Some(100));
    }

    #[test]
    fn bad_files_are_refused_whole() {
        let publisher_without_repos = format!(
            "[[token]]\nname = \"x\"\nsha256 = \"{}\"\nrole = \"publisher\"\n",
            sha("t")
        );
        assert!(parse_auth_config(&publisher_without_repos).is_err());
        let short_digest = "[[token]]\nname = \"x\"\nsha256 = \"abc\"\nrole = \"admin\"\n";
        assert!(parse_auth_config(short_digest).is_err());
        let twice = format!(
            "[[token]]\nname = \"x\"\nsha256 = \"{0}\"\nrole = \"admin\"\n\
             [[token]]\nname = \"x\"\nsha256 = \"{0}\"\nrole = \"admin\"\n",
            sha("t")
        );
        assert!(parse_auth_config(&twice).is_err());
        let unknown_key = format!(
            "[[token]]\nname = \"x\"\nsha256 = \"{}\"\nrole = \"admin\"\ncolour = 1\n",
            sha("t")
        );
        assert!(parse_auth_config(&unknown_key).is_err());
    }

    #[test]
    fn a_route_token_matches_itself_only() {
        let token = RouteToken::new("scrape-secret");
        assert!(token.matches(&token_digest("scrape-secret")));
        assert!(!token.matches(&token_digest("scrape-secre")) && !token.matches(&token_digest("")));
        assert_eq!(format!("{token:?}"), "RouteToken(***)");
    }

    #[test]
    fn unscoped_tokens_are_admins_named_by_a_fingerprint() {
        let table = TokenTable::unscoped("# pipelines\nalpha\n\n beta ,gamma\n");
        assert_eq!(table.len(), 3);
        let alpha = table.principal("alpha").unwrap();
        assert_eq!(alpha.role, Role::Admin);
        assert_eq!(
            alpha.name,
            Some(format!("api-token:{}", &sha("alpha")[..8]))
        );
        assert!(table.principal("alph").is_none() && table.principal("# pipelines").is_none());
        assert!(TokenTable::unscoped("\n#only comments\n").is_empty());
    }

    #[test]
    fn a_reload_that_fails_keeps_the_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.toml");
        let entry = |name: &str, token: &str| {
            format!(
                "[[token]]\nname = \"{name}\"\nsha256 = \"{}\"\nrole = \"admin\"\n",
                sha(token)
            )
        };
        std::fs::write(&path, entry("one", "t1")).unwrap();
        let access = AccessControl::new(
            TokenSources {
                auth_config: Some(path.clone()),
                ..TokenSources::default()
            },
            SHARE,
        )
        .unwrap();
        assert!(access.current().principal("t1").is_some());
        std::fs::write(&path, entry("two", "t2")).unwrap();
        assert_eq!(access.reload().unwrap(), 1);
        assert!(access.current().principal("t1").is_none());
        assert!(access.current().principal("t2").is_some());
        std::fs::write(&path, "not toml [").unwrap();
        assert!(access.reload().is_err());
        assert!(access.current().principal("t2").is_some());
    }
}
