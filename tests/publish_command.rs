//! The client commands against a running service and the real registry:
//! `publishd publish` (the one-command pipeline step, with werf's flags and
//! environment variables and the old spellings), `watch`, `status`, `list`
//! and `cancel`; their reports, `--output json`, every exit code, Ctrl-C,
//! and how a wait outlasts a service that restarts, is not up yet, is
//! overloaded or loses an answer.

mod support;

use std::fmt;
use std::net::SocketAddr;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::binary::{Server, free_port};
use support::engine::TestEngine;
use support::images::{Format, push_index, push_platform_image};
use support::registry::Registry;
use support::{HangingRegistry, TestApp, TestEnv, app_job, unique};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// `publishd SUBCOMMAND --server SERVER ARGS...`.
fn client_command(subcommand: &str, server: &str, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_publishd"));
    command
        .arg(subcommand)
        .args(["--server", server])
        .args(args)
        .kill_on_drop(true);
    command
}

fn publish_command(server: &str, args: &[&str]) -> tokio::process::Command {
    client_command("publish", server, args)
}

async fn run_publish(app: &TestApp, args: &[&str]) -> Output {
    run_client(app, "publish", args).await
}

async fn run_client(app: &TestApp, subcommand: &str, args: &[&str]) -> Output {
    client_command(subcommand, &app.url(""), args)
        .output()
        .await
        .expect("publishd runs")
}

/// `publishd publish` under way, its stderr read line by line as it comes.
struct Running {
    child: tokio::process::Child,
    lines: mpsc::UnboundedReceiver<String>,
    stderr: Vec<String>,
    started: Instant,
}

/// How a `publishd publish` ended.
struct Finished {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl fmt::Display for Finished {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit {:?} after {:?}\nstdout:\n{}stderr:\n{}",
            self.code, self.took, self.stdout, self.stderr
        )
    }
}

impl Running {
    fn start(server: &str, args: &[&str]) -> Running {
        Self::spawn(publish_command(server, args))
    }

    fn spawn(mut command: tokio::process::Command) -> Running {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("publishd runs");
        let mut reader = BufReader::new(child.stderr.take().unwrap()).lines();
        let (sender, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = reader.next_line().await {
                let _ = sender.send(line);
            }
        });
        Running {
            child,
            lines,
            stderr: Vec::new(),
            started: Instant::now(),
        }
    }

    /// Waits for a stderr line containing `text`; answers it.
    async fn wait_for(&mut self, text: &str) -> String {
        let read = async {
            while let Some(line) = self.lines.recv().await {
                self.stderr.push(line.clone());
                if line.contains(text) {
                    return line;
                }
            }
            panic!("publishd ended without saying {text:?}: {:?}", self.stderr);
        };
        tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .unwrap_or_else(|_| panic!("publishd never said {text:?}"))
    }

    /// Sends the process a signal by name (`INT`).
    async fn signal(&self, name: &str) {
        let pid = self.child.id().expect("running").to_string();
        let sent = tokio::process::Command::new("kill")
            .args(["-s", name, &pid])
            .status()
            .await
            .unwrap();
        assert!(sent.success(), "kill -s {name} {pid}");
    }

    async fn finish(mut self) -> Finished {
        let mut stdout = String::new();
        let mut pipe = self.child.stdout.take().unwrap();
        let wait = async {
            pipe.read_to_string(&mut stdout).await.unwrap();
            self.child.wait().await.unwrap()
        };
        let status = tokio::time::timeout(Duration::from_secs(60), wait)
            .await
            .expect("publishd ends");
        while let Some(line) = self.lines.recv().await {
            self.stderr.push(line);
        }
        Finished {
            code: status.code(),
            stdout,
            stderr: self.stderr.join("\n") + "\n",
            took: self.started.elapsed(),
        }
    }
}

/// Checks that each stdout line reports a target as published or up to date
/// with the digest the registry serves; answers how many there are.
async fn check_reports(stdout: &str) -> usize {
    let registry = Registry::open(&TestEnv::get().registry);
    let lines: Vec<&str> = stdout.lines().collect();
    for line in &lines {
        let (reference, digest) = ["published ", "up-to-date "]
            .iter()
            .find_map(|verb| line.strip_prefix(verb))
            .and_then(|rest| rest.rsplit_once('@'))
            .unwrap_or_else(|| panic!("report line {line:?}"));
        let pushed = registry.pushed(reference).await.expect("in the registry");
        assert_eq!(pushed.digest, digest, "{reference}");
    }
    lines.len()
}

/// Flags that publish a fresh image under `tags` to the test registry.
async fn fresh_image_flags(prefix: &str, tags: usize) -> Vec<String> {
    let name = unique(prefix);
    TestEngine::connect().import_image(&name, "b1", &[]).await;
    let mut flags = vec![
        "--repo".to_owned(),
        format!("{}/{}", TestEnv::get().registry, unique(prefix)),
        "--image".to_owned(),
        format!("app={name}:b1"),
    ];
    for tag in 0..tags {
        flags.extend(["--tag".to_owned(), format!("custom:v{tag}")]);
    }
    flags
}

fn strs(flags: &[String]) -> Vec<&str> {
    flags.iter().map(String::as_str).collect()
}

