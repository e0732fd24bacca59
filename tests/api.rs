//! The HTTP contract: error shapes, idempotency, listing, cancel, probes and
//! the checked-in OpenAPI document.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};
use support::engine::TestEngine;
use support::{HangingRegistry, TestApp, TestEnv, app_job, unique};

async fn error_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("error answers are JSON");
    let error = body["error"].clone();
    assert!(
        error["code"].is_string() && error["message"].is_string(),
        "error shape: {body}"
    );
    (status, error)
}

#[tokio::test]
async fn bad_input_gets_the_error_shape_and_the_field() {
    let app = TestApp::spawn().await;
    let post_raw = |body: String| {
        app.client
            .post(app.url("/api/v1/jobs"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    let (status, error) = error_of(post_raw("{\"repo\":".to_owned()).await.unwrap()).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (400, Some("malformed_json"))
    );

    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let (status, _) = error_of(post_raw(deep).await.unwrap()).await;
    assert_eq!(status, 400);

    let huge = format!("{{\"repo\":\"{}\"}}", "a".repeat(2 * 1024 * 1024));
    let (status, error) = error_of(post_raw(huge).await.unwrap()).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (413, Some("payload_too_large"))
    );

    let cases = [
        (json!({"repo": 5, "images": [], "tags": []}), "repo"),
        (
            json!({"images": [{"name": "a", "source": "x"}], "tags": [{"strategy": "content"}]}),
            "repo",
        ),
        (
            json!({"repo": "r/a", "images": [{"name": "a"}], "tags": [{"strategy": "content"}]}),
            "images[0].source",
        ),
        (
            json!({"repo": "r/a", "images": [{"name": "a", "source": "x"}], "tags": [{"strategy": "latest"}]}),
            "tags[0].strategy",
        ),
        (
            json!({"repo": "r/a", "repo_mode": "mono", "images": [{"source": "x"}], "tags": [{"strategy": "content"}]}),
            "repo_mode",
        ),
        (
            json!({"repo": "r/a", "images": [{"name": "a", "source": "x", "extra": 1}], "tags": [{"strategy": "content"}]}),
            "images[0].extra",
        ),
        (app_job("r/a", "x", &["bad tag"]), "tags[0].value"),
        (
            app_job("r/a", "x", &[&format!("sha256:{}", "a".repeat(64))]),
            "tags[0].value",
        ),
        (app_job("r/Upper", "x", &["v1"]), "repo"),
        (app_job("r/a/../b", "x", &["v1"]), "repo"),
        (app_job("r/a", "acme/Img", &["v1"]), "images[0].source"),
        (app_job("r/a", "", &["v1"]), "images[0].source"),
        (
            json!({"repo": "r/a", "images": [{"name": "ünïcode", "source": "x"}], "tags": [{"strategy": "content"}]}),
            "images[0].name",
        ),
    ];
    for (body, field) in cases {
        let (status, error) = error_of(app.post_job(&body).await).await;
        assert_eq!(status, 422, "{body}: {error}");
        assert_eq!(error["code"], "invalid_spec");
        assert_eq!(error["field"], field, "{body}: {error}");
    }

    let tags: Vec<Value> = (0..10_000)
        .map(|i| json!({"strategy": "custom", "value": format!("t{i}")}))
        .collect();
    let body = json!({"repo": "r/a", "images": [{"name": "a", "source": "x"}], "tags": tags});
    let (status, error) = error_of(app.post_job(&body).await).await;
    assert_eq!((status, error["field"].as_str()), (422, Some("tags")));

    let missing = app
        .client
        .get(app.url(&format!("/api/v1/jobs/{}", uuid::Uuid::now_v7())))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(missing).await.0, 404);
    let nonsense = app.get("/api/v1/jobs/not-an-id").await;
    assert_eq!(error_of(nonsense).await.0, 404);
    let route = app.get("/api/v2/nothing").await;
    assert_eq!(error_of(route).await.0, 404);
    let method = app
        .client
        .delete(app.url("/api/v1/jobs"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(method).await.0, 405);
    let status = app.get("/api/v1/jobs?status=done").await;
    let (code, error) = error_of(status).await;
    assert_eq!((code, error["field"].as_str()), (422, Some("status")));
    let limit = app.get("/api/v1/jobs?limit=0").await;
    assert_eq!(error_of(limit).await.0, 422);
    let failed = app.get("/api/v1/jobs?has_failed_target=yes").await;
    let (code, error) = error_of(failed).await;
    assert_eq!(
        (code, error["field"].as_str()),
        (422, Some("has_failed_target"))
    );
}

#[tokio::test]
async fn idempotency_key_returns_the_same_job_or_conflicts() {
    let env = TestEnv::get();
    let app = TestApp::spawn().await;
    let repo = format!("{}/{}", env.registry, unique("idem"));
    let post = |body: String| {
        app.client
            .post(app.url("/api/v1/jobs"))
            .header("Idempotency-Key", "build-42")
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let first = post(format!(r#"{{"repo":"{repo}","images":[{{"name":"a","source":"nope:1"}}],"tags":[{{"strategy":"custom","value":"v1"}}]}}"#))
        .await
        .unwrap();
    assert_eq!(first.status(), 202);
    let location = first.headers()["location"].to_str().unwrap().to_owned();
    let first: Value = first.json().await.unwrap();
    assert_eq!(
        location,
        format!("/api/v1/jobs/{}", first["id"].as_str().unwrap())
    );

    // Same body, other key order and spacing: the same job.
    let again = post(format!(r#"{{ "tags":[{{"value":"v1","strategy":"custom"}}], "images":[{{"source":"nope:1","name":"a"}}], "repo":"{repo}" }}"#))
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);

    let other = post(format!(r#"{{"repo":"{repo}","images":[{{"name":"a","source":"nope:1"}}],"tags":[{{"strategy":"custom","value":"v2"}}]}}"#))
        .await
        .unwrap();
    let (status, error) = error_of(other).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (409, Some("idempotency_conflict"))
    );

    let page: Value = app.get("/api/v1/jobs").await.json().await.unwrap();
    assert_eq!(page["jobs"].as_array().unwrap().len(), 1, "one job only");
}

#[tokio::test]
async fn listing_pages_newest_first_with_a_stable_cursor() {
    let env = TestEnv::get();
    let app = TestApp::spawn().await;
    let repo = format!("{}/{}", env.registry, unique("list"));
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            app.submit(&app_job(&repo, "no-such-source:1", &[&format!("v{i}")]))
                .await,
        );
    }
    for id in &ids {
        app.wait_finished(id).await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = app.url("/api/v1/jobs?limit=2&status=failed");
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let page: Value = app
            .client
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let jobs = page["jobs"].as_array().unwrap();
        assert!(jobs.len() <= 2);
        // Listed jobs come whole, each with its own target.
        for job in jobs {
            let id = job["id"].as_str().unwrap();
            assert_eq!(job, &app.job(id).await, "listed as read");
            assert_eq!(job["targets"].as_array().unwrap().len(), 1);
        }
        seen.extend(
            jobs.iter()
                .map(|job| job["id"].as_str().unwrap().to_owned()),
        );
        // A job submitted while paging does not shift later pages.
        if cursor.is_none() {
            app.submit(&app_job(&repo, "no-such-source:1", &["late"]))
                .await;
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    ids.reverse();
    assert_eq!(seen, ids, "newest first, each once");
    let page: Value = app
        .get("/api/v1/jobs?status=succeeded")
        .await
        .json()
        .await
        .unwrap();
    assert!(page["jobs"].as_array().unwrap().is_empty());
    // The other filters, each through its index: the five failed jobs
    // (each's one target failed) are the repository's, found by a prefix of
    // it and by a search in any case; another prefix finds none.
    let ids_of = |query: String| {
        let app = &app;
        async move {
            let page: Value = app.get(&query).await.json().await.unwrap();
            page["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|job| job["id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    let (prefix, name) = repo.rsplit_once('/').unwrap();
    let failed = "/api/v1/jobs?status=failed&has_failed_target=true&limit=100";
    for filter in [
        format!("&repo_prefix={prefix}/{}", &name[..name.len() - 2]),
        format!("&repo_prefix={repo}"),
        format!("&q={}", name.to_uppercase()),
    ] {
        let found = ids_of(format!("{failed}{filter}")).await;
        assert!(
            ids.iter().all(|id| found.contains(id)),
            "{filter}: {found:?}"
        );
    }
    assert!(
        ids_of(format!("{failed}&repo_prefix={repo}x"))
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn cancel_stops_queued_and_running_jobs() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let hanging = HangingRegistry::start().await;
    let app = TestApp::spawn_with(|settings| settings.workers = 1).await;
    let name = unique("cancel");
    engine.import_image(&name, "b1", &[]).await;

    // A push to a registry that never answers keeps the only lane busy.
    let stuck_repo = format!("{}/{}", hanging.address, unique("stuck"));
    // `force` skips the up-to-date read, which would hang before the push.
    let mut stuck_spec = app_job(&stuck_repo, &format!("{name}:b1"), &["v1"]);
    stuck_spec["force"] = json!(true);
    let running = app.submit(&stuck_spec).await;
    app.wait_for(&running, Duration::from_secs(30), |job| {
        job["targets"][0]["status"] == "pushing"
    })
    .await;

    let queued_repo = format!("{}/{}", env.registry, unique("queued"));
    let queued = app
        .submit(&app_job(&queued_repo, &format!("{name}:b1"), &["v1"]))
        .await;
    let cancel = |id: String| {
        app.client
            .post(app.url(&format!("/api/v1/jobs/{id}/cancel")))
            .send()
    };

    let answer = cancel(queued.clone()).await.unwrap();
    assert_eq!(answer.status(), 200);
    let job: Value = answer.json().await.unwrap();
    assert_eq!(job["status"], "cancelled");
    assert_eq!(job["targets"][0]["status"], "cancelled");

    let answer = cancel(running.clone()).await.unwrap();
    assert_eq!(answer.status(), 200);
    let job = app
        .wait_for(&running, Duration::from_secs(30), |job| {
            job["status"] == "cancelled"
        })
        .await;
    assert_eq!(job["targets"][0]["status"], "cancelled");
    assert!(
        engine.names_under(&stuck_repo).await.is_empty(),
        "untag ran after the interrupted push"
    );

    let (status, error) = error_of(cancel(running).await.unwrap()).await;
    assert_eq!((status, error["code"].as_str()), (409, Some("conflict")));
    let registry = support::registry::Registry::open(&env.registry);
    assert!(
        registry
            .pushed(&format!("{queued_repo}/app:v1"))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn probes_answer() {
    let app = TestApp::spawn().await;
    let health = app.get("/healthz").await;
    assert_eq!(health.status(), 200);
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    let kind = if support::postgres_store() {
        "postgres"
    } else {
        "sqlite"
    };
    // The engine's own name: dockerd's /info Name.
    let engine_name = ready["engine_name"].as_str().unwrap_or_default().to_owned();
    assert!(!engine_name.is_empty(), "{ready:#}");
    assert_eq!(
        ready,
        json!({"status": "ready", "database": "ok", "engine": "ok",
               "database_kind": kind, "engine_name": engine_name, "writer_restarts": 0,
               "warnings": []})
    );
    let engines: Value = app.get("/api/v1/engines").await.json().await.unwrap();
    assert_eq!(engines["this_instance_engine"], json!(engine_name));
    let engines = engines["engines"].as_array().unwrap();
    assert_eq!(engines.len(), 1, "{engines:#?}");
    assert_eq!(engines[0]["name"], json!(engine_name));
    assert_eq!(engines[0]["instances"][0]["live"], true);
}

#[tokio::test]
async fn served_openapi_matches_the_checked_in_document() {
    let app = TestApp::spawn().await;
    let served: Value = app.get("/openapi.json").await.json().await.unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json");
    let checked_in: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(
        served == checked_in,
        "openapi/openapi.json is stale: regenerate it with `cargo run -- openapi > openapi/openapi.json`"
    );
    let paths: HashSet<&str> = served["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for path in [
        "/api/v1/jobs",
        "/api/v1/jobs/{id}",
        "/api/v1/jobs/{id}/cancel",
        "/healthz",
        "/readyz",
    ] {
        assert!(paths.contains(path), "{path} documented");
    }
}
