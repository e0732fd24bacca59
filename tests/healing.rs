//! A pool that heals itself: a lane that panics is replaced and its target
//! capped at --max-target-runs; a full engine disk is waited out, not a
//! reason to fail; a cancel that comes once the push is done leaves the
//! target published; recovery that cannot clean up one target does not hold
//! the queue; cancels racing deferred targets and a shutdown leave every job
//! terminal. The real engine, behind a wrapper where a fault must be made
//! on demand.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bollard::models::ContainerCreateBody;
use publishd::credentials::RegistryAuth;
use publishd::domain::labels::{LabelInput, werf_labels};
use publishd::domain::spec::{JobSpec, Limits, plan};
use publishd::engine::{
    DockerEngine, Engine, EngineDescription, EngineError, LabelBuild, LabelledImage, PushProgress,
    SourceImage,
};
use publishd::store::{Created, NewJob};
use serde_json::{Value, json};
use support::engine::TestEngine;
use support::fault_proxy::{FaultProxy, Faults};
use support::registry::Registry;
use support::{TestApp, TestEnv, app_job, unique};
use tokio::sync::Notify;

/// The real engine with faults made on demand.
struct Faulty {
    inner: DockerEngine,
    /// A load of a reference holding this text panics its lane.
    panic_on: Option<String>,
    /// This many loads fail first, as on a full disk.
    full_disk_loads: AtomicUsize,
    /// Told after each push.
    pushed: Option<Arc<Notify>>,
}

impl Faulty {
    fn new() -> Faulty {
        Faulty {
            inner: DockerEngine::new(Some(&TestEnv::get().docker_host)).unwrap(),
            panic_on: None,
            full_disk_loads: AtomicUsize::new(0),
            pushed: None,
        }
    }
}

#[async_trait]
impl Engine for Faulty {
    async fn ping(&self) -> Result<(), EngineError> {
        self.inner.ping().await
    }
    async fn describe(&self) -> Result<EngineDescription, EngineError> {
        self.inner.describe().await
    }
    async fn inspect_image(&self, name: &str) -> Result<Option<SourceImage>, EngineError> {
        self.inner.inspect_image(name).await
    }
    async fn image_id(&self, reference: &str) -> Result<Option<String>, EngineError> {
        self.inner.image_id(reference).await
    }
    async fn load_image(&self, image: &LabelledImage, reference: &str) -> Result<(), EngineError> {
        if let Some(text) = &self.panic_on
            && reference.contains(text.as_str())
        {
            panic!("injected: the lane dies loading {reference}");
        }
        let full = self
            .full_disk_loads
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            })
            .is_ok();
        if full {
            return Err(EngineError::Api {
                status: 500,
                message: "write /var/lib/docker/tmp/docker-import-1/json: no space left on device"
                    .to_owned(),
            });
        }
        self.inner.load_image(image, reference).await
    }
    async fn build_image(&self, build: &LabelBuild, name: &str) -> Result<String, EngineError> {
        self.inner.build_image(build, name).await
    }
    async fn push(
        &self,
        reference: &str,
        auth: &RegistryAuth,
        progress: &(dyn Fn(PushProgress) + Send + Sync),
    ) -> Result<String, EngineError> {
        let digest = self.inner.push(reference, auth, progress).await?;
        if let Some(pushed) = &self.pushed {
            pushed.notify_one();
        }
        Ok(digest)
    }
    async fn remove_reference(&self, reference: &str) -> Result<(), EngineError> {
        self.inner.remove_reference(reference).await
    }
    async fn tag_image(&self, image_id: &str, reference: &str) -> Result<(), EngineError> {
        self.inner.tag_image(image_id, reference).await
    }
}

async fn spawn_on(
    engine: Faulty,
    configure: impl FnOnce(&mut publishd::config::Settings),
) -> TestApp {
    TestApp::spawn_on_engine_with(Arc::new(engine), configure).await
}

