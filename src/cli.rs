//! The command line: `serve` runs the service; the other commands are the
//! pipeline's client of a running one (see `client`).

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::client::Exit;
use crate::config::{ServeArgs, parse_publish_via};
use crate::domain::publish_via::PublishVia;

#[derive(Debug, Parser)]
#[command(
    name = "publishd",
    version,
    about = "werf-style image publishing as a durable HTTP service"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service and its worker pool.
    Serve(Box<ServeArgs>),
    /// Submit a publish job to a running publishd, with werf's flags and
    /// environment variables. With --wait (or the old --repo/--tag
    /// spellings), follow it to its end: the one-command pipeline step.
    #[command(after_help = Exit::help())]
    Publish(Box<PublishArgs>),
    /// Show a job.
    #[command(after_help = Exit::help())]
    Status(JobArgs),
    /// List jobs, newest first.
    #[command(after_help = Exit::help())]
    List(ListArgs),
    /// Cancel a job: targets not started are cancelled, a push under way is
    /// interrupted.
    #[command(after_help = Exit::help())]
    Cancel(JobArgs),
    /// Follow a job until it ends, as `publish --wait` does.
    #[command(after_help = Exit::help())]
    Watch(WatchArgs),
    /// Print the OpenAPI document (what `openapi/openapi.json` must hold).
    Openapi,
}

/// The service a client command talks to when neither `--server` nor
/// `$PUBLISHD_SERVER` names one.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// How long a command that follows a job (`publish --wait`, `watch`) keeps
/// at it by default: a long push, a restart of the service.
pub const FOLLOW_WAIT_TIMEOUT: u64 = 3600;

/// How long the other commands (`status`, `list`, `cancel`, `publish`
/// without `--wait`) retry an unreachable service by default.
pub const ANSWER_WAIT_TIMEOUT: u64 = 30;

/// How long a command retries a service it has not reached once (a wrong
/// `--server`) before it gives up, by default.
pub const CONNECT_TIMEOUT: u64 = 60;

/// What every client command needs to talk to the service. An empty
/// `$PUBLISHD_*` variable is no value, as an empty `$WERF_*` one is.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Base URL of the publishd service [default: http://127.0.0.1:8080].
    #[arg(long, env = "PUBLISHD_SERVER")]
    pub server: Option<String>,
    /// API bearer token, when the service requires one.
    #[arg(long, env = "PUBLISHD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// text for people; json prints the API's own objects.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Give up after this many seconds (counted from the start) when the
    /// service cannot be reached or the job has not ended; the job goes on
    /// [default: 3600 for publish --wait and watch, 30 for the others].
    #[arg(long, value_name = "SECONDS")]
    pub wait_timeout: Option<u64>,
    /// Give up after this many seconds when the service has not answered
    /// once (a wrong --server, a service that is not there): once it has,
    /// --wait-timeout alone bounds the wait, through its restarts.
    #[arg(long, env = "PUBLISHD_CONNECT_TIMEOUT", value_name = "SECONDS", default_value_t = CONNECT_TIMEOUT)]
    pub connect_timeout: u64,
}

impl ClientArgs {
    /// The service's base URL, without a trailing `/`.
    pub fn server(&self) -> String {
        present(&self.server)
            .unwrap_or(DEFAULT_SERVER)
            .trim_end_matches('/')
            .to_owned()
    }

    /// The token, unless empty.
    pub fn token(&self) -> Option<&str> {
        present(&self.token)
    }

    /// `--wait-timeout`, or the default of a command that `follows` a job
    /// or of one that only wants an answer.
    pub fn wait_timeout(&self, follows: bool) -> u64 {
        self.wait_timeout.unwrap_or(if follows {
            FOLLOW_WAIT_TIMEOUT
        } else {
            ANSWER_WAIT_TIMEOUT
        })
    }
}

