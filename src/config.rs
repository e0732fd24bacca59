//! Settings from flags and environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use anyhow::Context;

use crate::access::TokenSources;
use crate::domain::access::Patterns;
use crate::domain::callback::CallbackPolicy;
use crate::domain::publish_via::PublishVia;
use crate::domain::retry::RetryPolicy;
use crate::domain::spec::Limits;
use crate::engine::TagMethod;
use crate::registry::TokenRealms;
use crate::store::{Location, SessionLimits};
use crate::worker::StepTimeouts;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "PUBLISHD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where jobs are kept: a SQLite file (created if missing; one publishd
    /// per file), or a PostgreSQL URL (`postgres://USER:PASSWORD@HOST/DB`)
    /// that several publishd instances share.
    #[arg(
        long,
        env = "PUBLISHD_DATABASE",
        default_value = "publishd.db",
        hide_env_values = true
    )]
    pub database: Location,
    /// On a shared database (PostgreSQL): the longest a statement may run,
    /// in seconds (`statement_timeout`).
    #[arg(long, env = "PUBLISHD_DATABASE_STATEMENT_TIMEOUT", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub database_statement_timeout: u64,
    /// On a shared database: the longest a statement waits for a lock, in
    /// seconds (`lock_timeout`).
    #[arg(long, env = "PUBLISHD_DATABASE_LOCK_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub database_lock_timeout: u64,
    /// On a shared database: the longest a transaction may wait idle for
    /// its client, in seconds (`idle_in_transaction_session_timeout`): a
    /// client cut off by the network holds nothing for longer.
    #[arg(long, env = "PUBLISHD_DATABASE_IDLE_TRANSACTION_TIMEOUT", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub database_idle_transaction_timeout: u64,
    /// On a shared database: seconds of silence before the server probes a
    /// client's connection (TCP keepalive; a dead one is dropped after
    /// about twice this).
    #[arg(long, env = "PUBLISHD_DATABASE_KEEPALIVE", default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..))]
    pub database_keepalive: u64,
    /// Targets processed at once.
    #[arg(long, env = "PUBLISHD_WORKERS", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub workers: u16,
    /// Docker engine: unix:///path or tcp://host:port (default: the local
    /// socket), or `none` to publish registry sources (`docker://`) only.
    /// tcp:// is plain HTTP, refused unless --allow-plain-engine.
    #[arg(long, env = "DOCKER_HOST")]
    pub docker_host: Option<String>,
    /// Drive a `tcp://` engine although it is reached without TLS, where
    /// every push sends it registry credentials in clear (warned in the log
    /// and in `/readyz`). Without it such an engine is refused at start.
    #[arg(long, env = "PUBLISHD_ALLOW_PLAIN_ENGINE")]
    pub allow_plain_engine: bool,
    /// The name jobs give for this instance's engine (`"engine"`): only
    /// instances that drive an engine claim its jobs' targets. Default: the
    /// engine's own name (`docker info`'s Name, its host's name). Instances
    /// that drive one engine must give it the same name.
    #[arg(long, env = "PUBLISHD_ENGINE_NAME")]
    pub engine_name: Option<String>,
    /// Directory holding the docker config.json with registry credentials
    /// (default: ~/.docker).
    #[arg(long, env = "DOCKER_CONFIG")]
    pub docker_config: Option<PathBuf>,
    /// The engine's `certs.d`: per-registry CAs (`HOST[:PORT]/*.crt`) and
    /// client certificates (`*.cert` + `*.key`) for reading registries as
    /// the engine reaches them.
    #[arg(
        long,
        env = "PUBLISHD_DOCKER_CERTS_DIR",
        default_value = "/etc/docker/certs.d"
    )]
    pub docker_certs_dir: PathBuf,
    /// How the tag step makes the labelled image: `load` (a config-only
    /// load: fastest, classic image store only), `build` (`FROM` + `LABEL`:
    /// every engine), or `auto` (load on the classic store, else build).
    #[arg(long, env = "PUBLISHD_TAG_METHOD", default_value = "auto", value_parser = parse_tag_method)]
    pub tag_method: TagMethod,
    /// `auto`: once the engine has pushed an image to a registry, its
    /// further targets there are written registry-side (a new config and
    /// manifest next to the pushed layers, the same image and digest, the
    /// engine untouched) where the tag method is `load`; `engine`: every
    /// target through the engine. A job's `publish_via` overrides it.
    #[arg(long, env = "PUBLISHD_PUBLISH_VIA", default_value = "auto", value_parser = parse_publish_via)]
    pub publish_via: PublishVia,
    /// Longest a docker credential helper may take to answer, in seconds;
    /// one that takes longer is stopped and the step fails.
    #[arg(long, env = "PUBLISHD_CREDENTIAL_HELPER_TIMEOUT", default_value_t = 30)]
    pub credential_helper_timeout: u64,
    /// Longest a push may take, in seconds.
    #[arg(long, env = "PUBLISHD_PUSH_TIMEOUT", default_value_t = 1800)]
    pub push_timeout: u64,
    /// Longest the tag or the untag step may take, in seconds.
    #[arg(long, env = "PUBLISHD_STEP_TIMEOUT", default_value_t = 120)]
    pub step_timeout: u64,
    /// On shutdown, how long running targets may take to finish, in seconds.
    #[arg(long, env = "PUBLISHD_SHUTDOWN_GRACE", default_value_t = 60)]
    pub shutdown_grace: u64,
    /// Most targets (images x tags) one job may have.
    #[arg(long, env = "PUBLISHD_MAX_TARGETS_PER_JOB", default_value_t = 256)]
    pub max_targets_per_job: usize,
    /// Past this many queued targets, new jobs get 503 with Retry-After. A
    /// token that names no `max_queued_targets` of its own may queue its
    /// share of them, by weight among the tokens that may submit (never
    /// less than --max-targets-per-job), so no one token fills the queue.
    #[arg(long, env = "PUBLISHD_MAX_QUEUED_TARGETS", default_value_t = 10_000)]
    pub max_queued_targets: usize,
    /// Tries of a step that fails transiently (5xx, 429, resets, timeouts).
    #[arg(long, env = "PUBLISHD_RETRY_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub retry_attempts: u32,
    /// First wait before a retry, in seconds.
    #[arg(long, env = "PUBLISHD_RETRY_INITIAL_BACKOFF", default_value_t = 1.0)]
    pub retry_initial_backoff: f64,
    /// Growth of the wait from one retry to the next.
    #[arg(long, env = "PUBLISHD_RETRY_MULTIPLIER", default_value_t = 2.0)]
    pub retry_multiplier: f64,
    /// Longest wait between retries, in seconds.
    #[arg(long, env = "PUBLISHD_RETRY_MAX_BACKOFF", default_value_t = 60.0)]
    pub retry_max_backoff: f64,
    /// How long a step keeps retrying transient failures, in seconds; it
    /// always gets --retry-attempts tries, and more while this lasts.
    #[arg(long, env = "PUBLISHD_RETRY_MAX_ELAPSED", default_value_t = 600)]
    pub retry_max_elapsed: u64,
    /// How long a step waits for an unreachable engine or registry to come
    /// back before it fails, in seconds.
    #[arg(long, env = "PUBLISHD_OUTAGE_LIMIT", default_value_t = 600)]
    pub outage_limit: u64,
    /// Runs a target may start without finishing (its lane crashed, or the
    /// process died) before it is failed as a dead letter.
    #[arg(long, env = "PUBLISHD_MAX_TARGET_RUNS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_target_runs: u32,
    /// Seconds a claim on a target holds without renewal (a running target
    /// renews it every third of this). With several instances, how long
    /// the targets of one that died wait before another on the same engine
    /// takes them over.
    #[arg(long, env = "PUBLISHD_LEASE", default_value_t = DEFAULT_LEASE.as_secs(), value_parser = clap::value_parser!(u64).range(3..=3600))]
    pub lease: u64,
    /// After a restart, how long targets of jobs that brought their own
    /// registry credentials wait for the pipeline to resubmit them (the
    /// credentials are never stored), in seconds; then they fail.
    #[arg(long, env = "PUBLISHD_CREDENTIAL_WAIT", default_value_t = 600)]
    pub credential_wait: u64,
    /// Most HTTP connections served at once; more wait to be accepted.
    #[arg(long, env = "PUBLISHD_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Event streams (`/api/v1/jobs/{id}/events`) one token may have open
    /// at once; more are answered 429 with Retry-After.
    #[arg(long, env = "PUBLISHD_MAX_STREAMS_PER_TOKEN", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams_per_token: u32,
    /// How long one event stream stays open, e.g. `10m`: then it ends with
    /// a `reopen` event and its client resumes with `Last-Event-ID` (the
    /// CLI and the dashboard do, losing nothing).
    #[arg(long, env = "PUBLISHD_STREAM_MAX_AGE", default_value = "10m", value_parser = parse_duration)]
    pub stream_max_age: Duration,
    /// Longest a client may take to send a request's headers, in seconds.
    #[arg(long, env = "PUBLISHD_HEADER_READ_TIMEOUT", default_value_t = 10)]
    pub header_read_timeout: u64,
    /// Scoped API tokens: a TOML file of `[[token]]` entries (name, sha256,
    /// role, repos, read_repos, sources, source_labels, service_credentials,
    /// force, weight, max_queued_targets). Read again on SIGHUP.
    #[arg(long, env = "PUBLISHD_AUTH_CONFIG")]
    pub auth_config: Option<PathBuf>,
    /// File of unscoped (admin) API bearer tokens, one per line. Read again
    /// on SIGHUP.
    #[arg(long, env = "PUBLISHD_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,
    /// API bearer tokens, separated by commas or newlines.
    #[arg(long, env = "PUBLISHD_API_TOKENS", hide_env_values = true)]
    pub api_tokens: Option<String>,
    /// Listen on a non-loopback address without API tokens.
    #[arg(long, env = "PUBLISHD_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,
    /// A bearer token `/metrics` requires (Prometheus' `authorization`
    /// setting); without it `/metrics` is open like the probes.
    #[arg(long, env = "PUBLISHD_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// The URL clients reach publishd at, when not its listening address
    /// (behind a proxy, say): its origin is publishd's own to browsers, and
    /// without tokens its host is a name publishd answers to (besides IP
    /// addresses, and localhost on a loopback address).
    #[arg(long, env = "PUBLISHD_PUBLIC_URL", value_parser = parse_public_url)]
    pub public_url: Option<url::Url>,
    /// An origin (`https://ci.example.com`) whose web pages may call the API
    /// from a browser; repeatable, or separated by commas. Requests other
    /// sites' pages make are refused (403), links followed excepted.
    #[arg(long = "allow-origin", env = "PUBLISHD_ALLOW_ORIGIN", value_delimiter = ',', value_parser = parse_origin)]
    pub allow_origin: Vec<String>,
    /// Registry hosts publishd may publish to and read from at all, as
    /// patterns (`*.example.com`, `127.0.0.1:*`), separated by commas;
    /// every token, admins included, is bounded by it. Default: any.
    #[arg(long, env = "PUBLISHD_ALLOW_REGISTRY", value_delimiter = ',')]
    pub allow_registry: Vec<String>,
    /// A registry whose token server is on another host, as
    /// `REGISTRY=REALM_HOST` (patterns both; repeatable or comma-separated),
    /// e.g. `registry.gitlab.com=gitlab.com`: the token server gets the
    /// credentials publishd holds for that registry. Without a pair, a
    /// registry's token server must be on its own host (any port); Docker
    /// Hub's (`auth.docker.io`) is known.
    #[arg(long, env = "PUBLISHD_ALLOW_TOKEN_REALM", value_delimiter = ',')]
    pub allow_token_realm: Vec<String>,
    /// Where webhooks may go, repeatable or comma-separated: `HOST`,
    /// `HOST:PORT` (`*` patterns in the host), an address or a network
    /// (`10.1.0.0/16`). Without it, any public address; with it, only what
    /// it names. Loopback, private, link-local and unique-local addresses
    /// (and the like) are called only where it names them. Checked at
    /// submission and again before each attempt, on the addresses the host
    /// resolves to then, which are the ones connected to.
    #[arg(long, env = "PUBLISHD_ALLOW_CALLBACK", value_delimiter = ',')]
    pub allow_callback: Vec<String>,
    /// The secret webhooks are signed with (`X-Publishd-Signature`); jobs
    /// may name a `callback_url` only when it is set.
    #[arg(long, env = "PUBLISHD_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// How long a webhook is retried after its job ended, e.g. `24h`, `90m`.
    #[arg(long, env = "PUBLISHD_WEBHOOK_MAX_AGE", default_value = "24h", value_parser = parse_duration)]
    pub webhook_max_age: Duration,
    /// Finished jobs older than this are deleted with their targets, events
    /// and deliveries, e.g. `30d`, `12h`; `0` keeps everything.
    #[arg(long, env = "PUBLISHD_RETENTION", default_value = "30d", value_parser = parse_duration)]
    pub retention: Duration,
    /// `text` for people, `json` (one object per line) for log shippers.
    #[arg(long, env = "PUBLISHD_LOG_FORMAT", default_value = "text", value_parser = parse_log_format)]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// How long a claim holds without being renewed. Not a flag: it only trades
