//! What the integration tests share: the real engine and registries brought
//! up by `scripts/test.sh`, the real service spawned on port 0 with its own
//! database, source images made locally, and a registry reader that checks
//! results where they live.
#![allow(dead_code)] // each test file uses a different part of this module

pub mod binary;
pub mod buildkit;
pub mod bystander;
pub mod engine;
pub mod fault_proxy;
pub mod hostile_registry;
pub mod images;
pub mod procs;
pub mod registry;
pub mod tcp_cut;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use publishd::access::TokenSources;
use publishd::config::Settings;
use publishd::domain::access::Patterns;
use publishd::domain::callback::CallbackPolicy;
use publishd::domain::publish_via::PublishVia;
use publishd::domain::retry::RetryPolicy;
use publishd::domain::spec::Limits;
use publishd::engine::{Engine, TagMethod};
use publishd::registry::TokenRealms;
use publishd::startup::Application;
use publishd::store::Location;
use publishd::worker::StepTimeouts;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The dockerds of the test environment: which one the tests publish
/// through is `PUBLISHD_TEST_ENGINE`'s choice, as `PUBLISHD_TEST_STORE`
/// picks the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestEngineKind {
    /// Debian 12's dockerd 20.10 with the classic image store (the default).
    Docker20,
    /// Debian 13's dockerd 26 with the containerd image store.
    Docker26,
}

impl TestEngineKind {
    /// The engine the tests publish through: `PUBLISHD_TEST_ENGINE`
    /// (`docker20`, the default, or `docker26`).
    pub fn chosen() -> TestEngineKind {
        match std::env::var("PUBLISHD_TEST_ENGINE").as_deref() {
            Ok("docker20") | Err(_) => TestEngineKind::Docker20,
            Ok("docker26") => TestEngineKind::Docker26,
            Ok(other) => panic!("PUBLISHD_TEST_ENGINE is docker20 or docker26, not {other:?}"),
        }
    }

    /// The other dockerd: the one that pulls what this one published.
    pub fn other(self) -> TestEngineKind {
        match self {
            TestEngineKind::Docker20 => TestEngineKind::Docker26,
            TestEngineKind::Docker26 => TestEngineKind::Docker20,
        }
    }

    /// Whether image ids are manifest (or index) digests, and pushes are
    /// OCI manifests: the containerd image store.
    pub fn containerd_store(self) -> bool {
        self == TestEngineKind::Docker26
    }

    pub fn host(self) -> String {
        env_var(match self {
            TestEngineKind::Docker20 => "PUBLISHD_TEST_DOCKER_HOST",
            TestEngineKind::Docker26 => "PUBLISHD_TEST_DOCKER26_HOST",
        })
    }
}

fn env_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the integration tests through scripts/test.sh")
    })
}

/// Addresses of the real parts, from the environment `scripts/test.sh` sets.
#[derive(Debug, Clone)]
pub struct TestEnv {
    /// The engine the tests publish through (`TestEngineKind::chosen`).
    pub engine: TestEngineKind,
    pub docker_host: String,
    pub registry: String,
    pub auth_registry: String,
    pub auth_user: String,
    pub auth_password: String,
    /// A registry behind token auth (`auth: token`), and its token server.
    pub token_registry: String,
    pub token_server_log: PathBuf,
    /// A registry over TLS on a non-loopback address, trusted by the engine
    /// only through `certs_dir`.
    pub tls_registry: String,
    pub certs_dir: PathBuf,
    /// A registry over plain HTTP on a non-loopback address, in the engine's
    /// insecure-registries list.
    pub insecure_registry: String,
    /// Podman's Docker-compatible API, or why it cannot run here.
    pub podman: Result<String, String>,
}

impl TestEnv {
    pub fn get() -> TestEnv {
        let var = env_var;
        let engine = TestEngineKind::chosen();
        TestEnv {
            engine,
            docker_host: engine.host(),
            registry: var("PUBLISHD_TEST_REGISTRY"),
            auth_registry: var("PUBLISHD_TEST_AUTH_REGISTRY"),
            auth_user: var("PUBLISHD_TEST_AUTH_USER"),
            auth_password: var("PUBLISHD_TEST_AUTH_PASSWORD"),
            token_registry: var("PUBLISHD_TEST_TOKEN_REGISTRY"),
            token_server_log: var("PUBLISHD_TEST_TOKEN_SERVER_LOG").into(),
            tls_registry: var("PUBLISHD_TEST_TLS_REGISTRY"),
            certs_dir: var("PUBLISHD_TEST_CERTS_DIR").into(),
            insecure_registry: var("PUBLISHD_TEST_INSECURE_REGISTRY"),
            podman: std::env::var("PUBLISHD_TEST_PODMAN_HOST").map_err(|_| {
                std::env::var("PUBLISHD_TEST_PODMAN_UNAVAILABLE").unwrap_or_else(|_| {
                    panic!("neither PUBLISHD_TEST_PODMAN_HOST nor _UNAVAILABLE is set")
                })
            }),
        }
    }
}

fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Logs only when asked for: `TEST_LOG=1 cargo test`.
        if std::env::var_os("TEST_LOG").is_some() {
            tracing_subscriber::fmt()
                .with_env_filter("info")
                .with_test_writer()
                .init();
        }
    });
}

/// A job that publishes `source` as the image `app` under custom `tags`.
pub fn app_job(repo: &str, source: &str, tags: &[&str]) -> Value {
    let tags: Vec<Value> = tags
        .iter()
        .map(|tag| serde_json::json!({"strategy": "custom", "value": tag}))
        .collect();
    serde_json::json!({"repo": repo, "images": [{"name": "app", "source": source}], "tags": tags})
}

/// A unique, valid repository path component for one test.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

/// The tag method test instances use: `auto` unless the test script runs a
/// group again with `PUBLISHD_TEST_TAG_METHOD=build` (or `load`).
pub fn test_tag_method() -> TagMethod {
    std::env::var("PUBLISHD_TEST_TAG_METHOD")
        .ok()
        .map(|value| {
            TagMethod::parse(&value).expect("PUBLISHD_TEST_TAG_METHOD is auto, load or build")
        })
        .unwrap_or_default()
}

/// The tag method the test engine ends up using: `auto` is `load` on the
/// classic image store and `build` on the containerd store.
pub fn effective_tag_method() -> TagMethod {
    let store = if TestEngineKind::chosen().containerd_store() {
        publishd::engine::ImageStore::Containerd
    } else {
        publishd::engine::ImageStore::Classic
    };
    test_tag_method().on(store)
}

/// The store the tests run on: SQLite, unless the test script runs a group
/// again with `PUBLISHD_TEST_STORE=postgres`.
pub fn postgres_store() -> bool {
    match std::env::var("PUBLISHD_TEST_STORE").as_deref() {
        Ok("postgres") => true,
        Ok("sqlite") | Err(_) => false,
        Ok(other) => panic!("PUBLISHD_TEST_STORE is sqlite or postgres, not {other:?}"),
    }
}

/// The database of the instances that run on `dir`: a SQLite file in it,
/// or on PostgreSQL a database made for `dir` the first time (its URL kept
/// in `dir/postgres-url`, so that a restart on `dir` finds its jobs).
pub fn test_database(dir: &std::path::Path) -> Location {
    if !postgres_store() {
        return Location::Sqlite(dir.join("publishd.db"));
    }
    let kept = dir.join("postgres-url");
    if let Ok(url) = std::fs::read_to_string(&kept) {
        return Location::Postgres(url);
    }
    let url = new_postgres_database();
    std::fs::write(&kept, &url).expect("keeping the database's URL");
    Location::Postgres(url)
}

/// The store of the instances that run on `dir`, opened the way a tool
/// that only reads and writes records opens it.
pub async fn open_store(dir: &std::path::Path) -> publishd::store::Store {
    let instance = publishd::store::Instance::unbound();
    publishd::store::Store::open(&test_database(dir), instance)
        .await
        .expect("opening the store")
}

/// The number `sql` (a `SELECT count(*) …`) counts in the database of the
/// instances on `dir`, read beside them.
pub async fn count_rows(dir: &std::path::Path, sql: &str) -> i64 {
    use sqlx::Connection;
    match test_database(dir) {
        Location::Sqlite(path) => {
            let options = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(path)
                .read_only(true);
            let mut connection = sqlx::ConnectOptions::connect(&options).await.unwrap();
            sqlx::query_scalar(sql)
                .fetch_one(&mut connection)
                .await
                .unwrap()
        }
        Location::Postgres(url) => {
            let mut connection = sqlx::PgConnection::connect(&url).await.unwrap();
            sqlx::query_scalar(sql)
                .fetch_one(&mut connection)
                .await
                .unwrap()
        }
    }
}