#[tokio::test]
async fn publishes_and_reports_each_reference_with_its_digest() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let name = unique("cmd");
    engine.import_image(&name, "b1", &[]).await;
    let app = TestApp::spawn().await;
    let repo = format!("{}/{}", env.registry, unique("cmd"));
    let source = format!("backend={name}:b1");
    let registry = Registry::open(&env.registry);
    let args = [
        "--repo",
        &repo,
        "--image",
        &source,
        "--tag",
        "custom:v1",
        "--tag",
        "git-branch:feature/Login",
    ];
    // The second run finds the same build in the registry: nothing is pushed.
    for verb in ["published ", "up-to-date "] {
        let output = run_publish(&app, &args).await;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stdout}\n{stderr}");
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 2, "{stdout}");
        for line in lines {
            let (reference, digest) = line
                .strip_prefix(verb)
                .and_then(|rest| rest.rsplit_once('@'))
                .unwrap_or_else(|| panic!("report line {line:?}"));
            let pushed = registry.pushed(reference).await.expect("in the registry");
            assert_eq!(pushed.digest, digest);
        }
    }
}

#[tokio::test]
async fn exit_codes_tell_failed_from_refused() {
    // The old spellings (--repo, --tag) wait, as they always did.
    let env = TestEnv::get();
    let app = TestApp::spawn().await;
    let repo = format!("{}/{}", env.registry, unique("cmd-fail"));
    let failed = run_publish(
        &app,
        &[
            "--repo",
            &repo,
            "--image",
            "app=no-such-image:1",
            "--tag",
            "custom:v1",
        ],
    )
    .await;
    assert_eq!(failed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&failed.stdout).contains("does not exist"));

    // A 422 is final: no retry. It exits 4 (refused); it was 2 before the
    // werf-compatible CLI, which gave 2 to clap's usage errors alone (see
    // `client::Exit`).
    let start = Instant::now();
    let refused = run_publish(
        &app,
        &["--repo", &repo, "--image", "app=x", "--tag", "custom:-bad"],
    )
    .await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("tags[0].value"), "{stderr}");
    assert!(!stderr.contains("retrying"), "{stderr}");
    assert!(start.elapsed() < Duration::from_secs(5), "{stderr}");
}

#[tokio::test]
async fn a_service_killed_and_restarted_while_waiting_is_waited_out() {
    let dir = tempfile::tempdir().unwrap();
    // One lane: the targets run one after another, so the job is under way
    // when the service dies.
    let workers = [("PUBLISHD_WORKERS", "1")];
    let server = Server::start(dir.path(), 0, &workers).await;
    let flags = fresh_image_flags("cmd-restart", 6).await;
    // Once the service has answered, --connect-timeout no longer applies:
    // the restart below takes longer than it.
    let mut args = strs(&flags);
    args.extend(["--connect-timeout", "1"]);
    let mut client = Running::start(&server.base, &args);
    let accepted = client.wait_for("accepted; waiting").await;
    let id = accepted.split(' ').nth(1).unwrap().to_owned();

    let port = server.port;
    let killed = server
        .kill_when(std::slice::from_ref(&id), |statuses| {
            statuses.iter().any(|s| s == "pushing")
        })
        .await;
    assert!(killed, "the job ended before the kill");
    client.wait_for("service unreachable").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let server = Server::start_on(port, dir.path(), 1, &workers).await;

    let finished = client.finish().await;
    assert_eq!(finished.code, Some(0), "{finished}");
    assert_eq!(check_reports(&finished.stdout).await, 6, "{finished}");
    assert!(finished.stderr.contains("retrying in"), "{finished}");
    // The event stream was opened again after the last event seen: each
    // target's end is told once, none lost, none twice.
    for line in finished.stdout.lines() {
        let (_, published) = line.split_once(' ').unwrap();
        let (reference, _) = published.rsplit_once('@').unwrap();
        let told = format!("succeeded {reference}@");
        assert_eq!(finished.stderr.matches(&told).count(), 1, "{finished}");
    }
    let jobs = server.jobs().await;
    assert_eq!(jobs.len(), 1, "{jobs:#?}");
    assert_eq!(jobs[0]["id"], id.as_str());
}

#[tokio::test]
async fn a_service_not_up_yet_is_waited_for_and_gets_one_job() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let flags = fresh_image_flags("cmd-late", 1).await;
    let mut client = Running::start(&format!("http://127.0.0.1:{port}"), &strs(&flags));
    client.wait_for("service unreachable").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let server = Server::start_on(port, dir.path(), 0, &[]).await;

    let finished = client.finish().await;
    assert_eq!(finished.code, Some(0), "{finished}");
    assert_eq!(check_reports(&finished.stdout).await, 1, "{finished}");
    assert!(
        finished.stderr.contains("idempotency key "),
        "the generated key is shown: {finished}"
    );
    assert_eq!(server.jobs().await.len(), 1);
}

