//! Publishing for real: jobs through the API, results read back from the
//! registry and the engine.

mod support;

use publishd::engine::TagMethod;
use serde_json::{Value, json};
use support::engine::{LocalImage, TestEngine};
use support::registry::Registry;
use support::{TestApp, TestEnv, app_job, effective_tag_method, unique};

/// The Env dockerd's classic builder gives an image that has none.
const BUILDER_DEFAULT_PATH: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Checks one succeeded target where it lives: the registry holds the tag
/// under the recorded digest, with werf's labels, the source's config and
/// the source's layers; the engine no longer has the target reference.
async fn assert_published(
    target: &Value,
    source: &LocalImage,
    registry: &Registry,
    engine: &TestEngine,
) {
    assert_eq!(target["status"], "succeeded", "{target:#}");
    let reference = target["reference"].as_str().unwrap();
    let pushed = registry
        .pushed(reference)
        .await
        .unwrap_or_else(|| panic!("{reference} not in the registry"));
    assert_eq!(
        pushed.digest,
        target["digest"].as_str().unwrap(),
        "recorded digest of {reference}"
    );
    assert_eq!(pushed.label("werf-docker-image-name"), Some(reference));
    assert_eq!(
        pushed.label("werf-tag-strategy"),
        target["strategy"].as_str()
    );
    assert_eq!(pushed.label("werf-image"), Some("true"));
    assert_eq!(
        pushed.label("werf-image-name"),
        Some(target["image"].as_str().unwrap_or(""))
    );
    assert_eq!(pushed.label("werf-image-tag"), target["tag"].as_str());
    assert_eq!(pushed.label("werf-image-version"), Some("1"));
    // werf's DockerImageID: the engine's id of the published image. On the
    // classic image store that is its config's digest, as pushed. On the
    // containerd store it names the engine's own manifest or index, which
    // its push may rewrite, so the registry cannot tell it: a digest there.
    if TestEnv::get().engine.containerd_store() {
        let id = target["image_id"].as_str().unwrap_or_default();
        let hex = id.strip_prefix("sha256:").unwrap_or_default();
        assert!(
            hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
            "image_id {id:?}"
        );
    } else {
        assert_eq!(target["image_id"], pushed.manifest["config"]["digest"]);
    }
    assert_eq!(
        pushed.label("werf-content-signature"),
        Some(source.id.as_str())
    );
    assert_eq!(pushed.diff_ids(), source.layers, "layers of {reference}");
    for key in [
        "Cmd",
        "Entrypoint",
        "Env",
        "WorkingDir",
        "User",
        "ExposedPorts",
        "Volumes",
    ] {
        let mut expected = source.config.get(key).cloned().unwrap_or(Value::Null);
        if key == "Env" && effective_tag_method() == TagMethod::Build {
            // The builder's `FROM` gives an image whose Env has no PATH a
            // default one (ENGINE-NOTES); the load method leaves the config
            // as it was.
            let mut env: Vec<Value> = expected.as_array().cloned().unwrap_or_default();
            if !env
                .iter()
                .any(|v| v.as_str().is_some_and(|v| v.starts_with("PATH=")))
            {
                env.push(json!(BUILDER_DEFAULT_PATH));
            }
            expected = Value::Array(env);
        }
        let actual = pushed.config["config"]
            .get(key)
            .cloned()
            .unwrap_or(Value::Null);
        assert_eq!(
            unset_if_empty(actual),
            unset_if_empty(expected),
            "config {key} of {reference}"
        );
    }
    if let Some(Value::Object(labels)) = source.config.get("Labels") {
        for (name, value) in labels {
            assert_eq!(
                pushed.label(name),
                value.as_str(),
                "source label {name} kept"
            );
        }
    }
    assert!(
        engine.image(reference).await.is_none(),
        "{reference} left on the engine"
    );
    assert!(
        engine.image(&source.id).await.is_some(),
        "source image removed"
    );
}

/// An empty string field is an unset one: dockerd 20.10 writes `""` for a
/// `WorkingDir` or `User` nobody set, the containerd store's configs leave
/// it out, and both engines report it as `""`.
fn unset_if_empty(value: Value) -> Value {
    match value {
        Value::String(text) if text.is_empty() => Value::Null,
        value => value,
    }
}

