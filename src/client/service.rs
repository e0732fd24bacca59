//! The service as the client sees it: requests with the token, retried
//! through blips until the deadline.
//!
//! A blip does not fail a pipeline step: connection errors, timeouts, 408,
//! 429 and 5xx are retried with backoff (or after the service's
//! `Retry-After`) until `--wait-timeout`. Jobs are durable, so following
//! simply resumes after a restart; a submission whose outcome is unknown is
//! sent again with the same Idempotency-Key, which can only answer the job
//! it may have created. A service that has never answered at all (a wrong
//! `--server`) is given up on after `--connect-timeout`: an hour of
//! retrying an address that was never right helps nobody.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{RequestBuilder, StatusCode};
use serde_json::Value;

use super::Failure;
use crate::cli::ClientArgs;

/// The first wait before a retry; it doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Short enough that a restarted service is found again soon.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Longest one request may take (for the event stream: until its headers):
/// a service that hangs is retried, not waited on forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest one connection attempt may take: an address that drops the
/// connection is tried again soon, within `--connect-timeout`.
const CONNECT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Service {
    client: reqwest::Client,
    pub base: String,
    /// When the command gives up: `--wait-timeout` after it started.
    pub deadline: Instant,
    pub wait_timeout: u64,
    /// When the command gives up on a service that has not answered once:
    /// `--connect-timeout` after it started; `None` once it has answered.
    connect_deadline: Option<Instant>,
    connect_timeout: u64,
    backoff: Duration,
    /// Whether the last request was retried, to say when the service is back.
    retrying: bool,
}

/// An answer of the API: its status, as JSON, and as sent (what
/// `--output json` prints, unchanged).
pub struct Answer {
    pub status: StatusCode,
    pub json: Value,
    pub text: String,
}

/// What one request came to.
enum Attempt {
    /// An answer that is not a blip: success, or a refusal to report.
    Answer(Answer),
    /// A blip: try again after `after`, or after the backoff if `None`.
    /// `answered`: the service did answer (a 5xx, a 429), so it is there.
    Retry {
        why: String,
        after: Option<Duration>,
        answered: bool,
    },
}

