//! A job's history (written by the database's triggers) and its webhook
//! deliveries.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// One recorded change of a job or one of its targets.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Event {
    /// 1, 2, … for each event of the job, in the order they happened: what
    /// `Last-Event-ID` names.
    pub id: i64,
    pub job_id: Uuid,
    #[schema(format = DateTime)]
    pub at: String,
    /// `job` (its status), `cancel` (a cancel was requested), `target` (a
    /// target's status), `attempt` (a failed try of a target's step).
    pub kind: String,
    /// The target's position in the job, for `target` and `attempt`.
    pub target: Option<i64>,
    /// What changed: for `job`, `status` and `error`; for `target`,
    /// `status`, `reference`, `digest`, `up_to_date`, `error`, `attempts`;
    /// for `attempt`, `attempt`, `step`, `error`, `at`.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

impl Event {
    /// The job's last event: it ended.
    pub fn ends_job(&self) -> bool {
        self.kind == "job"
            && matches!(
                self.data["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            )
    }
}

/// A webhook delivery of a finished job, as answered on the job.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Delivery {
    /// Sent as `X-Publishd-Delivery`.
    pub id: String,
    /// The job's `callback_url`; null for a caller that may not see it
    /// (only its submitter and admins do).
    pub url: Option<String>,
    /// `pending`, `delivered`, or `failed` (given up after `--webhook-max-age`).
    pub state: String,
    /// Every attempt, oldest first.
    pub attempts: Vec<DeliveryAttempt>,
    #[schema(format = DateTime)]
    pub next_attempt_at: Option<String>,
}

/// One try of a delivery.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeliveryAttempt {
    pub attempt: i64,
    #[schema(format = DateTime)]
    pub at: String,
    pub result: AttemptResult,
}

/// What came of a try, as a class only: the receiver's status code, body
/// and errors are not told to the submitter (a callback must not be a way
/// to probe hosts publishd can reach). The service's log has the detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum AttemptResult {
    /// Accepted: the delivery is done.
    #[serde(rename = "2xx")]
    Accepted,
    /// Redirected (redirects are not followed).
    #[serde(rename = "3xx")]
    Redirected,
    #[serde(rename = "4xx")]
    ClientError,
    #[serde(rename = "5xx")]
    ServerError,
    /// No answer in time.
    #[serde(rename = "timeout")]
    Timeout,
    /// No answer at all: not sent (an address `--allow-callback` does not
    /// allow, a host that does not resolve), or the connection was refused
    /// or broken.
    #[serde(rename = "refused")]
    Refused,
}

impl AttemptResult {
    /// The class of an HTTP status a receiver answered.
    pub fn of_status(status: u16) -> AttemptResult {
        match status / 100 {
            2 => AttemptResult::Accepted,
            3 => AttemptResult::Redirected,
            4 => AttemptResult::ClientError,
            _ => AttemptResult::ServerError,
        }
    }
}

/// A delivery that is due.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    pub id: String,
    pub job_id: Uuid,
    /// Who submitted the job (`""`: nobody, a service without tokens).
    pub submitter: String,
    pub url: String,
    pub created_at: String,
    pub body: Option<String>,
    pub attempts: i64,
}

/// A delivery this instance is sending: it is not handed out again, and it
/// counts against its submitter's share of the slots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnderWay {
    pub id: String,
    pub submitter: String,
}

/// What an attempt leaves of a delivery.
#[derive(Debug, Clone)]
pub enum DeliveryOutcome {
    Delivered,
    RetryAt(String),
    GaveUp,
}
