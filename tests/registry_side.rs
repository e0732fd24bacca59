//! Registry-side publishing: once the engine has pushed an image to a
//! registry, its further targets there are written by publishd's own
//! registry client. The result must be the image the engine path publishes:
//! each case publishes the same targets both ways and requires the same
//! manifest digests, manifest and config bytes, and labels, on the open, the
//! htpasswd and the token registry; a refused mount falls back to the engine.

mod support;

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use publishd::engine::TagMethod;
use serde_json::{Value, json};
use support::binary::Server;
use support::engine::TestEngine;
use support::fault_proxy::{FaultProxy, Faults};
use support::registry::{Pushed, Registry};
use support::{TestApp, TestEnv, unique};

/// One lane, so which target seeds and which follow is fixed; the load tag
/// method, the one whose config registry-side publishing reproduces.
async fn spawn_app() -> TestApp {
    TestApp::spawn_with(|settings| {
        settings.workers = 1;
        settings.tag_method = TagMethod::Load;
    })
    .await
}

/// A new source image of two layers, with empty-layer history (ENV, CMD).
async fn source_image(engine: &TestEngine) -> String {
    let name = unique("regside");
    engine
        .build_image(
            &name,
            "b1",
            "FROM scratch\nCOPY app.txt /app.txt\nENV MODE=test\nCOPY app.txt /copy.txt\nCMD [\"/app\"]\n",
        )
        .await;
    format!("{name}:b1")
}

/// A job of `images` (name, source) under custom `tags`.
fn job(repo: &str, mode: &str, images: &[(Option<&str>, &str)], tags: &[&str]) -> Value {
    let images: Vec<Value> = images
        .iter()
        .map(|(name, source)| json!({"name": name, "source": source}))
        .collect();
    let tags: Vec<Value> = tags
        .iter()
        .map(|tag| json!({"strategy": "custom", "value": tag}))
        .collect();
    json!({"repo": repo, "repo_mode": mode, "images": images, "tags": tags})
}

fn with(job: &Value, extra: Value) -> Value {
    let mut job = job.clone();
    if let (Some(job), Value::Object(extra)) = (job.as_object_mut(), extra) {
        job.extend(extra);
    }
    job
}

/// Each target's reference and how it was published.
fn ways(job: &Value) -> Vec<(String, String)> {
    job["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|target| {
            (
                target["reference"].as_str().unwrap().to_owned(),
                target["published_via"]
                    .as_str()
                    .unwrap_or("null")
                    .to_owned(),
            )
        })
        .collect()
}

/// What the registry holds under each of the job's references.
async fn held(reader: &Registry, job: &Value) -> BTreeMap<String, Pushed> {
    reader.assert_holds(job).await;
    let mut held = BTreeMap::new();
    for (reference, _) in ways(job) {
        let pushed = reader.pushed(&reference).await.unwrap();
        assert_eq!(
            pushed.label("werf-docker-image-name"),
            Some(reference.as_str())
        );
        held.insert(reference, pushed);
    }
    held
}

/// The two publications are the same images, byte for byte.
fn assert_same(a: &BTreeMap<String, Pushed>, b: &BTreeMap<String, Pushed>, what: &str) {
    assert_eq!(a.len(), b.len());
    for (reference, a) in a {
        let b = &b[reference];
        assert_eq!(a.digest, b.digest, "{what}: manifest digest of {reference}");
        assert_eq!(
            a.manifest_bytes, b.manifest_bytes,
            "{what}: manifest of {reference}"
        );
        assert_eq!(
            a.config_bytes, b.config_bytes,
            "{what}: config of {reference}"
        );
        assert_eq!(a.config["config"]["Labels"], b.config["config"]["Labels"]);
    }
}

