//! `publishd publish`, the one-command pipeline step, against a running
//! service and the real registry: its reports and exit codes, and how it
//! waits out a service that restarts, is not up yet, is overloaded or loses
//! an answer.

mod support;

use std::fmt;
use std::net::SocketAddr;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::binary::{Server, free_port};
use support::engine::TestEngine;
use support::registry::Registry;
use support::{HangingRegistry, TestApp, TestEnv, app_job, unique};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

fn publish_command(server: &str, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_publishd"));
    command
        .args(["publish", "--server", server])
        .args(args)
        .kill_on_drop(true);
    command
}

async fn run_publish(app: &TestApp, args: &[&str]) -> Output {
    publish_command(&app.url(""), args)
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
        let mut child = publish_command(server, args)
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

    // A 422 is final: no retry.
    let start = Instant::now();
    let refused = run_publish(
        &app,
        &["--repo", &repo, "--image", "app=x", "--tag", "custom:-bad"],
    )
    .await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
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
    let mut client = Running::start(&server.base, &strs(&flags));
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
