//! Several publishd processes on one PostgreSQL database, on two engines:
//! each engine's jobs run only on its instances and any instance answers for
//! every job; a killed instance's targets are finished by another on its
//! engine once the lease ends; one reference is never published by two
//! instances at once; a cancel reaches the instance that runs the target;
//! and losing the database for a few seconds leaves nothing half-done.

mod support;

use std::time::Duration;

use publishd::store::Location;
use serde_json::{Value, json};
use support::binary::Server;
use support::engine::TestEngine;
use support::fault_proxy::{FaultProxy, Faults};
use support::procs::PrivateEngine;
use support::registry::Registry;
use support::tcp_cut::TcpCut;
use support::{TestEnv, new_postgres_database, unique};

/// Seconds a claim holds: short, so that take-overs come quickly.
const LEASE: &str = "3";

fn job_on(engine: &str, repo: &str, source: &str, tags: &[&str]) -> Value {
    let tags: Vec<Value> = tags
        .iter()
        .map(|tag| json!({"strategy": "custom", "value": tag}))
        .collect();
    json!({"repo": repo, "engine": engine,
           "images": [{"name": "app", "source": source}], "tags": tags})
}

/// A server on `database` driving `docker_host` as the engine `engine`.
async fn instance(
    dir: &std::path::Path,
    round: usize,
    database: &Location,
    docker_host: &str,
    engine: &str,
) -> Server {
    let env = [
        ("DOCKER_HOST", docker_host),
        ("PUBLISHD_ENGINE_NAME", engine),
        ("PUBLISHD_LEASE", LEASE),
    ];
    Server::start_shared(dir, round, database, &env).await
}