/// how soon a crashed lane's target is taken over against how often lanes
/// write; tests shorten it.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// Everything `startup` needs, typed.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub database: Location,
    pub session_limits: SessionLimits,
    pub workers: usize,
    pub docker_host: Option<String>,
    pub allow_plain_engine: bool,
    pub engine_name: Option<String>,
    pub docker_config: PathBuf,
    pub docker_certs_dir: PathBuf,
    pub tag_method: TagMethod,
    pub publish_via: PublishVia,
    pub credential_helper_timeout: Duration,
    pub timeouts: StepTimeouts,
    pub shutdown_grace: Duration,
    pub limits: Limits,
    pub max_queued_targets: usize,
    pub max_target_runs: u32,
    pub credential_wait: Duration,
    /// How long a claim holds without renewal (see `WorkerContext::lease`).
    pub lease: Duration,
    pub max_connections: usize,
    pub max_streams_per_token: usize,
    pub stream_max_age: Duration,
    pub header_read_timeout: Duration,
    pub retry: RetryPolicy,
    pub tokens: TokenSources,
    pub allow_registry: Patterns,
    /// Which token servers each registry may send publishd to.
    pub allow_token_realm: TokenRealms,
    /// Where callbacks may go (`--allow-callback`).
    pub allow_callback: CallbackPolicy,
    pub allow_unauthenticated: bool,
    /// What `/metrics` requires, when set.
    pub metrics_token: Option<String>,
    pub public_url: Option<url::Url>,
    /// Origins, as `scheme://host[:port]`, whose pages may call the API.
    pub allow_origins: Vec<String>,
    /// Signs webhooks; without it jobs may not name a `callback_url`.
    pub webhook_secret: Option<Vec<u8>>,
    pub webhook_max_age: Duration,
    /// The wait after a delivery's first failed attempt, doubled after each
    /// further one (up to an hour). Not a flag: 5 s suits receivers; tests
    /// shorten it.
    pub webhook_first_retry: Duration,
    /// How long finished jobs are kept; `None` keeps them forever.
    pub retention: Option<Duration>,
}

