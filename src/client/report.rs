//! What the client commands print as text: a line per step while a job is
//! followed (stderr), live push progress on a terminal, and the results
//! (stdout): each reference with its digest, a job, a page of jobs.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

/// Without a terminal, a push's progress is logged at most this often: a
/// CI log shows a long push moving without a line per update.
const LOG_PROGRESS_EVERY: Duration = Duration::from_secs(15);

/// The steps of a followed job as they happen, on stderr.
pub struct Steps {
    /// Live lines, one per pushing target; hidden without a terminal.
    live: MultiProgress,
    terminal: bool,
    /// Each target's reference and last status, by its position in the job.
    targets: Vec<(String, String)>,
    bars: HashMap<i64, ProgressBar>,
    /// Without a terminal: when each pushing target last logged progress.
    logged: HashMap<i64, Instant>,
}

impl Steps {
    /// For `job` as answered by the API.
    pub fn new(job: &Value) -> Steps {
        let terminal = std::io::stderr().is_terminal();
        let target = if terminal {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Steps {
            live: MultiProgress::with_draw_target(target),
            terminal,
            targets: targets(job)
                .map(|target| {
                    let reference = text(target, "reference").to_owned();
                    (reference, text(target, "status").to_owned())
                })
                .collect(),
            bars: HashMap::new(),
            logged: HashMap::new(),
        }
    }

    /// A line above the live ones.
    pub fn line(&self, line: &str) {
        self.live.suspend(|| eprintln!("{line}"));
    }

    /// Reports one event of the job's stream (`kind` and its JSON `data`).
    pub fn event(&mut self, kind: &str, data: &Value) {
        let position = data["target"].as_i64();
        match kind {
            "target" => {
                let change = &data["data"];
                let status = text(change, "status");
                if let Some(target) = self.target(position) {
                    target.1 = status.to_owned();
                    // A `content` target is named once its source is read:
                    // its reference is null in the job as submitted.
                    if let Some(reference) = change["reference"].as_str() {
                        reference.clone_into(&mut target.0);
                    }
                }
                if status != "pushing" {
                    self.stop_progress(position);
                } else if let Some(position) = position {
                    self.logged.insert(position, Instant::now());
                }
                // A `content` target is named only once its source is read.
                if !(status == "pending" && change["reference"].is_null()) {
                    let reference = change["reference"]
                        .as_str()
                        .unwrap_or_else(|| self.reference(position));
                    self.line(&step_line(status, reference, change));
                }
            }
            "attempt" => {
                let change = &data["data"];
                self.line(&format!(
                    "{:<10}{}: try {} of the {} step failed: {}",
                    "retry",
                    self.reference(position),
                    change["attempt"],
                    text(change, "step"),
                    text(change, "error"),
                ));
            }
            "cancel" => self.line(&format!("job {}: cancel requested", text(data, "job_id"))),
            "job" => {
                let status = text(&data["data"], "status");
                // Queued is where it was accepted; the end is reported with
                // the job's final state.
                if status != "queued" && !is_terminal(status) {
                    self.line(&format!("job {} {status}", text(data, "job_id")));
                }
            }
            "progress" => self.progress(data),
            _ => {}
        }
    }

    /// Removes the live lines (before the results, or on detaching).
    pub fn clear(&mut self) {
        for (_, bar) in self.bars.drain() {
            bar.finish_and_clear();
            self.live.remove(&bar);
        }
    }

    fn reference(&self, position: Option<i64>) -> &str {
        position
            .and_then(|position| self.targets.get(usize::try_from(position).ok()?))
            .map_or("?", |(reference, _)| reference)
    }

    fn target(&mut self, position: Option<i64>) -> Option<&mut (String, String)> {
        self.targets.get_mut(usize::try_from(position?).ok()?)
    }

    fn progress(&mut self, progress: &Value) {
        let Some(position) = progress["target"].as_i64() else {
            return;
        };
        // The service sends progress only between a target's `pushing` and
        // its next change; a server of another version may not.
        match self.target(Some(position)) {
            Some((_, status)) if matches!(status.as_str(), "pending" | "tagging" | "pushing") => {}
            _ => return,
        }
        let line = progress_line(
            text(progress, "reference"),
            progress["bytes_done"].as_u64().unwrap_or(0),
            progress["bytes_total"].as_u64().unwrap_or(0),
        );
        if self.terminal {
            let bar = self.bars.entry(position).or_insert_with(|| {
                let bar = ProgressBar::new_spinner()
                    .with_style(ProgressStyle::with_template("{wide_msg}").expect("a template"));
                self.live.add(bar)
            });
            bar.set_message(line);
        } else {
            let now = Instant::now();
            let last = self.logged.entry(position).or_insert(now);
            if now.duration_since(*last) >= LOG_PROGRESS_EVERY {
                *last = now;
                self.line(&line);
            }
        }
    }

    fn stop_progress(&mut self, position: Option<i64>) {
        let Some(position) = position else { return };
        self.logged.remove(&position);
        if let Some(bar) = self.bars.remove(&position) {
            bar.finish_and_clear();
            self.live.remove(&bar);
        }
    }
}

/// A target's change of status, e.g. `pushing   reg/acme/app:v1`.
fn step_line(status: &str, reference: &str, change: &Value) -> String {
    match status {
        "succeeded" => {
            let fresh = if change["up_to_date"] == true {
                " (up to date: not pushed)"
            } else {
                ""
            };
            format!("{status:<10}{reference}@{}{fresh}", text(change, "digest"))
        }
        "failed" | "cancelled" => match change["error"].as_str().filter(|error| *error != status) {
            Some(error) => format!("{status:<10}{reference}: {error}"),
            None => format!("{status:<10}{reference}"),
        },
        _ => format!("{status:<10}{reference}"),
    }
}

/// `pushing    25% 12.00 MiB of 48.00 MiB  reg/acme/app:v1`: the numbers
/// first, so that a narrow terminal cuts the reference, not them.
fn progress_line(reference: &str, done: u64, total: u64) -> String {
    match (done.min(total) * 100).checked_div(total) {
        Some(percent) => format!(
            "{:<10}{percent:>3}% {} of {}  {reference}",
            "pushing",
            HumanBytes(done),
            HumanBytes(total),
        ),
        // The total is not known (yet).
        None => format!("{:<10}{}  {reference}", "pushing", HumanBytes(done)),
    }
}

/// Each target of a job, as a pipeline reads it: `published REF@DIGEST`,
/// `up-to-date REF@DIGEST`, or its status and error.
pub fn results(job: &Value) -> String {
    targets(job)
        .map(|target| result_line(target) + "\n")
        .collect()
}

fn result_line(target: &Value) -> String {
    let reference = text(target, "reference");
    match text(target, "status") {
        "succeeded" => {
            // An up-to-date target was already in the registry: not pushed.
            let verb = if target["up_to_date"] == true {
                "up-to-date"
            } else {
                "published"
            };
            format!("{verb} {reference}@{}", text(target, "digest"))
        }
        // An error that only repeats the status ("cancelled") is left out.
        status => match target["error"].as_str().filter(|error| *error != status) {
            Some(error) => format!("{status} {reference}: {error}"),
            None => format!("{status} {reference}"),
        },
    }
}

/// `publishd status`: the job in a few lines.
pub fn job(job: &Value) -> String {
    let mut out = format!(
        "job {} {}\nrepo {} ({})\ncreated {}",
        text(job, "id"),
        text(job, "status"),
        text(job, "repo"),
        text(job, "repo_mode"),
        text(job, "created_at"),
    );
    if let Some(finished) = job["finished_at"].as_str() {
        out += &format!(", finished {finished}");
    }
    if job["cancel_requested"] == true {
        out += ", cancel requested";
    }
    out += "\n";
    if let Some(error) = job["error"].as_str() {
        out += &format!("error {error}\n");
    }
    out + &results(job)
}

/// `publishd list`: a line per job.
pub fn page(page: &Value) -> String {
    page["jobs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|job| {
            format!(
                "{}  {:<9}  {}  {}  {} targets\n",
                text(job, "id"),
                text(job, "status"),
                text(job, "created_at"),
                text(job, "repo"),
                targets(job).count()
            )
        })
        .collect()
}

