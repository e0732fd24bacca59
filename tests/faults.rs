//! Publishing through a registry that fails: a fault-injecting proxy in
//! front of the real registry. Results are checked on the real registry
//! directly, behind the proxy.

mod support;

use publishd::domain::retry::RetryPolicy;
use serde_json::json;
use support::engine::TestEngine;
use support::fault_proxy::{FaultProxy, Faults, WRONG_DIGEST};
use support::registry::Registry;
use support::{TestApp, TestEnv, app_job, unique};

#[tokio::test]
async fn with_default_settings_every_target_gets_through_a_flaky_registry() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    // A quarter of all requests fail: 503, 500 and 429 and resets in equal
    // shares (about 19 % answers and 6 % resets). A push is several requests
    // and the engine repeats only layer uploads, so most pushes fail at
    // first; publishd's own reads repeat the single failed request, and the
    // default time budget lets a push be tried again rather than fail.
    let faults = Faults::Random {
        rate: 0.25,
        seed: 7,
        latency: std::time::Duration::from_millis(5),
    };
    let proxy = FaultProxy::start(&env.registry, faults).await;
    // The default retry budget (5 tries, then more for up to 10 minutes);
    // only the waits between tries are the test settings' short ones. The
    // engine's own waits between its retries of a layer upload (5 s, 10 s,
    // …) make a failed push long, so there is a lane per target and the test
    // takes the slowest target's time (measured 90 s; with the default waits
    // between tries, about seven minutes).
    let app = TestApp::spawn_with(|settings| {
        settings.workers = 12;
        let defaults = RetryPolicy::default();
        settings.retry.attempts = defaults.attempts;
        settings.retry.max_elapsed = defaults.max_elapsed;
    })
    .await;
    let repository = unique("flaky");
    let mut jobs = Vec::new();
    for index in 0..3 {
        let name = unique("flaky-src");
        engine.import_image(&name, "b1", &[]).await;
        let id = app
            .submit(&json!({
                "repo": format!("{}/{repository}", proxy.address),
                "images": [{"name": format!("app{index}"), "source": format!("{name}:b1")}],
                "tags": [{"strategy": "custom", "value": "v1"}, {"strategy": "custom", "value": "v2"},
                         {"strategy": "git-branch", "value": "main"}, {"strategy": "content"}]
            }))
            .await;
        jobs.push(id);
    }
    let direct = Registry::open(&env.registry);
    let (mut targets, mut retried) = (0, 0);
    for id in &jobs {
        let job = app
            .wait_for(id, std::time::Duration::from_secs(600), |job| {
                matches!(
                    job["status"].as_str(),
                    Some("succeeded" | "failed" | "cancelled")
                )
            })
            .await;
        assert_eq!(job["status"], "succeeded", "{job:#}");
        for target in job["targets"].as_array().unwrap() {
            let reference = target["reference"].as_str().unwrap();
            let behind_proxy = reference.replacen(&proxy.address.to_string(), &env.registry, 1);
            let pushed = direct.pushed(&behind_proxy).await.expect("in the registry");
            assert_eq!(pushed.digest, target["digest"].as_str().unwrap());
            retried += target["attempt_errors"].as_array().unwrap().len();
            targets += 1;
        }
    }
    assert_eq!(targets, 12);
    assert!(
        engine
            .names_under(&format!("{}/{repository}", proxy.address))
            .await
            .is_empty()
    );
    assert!(proxy.injected() > 0, "the proxy injected no fault");
    eprintln!(
        "faults injected: {}, failed tries recorded: {retried}",
        proxy.injected()
    );
}

#[tokio::test]
async fn a_registry_that_keeps_failing_fails_the_target_after_the_attempts() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let proxy = FaultProxy::start(&env.registry, Faults::ManifestPut(503)).await;
    let app = TestApp::spawn_with(|settings| settings.retry.attempts = 3).await;
    let name = unique("down");
    engine.import_image(&name, "b1", &[]).await;
    let repo = format!("{}/{}", proxy.address, unique("down"));
    let id = app
        .submit(&app_job(&repo, &format!("{name}:b1"), &["v1"]))
        .await;
    let job = app.wait_finished(&id).await;
    let target = &job["targets"][0];
    assert_eq!(target["status"], "failed", "{job:#}");
    let error = target["error"].as_str().unwrap();
    assert!(
        error.starts_with("push:") && error.contains("gave up after 3 tries"),
        "{error}"
    );
    let tries = target["attempt_errors"].as_array().unwrap();
    assert_eq!(tries.len(), 3);
    assert_eq!(target["attempts"], 3);
    assert!(tries.iter().all(|t| t["step"] == "push"));
    assert!(engine.names_under(&repo).await.is_empty());
}

#[tokio::test]
async fn a_denied_push_is_not_retried() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let proxy = FaultProxy::start(&env.registry, Faults::ManifestPut(403)).await;
    let app = TestApp::spawn().await;
    let name = unique("denied");
    engine.import_image(&name, "b1", &[]).await;
    let id = app
        .submit(&json!({
            "repo": format!("{}/{}", proxy.address, unique("denied")),
            "images": [{"name": "app", "source": format!("{name}:b1")}],
            "tags": [{"strategy": "custom", "value": "v1"}]
        }))
        .await;
    let job = app.wait_finished(&id).await;
    let target = &job["targets"][0];
    assert_eq!(target["status"], "failed", "{job:#}");
    assert_eq!(target["attempts"], 1, "{target:#}");
    assert_eq!(target["attempt_errors"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_registry_serving_another_digest_fails_the_target() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let proxy = FaultProxy::start(&env.registry, Faults::WrongDigest).await;
    let app = TestApp::spawn().await;
    let name = unique("mismatch");
    engine.import_image(&name, "b1", &[]).await;
    let repo = format!("{}/{}", proxy.address, unique("mismatch"));
    let job = app
        .run_job(&app_job(&repo, &format!("{name}:b1"), &["v1"]))
        .await;
    let target = &job["targets"][0];
    assert_eq!(target["status"], "failed", "{job:#}");
    let error = target["error"].as_str().unwrap();
    assert!(
        error.starts_with("verify:") && error.contains(WRONG_DIGEST),
        "{error}"
    );
    assert_eq!(target["attempts"], 1, "a mismatch is not retried");
    assert!(engine.names_under(&repo).await.is_empty());
}
