//! Following a job over its event stream (`GET /api/v1/jobs/{id}/events`)
//! to its end, through restarts of the service and interrupts of the user.
//!
//! Every event carries an id; a broken stream is opened again with the last
//! one as `Last-Event-ID`, which resumes exactly after it, so no step is
//! lost or told twice. A stream the service ends on purpose (its time is
//! up: a `reopen` event) is opened again at once, without a word. The
//! stream ends after the job's terminal event; the job is then read once
//! for its final state.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use tokio::signal::unix::{Signal, SignalKind, signal};

use super::Failure;
use super::report::{Steps, is_terminal};
use super::service::{Answer, Service, root_cause};
use crate::cli::InterruptArgs;

/// The service sends a keep-alive comment every 10 s while a job is idle: a
/// connection that has sent no bytes at all for this long is dead even if
/// it is not closed.
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
            let mut stream = LiveStream::new(response.bytes_stream(), SILENCE);
            // Why the stream broke; `None`: the service asked for a reopen.
            let why = loop {
                let left = self.service.left();
                if left.is_zero() {
                    return Err(Failure::unreachable(anyhow!(
                        "job {} had not ended after {}s (it goes on)",
                        self.id,
                        self.service.wait_timeout
                    )));
                }
                let event = match stream.next(left).await {
                    // The deadline, checked above.
                    Next::Deadline => continue,
                    Next::Silent => {
                        break Some(format!("no event or keep-alive for {}s", SILENCE.as_secs()));
                    }
                    Next::Ended => {
                        break Some("the event stream ended before the job did".to_owned());
                    }
                    Next::Failed(EventStreamError::Transport(error)) => {
                        break Some(format!("event stream broken ({})", root_cause(&error)));
                    }
                    Next::Failed(error) => {
                        break Some(format!("event stream unreadable ({error})"));
                    }
                    Next::Event(event) if event.event == "reopen" => break None,
                    Next::Event(event) => event,
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
            if let Some(why) = why {
                self.service.pause(&doing, &why, None).await?;
            }
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
            _ => return Err(Failure::refusal(&format!("cancelling job {id}"), &answer)),
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

/// The events of one connection, and when its last bytes came. The
/// service's keep-alives are SSE comments, which the parser drops: they
/// never become an event, so liveness is measured on the bytes, before they
/// are parsed.
struct LiveStream<E> {
    events: Pin<Box<dyn Stream<Item = Result<Event, EventStreamError<E>>> + Send>>,
    last_bytes: Arc<Mutex<Instant>>,
    silence: Duration,
}

/// What waiting on a `LiveStream` came to.
enum Next<E> {
    Event(Event),
    Failed(EventStreamError<E>),
    /// The connection was closed.
    Ended,
    /// No bytes at all (not even a keep-alive) for the silence limit.
    Silent,
    /// The time given ran out first.
    Deadline,
}

impl<E: Send + 'static> LiveStream<E> {
    fn new<B: AsRef<[u8]>>(
        bytes: impl Stream<Item = Result<B, E>> + Send + 'static,
        silence: Duration,
    ) -> LiveStream<E> {
        let last_bytes = Arc::new(Mutex::new(Instant::now()));
        let seen = last_bytes.clone();
        let events = bytes
            .inspect(move |_| *seen.lock().expect("not poisoned") = Instant::now())
            .eventsource();
        LiveStream {
            events: Box::pin(events),
            last_bytes,
            silence,
        }
    }

    /// The next event, unless the stream ends, breaks or stays silent for
    /// the silence limit, or `left` runs out first.
    async fn next(&mut self, left: Duration) -> Next<E> {
        let deadline = Instant::now() + left;
        loop {
            let quiet_until = *self.last_bytes.lock().expect("not poisoned") + self.silence;
            let now = Instant::now();
            if now >= deadline {
                return Next::Deadline;
            }
            if now >= quiet_until {
                return Next::Silent;
            }
            // `next` is cancel-safe: a partial event stays buffered.
            match tokio::time::timeout(quiet_until.min(deadline) - now, self.events.next()).await {
                // Bytes (a keep-alive) may have come meanwhile: look again.
                Err(_) => continue,
                Ok(None) => return Next::Ended,
                Ok(Some(Ok(event))) => return Next::Event(event),
                Ok(Some(Err(error))) => return Next::Failed(error),
            }
        }
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

#[cfg(test)]
mod tests {
    use futures_util::stream;

    use super::*;

    const LIMIT: Duration = Duration::from_millis(300);

    /// `chunks`, one every `every`, then an open connection that sends
    /// nothing.
    fn slow_bytes(
        chunks: Vec<&'static str>,
        every: Duration,
    ) -> impl Stream<Item = Result<&'static str, std::io::Error>> + Send + 'static {
        stream::iter(chunks)
            .then(move |chunk| async move {
                tokio::time::sleep(every).await;
                Ok(chunk)
            })
            .chain(stream::pending())
    }

    #[tokio::test]
    async fn keep_alive_comments_keep_a_quiet_stream_alive() {
        // Ten keep-alives 100 ms apart outlast a 300 ms limit three times.
        let mut chunks = vec![": keep-alive\n\n"; 10];
        chunks.push("id: 7\nevent: job\ndata: {}\n\n");
        let mut live = LiveStream::new(slow_bytes(chunks, Duration::from_millis(100)), LIMIT);
        let started = Instant::now();
        match live.next(Duration::from_secs(10)).await {
            Next::Event(event) => {
                assert_eq!((event.id.as_str(), event.event.as_str()), ("7", "job"))
            }
            _ => panic!("no event"),
        }
        assert!(started.elapsed() >= Duration::from_millis(1000));
    }

    #[tokio::test]
    async fn a_silent_stream_is_dead_and_the_deadline_comes_first() {
        let mut live = LiveStream::new(slow_bytes(vec![": hi\n\n"], Duration::ZERO), LIMIT);
        let started = Instant::now();
        assert!(matches!(
            live.next(Duration::from_secs(10)).await,
            Next::Silent
        ));
        let took = started.elapsed();
        assert!(took >= LIMIT && took < LIMIT * 3, "{took:?}");

        let mut live = LiveStream::new(slow_bytes(vec![], Duration::ZERO), LIMIT);
        assert!(matches!(
            live.next(Duration::from_millis(50)).await,
            Next::Deadline
        ));
        assert!(matches!(
            live.next(Duration::from_secs(10)).await,
            Next::Silent
        ));

        let closed = stream::iter(vec![Ok::<_, std::io::Error>("data: x\n\n")]);
        let mut live = LiveStream::new(closed, LIMIT);
        assert!(matches!(live.next(LIMIT).await, Next::Event(_)));
        assert!(matches!(live.next(LIMIT).await, Next::Ended));
    }
}
