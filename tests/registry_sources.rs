//! Registry sources: `docker://REGISTRY/REPO@sha256:...` (or `:TAG`), an
//! image a remote builder pushed, published wholly in the registry by a
//! publishd with no engine at all (`--docker-host none`). Checked where it
//! lives: the registry's manifests, configs, labels and blobs.

mod support;

use serde_json::{Value, json};
use support::fault_proxy::{FaultProxy, Faults};
use support::registry::{Built, DOCKER_MANIFEST, OCI_MANIFEST, Registry, push_source};
use support::{TestApp, TestEnv, unique};

/// A publishd without an engine.
async fn spawn_engineless() -> TestApp {
    TestApp::spawn_with(|settings| settings.docker_host = Some("none".to_owned())).await
}

/// Every target was written registry-side, as the werf image of `source`.
async fn assert_published_from(reader: &Registry, job: &Value, source: &Built) {
    reader.assert_holds(job).await;
    for target in job["targets"].as_array().unwrap() {
        let reference = target["reference"].as_str().unwrap();
        assert_eq!(target["published_via"], "registry", "{job:#}");
        let pushed = reader.pushed(reference).await.unwrap();
        assert_eq!(
            pushed.label("werf-content-signature"),
            Some(source.config_digest.as_str())
        );
        assert_eq!(pushed.label("werf-docker-image-name"), Some(reference));
        // The builder's config and layers, untouched but for the labels.
        assert_eq!(pushed.label("built-by"), Some("ci"));
        assert_eq!(pushed.config["config"]["Env"], json!(["MODE=ci"]));
        assert_eq!(pushed.layer_digests(), source.layers, "{reference}");
        let repository = reference
            .split_once('/')
            .unwrap()
            .1
            .rsplit_once(':')
            .unwrap()
            .0;
        for layer in &source.layers {
            assert!(
                reader.has_blob(repository, layer).await,
                "{layer} in {repository}"
            );
        }
    }
}

#[tokio::test]
async fn a_docker_source_is_published_in_the_registry_without_an_engine() {
    let env = TestEnv::get();
    let reader = Registry::open(&env.registry);
    let source = push_source(&reader, &unique("ci/app"), "build-1", OCI_MANIFEST).await;
    let app = spawn_engineless().await;

    let ready: Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["engine"], "none", "{ready}");

    // By tag: read once, at submission; the tag moving afterwards changes
    // nothing for this job.
    let repo = format!("{}/{}", env.registry, unique("pub"));
    let spec = json!({
        "repo": repo,
        "images": [{"name": "app", "source": format!("docker://{}/{}:build-1", env.registry, source.repository)}],
        "tags": [
            {"strategy": "custom", "value": "v1"},
            {"strategy": "git-branch", "value": "feature/Docker-Sources"},
            {"strategy": "content"}
        ],
    });
    let id = app.submit(&spec).await;
    push_source(&reader, &source.repository, "build-1", OCI_MANIFEST).await;
    let job = app.wait_finished(&id).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    assert_eq!(job["images"][0]["source_digest"], source.digest.as_str());
    assert_eq!(
        job["images"][0]["source_image_id"],
        source.config_digest.as_str()
    );
    assert_published_from(&reader, &job, &source).await;
    let references: Vec<&str> = job["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|target| target["reference"].as_str().unwrap())
        .collect();
    let content = source.config_digest.trim_start_matches("sha256:");
    assert_eq!(references[0], format!("{repo}/app:v1"));
    assert!(
        references[1].starts_with(&format!("{repo}/app:feature-docker-sources-")),
        "{}",
        references[1]
    );
    assert_eq!(references[2], format!("{repo}/app:{content}"));
    // The builder's format is kept.
    let pushed = reader.pushed(references[0]).await.unwrap();
    assert_eq!(pushed.manifest["mediaType"], OCI_MANIFEST);

    // werf's up-to-date rule holds for registry sources too.
    let pinned = json!({
        "repo": repo,
        "images": [{"name": "app", "source": format!("docker://{}/{}@{}", env.registry, source.repository, source.digest)}],
        "tags": [{"strategy": "custom", "value": "v1"}],
    });
    let again = app.run_job(&pinned).await;
    assert_eq!(again["status"], "succeeded", "{again:#}");
    assert_eq!(again["targets"][0]["up_to_date"], true, "{again:#}");
    assert_eq!(
        again["targets"][0]["image_id"],
        pushed.manifest["config"]["digest"]
    );

    // Without an engine, a local source is refused up front.
    let local = app
        .post_job(
            &json!({"repo": repo, "images": [{"name": "app", "source": "app:build-1"}],
                         "tags": [{"strategy": "custom", "value": "v2"}]}),
        )
        .await;
    assert_eq!(local.status(), 422);
    let error: Value = local.json::<Value>().await.unwrap()["error"].clone();
    assert_eq!(error["field"], "images[0].source", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("--docker-host none"),
        "{error}"
    );
}

