//! Webhooks: when a job that names a `callback_url` ends, its JSON is POSTed
//! there, signed with HMAC-SHA256 of the exact body under the service's
//! secret, and tried again with growing waits until the receiver accepts
//! (any 2xx) or `--webhook-max-age` has passed since the job ended. Every
//! attempt is recorded on the job (its class only); deliveries outlive
//! restarts, since they live in the database (made there by a trigger when
//! the job ends). Callbacks go only where `--allow-callback` allows
//! (`fence`).

mod fence;

pub use fence::{CallbackFence, Fenced};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::domain::callback::CallbackRefusal;
use crate::domain::spec::Callback;
use crate::domain::text::error_chain;
use crate::metrics::{DeliveryResult, Metrics};
use crate::store::{
    AttemptResult, DeliveryAttempt, DeliveryOutcome, DueDelivery, Store, UnderWay, format_time,
};

/// How often due deliveries are looked for: the delay of a job's first
/// delivery at most (one indexed query, so cheap enough to poll). Shorter
/// when the first retry is (tests), so retries are not held back by it.
const POLL: Duration = Duration::from_secs(1);
/// Deliveries under way at once.
const IN_FLIGHT: usize = 16;
/// Most of them for one submitter: the others' next due delivery always
/// finds a slot within a poll, however many of one submitter's are due
/// (thousands, to a receiver that never answers, hold 12 slots, not 16).
const PER_SUBMITTER: usize = 12;
/// How long a receiver may take to answer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// The wait after the first failed attempt (`Settings::webhook_first_retry`);
/// doubled each time, up to the cap.
pub const DEFAULT_FIRST_RETRY: Duration = Duration::from_secs(5);
const MAX_RETRY: Duration = Duration::from_secs(3600);

/// The webhook sender's settings.
#[derive(Clone)]
pub struct Webhooks {
    pub store: Store,
    /// The signing secret; callbacks are refused at submission without one.
    pub secret: Arc<Vec<u8>>,
    pub max_age: Duration,
    /// The wait after the first failed attempt, doubled after each further one.
    pub first_retry: Duration,
    /// Where callbacks may go (`--allow-callback`).
    pub fence: CallbackFence,
    pub metrics: Metrics,
}

/// The task a delivery ran in, whether it returned or panicked.
fn finished_task(done: Result<(tokio::task::Id, ()), tokio::task::JoinError>) -> tokio::task::Id {
    match done {
        Ok((task, ())) => task,
        Err(error) => error.id(),
    }
}

/// `sha256=` and the hex HMAC-SHA256 of `body` under `secret`: the
/// `X-Publishd-Signature` header a receiver recomputes.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

impl Webhooks {
    pub fn new(
        store: Store,
        secret: Vec<u8>,
        max_age: Duration,
        first_retry: Duration,
        fence: CallbackFence,
        metrics: Metrics,
    ) -> Self {
        Webhooks {
            store,
            secret: Arc::new(secret),
            max_age,
            first_retry,
            fence,
            metrics,
        }
    }

    /// Sends due deliveries until `stop`, up to `IN_FLIGHT` at once, each in
    /// a task of its own: a receiver that never answers holds only its own
    /// deliveries (for up to `ATTEMPT_TIMEOUT` each), never another's. The
    /// slots are shared by submitters in turns, `PER_SUBMITTER` at most
    /// each (`Store::due_deliveries`).
    pub async fn run(self, stop: CancellationToken) {
        let poll = POLL.min(self.first_retry).max(Duration::from_millis(10));
        let mut tasks = JoinSet::new();
        // The deliveries under way, by their task: a delivery stays due
        // until its attempt is recorded, and must not be sent twice at once.
        let mut sending: HashMap<tokio::task::Id, UnderWay> = HashMap::new();
        loop {
            while let Some(done) = tasks.try_join_next_with_id() {
                sending.remove(&finished_task(done));
            }
            if sending.len() < IN_FLIGHT {
                let under_way: Vec<UnderWay> = sending.values().cloned().collect();
                let room = u32::try_from(IN_FLIGHT - sending.len()).unwrap_or(u32::MAX);
                let share = u32::try_from(PER_SUBMITTER).unwrap_or(u32::MAX);
                match self.store.due_deliveries(room, share, &under_way).await {
                    Ok(due) => {
                        for delivery in due {
                            let under_way = UnderWay {
                                id: delivery.id.clone(),
                                submitter: delivery.submitter.clone(),
                            };
                            let webhooks = self.clone();
                            let task = tasks.spawn(async move {
                                if let Err(error) = webhooks.deliver(&delivery).await {
                                    warn!(error = format!("{error:#}"), delivery = %delivery.id, "a webhook delivery could not be recorded");
                                }
                            });
                            sending.insert(task.id(), under_way);
                        }
                    }
                    Err(error) => warn!(
                        error = format!("{error:#}"),
                        "looking for due webhook deliveries"
                    ),
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                // An attempt ended: its slot is free for a due delivery.
                Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    sending.remove(&finished_task(done));
                }
                _ = stop.cancelled() => {
                    // A stop does not wait for a receiver that is slow to
                    // answer: an attempt under way is dropped unrecorded,
                    // and sent again, with the same delivery id, after the
                    // restart (receivers dedupe on it).
                    tasks.shutdown().await;
                    return;
                }
            }
        }
    }

