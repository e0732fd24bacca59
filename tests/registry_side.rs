//! Registry-side publishing: once the engine has pushed an image to a
//! registry, its further targets there are written by publishd's own
//! registry client, in the format of that push. The result must be the
//! image the engine path publishes: each case publishes the same targets
//! both ways and requires the same images (on the load method byte for
//! byte, digests included; on the build method the same but for the build's
//! time), on the open, the htpasswd and the token registry, on whichever
//! dockerd the tests run on (`PUBLISHD_TEST_ENGINE`); every registry-side
//! target is pulled by the other dockerd and by Podman. A refused mount
//! falls back to the engine; of the targets of one source without a seed,
//! one goes through the engine and the others wait for its seed.

mod support;

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use publishd::engine::TagMethod;
use serde_json::{Value, json};
use support::binary::Server;
use support::engine::{Pulled, TestEngine};
use support::fault_proxy::{FaultProxy, Faults};
use support::registry::{Pushed, Registry};
use support::{TestApp, TestEnv, effective_tag_method, unique};

/// One lane, so which target seeds and which follow is fixed.
async fn spawn_app() -> TestApp {
    TestApp::spawn_with(|settings| settings.workers = 1).await
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

/// What the registry holds under each of the job's references; each
/// registry-side target is pulled by clients we did not write, through
/// `pulls` (see `Pulls`).
async fn held(reader: &Registry, job: &Value, pulls: &Pulls<'_>) -> BTreeMap<String, Pushed> {
    reader.assert_holds(job).await;
    let mut held = BTreeMap::new();
    for (reference, via) in ways(job) {
        let pushed = reader.pushed(&reference).await.unwrap();
        assert_eq!(
            pushed.label("werf-docker-image-name"),
            Some(reference.as_str())
        );
        // What the engine pushes: OCI on the containerd store.
        let media_type = if TestEnv::get().engine.containerd_store() {
            "application/vnd.oci.image.manifest.v1+json"
        } else {
            "application/vnd.docker.distribution.manifest.v2+json"
        };
        assert_eq!(pushed.manifest["mediaType"], media_type, "{reference}");
        if via == "registry" {
            pulls.check(&reference, &pushed).await;
        }
        held.insert(reference, pushed);
    }
    held
}

/// How the other engines reach what a test published: its registry's host
/// as pulled (the real registry behind a fault proxy), and credentials.
struct Pulls<'a> {
    host: Option<&'a str>,
    auth: Option<(&'a str, &'a str)>,
}

const OPEN: Pulls<'static> = Pulls {
    host: None,
    auth: None,
};

impl Pulls<'_> {
    /// `reference` pulled by the other dockerd and by Podman: each stores
    /// the labels, layers and platform of the image the registry holds.
    async fn check(&self, reference: &str, pushed: &Pushed) {
        let env = TestEnv::get();
        let reference = match self.host {
            Some(host) => format!("{host}/{}", reference.split_once('/').unwrap().1),
            None => reference.to_owned(),
        };
        let expected = Pulled {
            labels: serde_json::from_value(pushed.config["config"]["Labels"].clone()).unwrap(),
            diff_ids: pushed.diff_ids(),
            os: pushed.config["os"].as_str().unwrap().to_owned(),
            architecture: pushed.config["architecture"].as_str().unwrap().to_owned(),
            variant: pushed.config["variant"].as_str().map(str::to_owned),
        };
        let other = TestEngine::connect_to(&env.engine.other().host());
        assert_eq!(
            other.pull(&reference, None, self.auth).await,
            expected,
            "{reference} as the other dockerd pulled it"
        );
        match &env.podman {
            Ok(host) => assert_eq!(
                TestEngine::connect_to(host)
                    .pull(&reference, None, self.auth)
                    .await,
                expected,
                "{reference} as Podman pulled it"
            ),
            Err(reason) => eprintln!("Podman cannot run here, so it pulled nothing: {reason}"),
        }
    }
}