#[tokio::test]
async fn the_publish_report_is_werf_v1_1s() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let registry = Registry::open(&env.registry);
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    // Two images built locally, and an index a remote builder pushed, of
    // which one platform is published.
    let (backend, frontend) = (unique("report-b"), unique("report-f"));
    let backend_id = engine.import_image(&backend, "b1", &[]).await;
    let frontend_id = engine.import_image(&frontend, "b1", &[]).await;
    let repository = unique("ci/report");
    let mut entries = Vec::new();
    for platform in ["linux/amd64", "linux/arm64"] {
        let image = push_platform_image(&registry, &repository, platform, Format::Oci).await;
        entries.push(image.descriptor());
    }
    let (index, _) = push_index(&registry, &repository, "b1", Format::Oci, &entries).await;
    let repo = format!("{}/{}", env.registry, unique("report"));
    let path = dir.path().join("report.json");
    let output = run_publish(
        &app,
        &[
            "-i",
            &repo,
            "--image",
            &format!("backend={backend}:b1"),
            "--image",
            &format!("frontend={frontend}:b1"),
            "--image",
            &format!("multi=docker://{}/{repository}:b1", env.registry),
            "--tag-custom",
            "v1",
            "--tag-content",
            "--platform",
            "linux/arm64",
            "--publish-report-path",
            path.to_str().unwrap(),
        ],
    )
    .await;
    // The report is of the job's end: asking for one is waiting for it.
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(text(&output.stderr).contains("publish report written to"));

    // werf writes each image's record at each tag: the last, here the
    // content tag, is what stays. DockerImageID is the published image's
    // config digest (the image id), an index's own digest for an index.
    let mut expected = String::from(r#"{"Images":{"#);
    for (name, content_id) in [
        ("backend", &backend_id),
        ("frontend", &frontend_id),
        ("multi", &index),
    ] {
        let tag = content_id.trim_start_matches("sha256:");
        let (served, bytes) = registry
            .raw_manifest(&format!("{}/{name}", repo.split_once('/').unwrap().1), tag)
            .await
            .expect("published");
        let manifest: Value = serde_json::from_slice(&bytes).unwrap();
        let image_id = match manifest["config"]["digest"].as_str() {
            Some(config) => config.to_owned(),
            None => served.clone(),
        };
        if name != "backend" {
            expected.push(',');
        }
        expected.push_str(&format!(
            r#""{name}":{{"WerfImageName":"{name}","DockerRepo":"{repo}/{name}","DockerTag":"{tag}","DockerImageID":"{image_id}","DockerImageDigest":"{served}"}}"#
        ));
    }
    expected.push_str("}}\n");
    assert_eq!(text(&std::fs::read(&path).unwrap()), expected);

    // Monorepo: the repo, and the image name in the tag.
    let path = dir.path().join("monorepo.json");
    let output = run_publish(
        &app,
        &[
            "-i",
            &repo,
            "--images-repo-mode",
            "monorepo",
            "--image",
            &format!("api={backend}:b1"),
            "--tag-custom",
            "v1",
            "--tag-git-branch",
            "main",
            "--publish-report-path",
            path.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let report: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let record = &report["Images"]["api"];
    assert_eq!(record["DockerRepo"], repo.as_str());
    assert_eq!(record["DockerTag"], "api-main");
    let pushed = registry.pushed(&format!("{repo}:api-main")).await.unwrap();
    assert_eq!(record["DockerImageID"], pushed.manifest["config"]["digest"]);
    assert_eq!(record["DockerImageDigest"], pushed.digest.as_str());
}

#[tokio::test]
async fn a_full_queue_is_waited_out_as_retry_after_says() {
    let engine = TestEngine::connect();
    let hanging = HangingRegistry::start().await;
    let name = unique("cmd-full");
    engine.import_image(&name, "b1", &[]).await;
    let app = TestApp::spawn_with(|settings| {
        settings.workers = 1;
        settings.max_queued_targets = 1;
    })
    .await;
    // The only lane is stuck pushing to a registry that never answers and
    // one target waits behind it: the queue is full.
    let stuck_repo = format!("{}/{}", hanging.address, unique("cmd-full"));
    let mut stuck = app_job(&stuck_repo, &format!("{name}:b1"), &["busy"]);
    // `force` skips the up-to-date read, which would hang before the push.
    stuck["force"] = json!(true);
    let busy = app.submit(&stuck).await;
    app.wait_for(&busy, Duration::from_secs(30), |job| {
        job["targets"][0]["status"] == "pushing"
    })
    .await;
    let queued = app.submit(&stuck).await;

    let flags = fresh_image_flags("cmd-full", 1).await;
    let mut client = Running::start(&app.url(""), &strs(&flags));
    let retry = client.wait_for("retrying in").await;
    assert!(
        retry.contains("503") && retry.ends_with("retrying in 5s"),
        "{retry}"
    );
    for id in [&busy, &queued] {
        let url = app.url(&format!("/api/v1/jobs/{id}/cancel"));
        let cancelled = app.client.post(url).send().await.unwrap();
        assert_eq!(cancelled.status(), 200);
    }

    let finished = client.finish().await;
    assert_eq!(finished.code, Some(0), "{finished}");
    assert_eq!(check_reports(&finished.stdout).await, 1, "{finished}");
    assert!(finished.took >= Duration::from_secs(5), "{finished}");
}

#[tokio::test]
async fn a_submission_whose_answer_is_lost_is_sent_again_with_the_same_key() {
    let app = TestApp::spawn().await;
    let relay = lose_first_answer(app.address).await;
    let flags = fresh_image_flags("cmd-lost", 1).await;
    let finished = Running::start(&format!("http://{relay}"), &strs(&flags))
        .finish()
        .await;
    assert_eq!(finished.code, Some(0), "{finished}");
    assert!(finished.stderr.contains("broken"), "{finished}");
    assert_eq!(check_reports(&finished.stdout).await, 1, "{finished}");
    let page: Value = app.get("/api/v1/jobs").await.json().await.unwrap();
    assert_eq!(page["jobs"].as_array().unwrap().len(), 1, "{page:#}");
}

/// A TCP relay to `upstream` that delivers the first request and closes the
/// connection as its answer arrives: the client cannot know whether the
/// service acted on it. Later connections are relayed whole.
async fn lose_first_answer(upstream: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((mut client, _)) = listener.accept().await {
            let mut service = TcpStream::connect(upstream).await.unwrap();
            let lose = std::mem::take(&mut first);
            tokio::spawn(async move {
                if lose {
                    let (mut from_client, _) = client.split();
                    let (mut from_service, mut to_service) = service.split();
                    let mut answer = [0; 1];
                    tokio::select! {
                        _ = tokio::io::copy(&mut from_client, &mut to_service) => {}
                        _ = from_service.read(&mut answer) => {}
                    }
                } else {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut service).await;
                }
            });
        }
    });
    address
}