/// An empty value is no value: CI systems expand an unset variable to "".
pub fn present(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|value| !value.is_empty())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// `publishd publish`. werf's variables ($WERF_IMAGES_REPO, ...) are read
/// by `client::spec`, not by clap: the old `--repo`/`--tag` spellings ignore
/// them, and an empty one is no value.
#[derive(Debug, Args)]
pub struct PublishArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The images repo, e.g. registry.example.com/acme/shop
    /// [env: WERF_IMAGES_REPO].
    #[arg(long, short = 'i', value_name = "REPO")]
    pub images_repo: Option<String>,
    /// The images repo, old spelling of --images-repo; it waits, as it did,
    /// and ignores the WERF_* variables.
    #[arg(long, value_name = "REPO")]
    pub repo: Option<String>,
    /// How images are named in the repo: multirepo (REPO/NAME:TAG),
    /// monorepo (REPO:NAME-TAG), or auto (werf v1.1's rule: monorepo for a
    /// repository on Docker Hub, quay.io or docker.pkg.github.com, which do
    /// not nest repositories; multirepo elsewhere)
    /// [env: WERF_IMAGES_REPO_MODE] [default: auto].
    #[arg(
        long,
        alias = "repo-mode",
        value_parser = repo_mode,
        value_name = "multirepo|monorepo|auto"
    )]
    pub images_repo_mode: Option<String>,
    /// A built image as NAME=SOURCE (SOURCE alone for the nameless image):
    /// SOURCE is a local image reference or id on the service's engine.
    /// Repeatable.
    #[arg(long = "image", required = true, value_name = "NAME=SOURCE")]
    pub images: Vec<String>,
    /// A custom tag. Repeatable. Every $WERF_TAG_CUSTOM_* variable (e.g.
    /// $WERF_TAG_CUSTOM_TAG1=tag1) and $WERF_TAG_CUSTOM give one more, as
    /// in werf v1.1.
    #[arg(long = "tag-custom", value_name = "TAG")]
    pub tag_custom: Vec<String>,
    /// Tag by git branch (werf's slug of it) [env: WERF_TAG_GIT_BRANCH].
    #[arg(long, value_name = "BRANCH")]
    pub tag_git_branch: Option<String>,
    /// Tag by git tag (werf's slug of it) [env: WERF_TAG_GIT_TAG].
    #[arg(long, value_name = "TAG")]
    pub tag_git_tag: Option<String>,
    /// Tag by git commit (7 to 64 hex digits) [env: WERF_TAG_GIT_COMMIT].
    #[arg(long, value_name = "COMMIT")]
    pub tag_git_commit: Option<String>,
    /// Tag by content: the source image's id. werf v1.1's
    /// --tag-by-stages-signature is the same [env:
    /// WERF_TAG_BY_STAGES_SIGNATURE=true].
    #[arg(long, alias = "tag-by-stages-signature")]
    pub tag_content: bool,
    /// A tag as STRATEGY:VALUE (custom:v1, git-branch:main, git-tag:v1,
    /// git-commit:SHA) or `content`: the old spelling; it waits, as it did,
    /// and ignores the WERF_* variables. Repeatable.
    #[arg(long = "tag", value_name = "STRATEGY:VALUE")]
    pub tags: Vec<String>,
    /// Push even when the registry already holds the tag for the same build.
    #[arg(long)]
    pub force: bool,
    /// Of a source that is an image index, publish only this platform's
    /// image (os/arch or os/arch/variant, e.g. linux/arm64) and its
    /// attestations. Repeatable; every one must be in every source.
    #[arg(long = "platform", value_name = "OS/ARCH[/VARIANT]")]
    pub platforms: Vec<String>,
    /// Write werf v1.1's publish report of the job here when it succeeds:
    /// for each image its last published tag, with DockerRepo, DockerTag
    /// and DockerImageID (and DockerImageDigest). Implies --wait
    /// [env: WERF_PUBLISH_REPORT_PATH].
    #[arg(long, value_name = "FILE")]
    pub publish_report_path: Option<std::path::PathBuf>,
    /// The report's format: json, the only one werf v1.1 has.
    #[arg(long, value_name = "json", default_value = "json", value_parser = ["json"])]
    pub publish_report_format: String,
    /// `engine`: every target through the engine; `auto`: registry-side
    /// where it gives the same image (default: the service's choice).
    #[arg(long, value_name = "auto|engine", value_parser = parse_publish_via)]
    pub publish_via: Option<PublishVia>,
    /// The engine the local sources are on, by the name its publishd
    /// instances give it: needed when the service drives several engines
    /// (`GET /api/v1/engines`), e.g. the runner's own.
    #[arg(long, env = "PUBLISHD_ENGINE", value_name = "NAME")]
    pub engine: Option<String>,
    /// Username for the repo's registry, for this job only (else the
    /// service's docker config is used).
    #[arg(long, env = "PUBLISHD_REGISTRY_USERNAME", value_name = "USER")]
    pub registry_username: Option<String>,
    /// Password or token for the repo's registry, for this job only: held
    /// by the service in memory, never stored, answered or printed.
    #[arg(
        long,
        env = "PUBLISHD_REGISTRY_PASSWORD",
        hide_env_values = true,
        value_parser = Secret::parse,
        value_name = "PASSWORD"
    )]
    pub registry_password: Option<Secret>,
    /// Called with the job's JSON when it ends (POST, signed).
    #[arg(long, env = "PUBLISHD_CALLBACK_URL", value_name = "URL")]
    pub callback_url: Option<String>,
    /// Makes a retried pipeline step return the same job instead of a new
    /// one (generated and printed when not given).
    #[arg(long, env = "PUBLISHD_IDEMPOTENCY_KEY", value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// Follow the job to its end: a line per step, live progress on a
    /// terminal, each reference with its digest; the exit code says how it
    /// ended. Without it, print the job id (json: the job) and exit 0.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub interrupt: InterruptArgs,
}

