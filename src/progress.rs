//! Live push progress, from the lanes to whoever follows a job's events.
//! Not stored: a follower that was not listening missed nothing it cannot
//! see in the job itself.

use serde::Serialize;
use tokio::sync::broadcast;
use utoipa::ToSchema;
use uuid::Uuid;

/// How far one target's push has come.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Progress {
    pub job_id: Uuid,
    /// The target's position in the job.
    pub target: i64,
    pub reference: String,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

/// Progress of every push under way, for every follower.
#[derive(Clone)]
pub struct ProgressHub {
    sender: broadcast::Sender<Progress>,
}

/// Updates kept for a follower that reads slowly; older ones are skipped.
const BACKLOG: usize = 1024;

impl Default for ProgressHub {
    fn default() -> Self {
        ProgressHub {
            sender: broadcast::channel(BACKLOG).0,
        }
    }
}

impl ProgressHub {
    pub fn publish(&self, progress: Progress) {
        // Nobody following is not a failure.
        let _ = self.sender.send(progress);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Progress> {
        self.sender.subscribe()
    }
}
