//! One publishd shared by teams: scoped tokens, jobs owned by their
//! submitter, precise refusals that leave the engine and the registry
//! untouched, the service's credentials only where a scope allows them,
//! fair share between submitters, a token file reloaded on SIGHUP, and an
//! audit trail of all of it.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::binary::Server;
use support::engine::TestEngine;
use support::registry::Registry;
use support::{TestApp, TestEnv, app_job, unique};

/// A team's token and where it may publish.
struct Team {
    token: String,
    /// `REGISTRY/team-x-<uuid>`: the repos the team may publish under.
    repos: String,
    /// `team-x-<uuid>`: the source repositories the team may publish.
    sources: String,
}

impl Team {
    fn new(name: &str, registry: &str) -> Team {
        Team {
            token: format!("{name}-secret-{}", uuid::Uuid::now_v7().simple()),
            repos: format!("{registry}/{}", unique(name)),
            sources: unique(&format!("{name}-src")),
        }
    }
}

fn sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Team A (publisher, its sources must say `team=a`), team B (publisher,
/// no label rule, may force and use the service's credentials on the auth
/// registry), a reader and an admin.
struct Teams {
    a: Team,
    b: Team,
    reader: String,
    admin: String,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Teams {
    fn new() -> Teams {
        let env = TestEnv::get();
        let dir = tempfile::tempdir().unwrap();
        let teams = Teams {
            a: Team::new("team-a", &env.registry),
            b: Team::new("team-b", &env.registry),
            reader: format!("reader-{}", uuid::Uuid::now_v7().simple()),
            admin: format!("admin-{}", uuid::Uuid::now_v7().simple()),
            config: dir.path().join("auth.toml"),
            _dir: dir,
        };
        teams.write(&[]);
        teams
    }

    /// Writes the auth config, leaving out the tokens named in `revoked`.
    fn write(&self, revoked: &[&str]) {
        let env = TestEnv::get();
        let entries = [
            (
                "team-a",
                format!(
                    r#"
[[token]]
name = "team-a"
sha256 = "{}"
role = "publisher"
repos = ["{}/**"]
sources = ["{}/**"]
source_labels = {{ team = "a" }}
max_queued_targets = 300
"#,
                    sha256(&self.a.token),
                    self.a.repos,
                    self.a.sources
                ),
            ),
            (
                "team-b",
                format!(
                    r#"
[[token]]
name = "team-b"
sha256 = "{}"
role = "publisher"
repos = ["{}/**", "{}/team-b-*/**"]
sources = ["{}/**"]
service_credentials = ["{}"]
force = true
weight = 1
"#,
                    sha256(&self.b.token),
                    self.b.repos,
                    env.auth_registry,
                    self.b.sources,
                    env.auth_registry
                ),
            ),
            (
                "auditor",
                format!(
                    "\n[[token]]\nname = \"auditor\"\nsha256 = \"{}\"\nrole = \"reader\"\n",
                    sha256(&self.reader)
                ),
            ),
            (
                "ops",
                format!(
                    "\n[[token]]\nname = \"ops\"\nsha256 = \"{}\"\nrole = \"admin\"\n",
                    sha256(&self.admin)
                ),
            ),
        ];
        let text: String = entries
            .iter()
            .filter(|(name, _)| !revoked.contains(name))
            .map(|(_, entry)| entry.as_str())
            .collect();
        std::fs::write(&self.config, text).unwrap();
    }

    async fn spawn(&self, configure: impl FnOnce(&mut publishd::config::Settings)) -> TestApp {
        let config = self.config.clone();
        TestApp::spawn_with(move |settings| {
            settings.tokens.auth_config = Some(config);
            configure(settings);
        })
        .await
    }
}

/// A request to `app` with a bearer token.
fn with(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: &str,
) -> reqwest::RequestBuilder {
    app.client.request(method, app.url(path)).bearer_auth(token)
}

async fn post_job(app: &TestApp, token: &str, body: &Value, key: Option<&str>) -> (u16, Value) {
    let mut request = with(app, reqwest::Method::POST, "/api/v1/jobs", token).json(body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn get(app: &TestApp, token: &str, path: &str) -> (u16, Value) {
    let response = with(app, reqwest::Method::GET, path, token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn cancel(app: &TestApp, token: &str, id: &str) -> (u16, Value) {
    let path = format!("/api/v1/jobs/{id}/cancel");
    let response = with(app, reqwest::Method::POST, &path, token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn wait_finished(app: &TestApp, token: &str, id: &str) -> Value {
    let start = std::time::Instant::now();
    loop {
        let (_, job) = get(app, token, &format!("/api/v1/jobs/{id}")).await;
        if matches!(
            job["status"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        ) {
            return job;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "{job:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Team A's source: an image named under its sources, labelled `team=a`.
async fn team_a_source(teams: &Teams, engine: &TestEngine) -> String {
    let source = format!("{}/app:b1", teams.a.sources);
    engine
        .import_image(&format!("{}/app", teams.a.sources), "b1", &["LABEL team=a"])
        .await;
    source
}

#[tokio::test]
async fn teams_see_cancel_and_replay_only_their_own_jobs() {
    let teams = Teams::new();
    let engine = TestEngine::connect();
    let source = team_a_source(&teams, &engine).await;
    let app = teams.spawn(|settings| settings.workers = 1).await;

    let job_a = app_job(&format!("{}/shop", teams.a.repos), &source, &["v1"]);
    let (status, accepted) = post_job(&app, &teams.a.token, &job_a, Some("release-1")).await;
    assert_eq!(status, 202, "{accepted:#}");
    assert_eq!(accepted["submitted_by"], "team-a");
    let id_a = accepted["id"].as_str().unwrap().to_owned();

    // Another team: not found, whether reading or cancelling, and not listed.
    let (status, _) = get(&app, &teams.b.token, &format!("/api/v1/jobs/{id_a}")).await;
    assert_eq!(status, 404);
    let (status, _) = cancel(&app, &teams.b.token, &id_a).await;
    assert_eq!(status, 404);
    let (_, page) = get(&app, &teams.b.token, "/api/v1/jobs").await;
    assert!(
        page["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|job| job["id"] != id_a.as_str())
    );
    // Nor when team B names team A: a publisher lists its own jobs only.
    let (status, refused) = get(&app, &teams.b.token, "/api/v1/jobs?submitted_by=team-a").await;
    assert_eq!(
        (status, refused["error"]["field"].as_str()),
        (403, Some("submitted_by"))
    );
    let (status, own) = get(&app, &teams.a.token, "/api/v1/jobs?submitted_by=team-a").await;
    assert_eq!(
        (status, own["jobs"][0]["id"].as_str()),
        (200, Some(id_a.as_str()))
    );
    // Team A's key replayed by team B reaches only team B's own jobs.
    let b_source = format!("{}/app:b1", teams.b.sources);
    engine
        .import_image(&format!("{}/app", teams.b.sources), "b1", &[])
        .await;
    let job_b = app_job(&format!("{}/shop", teams.b.repos), &b_source, &["v1"]);
    let (status, replayed) = post_job(&app, &teams.b.token, &job_b, Some("release-1")).await;
    assert_eq!(status, 202, "a new job of team B's: {replayed:#}");
    assert_ne!(replayed["id"], id_a.as_str());
    assert_eq!(replayed["submitted_by"], "team-b");
    // Team A's own replay answers its job.
    let (status, again) = post_job(&app, &teams.a.token, &job_a, Some("release-1")).await;
    assert_eq!((status, again["id"].as_str()), (200, Some(id_a.as_str())));

    // The reader reads all, cancels nothing; the admin does both.
    let (status, seen) = get(&app, &teams.reader, &format!("/api/v1/jobs/{id_a}")).await;
    assert_eq!(
        (status, seen["submitted_by"].as_str()),
        (200, Some("team-a"))
    );
    let (status, refused) = cancel(&app, &teams.reader, &id_a).await;
    assert_eq!(status, 403, "{refused:#}");
    assert_eq!(refused["error"]["rule"], "role");
    let (status, _) = get(&app, &teams.admin, &format!("/api/v1/jobs/{id_a}")).await;
    assert_eq!(status, 200);
    let (status, _) = get(&app, &teams.reader, "/api/v1/audit").await;
    assert_eq!(status, 403, "the audit trail is the admin's");

    Registry::open(&TestEnv::get().registry)
        .assert_holds(&wait_finished(&app, &teams.a.token, &id_a).await)
        .await;
}

#[tokio::test]
async fn submissions_outside_the_scope_are_refused_precisely_and_touch_nothing() {
    let env = TestEnv::get();
    let teams = Teams::new();
    let engine = TestEngine::connect();
    let source = team_a_source(&teams, &engine).await;
    // A source under team A's names but without the label.
    let unlabelled = format!("{}/other:b1", teams.a.sources);
    engine
        .import_image(&format!("{}/other", teams.a.sources), "b1", &[])
        .await;
    let other_team_source = format!("{}/app:b1", teams.b.sources);
    engine
        .import_image(&format!("{}/app", teams.b.sources), "b1", &[])
        .await;
    let app = teams.spawn(|_| {}).await;

    let inside = format!("{}/shop", teams.a.repos);
    let outside = format!("{}/shop", teams.b.repos);
    let mut forced = app_job(&inside, &source, &["v1"]);
    forced["force"] = json!(true);
    let cases = [
        (app_job(&outside, &source, &["v1"]), "repo", "repos"),
        (
            app_job(&inside, &other_team_source, &["v1"]),
            "images[0].source",
            "sources",
        ),
        (
            app_job(&inside, &unlabelled, &["v1"]),
            "images[0].source",
            "source_labels",
        ),
        (forced, "force", "force"),
    ];
    for (body, field, rule) in cases {
        let (status, refused) = post_job(&app, &teams.a.token, &body, None).await;
        assert_eq!(status, 403, "{body} -> {refused:#}");
        assert_eq!(refused["error"]["code"], "forbidden");
        assert_eq!(refused["error"]["field"], field, "{refused:#}");
        assert_eq!(refused["error"]["rule"], rule, "{refused:#}");
    }
    let (status, refused) = post_job(
        &app,
        &teams.reader,
        &app_job(&inside, &source, &["v1"]),
        None,
    )
    .await;
    assert_eq!(
        (status, refused["error"]["rule"].as_str()),
        (403, Some("role"))
    );

    // Nothing was tagged or pushed anywhere.
    let registry = Registry::open(&env.registry);
    for repo in [&inside, &outside] {
        let repository = repo.strip_prefix(&format!("{}/", env.registry)).unwrap();
        assert!(registry.tags(&format!("{repository}/app")).await.is_empty());
        assert!(engine.names_under(repo).await.is_empty());
    }
    let (_, page) = get(&app, &teams.admin, "/api/v1/jobs").await;
    assert!(
        page["jobs"].as_array().unwrap().is_empty(),
        "no job was recorded"
    );
}

#[tokio::test]
async fn the_services_credentials_are_used_only_where_a_scope_allows() {
    let env = TestEnv::get();
    let teams = Teams::new();
    let engine = TestEngine::connect();
    let source = team_a_source(&teams, &engine).await;
    let b_source = format!("{}/app:b1", teams.b.sources);
    engine
        .import_image(&format!("{}/app", teams.b.sources), "b1", &[])
        .await;
    let app = teams.spawn(|_| {}).await;
    // The service's docker config can push to the htpasswd registry.
    let auth = STANDARD.encode(format!("{}:{}", env.auth_user, env.auth_password));
    app.write_docker_config(&json!({"auths": {env.auth_registry.clone(): {"auth": auth}}}));

    // Team B may use them there.
    let b_repo = format!("{}/{}/shop", env.auth_registry, unique("team-b-auth"));
    let (status, job) = post_job(
        &app,
        &teams.b.token,
        &app_job(&b_repo, &b_source, &["v1"]),
        None,
    )
    .await;
    assert_eq!(status, 202, "{job:#}");
    let job = wait_finished(&app, &teams.b.token, job["id"].as_str().unwrap()).await;
    let private = Registry::with_auth(&env.auth_registry, &env.auth_user, &env.auth_password);
    private.assert_holds(&job).await;

    // Team A may not: its scope grants no host, so its push goes anonymous
    // and the registry refuses it.
    let mut teams_a_repo_on_auth = teams.a.repos.clone();
    teams_a_repo_on_auth = teams_a_repo_on_auth.replacen(&env.registry, &env.auth_registry, 1);
    let a_config = format!(
        "[[token]]\nname = \"team-a\"\nsha256 = \"{}\"\nrole = \"publisher\"\nrepos = [\"{}/**\"]\n\
         sources = [\"{}/**\"]\n",
        sha256(&teams.a.token),
        teams_a_repo_on_auth,
        teams.a.sources
    );
    std::fs::write(&teams.config, a_config.clone()).unwrap();
    let a_app = teams.spawn(|_| {}).await;
    a_app.write_docker_config(&json!({"auths": {env.auth_registry.clone(): {"auth": auth}}}));
    let a_repo = format!("{teams_a_repo_on_auth}/shop");
    let (status, job) = post_job(
        &a_app,
        &teams.a.token,
        &app_job(&a_repo, &source, &["v1"]),
        None,
    )
    .await;
    assert_eq!(status, 202, "{job:#}");
    let job = wait_finished(&a_app, &teams.a.token, job["id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "failed", "{job:#}");
    let error = job["targets"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("scope does not allow publishd's own credentials"),
        "{error}"
    );
    assert!(private.pushed(&format!("{a_repo}/app:v1")).await.is_none());

    // With `require_registry_auth`, such a job is refused at once, and
    // accepted when it brings credentials of its own.
    std::fs::write(
        &teams.config,
        format!("{a_config}require_registry_auth = true\n"),
    )
    .unwrap();
    let strict = teams.spawn(|_| {}).await;
    let (status, refused) = post_job(
        &strict,
        &teams.a.token,
        &app_job(&a_repo, &source, &["v2"]),
        None,
    )
    .await;
    assert_eq!(status, 403, "{refused:#}");
    assert_eq!(refused["error"]["field"], "registry_auth");
    let mut own = app_job(&a_repo, &source, &["v2"]);
    own["registry_auth"] = json!({"username": env.auth_user, "password": env.auth_password});
    let (status, job) = post_job(&strict, &teams.a.token, &own, None).await;
    assert_eq!(status, 202, "{job:#}");
    private
        .assert_holds(&wait_finished(&strict, &teams.a.token, job["id"].as_str().unwrap()).await)
        .await;
}

#[tokio::test]
async fn a_large_job_does_not_hold_back_another_teams_target() {
    let teams = Teams::new();
    let engine = TestEngine::connect();
    let source = team_a_source(&teams, &engine).await;
    let b_source = format!("{}/app:b1", teams.b.sources);
    engine
        .import_image(&format!("{}/app", teams.b.sources), "b1", &[])
        .await;
    let app = teams.spawn(|settings| settings.workers = 2).await;

    let tags: Vec<String> = (0..200).map(|index| format!("v{index}")).collect();
    let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
    let (status, large) = post_job(
        &app,
        &teams.a.token,
        &app_job(&format!("{}/shop", teams.a.repos), &source, &tags),
        None,
    )
    .await;
    assert_eq!(status, 202, "{large:#}");
    let large_id = large["id"].as_str().unwrap().to_owned();
    // Team A is under way when team B asks for one target.
    let start = std::time::Instant::now();
    loop {
        let (_, job) = get(&app, &teams.a.token, &format!("/api/v1/jobs/{large_id}")).await;
        let done = job["targets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["status"] == "succeeded")
            .count();
        if done >= 2 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, small) = post_job(
        &app,
        &teams.b.token,
        &app_job(&format!("{}/shop", teams.b.repos), &b_source, &["v1"]),
        None,
    )
    .await;
    assert_eq!(status, 202, "{small:#}");
    let small = wait_finished(&app, &teams.b.token, small["id"].as_str().unwrap()).await;
    assert_eq!(small["status"], "succeeded", "{small:#}");
    let small_done = small["targets"][0]["finished_at"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, large) = get(&app, &teams.a.token, &format!("/api/v1/jobs/{large_id}")).await;
    let before: usize = large["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| {
            t["finished_at"]
                .as_str()
                .is_some_and(|at| at < small_done.as_str())
        })
        .count();
    assert!(
        before < 10,
        "team B's target finished after {before} of team A's"
    );
    let (status, _) = cancel(&app, &teams.a.token, &large_id).await;
    assert!([200, 409].contains(&status));
    wait_finished(&app, &teams.a.token, &large_id).await;
}

#[tokio::test]
async fn a_submitter_over_its_queue_cap_is_told_to_wait_and_others_are_not() {
    let teams = Teams::new();
    let engine = TestEngine::connect();
    let source = team_a_source(&teams, &engine).await;
    let b_source = format!("{}/app:b1", teams.b.sources);
    engine
        .import_image(&format!("{}/app", teams.b.sources), "b1", &[])
        .await;
    // The only lane is held by an admin's push to a registry that never
    // answers: everything else stays queued.
    let app = teams.spawn(|settings| settings.workers = 1).await;
    let hanging = support::HangingRegistry::start().await;
    let mut held = app_job(&format!("{}/hold", hanging.address), &source, &["v1"]);
    held["force"] = json!(true);
    let (status, held) = post_job(&app, &teams.admin, &held, None).await;
    assert_eq!(status, 202, "{held:#}");
    // Team A's cap is 300: 256 + 256 is over it.
    let tags: Vec<String> = (0..256).map(|index| format!("v{index}")).collect();
    let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
    let repo = format!("{}/shop", teams.a.repos);
    let (status, _) = post_job(&app, &teams.a.token, &app_job(&repo, &source, &tags), None).await;
    assert_eq!(status, 202);
    let response = with(&app, reqwest::Method::POST, "/api/v1/jobs", &teams.a.token)
        .json(&app_job(&format!("{repo}2"), &source, &tags))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("team-a has"),
        "{body:#}"
    );
    let (status, _) = post_job(
        &app,
        &teams.b.token,
        &app_job(&format!("{}/shop", teams.b.repos), &b_source, &["v1"]),
        None,
    )
    .await;
    assert_eq!(status, 202, "another team is not held back by team A's cap");
    let (status, _) = cancel(&app, &teams.admin, held["id"].as_str().unwrap()).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_audit_trail_holds_every_submission_and_cancel_and_no_secret() {
    let teams = Teams::new();
    let engine = TestEngine::connect();
    let source = team_a_source(&teams, &engine).await;
    let app = teams.spawn(|_| {}).await;
    let repo = format!("{}/shop", teams.a.repos);
    let mut with_credentials = app_job(&repo, &source, &["v1"]);
    let password = format!("pw-{}", uuid::Uuid::now_v7().simple());
    with_credentials["registry_auth"] = json!({"username": "u", "password": password});
    let (accepted, job) = post_job(&app, &teams.a.token, &with_credentials, None).await;
    assert_eq!(accepted, 202);
    let id = job["id"].as_str().unwrap().to_owned();
    let (refused, _) = post_job(
        &app,
        &teams.a.token,
        &app_job(&format!("{}/x", teams.b.repos), &source, &["v1"]),
        None,
    )
    .await;
    assert_eq!(refused, 403);
    let (invalid, _) = post_job(&app, &teams.a.token, &json!({"repo": "Bad"}), None).await;
    assert_eq!(invalid, 422);
    let (not_found, _) = cancel(&app, &teams.b.token, &id).await;
    assert_eq!(not_found, 404);
    wait_finished(&app, &teams.a.token, &id).await;
    let (too_late, _) = cancel(&app, &teams.a.token, &id).await;
    assert_eq!(too_late, 409);

    let (status, page) = get(&app, &teams.admin, "/api/v1/audit?limit=500").await;
    assert_eq!(status, 200, "{page:#}");
    let events = page["events"].as_array().unwrap();
    let find = |actor: &str, action: &str, outcome: &str, status: u16| {
        events.iter().find(|event| {
            event["actor"] == actor
                && event["action"] == action
                && event["outcome"] == outcome
                && event["detail"]["status"] == status
        })
    };
    let submitted = find("team-a", "job.submit", "accepted", 202).expect("the accepted submit");
    assert_eq!(submitted["job_id"], id.as_str());
    let forbidden = find("team-a", "job.submit", "refused", 403).expect("the refused submit");
    assert_eq!(forbidden["detail"]["rule"], "repos");
    assert!(find("team-a", "job.submit", "refused", 422).is_some());
    assert!(find("team-b", "job.cancel", "refused", 404).is_some());
    assert!(find("team-a", "job.cancel", "refused", 409).is_some());
    // No token, no password, anywhere in the trail or the database.
    let trail = serde_json::to_string(&page).unwrap();
    let database = database_bytes(&app.dir);
    for secret in [&teams.a.token, &teams.b.token, &password] {
        assert!(
            !trail.contains(secret.as_str()),
            "a secret in the audit trail"
        );
        assert!(
            !contains(&database, secret.as_bytes()),
            "a secret in the database"
        );
    }
}

fn database_bytes(dir: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(dir.join("publishd.db")).unwrap();
    bytes.extend(std::fs::read(dir.join("publishd.db-wal")).unwrap_or_default());
    bytes
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[tokio::test]
async fn a_token_revoked_by_sighup_is_refused_at_once_and_its_jobs_go_on() {
    let env = TestEnv::get();
    let teams = Teams::new();
    let engine = TestEngine::connect();
    let source = team_a_source(&teams, &engine).await;
    let dir = tempfile::tempdir().unwrap();
    let config = teams.config.display().to_string();
    let server = Server::start(
        dir.path(),
        0,
        &[
            ("PUBLISHD_AUTH_CONFIG", config.as_str()),
            ("PUBLISHD_WORKERS", "1"),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let submit = |token: &str, body: Value| {
        client
            .post(format!("{}/api/v1/jobs", server.base))
            .bearer_auth(token.to_owned())
            .json(&body)
            .send()
    };
    let tags: Vec<String> = (0..6).map(|index| format!("v{index}")).collect();
    let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
    let repo = format!("{}/shop", teams.a.repos);
    let response = submit(&teams.a.token, app_job(&repo, &source, &tags))
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    teams.write(&["team-a"]);
    server.signal("HUP").await;
    // The reload is asynchronous, but quick.
    let start = std::time::Instant::now();
    loop {
        let response = submit(&teams.a.token, app_job(&repo, &source, &["late"]))
            .await
            .unwrap();
        if response.status() == 401 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still accepted: {}",
            response.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The job it submitted before goes on; the admin watches it finish.
    let start = std::time::Instant::now();
    let job = loop {
        let job: Value = client
            .get(format!("{}/api/v1/jobs/{id}", server.base))
            .bearer_auth(&teams.admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if matches!(
            job["status"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        ) {
            break job;
        }
        assert!(start.elapsed() < Duration::from_secs(60));
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    Registry::open(&env.registry).assert_holds(&job).await;
    let audit: Value = client
        .get(format!("{}/api/v1/audit", server.base))
        .bearer_auth(&teams.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        audit["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|event| event["action"] == "tokens.reload" && event["outcome"] == "reloaded"),
        "{audit:#}"
    );
    server.terminate().await;
}