/// A value that must never be printed: its Debug is `***`.
#[derive(Clone)]
pub struct Secret(pub String);

impl Secret {
    fn parse(value: &str) -> Result<Secret, String> {
        Ok(Secret(value.to_owned()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// A repo mode; empty is no value (the default), as in werf, where CI
/// systems expand an unset variable to "".
pub fn repo_mode(value: &str) -> Result<String, String> {
    match value {
        "multirepo" | "monorepo" | "auto" | "" => Ok(value.to_owned()),
        _ => Err("expected multirepo, monorepo or auto".to_owned()),
    }
}

#[derive(Debug, Clone, Copy, Args)]
pub struct InterruptArgs {
    /// On Ctrl-C (or SIGTERM) while following, cancel the job and follow it
    /// to its end; without it, detach and leave the job running.
    #[arg(long)]
    pub cancel_on_interrupt: bool,
}

#[derive(Debug, Args)]
pub struct JobArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The job id.
    pub id: String,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The job id.
    pub id: String,
    #[command(flatten)]
    pub interrupt: InterruptArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only jobs in this status.
    #[arg(long, value_parser = ["queued", "running", "succeeded", "failed", "cancelled"])]
    pub status: Option<String>,
    /// Only jobs with at least one failed target (finished or not).
    #[arg(long)]
    pub has_failed_target: bool,
    /// Only jobs of this submitter (a token's name).
    #[arg(long)]
    pub submitted_by: Option<String>,
    /// Only jobs whose repository starts with this text.
    #[arg(long)]
    pub repo_prefix: Option<String>,
    /// Only jobs whose repository or one of whose references contains this
    /// text, ignoring case (a page looks through at most 10,000 jobs).
    #[arg(long)]
    pub search: Option<String>,
    /// How many jobs (1 to 100).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub limit: u32,
    /// Continue after this job: the previous page's `next_cursor`.
    #[arg(long)]
    pub cursor: Option<String>,
}
