//! The audit trail: every submission (accepted or refused), cancel and token
//! reload, who made it and how it ended. Nothing secret goes in.

use anyhow::Context;
use sqlx::FromRow;
use uuid::Uuid;

use super::super::rows::AuditRow;
use super::SqliteStore;
use super::group_commit::Write;
use crate::store::{AuditEntry, AuditPage, StoreResult, now};

impl SqliteStore {
    /// Records an event; committed with the submissions written at the same
    /// time (`group_commit.rs`).
    pub async fn record_audit(&self, entry: AuditEntry) -> StoreResult<()> {
        self.batches.write(Write::Audit(entry)).await?;
        Ok(())
    }

    /// Events newest first; `before` is the last id of the previous page.
    pub async fn list_audit(&self, limit: u32, before: Option<Uuid>) -> StoreResult<AuditPage> {
        let rows = sqlx::query(
            "SELECT * FROM audit WHERE (?1 IS NULL OR id < ?1) ORDER BY id DESC LIMIT ?2",
        )
        .bind(before.map(|id| id.to_string()))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.reader)
        .await
        .context("listing audit events")?;
        let more = rows.len() > limit as usize;
        let events = rows
            .iter()
            .take(limit as usize)
            .map(|row| AuditRow::from_row(row)?.into_event())
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

/// Writes one audit record on `conn` (in the caller's transaction).
pub(super) async fn insert_audit(
    conn: &mut sqlx::SqliteConnection,
    entry: &AuditEntry,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO audit (id, at, actor, action, outcome, job_id, detail)
         VALUES (?, ?, ?, ?, ?, ?, ?)",
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
