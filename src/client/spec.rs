//! The job spec `publishd publish` submits, from werf's flags and
//! environment variables (and the old `--repo`/`--tag` spellings).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};

use crate::cli::{PublishArgs, present, repo_mode};

/// The variable werf v1.0 and early v1.1 read as one custom tag; later
/// v1.1 reads only `WERF_TAG_CUSTOM_*`. Both are read here.
const TAG_CUSTOM: &str = "WERF_TAG_CUSTOM";
/// Every variable whose name starts with this is one custom tag
/// (`WERF_TAG_CUSTOM_TAG1=tag1`, ...), as in werf v1.1.
const TAG_CUSTOM_PREFIX: &str = "WERF_TAG_CUSTOM_";

/// werf's variables, as `publish` reads them (not through clap, so that the
/// old spellings can ignore them). An empty variable is no value, as in
/// werf: CI systems expand an unset variable (`$CI_COMMIT_TAG` on a branch
/// pipeline) to "".
#[derive(Debug, Default)]
pub struct WerfEnv {
    vars: BTreeMap<String, String>,
}

impl WerfEnv {
    /// The `WERF_*` variables among `vars` (the process's environment).
    pub fn from_vars(vars: impl IntoIterator<Item = (OsString, OsString)>) -> WerfEnv {
        WerfEnv {
            vars: vars
                .into_iter()
                .filter_map(|(name, value)| {
                    Some((name.into_string().ok()?, value.into_string().ok()?))
                })
                .filter(|(name, value)| name.starts_with("WERF_") && !value.is_empty())
                .collect(),
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// The custom tags of the environment, ordered by variable name (as
    /// later werf v1.1 does; earlier ones took the environment's order,
    /// which is no order at all).
    fn custom_tags(&self) -> impl Iterator<Item = &str> {
        self.vars
            .iter()
            .filter(|(name, _)| *name == TAG_CUSTOM || name.starts_with(TAG_CUSTOM_PREFIX))
            .map(|(_, value)| value.as_str())
    }

    /// werf's boolean variables: "1", "true" or "yes" is true, anything
    /// else false (werf's `GetBoolEnvironmentDefaultFalse`).
    fn flag(&self, name: &str) -> bool {
        matches!(self.get(name), Some("1" | "true" | "yes"))
    }
}

/// Whether the old spellings (`--repo`, `--tag`) are used: they wait, as
/// they always did, and ignore the `WERF_*` variables, which they never
/// read (a pipeline that sets `WERF_TAG_GIT_BRANCH` for another step must
/// not get extra tags).
pub fn old_spellings(args: &PublishArgs) -> bool {
    args.repo.is_some() || !args.tags.is_empty()
}

/// Whether the step follows the job to its end: asked with `--wait`, or
/// invoked with the old spellings, which always waited, or asked for a
/// publish report, which is made of the job's end.
pub fn waits(args: &PublishArgs, env: &WerfEnv) -> bool {
    args.wait || old_spellings(args) || report_path(args, env).is_some()
}

/// Where werf's publish report goes: `--publish-report-path`, else
/// `$WERF_PUBLISH_REPORT_PATH` (which the old spellings ignore).
pub fn report_path(args: &PublishArgs, env: &WerfEnv) -> Option<PathBuf> {
    match &args.publish_report_path {
        Some(path) if !path.as_os_str().is_empty() => Some(path.clone()),
        _ if old_spellings(args) => None,
        _ => env.get("WERF_PUBLISH_REPORT_PATH").map(PathBuf::from),
    }
}

/// werf v1.1's `auto` images repo mode for `repo` (its
/// `ResolveRepoMode` per registry implementation, the implementation found
/// from the registry's host): the registries that do not nest repositories
/// are monorepo when the address names a repository there, multirepo when
/// it names only an account:
///
/// - Docker Hub (no host, `docker.io`, `index.docker.io`,
///   `registry.hub.docker.com`): `acme/shop` is monorepo, `acme` (and
///   `library/x`) multirepo;
/// - GitHub Packages' old registry (`docker.pkg.github.com`):
///   `OWNER/PROJECT/PACKAGE` is monorepo, `OWNER/PROJECT` multirepo;
/// - quay.io: `NAMESPACE/REPO` is monorepo, `NAMESPACE` multirepo;
/// - every other registry (ghcr.io, GitLab, Harbor, ECR, GCR, a private
///   registry) is multirepo.
pub fn auto_repo_mode(repo: &str) -> &'static str {
    let repo = repo.trim_end_matches('/');
    // docker's rule: the first part is a host if it has a '.' or a ':' or
    // is localhost; otherwise the repository is on Docker Hub.
    let (host, path) = match repo.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first, rest)
        }
        _ => ("index.docker.io", repo),
    };
    let parts: Vec<&str> = path.split('/').collect();
    // werf matches the hosts as patterns at the start (`^quay\.io`).
    let docker_hub = host == "docker.io"
        || host.starts_with("index.docker.io")
        || host.starts_with("registry.hub.docker.com");
    let monorepo = if docker_hub {
        parts.len() == 2 && parts[0] != "library"
    } else if host.starts_with("docker.pkg.github.com") {
        parts.len() == 3
    } else if host.starts_with("quay.io") {
        parts.len() == 2
    } else {
        false
    };
    if monorepo { "monorepo" } else { "multirepo" }
}