#[tokio::test]
async fn every_strategy_publishes_in_multirepo_mode() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let name = unique("src");
    engine
        .import_image(&name, "build-1", &["ENV GREETING=hi"])
        .await;
    let source = engine.image(&format!("{name}:build-1")).await.unwrap();
    let app = TestApp::spawn().await;
    let repo = format!("{}/{}", env.registry, unique("multi"));

    let job = app
        .run_job(&json!({
            "repo": format!("{repo}/"),
            "repo_mode": "multirepo",
            "images": [{"name": "backend", "source": format!("{name}:build-1")}],
            "tags": [
                {"strategy": "custom", "value": "v1.2.3"},
                {"strategy": "git-branch", "value": "core/feature/ADD_SETTINGS"},
                {"strategy": "git-tag", "value": "v2.0.0"},
                {"strategy": "git-commit", "value": "0123456789abcdef0123456789abcdef01234567"},
                {"strategy": "content"}
            ]
        }))
        .await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    assert!(job["finished_at"].is_string());

    let targets = job["targets"].as_array().unwrap();
    let references: Vec<&str> = targets
        .iter()
        .map(|t| t["reference"].as_str().unwrap())
        .collect();
    let hex = source.id.trim_start_matches("sha256:");
    assert_eq!(
        references,
        [
            format!("{repo}/backend:v1.2.3"),
            format!("{repo}/backend:core-feature-add-settings-df80fdc3"),
            format!("{repo}/backend:v2.0.0"),
            format!("{repo}/backend:0123456789abcdef0123456789abcdef01234567"),
            format!("{repo}/backend:{hex}"),
        ]
    );
    let registry = Registry::open(&env.registry);
    for target in targets {
        assert_published(target, &source, &registry, &engine).await;
        assert_eq!(target["attempts"], 1);
    }
    let repository = repo.strip_prefix(&format!("{}/", env.registry)).unwrap();
    assert_eq!(
        registry.tags(&format!("{repository}/backend")).await.len(),
        5
    );
    assert!(engine.names_under(&repo).await.is_empty());
}

#[tokio::test]
async fn monorepo_puts_images_in_one_repository() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let (api, web) = (unique("api"), unique("web"));
    engine.import_image(&api, "b1", &[]).await;
    engine
        .import_image(&web, "b1", &["CMD [\"/hello.txt\"]"])
        .await;
    let app = TestApp::spawn().await;
    let repository = unique("mono");
    let repo = format!("{}/{repository}", env.registry);

    let job = app
        .run_job(&json!({
            "repo": repo, "repo_mode": "monorepo",
            "images": [{"name": "api", "source": format!("{api}:b1")},
                       {"name": "web", "source": format!("{web}:b1")}],
            "tags": [{"strategy": "git-branch", "value": "main"}, {"strategy": "content"}]
        }))
        .await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    let registry = Registry::open(&env.registry);
    let api_image = engine.image(&format!("{api}:b1")).await.unwrap();
    let web_image = engine.image(&format!("{web}:b1")).await.unwrap();
    let targets = job["targets"].as_array().unwrap();
    assert_eq!(targets[0]["reference"], format!("{repo}:api-main"));
    assert_eq!(targets[0]["tag"], "main");
    assert_eq!(
        targets[1]["reference"],
        format!("{repo}:api-{}", api_image.id.trim_start_matches("sha256:"))
    );
    assert_eq!(targets[2]["reference"], format!("{repo}:web-main"));
    for (target, source) in targets
        .iter()
        .zip([&api_image, &api_image, &web_image, &web_image])
    {
        assert_published(target, source, &registry, &engine).await;
    }
    let mut tags = registry.tags(&repository).await;
    tags.sort();
    assert_eq!(tags.len(), 4);
    assert!(tags.contains(&"web-main".to_owned()));
}

