//! `publishd publish`: a pipeline step in one command. Submits a job to a
//! running service, waits for it and reports each target; the exit code says
//! whether everything was published.
//!
//! A blip does not fail the step: connection errors, timeouts, 408, 429 and
//! 5xx are retried with backoff (or after the service's `Retry-After`) until
//! `--wait-timeout`. The job is durable, so polling simply resumes after a
//! restart; a submission whose outcome is unknown is sent again with the same
//! Idempotency-Key, which can only answer the job it may have created.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{RequestBuilder, StatusCode};
use serde_json::{Value, json};

use crate::cli::PublishArgs;

/// How often the job is polled.
const POLL: Duration = Duration::from_millis(500);
/// The first wait before a retry; it doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Short enough that a restarted service is found again soon.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Longest one request may take: a service that hangs is retried, not
/// waited on forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the step; answers whether every target succeeded.
pub async fn publish(args: PublishArgs) -> anyhow::Result<bool> {
    let body = job_body(&args)?;
    let key = match &args.idempotency_key {
        Some(key) => key.clone(),
        None => {
            // Without a key a resubmission could create a second job.
            let key = uuid::Uuid::now_v7().to_string();
            eprintln!("idempotency key {key} (generated)");
            key
        }
    };
    let mut service = Service::new(&args)?;

    let (status, answer) = service
        .call("submitting the job", |client, base| {
            client
                .post(format!("{base}/api/v1/jobs"))
                .header("Idempotency-Key", &key)
                .json(&body)
        })
        .await?;
    if !status.is_success() {
        let error = &answer["error"];
        let field = error["field"]
            .as_str()
            .map(|f| format!(" ({f})"))
            .unwrap_or_default();
        bail!(
            "publishd refused the job: {}{field}",
            message(status, &answer)
        );
    }
    let id = answer["id"]
        .as_str()
        .context("the answer has no job id")?
        .to_owned();
    eprintln!("job {id} accepted; waiting");

    let job = loop {
        let (status, job) = service
            .call(&format!("waiting for job {id}"), |client, base| {
                client.get(format!("{base}/api/v1/jobs/{id}"))
            })
            .await?;
        if !status.is_success() {
            bail!("reading job {id}: {}", message(status, &job));
        }
        if matches!(
            job["status"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        ) {
            break job;
        }
        if Instant::now() > service.deadline {
            bail!(
                "job {id} still {} after {}s",
                job["status"],
                args.wait_timeout
            );
        }
        tokio::time::sleep(POLL).await;
    };
    for target in job["targets"].as_array().into_iter().flatten() {
        let reference = target["reference"].as_str().unwrap_or("(no reference)");
        match target["status"].as_str() {
            Some("succeeded") => {
                // An up-to-date target was already in the registry: not pushed.
                let verb = if target["up_to_date"] == true {
                    "up-to-date"
                } else {
                    "published"
                };
                println!(
                    "{verb} {reference}@{}",
                    target["digest"].as_str().unwrap_or("?")
                );
            }
            other => println!(
                "{} {reference}: {}",
                other.unwrap_or("?"),
                target["error"].as_str().unwrap_or("")
            ),
        }
    }
    eprintln!("job {id} {}", job["status"].as_str().unwrap_or("?"));
    Ok(job["status"] == "succeeded")
}

/// The service as the step sees it: requests with the token, retried through
/// blips until the deadline.
struct Service {
    client: reqwest::Client,
    base: String,
    /// When the step gives up: `--wait-timeout` after it started.
    deadline: Instant,
    wait_timeout: u64,
    backoff: Duration,
    /// Whether the last request was retried, to say when the service is back.
    retrying: bool,
}

/// What one request came to.
enum Attempt {
    /// An answer that is not a blip: success, or a refusal to report.
    Answer(StatusCode, Value),
    /// A blip: try again after `after`, or after the backoff if `None`.
    Retry {
        why: String,
        after: Option<Duration>,
    },
}

impl Service {
    fn new(args: &PublishArgs) -> anyhow::Result<Service> {
        let mut headers = HeaderMap::new();
        if let Some(token) = &args.token {
            let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                .context("the token is not a valid header value")?;
            value.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, value);
        }
        Ok(Service {
            client: reqwest::Client::builder()
                .default_headers(headers)
                .build()?,
            base: args.server.trim_end_matches('/').to_owned(),
            deadline: Instant::now() + Duration::from_secs(args.wait_timeout),
            wait_timeout: args.wait_timeout,
            backoff: FIRST_BACKOFF,
            retrying: false,
        })
    }

    /// Sends the request `build` makes until it gets an answer that is not a
    /// blip, saying on stderr what it waits for; gives up at the deadline.
    async fn call(
        &mut self,
        doing: &str,
        build: impl Fn(&reqwest::Client, &str) -> RequestBuilder,
    ) -> anyhow::Result<(StatusCode, Value)> {
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            // At least a moment, so that the last try can still be answered.
            let timeout = REQUEST_TIMEOUT.min(left).max(Duration::from_secs(1));
            let request = build(&self.client, &self.base).timeout(timeout);
            let (why, after) = match attempt(request, timeout)
                .await
                .with_context(|| format!("{doing} at {}", self.base))?
            {
                Attempt::Answer(status, answer) => {
                    if self.retrying {
                        eprintln!("service answering again");
                    }
                    self.retrying = false;
                    self.backoff = FIRST_BACKOFF;
                    return Ok((status, answer));
                }
                Attempt::Retry { why, after } => (why, after),
            };
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("{doing}: gave up after {}s: {why}", self.wait_timeout);
            }
            let delay = after.unwrap_or_else(|| self.next_backoff()).min(left);
            eprintln!("{why}, retrying in {}", seconds(delay));
            self.retrying = true;
            tokio::time::sleep(delay).await;
        }
    }

    /// The backoff with jitter, so that the pipelines a restart interrupted
    /// do not all come back in the same instant; the next one doubles.
    fn next_backoff(&mut self) -> Duration {
        let delay = self.backoff.mul_f64(0.5 + 0.5 * fastrand::f64());
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        delay
    }
}

