//! A job publishes one image per source: the id its source named when the
//! job was accepted, for every target, even if the name moves meanwhile.

mod support;

use std::time::Duration;

use serde_json::json;
use support::engine::TestEngine;
use support::registry::Registry;
use support::{HangingRegistry, TestApp, TestEnv, app_job, unique};

#[tokio::test]
async fn every_target_carries_the_image_the_source_named_at_acceptance() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let name = unique("moving");
    let accepted = engine.import_image(&name, "b1", &[]).await;
    let source = format!("{name}:b1");

    // The only lane is held by a push that never gets an answer, so the job
    // waits in the queue while the name moves.
    let app = TestApp::spawn_with(|settings| settings.workers = 1).await;
    let hanging = HangingRegistry::start().await;
    let mut blocker = app_job(
        &format!("{}/{}", hanging.address, unique("hold")),
        &source,
        &["v1"],
    );
    blocker["force"] = json!(true);
    let blocker = app.submit(&blocker).await;
    app.wait_for(&blocker, Duration::from_secs(30), |job| {
        job["targets"][0]["status"] == "pushing"
    })
    .await;

    let repo = format!("{}/{}", env.registry, unique("moving"));
    let id = app
        .submit(&json!({
            "repo": repo,
            "images": [{"name": "app", "source": source}],
            "tags": [{"strategy": "custom", "value": "v1"},
                     {"strategy": "git-branch", "value": "main"},
                     {"strategy": "content"}]
        }))
        .await;
    let queued = app.job(&id).await;
    assert_eq!(queued["status"], "queued");
    assert_eq!(queued["images"][0]["source_image_id"], accepted.as_str());
    // The content tag is known at once: the source was resolved.
    let hex = accepted.trim_start_matches("sha256:");
    assert_eq!(queued["targets"][2]["tag"], hex);

    // The pipeline builds again under the same name before the job runs.
    let moved = engine.import_image(&name, "b1", &[]).await;
    assert_ne!(moved, accepted);
    let cancel = app
        .client
        .post(app.url(&format!("/api/v1/jobs/{blocker}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 200);

    let job = app.wait_finished(&id).await;
    let registry = Registry::open(&env.registry);
    registry.assert_holds(&job).await;
    for target in job["targets"].as_array().unwrap() {
        let pushed = registry
            .pushed(target["reference"].as_str().unwrap())
            .await
            .unwrap();
        assert_eq!(
            pushed.label("werf-content-signature"),
            Some(accepted.as_str()),
            "{target:#}"
        );
    }
    assert_eq!(job["images"][0]["source_image_id"], accepted.as_str());
}

#[tokio::test]
async fn a_source_removed_after_acceptance_fails_its_targets_clearly() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let name = unique("vanishing");
    let accepted = engine.import_image(&name, "b1", &[]).await;
    let app = TestApp::spawn_with(|settings| settings.workers = 1).await;
    let hanging = HangingRegistry::start().await;
    let mut blocker = app_job(
        &format!("{}/{}", hanging.address, unique("hold")),
        &format!("{name}:b1"),
        &["v1"],
    );
    blocker["force"] = json!(true);
    let blocker_source = unique("holder");
    engine.import_image(&blocker_source, "b1", &[]).await;
    blocker["images"][0]["source"] = json!(format!("{blocker_source}:b1"));
    let blocker = app.submit(&blocker).await;
    app.wait_for(&blocker, Duration::from_secs(30), |job| {
        job["targets"][0]["status"] == "pushing"
    })
    .await;

    let repo = format!("{}/{}", env.registry, unique("vanishing"));
    let id = app
        .submit(&app_job(&repo, &format!("{name}:b1"), &["v1"]))
        .await;
    // Rebuilt under the same name, and the accepted image pruned.
    engine.import_image(&name, "b1", &[]).await;
    engine
        .docker
        .remove_image(
            &accepted,
            None::<bollard::query_parameters::RemoveImageOptions>,
            None,
        )
        .await
        .expect("the old image has no name left and can go");
    app.client
        .post(app.url(&format!("/api/v1/jobs/{blocker}/cancel")))
        .send()
        .await
        .unwrap();
    let job = app.wait_finished(&id).await;
    assert_eq!(job["status"], "failed", "{job:#}");
    let error = job["targets"][0]["error"].as_str().unwrap();
    assert!(
        error.contains(&accepted) && error.contains("no longer exists"),
        "{error}"
    );
    assert!(
        Registry::open(&env.registry)
            .pushed(&format!("{repo}/app:v1"))
            .await
            .is_none()
    );
}