/// The two publications are the same images: byte for byte on the load
/// method; on the build method, whose builds stamp their time, the same
/// configs but for the times, and the same manifests but for the config's
/// digest and size.
fn assert_same(a: &BTreeMap<String, Pushed>, b: &BTreeMap<String, Pushed>, what: &str) {
    assert_eq!(a.len(), b.len());
    for (reference, a) in a {
        let b = &b[reference];
        assert_eq!(a.config["config"]["Labels"], b.config["config"]["Labels"]);
        assert_eq!(a.diff_ids(), b.diff_ids(), "{what}: layers of {reference}");
        if effective_tag_method() == TagMethod::Load {
            assert_eq!(a.digest, b.digest, "{what}: manifest digest of {reference}");
            assert_eq!(
                a.manifest_bytes, b.manifest_bytes,
                "{what}: manifest of {reference}"
            );
            assert_eq!(
                a.config_bytes, b.config_bytes,
                "{what}: config of {reference}"
            );
        } else {
            assert_eq!(
                untimed(&a.config),
                untimed(&b.config),
                "{what}: config of {reference}"
            );
            assert_eq!(
                unconfigured(&a.manifest),
                unconfigured(&b.manifest),
                "{what}: manifest of {reference}"
            );
        }
    }
}

/// A config without the times a build stamps.
fn untimed(config: &Value) -> Value {
    let mut config = config.clone();
    config.as_object_mut().unwrap().remove("created");
    for entry in config["history"].as_array_mut().into_iter().flatten() {
        entry.as_object_mut().unwrap().remove("created");
    }
    config
}

/// A manifest without its config's digest and size.
fn unconfigured(manifest: &Value) -> Value {
    let mut manifest = manifest.clone();
    let config = manifest["config"].as_object_mut().unwrap();
    config.remove("digest");
    config.remove("size");
    manifest
}

