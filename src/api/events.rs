//! `/api/v1/jobs/{id}/events`: a job's history and live progress, as
//! Server-Sent Events (or, asked for JSON, the stored history at once).
//! Streams are bounded: so many open per token, each for so long (the
//! client resumes with `Last-Event-ID`), each closed when its token is
//! revoked; and a job's streams share one poller of its stored events.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;
use uuid::Uuid;

use super::AppState;
use super::auth::{Caller, bearer_digest};
use super::error::{ApiError, ErrorBody};
use super::jobs::{job_id, visible_job};
use crate::access::TokenTable;
use crate::domain::access::Principal;
use crate::domain::status::TargetStatus;
use crate::progress::Progress;
use crate::store::{Event, Store};

/// How often a followed job's poller looks for new stored events. Changes
/// are written by whichever process's lane made them, so the database is
/// the one place to watch; an indexed read of a few rows, once per job
/// however many follow it.
const POLL: Duration = Duration::from_millis(250);
/// Stored events read per look.
const PAGE: u32 = 500;
/// A comment line this often while nothing happens, so proxies and clients
/// keep an idle stream open.
const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// Events a slow reader may fall behind by before its stream waits.
const BUFFER: usize = 64;

/// A job's stored history.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobEvents {
    /// Oldest first.
    pub events: Vec<Event>,
}

