//! Bearer tokens, the non-loopback guard, back-pressure, and per-job
//! credentials that live in memory only.

mod support;

use std::time::Duration;

use publishd::startup::Application;
use serde_json::{Value, json};
use support::engine::TestEngine;
use support::registry::Registry;
use support::{HangingRegistry, TestApp, TestEnv, app_job, test_settings, unique};

/// `force` skips the up-to-date read, which would hang on a hanging registry.
fn forced_job(repo: &str, source: &str, tags: &[&str]) -> Value {
    let mut job = app_job(repo, source, tags);
    job["force"] = json!(true);
    job
}

#[tokio::test]
async fn api_routes_need_a_token_when_tokens_are_set() {
    let app = TestApp::spawn_with(|settings| {
        settings.tokens.tokens = Some("s3cret-one\ns3cret-two".to_owned())
    })
    .await;
    let jobs = app.url("/api/v1/jobs");
    let anonymous = app.client.get(&jobs).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
    let body: Value = anonymous.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    let wrong = app
        .client
        .get(&jobs)
        .bearer_auth("s3cret-on")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let post = app
        .client
        .post(&jobs)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 401, "checked before the body");
    for token in ["s3cret-one", "s3cret-two"] {
        let ok = app
            .client
            .get(&jobs)
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200);
    }
    for open in ["/healthz", "/readyz", "/openapi.json"] {
        assert_eq!(app.get(open).await.status(), 200, "{open}");
    }
}

#[tokio::test]
async fn no_tokens_on_a_public_address_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    settings.listen = "0.0.0.0:0".parse().unwrap();
    let refused = Application::build(settings.clone())
        .await
        .err()
        .expect("refused");
    assert!(
        refused.to_string().contains("--allow-unauthenticated"),
        "{refused}"
    );
    settings.allow_unauthenticated = true;
    assert!(Application::build(settings.clone()).await.is_ok());
    settings.allow_unauthenticated = false;
    settings.tokens.tokens = Some("token".to_owned());
    assert!(Application::build(settings).await.is_ok());
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after() {
    let engine = TestEngine::connect();
    let hanging = HangingRegistry::start().await;
    let name = unique("full");
    engine.import_image(&name, "b1", &[]).await;
    let app = TestApp::spawn_with(|settings| {
        settings.workers = 1;
        settings.max_queued_targets = 3;
    })
    .await;
    let repo = format!("{}/{}", hanging.address, unique("full"));
    let source = format!("{name}:b1");
    let busy = app.submit(&forced_job(&repo, &source, &["busy"])).await;
    app.wait_for(&busy, Duration::from_secs(30), |job| {
        job["targets"][0]["status"] == "pushing"
    })
    .await;
    app.submit(&forced_job(&repo, &source, &["a", "b"])).await;
    let refused = app.post_job(&forced_job(&repo, &source, &["c", "d"])).await;
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "5");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded");
    let fits = app.post_job(&forced_job(&repo, &source, &["c"])).await;
    assert_eq!(fits.status(), 202, "one more target still fits");
}

