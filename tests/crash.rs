//! SIGKILL the real publishd process while it publishes, at several points,
//! restart it on the same database, and check that nothing was lost.

mod support;

use serde_json::{Value, json};
use support::binary::Server;
use support::engine::TestEngine;
use support::registry::Registry;
use support::{TestEnv, unique};

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
        let response = server
            .client
            .post(format!("{}/api/v1/jobs", server.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        ids.push(
            response.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
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
        assert_eq!(job["status"], "succeeded", "{job:#}");
        for target in job["targets"].as_array().unwrap() {
            let pushed = registry
                .pushed(target["reference"].as_str().unwrap())
                .await
                .expect("pushed");
            assert_eq!(pushed.digest, target["digest"].as_str().unwrap());
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