// The werf-compatible client: `--wait` over the event stream, werf's
// variables, the other commands, exit codes and interrupts.

/// A fresh source image; answers `app=NAME:b1` and a fresh repo.
async fn fresh_source(prefix: &str) -> (String, String) {
    let name = unique(prefix);
    TestEngine::connect().import_image(&name, "b1", &[]).await;
    let repo = format!("{}/{}", TestEnv::get().registry, unique(prefix));
    (format!("app={name}:b1"), repo)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn json_of(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("{error}: {}", text(&output.stdout)))
}

/// A job stuck pushing to a registry that never answers (`--force` skips
/// the up-to-date read, which would hang before the push), followed by a
/// `publish --wait` with `extra` flags; answers it once a push is under way,
/// with the job id.
async fn stuck_publish(
    app: &TestApp,
    hanging: &HangingRegistry,
    extra: &[&str],
) -> (Running, String) {
    let (image, _) = fresh_source("cli-stuck").await;
    let repo = format!("{}/{}", hanging.address, unique("cli-stuck"));
    let mut args = vec![
        "--images-repo",
        &repo,
        "--image",
        &image,
        "--tag-custom",
        "v1",
        "--force",
        "--wait",
    ];
    args.extend(extra);
    let mut client = Running::start(&app.url(""), &args);
    let accepted = client.wait_for("accepted; waiting").await;
    let id = accepted.split(' ').nth(1).unwrap().to_owned();
    client.wait_for("pushing ").await;
    (client, id)
}

#[tokio::test]
async fn waits_with_werf_flags_telling_each_step_then_each_reference_with_its_digest() {
    let app = TestApp::spawn().await;
    let (image, repo) = fresh_source("cli-wait").await;
    let finished = Running::start(
        &app.url(""),
        &[
            "--images-repo",
            &repo,
            "--image",
            &image,
            "--tag-custom",
            "v1",
            "--tag-git-branch",
            "feature/Login",
            "--wait",
        ],
    )
    .finish()
    .await;
    assert_eq!(finished.code, Some(0), "{finished}");
    assert_eq!(check_reports(&finished.stdout).await, 2, "{finished}");
    // One target goes through the engine (and untags); the other, written
    // registry-side from its push, is told its steps too.
    let references = [
        format!("{repo}/app:v1"),
        format!("{repo}/app:feature-login-71b29127"),
    ];
    let untagged = references
        .iter()
        .filter(|reference| {
            finished
                .stderr
                .contains(&format!("{:<10}{reference}\n", "untagging"))
        })
        .count();
    assert_eq!(untagged, 1, "{finished}");
    for reference in references {
        for step in ["tagging", "pushing"] {
            let line = format!("{step:<10}{reference}\n");
            assert!(finished.stderr.contains(&line), "{line:?}: {finished}");
        }
        assert!(
            finished
                .stderr
                .contains(&format!("succeeded {reference}@sha256:")),
            "{finished}"
        );
    }
    assert!(finished.stderr.contains(" succeeded\n"), "{finished}");
}

#[tokio::test]
async fn werf_environment_variables_name_the_tags_as_werf_does() {
    let app = TestApp::spawn().await;
    let (image, repo) = fresh_source("cli-env").await;
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_publishd"));
    command
        .args(["publish", "--image", &image, "--wait"])
        .env("PUBLISHD_SERVER", app.url(""))
        .env("WERF_IMAGES_REPO", &repo)
        .env("WERF_IMAGES_REPO_MODE", "monorepo")
        // werf's slug: not a valid tag as it is, so slugged and hashed.
        .env("WERF_TAG_GIT_BRANCH", "core/feature/ADD_SETTINGS")
        // What a CI system makes of an unset variable: no tag.
        .env("WERF_TAG_GIT_TAG", "")
        .env("WERF_TAG_GIT_COMMIT", commit)
        // Every WERF_TAG_CUSTOM* variable is one tag, as in werf.
        .env("WERF_TAG_CUSTOM_B", "latest")
        .env("WERF_TAG_CUSTOM_A", "v1.2.3")
        .kill_on_drop(true);
    let finished = Running::spawn(command).finish().await;
    assert_eq!(finished.code, Some(0), "{finished}");
    assert_eq!(check_reports(&finished.stdout).await, 4, "{finished}");
    let references: Vec<&str> = finished
        .stdout
        .lines()
        .map(|line| line.strip_prefix("published ").unwrap())
        .map(|line| line.rsplit_once('@').unwrap().0)
        .collect();
    assert_eq!(
        references,
        [
            format!("{repo}:app-v1.2.3"),
            format!("{repo}:app-latest"),
            format!("{repo}:app-core-feature-add-settings-df80fdc3"),
            format!("{repo}:app-{commit}"),
        ],
        "{finished}"
    );
}