#[tokio::test]
async fn a_token_without_a_cap_of_its_own_cannot_fill_the_queue() {
    let engine = TestEngine::connect();
    let hanging = HangingRegistry::start().await;
    let name = unique("share");
    engine.import_image(&name, "b1", &[]).await;
    // Two tokens of weight 1 and no cap of their own: half of the six
    // queued targets each (never less than a job's most, two).
    let app = TestApp::spawn_with(|settings| {
        settings.workers = 1;
        settings.max_queued_targets = 6;
        settings.limits.max_targets = 2;
        settings.tokens.tokens = Some("hog-token\nother-token".to_owned());
    })
    .await;
    let (hog, other) = (app.with_token("hog-token"), app.with_token("other-token"));
    let job = |tags: &[&str]| {
        let repo = format!("{}/{}", hanging.address, unique("share"));
        forced_job(&repo, &format!("{name}:b1"), tags)
    };
    let busy = hog.submit(&job(&["busy"])).await;
    hog.wait_for(&busy, Duration::from_secs(30), |job| {
        job["targets"][0]["status"] == "pushing"
    })
    .await;
    // The hog queues its share, three, and no more.
    assert_eq!(hog.post_job(&job(&["a", "b"])).await.status(), 202);
    assert_eq!(hog.post_job(&job(&["c"])).await.status(), 202);
    let refused = hog.post_job(&job(&["d"])).await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded", "{body:#}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.ends_with("its limit is 3: retry later"), "{body:#}");
    // The other token's share is still there, whole.
    assert_eq!(other.post_job(&job(&["e", "f"])).await.status(), 202);
    assert_eq!(other.post_job(&job(&["g"])).await.status(), 202);
}

#[tokio::test]
async fn per_job_credentials_publish_and_are_lost_by_a_restart() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let hanging = HangingRegistry::start().await;
    let name = unique("jobcred");
    engine.import_image(&name, "b1", &[]).await;
    let source = format!("{name}:b1");
    let dir = tempfile::tempdir().unwrap();
    let auth = json!({"username": env.auth_user, "password": env.auth_password});

    let first = TestApp::spawn_in(dir.path(), |settings| {
        settings.workers = 1;
        settings.shutdown_grace = Duration::ZERO;
    })
    .await;
    let repo = format!("{}/{}", env.auth_registry, unique("jobcred"));
    let mut published = forced_job(&repo, &source, &["v1"]);
    published["registry_auth"] = auth.clone();
    let job = first.run_job(&published).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    let registry = Registry::with_auth(&env.auth_registry, &env.auth_user, &env.auth_password);
    let pushed = registry
        .pushed(&format!("{repo}/app:v1"))
        .await
        .expect("pushed with the job's credentials");
    assert_eq!(pushed.digest, job["targets"][0]["digest"].as_str().unwrap());

    // Keep the only lane busy, queue a job with credentials, restart.
    let stuck = first
        .submit(&forced_job(
            &format!("{}/{}", hanging.address, unique("s")),
            &source,
            &["x"],
        ))
        .await;
    first
        .wait_for(&stuck, Duration::from_secs(30), |job| {
            job["targets"][0]["status"] == "pushing"
        })
        .await;
    // One job will be resubmitted after the restart, one will not.
    let mut revived = forced_job(&repo, &source, &["v2"]);
    revived["registry_auth"] = auth.clone();
    let submit_revived = |app: &TestApp| {
        app.client
            .post(app.url("/api/v1/jobs"))
            .header("Idempotency-Key", "revive-after-restart")
            .json(&revived)
            .send()
    };
    let response = submit_revived(&first).await.unwrap();
    assert_eq!(response.status(), 202);
    let revived_id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut forgotten = forced_job(&repo, &source, &["v3"]);
    forgotten["registry_auth"] = auth;
    let forgotten = first.submit(&forgotten).await;
    first.stop().await;

    let wait = Duration::from_secs(3);
    let second = TestApp::spawn_in(dir.path(), |settings| {
        settings.timeouts.push = Duration::from_secs(1);
        settings.credential_wait = wait;
    })
    .await;
    let started = std::time::Instant::now();
    // The targets wait for their credentials instead of failing at once, and
    // say until when.
    let waiting = second
        .wait_for(&forgotten, Duration::from_secs(10), |job| {
            job["targets"][0]["credentials_wait_until"].is_string()
        })
        .await;
    assert_eq!(waiting["targets"][0]["status"], "pending", "{waiting:#}");
    assert_eq!(waiting["targets"][0]["attempts"], 0, "{waiting:#}");
    // Resubmitting with the credentials revives the job.
    let response = submit_revived(&second).await.unwrap();
    assert_eq!(response.status(), 200);
    let job = second.wait_finished(&revived_id).await;
    registry.assert_holds(&job).await;

    let job = second.wait_finished(&forgotten).await;
    assert!(started.elapsed() >= wait, "failed before the wait was over");
    assert_eq!(job["status"], "failed");
    let error = job["targets"][0]["error"].as_str().unwrap();
    assert!(error.contains("resubmit"), "{error}");
    assert!(registry.pushed(&format!("{repo}/app:v3")).await.is_none());
    second.stop().await;
}