pub fn is_terminal(status: &str) -> bool {
    matches!(status, "succeeded" | "failed" | "cancelled")
}

fn targets(job: &Value) -> impl Iterator<Item = &Value> {
    job["targets"].as_array().into_iter().flatten()
}

/// A text field of the API's JSON; `?` where it is missing.
pub fn text<'a>(value: &'a Value, name: &str) -> &'a str {
    value[name].as_str().unwrap_or("?")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn results_give_each_reference_with_its_digest_or_error() {
        let job = json!({"targets": [
            {"reference": "r/a:v1", "status": "succeeded", "digest": "sha256:1", "up_to_date": false},
            {"reference": "r/a:v2", "status": "succeeded", "digest": "sha256:2", "up_to_date": true},
            {"reference": "r/a:v3", "status": "failed", "error": "boom"},
            {"reference": "r/a:v4", "status": "cancelled", "error": "cancelled"},
        ]});
        assert_eq!(
            results(&job),
            "published r/a:v1@sha256:1\nup-to-date r/a:v2@sha256:2\nfailed r/a:v3: boom\ncancelled r/a:v4\n"
        );
    }

    #[test]
    fn a_content_target_is_named_by_its_events() {
        let job = json!({"targets": [{"reference": null, "status": "pending"}]});
        let mut steps = Steps::new(&job);
        assert_eq!(steps.reference(Some(0)), "?");
        steps.event(
            "target",
            &json!({"target": 0, "data": {"status": "pending", "reference": null}}),
        );
        assert_eq!(steps.reference(Some(0)), "?");
        steps.event(
            "target",
            &json!({"target": 0, "data": {"status": "tagging", "reference": "r/a:sha256-1"}}),
        );
        assert_eq!(steps.reference(Some(0)), "r/a:sha256-1");
        // A change without a reference keeps it.
        steps.event(
            "target",
            &json!({"target": 0, "data": {"status": "pushing"}}),
        );
        assert_eq!(steps.reference(Some(0)), "r/a:sha256-1");
        steps.clear();
    }

    #[test]
    fn steps_and_progress_read_as_lines() {
        let done = json!({"reference": "r/a:v1", "digest": "sha256:1", "up_to_date": true});
        assert_eq!(
            step_line("succeeded", "r/a:v1", &done),
            "succeeded r/a:v1@sha256:1 (up to date: not pushed)"
        );
        assert_eq!(
            step_line("pushing", "r/a:v1", &json!({"reference": "r/a:v1"})),
            "pushing   r/a:v1"
        );
        assert_eq!(
            progress_line("r/a:v1", 3 << 20, 12 << 20),
            "pushing    25% 3.00 MiB of 12.00 MiB  r/a:v1"
        );
        assert_eq!(
            progress_line("r/a:v1", 1024, 0),
            "pushing   1.00 KiB  r/a:v1"
        );
    }
}
