//! Where a job may publish, and what it may read: one registry per job,
//! decided once on the references as the engine and the registry read
//! them, checked again by the worker before anything is pushed; another
//! team's images are not read, nor their layers mounted.

mod support;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use publishd::domain::access::Patterns;
use publishd::domain::spec::{JobSpec, Limits, plan};
use publishd::store::{Created, NewJob, Submitter};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::engine::TestEngine;
use support::registry::Registry;
use support::tcp_cut::TcpCut;
use support::{TestApp, TestEnv, app_job, unique};

/// The operator's `--allow-registry`.
fn allow(hosts: &[&str]) -> Patterns {
    let hosts: Vec<String> = hosts.iter().map(|host| (*host).to_owned()).collect();
    Patterns::new(&hosts).unwrap()
}

#[tokio::test]
async fn a_one_word_repo_its_targets_read_as_a_host_is_refused_and_nothing_is_pushed() {
    let env = TestEnv::get();
    // `localhost` (port 80) leads to the open test registry: where the
    // target `localhost/NAME:v1` would be pushed if the job were taken.
    let _relay = TcpCut::start_on(
        "127.0.0.1:80".parse().unwrap(),
        env.registry.parse().unwrap(),
    )
    .await;
    let engine = TestEngine::connect();
    let source = unique("one-word-src");
    engine.import_image(&source, "b1", &[]).await;
    let app = TestApp::spawn_with(|settings| settings.allow_registry = allow(&["docker.io"])).await;

    // Alone, `localhost` is `docker.io/library/localhost`, which the list
    // allows; in its target `localhost/NAME:v1` it is the registry.
    let name = unique("app");
    let job = json!({"repo": "localhost", "images": [{"name": name, "source": format!("{source}:b1")}],
                     "tags": [{"strategy": "custom", "value": "v1"}]});
    let response = app.post_job(&job).await;
    let status = response.status();
    let refused: Value = response.json().await.unwrap();
    assert_eq!(status, 422, "{refused:#}");
    assert_eq!(refused["error"]["field"], "repo");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("docker.io/library/localhost")
            && message.contains(&format!("localhost/{name}:TAG")),
        "both readings named: {message}"
    );

    // The refusal is in the audit trail, and nothing reached the registry.
    let audit: Value = app.get("/api/v1/audit").await.json().await.unwrap();
    let event = &audit["events"][0];
    assert_eq!(
        (event["action"].as_str(), event["outcome"].as_str()),
        (Some("job.submit"), Some("refused")),
        "{audit:#}"
    );
    assert_eq!(event["detail"]["status"], 422);
    assert_eq!(event["detail"]["field"], "repo");
    assert!(Registry::open(&env.registry).tags(&name).await.is_empty());
    let jobs: Value = app.get("/api/v1/jobs").await.json().await.unwrap();
    assert_eq!(jobs["jobs"], json!([]), "no job was recorded");
}

#[tokio::test]
async fn the_worker_checks_the_allow_list_again_before_it_pushes() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let source = unique("recheck-src");
    engine.import_image(&source, "b1", &[]).await;
    let repo = format!("{}/{}", env.registry, unique("recheck"));
    let dir = tempfile::tempdir().unwrap();
    // Accepted while the registry was allowed...
    {
        let store = support::open_store(dir.path()).await;
        let spec: JobSpec =
            serde_json::from_value(app_job(&repo, &format!("{source}:b1"), &["v1"])).unwrap();
        let created = store
            .create_job(NewJob {
                id: uuid::Uuid::now_v7(),
                plan: plan(&spec, Limits::default()).unwrap(),
                max_pending: 100,
                has_registry_auth: false,
                idempotency_key: None,
                spec_hash: "x".to_owned(),
                submitter: Submitter::anonymous(),
                engine: None,
            })
            .await
            .unwrap();
        assert!(matches!(created, Created::New(_)));
    }
    // ...and run after the operator took it off the list.
    let app = TestApp::spawn_in(dir.path(), |settings| {
        settings.allow_registry = allow(&["registry.example.com"]);
    })
    .await;
    let jobs: Value = app.get("/api/v1/jobs").await.json().await.unwrap();
    let id = jobs["jobs"][0]["id"].as_str().unwrap().to_owned();
    let job = app.wait_finished(&id).await;
    let target = &job["targets"][0];
    assert_eq!(target["status"], "failed", "{job:#}");
    let error = target["error"].as_str().unwrap();
    assert!(error.contains("--allow-registry"), "{error}");

    let repository = repo.strip_prefix(&format!("{}/", env.registry)).unwrap();
    assert!(
        Registry::open(&env.registry)
            .tags(&format!("{repository}/app"))
            .await
            .is_empty(),
        "nothing pushed"
    );
    assert!(engine.names_under(&repo).await.is_empty(), "nothing tagged");
    app.stop().await;
}

