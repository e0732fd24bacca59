//! Job and target states, and how a job's state follows from its targets'.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TargetStatus {
    Pending,
    Tagging,
    Pushing,
    Untagging,
    Succeeded,
    Failed,
    Cancelled,
}

macro_rules! string_forms {
    ($type:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $type {
            pub fn as_str(self) -> &'static str {
                match self { $($type::$variant => $text),+ }
            }

            pub fn parse(value: &str) -> Option<Self> {
                match value { $($text => Some($type::$variant),)+ _ => None }
            }
        }
    };
}

string_forms!(JobStatus {
    Queued => "queued",
    Running => "running",
    Succeeded => "succeeded",
    Failed => "failed",
    Cancelled => "cancelled",
});

string_forms!(TargetStatus {
    Pending => "pending",
    Tagging => "tagging",
    Pushing => "pushing",
    Untagging => "untagging",
    Succeeded => "succeeded",
    Failed => "failed",
    Cancelled => "cancelled",
});

impl JobStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

impl TargetStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TargetStatus::Succeeded | TargetStatus::Failed | TargetStatus::Cancelled
        )
    }

    /// A step is under way: the target holds its reference on the engine.
    pub fn is_in_flight(self) -> bool {
        matches!(
            self,
            TargetStatus::Tagging | TargetStatus::Pushing | TargetStatus::Untagging
        )
    }
}

/// A job is terminal once every target is; it succeeded only if every target
/// did. A cancelled job that still published some targets says `cancelled`:
/// the targets tell which ones made it.
pub fn job_status(targets: &[TargetStatus], cancel_requested: bool) -> JobStatus {
    if targets.iter().all(|status| status.is_terminal()) {
        if targets
            .iter()
            .all(|&status| status == TargetStatus::Succeeded)
        {
            JobStatus::Succeeded
        } else if cancel_requested && targets.contains(&TargetStatus::Cancelled) {
            JobStatus::Cancelled
        } else {
            JobStatus::Failed
        }
    } else if targets
        .iter()
        .all(|&status| status == TargetStatus::Pending)
    {
        JobStatus::Queued
    } else {
        JobStatus::Running
    }
}

#[cfg(test)]
mod tests {
    use super::TargetStatus::*;
    use super::*;

    #[test]
    fn job_status_follows_targets() {
        assert_eq!(job_status(&[Pending, Pending], false), JobStatus::Queued);
        assert_eq!(job_status(&[Succeeded, Pending], false), JobStatus::Running);
        assert_eq!(job_status(&[Pushing, Pending], false), JobStatus::Running);
        assert_eq!(
            job_status(&[Succeeded, Succeeded], false),
            JobStatus::Succeeded
        );
        assert_eq!(job_status(&[Succeeded, Failed], false), JobStatus::Failed);
        assert_eq!(
            job_status(&[Succeeded, Cancelled], true),
            JobStatus::Cancelled
        );
        assert_eq!(
            job_status(&[Cancelled, Cancelled], true),
            JobStatus::Cancelled
        );
        assert_eq!(job_status(&[Failed, Succeeded], true), JobStatus::Failed);
    }

    #[test]
    fn string_forms_round_trip() {
        for status in [
            Pending, Tagging, Pushing, Untagging, Succeeded, Failed, Cancelled,
        ] {
            assert_eq!(TargetStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(JobStatus::parse("running"), Some(JobStatus::Running));
        assert_eq!(JobStatus::parse("nope"), None);
    }
}
