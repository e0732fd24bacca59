//! A web page cannot make a browser drive publishd: bodies must be JSON,
//! other sites' requests are refused, and a token-less publishd answers
//! only to names that are its own (DNS rebinding). Each request goes to
//! the real router in process; nothing of a refused request is stored.

mod support;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use publishd::config::Settings;
use publishd::startup::Application;
use serde_json::{Value, json};
use tower::ServiceExt;

/// A token-less publishd on loopback, as a developer runs it, without an
/// engine: nothing a test sends can publish anything.
async fn service(configure: impl FnOnce(&mut Settings)) -> (Application, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = support::test_settings(dir.path());
    settings.docker_host = Some("none".to_owned());
    configure(&mut settings);
    let app = Application::build(settings)
        .await
        .expect("application builds");
    (app, dir)
}

/// Sends `request`; answers the status and the JSON body.
async fn send(app: &Application, request: Request<Body>) -> (StatusCode, Value) {
    let response = app.router().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The jobs the store holds, as an admin lists them.
async fn jobs(app: &Application) -> Value {
    let request = Request::get("/api/v1/jobs")
        .header("host", "127.0.0.1:8080")
        .body(Body::empty())
        .unwrap();
    let (status, page) = send(app, request).await;
    assert_eq!(status, 200, "{page:#}");
    page["jobs"].clone()
}

fn job() -> Value {
    json!({"repo": "127.0.0.1:5000/acme/shop", "images": [{"name": "app", "source": "docker://127.0.0.1:5000/ci/app:b1"}],
           "tags": [{"strategy": "custom", "value": "v1"}]})
}

#[tokio::test]
async fn a_body_that_is_not_declared_json_is_refused_and_stores_nothing() {
    let (app, _dir) = service(|_| {}).await;
    // What `fetch(url, {mode: "no-cors", method: "POST", body})` sends.
    for content_type in [
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
    ] {
        let request = Request::post("/api/v1/jobs")
            .header("host", "127.0.0.1:8080")
            .header("content-type", content_type)
            .body(Body::from(job().to_string()))
            .unwrap();
        let (status, refused) = send(&app, request).await;
        assert_eq!(status, 415, "{content_type}: {refused:#}");
        assert_eq!(refused["error"]["code"], "unsupported_media_type");
    }
    let cancel = Request::post(format!("/api/v1/jobs/{}/cancel", uuid::Uuid::now_v7()))
        .header("host", "127.0.0.1:8080")
        .header("content-type", "text/plain")
        .body(Body::from("x"))
        .unwrap();
    assert_eq!(send(&app, cancel).await.0, 415);
    assert_eq!(jobs(&app).await, json!([]), "no job was recorded");
}

#[tokio::test]
async fn another_sites_page_is_refused_unless_the_operator_allows_its_origin() {
    let (app, _dir) =
        service(|settings| settings.allow_origins = vec!["https://ci.example.com".to_owned()])
            .await;
    let post = |origin: &str, site: &str| {
        Request::post("/api/v1/jobs")
            .header("host", "127.0.0.1:8080")
            .header("content-type", "application/json")
            .header("origin", origin)
            .header("sec-fetch-site", site)
            .body(Body::from(job().to_string()))
            .unwrap()
    };
    for (origin, site) in [
        ("https://attacker.example", "cross-site"),
        // Another port of the same host is another origin.
        ("http://127.0.0.1:3000", "same-site"),
        ("null", "cross-site"),
    ] {
        let (status, refused) = send(&app, post(origin, site)).await;
        assert_eq!(status, 403, "{origin}: {refused:#}");
        assert_eq!(refused["error"]["code"], "forbidden");
        assert_eq!(refused["error"]["rule"], "cross-site");
    }
    let cancel = Request::post(format!("/api/v1/jobs/{}/cancel", uuid::Uuid::now_v7()))
        .header("host", "127.0.0.1:8080")
        .header("origin", "https://attacker.example")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, cancel).await.0, 403);
    let read = Request::get("/api/v1/jobs")
        .header("host", "127.0.0.1:8080")
        .header("sec-fetch-site", "cross-site")
        .header("sec-fetch-mode", "no-cors")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, read).await.0, 403);
    assert_eq!(jobs(&app).await, json!([]), "no job was recorded");

    // The operator's CI pages may call it; the dashboard's own requests
    // (same origin) and links followed from elsewhere go through.
    let allowed = Request::get("/api/v1/jobs")
        .header("host", "127.0.0.1:8080")
        .header("origin", "https://ci.example.com")
        .header("sec-fetch-site", "cross-site")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, allowed).await.0, 200);
    let own = Request::get("/api/v1/jobs")
        .header("host", "127.0.0.1:8080")
        .header("origin", "http://127.0.0.1:8080")
        .header("sec-fetch-site", "same-origin")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, own).await.0, 200);
    let link = Request::get("/ui/")
        .header("host", "127.0.0.1:8080")
        .header("sec-fetch-site", "cross-site")
        .header("sec-fetch-mode", "navigate")
        .body(Body::empty())
        .unwrap();
    let response = app.router().oneshot(link).await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn without_tokens_a_name_publishd_does_not_answer_to_is_refused() {
    let (app, _dir) = service(|settings| {
        settings.public_url = Some("https://publishd.example.com/".parse().unwrap());
    })
    .await;
    let get = |host: &str| {
        Request::get("/api/v1/jobs")
            .header("host", host)
            .body(Body::empty())
            .unwrap()
    };
    // A page on a name rebound to 127.0.0.1 sends its own name.
    let (status, refused) = send(&app, get("rebound.attacker.example:8080")).await;
    assert_eq!(status, 421, "{refused:#}");
    assert_eq!(refused["error"]["code"], "misdirected_request");
    for host in [
        "127.0.0.1:8080",
        "localhost:8080",
        "[::1]:8080",
        "publishd.example.com",
    ] {
        assert_eq!(send(&app, get(host)).await.0, 200, "{host}");
    }

    // With tokens, a name is no way in: the token is.
    let (with_tokens, _dir) =
        service(|settings| settings.tokens.tokens = Some("s3cret".to_owned())).await;
    let request = Request::get("/api/v1/jobs")
        .header("host", "publishd.internal:8080")
        .header("authorization", "Bearer s3cret")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&with_tokens, request).await.0, 200);
}
