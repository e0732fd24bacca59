//! Webhooks, end to end: a job that names a `callback_url` publishes to the
//! real registry, and a real HTTP receiver in this test gets the finished job,
//! signed, retried with backoff until it accepts, recorded on the job, resumed
//! after a restart, and given up past `--webhook-max-age`.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use publishd::domain::access::Patterns;
use publishd::domain::callback::CallbackPolicy;
use serde_json::{Value, json};
use sha2::Sha256;
use support::engine::TestEngine;
use support::registry::Registry;
use support::{Caller, HangingRegistry, TestApp, TestEnv, app_job, unique};
use tokio::task::JoinHandle;

const SECRET: &[u8] = b"webhook test secret \xe2\x9c\x93";

/// One request the receiver got, as it came.
#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Clone, Default)]
struct Script {
    /// The statuses to answer, in order; 200 once they run out.
    answers: Arc<Mutex<Vec<u16>>>,
    received: Arc<Mutex<Vec<Received>>>,
}

/// A webhook receiver on a real socket: records every request and answers
/// from its script.
struct Receiver {
    address: SocketAddr,
    script: Script,
    task: JoinHandle<()>,
}

impl Receiver {
    async fn start(answers: &[u16]) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, answers)
    }

    async fn start_on(address: SocketAddr, answers: &[u16]) -> Receiver {
        let listener = tokio::net::TcpListener::bind(address).await.unwrap();
        Self::serve(listener, answers)
    }

    fn serve(listener: tokio::net::TcpListener, answers: &[u16]) -> Receiver {
        let address = listener.local_addr().unwrap();
        let script = Script {
            answers: Arc::new(Mutex::new(answers.iter().rev().copied().collect())),
            received: Arc::default(),
        };
        let router = axum::Router::new()
            .route("/hooks/publishd", axum::routing::post(receive))
            .with_state(script.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Receiver {
            address,
            script,
            task,
        }
    }

    fn url(&self) -> String {
        url_at(self.address)
    }

    fn received(&self) -> Vec<Received> {
        self.script.received.lock().unwrap().clone()
    }

    /// Waits until `count` requests came.
    async fn wait_for(&self, count: usize, limit: Duration) -> Vec<Received> {
        let start = Instant::now();
        loop {
            let received = self.received();
            if received.len() >= count {
                return received;
            }
            assert!(
                start.elapsed() < limit,
                "{} of {count} requests after {limit:?}",
                received.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a receiver says besides its status: never to reach the submitter.
const RECEIVER_DETAIL: &str = "receiver-internal-detail";

async fn receive(
    State(script): State<Script>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    script
        .received
        .lock()
        .unwrap()
        .push(Received { headers, body });
    let status = script.answers.lock().unwrap().pop().unwrap_or(200);
    (StatusCode::from_u16(status).unwrap(), RECEIVER_DETAIL)
}

fn url_at(address: SocketAddr) -> String {
    format!("http://{address}/hooks/publishd")
}

fn header<'a>(received: &'a Received, name: &str) -> &'a str {
    received
        .headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header: {:?}", received.headers))
        .to_str()
        .unwrap()
}

/// Checks `X-Publishd-Signature` the way a receiver does: HMAC-SHA256 of
/// the exact bytes received, under the shared secret, compared in constant
/// time.
fn assert_signed(received: &Received) {
    let signature = header(received, "x-publishd-signature");
    let hex = signature
        .strip_prefix("sha256=")
        .unwrap_or_else(|| panic!("signature without sha256=: {signature}"));
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).unwrap();
    mac.update(&received.body);
    mac.verify_slice(&hex::decode(hex).expect("hex signature"))
        .unwrap_or_else(|_| panic!("bad signature {signature} over {:?}", received.body));
}

/// The job as `GET /api/v1/jobs/{id}` answers it, without its deliveries
/// (which the webhook body leaves out: they change while it is delivered).
fn without_deliveries(job: &Value) -> Value {
    let mut job = job.clone();
    job.as_object_mut().unwrap().remove("deliveries");
    job
}

fn with_webhooks(settings: &mut publishd::config::Settings) {
    settings.webhook_secret = Some(SECRET.to_vec());
    settings.allow_callback = support::loopback_callbacks();
}

/// The classes of a delivery's attempts, each checked to say nothing else:
/// no status code, no error text of the receiver.
fn results(delivery: &Value) -> Vec<String> {
    let text = delivery.to_string();
    assert!(!text.contains(RECEIVER_DETAIL), "{delivery:#}");
    delivery["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|attempt| {
            let fields: Vec<&String> = attempt.as_object().unwrap().keys().collect();
            assert_eq!(fields, ["at", "attempt", "result"], "{delivery:#}");
            attempt["result"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// Waits until the job's only delivery is in `state`; answers the job.
async fn wait_delivery(app: &TestApp, id: &str, state: &str, limit: Duration) -> Value {
    app.wait_for(id, limit, |job| job["deliveries"][0]["state"] == state)
        .await
}

async fn source_image(prefix: &str) -> String {
    let engine = TestEngine::connect();
    let name = unique(prefix);
    engine.import_image(&name, "b1", &[]).await;
    format!("{name}:b1")
}

#[tokio::test]
async fn a_receiver_that_fails_twice_gets_the_signed_job_on_the_third_try() {
    let env = TestEnv::get();
    let receiver = Receiver::start(&[500, 500]).await;
    let app = TestApp::spawn_with(with_webhooks).await;
    let source = source_image("webhook").await;
    let repo = format!("{}/{}", env.registry, unique("webhook"));
    let mut spec = app_job(&repo, &source, &["v1"]);
    spec["callback_url"] = json!(receiver.url());
    let id = app.submit(&spec).await;

    let finished = app.wait_finished(&id).await;
    assert_eq!(finished["status"], "succeeded", "{finished:#}");
    assert_eq!(finished["callback_url"], receiver.url());
    Registry::open(&env.registry).assert_holds(&finished).await;

    let received = receiver.wait_for(3, Duration::from_secs(20)).await;
    let job = wait_delivery(&app, &id, "delivered", Duration::from_secs(10)).await;
    assert_eq!(received.len(), 3, "exactly three requests");

    // Every attempt: the same bytes, the same delivery id, signed.
    let delivery = &job["deliveries"][0];
    let delivery_id = delivery["id"].as_str().unwrap();
    for request in &received {
        assert_signed(request);
        assert_eq!(header(request, "x-publishd-delivery"), delivery_id);
        assert_eq!(header(request, "x-publishd-event"), "job.finished");
        assert_eq!(header(request, "content-type"), "application/json");
        assert_eq!(request.body, received[0].body, "retries send the same body");
    }
    // A wrong secret or one changed byte does not verify.
    let mut tampered = received[2].clone();
    let mut bytes = tampered.body.to_vec();
    bytes[1] ^= 1;
    tampered.body = Bytes::from(bytes);
    assert!(std::panic::catch_unwind(|| assert_signed(&tampered)).is_err());

    // The body is the finished job, as the API answers it.
    let body: Value = serde_json::from_slice(&received[2].body).unwrap();
    assert_eq!(body, without_deliveries(&job));
    assert_eq!(body["status"], "succeeded");
    assert!(body["finished_at"].is_string());

    // Each attempt recorded on the job.
    assert_eq!(job["deliveries"].as_array().unwrap().len(), 1);
    assert_eq!(delivery["url"], receiver.url());
    assert!(delivery["next_attempt_at"].is_null(), "{delivery:#}");
    let attempts = delivery["attempts"].as_array().unwrap();
    // Only the class of each answer: not its code, not what the receiver said.
    assert_eq!(results(delivery), ["5xx", "5xx", "2xx"], "{delivery:#}");
    for (index, attempt) in attempts.iter().enumerate() {
        assert_eq!(attempt["attempt"], index + 1, "{delivery:#}");
        assert!(attempt["at"].is_string(), "{delivery:#}");
    }
    // Backoff: the third attempt waited about twice as long as the second.
    let at = |index: usize| {
        time::OffsetDateTime::parse(
            attempts[index]["at"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
    };
    let (first_wait, second_wait) = (at(1) - at(0), at(2) - at(1));
    assert!(
        first_wait >= Duration::from_millis(100) && second_wait >= Duration::from_millis(200),
        "waits {first_wait} and {second_wait}: {delivery:#}"
    );

    // Delivered means done: nothing more comes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), 3);
    app.stop().await;
}

#[tokio::test]
async fn a_delivery_pending_at_a_stop_is_sent_after_the_restart() {
    let env = TestEnv::get();
    // A port nobody listens on yet: the receiver is down (connection refused).
    let address = support::binary::free_port();
    let address: SocketAddr = format!("127.0.0.1:{address}").parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let first = TestApp::spawn_in(dir.path(), |settings| {
        with_webhooks(settings);
        // Slower retries than the other tests: a few refused attempts
        // before the stop, not dozens.
        settings.webhook_first_retry = Duration::from_millis(300);
    })
    .await;
    let source = source_image("webhook-restart").await;
    let repo = format!("{}/{}", env.registry, unique("webhook-restart"));
    let mut spec = app_job(&repo, &source, &["v1"]);
    spec["callback_url"] = json!(url_at(address));
    let id = first.submit(&spec).await;
    assert_eq!(first.wait_finished(&id).await["status"], "succeeded");
    let refused = first
        .wait_for(&id, Duration::from_secs(10), |job| {
            job["deliveries"][0]["attempts"]
                .as_array()
                .is_some_and(|attempts| attempts.len() >= 2)
        })
        .await;
    first.stop().await;
    let delivery = &refused["deliveries"][0];
    assert_eq!(delivery["state"], "pending", "{delivery:#}");
    assert!(delivery["next_attempt_at"].is_string(), "{delivery:#}");
    assert!(
        results(delivery).iter().all(|result| result == "refused"),
        "{delivery:#}"
    );

    // The receiver comes up; the service starts again on the same database.
    let receiver = Receiver::start_on(address, &[]).await;
    let second = TestApp::spawn_in(dir.path(), with_webhooks).await;
    let received = receiver.wait_for(1, Duration::from_secs(20)).await;
    let job = wait_delivery(&second, &id, "delivered", Duration::from_secs(10)).await;
    let delivery = &job["deliveries"][0];
    assert_eq!(received.len(), 1);
    assert_signed(&received[0]);
    assert_eq!(header(&received[0], "x-publishd-delivery"), delivery["id"]);
    assert_eq!(delivery["id"], refused["deliveries"][0]["id"]);
    let body: Value = serde_json::from_slice(&received[0].body).unwrap();
    assert_eq!(body, without_deliveries(&job));
    // The attempts before the stop are kept; the last one is the 200.
    let attempts = delivery["attempts"].as_array().unwrap();
    let before = refused["deliveries"][0]["attempts"].as_array().unwrap();
    assert!(attempts.len() > before.len(), "{delivery:#}");
    assert_eq!(&attempts[..before.len()], &before[..], "{delivery:#}");
    let results = results(delivery);
    assert_eq!(results.last().unwrap(), "2xx", "{delivery:#}");
    assert!(
        results[..results.len() - 1]
            .iter()
            .all(|result| result == "refused"),
        "{delivery:#}"
    );
    for (index, attempt) in attempts.iter().enumerate() {
        assert_eq!(attempt["attempt"], index + 1, "{delivery:#}");
    }
    second.stop().await;
}

async fn refusal(app: &TestApp, spec: Value) -> (u16, Value) {
    let response = app.post_job(&spec).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn callbacks_are_refused_without_a_secret_to_loopback_and_for_other_schemes() {
    let env = TestEnv::get();
    let repo = format!("{}/{}", env.registry, unique("webhook-refused"));
    let receiver = Receiver::start(&[]).await;
    let spec_to = |url: &str| {
        let mut spec = app_job(&repo, "busybox:latest", &["v1"]);
        spec["callback_url"] = json!(url);
        spec
    };

    // No secret: nothing to sign with.
    let unsigned = TestApp::spawn().await;
    let (status, body) = refusal(&unsigned, spec_to(&receiver.url())).await;
    assert_eq!(status, 422, "{body:#}");
    assert_eq!(body["error"]["field"], "callback_url", "{body:#}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--webhook-secret"),
        "{body:#}"
    );
    assert_eq!(
        support::count_rows(&unsigned.dir, "SELECT count(*) FROM jobs").await,
        0
    );
    unsigned.stop().await;

    // Loopback, without --allow-callback naming it: refused, however the
    // URL spells it. With the registry allowed, as before, which no
    // longer bounds callbacks.
    let app = TestApp::spawn_with(|settings| {
        settings.webhook_secret = Some(SECRET.to_vec());
        settings.allow_registry = Patterns::new(std::slice::from_ref(&env.registry)).unwrap();
    })
    .await;
    let port = receiver.address.port();
    for url in [
        receiver.url(),
        format!("http://localhost:{port}/hooks/publishd"),
        format!("http://[::ffff:127.0.0.1]:{port}/hooks/publishd"),
        format!("http://2130706433:{port}/hooks/publishd"),
    ] {
        let (status, body) = refusal(&app, spec_to(&url)).await;
        assert_eq!(status, 403, "{url}: {body:#}");
        assert_eq!(body["error"]["code"], "forbidden", "{body:#}");
        assert_eq!(body["error"]["field"], "callback_url", "{body:#}");
        assert_eq!(body["error"]["rule"], "allow-callback", "{body:#}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("loopback") && message.contains("--allow-callback"),
            "{body:#}"
        );
    }
    // Not http(s), credentials in the URL, not a URL: invalid.
    for url in [
        "ftp://127.0.0.1/hooks",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "http://user:password@127.0.0.1/hooks",
        "/hooks/publishd",
        "http://",
    ] {
        let (status, body) = refusal(&app, spec_to(url)).await;
        assert_eq!(status, 422, "{url}: {body:#}");
        assert_eq!(body["error"]["field"], "callback_url", "{url}: {body:#}");
    }

    // Nothing was stored, and nothing was called.
    let jobs: Value = app.get("/api/v1/jobs").await.json().await.unwrap();
    assert_eq!(jobs["jobs"], json!([]), "{jobs:#}");
    assert_eq!(
        support::count_rows(&app.dir, "SELECT count(*) FROM jobs").await,
        0
    );
    assert_eq!(
        support::count_rows(&app.dir, "SELECT count(*) FROM deliveries").await,
        0
    );
    assert_eq!(
        support::count_rows(&app.dir, "SELECT count(*) FROM targets").await,
        0
    );
    assert!(receiver.received().is_empty());
    let audit: Value = app
        .get("/api/v1/audit?limit=100")
        .await
        .json()
        .await
        .unwrap();
    assert!(
        audit["events"].as_array().unwrap().iter().any(|event| {
            event["action"] == "job.submit" && event["detail"]["rule"] == "allow-callback"
        }),
        "{audit:#}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_callback_to_loopback_goes_only_where_allow_callback_names_it() {
    let env = TestEnv::get();
    let receiver = Receiver::start(&[]).await;
    let source = source_image("webhook-allowed").await;
    let repo = format!("{}/{}", env.registry, unique("webhook-allowed"));
    let mut spec = app_job(&repo, &source, &["v1"]);
    spec["callback_url"] = json!(receiver.url());

    // Named, but on another port: still refused.
    let other_port = format!("127.0.0.1:{}", receiver.address.port() + 1);
    let app = TestApp::spawn_with(|settings| {
        settings.webhook_secret = Some(SECRET.to_vec());
        settings.allow_callback = CallbackPolicy::new(&[other_port]).unwrap();
    })
    .await;
    let (status, body) = refusal(&app, spec.clone()).await;
    assert_eq!(status, 403, "{body:#}");
    assert_eq!(body["error"]["rule"], "allow-callback", "{body:#}");
    app.stop().await;

    // Named with its port: the job is taken and the receiver called.
    let named = format!("127.0.0.1:{}", receiver.address.port());
    let app = TestApp::spawn_with(|settings| {
        settings.webhook_secret = Some(SECRET.to_vec());
        settings.allow_callback = CallbackPolicy::new(&[named]).unwrap();
    })
    .await;
    let id = app.submit(&spec).await;
    assert_eq!(app.wait_finished(&id).await["status"], "succeeded");
    let received = receiver.wait_for(1, Duration::from_secs(20)).await;
    assert_signed(&received[0]);
    wait_delivery(&app, &id, "delivered", Duration::from_secs(10)).await;
    app.stop().await;
}

#[tokio::test]
async fn a_pending_delivery_is_checked_again_and_not_sent_where_no_longer_allowed() {
    let env = TestEnv::get();
    // Nobody listens yet: the first instance's attempts are refused.
    let port = support::binary::free_port();
    let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let first = TestApp::spawn_in(dir.path(), |settings| {
        with_webhooks(settings);
        settings.webhook_first_retry = Duration::from_millis(300);
    })
    .await;
    let source = source_image("webhook-narrowed").await;
    let repo = format!("{}/{}", env.registry, unique("webhook-narrowed"));
    let mut spec = app_job(&repo, &source, &["v1"]);
    spec["callback_url"] = json!(url_at(address));
    let id = first.submit(&spec).await;
    assert_eq!(first.wait_finished(&id).await["status"], "succeeded");
    first
        .wait_for(&id, Duration::from_secs(10), |job| {
            job["deliveries"][0]["attempts"]
                .as_array()
                .is_some_and(|attempts| !attempts.is_empty())
        })
        .await;
    first.stop().await;

    // The receiver is up, but the operator no longer allows loopback.
    let receiver = Receiver::start_on(address, &[]).await;
    let second = TestApp::spawn_in(dir.path(), |settings| {
        settings.webhook_secret = Some(SECRET.to_vec());
    })
    .await;
    let job = wait_delivery(&second, &id, "failed", Duration::from_secs(20)).await;
    let results = results(&job["deliveries"][0]);
    assert!(results.iter().all(|result| result == "refused"), "{job:#}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        receiver.received().is_empty(),
        "a refused callback was sent"
    );
    second.stop().await;
}

#[tokio::test]
async fn a_delivery_is_given_up_past_the_max_age_and_a_cancelled_job_is_delivered_too() {
    let hanging = HangingRegistry::start().await;
    let receiver = Receiver::start(&[503; 1000]).await;
    let app = TestApp::spawn_with(|settings| {
        with_webhooks(settings);
        settings.webhook_max_age = Duration::from_secs(2);
        settings.webhook_first_retry = Duration::from_millis(200);
    })
    .await;
    // A push that never ends, cancelled: the job ends as cancelled.
    let source = source_image("webhook-give-up").await;
    let mut spec = app_job(
        &format!("{}/{}", hanging.address, unique("stuck")),
        &source,
        &["v1"],
    );
    spec["force"] = json!(true);
    spec["callback_url"] = json!(receiver.url());
    let id = app.submit(&spec).await;
    app.wait_for(&id, Duration::from_secs(30), |job| {
        job["targets"][0]["status"] == "pushing"
    })
    .await;
    let cancel = app.cancel(&id).await;
    assert!(cancel.status().is_success(), "{cancel:?}");
    assert_eq!(app.wait_finished(&id).await["status"], "cancelled");

    let job = wait_delivery(&app, &id, "failed", Duration::from_secs(15)).await;
    let delivery = &job["deliveries"][0];
    assert!(delivery["next_attempt_at"].is_null(), "{delivery:#}");
    let attempts = delivery["attempts"].as_array().unwrap();
    // 0, 0.2, 0.6, 1.4 s: the next would be past two seconds.
    assert!(
        (2..=6).contains(&attempts.len()),
        "{} attempts: {delivery:#}",
        attempts.len()
    );
    assert!(
        results(delivery).iter().all(|result| result == "5xx"),
        "{delivery:#}"
    );
    let received = receiver.received();
    assert_eq!(received.len(), attempts.len());
    let body: Value = serde_json::from_slice(&received[0].body).unwrap();
    assert_eq!(body["status"], "cancelled");
    assert_eq!(body, without_deliveries(&job));
    // Given up means no more attempts.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(receiver.received().len(), attempts.len());
    app.stop().await;
}

#[tokio::test]
async fn a_receiver_that_never_answers_holds_back_neither_other_receivers_nor_a_stop() {
    let env = TestEnv::get();
    // Accepts connections and never answers: every attempt takes the full
    // attempt timeout (10 s).
    let silent = HangingRegistry::start().await;
    let receiver = Receiver::start(&[]).await;
    let app = TestApp::spawn_with(with_webhooks).await;
    let source = source_image("webhook-silent").await;
    let repo = format!("{}/{}", env.registry, unique("webhook-silent"));
    // Several deliveries to the silent receiver under way at once.
    let mut silent_jobs = Vec::new();
    for tag in ["v1", "v2", "v3"] {
        let mut spec = app_job(&repo, &source, &[tag]);
        spec["callback_url"] = json!(url_at(silent.address));
        silent_jobs.push(app.submit(&spec).await);
    }
    for id in &silent_jobs {
        assert_eq!(app.wait_finished(id).await["status"], "succeeded");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Another job's receiver answers: it does not wait behind them.
    let mut spec = app_job(&repo, &source, &["v4"]);
    spec["callback_url"] = json!(receiver.url());
    let id = app.submit(&spec).await;
    app.wait_finished(&id).await;
    let finished = Instant::now();
    receiver.wait_for(1, Duration::from_secs(20)).await;
    assert!(
        finished.elapsed() < Duration::from_secs(3),
        "delivered {:?} after the job ended, behind a silent receiver",
        finished.elapsed()
    );
    wait_delivery(&app, &id, "delivered", Duration::from_secs(5)).await;
    for id in &silent_jobs {
        let job = app.job(id).await;
        assert_eq!(job["deliveries"][0]["state"], "pending", "{job:#}");
    }

    // Nor does a stop wait for the silent receiver.
    let start = Instant::now();
    app.stop().await;
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "the stop waited {:?} for a silent receiver",
        start.elapsed()
    );
}

/// Submits a job and cancels it at once; answers its id.
async fn submit_and_cancel(caller: &Caller, spec: &Value) -> String {
    let id = caller.submit(spec).await;
    assert_eq!(caller.cancel(&id).await.status(), 200);
    id
}

#[tokio::test]
async fn one_submitters_silent_receivers_do_not_hold_back_anothers_webhook() {
    let hanging = HangingRegistry::start().await;
    // Accepts connections and never answers: each attempt takes 10 s.
    let silent = HangingRegistry::start().await;
    let receiver = Receiver::start(&[]).await;
    let app = TestApp::spawn_with(|settings| {
        with_webhooks(settings);
        settings.workers = 1;
        settings.tokens.tokens = Some("hog-token\nother-token".to_owned());
    })
    .await;
    let source = source_image("webhook-fair").await;
    // Jobs that end at once: cancelled as soon as they are taken (the one
    // lane pushes into a registry that never answers).
    let job_to = |callback: String| {
        let mut spec = app_job(
            &format!("{}/{}", hanging.address, unique("fair")),
            &source,
            &["v1"],
        );
        spec["force"] = json!(true);
        spec["callback_url"] = json!(callback);
        spec
    };
    let (hog, other) = (app.with_token("hog-token"), app.with_token("other-token"));
    // One submitter's 40 jobs end with a webhook to a receiver that never
    // answers: 40 deliveries due, every one of them for 10 s a try.
    for _ in 0..40 {
        submit_and_cancel(&hog, &job_to(url_at(silent.address))).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Another submitter's job ends after them: its webhook goes at once.
    let ended = Instant::now();
    let id = submit_and_cancel(&other, &job_to(receiver.url())).await;
    receiver.wait_for(1, Duration::from_secs(60)).await;
    assert!(
        ended.elapsed() < Duration::from_secs(3),
        "delivered {:?} after its job ended, behind another submitter's",
        ended.elapsed()
    );
    let job = other.job(&id).await;
    assert_eq!(job["status"], "cancelled", "{job:#}");
    assert_eq!(
        serde_json::from_slice::<Value>(&receiver.received()[0].body).unwrap()["id"],
        id.as_str()
    );
    app.stop().await;
}