    async fn deliver(&self, due: &DueDelivery) -> anyhow::Result<()> {
        let body = match &due.body {
            Some(body) => body.clone(),
            None => {
                // The job as it ended: made once, so every attempt sends and
                // signs the very same bytes. Without `deliveries`: what they
                // said when the body was made (this one pending, no
                // attempts) is stale by the time any attempt arrives.
                let Some(job) = self.store.get_job(due.job_id).await? else {
                    // Nothing to send, ever: the delivery ends here.
                    let attempt = DeliveryAttempt {
                        attempt: due.attempts + 1,
                        at: format_time(time::OffsetDateTime::now_utc()),
                        result: AttemptResult::Refused,
                    };
                    self.metrics.webhook_attempt(DeliveryResult::GaveUp);
                    return self
                        .store
                        .record_delivery_attempt(&due.id, &attempt, &DeliveryOutcome::GaveUp)
                        .await;
                };
                let mut job = serde_json::to_value(&job)?;
                if let Some(fields) = job.as_object_mut() {
                    fields.remove("deliveries");
                }
                let body = serde_json::to_string(&job)?;
                self.store.set_delivery_body(&due.id, &body).await?
            }
        };
        let attempt_number = due.attempts + 1;
        let sent = self.send(due, body).await;
        let result = match sent {
            Sent::Answered(status) => AttemptResult::of_status(status),
            Sent::TimedOut => AttemptResult::Timeout,
            Sent::Failed | Sent::NotAllowed => AttemptResult::Refused,
        };
        let now = time::OffsetDateTime::now_utc();
        let outcome = if result == AttemptResult::Accepted {
            info!(delivery = %due.id, job_id = %due.job_id, "webhook delivered");
            DeliveryOutcome::Delivered
        } else {
            let exponent = u32::try_from(due.attempts).unwrap_or(u32::MAX).min(16);
            let wait = self
                .first_retry
                .saturating_mul(2u32.saturating_pow(exponent))
                .min(MAX_RETRY);
            let created = time::OffsetDateTime::parse(
                &due.created_at,
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap_or(now);
            // The last try is at the end of the max age, not a backoff
            // before it; an address the allow-list refuses stays refused.
            let deadline = created + self.max_age;
            if sent == Sent::NotAllowed || now >= deadline {
                warn!(delivery = %due.id, job_id = %due.job_id, "webhook given up");
                DeliveryOutcome::GaveUp
            } else {
                DeliveryOutcome::RetryAt(format_time((now + wait).min(deadline)))
            }
        };
        self.metrics.webhook_attempt(match outcome {
            DeliveryOutcome::Delivered => DeliveryResult::Delivered,
            DeliveryOutcome::RetryAt(_) => DeliveryResult::Retrying,
            DeliveryOutcome::GaveUp => DeliveryResult::GaveUp,
        });
        let attempt = DeliveryAttempt {
            attempt: attempt_number,
            at: format_time(now),
            result,
        };
        self.store
            .record_delivery_attempt(&due.id, &attempt, &outcome)
            .await
    }

    /// One attempt, logged with its detail (which the job does not keep).
    async fn send(&self, due: &DueDelivery, body: String) -> Sent {
        let about = |why: &dyn std::fmt::Display| {
            info!(delivery = %due.id, job_id = %due.job_id, %why, "a webhook attempt failed");
        };
        let client = match Callback::parse(&due.url) {
            Ok(callback) => self.fence.client(&callback).await,
            Err(error) => Err(Fenced::Refused(CallbackRefusal(error.message))),
        };
        let client = match client {
            Ok(client) => client,
            Err(Fenced::Refused(why)) => {
                warn!(delivery = %due.id, job_id = %due.job_id, %why, "a webhook not sent");
                return Sent::NotAllowed;
            }
            Err(Fenced::Unresolved(why)) => {
                about(&why);
                return Sent::Failed;
            }
        };
        let sent = client
            .post(&due.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(
                "X-Publishd-Signature",
                signature(&self.secret, body.as_bytes()),
            )
            .header("X-Publishd-Delivery", &due.id)
            .header("X-Publishd-Event", "job.finished")
            .timeout(ATTEMPT_TIMEOUT)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(response) => {
                let status = response.status();
                if !status.is_success() {
                    about(&format!("the receiver answered HTTP {status}"));
                }
                Sent::Answered(status.as_u16())
            }
            Err(error) => {
                about(&error_chain(&error));
                if error.is_timeout() {
                    Sent::TimedOut
                } else {
                    Sent::Failed
                }
            }
        }
    }
}

/// What an attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// The receiver answered with this status.
    Answered(u16),
    TimedOut,
    /// Not answered: the host did not resolve, the connection was refused
    /// or broke. Tried again.
    Failed,
    /// An address the operator does not allow: never tried again.
    NotAllowed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hex_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
