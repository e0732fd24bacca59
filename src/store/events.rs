//! A job's history (written by the database's triggers) and its webhook
//! deliveries.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Store, StoreResult, now, parse_uuid};

/// One recorded change of a job or one of its targets.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Event {
    /// Increases with every event of every job: what `Last-Event-ID` names.
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
    pub url: String,
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
    /// The receiver's HTTP status, if it answered.
    pub status: Option<u16>,
    /// Why the attempt failed, if it did.
    pub error: Option<String>,
}

/// A delivery that is due.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    pub id: String,
    pub job_id: Uuid,
    pub url: String,
    pub created_at: String,
    pub body: Option<String>,
    pub attempts: i64,
}

/// What an attempt leaves of a delivery.
#[derive(Debug, Clone)]
pub enum DeliveryOutcome {
    Delivered,
    RetryAt(String),
    GaveUp,
}

impl Store {
    /// The job's events after `after` (an event id; 0 for all), oldest first.
    pub async fn job_events(
        &self,
        job_id: Uuid,
        after: i64,
        limit: u32,
    ) -> StoreResult<Vec<Event>> {
        let rows =
            sqlx::query("SELECT * FROM events WHERE job_id = ? AND id > ? ORDER BY id LIMIT ?")
                .bind(job_id.to_string())
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&self.reader)
                .await
                .context("reading a job's events")?;
        rows.iter().map(event_from_row).collect()
    }

    /// The id of the job's last event, if it has any.
    pub async fn last_event_of(&self, job_id: Uuid) -> StoreResult<Option<i64>> {
        let last = sqlx::query_scalar("SELECT max(id) FROM events WHERE job_id = ?")
            .bind(job_id.to_string())
            .fetch_one(&self.reader)
            .await
            .context("reading a job's last event")?;
        Ok(last)
    }

    /// Deliveries whose next attempt is due, oldest first.
    pub async fn due_deliveries(&self, limit: u32) -> StoreResult<Vec<DueDelivery>> {
        let rows = sqlx::query(
            "SELECT id, job_id, url, created_at, body, json_array_length(attempts) AS tries
             FROM deliveries WHERE state = 'pending' AND next_attempt_at <= ?
             ORDER BY next_attempt_at LIMIT ?",
        )
        .bind(now())
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .context("listing due deliveries")?;
        rows.iter()
            .map(|row| {
                Ok(DueDelivery {
                    id: row.get("id"),
                    job_id: parse_uuid(row.get("job_id"))?,
                    url: row.get("url"),
                    created_at: row.get("created_at"),
                    body: row.get("body"),
                    attempts: row.get("tries"),
                })
            })
            .collect()
    }

    /// Keeps the body of a delivery's first attempt, so every retry sends
    /// (and signs) the very same bytes.
    pub async fn set_delivery_body(&self, id: &str, body: &str) -> StoreResult<()> {
        sqlx::query("UPDATE deliveries SET body = COALESCE(body, ?) WHERE id = ?")
            .bind(body)
            .bind(id)
            .execute(&self.writer)
            .await
            .context("recording a delivery's body")?;
        Ok(())
    }

    pub async fn record_delivery_attempt(
        &self,
        id: &str,
        attempt: &DeliveryAttempt,
        outcome: &DeliveryOutcome,
    ) -> StoreResult<()> {
        let (state, next) = match outcome {
            DeliveryOutcome::Delivered => ("delivered", None),
            DeliveryOutcome::RetryAt(at) => ("pending", Some(at.as_str())),
            DeliveryOutcome::GaveUp => ("failed", None),
        };
        sqlx::query(
            "UPDATE deliveries SET attempts = json_insert(attempts, '$[#]', json(?)),
                                   state = ?, next_attempt_at = ?
             WHERE id = ?",
        )
        .bind(serde_json::to_string(attempt)?)
        .bind(state)
        .bind(next)
        .bind(id)
        .execute(&self.writer)
        .await
        .context("recording a delivery attempt")?;
        Ok(())
    }
}

pub(super) fn delivery_from_row(row: &SqliteRow) -> StoreResult<Delivery> {
    let attempts: String = row.get("attempts");
    Ok(Delivery {
        id: row.get("id"),
        url: row.get("url"),
        state: row.get("state"),
        attempts: serde_json::from_str(&attempts)
            .context("bad delivery attempts in the database")?,
        next_attempt_at: row.get("next_attempt_at"),
    })
}

fn event_from_row(row: &SqliteRow) -> StoreResult<Event> {
    let data: String = row.get("data");
    Ok(Event {
        id: row.get("id"),
        job_id: parse_uuid(row.get("job_id"))?,
        at: row.get("at"),
        kind: row.get("kind"),
        target: row.get("position"),
        data: serde_json::from_str(&data).context("bad event data in the database")?,
    })
}
