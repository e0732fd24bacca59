//! Registries as pipelines meet them: token auth (a password from the docker
//! config, per-job credentials, an identity token from `docker login`), TLS
//! trusted only through the engine's `certs.d`, and an insecure registry on
//! an address that does not look like loopback. Each publishes, reads the
//! digest back, and answers the next publish of the same build as up to date.

mod support;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use support::engine::TestEngine;
use support::registry::Registry;
use support::{TestApp, TestEnv, app_job, unique};

/// Publishes one new image to `registry_host` with `extra` merged into the
/// job, then the same job again: the first pushes and verifies, the second
/// finds the registry up to date. Answers both jobs.
async fn publish_twice(
    app: &TestApp,
    registry_host: &str,
    reader: &Registry,
    extra: Value,
) -> (Value, Value) {
    let engine = TestEngine::connect();
    let name = unique("reg");
    engine.import_image(&name, "b1", &[]).await;
    let repo = format!("{registry_host}/{}", unique("kinds"));
    let mut job = app_job(&repo, &format!("{name}:b1"), &["v1"]);
    if let (Some(job), Value::Object(extra)) = (job.as_object_mut(), extra) {
        job.extend(extra);
    }

    let first = app.run_job(&job).await;
    assert_eq!(first["status"], "succeeded", "{first:#}");
    let target = &first["targets"][0];
    assert_eq!(target["up_to_date"], false, "{first:#}");
    assert_eq!(target["attempt_errors"], json!([]), "{first:#}");
    reader.assert_holds(&first).await;

    let second = app.run_job(&job).await;
    assert_eq!(second["status"], "succeeded", "{second:#}");
    assert_eq!(second["targets"][0]["up_to_date"], true, "{second:#}");
    assert_eq!(second["targets"][0]["digest"], target["digest"]);
    assert!(engine.names_under(&repo).await.is_empty());
    (first, second)
}

fn token_registry() -> Registry {
    let env = TestEnv::get();
    Registry::with_auth(&env.token_registry, &env.auth_user, &env.auth_password)
}

/// Lines the token server logged since `from` (a byte offset in its log).
fn token_server_log_since(from: u64) -> Vec<Value> {
    let log = std::fs::read(TestEnv::get().token_server_log).unwrap();
    log[from as usize..]
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_slice(line).unwrap())
        .collect()
}

fn token_server_log_len() -> u64 {
    std::fs::metadata(TestEnv::get().token_server_log)
        .map(|m| m.len())
        .unwrap_or(0)
}

#[tokio::test]
async fn token_auth_with_a_password_from_the_docker_config() {
    let env = TestEnv::get();
    let app = TestApp::spawn().await;
    let auth = STANDARD.encode(format!("{}:{}", env.auth_user, env.auth_password));
    app.write_docker_config(&json!({"auths": {env.token_registry.clone(): {"auth": auth}}}));
    let log_from = token_server_log_len();
    publish_twice(&app, &env.token_registry, &token_registry(), json!({})).await;
    // The engine and publishd's own reads both went through the token server.
    let grants = token_server_log_since(log_from);
    assert!(
        grants
            .iter()
            .any(|line| line["account"] == env.auth_user.as_str() && line["status"] == 200),
        "{grants:#?}"
    );
}

#[tokio::test]
async fn token_auth_with_per_job_credentials() {
    let env = TestEnv::get();
    let app = TestApp::spawn().await;
    let registry_auth =
        json!({"registry_auth": {"username": env.auth_user, "password": env.auth_password}});
    publish_twice(&app, &env.token_registry, &token_registry(), registry_auth).await;
}

/// What `docker login` does against a token registry: the engine's
/// `POST /auth` answers an identity token (an OAuth2 refresh token).
fn identity_token() -> String {
    let env = TestEnv::get();
    let socket = env.docker_host.trim_start_matches("unix://");
    let body = json!({"username": env.auth_user, "password": env.auth_password,
                      "serveraddress": env.token_registry});
    let output = std::process::Command::new("curl")
        .args([
            "-sf",
            "--unix-socket",
            socket,
            "-H",
            "Content-Type: application/json",
        ])
        .args(["-d", &body.to_string(), "http://engine/auth"])
        .output()
        .expect("curl");
    assert!(output.status.success(), "POST /auth failed: {output:?}");
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
    answer["IdentityToken"]
        .as_str()
        .filter(|token| !token.is_empty())
        .unwrap_or_else(|| panic!("no identity token in {answer}"))
        .to_owned()
}

#[tokio::test]
async fn token_auth_with_an_identity_token_is_exchanged_not_sent() {
    let env = TestEnv::get();
    let token = identity_token();
    let app = TestApp::spawn().await;
    app.write_docker_config(
        &json!({"auths": {env.token_registry.clone(): {"identitytoken": token}}}),
    );
    // Only this test exchanges refresh tokens, so every exchange logged
    // from here on is this test's.
    let log_from = token_server_log_len();
    publish_twice(&app, &env.token_registry, &token_registry(), json!({})).await;
    // publishd's verification exchanged the refresh token for access tokens
    // (so did the engine for its push), with a client id.
    let exchanges: Vec<Value> = token_server_log_since(log_from)
        .into_iter()
        .filter(|line| line["grant_type"] == "refresh_token")
        .collect();
    assert!(
        exchanges
            .iter()
            .any(|line| line["status"] == 200 && line["client_id"] == "publishd"),
        "no refresh-token exchange by publishd: {exchanges:#?}"
    );
    assert!(
        exchanges.iter().all(|line| line["status"] == 200),
        "{exchanges:#?}"
    );
    // A per-job identity token takes the same way.
    let per_job = TestApp::spawn().await;
    let registry_auth = json!({"registry_auth": {"identity_token": identity_token()}});
    publish_twice(
        &per_job,
        &env.token_registry,
        &token_registry(),
        registry_auth,
    )
    .await;
}

#[tokio::test]
async fn tls_registry_trusted_through_certs_d() {
    let env = TestEnv::get();
    let ca = env.certs_dir.join(&env.tls_registry).join("ca.crt");
    assert!(
        ca.exists(),
        "{} is where the engine finds the CA",
        ca.display()
    );
    let app = TestApp::spawn().await;
    publish_twice(
        &app,
        &env.tls_registry,
        &Registry::tls(&env.tls_registry, &ca),
        json!({}),
    )
    .await;
}

#[tokio::test]
async fn tls_registry_without_its_ca_fails_verification_clearly() {
    let env = TestEnv::get();
    // An instance that reads another certs.d: it cannot trust the registry,
    // although the engine pushes there fine.
    let empty = tempfile::tempdir().unwrap();
    let app =
        TestApp::spawn_with(|settings| settings.docker_certs_dir = empty.path().to_owned()).await;
    let engine = TestEngine::connect();
    let name = unique("reg");
    engine.import_image(&name, "b1", &[]).await;
    let repo = format!("{}/{}", env.tls_registry, unique("kinds"));
    let job = app
        .run_job(&app_job(&repo, &format!("{name}:b1"), &["v1"]))
        .await;
    assert_eq!(job["status"], "failed", "{job:#}");
    let error = job["targets"][0]["error"].as_str().unwrap();
    assert!(
        error.starts_with("verify:") && error.to_lowercase().contains("certificate"),
        "{error}"
    );
}

#[tokio::test]
async fn insecure_registry_named_in_the_engine_settings() {
    let env = TestEnv::get();
    let app = TestApp::spawn().await;
    publish_twice(
        &app,
        &env.insecure_registry,
        &Registry::open(&env.insecure_registry),
        json!({}),
    )
    .await;
}
