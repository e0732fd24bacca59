//! `GET /api/v1/jobs/{id}/events`: a job followed live over Server-Sent
//! Events by a real SSE client, resumed with `Last-Event-ID` without losing
//! or repeating an event, and answered as JSON history.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use eventsource_stream::{Event as SseEvent, Eventsource};
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use support::engine::TestEngine;
use support::fault_proxy::{FaultProxy, Faults};
use support::registry::Registry;
use support::{Caller, TestApp, TestEnv, app_job, unique};

/// Longest a test waits for the next event: a job's steps take seconds.
const NEXT_EVENT: Duration = Duration::from_secs(60);

type Events = std::pin::Pin<
    Box<dyn Stream<Item = Result<SseEvent, eventsource_stream::EventStreamError<reqwest::Error>>>>,
>;

/// Opens the job's event stream, resuming after `last_event_id` if given.
async fn open(app: &TestApp, id: &str, last_event_id: Option<&str>) -> Events {
    let mut request = app
        .client
        .get(app.url(&format!("/api/v1/jobs/{id}/events")))
        .header("accept", "text/event-stream");
    if let Some(last) = last_event_id {
        request = request.header("last-event-id", last);
    }
    let response = request.send().await.expect("the events request");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    Box::pin(response.bytes_stream().eventsource())
}

/// The next event, or `None` when the service ended the stream.
async fn next(events: &mut Events) -> Option<SseEvent> {
    tokio::time::timeout(NEXT_EVENT, events.next())
        .await
        .expect("an event or the end of the stream in time")
        .map(|event| event.expect("a well-formed event"))
}

/// Everything until the service ends the stream.
async fn read_to_end(events: &mut Events) -> Vec<SseEvent> {
    let mut read = Vec::new();
    while let Some(event) = next(events).await {
        read.push(event);
    }
    read
}

fn is_stored(event: &SseEvent) -> bool {
    event.event != "progress"
}

fn data(event: &SseEvent) -> Value {
    serde_json::from_str(&event.data).expect("JSON event data")
}

#[tokio::test]
async fn a_followed_job_streams_every_change_and_push_progress_then_ends() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let app = TestApp::spawn().await;
    let name = unique("live");
    engine.import_random_image(&name, "b1", 48 << 20).await;
    let repo = format!("{}/{}", env.registry, unique("live"));
    let id = app
        .submit(&app_job(&repo, &format!("{name}:b1"), &["v1"]))
        .await;

    let mut stream = open(&app, &id, None).await;
    let events = read_to_end(&mut stream).await;

    let stored: Vec<&SseEvent> = events.iter().filter(|e| is_stored(e)).collect();
    let last = stored.last().expect("stored events");
    assert_eq!(last.event, "job");
    assert_eq!(data(last)["data"]["status"], "succeeded", "{events:#?}");

    // The target went through each step, in order, and said so.
    let steps: Vec<String> = stored
        .iter()
        .filter(|e| e.event == "target")
        .map(|e| data(e)["data"]["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        steps,
        ["pending", "tagging", "pushing", "untagging", "succeeded"],
        "{events:#?}"
    );
    let succeeded = data(stored.iter().rev().find(|e| e.event == "target").unwrap());
    assert_eq!(succeeded["data"]["reference"], format!("{repo}/app:v1"));
    // The digest the event names is the one the registry serves.
    let pushed = Registry::open(&env.registry)
        .pushed(&format!("{repo}/app:v1"))
        .await
        .expect("the tag in the registry");
    assert_eq!(succeeded["data"]["digest"], pushed.digest.as_str());

    // Progress came while the target was pushing: growing bytes of one
    // known total, ids that resume after the stored event before them.
    let progress: Vec<(usize, &SseEvent)> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| e.event == "progress")
        .collect();
    assert!(!progress.is_empty(), "no progress in {events:#?}");
    let pushing_at = events
        .iter()
        .position(|e| e.event == "target" && data(e)["data"]["status"] == "pushing")
        .unwrap();
    let mut done_before = 0;
    for (position, event) in &progress {
        assert!(*position > pushing_at, "progress before the push began");
        let last_step = events[..*position]
            .iter()
            .rev()
            .find(|e| e.event == "target")
            .unwrap();
        assert_eq!(
            data(last_step)["data"]["status"],
            "pushing",
            "progress outside the push"
        );
        let update = data(event);
        assert_eq!(update["job_id"], id.as_str());
        assert_eq!(update["target"], 0);
        assert_eq!(update["reference"], format!("{repo}/app:v1"));
        let done = update["bytes_done"].as_u64().unwrap();
        let total = update["bytes_total"].as_u64().unwrap();
        assert!(total >= 48 << 20, "{update}");
        assert!(done <= total && done >= done_before, "{update}");
        done_before = done;
        let previous_stored = events[..*position]
            .iter()
            .rev()
            .find(|e| is_stored(e))
            .unwrap();
        let (after, sequence) = event.id.split_once(':').expect("N:K progress id");
        assert_eq!(after, previous_stored.id);
        assert!(sequence.parse::<u64>().unwrap() >= 1);
    }

    // The stream held exactly the stored history.
    let ids: Vec<String> = stored.iter().map(|e| e.id.clone()).collect();
    let history_ids: Vec<String> = app
        .history(&id)
        .await
        .iter()
        .map(|e| e["id"].to_string())
        .collect();
    assert_eq!(ids, history_ids);
    for event in &stored {
        assert_eq!(data(event)["kind"], event.event.as_str());
    }
}

