//! In-memory cancel signals for the jobs the lanes are working on, so a
//! cancel can stop a push mid-stream rather than after it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Clone, Default)]
pub struct Cancellations {
    jobs: Arc<Mutex<HashMap<Uuid, (CancellationToken, usize)>>>,
}

impl Cancellations {
    /// The job's token, held for as long as the guard lives.
    pub fn register(&self, job_id: Uuid) -> CancelGuard {
        let mut jobs = self
            .jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = jobs
            .entry(job_id)
            .or_insert_with(|| (CancellationToken::new(), 0));
        entry.1 += 1;
        CancelGuard {
            cancellations: self.clone(),
            job_id,
            token: entry.0.clone(),
        }
    }

    /// Signals the lanes working on the job, if any.
    pub fn cancel(&self, job_id: Uuid) {
        let jobs = self
            .jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((token, _)) = jobs.get(&job_id) {
            token.cancel();
        }
    }
}

pub struct CancelGuard {
    cancellations: Cancellations,
    job_id: Uuid,
    token: CancellationToken,
}

impl CancelGuard {
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        let mut jobs = self
            .cancellations
            .jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(entry) = jobs.get_mut(&self.job_id) {
            entry.1 -= 1;
            if entry.1 == 0 {
                jobs.remove(&self.job_id);
            }
        }
    }
}
