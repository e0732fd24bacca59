//! The audit trail: every submission (accepted or refused), cancel and token
//! reload, who made it and how it ended. Nothing secret goes in.

use anyhow::Context;
use serde::Serialize;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use utoipa::ToSchema;
use uuid::Uuid;

use super::group_commit::Write;
use super::{Store, StoreResult, now, parse_uuid};

/// One thing to record.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    /// The token's name; `None` without tokens.
    pub actor: Option<String>,
    /// `job.submit`, `job.cancel`, `tokens.reload`.
    pub action: &'static str,
    /// `accepted`, `replayed`, `refused`, `requested`, `reloaded`, `failed` …
    pub outcome: &'static str,
    pub job_id: Option<Uuid>,
    /// What else says what happened: the HTTP status, the field and rule of
    /// a refusal, its message.
    pub detail: serde_json::Value,
}

/// One recorded event, as answered.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditEvent {
    pub id: Uuid,
    #[schema(format = DateTime)]
    pub at: String,
    pub actor: Option<String>,
    pub action: String,
    pub outcome: String,
    pub job_id: Option<Uuid>,
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

/// A page of audit events, newest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditPage {
    pub events: Vec<AuditEvent>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

impl Store {
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
            .map(event_from_row)
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

fn event_from_row(row: &SqliteRow) -> StoreResult<AuditEvent> {
    let detail: String = row.get("detail");
    Ok(AuditEvent {
        id: parse_uuid(row.get("id"))?,
        at: row.get("at"),
        actor: row.get("actor"),
        action: row.get("action"),
        outcome: row.get("outcome"),
        job_id: row
            .get::<Option<String>, _>("job_id")
            .map(parse_uuid)
            .transpose()?,
        detail: serde_json::from_str(&detail).context("bad audit detail in the database")?,
    })
}