#[tokio::test]
async fn a_client_that_reconnects_with_last_event_id_misses_and_repeats_nothing() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let app = TestApp::spawn().await;
    let name = unique("resume");
    engine.import_image(&name, "b1", &[]).await;
    let repo = format!("{}/{}", env.registry, unique("resume"));
    let id = app
        .submit(&app_job(&repo, &format!("{name}:b1"), &["v1", "v2", "v3"]))
        .await;

    // The first connection reads a few events, then drops mid-job.
    let mut first = open(&app, &id, None).await;
    let mut before = Vec::new();
    while before.iter().filter(|e| is_stored(e)).count() < 3 {
        before.push(next(&mut first).await.expect("more events"));
    }
    drop(first);
    let last_seen = before.last().unwrap().id.clone();

    // What happened while the client was away is waiting for it.
    app.wait_finished(&id).await;
    let mut second = open(&app, &id, Some(&last_seen)).await;
    let after = read_to_end(&mut second).await;
    assert!(!after.is_empty());

    let stored_ids = |events: &[SseEvent]| -> Vec<i64> {
        events
            .iter()
            .filter(|e| is_stored(e))
            .map(|e| e.id.parse().unwrap())
            .collect()
    };
    let mut seen = stored_ids(&before);
    seen.extend(stored_ids(&after));
    let history = app.history(&id).await;
    let history_ids: Vec<i64> = history.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert_eq!(seen, history_ids, "lost or repeated across the reconnect");
    assert!(history.last().unwrap()["kind"] == "job");
    assert_eq!(history.last().unwrap()["data"]["status"], "succeeded");

    // Each event read over the stream is the stored one, field for field.
    let by_id: BTreeMap<i64, &Value> = history
        .iter()
        .map(|e| (e["id"].as_i64().unwrap(), e))
        .collect();
    for event in before.iter().chain(&after).filter(|e| is_stored(e)) {
        assert_eq!(&data(event), by_id[&event.id.parse::<i64>().unwrap()]);
    }

    // A finished job's stream replays its whole history and ends; resuming
    // from a progress id starts after the stored event it follows.
    let replay = read_to_end(&mut open(&app, &id, None).await).await;
    assert_eq!(stored_ids(&replay), history_ids);
    let middle = history_ids[history_ids.len() / 2];
    let resumed = read_to_end(&mut open(&app, &id, Some(&format!("{middle}:3"))).await).await;
    assert_eq!(
        stored_ids(&resumed),
        history_ids
            .iter()
            .copied()
            .filter(|id| *id > middle)
            .collect::<Vec<_>>()
    );

    // An id this job never had replays it all, rather than waiting for it.
    let replayed = read_to_end(&mut open(&app, &id, Some("999999999")).await).await;
    assert_eq!(stored_ids(&replayed), history_ids);

    // JSON history resumes the same way.
    let response = app
        .client
        .get(app.url(&format!("/api/v1/jobs/{id}/events")))
        .header("accept", "application/json")
        .header("last-event-id", middle.to_string())
        .send()
        .await
        .unwrap();
    let tail: Value = response.json().await.unwrap();
    assert_eq!(
        tail["events"].as_array().unwrap().len(),
        history_ids.iter().filter(|id| **id > middle).count()
    );
}

