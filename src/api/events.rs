//! `/api/v1/jobs/{id}/events`: a job's history and live progress, as
//! Server-Sent Events (or, asked for JSON, the stored history at once).

use std::collections::HashSet;
use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;
use uuid::Uuid;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::jobs::{job_id, visible_job};
use crate::domain::status::TargetStatus;
use crate::progress::Progress;
use crate::store::{Event, Store};

/// How often a stream looks for new stored events. Changes are written by
/// whichever process's lane made them, so the database is the one place to
/// watch; an indexed read of a few rows.
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
/// finished job's stream replays its history and ends. With
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
    let (sender, receiver) = mpsc::channel(BUFFER);
    let follow = Follow {
        store: state.store.clone(),
        job_id: id,
        after,
        progress_seq: resume.progress_seq,
        // A client resuming in the middle of a push gets its progress.
        pushing: (0..)
            .zip(&job.targets)
            .filter(|(_, target)| target.status == TargetStatus::Pushing)
            .map(|(position, _)| position)
            .collect(),
        ended: job.status.is_terminal(),
        progress: state.progress.subscribe(),
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

/// One follower's stream, fed until the job ends, the client goes away or
/// the service stops.
struct Follow {
    store: Store,
    job_id: Uuid,
    /// The last stored event sent.
    after: i64,
    /// Progress events sent since `after`: the `K` of their `N:K` ids.
    progress_seq: u64,
    /// The targets whose last stored event sent was `pushing`: progress of
    /// any other target is stale (it arrived after the push ended) and
    /// dropped, so a client never sees progress outside its push.
    pushing: HashSet<i64>,
    /// The job had ended when the stream began: once its history is sent,
    /// there is nothing more to wait for.
    ended: bool,
    progress: broadcast::Receiver<Progress>,
    stopping: CancellationToken,
    sender: mpsc::Sender<SseEvent>,
}

/// What sending the stored events did.
enum Sent {
    /// All sent; `caught_up` if there were none.
    Some { caught_up: bool },
    /// The job's last event was sent, or the client left: the stream ends.
    Done,
}

impl Follow {
    async fn run(mut self) {
        loop {
            match self.send_stored().await {
                Sent::Done => return,
                Sent::Some { caught_up } if caught_up && self.ended => return,
                Sent::Some { .. } => {}
            }
            let wait = tokio::time::sleep(POLL);
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    _ = &mut wait => break,
                    _ = self.stopping.cancelled() => return,
                    _ = self.sender.closed() => return,
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
    }

    /// Sends every stored event after `after`, page by page.
    async fn send_stored(&mut self) -> Sent {
        let mut caught_up = true;
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
            caught_up &= page.is_empty();
            for event in page {
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
            if !full {
                return Sent::Some { caught_up };
            }
        }
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