impl Settings {
    pub fn from_args(args: ServeArgs) -> anyhow::Result<Settings> {
        let docker_config = args.docker_config.unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default()
                .join(".docker")
        });
        let allow_registry = if args.allow_registry.is_empty() {
            Patterns::any()
        } else {
            Patterns::new(&args.allow_registry).context("a pattern in --allow-registry")?
        };
        let seconds = |value: f64, flag: &str| {
            Duration::try_from_secs_f64(value)
                .with_context(|| format!("{flag} {value} is not a duration"))
        };
        Ok(Settings {
            listen: args.listen,
            database: args.database,
            session_limits: SessionLimits {
                statement_timeout: Duration::from_secs(args.database_statement_timeout),
                lock_timeout: Duration::from_secs(args.database_lock_timeout),
                idle_in_transaction: Duration::from_secs(args.database_idle_transaction_timeout),
                keepalive: Duration::from_secs(args.database_keepalive),
            },
            workers: usize::from(args.workers),
            docker_host: args.docker_host,
            allow_plain_engine: args.allow_plain_engine,
            engine_name: args.engine_name,
            docker_config,
            docker_certs_dir: args.docker_certs_dir,
            tag_method: args.tag_method,
            publish_via: args.publish_via,
            credential_helper_timeout: Duration::from_secs(args.credential_helper_timeout),
            timeouts: StepTimeouts {
                tag: Duration::from_secs(args.step_timeout),
                push: Duration::from_secs(args.push_timeout),
                untag: Duration::from_secs(args.step_timeout),
            },
            shutdown_grace: Duration::from_secs(args.shutdown_grace),
            limits: Limits {
                max_targets: args.max_targets_per_job,
            },
            max_queued_targets: args.max_queued_targets,
            max_target_runs: args.max_target_runs,
            credential_wait: Duration::from_secs(args.credential_wait),
            lease: Duration::from_secs(args.lease),
            max_connections: args.max_connections as usize,
            max_streams_per_token: args.max_streams_per_token as usize,
            stream_max_age: Some(args.stream_max_age)
                .filter(|age| !age.is_zero())
                .context("--stream-max-age must be longer than 0")?,
            header_read_timeout: Duration::from_secs(args.header_read_timeout),
            retry: RetryPolicy {
                attempts: args.retry_attempts,
                initial_backoff: seconds(args.retry_initial_backoff, "--retry-initial-backoff")?,
                multiplier: args.retry_multiplier.max(1.0),
                max_backoff: seconds(args.retry_max_backoff, "--retry-max-backoff")?,
                outage_limit: Duration::from_secs(args.outage_limit),
                max_elapsed: Duration::from_secs(args.retry_max_elapsed),
            },
            tokens: TokenSources {
                auth_config: args.auth_config,
                token_file: args.api_token_file,
                tokens: args.api_tokens,
            },
            allow_registry,
            allow_token_realm: TokenRealms::new(&args.allow_token_realm)
                .map_err(|error| anyhow::anyhow!("--allow-token-realm {error}"))?,
            allow_callback: CallbackPolicy::new(&args.allow_callback)
                .map_err(|error| anyhow::anyhow!("--allow-callback {error}"))?,
            allow_unauthenticated: args.allow_unauthenticated,
            metrics_token: args.metrics_token.filter(|token| !token.is_empty()),
            public_url: args.public_url,
            allow_origins: args.allow_origin,
            webhook_secret: args
                .webhook_secret
                .filter(|secret| !secret.is_empty())
                .map(String::into_bytes),
            webhook_max_age: args.webhook_max_age,
            webhook_first_retry: crate::webhooks::DEFAULT_FIRST_RETRY,
            retention: Some(args.retention).filter(|retention| !retention.is_zero()),
        })
    }
}