/// The job spec the flags and `env` describe.
pub fn job_spec(args: &PublishArgs, env: &WerfEnv) -> anyhow::Result<Value> {
    let old = old_spellings(args);
    let no_env = WerfEnv::default();
    let env = if old { &no_env } else { env };
    // A flag wins over its variable; an empty one is no value.
    let value = |flag: &Option<String>, name: &str| -> Option<String> {
        present(flag).or_else(|| env.get(name)).map(str::to_owned)
    };

    let repo = present(&args.repo)
        .map(str::to_owned)
        .or_else(|| value(&args.images_repo, "WERF_IMAGES_REPO"))
        .context("no images repo: give --images-repo or set WERF_IMAGES_REPO")?;
    let mode = match value(&args.images_repo_mode, "WERF_IMAGES_REPO_MODE") {
        Some(mode) => {
            repo_mode(&mode).map_err(|error| anyhow!("images repo mode {mode:?}: {error}"))?
        }
        // The old spellings named multirepo when no mode was given.
        None if old => "multirepo".to_owned(),
        None => "auto".to_owned(),
    };
    let mode = if mode == "auto" {
        auto_repo_mode(&repo).to_owned()
    } else {
        mode
    };
    let images = args
        .images
        .iter()
        .map(|image| image_spec(image))
        .collect::<anyhow::Result<Vec<_>>>()?;

    // werf v1.1: the variables' custom tags, then the flags'.
    let mut custom: Vec<&str> = Vec::new();
    for tag in env
        .custom_tags()
        .chain(args.tag_custom.iter().map(String::as_str))
    {
        if !tag.is_empty() && !custom.contains(&tag) {
            custom.push(tag);
        }
    }
    let mut tags: Vec<Value> = custom
        .iter()
        .map(|tag| json!({"strategy": "custom", "value": tag}))
        .collect();
    for (strategy, flag, name) in [
        ("git-branch", &args.tag_git_branch, "WERF_TAG_GIT_BRANCH"),
        ("git-tag", &args.tag_git_tag, "WERF_TAG_GIT_TAG"),
        ("git-commit", &args.tag_git_commit, "WERF_TAG_GIT_COMMIT"),
    ] {
        if let Some(value) = value(flag, name) {
            tags.push(json!({"strategy": strategy, "value": value}));
        }
    }
    if args.tag_content || env.flag("WERF_TAG_BY_STAGES_SIGNATURE") {
        tags.push(json!({"strategy": "content"}));
    }
    for tag in &args.tags {
        tags.push(strategy_tag(tag)?);
    }
    if tags.is_empty() {
        bail!(
            "no tags: give --tag-custom, --tag-git-branch, --tag-git-tag, --tag-git-commit or \
             --tag-content (or their WERF_TAG_* variables)"
        );
    }

    let mut spec = json!({
        "repo": repo,
        "repo_mode": mode,
        "images": images,
        "tags": tags,
    });
    if args.force {
        spec["force"] = json!(true);
    }
    if let Some(via) = args.publish_via {
        spec["publish_via"] = json!(via.as_str());
    }
    if let Some(engine) = present(&args.engine) {
        spec["engine"] = json!(engine);
    }
    if let Some(auth) = registry_auth(args)? {
        spec["registry_auth"] = auth;
    }
    if let Some(url) = present(&args.callback_url) {
        spec["callback_url"] = json!(url);
    }
    if !args.platforms.is_empty() {
        spec["platforms"] = json!(args.platforms);
    }
    Ok(spec)
}