/// A new, empty database on the test PostgreSQL; answers its URL.
pub fn new_postgres_database() -> String {
    let admin = std::env::var("PUBLISHD_TEST_POSTGRES_URL")
        .expect("PUBLISHD_TEST_POSTGRES_URL is not set: run the tests through scripts/test.sh");
    let name = format!("t_{}", uuid::Uuid::now_v7().simple());
    let made = std::process::Command::new("psql")
        .args([&admin, "-q", "-v", "ON_ERROR_STOP=1", "-c"])
        .arg(format!("CREATE DATABASE {name}"))
        .output()
        .expect("psql runs");
    assert!(
        made.status.success(),
        "creating a test database: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let (base, _) = admin
        .rsplit_once('/')
        .expect("the admin URL names a database");
    format!("{base}/{name}")
}

/// Callbacks to this test's own receivers, on loopback: only where
/// `--allow-callback` names them.
pub fn loopback_callbacks() -> CallbackPolicy {
    CallbackPolicy::new(&["127.0.0.1".to_owned()]).expect("an address")
}

/// Settings for a test instance: port 0, its own database and docker config.
pub fn test_settings(dir: &std::path::Path) -> Settings {
    Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        database: test_database(dir),
        session_limits: publishd::store::SessionLimits::default(),
        workers: 2,
        docker_host: Some(TestEnv::get().docker_host),
        allow_plain_engine: false,
        engine_name: None,
        docker_config: dir.join("docker-config"),
        docker_certs_dir: TestEnv::get().certs_dir,
        tag_method: test_tag_method(),
        publish_via: PublishVia::Auto,
        credential_helper_timeout: Duration::from_secs(10),
        timeouts: StepTimeouts {
            tag: Duration::from_secs(60),
            push: Duration::from_secs(120),
            untag: Duration::from_secs(60),
        },
        shutdown_grace: Duration::from_secs(30),
        limits: Limits::default(),
        max_queued_targets: 10_000,
        max_target_runs: 5,
        credential_wait: Duration::from_secs(600),
        lease: publishd::config::DEFAULT_LEASE,
        max_connections: 1024,
        max_streams_per_token: 32,
        stream_max_age: Duration::from_secs(600),
        header_read_timeout: Duration::from_secs(10),
        // Quick retries keep fault tests short; the policy's shape is the real one.
        retry: RetryPolicy {
            attempts: 5,
            initial_backoff: Duration::from_millis(100),
            multiplier: 2.0,
            max_backoff: Duration::from_secs(1),
            outage_limit: Duration::from_secs(60),
            // The count decides in tests: a retry budget of time would make
            // a failing test slow, not different.
            max_elapsed: Duration::ZERO,
        },
        tokens: TokenSources::default(),
        allow_registry: Patterns::any(),
        allow_token_realm: TokenRealms::new(&[]).expect("the known realms"),
        allow_callback: CallbackPolicy::default(),
        allow_unauthenticated: false,
        metrics_token: None,
        public_url: None,
        allow_origins: Vec::new(),
        webhook_secret: None,
        webhook_max_age: Duration::from_secs(24 * 3600),
        // Quick webhook retries, like the step retries above.
        webhook_first_retry: Duration::from_millis(100),
        retention: None,
    }
}

/// The real service, running in this process on its own port and database.
pub struct TestApp {
    pub address: SocketAddr,
    pub client: reqwest::Client,
    pub dir: PathBuf,
    stop: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
    _tempdir: Option<tempfile::TempDir>,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
        let tempdir = tempfile::tempdir().expect("temp dir");
        let dir = tempdir.path().to_owned();
        let mut app = Self::spawn_in(&dir, configure).await;
        app._tempdir = Some(tempdir);
        app
    }

    /// Starts an instance on the database in `dir` (which outlives it).
    pub async fn spawn_in(dir: &std::path::Path, configure: impl FnOnce(&mut Settings)) -> TestApp {
        let mut settings = test_settings(dir);
        configure(&mut settings);
        let app = Application::build(settings)
            .await
            .expect("application builds");
        Self::run(app, dir).await
    }

    /// Starts an instance on `engine`, a wrapper that injects faults.
    pub async fn spawn_on_engine(engine: Arc<dyn Engine>) -> TestApp {
        Self::spawn_on_engine_with(engine, |_| {}).await
    }

    pub async fn spawn_on_engine_with(
        engine: Arc<dyn Engine>,
        configure: impl FnOnce(&mut Settings),
    ) -> TestApp {
        let tempdir = tempfile::tempdir().expect("temp dir");
        let mut settings = test_settings(tempdir.path());
        configure(&mut settings);
        let app = Application::build_with_engine(settings, engine)
            .await
            .expect("application builds");
        let mut app = Self::run(app, tempdir.path()).await;
        app._tempdir = Some(tempdir);
        app
    }

    async fn run(app: Application, dir: &std::path::Path) -> TestApp {
        init_logs();
        let address = app.local_addr();
        let stop = CancellationToken::new();
        let handle = tokio::spawn(app.run_until(stop.clone().cancelled_owned()));
        TestApp {
            address,
            client: reqwest::Client::new(),
            dir: dir.to_owned(),
            stop,
            handle,
            _tempdir: None,
        }
    }

    /// Stops the instance the way SIGTERM does and waits for it.
    pub async fn stop(self) -> Option<tempfile::TempDir> {
        self.stop.cancel();
        self.handle
            .await
            .expect("app task")
            .expect("app ran cleanly");
        self._tempdir
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Writes the docker config.json this instance reads credentials from.
    pub fn write_docker_config(&self, config: &Value) {
        let dir = self.dir.join("docker-config");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), serde_json::to_vec(config).unwrap()).unwrap();
    }

    /// Requests as the caller with `token`.
    pub fn with_token(&self, token: &str) -> Caller {
        Caller {
            token: Some(token.to_owned()),
            ..self.anonymous()
        }
    }

    fn anonymous(&self) -> Caller {
        Caller {
            base: self.url(""),
            client: self.client.clone(),
            token: None,
        }
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.anonymous().get(path).await
    }

    pub async fn post_job(&self, body: &Value) -> reqwest::Response {
        self.anonymous().post_job(body).await
    }

    /// Submits a job that must be accepted; answers its id.
    pub async fn submit(&self, body: &Value) -> String {
        self.anonymous().submit(body).await
    }

    /// Submits a job and waits for it to end.
    pub async fn run_job(&self, body: &Value) -> Value {
        let id = self.submit(body).await;
        self.wait_finished(&id).await
    }

    /// Asks for the job to be cancelled; answers the service's response.
    pub async fn cancel(&self, id: &str) -> reqwest::Response {
        self.anonymous().cancel(id).await
    }

    pub async fn job(&self, id: &str) -> Value {
        self.anonymous().job(id).await
    }

    /// The job's stored history, as `Accept: application/json` answers it.
    pub async fn history(&self, id: &str) -> Vec<Value> {
        self.anonymous().history(id).await
    }

    /// Waits until the job is succeeded, failed or cancelled.
    pub async fn wait_finished(&self, id: &str) -> Value {
        self.anonymous().wait_finished(id).await
    }

    pub async fn wait_for(
        &self,
        id: &str,
        limit: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        self.anonymous().wait_for(id, limit, done).await
    }
}