async fn post(server: &Server, path: &str, body: &Value) -> (u16, Value) {
    let response = server
        .client
        .post(format!("{}{path}", server.base))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn engines(server: &Server) -> Value {
    server
        .client
        .get(format!("{}/api/v1/engines", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A registry in front of the test registry that makes every request slow:
/// a push takes seconds, long enough to act while it runs.
async fn slow_registry() -> FaultProxy {
    let faults = Faults::Random {
        rate: 0.0,
        seed: 1,
        latency: Duration::from_millis(150),
    };
    FaultProxy::start(&TestEnv::get().registry, faults).await
}

/// Polls until a target of `id` is `status`.
async fn wait_for_status(server: &Server, id: &str, status: &str) {
    let start = std::time::Instant::now();
    while !server
        .statuses(&[id.to_owned()])
        .await
        .iter()
        .any(|s| s == status)
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no target of {id} was ever {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn each_engine_s_jobs_run_on_its_instances_and_any_instance_answers() {
    let env = TestEnv::get();
    let dir = tempfile::tempdir().unwrap();
    let beta_dir = tempfile::tempdir().unwrap();
    let beta_engine = PrivateEngine::start(beta_dir.path());
    let database = Location::Postgres(new_postgres_database());
    let alpha_1 = instance(dir.path(), 0, &database, &env.docker_host, "alpha").await;
    let alpha_2 = instance(dir.path(), 1, &database, &env.docker_host, "alpha").await;
    let beta = instance(dir.path(), 2, &database, &beta_engine.host(), "beta").await;

    // Each source is on one engine only.
    let (alpha_source, beta_source) = (unique("on-alpha"), unique("on-beta"));
    TestEngine::connect()
        .import_image(&alpha_source, "b1", &[])
        .await;
    TestEngine::connect_to(&beta_engine.host())
        .import_image(&beta_source, "b1", &[])
        .await;

    let listed = engines(&alpha_1).await;
    assert_eq!(listed["this_instance_engine"], "alpha");
    let names: Vec<&str> = listed["engines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|engine| engine["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alpha", "beta"], "{listed:#}");
    let alpha_instances = listed["engines"][0]["instances"].as_array().unwrap();
    assert_eq!(alpha_instances.len(), 2, "{listed:#}");
    assert!(alpha_instances.iter().all(|i| i["live"] == true));

    let repo = format!("{}/{}", env.registry, unique("fleet"));
    // Two engines are driven: a job with local sources must name one.
    let mut unnamed = job_on("alpha", &repo, &format!("{alpha_source}:b1"), &["v1"]);
    unnamed.as_object_mut().unwrap().remove("engine");
    let (status, refusal) = post(&beta, "/api/v1/jobs", &unnamed).await;
    assert_eq!(status, 422, "{refusal:#}");
    assert_eq!(refusal["error"]["field"], "engine", "{refusal:#}");
    let unknown = job_on("gamma", &repo, &format!("{alpha_source}:b1"), &["v1"]);
    let (status, refusal) = post(&alpha_1, "/api/v1/jobs", &unknown).await;
    assert_eq!(status, 422, "{refusal:#}");
    assert!(
        refusal["error"]["message"]
            .as_str()
            .unwrap()
            .contains("alpha, beta"),
        "{refusal:#}"
    );

    // Submitted to an instance of the other engine: run where the source is.
    let on_alpha = beta
        .submit(&job_on(
            "alpha",
            &repo,
            &format!("{alpha_source}:b1"),
            &["a1", "a2"],
        ))
        .await;
    let on_beta = alpha_1
        .submit(&job_on(
            "beta",
            &repo,
            &format!("{beta_source}:b1"),
            &["b1", "b2"],
        ))
        .await;
    let registry = Registry::open(&env.registry);
    for id in [&on_alpha, &on_beta] {
        // Any instance answers for any job.
        let job = alpha_2.wait_finished(id).await;
        assert_eq!(job["status"], "succeeded", "{job:#}");
        registry.assert_holds(&job).await;
        assert_eq!(beta.job(id).await, job);
    }
    assert_eq!(alpha_1.job(&on_alpha).await["engine"], "alpha");
    assert_eq!(alpha_1.job(&on_beta).await["engine"], "beta");
    assert!(TestEngine::connect().names_under(&repo).await.is_empty());
    assert!(
        TestEngine::connect_to(&beta_engine.host())
            .names_under(&repo)
            .await
            .is_empty()
    );

    // A stopped instance leaves the list at once.
    beta.terminate().await;
    let listed = engines(&alpha_1).await;
    let beta_row = listed["engines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|engine| engine["name"] == "beta")
        .cloned();
    assert!(
        beta_row.is_none_or(|row| row["instances"].as_array().unwrap().is_empty()),
        "{listed:#}"
    );
    alpha_1.terminate().await;
    alpha_2.terminate().await;
}

#[tokio::test]
async fn a_killed_instance_s_targets_are_finished_by_another_on_its_engine() {
    let dir = tempfile::tempdir().unwrap();
    let engine = TestEngine::connect();
    let docker_host = TestEnv::get().docker_host;
    let registry = slow_registry().await;
    let repo = format!("{}/{}", registry.address, unique("takeover"));
    let source = unique("takeover-src");
    engine.import_random_image(&source, "b1", 4 << 20).await;
    let database = Location::Postgres(new_postgres_database());
    // An instance of another engine runs all along: it must not take over.
    let beta_dir = tempfile::tempdir().unwrap();
    let beta_engine = PrivateEngine::start(beta_dir.path());
    let beta = instance(dir.path(), 0, &database, &beta_engine.host(), "beta").await;

    let first = instance(dir.path(), 1, &database, &docker_host, "alpha").await;
    let id = first
        .submit(&job_on(
            "alpha",
            &repo,
            &format!("{source}:b1"),
            &["v1", "v2", "v3", "v4"],
        ))
        .await;
    wait_for_status(&first, &id, "pushing").await;
    let second = instance(dir.path(), 2, &database, &docker_host, "alpha").await;
    let ids = [id.clone()];
    assert!(
        first
            .kill_when(&ids, |s| s.iter().any(|s| s == "pushing"))
            .await
    );

    let job = second.wait_finished(&id).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    Registry::open(&registry.address.to_string())
        .assert_holds(&job)
        .await;
    let targets = job["targets"].as_array().unwrap();
    let attempts: i64 = targets
        .iter()
        .map(|t| t["attempts"].as_i64().unwrap())
        .sum();
    assert!(
        attempts > targets.len() as i64,
        "no target was cut short and run again: {job:#}"
    );
    assert!(engine.names_under(&repo).await.is_empty());
    second.terminate().await;
    beta.terminate().await;
}

#[tokio::test]
async fn one_reference_is_never_published_by_two_instances_at_once() {
    let env = TestEnv::get();
    let dir = tempfile::tempdir().unwrap();
    let beta_dir = tempfile::tempdir().unwrap();
    let beta_engine = PrivateEngine::start(beta_dir.path());
    let database = Location::Postgres(new_postgres_database());
    let servers = [
        instance(dir.path(), 0, &database, &env.docker_host, "alpha").await,
        instance(dir.path(), 1, &database, &env.docker_host, "alpha").await,
        instance(dir.path(), 2, &database, &beta_engine.host(), "beta").await,
    ];
    let source = unique("contended");
    TestEngine::connect().import_image(&source, "b1", &[]).await;
    TestEngine::connect_to(&beta_engine.host())
        .import_image(&source, "b1", &["LABEL engine=beta"])
        .await;
    let repo = format!("{}/{}", env.registry, unique("contended"));
    let mut ids = Vec::new();
    for index in 0..20 {
        let engine = if index % 2 == 0 { "alpha" } else { "beta" };
        let server = &servers[index % servers.len()];
        let body = job_on(engine, &repo, &format!("{source}:b1"), &["v1"]);
        ids.push(server.submit(&body).await);
    }
    // Each time a target was in flight, from its history: a target put
    // back to wait (for a seed, or for its reference) keeps its first
    // `started_at`, so the record's times are not its runs.
    let mut windows = Vec::new();
    let mut runs = Vec::new();
    for id in &ids {
        let job = servers[0].wait_finished(id).await;
        assert_eq!(job["status"], "succeeded", "{job:#}");
        let mut since: Option<String> = None;
        let mut last = None;
        for event in servers[0].history(id).await {
            if event["kind"] != "target" {
                continue;
            }
            let at = event["at"].as_str().unwrap().to_owned();
            let in_flight = matches!(
                event["data"]["status"].as_str(),
                Some("tagging" | "pushing" | "untagging")
            );
            match (in_flight, since.take()) {
                (true, None) => since = Some(at),
                (true, Some(start)) => since = Some(start),
                (false, Some(start)) => {
                    windows.push((start.clone(), at.clone(), id.clone()));
                    last = Some((start, at));
                }
                (false, None) => {}
            }
        }
        let (started, finished) = last.expect("the target ran");
        runs.push((
            started,
            finished,
            job["engine"].as_str().unwrap().to_owned(),
            job["targets"][0]["digest"].as_str().unwrap().to_owned(),
        ));
    }
    // The events' times (RFC 3339, fixed width: text order is time order).
    windows.sort();
    for pair in windows.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "two runs of {repo}/app:v1 overlapped: {pair:?}"
        );
    }
    runs.sort();
    // The tag in the registry is the image of the run that came last.
    let pushed = Registry::open(&env.registry)
        .pushed(&format!("{repo}/app:v1"))
        .await
        .expect("v1 in the registry");
    assert_eq!(pushed.digest, runs.last().unwrap().3);
    let engines: Vec<&str> = runs.iter().map(|run| run.2.as_str()).collect();
    assert!(engines.contains(&"alpha") && engines.contains(&"beta"));
    assert!(TestEngine::connect().names_under(&repo).await.is_empty());
    for server in servers {
        server.terminate().await;
    }
}

#[tokio::test]
async fn a_cancel_through_one_instance_stops_a_target_running_on_another() {
    let dir = tempfile::tempdir().unwrap();
    let engine = TestEngine::connect();
    let registry = slow_registry().await;
    let repo = format!("{}/{}", registry.address, unique("cancel"));
    let source = unique("cancel-src");
    engine.import_random_image(&source, "b1", 4 << 20).await;
    let database = Location::Postgres(new_postgres_database());
    let beta_dir = tempfile::tempdir().unwrap();
    let beta_engine = PrivateEngine::start(beta_dir.path());
    let runner = instance(
        dir.path(),
        0,
        &database,
        &TestEnv::get().docker_host,
        "alpha",
    )
    .await;
    let other = instance(dir.path(), 1, &database, &beta_engine.host(), "beta").await;
    let tags: Vec<String> = (0..6).map(|t| format!("v{t}")).collect();
    let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
    let id = runner
        .submit(&job_on("alpha", &repo, &format!("{source}:b1"), &tags))
        .await;
    wait_for_status(&runner, &id, "pushing").await;

    let (status, job) = post(&other, &format!("/api/v1/jobs/{id}/cancel"), &json!({})).await;
    assert_eq!(status, 200, "{job:#}");
    let cancelled_at = std::time::Instant::now();
    let job = other.wait_finished(&id).await;
    assert_eq!(job["status"], "cancelled", "{job:#}");
    // The step under way was stopped, not waited out with every other.
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(10),
        "the cancel took {:?}",
        cancelled_at.elapsed()
    );
    let statuses: Vec<&str> = job["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["status"].as_str().unwrap())
        .collect();
    assert!(
        statuses.iter().filter(|s| **s == "cancelled").count() >= 4,
        "{statuses:?}"
    );
    // What was cancelled before it started is not in the registry.
    let published = Registry::open(&registry.address.to_string());
    for target in job["targets"].as_array().unwrap() {
        if target["status"] == "cancelled" && target["started_at"].is_null() {
            let reference = target["reference"].as_str().unwrap();
            assert!(
                published.pushed(reference).await.is_none(),
                "{reference} was pushed"
            );
        }
    }
    assert!(engine.names_under(&repo).await.is_empty());
    runner.terminate().await;
    other.terminate().await;
}

#[tokio::test]
async fn losing_the_database_for_seconds_leaves_nothing_half_done() {
    let dir = tempfile::tempdir().unwrap();
    let engine = TestEngine::connect();
    let registry = slow_registry().await;
    let repo = format!("{}/{}", registry.address, unique("partition"));
    let source = unique("partition-src");
    engine.import_random_image(&source, "b1", 1 << 20).await;
    // Everything publishd says to its database goes through `cut`.
    let url = url::Url::parse(&new_postgres_database()).unwrap();
    let postgres = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap())
        .parse()
        .unwrap();
    let cut = TcpCut::start(postgres).await;
    let mut through_cut = url.clone();
    through_cut.set_port(Some(cut.address.port())).unwrap();
    let database = Location::Postgres(through_cut.to_string());
    let server = instance(
        dir.path(),
        0,
        &database,
        &TestEnv::get().docker_host,
        "alpha",
    )
    .await;
    let tags: Vec<String> = (0..6).map(|t| format!("v{t}")).collect();
    let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
    let id = server
        .submit(&job_on("alpha", &repo, &format!("{source}:b1"), &tags))
        .await;
    wait_for_status(&server, &id, "pushing").await;
    cut.cut_for(Duration::from_secs(5)).await;

    let job = server.wait_finished(&id).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    Registry::open(&registry.address.to_string())
        .assert_holds(&job)
        .await;
    assert!(engine.names_under(&repo).await.is_empty());
    server.terminate().await;
}

#[tokio::test]
async fn a_job_s_own_credentials_are_used_by_the_instance_that_holds_them() {
    let env = TestEnv::get();
    let dir = tempfile::tempdir().unwrap();
    let database = Location::Postgres(new_postgres_database());
    let holder = instance(dir.path(), 0, &database, &env.docker_host, "alpha").await;
    let other = instance(dir.path(), 1, &database, &env.docker_host, "alpha").await;
    let beta_dir = tempfile::tempdir().unwrap();
    let beta_engine = PrivateEngine::start(beta_dir.path());
    let beta = instance(dir.path(), 2, &database, &beta_engine.host(), "beta").await;
    let source = unique("own-credentials");
    TestEngine::connect().import_image(&source, "b1", &[]).await;
    let repo = format!("{}/{}", env.auth_registry, unique("own-credentials"));
    let with_credentials = |tag: &str| {
        let mut job = job_on("alpha", &repo, &format!("{source}:b1"), &[tag, "latest"]);
        job["registry_auth"] = json!({"username": env.auth_user, "password": env.auth_password});
        job
    };

    // Held in the memory of the instance that accepts them: a job on
    // another engine than that instance's could never use them.
    let (status, refusal) = post(&beta, "/api/v1/jobs", &with_credentials("v0")).await;
    assert_eq!(status, 422, "{refusal:#}");
    assert_eq!(refusal["error"]["field"], "registry_auth", "{refusal:#}");

    // Only their holder claims the jobs, though another instance is idle
    // on the same engine: none waits for credentials it does not have.
    let mut ids = Vec::new();
    for tag in ["v1", "v2", "v3", "v4"] {
        ids.push(holder.submit(&with_credentials(tag)).await);
    }
    let registry = Registry::with_auth(&env.auth_registry, &env.auth_user, &env.auth_password);
    for id in &ids {
        let job = other.wait_finished(id).await;
        assert_eq!(job["status"], "succeeded", "{job:#}");
        assert!(
            job["targets"]
                .as_array()
                .unwrap()
                .iter()
                .all(|t| t["credentials_wait_until"].is_null()),
            "{job:#}"
        );
        registry.assert_holds(&job).await;
    }
    for server in [holder, other, beta] {
        server.terminate().await;
    }
}