/// Sends one request and sorts the outcome: only an invalid request is an
/// error, everything that a later try may not meet is a blip.
async fn attempt(request: RequestBuilder, timeout: Duration) -> anyhow::Result<Attempt> {
    let blip = |error: reqwest::Error| {
        let why = if error.is_timeout() {
            format!("no answer within {}", seconds(timeout))
        } else if error.is_connect() {
            format!("service unreachable ({})", root_cause(&error))
        } else {
            format!("connection to the service broken ({})", root_cause(&error))
        };
        Attempt::Retry { why, after: None }
    };
    let response = match request.send().await {
        Ok(response) => response,
        Err(error) if error.is_builder() => return Err(error.into()),
        Err(error) => return Ok(blip(error)),
    };
    let status = response.status();
    let after = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok()?.trim().parse().ok())
        .map(Duration::from_secs);
    let bytes = match response.bytes().await {
        Ok(bytes) => bytes,
        Err(error) => return Ok(blip(error)),
    };
    // An error answer need not be JSON (a proxy's page); a success must be.
    let answer = match serde_json::from_slice(&bytes) {
        Ok(answer) => answer,
        Err(_) if !status.is_success() => Value::Null,
        Err(error) => return Err(error).context("the answer is not JSON"),
    };
    Ok(if is_transient(status) {
        Attempt::Retry {
            why: format!("service answered {}", message(status, &answer)),
            after,
        }
    } else {
        Attempt::Answer(status, answer)
    })
}

/// Statuses a later try may not meet. A 5xx on a submission leaves its
/// outcome unknown, which the Idempotency-Key makes safe to try again.
fn is_transient(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
}

/// An error answer in a few words: the API's message, else the status.
fn message(status: StatusCode, answer: &Value) -> String {
    match answer["error"]["message"].as_str() {
        Some(message) => format!("{status}: {message}"),
        None => status.to_string(),
    }
}

/// The innermost cause, e.g. "Connection refused (os error 111)": reqwest's
/// own message names only the URL.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

fn seconds(delay: Duration) -> String {
    if delay < Duration::from_secs(1) {
        format!("{}ms", delay.as_millis())
    } else {
        format!("{}s", delay.as_secs_f64().round())
    }
}

/// The job spec the flags describe.
fn job_body(args: &PublishArgs) -> anyhow::Result<Value> {
    let images: Vec<Value> = args
        .images
        .iter()
        .map(|image| match image.split_once('=') {
            Some((name, source)) => json!({"name": name, "source": source}),
            None => json!({"name": null, "source": image}),
        })
        .collect();
    let tags = args
        .tags
        .iter()
        .map(|tag| match tag.split_once(':') {
            Some((strategy, value)) => Ok(json!({"strategy": strategy, "value": value})),
            None if tag == "content" => Ok(json!({"strategy": "content"})),
            None => bail!("--tag {tag:?}: expected STRATEGY:VALUE or content"),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(json!({"repo": args.repo, "repo_mode": args.repo_mode, "images": images, "tags": tags}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> PublishArgs {
        PublishArgs {
            server: String::new(),
            repo: "reg/acme".to_owned(),
            repo_mode: "monorepo".to_owned(),
            images: vec!["api=acme/api:b1".to_owned(), "sha256:abc".to_owned()],
            tags: vec!["git-branch:feature/x:y".to_owned(), "content".to_owned()],
            token: None,
            idempotency_key: None,
            wait_timeout: 1,
        }
    }

    #[test]
    fn flags_become_a_job_spec() {
        let args = args();
        assert_eq!(
            job_body(&args).unwrap(),
            json!({
                "repo": "reg/acme", "repo_mode": "monorepo",
                "images": [{"name": "api", "source": "acme/api:b1"}, {"name": null, "source": "sha256:abc"}],
                "tags": [{"strategy": "git-branch", "value": "feature/x:y"}, {"strategy": "content"}]
            })
        );
        let bad = PublishArgs {
            tags: vec!["custom".to_owned()],
            ..args
        };
        assert!(job_body(&bad).is_err());
    }

    #[test]
    fn blips_are_retried_and_refusals_are_not() {
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(is_transient(StatusCode::from_u16(code).unwrap()), "{code}");
        }
        for code in [400, 401, 404, 409, 413, 422] {
            assert!(!is_transient(StatusCode::from_u16(code).unwrap()), "{code}");
        }
    }

    #[test]
    fn the_backoff_doubles_with_jitter_up_to_its_limit() {
        let mut service = Service::new(&args()).unwrap();
        let mut base = FIRST_BACKOFF;
        for _ in 0..10 {
            let delay = service.next_backoff();
            assert!(delay >= base / 2 && delay <= base, "{delay:?} for {base:?}");
            base = (base * 2).min(MAX_BACKOFF);
        }
        assert_eq!(service.backoff, MAX_BACKOFF);
    }
}