#[tokio::test]
async fn a_panicking_lane_is_replaced_and_its_target_becomes_a_dead_letter() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let name = unique("panic");
    engine.import_image(&name, "b1", &[]).await;
    let source = format!("{name}:b1");
    // The doomed job's source is its own: a seed the healthy job's push
    // left would let its later runs skip the engine that kills them.
    let doomed_name = unique("panic-doomed");
    engine.import_image(&doomed_name, "b1", &[]).await;
    let deadly = unique("deadly");
    let faulty = Faulty {
        panic_on: Some(deadly.clone()),
        ..Faulty::new()
    };
    let app = spawn_on(faulty, |settings| {
        settings.workers = 2;
        settings.max_target_runs = 3;
    })
    .await;

    let doomed = app
        .submit(&app_job(
            &format!("{}/{deadly}", env.registry),
            &format!("{doomed_name}:b1"),
            &["v1"],
        ))
        .await;
    let repo = format!("{}/{}", env.registry, unique("healthy"));
    let healthy = app
        .submit(&app_job(&repo, &source, &["v1", "v2", "v3"]))
        .await;

    let job = app.wait_finished(&doomed).await;
    let target = &job["targets"][0];
    assert_eq!(target["status"], "failed", "{job:#}");
    assert_eq!(target["dead_letter"], true, "{job:#}");
    assert_eq!(target["runs"], 3, "{job:#}");
    let error = target["error"].as_str().unwrap();
    assert!(error.starts_with("dead letter: 3 runs"), "{error}");
    assert!(
        target["warnings"]
            .as_array()
            .is_some_and(|warnings| warnings.is_empty()),
        "nothing was on the engine to clean up: {job:#}"
    );
    let registry = Registry::open(&env.registry);
    registry
        .assert_holds(&app.wait_finished(&healthy).await)
        .await;
    // Both lanes died at least once between them; the pool is still whole.
    let later = app.run_job(&app_job(&repo, &source, &["v4", "v5"])).await;
    registry.assert_holds(&later).await;
    assert!(
        engine
            .names_under(&format!("{}/{deadly}", env.registry))
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn a_full_engine_disk_is_waited_out() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let name = unique("disk");
    engine.import_image(&name, "b1", &[]).await;
    let faulty = Faulty {
        full_disk_loads: AtomicUsize::new(3),
        ..Faulty::new()
    };
    // Few tries: a full disk must not spend them.
    let app = spawn_on(faulty, |settings| settings.retry.attempts = 2).await;
    let repo = format!("{}/{}", env.registry, unique("disk"));
    let job = app
        .run_job(&app_job(&repo, &format!("{name}:b1"), &["v1"]))
        .await;
    Registry::open(&env.registry).assert_holds(&job).await;
    let tries = job["targets"][0]["attempt_errors"].as_array().unwrap();
    assert_eq!(tries.len(), 3, "{job:#}");
    for attempt in tries {
        assert_eq!(attempt["step"], "tag");
        assert!(
            attempt["error"].as_str().unwrap().contains("no space left"),
            "{attempt}"
        );
    }
}

#[tokio::test]
async fn a_cancel_after_the_push_leaves_the_target_published() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let name = unique("late-cancel");
    engine.import_image(&name, "b1", &[]).await;
    // The read-back of the pushed digest takes a while: the cancel comes then.
    let proxy =
        FaultProxy::start(&env.registry, Faults::SlowReadBack(Duration::from_secs(2))).await;
    let pushed = Arc::new(Notify::new());
    let faulty = Faulty {
        pushed: Some(pushed.clone()),
        ..Faulty::new()
    };
    let app = spawn_on(faulty, |_| {}).await;
    let repository = unique("late-cancel");
    let repo = format!("{}/{repository}", proxy.address);
    let mut spec = app_job(&repo, &format!("{name}:b1"), &["v1"]);
    spec["force"] = json!(true);
    let id = app.submit(&spec).await;
    pushed.notified().await;
    let cancel = app.cancel(&id).await;
    assert_eq!(cancel.status(), 200);
    let job = app.wait_finished(&id).await;
    assert_eq!(job["cancel_requested"], true);
    let target = &job["targets"][0];
    assert_eq!(target["status"], "succeeded", "{job:#}");
    let pushed = Registry::open(&env.registry)
        .pushed(&format!("{}/{repository}/app:v1", env.registry))
        .await
        .expect("published");
    assert_eq!(pushed.digest, target["digest"].as_str().unwrap());
    assert!(engine.names_under(&repo).await.is_empty());
}

/// A process that claimed a target and made its labelled image, then died.
async fn crashed_run(dir: &std::path::Path, repo: &str, source: &str) -> String {
    let store = support::open_store(dir).await;
    let spec: JobSpec = serde_json::from_value(app_job(repo, source, &["v1"])).unwrap();
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
    let Created::New(job) = created else {
        panic!("job created")
    };
    // A short lease: on a shared database, the process's death shows only
    // by its lease running out.
    let target = store
        .claim_target(Duration::from_secs(2))
        .await
        .unwrap()
        .expect("claimed");
    let reference = format!("{repo}/app:v1");
    let docker = DockerEngine::new(Some(&TestEnv::get().docker_host)).unwrap();
    let source = docker.inspect_image(&target.source).await.unwrap().unwrap();
    let labels = werf_labels(&LabelInput {
        reference: &reference,
        strategy: target.strategy,
        image_name: Some("app"),
        tag: "v1",
        source_image_id: &source.id,
    });
    let image = LabelledImage::new(&source, &labels);
    store
        .record_tag_plan(&target.claim, None, Some(&image.id), None)
        .await
        .unwrap();
    docker.load_image(&image, &reference).await.unwrap();
    job.id.to_string()
}

