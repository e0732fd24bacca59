//! Retention: finished jobs past their time go, with everything of theirs.

use anyhow::Context;
use sqlx::Row;

use super::PgStore;
use crate::store::{Deleted, StoreResult};

/// Targets one batch may delete (with their events, about six rows each).
const TARGETS_PER_BATCH: i64 = 2000;

impl PgStore {
    /// Deletes up to `batch` jobs (fewer if they have many targets) that
    /// finished before `cutoff` with their targets, images, events and
    /// deliveries, and up to `batch` audit records and seeds older than it,
    /// in one short transaction. A job whose webhook is still being tried
    /// stays until that ends, unless it finished before `pending_cutoff` too.
    /// Jobs another instance's retention is deleting are skipped.
    pub async fn delete_finished_before(
        &self,
        cutoff: &str,
        pending_cutoff: &str,
        batch: u32,
    ) -> StoreResult<Deleted> {
        let mut tx = self.pool.begin().await?;
        let found: Vec<(String, i64)> = sqlx::query(
            "SELECT id, (SELECT count(*) FROM targets WHERE targets.job_id = jobs.id) AS targets
             FROM jobs
             WHERE finished_at IS NOT NULL AND finished_at < $1
               AND status IN ('succeeded', 'failed', 'cancelled')
               AND (finished_at < $2
                    OR NOT EXISTS (SELECT 1 FROM deliveries
                                   WHERE deliveries.job_id = jobs.id AND state = 'pending'))
             ORDER BY finished_at LIMIT $3
             FOR UPDATE SKIP LOCKED",
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
        let ids: Vec<String> = found
            .iter()
            .take_while(|(_, count)| {
                let first = targets == 0;
                targets += count;
                first || targets <= TARGETS_PER_BATCH
            })
            .map(|(id, _)| id.clone())
            .collect();
        let more = ids.len() < found.len() || found.len() == batch as usize;
        for table in ["events", "deliveries", "targets", "job_images"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE job_id = ANY($1)"))
                .bind(&ids)
                .execute(&mut *tx)
                .await
                .with_context(|| format!("deleting old jobs' {table}"))?;
        }
        let jobs = sqlx::query("DELETE FROM jobs WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await
            .context("deleting old jobs")?
            .rows_affected();
        let audit = sqlx::query(
            "DELETE FROM audit WHERE id IN
                 (SELECT id FROM audit WHERE at < $1 ORDER BY at LIMIT $2)",
        )
        .bind(cutoff)
        .bind(i64::from(batch))
        .execute(&mut *tx)
        .await
        .context("deleting old audit records")?
        .rows_affected();
        let seeds = sqlx::query(
            "DELETE FROM seeds WHERE (source_image_id, registry) IN
                 (SELECT source_image_id, registry FROM seeds
                  WHERE recorded_at < $1 ORDER BY recorded_at LIMIT $2)",
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