/// Publishes `base` three times: with `auto` from a fresh source (the first
/// target of the source goes through the engine and seeds, the others are
/// written registry-side), then forced through the engine, then forced with
/// `auto` again (every target registry-side now); all three leave the same
/// images. Answers the first job.
async fn equivalence(app: &TestApp, reader: &Registry, repo: &str, base: &Value) -> Value {
    let engine = TestEngine::connect();
    let first = app
        .run_job(&with(base, json!({"publish_via": "auto"})))
        .await;
    assert_eq!(first["status"], "succeeded", "{first:#}");
    assert_eq!(first["publish_via"], "auto");
    let first_ways = ways(&first);
    assert_eq!(first_ways[0].1, "engine", "{first:#}");
    for (reference, via) in &first_ways[1..] {
        assert_eq!(via, "registry", "{reference}: {first:#}");
    }
    for target in first["targets"].as_array().unwrap() {
        assert_eq!(target["attempt_errors"], json!([]), "{first:#}");
    }
    let registry_side = held(reader, &first).await;

    let second = app
        .run_job(&with(base, json!({"publish_via": "engine", "force": true})))
        .await;
    assert_eq!(second["status"], "succeeded", "{second:#}");
    assert!(
        ways(&second).iter().all(|(_, via)| via == "engine"),
        "{second:#}"
    );
    let through_engine = held(reader, &second).await;
    assert_same(&registry_side, &through_engine, "registry-side vs engine");

    let third = app
        .run_job(&with(base, json!({"publish_via": "auto", "force": true})))
        .await;
    assert_eq!(third["status"], "succeeded", "{third:#}");
    assert!(
        ways(&third).iter().all(|(_, via)| via == "registry"),
        "{third:#}"
    );
    assert_same(
        &through_engine,
        &held(reader, &third).await,
        "seeded auto vs engine",
    );

    assert!(engine.names_under(repo).await.is_empty());
    first
}

#[tokio::test]
async fn named_multirepo_targets_are_the_engines_images() {
    let env = TestEnv::get();
    let app = spawn_app().await;
    let source = source_image(&TestEngine::connect()).await;
    let repo = format!("{}/{}", env.registry, unique("named"));
    // Two images of one source: `worker` mounts the layers `app` pushed.
    let base = job(
        &repo,
        "multirepo",
        &[(Some("app"), &source), (Some("worker"), &source)],
        &["v1", "v2"],
    );
    let first = equivalence(&app, &Registry::open(&env.registry), &repo, &base).await;
    assert_eq!(
        first["targets"][2]["reference"],
        format!("{repo}/worker:v1")
    );
}

#[tokio::test]
async fn nameless_targets_are_the_engines_images() {
    let env = TestEnv::get();
    let app = spawn_app().await;
    let source = source_image(&TestEngine::connect()).await;
    let repo = format!("{}/{}", env.registry, unique("nameless"));
    let base = job(&repo, "multirepo", &[(None, &source)], &["v1", "v2", "v3"]);
    equivalence(&app, &Registry::open(&env.registry), &repo, &base).await;
}

#[tokio::test]
async fn monorepo_targets_are_the_engines_images() {
    let env = TestEnv::get();
    let app = spawn_app().await;
    let source = source_image(&TestEngine::connect()).await;
    let repo = format!("{}/{}", env.registry, unique("mono"));
    let base = job(
        &repo,
        "monorepo",
        &[(Some("app"), &source), (Some("worker"), &source)],
        &["v1", "v2"],
    );
    let first = equivalence(&app, &Registry::open(&env.registry), &repo, &base).await;
    assert_eq!(
        first["targets"][3]["reference"],
        format!("{repo}:worker-v2")
    );
}

/// A later job to another repository of the registry mounts the layers the
/// first job's push left.
#[tokio::test]
async fn a_later_job_mounts_from_the_seeds_repository() {
    let env = TestEnv::get();
    let app = spawn_app().await;
    let source = source_image(&TestEngine::connect()).await;
    let reader = Registry::open(&env.registry);
    let seed_repo = format!("{}/{}", env.registry, unique("seed"));
    let seeded = app
        .run_job(&job(
            &seed_repo,
            "multirepo",
            &[(Some("app"), &source)],
            &["v1"],
        ))
        .await;
    assert_eq!(ways(&seeded)[0].1, "engine", "{seeded:#}");

    let repo = format!("{}/{}", env.registry, unique("later"));
    let later = job(&repo, "multirepo", &[(Some("app"), &source)], &["v1", "v2"]);
    let first = app.run_job(&later).await;
    assert!(
        ways(&first).iter().all(|(_, via)| via == "registry"),
        "{first:#}"
    );
    let registry_side = held(&reader, &first).await;
    let engine = app
        .run_job(&with(
            &later,
            json!({"publish_via": "engine", "force": true}),
        ))
        .await;
    assert_same(
        &registry_side,
        &held(&reader, &engine).await,
        "mounted vs engine",
    );
}

