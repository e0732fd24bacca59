//! SIGKILL the real publishd process while it publishes, at several points,
//! restart it on the same database, and check that nothing was lost.

mod support;

use serde_json::{Value, json};
use support::binary::Server;
use support::engine::TestEngine;
use support::registry::{OCI_MANIFEST, Registry, push_source};
use support::{TestEnv, app_job, unique};

#[tokio::test]
async fn sigkill_at_any_point_loses_nothing() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let dir = tempfile::tempdir().unwrap();
    let repository = unique("crash");
    let repo = format!("{}/{repository}", env.registry);

    let server = Server::start(dir.path(), 0, &[]).await;
    let mut ids = Vec::new();
    for index in 0..4 {
        let name = unique("crash-src");
        engine.import_image(&name, "b1", &[]).await;
        let tags: Vec<Value> = (0..8)
            .map(|t| json!({"strategy": "custom", "value": format!("v{t}")}))
            .collect();
        let body = json!({"repo": repo, "images": [{"name": format!("app{index}"), "source": format!("{name}:b1")}], "tags": tags});
        ids.push(server.submit(&body).await);
    }

    // Kill during a push, during a tag step, and between two targets.
    let pushing = server
        .kill_when(&ids, |s| s.iter().any(|s| s == "pushing"))
        .await;
    let server = Server::start(dir.path(), 1, &[]).await;
    let tagging = server
        .kill_when(&ids, |s| s.iter().any(|s| s == "tagging"))
        .await;
    let server = Server::start(dir.path(), 2, &[]).await;
    let done_before = server
        .statuses(&ids)
        .await
        .iter()
        .filter(|s| *s == "succeeded")
        .count();
    server
        .kill_when(&ids, |s| {
            s.iter().filter(|s| *s == "succeeded").count() > done_before
        })
        .await;
    assert!(pushing && tagging, "the kills did not land mid-step");

    let server = Server::start(dir.path(), 3, &[]).await;
    let registry = Registry::open(&env.registry);
    let (mut targets, mut attempts) = (0, 0);
    for id in &ids {
        let job = server.wait_finished(id).await;
        registry.assert_holds(&job).await;
        for target in job["targets"].as_array().unwrap() {
            targets += 1;
            attempts += target["attempts"].as_i64().unwrap();
        }
    }
    assert!(
        attempts > targets,
        "no target was interrupted and run again"
    );
    let left = engine.names_under(&repo).await;
    if !left.is_empty() {
        let keep = dir.keep();
        panic!(
            "target references left on the engine: {left:?} (logs in {})",
            keep.display()
        );
    }
    assert_eq!(registry.tags(&format!("{repository}/app0")).await.len(), 8);
}

#[tokio::test]
async fn sigterm_drains_running_steps_and_the_next_start_finishes() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let dir = tempfile::tempdir().unwrap();
    let repo = format!("{}/{}", env.registry, unique("drain"));
    let name = unique("drain-src");
    engine.import_image(&name, "b1", &[]).await;
    let tags: Vec<String> = (0..12).map(|t| format!("v{t}")).collect();
    let tags: Vec<&str> = tags.iter().map(String::as_str).collect();

    let server = Server::start(dir.path(), 0, &[]).await;
    let id = server
        .submit(&app_job(&repo, &format!("{name}:b1"), &tags))
        .await;
    let ids = [id.clone()];
    while !server.statuses(&ids).await.iter().any(|s| s == "pushing") {}
    let stopping = std::time::Instant::now();
    server.terminate().await;
    assert!(
        stopping.elapsed() < std::time::Duration::from_secs(20),
        "drain took too long"
    );

    // Every step under way finished: nothing is left mid-step, on disk or on the engine.
    let store = support::open_store(dir.path()).await;
    assert_eq!(store.queue_counts().await.unwrap().targets_in_flight, 0);
    drop(store);
    assert!(engine.names_under(&repo).await.is_empty());

    let server = Server::start(dir.path(), 1, &[]).await;
    let job = server.wait_finished(&id).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    let registry = Registry::open(&env.registry);
    for target in job["targets"].as_array().unwrap() {
        assert_eq!(
            target["attempts"], 1,
            "drained, not interrupted: {target:#}"
        );
        let pushed = registry
            .pushed(target["reference"].as_str().unwrap())
            .await
            .unwrap();
        assert_eq!(pushed.digest, target["digest"].as_str().unwrap());
    }
    server.terminate().await;
}

/// Killed mid-push and started again without its engine (`--docker-host
/// none`), publishd cannot undo what the dead run left on the engine: it
/// says so on that target instead of waiting for the engine, fails the
/// targets that need one (they could never run here) and publishes what
/// needs none meanwhile. On a shared database, what needs the engine is
/// left to the instances that drive it.
#[tokio::test]
async fn a_restart_without_the_engine_after_a_crash_mid_push_still_publishes() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let dir = tempfile::tempdir().unwrap();
    let repository = unique("no-engine");
    let repo = format!("{}/{repository}", env.registry);
    let name = unique("no-engine-src");
    engine.import_image(&name, "b1", &[]).await;
    let tags: Vec<Value> = (0..8)
        .map(|t| json!({"strategy": "custom", "value": format!("v{t}")}))
        .collect();

    let server = Server::start(dir.path(), 0, &[]).await;
    let local = server
        .submit(&json!({"repo": repo, "images": [{"name": "app", "source": format!("{name}:b1")}], "tags": tags}))
        .await;
    let pushing = server
        .kill_when(std::slice::from_ref(&local), |s| {
            s.iter().any(|s| s == "pushing")
        })
        .await;
    assert!(pushing, "the kill did not land mid-push");

    let server = Server::start(dir.path(), 1, &[("DOCKER_HOST", "none")]).await;
    let registry = Registry::open(&env.registry);
    let source = push_source(&registry, &unique("no-engine-remote"), "b1", OCI_MANIFEST).await;
    let remote = server
        .submit(&json!({"repo": repo,
                        "images": [{"name": "remote", "source": format!("docker://{}/{}@{}", env.registry, source.repository, source.digest)}],
                        "tags": [{"strategy": "custom", "value": "v1"}]}))
        .await;
    let job = server.wait_finished(&remote).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    registry.assert_holds(&job).await;

    // On a shared database the local job is its engine's: this instance,
    // which drives none, leaves it to that engine's instances.
    if support::postgres_store() {
        return;
    }
    let interrupted = server.wait_finished(&local).await;
    assert_eq!(interrupted["status"], "failed", "{interrupted:#}");
    let targets = interrupted["targets"].as_array().unwrap();
    for target in targets {
        let error = target["error"].as_str().unwrap_or_default();
        assert!(error.contains("--docker-host none"), "{interrupted:#}");
    }
    let warned = targets
        .iter()
        .flat_map(|target| target["warnings"].as_array().unwrap())
        .filter_map(Value::as_str)
        .filter(|warning| warning.contains("could not clean up the engine"))
        .count();
    assert!(
        warned >= 1,
        "an interrupted target says what was left: {interrupted:#}"
    );
}