impl Service {
    /// For a command that `follows` a job (its default `--wait-timeout` is
    /// long) or only wants an answer.
    pub fn new(args: &ClientArgs, follows: bool) -> Result<Service, Failure> {
        let mut headers = HeaderMap::new();
        if let Some(token) = args.token() {
            let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| Failure::usage(anyhow!("the token is not a valid header value")))?;
            value.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, value);
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(CONNECT_ATTEMPT_TIMEOUT)
            .build()
            .map_err(|error| Failure::unreachable(anyhow!(error).context("an HTTP client")))?;
        let wait_timeout = args.wait_timeout(follows);
        let now = Instant::now();
        Ok(Service {
            client,
            base: args.server(),
            deadline: now + Duration::from_secs(wait_timeout),
            wait_timeout,
            connect_deadline: Some(now + Duration::from_secs(args.connect_timeout)),
            connect_timeout: args.connect_timeout,
            backoff: FIRST_BACKOFF,
            retrying: false,
        })
    }

    /// Sends the request `build` makes until it gets an answer that is not a
    /// blip; a 4xx is the service's refusal.
    pub async fn expect(
        &mut self,
        doing: &str,
        build: impl Fn(&reqwest::Client, &str) -> RequestBuilder,
    ) -> Result<Answer, Failure> {
        let answer = self.call(doing, build).await?;
        if answer.status.is_success() {
            Ok(answer)
        } else {
            Err(Failure::refusal(doing, &answer))
        }
    }

    /// Sends the request `build` makes until it gets an answer that is not a
    /// blip, saying on stderr what it waits for; gives up at the deadline.
    pub async fn call(
        &mut self,
        doing: &str,
        build: impl Fn(&reqwest::Client, &str) -> RequestBuilder,
    ) -> Result<Answer, Failure> {
        loop {
            let timeout = self.request_timeout();
            let request = build(&self.client, &self.base).timeout(timeout);
            match attempt(request, timeout)
                .await
                .map_err(|failure| failure.context(format!("{doing} at {}", self.base)))?
            {
                Attempt::Answer(answer) => {
                    self.answered();
                    return Ok(answer);
                }
                Attempt::Retry {
                    why,
                    after,
                    answered,
                } => {
                    if answered {
                        self.reached();
                    }
                    self.pause(doing, &why, after).await?
                }
            }
        }
    }

    /// Opens the job's event stream, resuming after `last_event_id`; retried
    /// like `call`.
    pub async fn events(
        &mut self,
        id: &str,
        last_event_id: Option<&str>,
    ) -> Result<reqwest::Response, Failure> {
        let doing = format!("following job {id}");
        loop {
            let timeout = self.request_timeout();
            let mut request = self
                .client
                .get(format!("{}/api/v1/jobs/{id}/events", self.base))
                .header(header::ACCEPT, "text/event-stream");
            if let Some(last) = last_event_id {
                request = request.header("Last-Event-ID", last);
            }
            // The stream is read for as long as the job runs: only the wait
            // for its headers is bounded.
            let sent = match tokio::time::timeout(timeout, request.send()).await {
                Ok(sent) => sent,
                Err(_) => {
                    let why = format!("no answer within {}", seconds(timeout));
                    self.pause(&doing, &why, None).await?;
                    continue;
                }
            };
            let response = match sent {
                Ok(response) => response,
                Err(error) if error.is_builder() => return Err(Failure::usage(error.into())),
                Err(error) => {
                    self.pause(&doing, &blip(&error, timeout), None).await?;
                    continue;
                }
            };
            let status = response.status();
            self.reached();
            if status.is_success() {
                self.answered();
                return Ok(response);
            }
            let after = retry_after(&response);
            let text = response.text().await.unwrap_or_default();
            let json = serde_json::from_str(&text).unwrap_or(Value::Null);
            if is_transient(status) {
                let why = format!("service answered {}", message(status, &json));
                self.pause(&doing, &why, after).await?;
            } else {
                let answer = Answer {
                    status,
                    json,
                    text: text.trim_end().to_owned(),
                };
                return Err(Failure::refusal(&doing, &answer));
            }
        }
    }

    /// Waits before the next try, saying why on stderr; gives up (as
    /// unreachable) at the deadline, or at the connect deadline while the
    /// service has never answered.
    pub async fn pause(
        &mut self,
        doing: &str,
        why: &str,
        after: Option<Duration>,
    ) -> Result<(), Failure> {
        let left = self.left();
        let connect_left = self
            .connect_deadline
            .map(|deadline| deadline.saturating_duration_since(Instant::now()));
        if connect_left.is_some_and(|left| left.is_zero()) && !left.is_zero() {
            return Err(Failure::unreachable(anyhow!(
                "{doing} at {}: gave up after {}s (--connect-timeout): the service has not \
                 answered once: {why}; is --server right?",
                self.base,
                self.connect_timeout
            )));
        }
        let left = left.min(connect_left.unwrap_or(left));
        if left.is_zero() {
            return Err(Failure::unreachable(anyhow!(
                "{doing} at {}: gave up after {}s: {why}",
                self.base,
                self.wait_timeout
            )));
        }
        let delay = after.unwrap_or_else(|| self.next_backoff()).min(left);
        eprintln!("{why}, retrying in {}", seconds(delay));
        self.retrying = true;
        tokio::time::sleep(delay).await;
        Ok(())
    }

    /// Time left before the deadline.
    pub fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    fn request_timeout(&self) -> Duration {
        // At least a moment, so that the last try can still be answered.
        REQUEST_TIMEOUT.min(self.left()).max(Duration::from_secs(1))
    }

    /// The service answered something: from now on only `--wait-timeout`
    /// bounds the wait, through restarts and outages.
    fn reached(&mut self) {
        self.connect_deadline = None;
    }

    fn answered(&mut self) {
        self.reached();
        if self.retrying {
            eprintln!("service answering again");
        }
        self.retrying = false;
        self.backoff = FIRST_BACKOFF;
    }

    /// The backoff with jitter, so that the pipelines a restart interrupted
    /// do not all come back in the same instant; the next one doubles.
    fn next_backoff(&mut self) -> Duration {
        let delay = self.backoff.mul_f64(0.5 + 0.5 * fastrand::f64());
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        delay
    }
}

/// Sends one request and sorts the outcome: only an invalid request or an
/// answer that is not the API's is an error, everything that a later try
/// may not meet is a blip.
async fn attempt(request: RequestBuilder, timeout: Duration) -> Result<Attempt, Failure> {
    let response = match request.send().await {
        Ok(response) => response,
        Err(error) if error.is_builder() => return Err(Failure::usage(error.into())),
        Err(error) => {
            return Ok(Attempt::Retry {
                why: blip(&error, timeout),
                after: None,
                answered: false,
            });
        }
    };
    let status = response.status();
    let after = retry_after(&response);
    let bytes = match response.bytes().await {
        Ok(bytes) => bytes,
        Err(error) => {
            return Ok(Attempt::Retry {
                why: blip(&error, timeout),
                after: None,
                answered: true,
            });
        }
    };
    // An error answer need not be JSON (a proxy's page); a success must be.
    let json = match serde_json::from_slice(&bytes) {
        Ok(answer) => answer,
        Err(_) if !status.is_success() => Value::Null,
        Err(error) => {
            return Err(Failure::unreachable(
                anyhow!(error).context("the answer is not JSON"),
            ));
        }
    };
    Ok(if is_transient(status) {
        Attempt::Retry {
            why: format!("service answered {}", message(status, &json)),
            after,
            answered: true,
        }
    } else {
        Attempt::Answer(Answer {
            status,
            json,
            text: String::from_utf8_lossy(&bytes).trim_end().to_owned(),
        })
    })
}