/// Follow a job: its history, then its changes as they happen.
///
/// Server-Sent Events, one per change of the job or a target (`job`,
/// `target`, `cancel`), per failed try (`attempt`), and live push progress
/// (`progress`, a few a second per pushing target; not stored, so not
/// replayed). Each has an `id`; reconnecting with `Last-Event-ID` resumes
/// right after it. The stream ends after the job's terminal event; a
/// finished job's stream replays its history and ends. A stream open for
/// `--stream-max-age` ends with a `reopen` event (no id): reconnect with
/// the last id at once. A stream also ends when its token is revoked. With
/// `Accept: application/json` the stored history is answered as one JSON
/// document instead.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}/events",
    tag = "jobs",
    params(
        ("id" = String, Path, description = "Job id"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event"),
    ),
    responses(
        (status = 200, description = "The job's events",
         content(
             (String = "text/event-stream"),
             (JobEvents = "application/json"),
         )),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such job (or another token's)", body = ErrorBody),
        (status = 429, description = "The token has as many event streams open as it may \
         (`--max-streams-per-token`); see Retry-After", body = ErrorBody,
         headers(("Retry-After" = String, description = "Seconds to wait"))),
        (status = 503, description = "The database is busy; see Retry-After", body = ErrorBody,
         headers(("Retry-After" = String, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn job_events(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = job_id(&id)?;
    let job = visible_job(&state, &caller, id).await?;
    let mut resume = last_event_id(&headers);
    // An id past the job's last event is none of this job's (another
    // database's, or made up): replay everything rather than wait forever
    // for events that will never come.
    if resume.after > state.store.last_event_of(id).await?.unwrap_or(0) {
        resume = Resume::default();
    }
    let after = resume.after;
    if wants_json(&headers) {
        let mut events = Vec::new();
        let mut cursor = after;
        loop {
            let page = state.store.job_events(id, cursor, PAGE).await?;
            let full = page.len() == PAGE as usize;
            cursor = page.last().map_or(cursor, |event| event.id);
            events.extend(page);
            if !full {
                break;
            }
        }
        return Ok(Json(JobEvents { events }).into_response());
    }
    let slot = state.streams.open(&caller)?;
    let ended = job.status.is_terminal();
    let (sender, receiver) = mpsc::channel(BUFFER);
    let follow = Follow {
        store: state.store.clone(),
        job_id: id,
        owner: job.submitted_by.clone(),
        after,
        progress_seq: resume.progress_seq,
        // A client resuming in the middle of a push gets its progress.
        pushing: (0..)
            .zip(&job.targets)
            .filter(|(_, target)| target.status == TargetStatus::Pushing)
            .map(|(position, _)| position)
            .collect(),
        feed: (!ended).then(|| state.streams.feed(&state.store, id, &state.stopping)),
        progress: state.progress.subscribe(),
        token: bearer_digest(&headers),
        tokens: state.access.watch(),
        until: Instant::now() + state.streams.max_age,
        _slot: slot,
        stopping: state.stopping.clone(),
        sender,
    };
    tokio::spawn(follow.run());
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver
            .recv()
            .await
            .map(|event| (Ok::<_, Infallible>(event), receiver))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

/// Where a stream resumes: after stored event `after`, and after the
/// `progress_seq`-th progress event that followed it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Resume {
    after: i64,
    progress_seq: u64,
}

/// `Last-Event-ID` as the place it names: `N`, or `N:K` for the K-th
/// progress event after stored event N. Anything else starts from the
/// beginning, which repeats rather than loses.
fn last_event_id(headers: &HeaderMap) -> Resume {
    let Some(value) = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
    else {
        return Resume::default();
    };
    let (stored, progress) = match value.trim().split_once(':') {
        Some((stored, progress)) => (stored, Some(progress)),
        None => (value.trim(), None),
    };
    let after = stored.parse::<i64>().ok().filter(|id| *id >= 0);
    let progress_seq = progress.map(str::parse::<u64>);
    match (after, progress_seq) {
        (Some(after), None) => Resume {
            after,
            progress_seq: 0,
        },
        (Some(after), Some(Ok(progress_seq))) => Resume {
            after,
            progress_seq,
        },
        _ => Resume::default(),
    }
}

/// JSON when the client asks for it and not for an event stream.
fn wants_json(headers: &HeaderMap) -> bool {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    accept.contains("application/json") && !accept.contains("text/event-stream")
}

/// What the event streams of this instance share: how many each token has
/// open, the poller of each followed job, and how long a stream may last.
#[derive(Clone)]
pub struct EventStreams {
    per_token: usize,
    max_age: Duration,
    open: Arc<Mutex<HashMap<String, usize>>>,
    feeds: Arc<Mutex<HashMap<Uuid, watch::Receiver<Page>>>>,
}

/// A page of a job's stored events, as its poller read it: those after
/// event `after`.
#[derive(Debug, Clone, Default)]
struct Page {
    after: i64,
    events: Arc<[Event]>,
}

/// A token's hold on one of its streams, given back when the stream ends.
struct Slot {
    open: Arc<Mutex<HashMap<String, usize>>>,
    token: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = lock(&self.open);
        if let Some(count) = open.get_mut(&self.token) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.token);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl EventStreams {
    /// `per_token` streams open at once per token, each for `max_age`.
    pub fn new(per_token: usize, max_age: Duration) -> EventStreams {
        EventStreams {
            per_token,
            max_age,
            open: Arc::default(),
            feeds: Arc::default(),
        }
    }

    /// A stream for `caller`, if its token has one left (without tokens
    /// there is one caller, bounded by the connection cap alone).
    fn open(&self, caller: &Principal) -> Result<Option<Slot>, ApiError> {
        let Some(token) = &caller.name else {
            return Ok(None);
        };
        let mut open = lock(&self.open);
        let count = open.entry(token.clone()).or_default();
        if *count >= self.per_token {
            return Err(ApiError::TooManyStreams {
                who: token.clone(),
                limit: self.per_token,
            });
        }
        *count += 1;
        Ok(Some(Slot {
            open: self.open.clone(),
            token: token.clone(),
        }))
    }

    /// The pages of job `id`'s new events, from the job's one poller
    /// (started by its first follower, ended after its last).
    fn feed(&self, store: &Store, id: Uuid, stopping: &CancellationToken) -> watch::Receiver<Page> {
        let mut feeds = lock(&self.feeds);
        if let Some(feed) = feeds.get(&id) {
            return feed.clone();
        }
        let (sender, receiver) = watch::channel(Page::default());
        feeds.insert(id, receiver.clone());
        tokio::spawn(poll(
            self.feeds.clone(),
            store.clone(),
            id,
            sender,
            stopping.clone(),
        ));
        receiver
    }
}

/// Reads job `id`'s new events every `POLL` and hands each page to its
/// followers, until the job ends, its last follower leaves or the service
/// stops.
async fn poll(
    feeds: Arc<Mutex<HashMap<Uuid, watch::Receiver<Page>>>>,
    store: Store,
    id: Uuid,
    sender: watch::Sender<Page>,
    stopping: CancellationToken,
) {
    let done = || {
        lock(&feeds).remove(&id);
    };
    let mut cursor = match store.last_event_of(id).await {
        Ok(last) => last.unwrap_or(0),
        Err(error) => {
            // Its followers read the store themselves when it is gone.
            tracing::warn!(job_id = %id, error = format!("{error:#}"), "starting a job's event poller");
            done();
            return;
        }
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = stopping.cancelled() => return done(),
        }
        {
            // The map's receiver is the only one left: nobody follows. A
            // new follower clones it under this lock, so none is missed.
            let mut feeds = lock(&feeds);
            if sender.receiver_count() <= 1 {
                feeds.remove(&id);
                return;
            }
        }
        let events = match store.job_events(id, cursor, PAGE).await {
            Ok(events) => events,
            Err(error) => {
                tracing::warn!(job_id = %id, error = format!("{error:#}"), "reading a job's events for its streams");
                continue;
            }
        };
        let Some(last) = events.last() else {
            continue;
        };
        let ended = events.iter().any(Event::ends_job);
        let after = std::mem::replace(&mut cursor, last.id);
        sender.send_replace(Page {
            after,
            events: events.into(),
        });
        if ended {
            return done();
        }
    }
}

/// One follower's stream, fed until the job ends, the client goes away,
/// its time is up, its token is revoked or the service stops.
struct Follow {
    store: Store,
    job_id: Uuid,
    /// Who submitted the job: whom a token must still be allowed to see.
    owner: Option<String>,
    /// The last stored event sent.
    after: i64,
    /// Progress events sent since `after`: the `K` of their `N:K` ids.
    progress_seq: u64,
    /// The targets whose last stored event sent was `pushing`: progress of
    /// any other target is stale (it arrived after the push ended) and
    /// dropped, so a client never sees progress outside its push.
    pushing: HashSet<i64>,
    /// The job's poller; `None` for a job that had ended when the stream
    /// began (once its history is sent, there is nothing to wait for).
    feed: Option<watch::Receiver<Page>>,
    progress: broadcast::Receiver<Progress>,
    /// The digest of the stream's bearer token, and the tokens in force:
    /// a reload that no longer lets it see the job ends the stream.
    token: Option<[u8; 32]>,
    tokens: watch::Receiver<Arc<TokenTable>>,
    /// When the stream ends for its client to resume.
    until: Instant,
    _slot: Option<Slot>,
    stopping: CancellationToken,
    sender: mpsc::Sender<SseEvent>,
}

/// What sending events did.
enum Sent {
    /// All sent: the stream goes on.
    Open,
    /// The job's last event was sent, or the client left: the stream ends.
    Done,
}

impl Follow {
    async fn run(mut self) {
        if let Sent::Done = self.send_stored().await {
            return;
        }
        // A job that had ended: its history is all there is.
        let Some(mut feed) = self.feed.take() else {
            return;
        };
        loop {
            tokio::select! {
                changed = feed.changed() => {
                    let sent = match changed {
                        Ok(()) => {
                            let page = feed.borrow_and_update().clone();
                            self.send_page(&page).await
                        }
                        // The poller stopped (the job ended, or it could
                        // not start): the store has whatever it missed.
                        Err(_) => {
                            let sent = self.send_stored().await;
                            tokio::time::sleep(POLL).await;
                            sent
                        }
                    };
                    if let Sent::Done = sent {
                        return;
                    }
                }
                _ = self.stopping.cancelled() => return,
                _ = self.sender.closed() => return,
                _ = tokio::time::sleep_until(self.until) => {
                    // Its time is up: the client resumes from its last id.
                    let reopen = SseEvent::default()
                        .event("reopen")
                        .data(r#"{"reason":"the stream's time is up: reconnect with Last-Event-ID"}"#);
                    self.send(reopen).await;
                    return;
                }
                changed = self.tokens.changed() => {
                    let allowed = changed.is_ok() && self
                        .tokens
                        .borrow_and_update()
                        .identify(self.token.as_ref())
                        .is_some_and(|caller| caller.can_see(self.owner.as_deref()));
                    if !allowed {
                        return;
                    }
                }
                update = self.progress.recv() => match update {
                    Ok(progress) if progress.job_id == self.job_id => {
                        // The stored change that started this push goes
                        // first, even if the next look is not due yet.
                        if !self.pushing.contains(&progress.target)
                            && let Sent::Done = self.send_stored().await
                        {
                            return;
                        }
                        if self.pushing.contains(&progress.target)
                            && !self.send_progress(&progress).await
                        {
                            return;
                        }
                    }
                    // Others' progress, or updates a slow reader missed:
                    // the next one says where the push is.
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }

    /// Sends what the poller read, if it follows on from what was sent;
    /// reads the store from there otherwise (this stream fell behind, or
    /// the poller started after it).
    async fn send_page(&mut self, page: &Page) -> Sent {
        if page.after == self.after {
            self.send_events(page.events.iter().cloned()).await
        } else if page.events.last().is_some_and(|last| last.id > self.after) {
            self.send_stored().await
        } else {
            Sent::Open
        }
    }

    /// Sends every stored event after `after`, page by page.
    async fn send_stored(&mut self) -> Sent {
        loop {
            let page = match self.store.job_events(self.job_id, self.after, PAGE).await {
                Ok(page) => page,
                Err(error) => {
                    tracing::warn!(job_id = %self.job_id, error = format!("{error:#}"), "reading a job's events for a stream");
                    // The client reconnects with its Last-Event-ID.
                    return Sent::Done;
                }
            };
            let full = page.len() == PAGE as usize;
            if let Sent::Done = self.send_events(page).await {
                return Sent::Done;
            }
            if !full {
                return Sent::Open;
            }
        }
    }

    /// Sends `events`, the ones that follow `after`.
    async fn send_events(&mut self, events: impl IntoIterator<Item = Event>) -> Sent {
        for event in events {
            self.after = event.id;
            self.progress_seq = 0;
            if let (Some(target), "target") = (event.target, event.kind.as_str()) {
                if event.data["status"] == "pushing" {
                    self.pushing.insert(target);
                } else {
                    self.pushing.remove(&target);
                }
            }
            if !self.send(stored(&event)).await || event.ends_job() {
                return Sent::Done;
            }
        }
        Sent::Open
    }

    /// Whether the client is still there.
    async fn send_progress(&mut self, progress: &Progress) -> bool {
        // Progress ids count up after the last stored event, so a client
        // that resumes from one gets every stored event after it again.
        self.progress_seq += 1;
        let event = SseEvent::default()
            .event("progress")
            .id(format!("{}:{}", self.after, self.progress_seq))
            .json_data(progress);
        match event {
            Ok(event) => self.send(event).await,
            Err(_) => true,
        }
    }

    /// Whether the client is still there.
    async fn send(&self, event: SseEvent) -> bool {
        self.sender.send(event).await.is_ok()
    }
}

fn stored(event: &Event) -> SseEvent {
    let sse = SseEvent::default()
        .event(event.kind.as_str())
        .id(event.id.to_string());
    sse.json_data(event)
        .unwrap_or_else(|_| SseEvent::default().comment("an event that could not be written"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_event_ids_name_the_stored_event() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("last-event-id", value.parse().unwrap());
            last_event_id(&headers)
        };
        let at = |after, progress_seq| Resume {
            after,
            progress_seq,
        };
        assert_eq!(with("42"), at(42, 0));
        assert_eq!(with(" 42 "), at(42, 0));
        assert_eq!(with("42:7"), at(42, 7));
        assert_eq!(with("42:x"), at(0, 0));
        assert_eq!(with("junk"), at(0, 0));
        assert_eq!(with("-3"), at(0, 0));
        assert_eq!(last_event_id(&HeaderMap::new()), at(0, 0));
    }
}
