//! Pushing to a registry behind htpasswd auth, with credentials from the
//! docker config: `auths` entries and credential helpers.

mod support;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use support::engine::TestEngine;
use support::registry::Registry;
use support::{TestApp, TestEnv, app_job, unique};

async fn publish_to_auth_registry(app: &TestApp) -> (Value, String) {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let name = unique("cred");
    engine.import_image(&name, "b1", &[]).await;
    let repo = format!("{}/{}", env.auth_registry, unique("private"));
    let job = app
        .run_job(&app_job(&repo, &format!("{name}:b1"), &["v1"]))
        .await;
    assert!(
        engine.names_under(&repo).await.is_empty(),
        "target reference left on the engine"
    );
    (job, format!("{repo}/app:v1"))
}

fn auth_registry() -> Registry {
    let env = TestEnv::get();
    Registry::with_auth(&env.auth_registry, &env.auth_user, &env.auth_password)
}

#[tokio::test]
async fn auths_entry_with_a_password_that_needs_url_safe_base64() {
    let env = TestEnv::get();
    // The point of this password: its standard base64 differs from URL-safe.
    let header_json = json!({"username": env.auth_user, "password": env.auth_password, "serveraddress": env.auth_registry});
    let standard = STANDARD.encode(serde_json::to_vec(&header_json).unwrap());
    assert!(
        standard.contains('+') || standard.contains('/'),
        "test password too tame: {standard}"
    );

    let app = TestApp::spawn().await;
    let auth = STANDARD.encode(format!("{}:{}", env.auth_user, env.auth_password));
    app.write_docker_config(&json!({"auths": {env.auth_registry.clone(): {"auth": auth}}}));
    let (job, reference) = publish_to_auth_registry(&app).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    let pushed = auth_registry()
        .pushed(&reference)
        .await
        .expect("pushed to the auth registry");
    assert_eq!(pushed.digest, job["targets"][0]["digest"].as_str().unwrap());
}

#[tokio::test]
async fn credential_helper_named_for_the_registry() {
    let env = TestEnv::get();
    let app = TestApp::spawn().await;
    // `publishd-test` is the helper scripts/test-env.sh puts on PATH.
    app.write_docker_config(&json!({"credHelpers": {env.auth_registry.clone(): "publishd-test"}}));
    let (job, reference) = publish_to_auth_registry(&app).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    let pushed = auth_registry()
        .pushed(&reference)
        .await
        .expect("pushed via the helper's credentials");
    assert_eq!(pushed.digest, job["targets"][0]["digest"].as_str().unwrap());
}

#[tokio::test]
async fn creds_store_answers_for_every_registry() {
    let app = TestApp::spawn().await;
    app.write_docker_config(&json!({"credsStore": "publishd-test"}));
    let (job, reference) = publish_to_auth_registry(&app).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    assert!(auth_registry().pushed(&reference).await.is_some());
}

#[tokio::test]
async fn a_wrong_password_fails_the_target_and_pushes_nothing() {
    let env = TestEnv::get();
    let app = TestApp::spawn().await;
    let auth = STANDARD.encode(format!("{}:not-the-password", env.auth_user));
    app.write_docker_config(&json!({"auths": {env.auth_registry.clone(): {"auth": auth}}}));
    let (job, reference) = publish_to_auth_registry(&app).await;
    assert_eq!(job["status"], "failed", "{job:#}");
    let error = job["targets"][0]["error"].as_str().unwrap().to_lowercase();
    assert!(
        error.starts_with("push:") && (error.contains("unauthorized") || error.contains("denied")),
        "{error}"
    );
    assert!(auth_registry().pushed(&reference).await.is_none());
}

#[tokio::test]
async fn no_credentials_fail_with_a_hint() {
    let env = TestEnv::get();
    let app = TestApp::spawn().await;
    let (job, reference) = publish_to_auth_registry(&app).await;
    assert_eq!(job["status"], "failed", "{job:#}");
    let error = job["targets"][0]["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("no credentials for {}", env.auth_registry)),
        "{error}"
    );
    assert!(auth_registry().pushed(&reference).await.is_none());
}

#[tokio::test]
async fn a_credential_store_with_nothing_for_the_host_pushes_anonymously() {
    // The test helper answers "credentials not found" for every registry
    // but the auth one, as a real store does: the docker CLI then pushes
    // anonymously, and so does publishd.
    let env = TestEnv::get();
    let app = TestApp::spawn().await;
    app.write_docker_config(&json!({"credsStore": "publishd-test"}));
    let engine = TestEngine::connect();
    let name = unique("anon");
    engine.import_image(&name, "b1", &[]).await;
    let repo = format!("{}/{}", env.registry, unique("anon"));
    let job = app
        .run_job(&app_job(&repo, &format!("{name}:b1"), &["v1"]))
        .await;
    Registry::open(&env.registry).assert_holds(&job).await;
}

#[tokio::test]
async fn what_a_failing_helper_prints_is_never_stored_or_answered() {
    let env = TestEnv::get();
    let secret = format!("leaked-{}", unique("secret"));
    // A helper that fails and prints a secret, on the PATH the test script set.
    let helper = std::path::Path::new(&std::env::var("PUBLISHD_TEST_ENV_DIR").unwrap())
        .join("bin")
        .join("docker-credential-publishd-leaky");
    std::fs::write(
        &helper,
        format!("#!/bin/sh\necho '{secret}'\necho '{secret}' >&2\nexit 1\n"),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let app = TestApp::spawn().await;
    app.write_docker_config(&json!({"credHelpers": {env.auth_registry.clone(): "publishd-leaky"}}));
    let (job, reference) = publish_to_auth_registry(&app).await;
    assert_eq!(job["status"], "failed", "{job:#}");
    let error = job["targets"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("docker-credential-publishd-leaky failed"),
        "{error}"
    );
    let answer = app.get("/api/v1/jobs").await.text().await.unwrap();
    assert!(!answer.contains(&secret), "{answer}");
    let database = std::fs::read(app.dir.join("publishd.db")).unwrap();
    let wal = std::fs::read(app.dir.join("publishd.db-wal")).unwrap_or_default();
    for bytes in [&database, &wal] {
        assert!(
            !bytes
                .windows(secret.len())
                .any(|window| window == secret.as_bytes()),
            "the helper's output reached the database"
        );
    }
    assert!(auth_registry().pushed(&reference).await.is_none());
}