#[tokio::test]
async fn the_history_records_each_failed_try_and_the_cancel() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let proxy = FaultProxy::start(&env.registry, Faults::ManifestPut(503)).await;
    let app = TestApp::spawn_with(|settings| settings.retry.attempts = 3).await;
    let name = unique("tries");
    engine.import_image(&name, "b1", &[]).await;
    let repo = format!("{}/{}", proxy.address, unique("tries"));
    let id = app
        .submit(&app_job(&repo, &format!("{name}:b1"), &["v1"]))
        .await;
    app.wait_finished(&id).await;

    let history = app.history(&id).await;
    let kinds: Vec<&str> = history
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    let attempts: Vec<&Value> = history.iter().filter(|e| e["kind"] == "attempt").collect();
    assert_eq!(attempts.len(), 3, "{history:#?}");
    for (n, attempt) in attempts.iter().enumerate() {
        assert_eq!(attempt["job_id"], id.as_str());
        assert_eq!(attempt["target"], 0);
        assert_eq!(attempt["data"]["attempt"], n as i64 + 1);
        assert_eq!(attempt["data"]["step"], "push");
        assert!(
            attempt["data"]["error"].as_str().unwrap().contains("503"),
            "{attempt}"
        );
    }
    assert_eq!(kinds.first(), Some(&"job"));
    assert_eq!(history[0]["data"]["status"], "queued");
    assert_eq!(history.last().unwrap()["data"]["status"], "failed");
    // Ids increase: the order a client resumes in.
    assert!(
        history
            .windows(2)
            .all(|w| w[0]["id"].as_i64() < w[1]["id"].as_i64())
    );

    // A cancel is an event, and so is what it does to the job.
    let hanging = support::HangingRegistry::start().await;
    let cancelled_name = unique("cancel");
    engine.import_image(&cancelled_name, "b1", &[]).await;
    let mut spec = app_job(
        &format!("{}/{}", hanging.address, unique("cancel")),
        &format!("{cancelled_name}:b1"),
        &["v1"],
    );
    // `force` skips the up-to-date read, which would hang before the push.
    spec["force"] = serde_json::json!(true);
    let id = app.submit(&spec).await;
    let mut stream = open(&app, &id, None).await;
    loop {
        let event = next(&mut stream).await.expect("events until the push");
        if event.event == "target" && data(&event)["data"]["status"] == "pushing" {
            break;
        }
    }
    let response = app.cancel(&id).await;
    assert!(response.status().is_success());
    let rest = read_to_end(&mut stream).await;
    let kinds: Vec<&str> = rest
        .iter()
        .filter(|e| is_stored(e))
        .map(|e| e.event.as_str())
        .collect();
    assert_eq!(kinds.first(), Some(&"cancel"), "{rest:#?}");
    let last = rest.iter().rev().find(|e| is_stored(e)).unwrap();
    assert_eq!(last.event, "job");
    assert_eq!(data(last)["data"]["status"], "cancelled");
}

#[tokio::test]
async fn events_of_an_unknown_job_are_not_found() {
    let app = TestApp::spawn().await;
    for accept in ["text/event-stream", "application/json"] {
        let response = app
            .client
            .get(app.url(&format!("/api/v1/jobs/{}/events", uuid::Uuid::now_v7())))
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found", "{body}");
    }
    // An id that cannot exist is simply not found, too.
    let response = app.get("/api/v1/jobs/not-a-uuid/events").await;
    assert_eq!(response.status(), 404);
}

/// The stream of job `id` as `token` opens it: the response, whatever its
/// status.
async fn open_as(base: &str, token: &str, id: &str, last: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .get(format!("{base}/api/v1/jobs/{id}/events"))
        .bearer_auth(token)
        .header("accept", "text/event-stream");
    if let Some(last) = last {
        request = request.header("last-event-id", last);
    }
    request.send().await.expect("the events request")
}

fn events_of(response: reqwest::Response) -> Events {
    assert_eq!(response.status(), 200);
    Box::pin(response.bytes_stream().eventsource())
}

/// A job that holds its one lane and never ends by itself: a forced push to
/// a registry that never answers. Answers the job's id.
async fn held_job(caller: &Caller, hanging: &support::HangingRegistry) -> String {
    let name = unique("held");
    TestEngine::connect().import_image(&name, "b1", &[]).await;
    let mut spec = app_job(
        &format!("{}/{}", hanging.address, unique("held")),
        &format!("{name}:b1"),
        &["v1"],
    );
    spec["force"] = serde_json::json!(true);
    caller.submit(&spec).await
}