/// `registry_auth` of the job spec: a username and a password, both or
/// neither (empty ones are none).
fn registry_auth(args: &PublishArgs) -> anyhow::Result<Option<Value>> {
    let password = args
        .registry_password
        .as_ref()
        .map(|secret| secret.0.as_str())
        .filter(|password| !password.is_empty());
    match (present(&args.registry_username), password) {
        (Some(username), Some(password)) => {
            Ok(Some(json!({"username": username, "password": password})))
        }
        (None, None) => Ok(None),
        (Some(_), None) => {
            bail!("--registry-username needs --registry-password (or PUBLISHD_REGISTRY_PASSWORD)")
        }
        (None, Some(_)) => {
            bail!("--registry-password needs --registry-username (or PUBLISHD_REGISTRY_USERNAME)")
        }
    }
}

/// `NAME=SOURCE`, or `SOURCE` alone for the nameless image.
fn image_spec(flag: &str) -> anyhow::Result<Value> {
    match flag.split_once('=') {
        Some((name, source)) if !name.is_empty() && !source.is_empty() => {
            Ok(json!({"name": name, "source": source}))
        }
        Some(_) => bail!("--image {flag:?}: expected NAME=SOURCE or SOURCE"),
        None if flag.is_empty() => bail!("--image is empty: expected NAME=SOURCE or SOURCE"),
        None => Ok(json!({"name": null, "source": flag})),
    }
}

