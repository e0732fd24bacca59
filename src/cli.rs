//! The command line: `serve` runs the service; the other commands are the
//! pipeline's client of a running one (see `client`).

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::client::Exit;
use crate::config::ServeArgs;

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

/// What every client command needs to talk to the service.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Base URL of the publishd service.
    #[arg(long, env = "PUBLISHD_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// API bearer token, when the service requires one.
    #[arg(long, env = "PUBLISHD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// text for people; json prints the API's own objects.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Give up after this many seconds (counted from the start) when the
    /// service cannot be reached or the job has not ended; the job goes on.
    #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
    pub wait_timeout: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The images repo, e.g. registry.example.com/acme/shop.
    #[arg(long, short = 'i', env = "WERF_IMAGES_REPO", value_name = "REPO")]
    pub images_repo: Option<String>,
    /// The images repo, old spelling of --images-repo; it waits, as it did.
    #[arg(long, value_name = "REPO")]
    pub repo: Option<String>,
    /// How images are named in the repo: multirepo (REPO/NAME:TAG) or
    /// monorepo (REPO:NAME-TAG).
    #[arg(
        long,
        alias = "repo-mode",
        env = "WERF_IMAGES_REPO_MODE",
        value_parser = repo_mode,
        default_value = "multirepo",
        value_name = "multirepo|monorepo"
    )]
    pub images_repo_mode: String,
    /// A built image as NAME=SOURCE (SOURCE alone for the nameless image):
    /// SOURCE is a local image reference or id on the service's engine.
    /// Repeatable.
    #[arg(long = "image", required = true, value_name = "NAME=SOURCE")]
    pub images: Vec<String>,
    /// A custom tag. Repeatable. Without it, every $WERF_TAG_CUSTOM*
    /// variable gives one (e.g. $WERF_TAG_CUSTOM_TAG1=tag1), as in werf.
    #[arg(long = "tag-custom", value_name = "TAG")]
    pub tag_custom: Vec<String>,
    /// Tag by git branch (werf's slug of it).
    #[arg(long, env = "WERF_TAG_GIT_BRANCH", value_name = "BRANCH")]
    pub tag_git_branch: Option<String>,
    /// Tag by git tag (werf's slug of it).
    #[arg(long, env = "WERF_TAG_GIT_TAG", value_name = "TAG")]
    pub tag_git_tag: Option<String>,
    /// Tag by git commit (7 to 64 hex digits).
    #[arg(long, env = "WERF_TAG_GIT_COMMIT", value_name = "COMMIT")]
    pub tag_git_commit: Option<String>,
    /// Tag by content: the source image's id.
    #[arg(long)]
    pub tag_content: bool,
    /// A tag as STRATEGY:VALUE (custom:v1, git-branch:main, git-tag:v1,
    /// git-commit:SHA) or `content`: the old spelling; it waits, as it did.
    /// Repeatable.
    #[arg(long = "tag", value_name = "STRATEGY:VALUE")]
    pub tags: Vec<String>,
    /// Push even when the registry already holds the tag for the same build.
    #[arg(long)]
    pub force: bool,
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

/// A repo mode; empty is the default, as in werf, where CI systems expand
/// an unset variable to "".
fn repo_mode(value: &str) -> Result<String, String> {
    match value {
        "" => Ok("multirepo".to_owned()),
        "multirepo" | "monorepo" => Ok(value.to_owned()),
        _ => Err("expected multirepo or monorepo".to_owned()),
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
    /// How many jobs (1 to 100).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub limit: u32,
    /// Continue after this job: the previous page's `next_cursor`.
    #[arg(long)]
    pub cursor: Option<String>,
}