#[tokio::test]
async fn nameless_image_lands_at_repo_tag() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let name = unique("nameless");
    engine.import_image(&name, "b1", &[]).await;
    let source = engine.image(&format!("{name}:b1")).await.unwrap();
    let app = TestApp::spawn().await;
    for mode in ["multirepo", "monorepo"] {
        let repo = format!("{}/{}", env.registry, unique(mode));
        let job = app
            .run_job(&json!({
                "repo": repo, "repo_mode": mode,
                "images": [{"name": null, "source": source.id}],
                "tags": [{"strategy": "custom", "value": "stable"}]
            }))
            .await;
        let target = &job["targets"][0];
        assert_eq!(target["reference"], format!("{repo}:stable"));
        assert_eq!(target["image"], Value::Null);
        assert_published(target, &source, &Registry::open(&env.registry), &engine).await;
    }
}

#[tokio::test]
async fn a_built_image_keeps_its_whole_config() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let name = unique("built");
    let dockerfile = "FROM scratch\nCOPY app.txt /srv/app.txt\nENV MODE=prod PATH=/bin\n\
                      WORKDIR /srv\nUSER 1000:1000\nEXPOSE 8080/tcp 9090/udp\nVOLUME /data\n\
                      LABEL team=shop tier=backend\nENTRYPOINT [\"/srv/app\"]\nCMD [\"--serve\"]\n";
    engine.build_image(&name, "b1", dockerfile).await;
    let source = engine.image(&format!("{name}:b1")).await.unwrap();
    assert_eq!(
        source.config["Cmd"],
        json!(["--serve"]),
        "the test image is what the test means"
    );

    let app = TestApp::spawn().await;
    let repo = format!("{}/{}", env.registry, unique("built"));
    let job = app
        .run_job(&app_job(&repo, &format!("{name}:b1"), &["v1"]))
        .await;
    let registry = Registry::open(&env.registry);
    assert_published(&job["targets"][0], &source, &registry, &engine).await;
    let pushed = registry.pushed(&format!("{repo}/app:v1")).await.unwrap();
    assert_eq!(pushed.label("team"), Some("shop"));
    // Only the seven werf labels were added.
    assert_eq!(
        pushed.config["config"]["Labels"].as_object().unwrap().len(),
        2 + 7
    );
}

#[tokio::test]
async fn a_users_local_image_under_the_target_name_is_put_back() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let (name, mine) = (unique("src"), unique("mine"));
    engine.import_image(&name, "b1", &[]).await;
    let my_image = engine.import_image(&mine, "v0", &[]).await;
    let source = engine.image(&format!("{name}:b1")).await.unwrap();
    let repo = format!("{}/{}", env.registry, unique("clobber"));
    let reference = format!("{repo}/app:v1");
    engine.tag(&my_image, &reference).await;

    let app = TestApp::spawn().await;
    let job = app
        .run_job(&app_job(&repo, &format!("{name}:b1"), &["v1"]))
        .await;
    let target = &job["targets"][0];
    assert_eq!(target["status"], "succeeded", "{job:#}");
    let pushed = Registry::open(&env.registry)
        .pushed(&reference)
        .await
        .unwrap();
    assert_eq!(
        pushed.label("werf-content-signature"),
        Some(source.id.as_str())
    );
    assert_eq!(pushed.digest, target["digest"].as_str().unwrap());
    assert_eq!(
        engine.image(&reference).await.map(|i| i.id),
        Some(my_image),
        "user's image restored"
    );
}

#[tokio::test]
async fn a_missing_source_fails_its_targets_and_names_it() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let present = unique("present");
    engine.import_image(&present, "b1", &[]).await;
    let app = TestApp::spawn().await;
    let repo = format!("{}/{}", env.registry, unique("missing"));
    let job = app
        .run_job(&json!({
            "repo": repo,
            "images": [{"name": "ok", "source": format!("{present}:b1")},
                       {"name": "gone", "source": "no-such-image:42"}],
            "tags": [{"strategy": "custom", "value": "v1"}, {"strategy": "content"}]
        }))
        .await;
    assert_eq!(job["status"], "failed");
    assert_eq!(job["error"], "2 of 4 targets failed");
    let targets = job["targets"].as_array().unwrap();
    assert_eq!(targets[0]["status"], "succeeded");
    assert_eq!(targets[1]["status"], "succeeded");
    for target in &targets[2..] {
        assert_eq!(target["status"], "failed");
        let error = target["error"].as_str().unwrap();
        assert!(
            error.contains("no-such-image:42") && error.contains("does not exist"),
            "{error}"
        );
    }
    let registry = Registry::open(&env.registry);
    let repository = repo.strip_prefix(&format!("{}/", env.registry)).unwrap();
    assert!(
        registry
            .tags(&format!("{repository}/gone"))
            .await
            .is_empty()
    );
    assert_eq!(registry.tags(&format!("{repository}/ok")).await.len(), 2);
}