/// The old `--tag STRATEGY:VALUE` (or `content`).
fn strategy_tag(flag: &str) -> anyhow::Result<Value> {
    match flag.split_once(':') {
        Some((strategy, value)) => Ok(json!({"strategy": strategy, "value": value})),
        None if flag == "content" => Ok(json!({"strategy": "content"})),
        None => bail!("--tag {flag:?}: expected STRATEGY:VALUE or content"),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> PublishArgs {
        let cli = Cli::try_parse_from(["publishd", "publish"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Publish(args) => *args,
            other => panic!("{other:?}"),
        }
    }

    fn env(vars: &[(&str, &str)]) -> WerfEnv {
        WerfEnv::from_vars(
            vars.iter()
                .map(|(name, value)| ((*name).into(), (*value).into())),
        )
    }

    #[test]
    fn werf_flags_become_a_job_spec() {
        let args = parse(&[
            "--images-repo=reg/acme",
            "--images-repo-mode=monorepo",
            "--image=api=acme/api:b1",
            "--image=sha256:abc",
            "--tag-custom=v1",
            "--tag-custom=latest",
            "--tag-git-branch=feature/x",
            "--tag-git-tag=v1.0",
            "--tag-git-commit=0123abc",
            "--tag-content",
            "--force",
            "--publish-via=engine",
            "--callback-url=https://ci.example.com/hook",
            "--engine=runner-7",
        ]);
        assert_eq!(
            job_spec(&args, &env(&[("WERF_TAG_GIT_BRANCH", "not-this")])).unwrap(),
            json!({
                "repo": "reg/acme", "repo_mode": "monorepo",
                "images": [{"name": "api", "source": "acme/api:b1"}, {"name": null, "source": "sha256:abc"}],
                "tags": [
                    {"strategy": "custom", "value": "v1"},
                    {"strategy": "custom", "value": "latest"},
                    {"strategy": "git-branch", "value": "feature/x"},
                    {"strategy": "git-tag", "value": "v1.0"},
                    {"strategy": "git-commit", "value": "0123abc"},
                    {"strategy": "content"},
                ],
                "force": true,
                "publish_via": "engine",
                "callback_url": "https://ci.example.com/hook",
                "engine": "runner-7",
            })
        );
        assert!(!waits(&args, &WerfEnv::default()));
    }

    #[test]
    fn a_publish_report_makes_the_step_wait_and_platforms_go_to_the_job() {
        let args = parse(&[
            "-i=reg/acme",
            "--image=a",
            "--tag-custom=v1",
            "--platform=linux/amd64",
            "--platform=linux/arm/v7",
        ]);
        let none = WerfEnv::default();
        assert_eq!(
            job_spec(&args, &none).unwrap()["platforms"],
            json!(["linux/amd64", "linux/arm/v7"])
        );
        assert!(!waits(&args, &none));
        let vars = env(&[("WERF_PUBLISH_REPORT_PATH", "/tmp/werf.json")]);
        assert_eq!(
            report_path(&args, &vars),
            Some(PathBuf::from("/tmp/werf.json"))
        );
        assert!(waits(&args, &vars));
        let flagged = parse(&[
            "-i=reg/acme",
            "--image=a",
            "--tag-custom=v1",
            "--publish-report-path=/tmp/flag.json",
        ]);
        assert_eq!(
            report_path(&flagged, &vars),
            Some(PathBuf::from("/tmp/flag.json"))
        );
        let old = parse(&["--repo=reg/acme", "--image=a", "--tag=custom:v1"]);
        assert_eq!(report_path(&old, &vars), None);
        let bad = Cli::try_parse_from([
            "publishd",
            "publish",
            "-i=r",
            "--image=a",
            "--tag-custom=v1",
            "--publish-report-format=yaml",
        ]);
        assert!(bad.is_err());
    }

    #[test]
    fn werf_variables_apply_when_their_flags_are_not_given() {
        let vars = env(&[
            ("WERF_IMAGES_REPO", "reg/acme"),
            ("WERF_IMAGES_REPO_MODE", "monorepo"),
            ("WERF_TAG_GIT_BRANCH", "main"),
            ("WERF_TAG_GIT_TAG", ""),
            ("WERF_TAG_GIT_COMMIT", "0123abc"),
            ("WERF_TAG_BY_STAGES_SIGNATURE", "true"),
        ]);
        let spec = job_spec(&parse(&["--image=a=s"]), &vars).unwrap();
        assert_eq!(spec["repo"], "reg/acme");
        assert_eq!(spec["repo_mode"], "monorepo");
        assert_eq!(
            spec["tags"],
            json!([
                {"strategy": "git-branch", "value": "main"},
                {"strategy": "git-commit", "value": "0123abc"},
                {"strategy": "content"},
            ])
        );
        let flags = parse(&["--image=a=s", "-i", "other/repo", "--tag-git-branch=dev"]);
        let spec = job_spec(&flags, &vars).unwrap();
        assert_eq!(spec["repo"], "other/repo");
        assert_eq!(
            spec["tags"][0],
            json!({"strategy": "git-branch", "value": "dev"})
        );

        // werf's booleans: 1, true, yes.
        for (value, content) in [("1", true), ("yes", true), ("false", false), ("0", false)] {
            let vars = env(&[
                ("WERF_TAG_BY_STAGES_SIGNATURE", value),
                ("WERF_TAG_CUSTOM_A", "a"),
            ]);
            let tags = &job_spec(&parse(&["-i", "r", "--image=a=s"]), &vars).unwrap()["tags"];
            assert_eq!(
                tags.as_array().unwrap().len() == 2,
                content,
                "{value}: {tags}"
            );
        }
        let args = parse(&["-i", "r", "--image=a=s", "--tag-by-stages-signature"]);
        assert_eq!(
            job_spec(&args, &env(&[])).unwrap()["tags"],
            json!([{"strategy": "content"}])
        );
        let bad = env(&[("WERF_IMAGES_REPO_MODE", "flat")]);
        assert!(job_spec(&parse(&["-i", "r", "--image=a=s", "--tag-content"]), &bad).is_err());
    }

    #[test]
    fn the_old_spellings_still_work_wait_and_ignore_werf_variables() {
        let args = parse(&[
            "--repo=reg/acme",
            "--repo-mode=monorepo",
            "--image=api=acme/api:b1",
            "--tag=git-branch:feature/x:y",
            "--tag=content",
        ]);
        let vars = env(&[
            ("WERF_TAG_GIT_BRANCH", "main"),
            ("WERF_TAG_CUSTOM_A", "a"),
            ("WERF_IMAGES_REPO_MODE", "multirepo"),
            ("WERF_TAG_BY_STAGES_SIGNATURE", "1"),
        ]);
        assert_eq!(
            job_spec(&args, &vars).unwrap(),
            json!({
                "repo": "reg/acme", "repo_mode": "monorepo",
                "images": [{"name": "api", "source": "acme/api:b1"}],
                "tags": [{"strategy": "git-branch", "value": "feature/x:y"}, {"strategy": "content"}]
            })
        );
        assert!(waits(&args, &WerfEnv::default()));
        // Without a mode they named multirepo, even where auto would not.
        let hub = parse(&["--repo=acme/shop", "--image=a", "--tag=custom:v1"]);
        let vars = env(&[("WERF_IMAGES_REPO_MODE", "monorepo")]);
        assert_eq!(job_spec(&hub, &vars).unwrap()["repo_mode"], "multirepo");
        let bad = parse(&["--repo=r", "--image=a", "--tag=custom"]);
        assert!(job_spec(&bad, &env(&[])).is_err());
    }

    #[test]
    fn environment_custom_tags_come_before_the_flags_ones() {
        let vars = env(&[
            ("WERF_TAG_CUSTOM_B", "b"),
            ("WERF_TAG_CUSTOM", "plain"),
            ("WERF_TAG_CUSTOM_A", "a"),
            ("WERF_TAG_CUSTOM_EMPTY", ""),
            ("WERF_TAG_CUSTOMARY", "not-a-tag"),
            ("WERF_TAG_GIT_BRANCH", "main"),
            ("OTHER", "x"),
        ]);
        let custom = |args: &[&str]| -> Vec<String> {
            let tags = job_spec(&parse(args), &vars).unwrap()["tags"].clone();
            tags.as_array()
                .unwrap()
                .iter()
                .filter(|tag| tag["strategy"] == "custom")
                .map(|tag| tag["value"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(
            custom(&["-i", "reg/acme", "--image=a=s"]),
            ["plain", "a", "b"]
        );
        assert_eq!(
            custom(&[
                "-i",
                "reg/acme",
                "--image=a=s",
                "--tag-custom=flag",
                "--tag-custom=a"
            ]),
            ["plain", "a", "b", "flag"]
        );
    }

    #[test]
    fn auto_is_monorepo_where_repositories_do_not_nest() {
        for (repo, mode) in [
            ("acme", "multirepo"),
            ("acme/shop", "monorepo"),
            ("library/shop", "multirepo"),
            ("docker.io/acme/shop", "monorepo"),
            ("index.docker.io/acme", "multirepo"),
            ("registry.hub.docker.com/acme/shop/", "monorepo"),
            ("docker.pkg.github.com/acme/shop", "multirepo"),
            ("docker.pkg.github.com/acme/shop/backend", "monorepo"),
            ("quay.io/acme", "multirepo"),
            ("quay.io/acme/shop", "monorepo"),
            ("ghcr.io/acme/shop", "multirepo"),
            ("registry.gitlab.com/acme/shop", "multirepo"),
            ("127.0.0.1:5000/acme/shop", "multirepo"),
            ("localhost/acme", "multirepo"),
        ] {
            assert_eq!(auto_repo_mode(repo), mode, "{repo}");
        }
        let spec = |args: &[&str]| job_spec(&parse(args), &env(&[])).unwrap()["repo_mode"].clone();
        assert_eq!(
            spec(&["-i", "acme/shop", "--image=a", "--tag-content"]),
            "monorepo"
        );
        assert_eq!(
            spec(&["-i", "reg.example.com/acme", "--image=a", "--tag-content"]),
            "multirepo"
        );
        assert_eq!(
            spec(&[
                "-i",
                "acme/shop",
                "--images-repo-mode=auto",
                "--image=a",
                "--tag-content"
            ]),
            "monorepo"
        );
        assert_eq!(
            spec(&[
                "-i",
                "acme/shop",
                "--images-repo-mode=",
                "--image=a",
                "--tag-content"
            ]),
            "monorepo"
        );
    }

    #[test]
    fn registry_credentials_go_together_and_are_never_shown() {
        let args = parse(&[
            "-i",
            "r",
            "--image=a",
            "--tag-content",
            "--registry-username=ci",
            "--registry-password=s3cret",
        ]);
        assert_eq!(
            job_spec(&args, &env(&[])).unwrap()["registry_auth"],
            json!({"username": "ci", "password": "s3cret"})
        );
        assert!(!format!("{args:?}").contains("s3cret"));
        let half = parse(&[
            "-i",
            "r",
            "--image=a",
            "--tag-content",
            "--registry-username=ci",
        ]);
        assert!(job_spec(&half, &env(&[])).is_err());
        let empty = parse(&[
            "-i",
            "r",
            "--image=a",
            "--tag-content",
            "--registry-username=",
            "--registry-password=",
        ]);
        assert!(
            job_spec(&empty, &env(&[]))
                .unwrap()
                .get("registry_auth")
                .is_none()
        );
    }

    #[test]
    fn empty_values_are_no_values_and_something_must_be_asked_for() {
        let args = parse(&[
            "-i",
            "reg/acme",
            "--image=a=s",
            "--tag-git-tag=",
            "--tag-git-branch=main",
            "--callback-url=",
        ]);
        let spec = job_spec(&args, &env(&[("WERF_TAG_GIT_TAG", "")])).unwrap();
        assert_eq!(
            spec["tags"],
            json!([{"strategy": "git-branch", "value": "main"}])
        );
        assert!(spec.get("callback_url").is_none());

        let no_tags = parse(&["-i", "reg/acme", "--image=a=s", "--tag-git-tag="]);
        let error = job_spec(&no_tags, &env(&[])).unwrap_err().to_string();
        assert!(error.starts_with("no tags"), "{error}");
        let no_repo = parse(&["--image=a=s", "--tag-content"]);
        assert!(job_spec(&no_repo, &env(&[("WERF_IMAGES_REPO", "")])).is_err());
        for image in ["=s", "a=", ""] {
            let args = parse(&["-i", "r", "--tag-content", "--image", image]);
            assert!(job_spec(&args, &env(&[])).is_err(), "{image:?}");
        }
    }
}
