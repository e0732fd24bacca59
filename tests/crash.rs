//! SIGKILL the real publishd process while it publishes, at several points,
//! restart it on the same database, and check that nothing was lost.

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::engine::TestEngine;
use support::registry::Registry;
use support::{TestEnv, unique};
use tokio::process::{Child, Command};

struct Server {
    child: Child,
    base: String,
    client: reqwest::Client,
}

impl Server {
    async fn start(dir: &Path, round: usize) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.join(format!("serve-{round}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_publishd"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--workers",
                "4",
            ])
            .arg("--database")
            .arg(dir.join("publishd.db"))
            .arg("--docker-config")
            .arg(dir.join("docker-config"))
            .env("DOCKER_HOST", TestEnv::get().docker_host)
            .env("PUBLISHD_RETRY_INITIAL_BACKOFF", "0.1")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("publishd starts");
        let server = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
        };
        let start = Instant::now();
        while server
            .client
            .get(format!("{}/healthz", server.base))
            .send()
            .await
            .is_err()
        {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "publishd did not come up"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server
    }

    async fn job(&self, id: &str) -> Value {
        let url = format!("{}/api/v1/jobs/{id}", self.base);
        self.client
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn statuses(&self, ids: &[String]) -> Vec<String> {
        let mut statuses = Vec::new();
        for id in ids {
            let job = self.job(id).await;
            for target in job["targets"].as_array().unwrap() {
                statuses.push(target["status"].as_str().unwrap().to_owned());
            }
        }
        statuses
    }

    /// Polls until `moment` holds for the target statuses, then SIGKILLs.
    async fn kill_when(mut self, ids: &[String], moment: impl Fn(&[String]) -> bool) -> bool {
        let start = Instant::now();
        let mut seen = false;
        while start.elapsed() < Duration::from_secs(30) {
            if moment(&self.statuses(ids).await) {
                seen = true;
                break;
            }
        }
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
        seen
    }
}

#[tokio::test]
async fn sigkill_at_any_point_loses_nothing() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let dir = tempfile::tempdir().unwrap();
    let repository = unique("crash");
    let repo = format!("{}/{repository}", env.registry);

    let server = Server::start(dir.path(), 0).await;
    let mut ids = Vec::new();
    for index in 0..4 {
        let name = unique("crash-src");
        engine.import_image(&name, "b1", &[]).await;
        let tags: Vec<Value> = (0..8)
            .map(|t| json!({"strategy": "custom", "value": format!("v{t}")}))
            .collect();
        let body = json!({"repo": repo, "images": [{"name": format!("app{index}"), "source": format!("{name}:b1")}], "tags": tags});
        let response = server
            .client
            .post(format!("{}/api/v1/jobs", server.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        ids.push(
            response.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }

    // Kill during a push, during a tag step, and between two targets.
    let pushing = server
        .kill_when(&ids, |s| s.iter().any(|s| s == "pushing"))
        .await;
    let server = Server::start(dir.path(), 1).await;
    let tagging = server
        .kill_when(&ids, |s| s.iter().any(|s| s == "tagging"))
        .await;
    let server = Server::start(dir.path(), 2).await;
    let done_before = server
        .statuses(&ids)
        .await
        .iter()
        .filter(|s| *s == "succeeded")
        .count();
    server
        .kill_when(&ids, |s| {
            s.iter().filter(|s| *s == "succeeded").count() > done_before
        })
        .await;
    assert!(pushing && tagging, "the kills did not land mid-step");

    let server = Server::start(dir.path(), 3).await;
    let registry = Registry::open(&env.registry);
    let start = Instant::now();
    let (mut targets, mut attempts) = (0, 0);
    for id in &ids {
        let job = loop {
            let job = server.job(id).await;
            if matches!(
                job["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            ) {
                break job;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "job {id} never finished: {job:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(job["status"], "succeeded", "{job:#}");
        for target in job["targets"].as_array().unwrap() {
            let pushed = registry
                .pushed(target["reference"].as_str().unwrap())
                .await
                .expect("pushed");
            assert_eq!(pushed.digest, target["digest"].as_str().unwrap());
            targets += 1;
            attempts += target["attempts"].as_i64().unwrap();
        }
    }
    assert!(
        attempts > targets,
        "no target was interrupted and run again"
    );
    let left = engine.names_under(&repo).await;
    if !left.is_empty() {
        let keep = dir.keep();
        panic!(
            "target references left on the engine: {left:?} (logs in {})",
            keep.display()
        );
    }
    assert_eq!(registry.tags(&format!("{repository}/app0")).await.len(), 8);
}
