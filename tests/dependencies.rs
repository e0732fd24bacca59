//! Dependencies that go away: the Docker engine and the registry stopped and
//! started again while jobs wait; targets resume instead of failing.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::engine::TestEngine;
use support::procs::{PrivateEngine, PrivateRegistry};
use support::registry::Registry;
use support::{TestApp, TestEnv, app_job, unique};
use tokio::task::block_in_place;

/// Waits until the job's first target has recorded a failed try: it is
/// waiting for the dependency.
/// Waits until a target of the job has failed a try, and answers that
/// try's error. Any target: of several targets of one source, one tries
/// the engine while the others wait for its push (a seed).
async fn wait_for_a_failed_try(app: &TestApp, id: &str) -> String {
    let failed_try = |job: &Value| {
        job["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|target| target["attempt_errors"][0]["error"].as_str())
            .map(str::to_owned)
    };
    let job = app
        .wait_for(id, Duration::from_secs(30), |job| failed_try(job).is_some())
        .await;
    assert_eq!(job["status"], "running", "{job:#}");
    failed_try(&job).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_restart_is_waited_out() {
    let env = TestEnv::get();
    let dir = tempfile::tempdir().unwrap();
    let mut private = block_in_place(|| PrivateEngine::start(dir.path()));
    let engine = TestEngine::connect_to(&private.host());
    let name = unique("engine-down");
    engine.import_image(&name, "b1", &[]).await;
    let host = private.host();
    let app = TestApp::spawn_with(|settings| settings.docker_host = Some(host)).await;

    block_in_place(|| private.stop());
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert!(
        ready["engine"].as_str().unwrap().contains("unreachable"),
        "{ready}"
    );
    assert_eq!(ready["database"], "ok");

    let repo = format!("{}/{}", env.registry, unique("engine-down"));
    let id = app
        .submit(&app_job(&repo, &format!("{name}:b1"), &["v1", "v2"]))
        .await;
    // Targets wait, they do not fail: the job is still running.
    wait_for_a_failed_try(&app, &id).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    block_in_place(|| private.start_again());
    let job = app.wait_finished(&id).await;
    Registry::open(&env.registry).assert_holds(&job).await;
    assert_eq!(app.get("/readyz").await.status(), 200);
    assert!(engine.names_under(&repo).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_restart_is_waited_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut private = block_in_place(|| PrivateRegistry::start(dir.path()));
    let engine = TestEngine::connect();
    let name = unique("registry-down");
    engine.import_image(&name, "b1", &[]).await;
    let app = TestApp::spawn().await;
    let repo = format!("{}/{}", private.host, unique("registry-down"));

    block_in_place(|| private.stop());
    let id = app
        .submit(&app_job(&repo, &format!("{name}:b1"), &["v1", "v2"]))
        .await;
    let error = wait_for_a_failed_try(&app, &id).await;
    assert!(error.contains("connection refused"), "{error}");
    tokio::time::sleep(Duration::from_secs(3)).await;

    block_in_place(|| private.start_again());
    let job = app.wait_finished(&id).await;
    Registry::open(&private.host).assert_holds(&job).await;
    assert!(engine.names_under(&repo).await.is_empty());
}

#[tokio::test]
async fn a_locked_database_makes_the_service_unready() {
    use sqlx::Connection;
    let app = TestApp::spawn().await;
    assert_eq!(app.get("/readyz").await.status(), 200);
    let mut other = sqlx::SqliteConnection::connect(&format!(
        "sqlite://{}",
        app.dir.join("publishd.db").display()
    ))
    .await
    .unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut other)
        .await
        .unwrap();
    // A readiness report answers probes for a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert_ne!(ready["database"], "ok", "{ready}");
    assert_eq!(ready["engine"], "ok");
    sqlx::query("COMMIT").execute(&mut other).await.unwrap();
    // The probe that timed out may still hold the writer for a moment.
    let start = std::time::Instant::now();
    while app.get("/readyz").await.status() != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "never ready again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_started_before_its_engine_accepts_jobs_and_runs_them_later() {
    let env = TestEnv::get();
    let dir = tempfile::tempdir().unwrap();
    let mut private = block_in_place(|| PrivateEngine::start(dir.path()));
    let engine = TestEngine::connect_to(&private.host());
    let name = unique("late-engine");
    engine.import_image(&name, "b1", &[]).await;
    block_in_place(|| private.stop());

    // Boot order: the service comes up first.
    let host = private.host();
    let app = TestApp::spawn_with(|settings| settings.docker_host = Some(host)).await;
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert!(
        ready["engine"].as_str().unwrap().contains("unreachable"),
        "{ready}"
    );
    let repo = format!("{}/{}", env.registry, unique("late-engine"));
    let id = app
        .submit(&app_job(&repo, &format!("{name}:b1"), &["v1"]))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        ["queued", "running"].contains(&app.job(&id).await["status"].as_str().unwrap()),
        "the job waits for the engine"
    );

    block_in_place(|| private.start_again());
    let job = app.wait_finished(&id).await;
    Registry::open(&env.registry).assert_holds(&job).await;
    assert_eq!(app.get("/readyz").await.status(), 200);
    assert!(engine.names_under(&repo).await.is_empty());
}