/// Requests to a service (at `base`, `http://HOST:PORT`) as one caller: with
/// a bearer token, or without.
#[derive(Clone)]
pub struct Caller {
    base: String,
    client: reqwest::Client,
    token: Option<String>,
}

impl Caller {
    /// A caller of the service at `base` with `token`.
    pub fn new(base: &str, token: &str) -> Caller {
        Caller {
            base: base.to_owned(),
            client: reqwest::Client::new(),
            token: Some(token.to_owned()),
        }
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.client.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.request(reqwest::Method::GET, path)
            .send()
            .await
            .expect("GET")
    }

    pub async fn post_job(&self, body: &Value) -> reqwest::Response {
        self.request(reqwest::Method::POST, "/api/v1/jobs")
            .json(body)
            .send()
            .await
            .expect("POST job")
    }

    /// Submits a job that must be accepted; answers its id.
    pub async fn submit(&self, body: &Value) -> String {
        let response = self.post_job(body).await;
        let status = response.status();
        let text = response.text().await.unwrap();
        assert_eq!(status, 202, "job not accepted: {text}");
        let job: Value = serde_json::from_str(&text).unwrap();
        job["id"].as_str().unwrap().to_owned()
    }

    /// Asks for the job to be cancelled; answers the service's response.
    pub async fn cancel(&self, id: &str) -> reqwest::Response {
        self.request(reqwest::Method::POST, &format!("/api/v1/jobs/{id}/cancel"))
            .send()
            .await
            .unwrap()
    }

    pub async fn job(&self, id: &str) -> Value {
        let response = self.get(&format!("/api/v1/jobs/{id}")).await;
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// The job's stored history, as `Accept: application/json` answers it.
    pub async fn history(&self, id: &str) -> Vec<Value> {
        let response = self
            .request(reqwest::Method::GET, &format!("/api/v1/jobs/{id}/events"))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        body["events"].as_array().expect("events").clone()
    }

    /// Waits until the job is succeeded, failed or cancelled.
    pub async fn wait_finished(&self, id: &str) -> Value {
        self.wait_for(id, Duration::from_secs(120), |job| {
            matches!(
                job["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            )
        })
        .await
    }

    pub async fn wait_for(
        &self,
        id: &str,
        limit: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        loop {
            let job = self.job(id).await;
            if done(&job) {
                return job;
            }
            assert!(
                start.elapsed() < limit,
                "job {id} not done after {limit:?}: {job:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A TCP port that accepts connections and never answers: a registry that
/// hangs, so a push stays in flight for as long as a test needs.
pub struct HangingRegistry {
    pub address: SocketAddr,
    task: JoinHandle<()>,
}

impl HangingRegistry {
    pub async fn start() -> HangingRegistry {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        HangingRegistry { address, task }
    }
}

impl Drop for HangingRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}