#[tokio::test]
async fn without_wait_it_prints_the_job_id_and_watch_follows_the_job() {
    let app = TestApp::spawn().await;
    let (image, repo) = fresh_source("cli-nowait").await;
    let args = ["-i", &repo, "--image", &image, "--tag-custom", "v1"];
    let started = Instant::now();
    let submitted = run_publish(&app, &args).await;
    assert_eq!(
        submitted.status.code(),
        Some(0),
        "{}",
        text(&submitted.stderr)
    );
    let id = text(&submitted.stdout).trim().to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id:?}");
    assert!(
        text(&submitted.stderr).contains(&format!("publishd watch --server {} {id}", app.url(""))),
        "{}",
        text(&submitted.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    let watched = run_client(&app, "watch", &[&id]).await;
    let stdout = text(&watched.stdout);
    assert_eq!(watched.status.code(), Some(0), "{}", text(&watched.stderr));
    assert_eq!(check_reports(&stdout).await, 1, "{stdout}");
    assert_eq!(app.job(&id).await["status"], "succeeded");

    // A finished job's history is told again, and its end.
    let again = run_client(&app, "watch", &[&id]).await;
    assert_eq!(again.status.code(), Some(0));
    assert_eq!(text(&again.stdout), stdout);
    assert!(
        text(&again.stderr).contains("pushing   "),
        "{}",
        text(&again.stderr)
    );
}

#[tokio::test]
async fn streams_that_reach_their_max_age_are_resumed_silently_and_lose_nothing() {
    // Short: since a source's later targets go registry-side, 12 targets
    // take well under a second.
    let max_age = Duration::from_millis(100);
    let app = TestApp::spawn_with(|settings| {
        settings.workers = 1;
        settings.stream_max_age = max_age;
    })
    .await;
    let flags = fresh_image_flags("cli-reopen", 12).await;
    let started = Instant::now();
    let output = run_publish(&app, &strs(&flags)).await;
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(check_reports(&stdout).await, 12, "{stdout}");
    // The job outlasted several streams.
    assert!(started.elapsed() > max_age * 3, "{:?}", started.elapsed());
    // Each stream's end was a reopen, not a break to wait out.
    assert!(
        !stderr.contains("retrying") && !stderr.contains("ended before the job did"),
        "{stderr}"
    );
    // Every change of every target was told once: none lost across
    // reopens, none told twice.
    let id = stderr
        .lines()
        .find_map(|line| {
            line.strip_prefix("job ")?
                .strip_suffix(" accepted; waiting")
        })
        .unwrap_or_else(|| panic!("no job id in {stderr}"));
    let history = app.history(id).await;
    let changes: Vec<&Value> = history
        .iter()
        .filter(|event| event["kind"] == "target")
        .collect();
    assert!(changes.len() >= 12 * 3, "{history:#?}");
    for change in changes {
        let (status, reference) = (
            change["data"]["status"].as_str().unwrap(),
            change["data"]["reference"].as_str().unwrap(),
        );
        let told = format!("{status:<10}{reference}");
        let times = stderr
            .lines()
            .filter(|line| *line == told || line.starts_with(&format!("{told}@")))
            .count();
        assert_eq!(times, 1, "{told}:\n{stderr}");
    }
}

#[tokio::test]
async fn output_json_prints_the_apis_own_objects() {
    let app = TestApp::spawn().await;
    let (image, repo) = fresh_source("cli-json").await;
    let args = [
        "-i",
        &repo,
        "--image",
        &image,
        "--tag-custom",
        "v1",
        "--output",
        "json",
    ];

    let submitted = json_of(&run_publish(&app, &args).await);
    let id = submitted["id"].as_str().unwrap().to_owned();
    let job = app.wait_finished(&id).await;
    assert_eq!(
        submitted["targets"][0]["reference"],
        job["targets"][0]["reference"]
    );
    assert_eq!(
        submitted.as_object().unwrap().keys().collect::<Vec<_>>(),
        job.as_object().unwrap().keys().collect::<Vec<_>>()
    );

    let waited = run_publish(&app, &[&args[..], &["--wait"]].concat()).await;
    assert_eq!(waited.status.code(), Some(0), "{}", text(&waited.stderr));
    let waited = json_of(&waited);
    let second = waited["id"].as_str().unwrap();
    assert_eq!(waited, app.job(second).await);
    assert_eq!(waited["targets"][0]["up_to_date"], true, "{waited:#}");

    let status = run_client(&app, "status", &["--output", "json", &id]).await;
    assert_eq!(json_of(&status), app.job(&id).await);
    let watched = run_client(&app, "watch", &["--output", "json", &id]).await;
    assert_eq!(json_of(&watched), app.job(&id).await);
    let list = run_client(&app, "list", &["--output", "json", "--limit", "1"]).await;
    let page: Value = app.get("/api/v1/jobs?limit=1").await.json().await.unwrap();
    assert_eq!(json_of(&list), page);
    assert_eq!(page["jobs"][0]["id"], second);
}

#[tokio::test]
async fn status_and_list_show_jobs_as_text() {
    let app = TestApp::spawn().await;
    let (image, repo) = fresh_source("cli-status").await;
    let ok = run_publish(
        &app,
        &[
            "-i",
            &repo,
            "--image",
            &image,
            "--tag-custom",
            "v1",
            "--wait",
        ],
    )
    .await;
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    let failed = run_publish(
        &app,
        &[
            "-i",
            &repo,
            "--image",
            "app=no-such-image:1",
            "--tag-custom",
            "v1",
            "--wait",
        ],
    )
    .await;
    assert_eq!(failed.status.code(), Some(1));
    let jobs: Value = app.get("/api/v1/jobs").await.json().await.unwrap();
    let (failed_id, ok_id) = (
        jobs["jobs"][0]["id"].as_str().unwrap(),
        jobs["jobs"][1]["id"].as_str().unwrap(),
    );

    let status = run_client(&app, "status", &[ok_id]).await;
    assert_eq!(status.status.code(), Some(0));
    let shown = text(&status.stdout);
    assert!(
        shown.starts_with(&format!("job {ok_id} succeeded\nrepo {repo} (multirepo)\n")),
        "{shown}"
    );
    assert_eq!(
        check_reports(shown.lines().last().unwrap()).await,
        1,
        "{shown}"
    );

    let listed = text(&run_client(&app, "list", &[]).await.stdout);
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 2, "{listed}");
    assert!(
        lines[0].starts_with(&format!("{failed_id}  failed ")),
        "{listed}"
    );
    assert!(
        lines[1].starts_with(&format!("{ok_id}  succeeded ")),
        "{listed}"
    );
    assert!(
        lines[1].ends_with(&format!("{repo}  1 targets")),
        "{listed}"
    );
    // A page with more after it says how to get the next one.
    let first = run_client(&app, "list", &["--limit", "1"]).await;
    assert_eq!(text(&first.stdout).lines().count(), 1);
    let hint = text(&first.stderr);
    let prefix = format!(
        "next page: publishd list --server {} --limit 1 --cursor ",
        app.url("")
    );
    let cursor = hint
        .trim_end()
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{hint}"));
    let next = run_client(&app, "list", &["--limit", "1", "--cursor", cursor]).await;
    assert!(
        text(&next.stdout).starts_with(ok_id),
        "{}",
        text(&next.stdout)
    );
    let last = run_client(&app, "list", &["--limit", "2"]).await;
    assert!(
        !text(&last.stderr).contains("next page"),
        "{}",
        text(&last.stderr)
    );
    let only_failed = text(
        &run_client(&app, "list", &["--status", "failed"])
            .await
            .stdout,
    );
    assert_eq!(only_failed.lines().count(), 1, "{only_failed}");
    assert!(only_failed.starts_with(failed_id), "{only_failed}");
    // Every filter at once: nothing has "it's" in it.
    let filtered = run_client(
        &app,
        "list",
        &[
            "--has-failed-target",
            "--submitted-by",
            "",
            "--repo-prefix",
            &repo,
            "--search",
            "it's",
            "--limit",
            "1",
        ],
    )
    .await;
    assert_eq!(text(&filtered.stdout), "", "nothing has it's in its name");
    let with_failed = run_client(
        &app,
        "list",
        &[
            "--has-failed-target",
            "--repo-prefix",
            &repo,
            "--limit",
            "1",
        ],
    )
    .await;
    assert!(text(&with_failed.stdout).starts_with(failed_id));
    assert!(
        !text(&with_failed.stderr).contains("next page"),
        "the succeeded job has no failed target: {}",
        text(&with_failed.stderr)
    );
}

