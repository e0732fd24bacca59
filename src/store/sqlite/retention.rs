//! Retention: finished jobs past their time go, with everything of theirs.

use anyhow::Context;
use sqlx::Row;

use super::SqliteStore;
use crate::store::{Deleted, StoreResult};

/// Targets one batch may delete (with their events, about six rows each):
/// a batch of jobs with hundreds of targets each must not hold the writer
/// any longer than one of small jobs.
const TARGETS_PER_BATCH: i64 = 2000;

impl SqliteStore {
    /// Deletes up to `batch` jobs (fewer if they have many targets) that
    /// finished before `cutoff` (an RFC 3339 time) with their targets,
    /// images, events and deliveries, and up to
    /// `batch` audit records and seeds older than it. One short transaction: the
    /// writer is never held for long, whatever the backlog. A job whose
    /// webhook is still being tried stays until that ends, unless it
    /// finished before `pending_cutoff` too: a delivery nobody sends (the
    /// service restarted without a webhook secret) must not keep its job
    /// forever. Its idempotency key, kept on the job, goes with it.
    pub async fn delete_finished_before(
        &self,
        cutoff: &str,
        pending_cutoff: &str,
        batch: u32,
    ) -> StoreResult<Deleted> {
        let mut tx = self.writer.begin().await?;
        let found: Vec<(String, i64)> = sqlx::query(
            "SELECT id, (SELECT count(*) FROM targets WHERE targets.job_id = jobs.id) AS targets
             FROM jobs
             WHERE finished_at IS NOT NULL AND finished_at < ?
               AND status IN ('succeeded', 'failed', 'cancelled')
               AND (finished_at < ?
                    OR NOT EXISTS (SELECT 1 FROM deliveries
                                   WHERE deliveries.job_id = jobs.id AND state = 'pending'))
             ORDER BY finished_at LIMIT ?",
        )
        .bind(cutoff)
        .bind(pending_cutoff)
        .bind(i64::from(batch))
        .fetch_all(&mut *tx)
        .await
        .context("finding jobs past retention")?
        .iter()
        .map(|row| (row.get("id"), row.get("targets")))
        .collect();
        let mut targets = 0;
        let ids: Vec<&String> = found
            .iter()
            .take_while(|(_, count)| {
                let first = targets == 0;
                targets += count;
                first || targets <= TARGETS_PER_BATCH
            })
            .map(|(id, _)| id)
            .collect();
        let more = ids.len() < found.len() || found.len() == batch as usize;
        let ids = serde_json::to_string(&ids)?;
        for table in ["events", "deliveries", "targets", "job_images"] {
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE job_id IN (SELECT value FROM json_each(?))"
            ))
            .bind(&ids)
            .execute(&mut *tx)
            .await
            .with_context(|| format!("deleting old jobs' {table}"))?;
        }
        let jobs = sqlx::query("DELETE FROM jobs WHERE id IN (SELECT value FROM json_each(?))")
            .bind(&ids)
            .execute(&mut *tx)
            .await
            .context("deleting old jobs")?
            .rows_affected();
        let audit = sqlx::query(
            "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE at < ? ORDER BY at LIMIT ?)",
        )
        .bind(cutoff)
        .bind(i64::from(batch))
        .execute(&mut *tx)
        .await
        .context("deleting old audit records")?
        .rows_affected();
        let seeds = sqlx::query(
            "DELETE FROM seeds WHERE rowid IN
                 (SELECT rowid FROM seeds WHERE recorded_at < ? ORDER BY recorded_at LIMIT ?)",
        )
        .bind(cutoff)
        .bind(i64::from(batch))
        .execute(&mut *tx)
        .await
        .context("deleting old seeds")?
        .rows_affected();
        tx.commit().await.context("committing a retention batch")?;
        Ok(Deleted {
            jobs,
            audit,
            seeds,
            more,
        })
    }
}
