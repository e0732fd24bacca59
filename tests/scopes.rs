//! Where a job may publish, and what it may read: one registry per job,
//! decided once on the references as the engine and the registry read
//! them, checked again by the worker before anything is pushed.

mod support;

use publishd::domain::access::Patterns;
use publishd::domain::spec::{JobSpec, Limits, plan};
use publishd::store::{Created, NewJob, Submitter};
use serde_json::{Value, json};
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
    let app =
        TestApp::spawn_with(|settings| settings.allow_registry = allow(&["docker.io"])).await;

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
