//! Counts for the metrics: read at each scrape, from indexes.

use anyhow::Context;
use sqlx::Row;

use super::PgStore;
use crate::domain::status::{JobStatus, TargetStatus};
use crate::store::{QueueCounts, StoreResult};

impl PgStore {
    pub async fn queue_counts(&self) -> StoreResult<QueueCounts> {
        let mut counts = QueueCounts::default();
        let jobs = sqlx::query("SELECT status, count(*) AS n FROM jobs GROUP BY status")
            .fetch_all(&self.pool)
            .await
            .context("counting jobs")?;
        for row in jobs {
            if let Some(status) = JobStatus::parse(row.get("status")) {
                counts.jobs.insert(status, row.get("n"));
            }
        }
        let targets = sqlx::query(
            "SELECT status, count(*) AS n FROM targets
             WHERE status IN ('pending', 'tagging', 'pushing', 'untagging') GROUP BY status",
        )
        .fetch_all(&self.pool)
        .await
        .context("counting targets")?;
        for row in targets {
            let n: i64 = row.get("n");
            match TargetStatus::parse(row.get("status")) {
                Some(TargetStatus::Pending) => counts.targets_queued += n,
                Some(status) if status.is_in_flight() => counts.targets_in_flight += n,
                _ => {}
            }
        }
        Ok(counts)
    }
}