#[tokio::test]
async fn twenty_jobs_racing_for_one_reference_never_interleave() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let app = TestApp::spawn_with(|settings| settings.workers = 4).await;
    let repository = unique("race");
    let repo = format!("{}/{repository}", env.registry);
    let mut sources = Vec::new();
    for _ in 0..20 {
        let name = unique("racer");
        sources.push(engine.import_image(&name, "b1", &[]).await);
    }
    // Submitted back to back, so that all twenty are queued together.
    let mut jobs = Vec::new();
    for source in &sources {
        let id = app.submit(&app_job(&repo, source, &["latest"])).await;
        jobs.push((id, source.clone()));
    }
    let registry = Registry::open(&env.registry);
    let mut spans = Vec::new();
    for (id, source) in &jobs {
        let job = app.wait_finished(id).await;
        assert_eq!(job["status"], "succeeded", "{job:#}");
        let target = &job["targets"][0];
        let digest = target["digest"].as_str().unwrap().to_owned();
        // The recorded digest is this job's image: its config carries this source.
        let pushed = registry
            .by_digest(&format!("{repository}/app"), &digest)
            .await;
        assert_eq!(
            pushed.label("werf-content-signature"),
            Some(source.as_str())
        );
        spans.push((
            target["started_at"].as_str().unwrap().to_owned(),
            target["finished_at"].as_str().unwrap().to_owned(),
            digest,
        ));
    }
    spans.sort();
    for pair in spans.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "steps on one reference overlapped: {pair:?}"
        );
    }
    // The registry holds what the last one pushed.
    let pushed = registry
        .pushed(&format!("{repo}/app:latest"))
        .await
        .unwrap();
    assert_eq!(pushed.digest, spans.last().unwrap().2);
    assert!(engine.names_under(&repo).await.is_empty());
}

#[tokio::test]
async fn an_up_to_date_tag_is_not_pushed_again_unless_forced() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let (first, second) = (unique("same"), unique("other"));
    let first_id = engine.import_image(&first, "b1", &[]).await;
    engine.import_image(&second, "b1", &[]).await;
    let app = TestApp::spawn().await;
    let repo = format!("{}/{}", env.registry, unique("uptodate"));
    let job = |source: &str, force: bool| {
        json!({"repo": repo, "images": [{"name": "app", "source": source}],
               "tags": [{"strategy": "custom", "value": "v1"}], "force": force})
    };
    let target_of = |job: Value| job["targets"][0].clone();

    let pushed = target_of(
        app.wait_finished(&app.submit(&job(&first_id, false)).await)
            .await,
    );
    assert_eq!(
        (pushed["status"].as_str(), pushed["up_to_date"].as_bool()),
        (Some("succeeded"), Some(false))
    );

    let again = target_of(
        app.wait_finished(&app.submit(&job(&first_id, false)).await)
            .await,
    );
    assert_eq!(
        (again["status"].as_str(), again["up_to_date"].as_bool()),
        (Some("succeeded"), Some(true))
    );
    assert_eq!(again["digest"], pushed["digest"]);
    assert!(
        engine.names_under(&repo).await.is_empty(),
        "nothing was tagged"
    );

    let forced = target_of(
        app.wait_finished(&app.submit(&job(&first_id, true)).await)
            .await,
    );
    assert_eq!(
        (forced["status"].as_str(), forced["up_to_date"].as_bool()),
        (Some("succeeded"), Some(false))
    );

    // Another source under the same tag is not up to date.
    let other = target_of(
        app.wait_finished(&app.submit(&job(&format!("{second}:b1"), false)).await)
            .await,
    );
    assert_eq!(other["up_to_date"], false);
    let registry = Registry::open(&env.registry);
    let served = registry.pushed(&format!("{repo}/app:v1")).await.unwrap();
    assert_eq!(served.digest, other["digest"].as_str().unwrap());
    assert_ne!(
        served.label("werf-content-signature"),
        Some(first_id.as_str())
    );
}
