//! The exit codes of the client commands: what a pipeline branches on.

use std::fmt::Write;

/// How a client command ended. One place for the codes, so the help text,
/// `docs/cli.md` and the process agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The job succeeded (every target published); for `status`, `list`
    /// and `cancel`: the service answered.
    Succeeded,
    /// The job failed: a target failed.
    Failed,
    /// The command line is wrong (clap's own code for usage errors).
    Usage,
    /// The job was cancelled.
    Cancelled,
    /// The service refused the request with a 4xx: an invalid job, a missing
    /// or wrong token, a scope that forbids it, no such job, a finished job
    /// to cancel.
    Refused,
    /// The service could not be reached or understood, or the job did not
    /// end, within `--wait-timeout` (a service that never answered: within
    /// `--connect-timeout`): the outcome is unknown.
    Unreachable,
    /// Interrupted (SIGINT or SIGTERM) while following a job: the client
    /// detached and the job goes on (or was cancelled on request first).
    Detached,
}

impl Exit {
    /// Every code, in the order the help lists them.
    pub const ALL: [Exit; 7] = [
        Exit::Succeeded,
        Exit::Failed,
        Exit::Usage,
        Exit::Cancelled,
        Exit::Refused,
        Exit::Unreachable,
        Exit::Detached,
    ];

    pub fn code(self) -> i32 {
        match self {
            Exit::Succeeded => 0,
            Exit::Failed => 1,
            Exit::Usage => 2,
            Exit::Cancelled => 3,
            Exit::Refused => 4,
            Exit::Unreachable => 5,
            // 128 + SIGINT, what shells report for a Ctrl-C.
            Exit::Detached => 130,
        }
    }

    fn meaning(self) -> &'static str {
        match self {
            Exit::Succeeded => "succeeded: every target published (status, list, cancel: answered)",
            Exit::Failed => "failed: a target failed",
            Exit::Usage => "usage: the command line is wrong",
            Exit::Cancelled => "cancelled: the job was cancelled",
            Exit::Refused => {
                "refused: the service answered 4xx (invalid job, unauthorized, forbidden, \
                 no such job, already finished)"
            }
            Exit::Unreachable => {
                "unreachable: the service could not be reached, or the job did not end, \
                 within --wait-timeout (never answered: within --connect-timeout); the outcome \
                 is unknown"
            }
            Exit::Detached => {
                "detached: interrupted (Ctrl-C, SIGTERM) while following; the job goes on \
                 unless --cancel-on-interrupt"
            }
        }
    }

    /// The code of a job that ended in `status`.
    pub fn of_job_status(status: &str) -> Exit {
        match status {
            "succeeded" => Exit::Succeeded,
            "cancelled" => Exit::Cancelled,
            _ => Exit::Failed,
        }
    }

    /// The table `--help` shows.
    pub fn help() -> String {
        let mut help = String::from("Exit codes:\n");
        for exit in Exit::ALL {
            let _ = writeln!(help, "  {:<4} {}", exit.code(), exit.meaning());
        }
        help
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_listed() {
        let mut codes: Vec<i32> = Exit::ALL.iter().map(|exit| exit.code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes, [0, 1, 2, 3, 4, 5, 130]);
        let help = Exit::help();
        for exit in Exit::ALL {
            assert!(help.contains(&format!("  {:<4} ", exit.code())), "{help}");
        }
    }

    #[test]
    fn a_job_status_maps_to_its_code() {
        assert_eq!(Exit::of_job_status("succeeded"), Exit::Succeeded);
        assert_eq!(Exit::of_job_status("failed"), Exit::Failed);
        assert_eq!(Exit::of_job_status("cancelled"), Exit::Cancelled);
    }
}