#[tokio::test]
async fn a_source_in_another_registry_is_copied_into_the_target_registry() {
    let env = TestEnv::get();
    let source_registry = Registry::open(&env.registry);
    let source = push_source(
        &source_registry,
        &unique("cache/app"),
        "b7",
        DOCKER_MANIFEST,
    )
    .await;
    let target_registry =
        Registry::with_auth(&env.token_registry, &env.auth_user, &env.auth_password);
    let app = spawn_engineless().await;
    let job = app
        .run_job(&json!({
            "repo": format!("{}/{}", env.token_registry, unique("pub")),
            "images": [{"name": "api", "source": format!("docker://{}/{}@{}", env.registry, source.repository, source.digest)}],
            "tags": [{"strategy": "custom", "value": "v1"}, {"strategy": "custom", "value": "v2"}],
            "registry_auth": {"username": env.auth_user, "password": env.auth_password},
        }))
        .await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    assert_published_from(&target_registry, &job, &source).await;
    let pushed = target_registry
        .pushed(job["targets"][0]["reference"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(pushed.manifest["mediaType"], DOCKER_MANIFEST);
}

#[tokio::test]
async fn layers_gone_before_the_manifest_is_put_are_put_back_on_the_next_try() {
    let env = TestEnv::get();
    let reader = Registry::open(&env.registry);
    let source = push_source(&reader, &unique("ci/app"), "gc", OCI_MANIFEST).await;
    // The registry itself refuses the manifest: the proxy deletes its
    // layers from the target repository just before the first PUT.
    let proxy = FaultProxy::start(&env.registry, Faults::LayersGoneOnce).await;
    let app = spawn_engineless().await;
    let repository = unique("pub");
    let job = app
        .run_job(&json!({
            "repo": format!("{}/{repository}", proxy.address),
            "images": [{"name": "app", "source": format!("docker://{}/{}@{}", env.registry, source.repository, source.digest)}],
            "tags": [{"strategy": "custom", "value": "v1"}],
        }))
        .await;
    assert_eq!(proxy.injected(), 1);
    assert_eq!(job["status"], "succeeded", "{job:#}");
    let target = &job["targets"][0];
    assert_eq!(target["attempts"], 2, "{job:#}");
    let refused = target["attempt_errors"][0]["error"].as_str().unwrap();
    assert!(refused.contains("MANIFEST_BLOB_UNKNOWN"), "{refused}");
    // Published as if through the registry itself, layers and all.
    let reference = target["reference"].as_str().unwrap();
    let pushed = reader
        .pushed(&reference.replace(&proxy.address.to_string(), &env.registry))
        .await
        .unwrap();
    assert_eq!(pushed.layer_digests(), source.layers);
    for layer in &source.layers {
        assert!(
            reader.has_blob(&format!("{repository}/app"), layer).await,
            "{layer}"
        );
    }
}

#[tokio::test]
async fn a_missing_source_is_refused_and_one_platforms_manifest_is_published_alone() {
    let env = TestEnv::get();
    let reader = Registry::open(&env.registry);
    let repository = unique("ci/multi");
    let image = push_source(&reader, &repository, "amd64", OCI_MANIFEST).await;
    let app = spawn_engineless().await;
    let repo = format!("{}/{}", env.registry, unique("pub"));
    let missing = app
        .post_job(&json!({
            "repo": repo,
            "images": [{"name": "app", "source": format!("docker://{}/{repository}:nope", env.registry)}],
            "tags": [{"strategy": "custom", "value": "v1"}],
        }))
        .await;
    assert_eq!(missing.status(), 422);
    let error: Value = missing.json::<Value>().await.unwrap()["error"].clone();
    assert_eq!(error["field"], "images[0].source", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("is not in the registry"),
        "{error}"
    );
    // One platform's manifest, named by digest (as an index names it), is
    // a single image of its own.
    let job = app
        .run_job(&json!({
            "repo": repo,
            "images": [{"name": "app", "source": format!("docker://{}/{repository}@{}", env.registry, image.digest)}],
            "tags": [{"strategy": "custom", "value": "v1"}],
            "platforms": ["linux/amd64"],
        }))
        .await;
    assert_published_from(&reader, &job, &image).await;
    assert_eq!(
        job["targets"][0]["image_id"],
        reader
            .pushed(&format!("{repo}/app:v1"))
            .await
            .unwrap()
            .manifest["config"]["digest"]
    );
}