/// A duration as `30d`, `12h`, `90m`, `45s` (or combined, `1h30m`); `0` is zero.
fn parse_duration(value: &str) -> Result<Duration, String> {
    if value.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(value)
        .map_err(|error| format!("{value:?} is not a duration: {error}"))
}

fn parse_public_url(value: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(value).map_err(|error| format!("{value:?} is not a URL: {error}"))?;
    match (url.scheme(), url.host_str()) {
        ("http" | "https", Some(_)) => Ok(url),
        _ => Err(format!(
            "{value:?} is not an http:// or https:// URL with a host"
        )),
    }
}

/// An origin as browsers send it in `Origin`: `scheme://host[:port]`, the
/// default port left out.
fn parse_origin(value: &str) -> Result<String, String> {
    let url = parse_public_url(value)?;
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "{value:?} is not an origin (scheme://host[:port], no path)"
        ));
    }
    Ok(url.origin().ascii_serialization())
}

fn parse_log_format(value: &str) -> Result<LogFormat, String> {
    match value {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err(format!("{value:?} is not text or json")),
    }
}

pub(crate) fn parse_publish_via(value: &str) -> Result<PublishVia, String> {
    PublishVia::parse(value).ok_or_else(|| format!("{value:?} is not auto or engine"))
}

fn parse_tag_method(value: &str) -> Result<TagMethod, String> {
    TagMethod::parse(value).ok_or_else(|| format!("{value:?} is not auto, load or build"))
}
