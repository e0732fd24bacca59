//! The audit trail: every submission (accepted or refused), cancel and token
//! reload, who made it and how it ended. Nothing secret goes in.

use anyhow::Context;
use sqlx::postgres::PgConnection;
use uuid::Uuid;

use super::super::rows::AuditRow;
use super::PgStore;
use crate::store::{AuditEntry, AuditPage, StoreResult, now};

impl PgStore {
    /// Records an event.
    pub async fn record_audit(&self, entry: AuditEntry) -> StoreResult<()> {
        let mut conn = self.pool.acquire().await?;
        insert_audit(&mut conn, &entry).await
    }

    /// Events newest first; `before` is the last id of the previous page.
    pub async fn list_audit(&self, limit: u32, before: Option<Uuid>) -> StoreResult<AuditPage> {
        let rows: Vec<AuditRow> = sqlx::query_as(
            "SELECT * FROM audit WHERE ($1::text IS NULL OR id < $1) ORDER BY id DESC LIMIT $2",
        )
        .bind(before.map(|id| id.to_string()))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await
        .context("listing audit events")?;
        let more = rows.len() > limit as usize;
        let events = rows
            .into_iter()
            .take(limit as usize)
            .map(AuditRow::into_event)
            .collect::<StoreResult<Vec<_>>>()?;
        let next_cursor = if more {
            events.last().map(|event| event.id.to_string())
        } else {
            None
        };
        Ok(AuditPage {
            events,
            next_cursor,
        })
    }
}

/// Writes one audit record on `conn` (in the caller's transaction, if any).
pub(super) async fn insert_audit(conn: &mut PgConnection, entry: &AuditEntry) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO audit (id, at, actor, action, outcome, job_id, detail)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(Uuid::now_v7().to_string())
    .bind(now())
    .bind(&entry.actor)
    .bind(entry.action)
    .bind(entry.outcome)
    .bind(entry.job_id.map(|id| id.to_string()))
    .bind(entry.detail.to_string())
    .execute(conn)
    .await
    .context("recording an audit event")?;
    Ok(())
}