#[tokio::test]
async fn a_stream_ends_at_its_max_age_and_resumes_losing_and_repeating_nothing() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let max_age = Duration::from_millis(250);
    let app = TestApp::spawn_with(|settings| {
        settings.workers = 1;
        settings.stream_max_age = max_age;
    })
    .await;
    let name = unique("reopen");
    engine.import_image(&name, "b1", &[]).await;
    let repo = format!("{}/{}", env.registry, unique("reopen"));
    let tags: Vec<String> = (0..12).map(|tag| format!("v{tag}")).collect();
    let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
    let id = app
        .submit(&app_job(&repo, &format!("{name}:b1"), &tags))
        .await;

    // A client that resumes whenever the service ends its stream.
    let mut seen: Vec<SseEvent> = Vec::new();
    let mut reopens = 0;
    let mut last: Option<String> = None;
    'job: loop {
        let opened = std::time::Instant::now();
        let mut stream = open(&app, &id, last.as_deref()).await;
        while let Some(event) = next(&mut stream).await {
            if event.event == "reopen" {
                assert!(event.id.is_empty() || Some(&event.id) == last.as_ref());
                assert!(
                    opened.elapsed() < max_age + Duration::from_secs(2),
                    "a stream outlived its max age: {:?}",
                    opened.elapsed()
                );
                reopens += 1;
                assert!(
                    next(&mut stream).await.is_none(),
                    "the stream ends after reopen"
                );
                continue 'job;
            }
            last = Some(event.id.clone());
            let ends = event.event == "job" && data(&event)["data"]["status"] == "succeeded";
            seen.push(event);
            if ends {
                break 'job;
            }
        }
        panic!("the stream ended without a reopen or the job's end: {seen:#?}");
    }
    assert!(reopens >= 2, "{reopens} reopens");
    let ids: Vec<i64> = seen
        .iter()
        .filter(|e| is_stored(e))
        .map(|e| e.id.parse().unwrap())
        .collect();
    let history_ids: Vec<i64> = app
        .history(&id)
        .await
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(
        ids, history_ids,
        "lost or repeated across {reopens} reopens"
    );
}

#[tokio::test]
async fn a_token_may_hold_so_many_streams_and_no_more() {
    let hanging = support::HangingRegistry::start().await;
    let app = TestApp::spawn_with(|settings| {
        settings.workers = 1;
        settings.max_streams_per_token = 2;
        settings.tokens.tokens = Some("busy-token\nother-token".to_owned());
    })
    .await;
    let base = app.url("");
    let base = base.as_str();
    let id = held_job(&app.with_token("busy-token"), &hanging).await;
    let first = events_of(open_as(base, "busy-token", &id, None).await);
    let second = events_of(open_as(base, "busy-token", &id, None).await);

    let refused = open_as(base, "busy-token", &id, None).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_streams", "{body:#}");

    // Another token's streams are its own.
    let other = events_of(open_as(base, "other-token", &id, None).await);

    // A stream that closes gives its place back.
    drop(first);
    let started = std::time::Instant::now();
    let third = loop {
        let response = open_as(base, "busy-token", &id, None).await;
        if response.status() == 200 {
            break events_of(response);
        }
        assert_eq!(response.status(), 429);
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "a closed stream kept its place"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    drop((second, third, other));
    let cancel = app.with_token("busy-token").cancel(&id).await;
    assert!(cancel.status().is_success());
}

#[tokio::test]
async fn a_stream_ends_when_its_token_is_revoked() {
    let hanging = support::HangingRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("auth.toml");
    let entry = |name: &str| {
        let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(name.as_bytes()));
        format!("[[token]]\nname = \"{name}\"\nsha256 = \"{digest}\"\nrole = \"admin\"\n")
    };
    std::fs::write(&config, entry("staying") + &entry("leaving")).unwrap();
    let config_path = config.display().to_string();
    let server = support::binary::Server::start(
        dir.path(),
        0,
        &[
            ("PUBLISHD_AUTH_CONFIG", config_path.as_str()),
            ("PUBLISHD_WORKERS", "1"),
        ],
    )
    .await;
    let staying_caller = Caller::new(&server.base, "staying");
    let id = held_job(&staying_caller, &hanging).await;
    let mut leaving = events_of(open_as(&server.base, "leaving", &id, None).await);
    let mut staying = events_of(open_as(&server.base, "staying", &id, None).await);
    // Both have read the history so far.
    for stream in [&mut leaving, &mut staying] {
        let first = next(stream).await.expect("the job's first event");
        assert_eq!(first.event, "job");
    }

    std::fs::write(&config, entry("staying")).unwrap();
    server.signal("HUP").await;
    let rest = tokio::time::timeout(Duration::from_secs(10), read_to_end(&mut leaving))
        .await
        .expect("the revoked token's stream ended");
    assert!(
        rest.iter()
            .all(|event| event.event != "job" || data(event)["data"]["status"] == "running"),
        "it ended for the revoke, not with the job: {rest:#?}"
    );
    assert_eq!(
        open_as(&server.base, "leaving", &id, None).await.status(),
        401
    );
    // The other token's stream goes on, and tells the job's end.
    assert!(staying_caller.cancel(&id).await.status().is_success());
    let told = read_to_end(&mut staying).await;
    let last = told.iter().rev().find(|e| is_stored(e)).expect("events");
    assert_eq!(data(last)["data"]["status"], "cancelled", "{told:#?}");
    server.terminate().await;
}