#[tokio::test]
async fn a_failed_target_exits_1() {
    let app = TestApp::spawn().await;
    let repo = format!("{}/{}", TestEnv::get().registry, unique("cli-failed"));
    let output = run_publish(
        &app,
        &[
            "-i",
            &repo,
            "--image",
            "app=no-such-image:1",
            "--tag-custom",
            "v1",
            "--wait",
        ],
    )
    .await;
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(output.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.starts_with(&format!("failed {repo}/app:v1: ")),
        "{stdout}"
    );
    assert!(stdout.contains("does not exist"), "{stdout}");
    assert!(
        stderr.contains(&format!("failed    {repo}/app:v1: ")),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_cancelled_job_exits_3_and_cancelling_it_again_is_refused() {
    let app = TestApp::spawn().await;
    let hanging = HangingRegistry::start().await;
    let (client, id) = stuck_publish(&app, &hanging, &[]).await;

    let cancelled = run_client(&app, "cancel", &[&id]).await;
    assert_eq!(
        cancelled.status.code(),
        Some(0),
        "{}",
        text(&cancelled.stderr)
    );
    assert!(text(&cancelled.stdout).starts_with(&format!("job {id} cancel requested (now ")));

    let finished = client.finish().await;
    assert_eq!(finished.code, Some(3), "{finished}");
    assert!(
        finished
            .stderr
            .contains(&format!("job {id}: cancel requested")),
        "{finished}"
    );
    assert!(finished.stdout.starts_with("cancelled "), "{finished}");
    assert!(
        finished.stderr.contains(&format!("job {id} cancelled")),
        "{finished}"
    );

    let again = run_client(&app, "cancel", &["--output", "json", &id]).await;
    assert_eq!(again.status.code(), Some(4));
    assert!(
        text(&again.stderr).contains("409"),
        "{}",
        text(&again.stderr)
    );
    // With --output json, the refusal is printed as the API sent it.
    let refusal = json_of(&again);
    assert!(refusal["error"]["code"].is_string(), "{refusal:#}");
    assert!(refusal["error"]["message"].is_string(), "{refusal:#}");
}

#[tokio::test]
async fn refusals_exit_4_at_once() {
    let app = TestApp::spawn_with(|settings| settings.tokens.tokens = Some("t0ken".into())).await;
    let (image, repo) = fresh_source("cli-refused").await;
    let args = [
        "-i",
        &repo,
        "--image",
        &image,
        "--tag-custom",
        "v1",
        "--wait",
    ];
    let started = Instant::now();

    let unauthorized = run_publish(&app, &args).await;
    let stderr = text(&unauthorized.stderr);
    assert_eq!(unauthorized.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("401"), "{stderr}");

    let invalid = client_command(
        "publish",
        &app.url(""),
        &["-i", &repo, "--image", &image, "--tag-custom=-bad"],
    )
    .env("PUBLISHD_TOKEN", "t0ken")
    .output()
    .await
    .unwrap();
    let stderr = text(&invalid.stderr);
    assert_eq!(invalid.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("tags[0].value"), "{stderr}");
    assert!(invalid.stdout.is_empty(), "text output: the message alone");
    let invalid_json = client_command(
        "publish",
        &app.url(""),
        &[
            "-i",
            &repo,
            "--image",
            &image,
            "--tag-custom=-bad",
            "--output",
            "json",
        ],
    )
    .env("PUBLISHD_TOKEN", "t0ken")
    .output()
    .await
    .unwrap();
    assert_eq!(invalid_json.status.code(), Some(4));
    assert!(text(&invalid_json.stderr).contains("tags[0].value"));
    assert_eq!(json_of(&invalid_json)["error"]["field"], "tags[0].value");

    let unknown = client_command(
        "status",
        &app.url(""),
        &["01a22000-0000-7000-8000-000000000000"],
    )
    .env("PUBLISHD_TOKEN", "t0ken")
    .output()
    .await
    .unwrap();
    assert_eq!(unknown.status.code(), Some(4), "{}", text(&unknown.stderr));
    assert!(!text(&unknown.stderr).contains("retrying"));
    assert!(started.elapsed() < Duration::from_secs(10));

    // The token from PUBLISHD_TOKEN is let in.
    let accepted = client_command("publish", &app.url(""), &args)
        .env("PUBLISHD_TOKEN", "t0ken")
        .output()
        .await
        .unwrap();
    assert_eq!(
        accepted.status.code(),
        Some(0),
        "{}",
        text(&accepted.stderr)
    );
}

#[tokio::test]
async fn usage_errors_exit_2_before_anything_is_sent() {
    // Nothing listens: a command that sent anything would retry, then exit 5.
    let server = format!("http://127.0.0.1:{}", free_port());
    for args in [
        &["-i", "reg/acme", "--image", "a=b"][..],
        &["--image", "a=b", "--tag-custom", "v1"],
        &["-i", "reg/acme", "--image", "=b", "--tag-custom", "v1"],
        &[
            "-i",
            "reg/acme",
            "--image",
            "a=b",
            "--tag-custom",
            "v1",
            "--cancel-on-interrupt",
        ],
        &[
            "-i",
            "reg/acme",
            "--images-repo-mode",
            "flat",
            "--image",
            "a=b",
            "--tag-content",
        ],
    ] {
        let output = publish_command(&server, args)
            .env_remove("WERF_IMAGES_REPO")
            .output()
            .await
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&output.stderr)
        );
    }
}

