//! The command line: `serve` runs the service; the other commands are the
//! pipeline's client of a running one (see `client`).

use clap::{Args, Parser, Subcommand};

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
    /// Submit a publish job to a running publishd, wait for it and report:
    /// the one-command pipeline step. Exits 0 only if every target succeeded.
    Publish(PublishArgs),
    /// Print the OpenAPI document (what `openapi/openapi.json` must hold).
    Openapi,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Base URL of the publishd service.
    #[arg(long, env = "PUBLISHD_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// The images repo, e.g. registry.example.com/acme/shop.
    #[arg(long)]
    pub repo: String,
    /// multirepo or monorepo.
    #[arg(long, default_value = "multirepo")]
    pub repo_mode: String,
    /// An image as NAME=SOURCE, or SOURCE alone for the nameless image. Repeatable.
    #[arg(long = "image", required = true)]
    pub images: Vec<String>,
    /// A tag as STRATEGY:VALUE (custom:v1.2.3, git-branch:main, git-tag:v1,
    /// git-commit:SHA) or `content`. Repeatable.
    #[arg(long = "tag", required = true)]
    pub tags: Vec<String>,
    /// API bearer token, when the service requires one.
    #[arg(long, env = "PUBLISHD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Makes a retried pipeline step return the same job instead of a new one.
    #[arg(long, env = "PUBLISHD_IDEMPOTENCY_KEY")]
    pub idempotency_key: Option<String>,
    /// Give up waiting after this many seconds (the job goes on).
    #[arg(long, default_value_t = 3600)]
    pub wait_timeout: u64,
}