/// Publishes `base` three times: with `auto` from a fresh source (the first
/// target of the source goes through the engine and seeds, the others are
/// written registry-side), then forced through the engine, then forced with
/// `auto` again (every target registry-side now); all three leave the same
/// images. Answers the first job.
async fn equivalence(
    app: &TestApp,
    reader: &Registry,
    pulls: &Pulls<'_>,
    repo: &str,
    base: &Value,
) -> Value {
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
    let registry_side = held(reader, &first, pulls).await;

    let second = app
        .run_job(&with(base, json!({"publish_via": "engine", "force": true})))
        .await;
    assert_eq!(second["status"], "succeeded", "{second:#}");
    assert!(
        ways(&second).iter().all(|(_, via)| via == "engine"),
        "{second:#}"
    );
    let through_engine = held(reader, &second, pulls).await;
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
        &held(reader, &third, pulls).await,
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
    let first = equivalence(&app, &Registry::open(&env.registry), &OPEN, &repo, &base).await;
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
    equivalence(&app, &Registry::open(&env.registry), &OPEN, &repo, &base).await;
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
    let first = equivalence(&app, &Registry::open(&env.registry), &OPEN, &repo, &base).await;
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
    let registry_side = held(&reader, &first, &OPEN).await;
    let engine = app
        .run_job(&with(
            &later,
            json!({"publish_via": "engine", "force": true}),
        ))
        .await;
    assert_same(
        &registry_side,
        &held(&reader, &engine, &OPEN).await,
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
    let pulls = Pulls {
        host: None,
        auth: Some((&env.auth_user, &env.auth_password)),
    };
    equivalence(&app, &reader, &pulls, &repo, &base).await;
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
    let pulls = Pulls {
        host: None,
        auth: Some((&env.auth_user, &env.auth_password)),
    };
    equivalence(&app, &reader, &pulls, &repo, &base).await;
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
    let upstream = Pulls {
        host: Some(&env.registry),
        auth: None,
    };
    let registry_side = held(&reader, &registry_side, &upstream).await;
    let through_engine = app
        .run_job(&with(
            &further,
            json!({"publish_via": "engine", "force": true}),
        ))
        .await;
    assert_same(
        &registry_side,
        &held(&reader, &through_engine, &upstream).await,
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
    let settings = [("PUBLISHD_WORKERS", "1")];

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
    let upstream = Pulls {
        host: Some(&env.registry),
        auth: None,
    };
    let registry_side = held(&reader, &rerun, &upstream).await;
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
        &held(&reader, &through_engine, &upstream).await,
        "rerun after SIGKILL",
    );
}

/// Several lanes, and two jobs of one source submitted at once: of their
/// six targets one goes through the engine, and the others wait for its
/// seed and are written registry-side.
#[tokio::test]
async fn targets_without_a_seed_wait_for_the_first_push() {
    let env = TestEnv::get();
    let app = TestApp::spawn_with(|settings| settings.workers = 4).await;
    let engine = TestEngine::connect();
    let source = source_image(&engine).await;
    let repo = format!("{}/{}", env.registry, unique("turns"));
    let ids = [
        app.submit(&job(
            &repo,
            "multirepo",
            &[(Some("app"), &source)],
            &["a1", "a2", "a3"],
        ))
        .await,
        app.submit(&job(
            &repo,
            "multirepo",
            &[(Some("worker"), &source)],
            &["b1", "b2", "b3"],
        ))
        .await,
    ];
    let mut all = Vec::new();
    for id in &ids {
        let job = app.wait_finished(id).await;
        assert_eq!(job["status"], "succeeded", "{job:#}");
        held(&Registry::open(&env.registry), &job, &OPEN).await;
        all.extend(ways(&job));
    }
    let through_engine: Vec<_> = all.iter().filter(|(_, via)| via == "engine").collect();
    assert_eq!(through_engine.len(), 1, "{all:?}");
    assert_eq!(all.len(), 6);
    assert!(engine.names_under(&repo).await.is_empty());
}

/// The first push of a source fails for good (the registry denies it): the
/// next target takes the turn, its push seeds, and the rest follow it
/// registry-side.
#[tokio::test]
async fn a_failed_first_push_hands_the_turn_to_the_next_target() {
    let env = TestEnv::get();
    let proxy = FaultProxy::start(&env.registry, Faults::DenyFirstManifestPuts(1)).await;
    let host = format!("127.0.0.1:{}", proxy.address.port());
    let app = TestApp::spawn_with(|settings| settings.workers = 2).await;
    let source = source_image(&TestEngine::connect()).await;
    let repo = format!("{host}/{}", unique("handed"));
    let job = app
        .run_job(&job(
            &repo,
            "multirepo",
            &[(Some("app"), &source)],
            &["v1", "v2", "v3"],
        ))
        .await;
    assert_eq!(job["status"], "failed", "{job:#}");
    assert_eq!(proxy.injected(), 1);
    let targets = job["targets"].as_array().unwrap();
    let denied: Vec<_> = targets.iter().filter(|t| t["status"] == "failed").collect();
    assert_eq!(denied.len(), 1, "{job:#}");
    // dockerd 20.10 reports the registry's error code, dockerd 26 its status.
    let error = denied[0]["error"].as_str().unwrap();
    assert!(
        error.contains("denied") || error.contains("403 Forbidden"),
        "{job:#}"
    );
    let mut ways: Vec<_> = targets
        .iter()
        .filter(|t| t["status"] == "succeeded")
        .map(|t| t["published_via"].as_str().unwrap())
        .collect();
    ways.sort();
    assert_eq!(ways, ["engine", "registry"], "{job:#}");
    let upstream = Pulls {
        host: Some(&env.registry),
        auth: None,
    };
    let reader = Registry::open(&host);
    for target in targets.iter().filter(|t| t["published_via"] == "registry") {
        let reference = target["reference"].as_str().unwrap();
        upstream
            .check(reference, &reader.pushed(reference).await.unwrap())
            .await;
    }
}
