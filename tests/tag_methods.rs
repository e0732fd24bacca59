//! The two ways of making the labelled image, on the real engine: a
//! config-only load and a `FROM` + `LABEL` build publish the same labels and
//! layers; a build that dies half-way is undone; and Podman, whose store the
//! load does not suit, publishes through the build.

mod support;

use std::collections::BTreeMap;

use publishd::domain::labels::{LabelInput, werf_labels};
use publishd::domain::spec::{JobSpec, Limits, plan};
use publishd::engine::{DockerEngine, Engine, LabelBuild, TagMethod};
use publishd::store::{Created, NewJob, Store};
use serde_json::{Value, json};
use support::engine::TestEngine;
use support::registry::{Pushed, Registry};
use support::{TestApp, TestEngineKind, TestEnv, app_job, unique};

/// Publishes `source` to `reference`'s repository with `method` (forced, so
/// that a second method really pushes) and answers what the registry holds.
async fn publish_with(method: TagMethod, repo: &str, source: &str) -> (Value, Pushed) {
    let env = TestEnv::get();
    let app = TestApp::spawn_with(|settings| settings.tag_method = method).await;
    let mut job = app_job(repo, source, &["v1"]);
    job["force"] = json!(true);
    let job = app.run_job(&job).await;
    let registry = Registry::open(&env.registry);
    registry.assert_holds(&job).await;
    let staging = format!(
        "publishd-staging/{}",
        job["id"].as_str().unwrap().replace('-', "")
    );
    assert!(
        TestEngine::connect().names_under(&staging).await.is_empty(),
        "a build's temporary name was left behind"
    );
    let reference = job["targets"][0]["reference"].as_str().unwrap().to_owned();
    (job, registry.pushed(&reference).await.unwrap())
}

fn labels(image: &Pushed) -> BTreeMap<String, String> {
    serde_json::from_value(image.config["config"]["Labels"].clone()).unwrap()
}

#[tokio::test]
async fn load_and_build_publish_the_same_labels_and_layers() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let name = unique("methods");
    // A built image with its own label, Env and Cmd, and an imported one
    // with nothing.
    let built = engine
        .build_image(
            &name,
            "built",
            "FROM scratch\nCOPY app.txt /app.txt\nENV A=1\nLABEL team=a\nCMD [\"/app\"]\n",
        )
        .await;
    let imported = engine.import_image(&name, "imported", &[]).await;
    for (source, id) in [("built", &built), ("imported", &imported)] {
        let repo = format!("{}/{}", env.registry, unique("methods"));
        let source = format!("{name}:{source}");
        let (_, loaded) = publish_with(TagMethod::Load, &repo, &source).await;
        let (_, rebuilt) = publish_with(TagMethod::Build, &repo, &source).await;
        assert_ne!(loaded.digest, rebuilt.digest, "two images were published");
        assert_eq!(labels(&loaded), labels(&rebuilt), "labels of {source}");
        assert_eq!(
            labels(&rebuilt)["werf-content-signature"],
            id.as_str(),
            "{source}"
        );
        assert_eq!(loaded.diff_ids(), rebuilt.diff_ids(), "layers of {source}");
        let layer_digests = |image: &Pushed| image.manifest["layers"].clone();
        assert_eq!(layer_digests(&loaded), layer_digests(&rebuilt));
        assert!(engine.names_under(&repo).await.is_empty());
    }
}

#[tokio::test]
async fn a_build_that_dies_half_way_is_undone() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let dir = tempfile::tempdir().unwrap();
    let name = unique("build-crash");
    engine.import_image(&name, "b1", &[]).await;
    let repo = format!("{}/{}", env.registry, unique("build-crash"));
    let reference = format!("{repo}/app:v1");
    let staging = format!("publishd-staging/{}:run1", unique("target"));

    // A process that claimed the target, recorded its plan and built under
    // its temporary name, then died before naming the result.
    {
        let store = Store::open_sqlite(&dir.path().join("publishd.db"))
            .await
            .unwrap();
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
        let target = store
            .claim_target(publishd::config::DEFAULT_LEASE)
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
        store
            .record_tag_plan(&target.claim, None, None, Some(&staging))
            .await
            .unwrap();
        docker
            .build_image(&LabelBuild::new(&source.id, &labels), &staging)
            .await
            .unwrap();
        assert!(engine.image(&staging).await.is_some());
    }

    let app = TestApp::spawn_in(dir.path(), |settings| {
        settings.tag_method = TagMethod::Build
    })
    .await;
    let page: Value = app.get("/api/v1/jobs").await.json().await.unwrap();
    let id = page["jobs"][0]["id"].as_str().unwrap().to_owned();
    let job = app.wait_finished(&id).await;
    assert_eq!(job["targets"][0]["attempts"], 2, "{job:#}");
    Registry::open(&env.registry).assert_holds(&job).await;
    assert!(
        engine.image(&staging).await.is_none(),
        "the dead run's temporary name is gone"
    );
    assert!(engine.names_under(&repo).await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn podman_publishes_through_the_build() {
    let env = TestEnv::get();
    let podman_host = match &env.podman {
        Ok(host) => host.clone(),
        Err(reason) => {
            // test-env.sh measured why Podman cannot run on this machine.
            assert!(!reason.is_empty());
            eprintln!("Podman cannot run here: {reason}");
            return;
        }
    };
    let podman = TestEngine::connect_to(&podman_host);
    let name = unique("podman");
    let source = podman.import_image(&name, "b1", &["ENV A=1"]).await;
    let app = TestApp::spawn_with(|settings| {
        settings.docker_host = Some(podman_host.clone());
        settings.tag_method = TagMethod::Auto;
    })
    .await;
    let repo = format!("{}/{}", env.registry, unique("podman"));
    let job = app
        .run_job(&json!({
            "repo": repo,
            "images": [{"name": "app", "source": format!("{name}:b1")}],
            "tags": [{"strategy": "custom", "value": "v1"}, {"strategy": "content"}]
        }))
        .await;
    let registry = Registry::open(&env.registry);
    registry.assert_holds(&job).await;
    for target in job["targets"].as_array().unwrap() {
        let pushed = registry
            .pushed(target["reference"].as_str().unwrap())
            .await
            .unwrap();
        assert_eq!(
            pushed.label("werf-content-signature"),
            Some(source.as_str())
        );
        assert_eq!(pushed.label("werf-image-name"), Some("app"));
    }
    assert!(podman.names_under(&repo).await.is_empty());
    assert_eq!(job["images"][0]["source_image_id"], source.as_str());
    // One target seeds, the other is written registry-side from Podman's
    // push; both dockerds pull it as the registry holds it.
    let mut ways: Vec<_> = job["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|target| target["published_via"].as_str().unwrap())
        .collect();
    ways.sort();
    assert_eq!(ways, ["engine", "registry"], "{job:#}");
    for target in job["targets"].as_array().unwrap() {
        let reference = target["reference"].as_str().unwrap();
        let pushed = registry.pushed(reference).await.unwrap();
        for kind in [TestEngineKind::Docker20, TestEngineKind::Docker26] {
            let pulled = TestEngine::connect_to(&kind.host())
                .pull(reference, None, None)
                .await;
            assert_eq!(pulled.diff_ids, pushed.diff_ids(), "{kind:?}: {reference}");
            assert_eq!(
                serde_json::to_value(&pulled.labels).unwrap(),
                pushed.config["config"]["Labels"],
                "{kind:?}: {reference}"
            );
        }
    }
}
