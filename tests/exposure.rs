//! Least exposure: what each caller is shown. The fleet (engines,
//! instances, their errors) is the admins'; `/metrics` can require a token
//! of its own; a job's `callback_url` is answered to its submitter and
//! admins only; the sign-in form never puts a token in a URL; an engine
//! reached without TLS is refused unless allowed, and then said. The real
//! router, in process.

mod support;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use publishd::config::Settings;
use publishd::startup::Application;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tower::ServiceExt;

const TEAM_A: &str = "team-a-secret";
const READER: &str = "reader-secret";
const ADMIN: &str = "admin-secret";

/// A publishd without an engine (nothing a test sends can publish), with
/// a publisher, a reader and an admin.
async fn service(configure: impl FnOnce(&mut Settings)) -> (Application, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let sha = |token: &str| hex::encode(Sha256::digest(token.as_bytes()));
    let config = dir.path().join("auth.toml");
    std::fs::write(
        &config,
        format!(
            "[[token]]\nname = \"team-a\"\nsha256 = \"{}\"\nrole = \"publisher\"\n\
             repos = [\"127.0.0.1:1/team-a/**\"]\n\
             [[token]]\nname = \"auditor\"\nsha256 = \"{}\"\nrole = \"reader\"\n\
             [[token]]\nname = \"ops\"\nsha256 = \"{}\"\nrole = \"admin\"\n",
            sha(TEAM_A),
            sha(READER),
            sha(ADMIN)
        ),
    )
    .unwrap();
    let mut settings = support::test_settings(dir.path());
    settings.docker_host = Some("none".to_owned());
    settings.tokens.auth_config = Some(config);
    configure(&mut settings);
    let app = Application::build(settings)
        .await
        .expect("application builds");
    (app, dir)
}

fn request(method: &str, path: &str, token: Option<&str>) -> axum::http::request::Builder {
    let builder = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1:8080");
    match token {
        Some(token) => builder.header("authorization", format!("Bearer {token}")),
        None => builder,
    }
}