#[tokio::test]
async fn recovery_that_cannot_clean_up_one_target_does_not_hold_the_queue() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let dir = tempfile::tempdir().unwrap();
    let name = unique("blocked");
    engine.import_image(&name, "b1", &[]).await;
    let source = format!("{name}:b1");
    let repo = format!("{}/{}", env.registry, unique("blocked"));
    let crashed = crashed_run(dir.path(), &repo, &source).await;
    // A container uses the leftover image: the engine refuses to remove its
    // name (409), as it would for any image a container was made from.
    let container = engine
        .docker
        .create_container(
            None::<bollard::query_parameters::CreateContainerOptions>,
            ContainerCreateBody {
                image: Some(format!("{repo}/app:v1")),
                cmd: Some(vec!["/hello.txt".to_owned()]),
                ..Default::default()
            },
        )
        .await
        .expect("container created")
        .id;

    let app = TestApp::spawn_in(dir.path(), |_| {}).await;
    let other_repo = format!("{}/{}", env.registry, unique("unblocked"));
    let other = app.run_job(&app_job(&other_repo, &source, &["v1"])).await;
    Registry::open(&env.registry).assert_holds(&other).await;

    let job = app.wait_finished(&crashed).await;
    let target = &job["targets"][0];
    assert_eq!(target["status"], "succeeded", "{job:#}");
    let warnings: Vec<&str> = target["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|warning| warning.as_str().unwrap())
        .collect();
    assert!(
        warnings
            .iter()
            .any(|warning| warning.starts_with("recovery after an interrupted run")),
        "{job:#}"
    );
    engine
        .docker
        .remove_container(
            &container,
            None::<bollard::query_parameters::RemoveContainerOptions>,
        )
        .await
        .unwrap();
    app.stop().await;
}

#[tokio::test]
async fn cancels_racing_deferred_targets_and_a_shutdown_leave_every_job_terminal() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let dir = tempfile::tempdir().unwrap();
    let name = unique("racing");
    let source = format!("{name}:b1");
    let repo = format!("{}/{}", env.registry, unique("racing"));
    // Jobs recorded before their source was resolved (as when the engine
    // did not answer at acceptance): their content targets learn their
    // (shared) reference only when claimed, and all but one are deferred
    // while it is busy.
    engine.import_image(&name, "b1", &[]).await;
    let job = json!({"repo": repo, "images": [{"name": "app", "source": source}],
                     "tags": [{"strategy": "content"}, {"strategy": "custom", "value": "v1"}]});
    let mut ids = Vec::new();
    {
        let store = support::open_store(dir.path()).await;
        let spec: JobSpec = serde_json::from_value(job).unwrap();
        let plan = plan(&spec, Limits::default()).unwrap();
        for _ in 0..8 {
            let id = uuid::Uuid::now_v7();
            let new = NewJob {
                id,
                plan: plan.clone(),
                max_pending: 100,
                has_registry_auth: false,
                idempotency_key: None,
                spec_hash: "x".to_owned(),
                submitter: publishd::store::Submitter::anonymous(),
                engine: None,
            };
            assert!(matches!(
                store.create_job(new).await.unwrap(),
                Created::New(_)
            ));
            ids.push(id.to_string());
        }
    }
    let first = TestApp::spawn_in(dir.path(), |settings| {
        settings.workers = 3;
        settings.shutdown_grace = Duration::from_millis(300);
    })
    .await;
    for (index, id) in ids.iter().enumerate() {
        if index % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(40 * index as u64)).await;
            let cancel = first.cancel(id).await;
            assert!([200, 409].contains(&cancel.status().as_u16()));
        }
    }
    first.stop().await;

    let second = TestApp::spawn_in(dir.path(), |settings| settings.workers = 3).await;
    for (index, id) in ids.iter().enumerate() {
        let job: Value = second.wait_finished(id).await;
        if index % 2 == 1 {
            assert_eq!(job["status"], "succeeded", "{job:#}");
        } else {
            assert!(
                ["succeeded", "cancelled"].contains(&job["status"].as_str().unwrap()),
                "{job:#}"
            );
        }
    }
    assert!(engine.names_under(&repo).await.is_empty());
    second.stop().await;
}
