//! The job spec `publishd publish` submits, from werf's flags and
//! environment variables (and the old `--repo`/`--tag` spellings).

use std::ffi::OsString;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::cli::PublishArgs;

/// werf reads every variable whose name starts with this as one custom tag
/// (`WERF_TAG_CUSTOM`, `WERF_TAG_CUSTOM_TAG1`, ...), unless `--tag-custom`
/// is given.
const TAG_CUSTOM_PREFIX: &str = "WERF_TAG_CUSTOM";

/// The custom tags werf takes from the environment, ordered by variable name
/// (werf takes the environment's order, which is no order at all). Empty
/// values are skipped: a pipeline that sets `WERF_TAG_CUSTOM_X: $MAYBE`
/// means no tag when `$MAYBE` is empty.
pub fn custom_tags_from_env(vars: impl IntoIterator<Item = (OsString, OsString)>) -> Vec<String> {
    let mut tags: Vec<(String, String)> = vars
        .into_iter()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
        .filter(|(name, value)| name.starts_with(TAG_CUSTOM_PREFIX) && !value.is_empty())
        .collect();
    tags.sort();
    tags.into_iter().map(|(_, value)| value).collect()
}

/// Whether the step follows the job to its end: asked with `--wait`, or
/// invoked with the old spellings, which always waited.
pub fn waits(args: &PublishArgs) -> bool {
    args.wait || args.repo.is_some() || !args.tags.is_empty()
}

/// The job spec the flags describe; `env_custom_tags` are the custom tags of
/// the environment, used when no `--tag-custom` is given (werf's rule).
pub fn job_spec(args: &PublishArgs, env_custom_tags: &[String]) -> anyhow::Result<Value> {
    let repo = present(&args.repo)
        .or(present(&args.images_repo))
        .context("no images repo: give --images-repo or set WERF_IMAGES_REPO")?;
    let images = args
        .images
        .iter()
        .map(|image| image_spec(image))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let custom = if args.tag_custom.is_empty() {
        env_custom_tags
    } else {
        &args.tag_custom
    };
    let mut tags: Vec<Value> = custom
        .iter()
        .filter(|tag| !tag.is_empty())
        .map(|tag| json!({"strategy": "custom", "value": tag}))
        .collect();
    for (strategy, value) in [
        ("git-branch", &args.tag_git_branch),
        ("git-tag", &args.tag_git_tag),
        ("git-commit", &args.tag_git_commit),
    ] {
        if let Some(value) = present(value) {
            tags.push(json!({"strategy": strategy, "value": value}));
        }
    }
    if args.tag_content {
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
        "repo_mode": args.images_repo_mode,
        "images": images,
        "tags": tags,
    });
    if args.force {
        spec["force"] = json!(true);
    }
    if let Some(url) = present(&args.callback_url) {
        spec["callback_url"] = json!(url);
    }
    Ok(spec)
}

/// An empty value is no value, as in werf: CI systems expand an unset
/// variable (`$CI_COMMIT_TAG` on a branch pipeline) to "".
fn present(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|value| !value.is_empty())
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
            "--callback-url=https://ci.example.com/hook",
        ]);
        assert_eq!(
            job_spec(&args, &["from-env".to_owned()]).unwrap(),
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
                "callback_url": "https://ci.example.com/hook",
            })
        );
        assert!(!waits(&args));
    }

    #[test]
    fn the_old_spellings_still_work_and_wait() {
        let args = parse(&[
            "--repo=reg/acme",
            "--repo-mode=monorepo",
            "--image=api=acme/api:b1",
            "--tag=git-branch:feature/x:y",
            "--tag=content",
        ]);
        assert_eq!(
            job_spec(&args, &[]).unwrap(),
            json!({
                "repo": "reg/acme", "repo_mode": "monorepo",
                "images": [{"name": "api", "source": "acme/api:b1"}],
                "tags": [{"strategy": "git-branch", "value": "feature/x:y"}, {"strategy": "content"}]
            })
        );
        assert!(waits(&args));
        let bad = parse(&["--repo=r", "--image=a", "--tag=custom"]);
        assert!(job_spec(&bad, &[]).is_err());
    }

    #[test]
    fn environment_custom_tags_apply_only_without_the_flag() {
        let env = custom_tags_from_env([
            ("WERF_TAG_CUSTOM_B".into(), "b".into()),
            ("WERF_TAG_CUSTOM".into(), "plain".into()),
            ("WERF_TAG_CUSTOM_A".into(), "a".into()),
            ("WERF_TAG_CUSTOM_EMPTY".into(), "".into()),
            ("WERF_TAG_GIT_BRANCH".into(), "main".into()),
            ("OTHER".into(), "x".into()),
        ]);
        assert_eq!(env, ["plain", "a", "b"]);

        let args = parse(&["-i", "reg/acme", "--image=a=s"]);
        let tags = &job_spec(&args, &env).unwrap()["tags"];
        assert_eq!(tags.as_array().unwrap().len(), 3, "{tags}");
        let args = parse(&["-i", "reg/acme", "--image=a=s", "--tag-custom=flag"]);
        let tags = &job_spec(&args, &env).unwrap()["tags"];
        assert_eq!(tags, &json!([{"strategy": "custom", "value": "flag"}]));
    }

    #[test]
    fn empty_values_are_no_values_and_something_must_be_asked_for() {
        let args = parse(&[
            "-i",
            "reg/acme",
            "--image=a=s",
            "--tag-git-tag=",
            "--tag-git-branch=main",
        ]);
        assert_eq!(
            job_spec(&args, &[]).unwrap()["tags"],
            json!([{"strategy": "git-branch", "value": "main"}])
        );

        let no_tags = parse(&["-i", "reg/acme", "--image=a=s", "--tag-git-tag="]);
        let error = job_spec(&no_tags, &[]).unwrap_err().to_string();
        assert!(error.starts_with("no tags"), "{error}");
        let no_repo = parse(&["--image=a=s", "--tag-content"]);
        assert!(job_spec(&no_repo, &[]).is_err());
        for image in ["=s", "a=", ""] {
            let args = parse(&["-i", "r", "--tag-content", "--image", image]);
            assert!(job_spec(&args, &[]).is_err(), "{image:?}");
        }
    }
}
