//! The audit trail's records: every submission (accepted or refused), cancel
//! and token reload, who made it and how it ended. Nothing secret goes in.

use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

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
