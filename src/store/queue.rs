//! The queue as the worker lanes see it, whichever database keeps it.
//!
//! Every write a lane makes names its [`Claim`]. A claim stops being the
//! target's when its lease runs out and recovery takes the target over (or
//! the target ends); a write for such a claim changes nothing and answers
//! [`ClaimLost`], so a lane that lost its lease can never overwrite what the
//! next run of its target recorded.

use super::StoreResult;

/// A lane's hold on one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub target_id: i64,
    pub token: String,
}

/// A write for a claim that is no longer the target's.
#[derive(Debug, thiserror::Error)]
#[error(
    "target {target_id} is no longer held by this run: its lease ran out and it was taken over"
)]
pub struct ClaimLost {
    pub target_id: i64,
}

impl ClaimLost {
    /// Whether `error` (from any store call) says the claim was lost.
    pub fn is(error: &anyhow::Error) -> bool {
        error.downcast_ref::<ClaimLost>().is_some()
    }
}

/// What binding a `content` target's reference did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// The target holds the reference and may go on.
    Bound,
    /// Another target is working on the reference: back in the queue.
    Busy,
    /// The reference was busy and the job was cancelled: the target is
    /// cancelled (it would never be claimed again).
    Cancelled,
}

/// Why a claimed target goes back without an outcome.
#[derive(Debug, Clone)]
pub enum Release {
    /// The service is stopping and its run cleaned up: not a failed run,
    /// nor a try (a run stops only before a try begins: before its first
    /// step, or while it waits to retry one).
    Stopped,
    /// Its run died (lane panic, process death, lost lease) and recovery
    /// cleaned up after it, as far as it could (`warning` says what it could
    /// not). After `max_runs` such runs the target is a dead letter.
    Abandoned {
        warning: Option<String>,
        max_runs: u32,
    },
}

/// What became of a released target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    Queued,
    Cancelled,
    DeadLetter,
}

/// Which claims recovery may take over.
#[derive(Debug, Clone, Copy)]
pub enum TakeOver<'a> {
    /// Any target in flight: at start-up, every one belongs to a dead process.
    Any,
    /// Only if `token` still holds it and its lease has run out.
    Expired { token: &'a str },
    /// Only if `token` still holds it: its own lane is gone (it panicked) or
    /// gave it up.
    Held { token: &'a str },
}

/// A fenced write that changed no row was made for a lost claim.
pub(super) fn fenced(rows_affected: u64, claim: &Claim) -> StoreResult<()> {
    if rows_affected == 0 {
        return Err(ClaimLost {
            target_id: claim.target_id,
        }
        .into());
    }
    Ok(())
}