#[tokio::test]
async fn htpasswd_registry_with_the_jobs_credentials() {
    let env = TestEnv::get();
    let app = spawn_app().await;
    let source = source_image(&TestEngine::connect()).await;
    let repo = format!("{}/{}", env.auth_registry, unique("basic"));
    let base = with(
        &job(
            &repo,
            "multirepo",
            &[(Some("app"), &source), (Some("worker"), &source)],
            &["v1", "v2"],
        ),
        json!({"registry_auth": {"username": env.auth_user, "password": env.auth_password}}),
    );
    let reader = Registry::with_auth(&env.auth_registry, &env.auth_user, &env.auth_password);
    equivalence(&app, &reader, &repo, &base).await;
}

#[tokio::test]
async fn token_registry_with_the_docker_config() {
    let env = TestEnv::get();
    let app = spawn_app().await;
    let auth = STANDARD.encode(format!("{}:{}", env.auth_user, env.auth_password));
    app.write_docker_config(&json!({"auths": {env.token_registry.clone(): {"auth": auth}}}));
    let source = source_image(&TestEngine::connect()).await;
    let repo = format!("{}/{}", env.token_registry, unique("token"));
    let base = job(
        &repo,
        "multirepo",
        &[(Some("app"), &source), (Some("worker"), &source)],
        &["v1", "v2"],
    );
    let reader = Registry::with_auth(&env.token_registry, &env.auth_user, &env.auth_password);
    equivalence(&app, &reader, &repo, &base).await;
}

/// A registry that answers a mount with an upload: the target goes through
/// the engine, which pushes the layers there; that repository is then where
/// the layers are, and its further targets are registry-side again.
#[tokio::test]
async fn a_refused_mount_falls_back_to_the_engine() {
    let env = TestEnv::get();
    let proxy = FaultProxy::start(&env.registry, Faults::RefuseMounts).await;
    let host = format!("127.0.0.1:{}", proxy.address.port());
    let reader = Registry::open(&host);
    let app = spawn_app().await;
    let engine = TestEngine::connect();
    let source = source_image(&engine).await;

    let seed_repo = format!("{host}/{}", unique("seed"));
    let seeded = app
        .run_job(&job(
            &seed_repo,
            "multirepo",
            &[(Some("app"), &source)],
            &["v1"],
        ))
        .await;
    assert_eq!(ways(&seeded)[0].1, "engine", "{seeded:#}");

    let repo = format!("{host}/{}", unique("refused"));
    let refused_before = proxy.injected();
    let fell_back = app
        .run_job(&job(&repo, "multirepo", &[(Some("app"), &source)], &["v1"]))
        .await;
    assert_eq!(fell_back["status"], "succeeded", "{fell_back:#}");
    assert_eq!(ways(&fell_back)[0].1, "engine", "{fell_back:#}");
    assert_eq!(fell_back["targets"][0]["attempt_errors"], json!([]));
    assert!(proxy.injected() > refused_before, "no mount was tried");
    reader.assert_holds(&fell_back).await;

    let further = job(&repo, "multirepo", &[(Some("app"), &source)], &["v2"]);
    let registry_side = app.run_job(&further).await;
    assert_eq!(ways(&registry_side)[0].1, "registry", "{registry_side:#}");
    let registry_side = held(&reader, &registry_side).await;
    let through_engine = app
        .run_job(&with(
            &further,
            json!({"publish_via": "engine", "force": true}),
        ))
        .await;
    assert_same(
        &registry_side,
        &held(&reader, &through_engine).await,
        "after a refused mount",
    );
    assert!(engine.names_under(&repo).await.is_empty());
}