/// A request to `app` as the holder of `token`: the status and the JSON.
async fn request(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut request = app.client.request(method, app.url(path)).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn finished(app: &TestApp, token: &str, accepted: &Value) -> Value {
    let path = format!("/api/v1/jobs/{}", accepted["id"].as_str().unwrap());
    let start = std::time::Instant::now();
    loop {
        let (_, job) = request(app, reqwest::Method::GET, &path, token, None).await;
        if matches!(
            job["status"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        ) {
            return job;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(120),
            "{job:#}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_team_reads_no_other_teams_image_and_mounts_none_of_its_layers() {
    let env = TestEnv::get();
    let dir = tempfile::tempdir().unwrap();
    let secret = |name: &str| format!("{name}-{}", uuid::Uuid::now_v7().simple());
    let (a_token, b_token, admin) = (secret("team-a"), secret("team-b"), secret("ops"));
    let a_repos = format!("{}/{}", env.auth_registry, unique("team-a"));
    let b_repos = format!("{}/{}", env.auth_registry, unique("team-b"));
    // Both teams may use the service's credentials on the private registry,
    // and publish any source: only `read_repos` (by default their `repos`)
    // keeps them apart.
    let team = |name: &str, token: &str, repos: &str| {
        format!(
            "[[token]]\nname = \"{name}\"\nsha256 = \"{}\"\nrole = \"publisher\"\n\
             repos = [\"{repos}/**\"]\nservice_credentials = [\"{}\"]\n",
            hex::encode(Sha256::digest(token.as_bytes())),
            env.auth_registry
        )
    };
    let config = dir.path().join("auth.toml");
    std::fs::write(
        &config,
        format!(
            "{}{}[[token]]\nname = \"ops\"\nsha256 = \"{}\"\nrole = \"admin\"\n",
            team("team-a", &a_token, &a_repos),
            team("team-b", &b_token, &b_repos),
            hex::encode(Sha256::digest(admin.as_bytes()))
        ),
    )
    .unwrap();
    let app = TestApp::spawn_with(|settings| settings.tokens.auth_config = Some(config)).await;
    let password = STANDARD.encode(format!("{}:{}", env.auth_user, env.auth_password));
    app.write_docker_config(&json!({"auths": {env.auth_registry.clone(): {"auth": password}}}));
    let private = Registry::with_auth(&env.auth_registry, &env.auth_user, &env.auth_password);
    let post = reqwest::Method::POST;

    // Team B publishes its private build.
    let engine = TestEngine::connect();
    let build = unique("team-b-build");
    let image_id = engine.import_image(&build, "b1", &[]).await;
    let b_repo = format!("{b_repos}/shop");
    let b_job = app_job(&b_repo, &format!("{build}:b1"), &["v1"]);
    let (status, accepted) =
        request(&app, post.clone(), "/api/v1/jobs", &b_token, Some(&b_job)).await;
    assert_eq!(status, 202, "{accepted:#}");
    private
        .assert_holds(&finished(&app, &b_token, &accepted).await)
        .await;

    // Team A asks for it from the registry, read with publishd's
    // credentials: refused, audited, nothing written.
    let a_repo = format!("{a_repos}/shop");
    let a_path = a_repo
        .strip_prefix(&format!("{}/", env.auth_registry))
        .unwrap();
    let stolen = app_job(&a_repo, &format!("docker://{b_repo}/app:v1"), &["v1"]);
    let (status, refused) =
        request(&app, post.clone(), "/api/v1/jobs", &a_token, Some(&stolen)).await;
    assert_eq!(status, 403, "{refused:#}");
    assert_eq!(refused["error"]["field"], "images[0].source");
    assert_eq!(refused["error"]["rule"], "read_repos");
    let (_, audit) = request(&app, reqwest::Method::GET, "/api/v1/audit", &admin, None).await;
    let event = &audit["events"][0];
    assert_eq!(
        (event["actor"].as_str(), event["outcome"].as_str()),
        (Some("team-a"), Some("refused")),
        "{audit:#}"
    );
    assert_eq!(event["detail"]["rule"], "read_repos");
    assert!(private.tags(&format!("{a_path}/app")).await.is_empty());

    // Team A publishes the same image from the engine (it has it too).
    // Team B's push left its layers in team B's repository, which team A
    // may not read: its target goes through the engine, not a mount.
    let own = unique("team-a-build");
    engine.tag(&image_id, &format!("{own}:b1")).await;
    let a_job = app_job(&a_repo, &format!("{own}:b1"), &["v2"]);
    let (status, accepted) = request(&app, post, "/api/v1/jobs", &a_token, Some(&a_job)).await;
    assert_eq!(status, 202, "{accepted:#}");
    let job = finished(&app, &a_token, &accepted).await;
    private.assert_holds(&job).await;
    assert_eq!(job["targets"][0]["published_via"], "engine", "{job:#}");
}
