//! Following a job over its event stream (`GET /api/v1/jobs/{id}/events`)
//! to its end, through restarts of the service and interrupts of the user.
//!
//! Every event carries an id; a broken stream is opened again with the last
//! one as `Last-Event-ID`, which resumes exactly after it, so no step is
//! lost or told twice. The stream ends after the job's terminal event; the
//! job is then read once for its final state.

use std::time::Duration;

use anyhow::anyhow;
use eventsource_stream::{EventStreamError, Eventsource};
use futures_util::StreamExt;
use serde_json::Value;
use tokio::signal::unix::{Signal, SignalKind, signal};

use super::Failure;
use super::report::{Steps, is_terminal};
use super::service::{Answer, Service, root_cause};
use crate::cli::InterruptArgs;

/// The service sends a keep-alive every 10 s: a stream silent for this long
/// is dead even if its connection is not closed.
const SILENCE: Duration = Duration::from_secs(35);

/// Follows job `id` (as answered: `job`) to its end and answers its final
/// state; `interrupt` says what SIGINT and SIGTERM do meanwhile.
pub async fn follow(
    service: &mut Service,
    id: &str,
    job: &Value,
    interrupt: InterruptArgs,
) -> Result<Answer, Failure> {
    let mut signals = Signals::new()?;
    let mut follower = Follower {
        service,
        id: id.to_owned(),
        last_event_id: None,
        steps: Steps::new(job),
    };
    let outcome = match race(follower.run(), &mut signals).await {
        Raced::Done(outcome) => outcome,
        Raced::Interrupted if interrupt.cancel_on_interrupt => {
            follower.steps.line(&format!(
                "interrupted: cancelling job {id} (interrupt again to detach)"
            ));
            match race(follower.cancel(), &mut signals).await {
                Raced::Done(Ok(())) => match race(follower.run(), &mut signals).await {
                    Raced::Done(outcome) => outcome,
                    Raced::Interrupted => Err(follower.detach()),
                },
                Raced::Done(Err(failure)) => Err(failure),
                Raced::Interrupted => Err(follower.detach()),
            }
        }
        Raced::Interrupted => Err(follower.detach()),
    };
    follower.steps.clear();
    outcome
}

struct Follower<'a> {
    service: &'a mut Service,
    id: String,
    /// The last event seen: where a new stream resumes.
    last_event_id: Option<String>,
    steps: Steps,
}

impl Follower<'_> {
    /// Reads the stream, opened again whenever it breaks, until the job's
    /// terminal event or the deadline; answers the job as it ended.
    async fn run(&mut self) -> Result<Answer, Failure> {
        let doing = format!("following job {}", self.id);
        loop {
            let response = self
                .service
                .events(&self.id, self.last_event_id.as_deref())
                .await?;
            let mut stream = response.bytes_stream().eventsource();
            let why = loop {
                let left = self.service.left();
                if left.is_zero() {
                    return Err(Failure::unreachable(anyhow!(
                        "job {} had not ended after {}s (it goes on)",
                        self.id,
                        self.service.wait_timeout
                    )));
                }
                let event = match tokio::time::timeout(SILENCE.min(left), stream.next()).await {
                    // The deadline, checked above.
                    Err(_) if left <= SILENCE => continue,
                    Err(_) => break format!("no event for {}s", SILENCE.as_secs()),
                    Ok(None) => break "the event stream ended before the job did".to_owned(),
                    Ok(Some(Err(EventStreamError::Transport(error)))) => {
                        break format!("event stream broken ({})", root_cause(&error));
                    }
                    Ok(Some(Err(error))) => break format!("event stream unreadable ({error})"),
                    Ok(Some(Ok(event))) => event,
                };
                if !event.id.is_empty() {
                    self.last_event_id = Some(event.id);
                }
                let Ok(data) = serde_json::from_str::<Value>(&event.data) else {
                    continue;
                };
                self.steps.event(&event.event, &data);
                let status = data["data"]["status"].as_str().unwrap_or("");
                if event.event == "job" && is_terminal(status) {
                    let id = &self.id;
                    return self
                        .service
                        .expect(&format!("reading job {id}"), |client, base| {
                            client.get(format!("{base}/api/v1/jobs/{id}"))
                        })
                        .await;
                }
            };
            self.service.pause(&doing, &why, None).await?;
        }
    }

    /// Asks the service to cancel the job; one that has already finished is
    /// simply followed to its report.
    async fn cancel(&mut self) -> Result<(), Failure> {
        let id = &self.id;
        let answer = self
            .service
            .call(&format!("cancelling job {id}"), |client, base| {
                client.post(format!("{base}/api/v1/jobs/{id}/cancel"))
            })
            .await?;
        match answer.status.as_u16() {
            // The stream tells the cancel.
            200..=299 => {}
            409 => self.steps.line(&format!("job {id} had already finished")),
            status => {
                return Err(Failure::refused(anyhow!(
                    "cancelling job {id}: refused: {status} {}",
                    answer.json["error"]["message"].as_str().unwrap_or("")
                )));
            }
        }
        Ok(())
    }

    fn detach(&mut self) -> Failure {
        self.steps.clear();
        let id = &self.id;
        Failure::detached(anyhow!(
            "detached from job {id}; it goes on. Follow it again with: \
             publishd watch --server {} {id}",
            self.service.base
        ))
    }
}

/// SIGINT (Ctrl-C) and SIGTERM (what CI systems send a cancelled step),
/// caught only while a job is followed.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn new() -> Result<Signals, Failure> {
        let catch = |kind| {
            signal(kind)
                .map_err(|error| Failure::unreachable(anyhow!(error).context("catching signals")))
        };
        Ok(Signals {
            interrupt: catch(SignalKind::interrupt())?,
            terminate: catch(SignalKind::terminate())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

enum Raced<T> {
    Done(T),
    Interrupted,
}

/// Runs `work` unless a signal comes first (then `work` is dropped).
async fn race<T>(work: impl Future<Output = T>, signals: &mut Signals) -> Raced<T> {
    tokio::select! {
        biased;
        _ = signals.recv() => Raced::Interrupted,
        done = work => Raced::Done(done),
    }
}