/// `--publish-via engine` keeps every target on the engine; a job's own
/// `auto` overrides it; an unknown way is refused.
#[tokio::test]
async fn the_services_choice_and_the_jobs() {
    let env = TestEnv::get();
    let app = TestApp::spawn_with(|settings| {
        settings.workers = 1;
        settings.tag_method = TagMethod::Load;
        settings.publish_via = publishd::domain::publish_via::PublishVia::Engine;
    })
    .await;
    let source = source_image(&TestEngine::connect()).await;
    let repo = format!("{}/{}", env.registry, unique("choice"));
    let engine_only = app
        .run_job(&job(
            &repo,
            "multirepo",
            &[(Some("app"), &source)],
            &["v1", "v2"],
        ))
        .await;
    assert_eq!(engine_only["publish_via"], Value::Null);
    assert!(
        ways(&engine_only).iter().all(|(_, via)| via == "engine"),
        "{engine_only:#}"
    );

    let auto = with(
        &job(&repo, "multirepo", &[(Some("app"), &source)], &["v3"]),
        json!({"publish_via": "auto"}),
    );
    let auto = app.run_job(&auto).await;
    assert_eq!(ways(&auto)[0].1, "registry", "{auto:#}");

    let up_to_date = app
        .run_job(&job(&repo, "multirepo", &[(Some("app"), &source)], &["v1"]))
        .await;
    assert_eq!(up_to_date["targets"][0]["up_to_date"], true);
    assert_eq!(up_to_date["targets"][0]["published_via"], Value::Null);

    let refused = app
        .post_job(&with(
            &job(&repo, "multirepo", &[(Some("app"), &source)], &["v4"]),
            json!({"publish_via": "registry"}),
        ))
        .await;
    assert_eq!(refused.status(), 422, "{}", refused.text().await.unwrap());
}

/// SIGKILL of the real binary while a target is being written registry-side
/// (its read-back held up by the registry): the restart finds it mid-step
/// with nothing on the engine to undo, runs it again, and the registry ends
/// with the image the engine path gives.
#[tokio::test]
async fn sigkill_mid_registry_side_target_is_rerun() {
    let env = TestEnv::get();
    let proxy = FaultProxy::start(
        &env.registry,
        Faults::SlowReadBack(std::time::Duration::from_secs(2)),
    )
    .await;
    let host = format!("127.0.0.1:{}", proxy.address.port());
    let reader = Registry::open(&host);
    let engine = TestEngine::connect();
    let source = source_image(&engine).await;
    let dir = tempfile::tempdir().unwrap();
    let repo = format!("{host}/{}", unique("killed"));
    let settings = [("PUBLISHD_TAG_METHOD", "load"), ("PUBLISHD_WORKERS", "1")];

    let server = Server::start(dir.path(), 0, &settings).await;
    let seed = server
        .submit(&job(&repo, "multirepo", &[(Some("app"), &source)], &["v1"]))
        .await;
    assert_eq!(ways(&server.wait_finished(&seed).await)[0].1, "engine");
    let further = job(&repo, "multirepo", &[(Some("app"), &source)], &["v2"]);
    let id = server.submit(&further).await;
    let ids = [id.clone()];
    assert!(
        server
            .kill_when(&ids, |s| s.iter().any(|s| s == "pushing"))
            .await,
        "the kill did not land mid-step"
    );

    let server = Server::start(dir.path(), 1, &settings).await;
    let rerun = server.wait_finished(&id).await;
    assert_eq!(rerun["status"], "succeeded", "{rerun:#}");
    let target = &rerun["targets"][0];
    assert_eq!(target["published_via"], "registry", "{rerun:#}");
    assert_eq!(target["runs"], 2, "{rerun:#}");
    assert_eq!(target["warnings"], json!([]), "{rerun:#}");
    let registry_side = held(&reader, &rerun).await;
    assert!(engine.names_under(&repo).await.is_empty());

    let through_engine = server
        .submit(&with(
            &further,
            json!({"publish_via": "engine", "force": true}),
        ))
        .await;
    let through_engine = server.wait_finished(&through_engine).await;
    assert_same(
        &registry_side,
        &held(&reader, &through_engine).await,
        "rerun after SIGKILL",
    );
}