#[tokio::test]
async fn an_unreachable_service_or_a_job_that_does_not_end_in_time_exits_5() {
    // Never reached: given up after --wait-timeout, or after --connect-timeout.
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let publish = |limit: &'static [&'static str]| {
        let mut args = vec![
            "-i",
            "reg/acme",
            "--image",
            "a=b",
            "--tag-custom",
            "v1",
            "--wait",
        ];
        args.extend(limit);
        client_command("publish", &nowhere, &args).output()
    };
    let started = Instant::now();
    let output = publish(&["--wait-timeout", "2"]).await.unwrap();
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("service unreachable"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10), "{stderr}");
    // --wait's own limit is an hour, but a service never reached is given
    // up on after --connect-timeout.
    let started = Instant::now();
    let output = publish(&["--connect-timeout", "2"]).await.unwrap();
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(5), "{stderr}");
    assert!(
        stderr.contains("gave up after 2s (--connect-timeout): the service has not answered once")
            && stderr.contains("is --server right?"),
        "{stderr}"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "{took:?}: {stderr}"
    );
    let status = client_command("status", &nowhere, &["--wait-timeout", "1", "x"])
        .output()
        .await
        .unwrap();
    assert_eq!(status.status.code(), Some(5));

    // Reachable, but the job is still pushing when the time is up: it goes on.
    let app = TestApp::spawn().await;
    let hanging = HangingRegistry::start().await;
    let (client, id) = stuck_publish(&app, &hanging, &["--wait-timeout", "4"]).await;
    let finished = client.finish().await;
    assert_eq!(finished.code, Some(5), "{finished}");
    assert!(
        finished
            .stderr
            .contains(&format!("job {id} had not ended after 4s")),
        "{finished}"
    );
    assert_eq!(app.job(&id).await["status"], "running");
    let cancel = app
        .client
        .post(app.url(&format!("/api/v1/jobs/{id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 200);
}

#[tokio::test]
async fn an_interrupt_detaches_and_leaves_the_job_running() {
    let app = TestApp::spawn().await;
    let hanging = HangingRegistry::start().await;
    let (client, id) = stuck_publish(&app, &hanging, &[]).await;
    client.signal("INT").await;
    let finished = client.finish().await;
    assert_eq!(finished.code, Some(130), "{finished}");
    let hint = format!("publishd watch --server {} {id}", app.url(""));
    assert!(finished.stderr.contains(&hint), "{finished}");
    assert_eq!(app.job(&id).await["status"], "running");

    // Followed again, it is told to its end.
    let mut watch = Running::spawn(client_command("watch", &app.url(""), &[&id]));
    watch.wait_for("pushing ").await;
    // `cancel --output json` prints the job as the cancel answered it.
    let cancelled = run_client(&app, "cancel", &["--output", "json", &id]).await;
    assert_eq!(cancelled.status.code(), Some(0));
    let answered = json_of(&cancelled);
    assert_eq!(answered["id"], id.as_str());
    assert_eq!(answered["cancel_requested"], true);
    let watched = watch.finish().await;
    assert_eq!(watched.code, Some(3), "{watched}");
    let job = app.job(&id).await;
    assert_eq!(job["created_at"], answered["created_at"]);
    assert_eq!(
        job.as_object().unwrap().keys().collect::<Vec<_>>(),
        answered.as_object().unwrap().keys().collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn an_interrupt_with_cancel_on_interrupt_cancels_the_job() {
    let app = TestApp::spawn().await;
    let hanging = HangingRegistry::start().await;
    let (client, id) = stuck_publish(&app, &hanging, &["--cancel-on-interrupt"]).await;
    client.signal("INT").await;
    let finished = client.finish().await;
    assert_eq!(finished.code, Some(3), "{finished}");
    assert!(
        finished
            .stderr
            .contains(&format!("interrupted: cancelling job {id}")),
        "{finished}"
    );
    assert!(finished.stdout.starts_with("cancelled "), "{finished}");
    let job = app.job(&id).await;
    assert_eq!(job["status"], "cancelled");
    assert_eq!(job["cancel_requested"], true);
}

#[tokio::test]
async fn the_old_spellings_ignore_werf_variables() {
    // A pipeline written for the old spellings may set WERF_* for another
    // step: they add no tag and change no naming here.
    let app = TestApp::spawn().await;
    let flags = fresh_image_flags("cmd-old-env", 1).await;
    let repo = flags[1].clone();
    let mut command = publish_command(&app.url(""), &strs(&flags));
    command
        .env("WERF_IMAGES_REPO", "elsewhere.example.com/nope")
        .env("WERF_IMAGES_REPO_MODE", "monorepo")
        .env("WERF_TAG_GIT_BRANCH", "main")
        .env("WERF_TAG_CUSTOM_EXTRA", "extra")
        .env("WERF_TAG_BY_STAGES_SIGNATURE", "true");
    let finished = Running::spawn(command).finish().await;
    assert_eq!(finished.code, Some(0), "{finished}");
    assert_eq!(check_reports(&finished.stdout).await, 1, "{finished}");
    assert!(
        finished
            .stdout
            .starts_with(&format!("published {repo}/app:v0@sha256:")),
        "{finished}"
    );
}

#[tokio::test]
async fn empty_publishd_variables_are_no_values() {
    // PUBLISHD_SERVER="" is the default server, not a URL without a host
    // (a usage error, 2): nothing listens there, so it is unreachable (5).
    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_publishd"))
        .args(["status", "--wait-timeout", "1", "x"])
        .env("PUBLISHD_SERVER", "")
        .output()
        .await
        .unwrap();
    let stderr = text(&status.stderr);
    assert_eq!(status.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("at http://127.0.0.1:8080"), "{stderr}");

    // No token, a generated key, no callback (which this service, without
    // a webhook secret, would refuse).
    let app = TestApp::spawn().await;
    let (image, repo) = fresh_source("cli-empty").await;
    let output = client_command(
        "publish",
        &app.url(""),
        &[
            "-i",
            &repo,
            "--image",
            &image,
            "--tag-custom",
            "v1",
            "--wait",
        ],
    )
    .env("PUBLISHD_TOKEN", "")
    .env("PUBLISHD_IDEMPOTENCY_KEY", "")
    .env("PUBLISHD_CALLBACK_URL", "")
    .env("PUBLISHD_REGISTRY_USERNAME", "")
    .env("PUBLISHD_REGISTRY_PASSWORD", "")
    .output()
    .await
    .unwrap();
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains(" (generated)"), "{stderr}");
    assert_eq!(check_reports(&text(&output.stdout)).await, 1, "{stderr}");
}

#[tokio::test]
async fn per_job_registry_credentials_reach_a_private_registry_and_are_never_shown() {
    // The service has no credentials for the htpasswd registry: the job's
    // own, from --registry-username and PUBLISHD_REGISTRY_PASSWORD, let it
    // push. A content tag (werf v1.1's --tag-by-stages-signature) is named
    // by its events: no step line shows '?'.
    let env = TestEnv::get();
    let app = TestApp::spawn().await;
    let name = unique("cli-cred");
    TestEngine::connect().import_image(&name, "b1", &[]).await;
    let repo = format!("{}/{}", env.auth_registry, unique("cli-cred"));
    let image = format!("app={name}:b1");
    let mut command = publish_command(
        &app.url(""),
        &[
            "-i",
            &repo,
            "--image",
            &image,
            "--tag-custom",
            "v1",
            "--tag-by-stages-signature",
            "--registry-username",
            &env.auth_user,
            "--wait",
        ],
    );
    command.env("PUBLISHD_REGISTRY_PASSWORD", &env.auth_password);
    let finished = Running::spawn(command).finish().await;
    assert_eq!(finished.code, Some(0), "{finished}");
    assert!(!finished.stderr.contains('?'), "{finished}");
    let registry = Registry::with_auth(&env.auth_registry, &env.auth_user, &env.auth_password);
    let lines: Vec<&str> = finished.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{finished}");
    for line in lines {
        let (reference, digest) = line
            .strip_prefix("published ")
            .and_then(|rest| rest.rsplit_once('@'))
            .unwrap_or_else(|| panic!("report line {line:?}"));
        let pushed = registry.pushed(reference).await.expect("in the registry");
        assert_eq!(pushed.digest, digest);
    }
    for shown in [&finished.stdout, &finished.stderr] {
        assert!(!shown.contains(&env.auth_password), "{finished}");
    }
    // Nor is it answered: the job as the API tells it.
    let page: Value = app.get("/api/v1/jobs").await.json().await.unwrap();
    assert!(!page.to_string().contains(&env.auth_password), "{page:#}");
    let help = client_command("publish", &app.url(""), &["--help"])
        .env("PUBLISHD_REGISTRY_PASSWORD", &env.auth_password)
        .output()
        .await
        .unwrap();
    assert!(!text(&help.stdout).contains(&env.auth_password));

    // One without the other is a usage error.
    let half = client_command(
        "publish",
        &app.url(""),
        &[
            "-i",
            &repo,
            "--image",
            &image,
            "--tag-custom",
            "v2",
            "--registry-username",
            "u",
        ],
    )
    .output()
    .await
    .unwrap();
    assert_eq!(half.status.code(), Some(2), "{}", text(&half.stderr));
}
