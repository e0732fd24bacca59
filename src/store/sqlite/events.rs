//! A job's history (written by the database's triggers) and its webhook
//! deliveries.

use anyhow::Context;

use super::super::rows::DueDeliveryRow;
use super::SqliteStore;
use crate::store::{DeliveryAttempt, DeliveryOutcome, DueDelivery, StoreResult, now};

impl SqliteStore {
    /// Deliveries whose next attempt is due, oldest first.
    pub async fn due_deliveries(&self, limit: u32) -> StoreResult<Vec<DueDelivery>> {
        let rows: Vec<DueDeliveryRow> = sqlx::query_as(
            "SELECT id, job_id, url, created_at, body, json_array_length(attempts) AS tries
             FROM deliveries WHERE state = 'pending' AND next_attempt_at <= ?
             ORDER BY next_attempt_at LIMIT ?",
        )
        .bind(now())
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .context("listing due deliveries")?;
        rows.into_iter().map(DueDeliveryRow::into_due).collect()
    }

    /// Keeps the body of a delivery's first attempt, so every retry sends
    /// (and signs) the very same bytes.
    pub async fn set_delivery_body(&self, id: &str, body: &str) -> StoreResult<String> {
        let kept = sqlx::query_scalar(
            "UPDATE deliveries SET body = COALESCE(body, ?) WHERE id = ? RETURNING body",
        )
        .bind(body)
        .bind(id)
        .fetch_one(&self.writer)
        .await
        .context("recording a delivery's body")?;
        Ok(kept)
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
             WHERE id = ? AND state = 'pending'",
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
