//! What a registry answers cannot send publishd, or its credentials,
//! anywhere else: a redirect is followed only to a host `--allow-registry`
//! allows, and never with the registry's credentials; an upload a registry
//! sends to another host gets none, or is refused; a token server on
//! another host than the registry's gets the credentials only where
//! `--allow-token-realm` pairs them. Each case is a proxy in front of a
//! real registry that sends publishd (and only publishd) to a bystander on
//! another host; checked on the bystander (what it heard) and on the
//! registry (what it holds).

mod support;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use publishd::config::Settings;
use publishd::domain::access::Patterns;
use publishd::registry::TokenRealms;
use serde_json::{Value, json};
use support::bystander::Bystander;
use support::fault_proxy::{FaultProxy, Faults};
use support::registry::{Built, OCI_MANIFEST, Registry, push_source};
use support::{TestApp, TestEnv, unique};

/// A publishd without an engine (everything it does is its own registry
/// client's), whose docker config has the test credentials for `proxy`.
async fn spawn(proxy: &FaultProxy, configure: impl FnOnce(&mut Settings)) -> TestApp {
    let app = TestApp::spawn_with(|settings| {
        settings.docker_host = Some("none".to_owned());
        configure(settings);
    })
    .await;
    let env = TestEnv::get();
    let auth = STANDARD.encode(format!("{}:{}", env.auth_user, env.auth_password));
    app.write_docker_config(&json!({"auths": {proxy.address.to_string(): {"auth": auth}}}));
    app
}

/// A job publishing `source`, read through `proxy`, to `repository` there.
fn job_through(proxy: &FaultProxy, source: &Built, repository: &str) -> Value {
    json!({
        "repo": format!("{}/{repository}", proxy.address),
        "images": [{"name": "app", "source": format!(
            "docker://{}/{}@{}", proxy.address, source.repository, source.digest)}],
        "tags": [{"strategy": "custom", "value": "v1"}]
    })
}

async fn post(app: &TestApp, job: &Value) -> (u16, Value) {
    let response = app.post_job(job).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn only_the_proxy(proxy: &FaultProxy) -> impl FnOnce(&mut Settings) {
    let address = proxy.address.to_string();
    move |settings| settings.allow_registry = Patterns::new(&[address]).unwrap()
}

#[tokio::test]
async fn a_redirect_goes_only_to_allowed_hosts_and_never_with_credentials() {
    let env = TestEnv::get();
    let bystander = Bystander::start().await;
    let proxy = FaultProxy::start(
        &env.auth_registry,
        Faults::RedirectManifestReads {
            to: bystander.address,
        },
    )
    .await;
    let reader = Registry::with_auth(&env.auth_registry, &env.auth_user, &env.auth_password);
    let source = push_source(&reader, &unique("trust/src"), "b1", OCI_MANIFEST).await;
    let target = unique("trust/redirected");
    let job = job_through(&proxy, &source, &target);

    // Only the registry is allowed: the redirect is not followed.
    let app = spawn(&proxy, only_the_proxy(&proxy)).await;
    let (status, body) = post(&app, &job).await;
    assert_eq!(status, 422, "{body:#}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("redirect") && message.contains("--allow-registry"),
        "{body:#}"
    );
    assert!(proxy.injected() > 0, "the registry redirected nothing");
    assert!(bystander.heard().is_empty(), "{:?}", bystander.heard());
    app.stop().await;

    // Any host allowed: followed, without the registry's credentials.
    let app = spawn(&proxy, |_| {}).await;
    let (status, body) = post(&app, &job).await;
    assert_eq!(status, 422, "the bystander has no such manifest: {body:#}");
    let heard = bystander.heard();
    assert!(!heard.is_empty(), "the redirect was not followed");
    assert!(
        heard.iter().all(|request| request.authorization.is_none()),
        "credentials went to another host: {heard:?}"
    );
    assert!(reader.tags(&target).await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn an_upload_sent_to_another_host_gets_no_credentials_or_is_refused() {
    let env = TestEnv::get();
    let bystander = Bystander::start().await;
    let proxy = FaultProxy::start(
        &env.auth_registry,
        Faults::UploadsElsewhere {
            to: bystander.address,
        },
    )
    .await;
    let reader = Registry::with_auth(&env.auth_registry, &env.auth_user, &env.auth_password);
    let source = push_source(&reader, &unique("trust/src"), "b1", OCI_MANIFEST).await;

    // Only the registry is allowed: the upload is refused, unsent.
    let refused = unique("trust/refused");
    let app = spawn(&proxy, only_the_proxy(&proxy)).await;
    let id = app.submit(&job_through(&proxy, &source, &refused)).await;
    let job = app.wait_finished(&id).await;
    assert_eq!(job["status"], "failed", "{job:#}");
    let error = job["targets"][0]["error"].as_str().unwrap();
    assert!(
        error.contains(&bystander.address.to_string()) && error.contains("--allow-registry"),
        "{job:#}"
    );
    assert!(bystander.heard().is_empty(), "{:?}", bystander.heard());
    assert!(reader.tags(&refused).await.is_empty());
    app.stop().await;

    // Any host allowed: the upload goes there without credentials (and
    // fails there), and nothing is published.
    let elsewhere = unique("trust/elsewhere");
    let app = spawn(&proxy, |_| {}).await;
    let id = app.submit(&job_through(&proxy, &source, &elsewhere)).await;
    let job = app.wait_finished(&id).await;
    assert_eq!(job["status"], "failed", "{job:#}");
    let heard = bystander.heard();
    assert!(
        heard.iter().any(|request| request.method == "PUT"),
        "the upload did not go on elsewhere: {heard:?}"
    );
    assert!(
        heard.iter().all(|request| request.authorization.is_none()),
        "credentials went to another host: {heard:?}"
    );
    assert!(reader.tags(&elsewhere).await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_token_server_on_another_host_gets_credentials_only_where_paired() {
    let env = TestEnv::get();
    let bystander = Bystander::start().await;
    let proxy = FaultProxy::start(
        &env.token_registry,
        Faults::RealmElsewhere {
            to: bystander.address,
        },
    )
    .await;
    let reader = Registry::with_auth(&env.token_registry, &env.auth_user, &env.auth_password);
    let source = push_source(&reader, &unique("trust/src"), "b1", OCI_MANIFEST).await;
    let target = unique("trust/realm");
    let job = job_through(&proxy, &source, &target);

    // Every host allowed, but the token server is not on the registry's.
    let app = spawn(&proxy, |_| {}).await;
    let (status, body) = post(&app, &job).await;
    assert_eq!(status, 422, "{body:#}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("--allow-token-realm") && message.contains("127.0.0.2"),
        "{body:#}"
    );
    assert!(proxy.injected() > 0, "no challenge was rewritten");
    assert!(bystander.heard().is_empty(), "{:?}", bystander.heard());
    app.stop().await;

    // Paired with the registry by the operator: the token server is asked,
    // with the credentials (and, being no token server, refuses).
    let pair = format!("{}=127.0.0.2:*", proxy.address);
    let app = spawn(&proxy, |settings| {
        settings.allow_token_realm = TokenRealms::new(&[pair]).unwrap();
    })
    .await;
    let (status, body) = post(&app, &job).await;
    assert_eq!(status, 422, "{body:#}");
    let heard = bystander.heard();
    assert!(
        heard.iter().any(|request| request
            .authorization
            .as_deref()
            .is_some_and(|value| value.starts_with("Basic "))),
        "the paired token server was not asked: {heard:?}"
    );
    assert!(reader.tags(&target).await.is_empty());
    app.stop().await;
}