/// Sends `request`; answers the status and the body as text.
async fn send(app: &Application, request: Request<Body>) -> (StatusCode, String) {
    let response = app.router().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

async fn get(app: &Application, path: &str, token: Option<&str>) -> (StatusCode, String) {
    send(
        app,
        request("GET", path, token).body(Body::empty()).unwrap(),
    )
    .await
}

async fn get_json(app: &Application, path: &str, token: &str) -> Value {
    let (status, body) = get(app, path, Some(token)).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn the_engines_are_shown_to_admins_only() {
    let (app, _dir) = service(|_| {}).await;
    for token in [TEAM_A, READER] {
        let (status, body) = get(&app, "/api/v1/engines", Some(token)).await;
        assert_eq!(status, 403, "{body}");
        let refused: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(refused["error"]["rule"], "role");
        let (status, page) = get(&app, "/ui/engines", Some(token)).await;
        assert_eq!(status, 403);
        assert!(
            page.contains("admin tokens only") && !page.contains("Docker engine"),
            "{page}"
        );
    }
    let engines = get_json(&app, "/api/v1/engines", ADMIN).await;
    assert!(engines["engines"].is_array(), "{engines:#}");
    let (status, page) = get(&app, "/ui/engines", Some(ADMIN)).await;
    assert_eq!(status, 200);
    assert!(page.contains("Docker engine"), "{page}");
}

#[tokio::test]
async fn metrics_require_their_token_when_one_is_set() {
    let (open, _dir) = service(|_| {}).await;
    let (status, text) = get(&open, "/metrics", None).await;
    assert_eq!(status, 200);
    assert!(text.contains("publishd_build_info"));

    let (guarded, _dir) =
        service(|settings| settings.metrics_token = Some("scrape-secret".to_owned())).await;
    // Neither nothing, nor a wrong token, nor an API token (even an
    // admin's) opens it.
    for token in [None, Some("scrape-secre"), Some(ADMIN)] {
        let (status, body) = get(&guarded, "/metrics", token).await;
        assert_eq!(status, 401, "{token:?}");
        assert!(!body.contains("publishd_"), "{body}");
        let refused: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(refused["error"]["code"], "unauthorized");
    }
    let (status, text) = get(&guarded, "/metrics", Some("scrape-secret")).await;
    assert_eq!(status, 200);
    assert!(text.contains("publishd_build_info"));
    // And the metrics token opens nothing else.
    let (status, _) = get(&guarded, "/api/v1/jobs", Some("scrape-secret")).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_callback_url_is_answered_to_its_submitter_and_admins_only() {
    let (app, _dir) = service(|settings| {
        settings.webhook_secret = Some(b"webhook-secret".to_vec());
        settings.allow_callback = support::loopback_callbacks();
    })
    .await;
    let callback = "http://127.0.0.1:9/publishd?token=receivers-secret";
    // A registry source that cannot be read now (nothing listens there):
    // the job waits for a lane (none runs here).
    let job = json!({"repo": "127.0.0.1:1/team-a/shop",
                     "images": [{"name": "app", "source": "docker://127.0.0.1:1/team-a/ci/app:b1"}],
                     "tags": [{"strategy": "custom", "value": "v1"}],
                     "callback_url": callback});
    let submit = request("POST", "/api/v1/jobs", Some(TEAM_A))
        .header("content-type", "application/json")
        .body(Body::from(job.to_string()))
        .unwrap();
    let (status, body) = send(&app, submit).await;
    assert_eq!(status, 202, "{body}");
    let id = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/api/v1/jobs/{id}");

    for token in [TEAM_A, ADMIN] {
        assert_eq!(get_json(&app, &path, token).await["callback_url"], callback);
    }
    let seen = get_json(&app, &path, READER).await;
    assert_eq!(seen["callback_url"], Value::Null, "{seen:#}");
    let listed = get_json(&app, "/api/v1/jobs", READER).await;
    assert_eq!(listed["jobs"][0]["id"], id.as_str());
    assert_eq!(listed["jobs"][0]["callback_url"], Value::Null);
    assert!(!listed.to_string().contains("receivers-secret"));

    // Cancelled, the job has a delivery to its URL: the reader is not told
    // the URL there either.
    let cancel = request("POST", &format!("{path}/cancel"), Some(TEAM_A))
        .body(Body::empty())
        .unwrap();
    let (status, body) = send(&app, cancel).await;
    assert_eq!(status, 200, "{body}");
    let admin_view = get_json(&app, &path, ADMIN).await;
    assert_eq!(
        admin_view["deliveries"][0]["url"], callback,
        "{admin_view:#}"
    );
    let reader_view = get_json(&app, &path, READER).await;
    assert_eq!(reader_view["deliveries"][0]["url"], Value::Null);
    assert!(!reader_view.to_string().contains("receivers-secret"));
}

#[tokio::test]
async fn the_sign_in_form_posts_the_token_never_in_a_url() {
    let (app, _dir) = service(|_| {}).await;
    let (status, page) = get(&app, "/ui/", None).await;
    assert_eq!(status, 401);
    assert!(
        page.contains(r#"<form id="sign-in" method="post" action="/ui/sign-in">"#),
        "{page}"
    );
    // Without the script, the post answers the sign-in page; the token
    // goes nowhere.
    let posted = request("POST", "/ui/sign-in", None)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", "http://127.0.0.1:8080")
        .body(Body::from(format!("token={TEAM_A}")))
        .unwrap();
    let (status, page) = send(&app, posted).await;
    assert_eq!(status, 401);
    assert!(page.contains("Sign in") && !page.contains(TEAM_A), "{page}");
}

#[tokio::test]
async fn an_engine_without_tls_is_refused_unless_allowed_and_then_said() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = support::test_settings(dir.path());
    // Nothing listens there: the answer is about the transport alone.
    settings.docker_host = Some("tcp://127.0.0.1:1".to_owned());
    settings.engine_name = Some("plain".to_owned());
    let refused = Application::build(settings.clone())
        .await
        .err()
        .expect("refused");
    assert!(
        format!("{refused:#}").contains("--allow-plain-engine"),
        "{refused:#}"
    );

    settings.allow_plain_engine = true;
    let app = Application::build(settings).await.expect("allowed");
    let (_, body) = get(&app, "/readyz", None).await;
    let readiness: Value = serde_json::from_str(&body).unwrap();
    let warning = readiness["warnings"][0].as_str().unwrap_or_default();
    assert!(
        warning.contains("tcp://127.0.0.1:1") && warning.contains("without TLS"),
        "{readiness:#}"
    );
    let (without_engine, _dir) = service(|_| {}).await;
    let (_, body) = get(&without_engine, "/readyz", None).await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["warnings"],
        json!([])
    );
}
