//! Jobs survive the process: queued jobs run after a restart, and targets a
//! dead process left mid-step are cleaned up on the engine and run again.

mod support;

use std::time::Duration;

use publishd::domain::labels::{LabelInput, werf_labels};
use publishd::domain::spec::{JobSpec, Limits, plan};
use publishd::engine::{DockerEngine, Engine, LabelBuild, LabelledImage, TagMethod};
use publishd::store::{Created, NewJob};
use serde_json::{Value, json};
use support::engine::TestEngine;
use support::registry::Registry;
use support::{HangingRegistry, TestApp, TestEnv, app_job, effective_tag_method, unique};

#[tokio::test]
async fn queued_jobs_run_after_a_restart_and_an_interrupted_push_is_recovered() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let hanging = HangingRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let name = unique("restart");
    engine.import_image(&name, "b1", &[]).await;
    let source = format!("{name}:b1");

    // One lane, stuck pushing to a registry that never answers; a zero grace
    // period means stopping abandons that push mid-step, as a crash would.
    let first = TestApp::spawn_in(dir.path(), |settings| {
        settings.workers = 1;
        settings.shutdown_grace = Duration::ZERO;
    })
    .await;
    let stuck_repo = format!("{}/{}", hanging.address, unique("stuck"));
    // `force` skips the up-to-date read, which would hang before the push.
    let mut stuck_spec = app_job(&stuck_repo, &source, &["v1"]);
    stuck_spec["force"] = json!(true);
    let stuck = first.submit(&stuck_spec).await;
    first
        .wait_for(&stuck, Duration::from_secs(30), |job| {
            job["targets"][0]["status"] == "pushing"
        })
        .await;
    let repo = format!("{}/{}", env.registry, unique("after-restart"));
    let queued: Vec<String> = vec![
        first.submit(&app_job(&repo, &source, &["v1"])).await,
        first.submit(&app_job(&repo, &source, &["v2"])).await,
    ];
    for id in &queued {
        assert_eq!(first.job(id).await["status"], "queued");
    }
    first.stop().await;
    let leftover = format!("{stuck_repo}/app:v1");
    assert!(
        engine.image(&leftover).await.is_some(),
        "the abandoned tag step left its reference"
    );

    let second = TestApp::spawn_in(dir.path(), |settings| {
        settings.timeouts.push = Duration::from_secs(2);
        settings.retry.attempts = 2;
    })
    .await;
    let registry = Registry::open(&env.registry);
    for id in &queued {
        registry.assert_holds(&second.wait_finished(id).await).await;
    }
    let job = second.wait_finished(&stuck).await;
    let target = &job["targets"][0];
    assert_eq!(target["status"], "failed");
    // Run 1 was abandoned by the first process; run 2 tried the push twice.
    assert_eq!(target["attempts"], 3, "{target:#}");
    let error = target["error"].as_str().unwrap();
    assert!(
        error.contains("timed out") && error.contains("gave up after 2 tries"),
        "{target:#}"
    );
    let tries = target["attempt_errors"].as_array().unwrap();
    assert_eq!(tries.len(), 2, "{target:#}");
    for (index, attempt) in tries.iter().enumerate() {
        assert_eq!(attempt["step"], "push");
        assert_eq!(attempt["attempt"], index as i64 + 2);
    }
    assert!(
        engine.image(&leftover).await.is_none(),
        "leftover reference removed"
    );
    assert!(engine.names_under(&repo).await.is_empty());
    second.stop().await;
}

#[tokio::test]
async fn a_crash_after_the_tag_step_is_undone_and_the_users_image_restored() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let dir = tempfile::tempdir().unwrap();
    let (name, mine) = (unique("crash"), unique("mine"));
    engine.import_image(&name, "b1", &[]).await;
    let my_image = engine.import_image(&mine, "v0", &[]).await;
    let repo = format!("{}/{}", env.registry, unique("crash"));
    let reference = format!("{repo}/app:v1");
    engine.tag(&my_image, &reference).await;

    // A process that claimed the target and made the labelled image, then died.
    {
        let store = support::open_store(dir.path()).await;
        let spec: JobSpec =
            serde_json::from_value(app_job(&repo, &format!("{name}:b1"), &["v1"])).unwrap();
        let plan = plan(&spec, Limits::default()).unwrap();
        let created = store
            .create_job(NewJob {
                id: uuid::Uuid::now_v7(),
                plan: plan.clone(),
                max_pending: 100,
                has_registry_auth: false,
                idempotency_key: None,
                spec_hash: "x".to_owned(),
                submitter: publishd::store::Submitter::anonymous(),
                engine: None,
            })
            .await
            .unwrap();
        assert!(matches!(created, Created::New(_)));
        // A short lease: on a shared database, the process's death shows
        // only by its lease running out.
        let target = store
            .claim_target(Duration::from_secs(2))
            .await
            .unwrap()
            .expect("claimed");
        let docker = DockerEngine::new(Some(&env.docker_host)).unwrap();
        let source = docker.inspect_image(&target.source).await.unwrap().unwrap();
        let labels = werf_labels(&LabelInput {
            reference: &reference,
            strategy: target.strategy,
            image_name: Some("app"),
            tag: "v1",
            source_image_id: &source.id,
        });
        // What the engine's tag method records and makes: the load's id is
        // known before, the build's temporary name is.
        let created = match effective_tag_method() {
            TagMethod::Build => {
                let staging = format!("publishd-staging/{}:test", unique("crash"));
                store
                    .record_tag_plan(&target.claim, Some(&my_image), None, Some(&staging))
                    .await
                    .unwrap();
                let build = LabelBuild::new(&source.id, &labels);
                let id = docker.build_image(&build, &staging).await.unwrap();
                store
                    .record_created_image(&target.claim, &id)
                    .await
                    .unwrap();
                docker.tag_image(&id, &reference).await.unwrap();
                docker.remove_reference(&staging).await.unwrap();
                id
            }
            _ => {
                let image = LabelledImage::new(&source, &labels);
                store
                    .record_tag_plan(&target.claim, Some(&my_image), Some(&image.id), None)
                    .await
                    .unwrap();
                docker.load_image(&image, &reference).await.unwrap();
                image.id
            }
        };
        assert_eq!(engine.image(&reference).await.unwrap().id, created);
    }

    let app = TestApp::spawn_in(dir.path(), |_| {}).await;
    let page: Value = app.get("/api/v1/jobs").await.json().await.unwrap();
    let id = page["jobs"][0]["id"].as_str().unwrap().to_owned();
    let job = app.wait_finished(&id).await;
    let target = &job["targets"][0];
    assert_eq!(target["status"], "succeeded", "{job:#}");
    assert_eq!(target["attempts"], 2);
    let pushed = Registry::open(&env.registry)
        .pushed(&reference)
        .await
        .unwrap();
    assert_eq!(pushed.digest, target["digest"].as_str().unwrap());
    let source = engine.image(&format!("{name}:b1")).await.unwrap();
    assert_eq!(
        pushed.label("werf-content-signature"),
        Some(source.id.as_str())
    );
    assert_eq!(
        engine.image(&reference).await.map(|i| i.id),
        Some(my_image),
        "user's image restored"
    );
    app.stop().await;
}