/// Why a request that got no answer will be tried again.
fn blip(error: &reqwest::Error, timeout: Duration) -> String {
    if error.is_timeout() {
        format!("no answer within {}", seconds(timeout))
    } else if error.is_connect() {
        format!("service unreachable ({})", root_cause(error))
    } else {
        format!("connection to the service broken ({})", root_cause(error))
    }
}

fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok()?.trim().parse().ok())
        .map(Duration::from_secs)
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

impl Failure {
    /// The service's refusal (a 4xx) of what was being done; `--output
    /// json` prints its answer as sent, when it is the API's JSON.
    pub fn refusal(doing: &str, answer: &Answer) -> Failure {
        let mut failure = Failure::refused(anyhow!(
            "{doing}: refused: {}",
            refusal(answer.status, &answer.json)
        ));
        if answer.json.is_object() {
            failure.answer = Some(answer.text.clone());
        }
        failure
    }
}

/// A refusal with the field at fault, when the API names one.
fn refusal(status: StatusCode, answer: &Value) -> String {
    let field = answer["error"]["field"]
        .as_str()
        .map(|field| format!(" ({field})"))
        .unwrap_or_default();
    format!("{}{field}", message(status, answer))
}

/// The innermost cause, e.g. "Connection refused (os error 111)": reqwest's
/// own message names only the URL.
pub fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

pub fn seconds(delay: Duration) -> String {
    if delay < Duration::from_secs(1) {
        format!("{}ms", delay.as_millis())
    } else {
        format!("{}s", delay.as_secs_f64().round())
    }
}

/// `Context` for a value the API must hold.
pub fn field<'a>(value: &'a Value, name: &str) -> Result<&'a str, Failure> {
    value[name]
        .as_str()
        .with_context(|| format!("the answer has no {name}"))
        .map_err(Failure::unreachable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Output;

    #[test]
    fn blips_are_retried_and_refusals_are_not() {
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(is_transient(StatusCode::from_u16(code).unwrap()), "{code}");
        }
        for code in [400, 401, 403, 404, 409, 413, 422] {
            assert!(!is_transient(StatusCode::from_u16(code).unwrap()), "{code}");
        }
    }

    #[test]
    fn the_backoff_doubles_with_jitter_up_to_its_limit() {
        let args = ClientArgs {
            server: None,
            token: None,
            output: Output::Text,
            wait_timeout: Some(1),
            connect_timeout: 60,
        };
        let mut service = Service::new(&args, true).unwrap();
        let mut base = FIRST_BACKOFF;
        for _ in 0..10 {
            let delay = service.next_backoff();
            assert!(delay >= base / 2 && delay <= base, "{delay:?} for {base:?}");
            base = (base * 2).min(MAX_BACKOFF);
        }
        assert_eq!(service.backoff, MAX_BACKOFF);
    }

    #[test]
    fn empty_settings_are_no_settings_and_only_following_waits_long() {
        let mut args = ClientArgs {
            server: Some(String::new()),
            token: Some(String::new()),
            output: Output::Text,
            wait_timeout: None,
            connect_timeout: 60,
        };
        assert_eq!(args.server(), crate::cli::DEFAULT_SERVER);
        assert_eq!(args.token(), None);
        assert_eq!(args.wait_timeout(true), 3600);
        assert_eq!(args.wait_timeout(false), 30);
        args.server = Some("http://svc:8080/".into());
        args.token = Some("t".into());
        args.wait_timeout = Some(5);
        assert_eq!(args.server(), "http://svc:8080");
        assert_eq!(args.token(), Some("t"));
        assert_eq!(args.wait_timeout(true), 5);
        assert_eq!(args.wait_timeout(false), 5);
    }

    #[test]
    fn refusals_name_the_field() {
        let answer = serde_json::json!({"error": {"code": "invalid_spec", "message": "bad tag", "field": "tags[0].value"}});
        assert_eq!(
            refusal(StatusCode::UNPROCESSABLE_ENTITY, &answer),
            "422 Unprocessable Entity: bad tag (tags[0].value)"
        );
        assert_eq!(
            refusal(StatusCode::NOT_FOUND, &Value::Null),
            "404 Not Found"
        );
    }
}
