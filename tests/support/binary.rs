//! The real `publishd` binary as a child process, for tests that kill it,
//! signal it or read its logs.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::process::{Child, Command};

use publishd::store::Location;

use super::TestEnv;

pub struct Server {
    child: Child,
    pub port: u16,
    pub base: String,
    pub client: reqwest::Client,
}

/// A port nothing listens on, for a server started later.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    /// Starts `publishd serve` on the database in `dir`, logging to
    /// `dir/serve-{round}.log`, with `env` added to its environment.
    pub async fn start(dir: &Path, round: usize, env: &[(&str, &str)]) -> Server {
        Self::start_on(free_port(), dir, round, env).await
    }

    /// `start` on `port`: where a client that saw the previous server will
    /// look for it again. Answers once the server is healthy.
    pub async fn start_on(port: u16, dir: &Path, round: usize, env: &[(&str, &str)]) -> Server {
        Self::launch(port, dir, round, &super::test_database(dir), env).await
    }

    /// `start` on `database`, which other servers share.
    pub async fn start_shared(
        dir: &Path,
        round: usize,
        database: &Location,
        env: &[(&str, &str)],
    ) -> Server {
        Self::launch(free_port(), dir, round, database, env).await
    }

    async fn launch(
        port: u16,
        dir: &Path,
        round: usize,
        database: &Location,
        env: &[(&str, &str)],
    ) -> Server {
        let log = std::fs::File::create(dir.join(format!("serve-{round}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_publishd"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--database")
            .arg(database.to_argument())
            .arg("--docker-config")
            .arg(dir.join("docker-config"))
            .env("DOCKER_HOST", TestEnv::get().docker_host)
            .env("PUBLISHD_RETRY_INITIAL_BACKOFF", "0.1")
            // An environment variable, not a flag: `env` may change it.
            .env("PUBLISHD_WORKERS", "4")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("publishd starts");
        let server = Server {
            child,
            port,
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

    /// Submits a job that must be accepted; answers its id.
    pub async fn submit(&self, body: &Value) -> String {
        let url = format!("{}/api/v1/jobs", self.base);
        let response = self.client.post(url).json(body).send().await.unwrap();
        assert_eq!(response.status(), 202);
        let job: Value = response.json().await.unwrap();
        job["id"].as_str().unwrap().to_owned()
    }

    /// The JSON answer to `GET path` (every API GET answers JSON to
    /// `Accept: application/json`, the events too).
    async fn get_json(&self, path: &str) -> Value {
        self.client
            .get(format!("{}{path}", self.base))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn job(&self, id: &str) -> Value {
        self.get_json(&format!("/api/v1/jobs/{id}")).await
    }

    /// The job's stored history.
    pub async fn history(&self, id: &str) -> Vec<Value> {
        let body = self.get_json(&format!("/api/v1/jobs/{id}/events")).await;
        body["events"].as_array().expect("events").clone()
    }

    /// Every job in the database, newest first.
    pub async fn jobs(&self) -> Vec<Value> {
        let page = self.get_json("/api/v1/jobs?limit=100").await;
        page["jobs"].as_array().unwrap().clone()
    }

    pub async fn statuses(&self, ids: &[String]) -> Vec<String> {
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
    pub async fn kill_when(mut self, ids: &[String], moment: impl Fn(&[String]) -> bool) -> bool {
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

    /// Waits for the job to end and answers it.
    pub async fn wait_finished(&self, id: &str) -> Value {
        let start = Instant::now();
        loop {
            let job = self.job(id).await;
            if matches!(
                job["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            ) {
                return job;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "job {id} never finished: {job:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends the process a signal by name (`HUP`).
    pub async fn signal(&self, name: &str) {
        let pid = self.child.id().expect("running").to_string();
        let sent = Command::new("kill")
            .args(["-s", name, &pid])
            .status()
            .await
            .unwrap();
        assert!(sent.success(), "kill -s {name} {pid}");
    }

    /// SIGTERM, and wait for the process to exit.
    pub async fn terminate(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill").arg(pid.to_string()).status().await;
        }
        self.child.wait().await.unwrap();
    }
}
