//! The retention task: deletes finished jobs older than `--retention`, a
//! small batch at a time, so the database stops growing without the writer
//! ever being held for long.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::store::{Deleted, Store, format_time};

/// Jobs (and audit records) deleted per transaction, at most; fewer jobs
/// when they have many targets.
const BATCH: u32 = 200;
/// A pause between batches while a backlog is worked off, so claims and
/// submissions get the writer in between.
const BETWEEN_BATCHES: Duration = Duration::from_millis(50);

/// How often old jobs are looked for: a tenth of the retention, between a
/// second and ten minutes, so a short retention (as in tests) is kept
/// closely and a long one costs nothing.
pub fn interval(retention: Duration) -> Duration {
    (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(600))
}

/// Runs until `stop`.
pub async fn run(store: Store, retention: Duration, stop: CancellationToken) {
    let every = interval(retention);
    loop {
        sweep(&store, retention, &stop).await;
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// `retention` before now, or `None` if that is before any time there is
/// (a retention of a million years keeps everything; it must not panic).
fn before_now(retention: Duration) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::now_utc().checked_sub(time::Duration::try_from(retention).ok()?)
}

/// Deletes everything past retention now, batch by batch.
async fn sweep(store: &Store, retention: Duration, stop: &CancellationToken) {
    let Some(cutoff) = before_now(retention) else {
        return;
    };
    let cutoff = format_time(cutoff);
    // A job whose webhook is still pending is kept for up to a second
    // retention period: far longer than any `--webhook-max-age` in use, so
    // only deliveries nobody tries any more (no webhook secret since a
    // restart) are cut short.
    let pending_cutoff = retention
        .checked_mul(2)
        .and_then(before_now)
        .map_or_else(|| "0000".to_owned(), format_time);
    let mut total = Deleted::default();
    loop {
        match store
            .delete_finished_before(&cutoff, &pending_cutoff, BATCH)
            .await
        {
            Ok(deleted) => {
                total.jobs += deleted.jobs;
                total.audit += deleted.audit;
                total.seeds += deleted.seeds;
                if !deleted.more
                    && deleted.audit < u64::from(BATCH)
                    && deleted.seeds < u64::from(BATCH)
                {
                    break;
                }
            }
            Err(error) => {
                warn!(error = format!("{error:#}"), "deleting jobs past retention");
                break;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(BETWEEN_BATCHES) => {}
            _ = stop.cancelled() => break,
        }
    }
    if total != Deleted::default() {
        info!(
            jobs = total.jobs,
            audit = total.audit,
            seeds = total.seeds,
            older_than = %cutoff,
            "deleted finished jobs past retention"
        );
    }
}
