//! A job's history (written by the database's triggers, numbered at
//! commit) and its webhook deliveries, which one instance at a time takes.

use std::time::Duration;

use anyhow::Context;
use sqlx::{FromRow, Row};

use super::super::rows::DueDeliveryRow;
use super::PgStore;
use crate::store::{DeliveryAttempt, DeliveryOutcome, DueDelivery, StoreResult};

/// How far a delivery handed to this instance is put off for the others:
/// longer than an attempt may take. The attempt's outcome then sets its
/// next attempt.
const TAKEN_FOR: Duration = Duration::from_secs(60);

impl PgStore {
    /// Deliveries whose next attempt is due, oldest first, taken for this
    /// instance: in the same statement their next attempt moves a little
    /// into the future, so no other instance sends them meanwhile (rows
    /// another instance is taking are skipped, not waited for).
    pub async fn due_deliveries(&self, limit: u32) -> StoreResult<Vec<DueDelivery>> {
        // Due by the database's clock, the one the trigger that makes a
        // delivery writes its first time with.
        let rows = sqlx::query(
            "WITH due AS (
                 SELECT id, next_attempt_at AS due_at FROM deliveries
                 WHERE state = 'pending' AND next_attempt_at <= publishd_now()
                 ORDER BY next_attempt_at LIMIT $1
                 FOR UPDATE SKIP LOCKED)
             UPDATE deliveries d
             SET next_attempt_at = to_char((clock_timestamp() + make_interval(secs => $2))
                                               AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')
             FROM due WHERE d.id = due.id
             RETURNING d.id, d.job_id, d.url, d.created_at, d.body,
                       jsonb_array_length(d.attempts::jsonb)::bigint AS tries, due.due_at",
        )
        .bind(i64::from(limit))
        .bind(TAKEN_FOR.as_secs_f64())
        .fetch_all(&self.pool)
        .await
        .context("taking due deliveries")?;
        let mut due = rows
            .iter()
            .map(|row| {
                let due_at: String = row.get("due_at");
                Ok((due_at, DueDeliveryRow::from_row(row)?.into_due()?))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        due.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.id.cmp(&b.1.id)));
        Ok(due.into_iter().map(|(_, delivery)| delivery).collect())
    }

    /// Keeps the body of a delivery's first attempt, so every retry sends
    /// (and signs) the very same bytes.
    pub async fn set_delivery_body(&self, id: &str, body: &str) -> StoreResult<String> {
        let kept = sqlx::query_scalar(
            "UPDATE deliveries SET body = COALESCE(body, $1) WHERE id = $2 RETURNING body",
        )
        .bind(body)
        .bind(id)
        .fetch_one(&self.pool)
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
            "UPDATE deliveries SET attempts = (attempts::jsonb || jsonb_build_array($1::jsonb))::text,
                                   state = $2, next_attempt_at = $3
             WHERE id = $4 AND state = 'pending'",
        )
        .bind(serde_json::to_string(attempt)?)
        .bind(state)
        .bind(next)
        .bind(id)
        .execute(&self.pool)
        .await
        .context("recording a delivery attempt")?;
        Ok(())
    }
}
