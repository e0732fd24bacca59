//! The store's behaviour, run against both databases: SQLite always,
//! PostgreSQL when `PUBLISHD_TEST_POSTGRES_URL` names a server (each test
//! on a fresh database of its own; without one the PostgreSQL variants are
//! skipped, or fail if `PUBLISHD_TEST_REQUIRE_POSTGRES` is set). Then the
//! PostgreSQL store's own promise: several instances on one database.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::Connection;
use uuid::Uuid;

use super::*;
use crate::domain::naming::reference_key;
use crate::domain::publish_via::{Descriptor, PublishedVia, Seed, SeedKey};
use crate::domain::source::ResolvedSource;
use crate::domain::spec::{JobSpec, Limits, plan};

const LEASE: Duration = Duration::from_secs(30);

/// A database for one test.
pub(super) enum Db {
    Sqlite(tempfile::TempDir),
    Postgres(PgDb),
}

/// A PostgreSQL database made for one test, dropped after it.
pub(super) struct PgDb {
    admin: String,
    name: String,
    url: String,
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Drop runs inside the test's runtime: the drop gets its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

impl Db {
    pub(super) fn sqlite() -> Db {
        Db::Sqlite(tempfile::tempdir().unwrap())
    }

    /// A fresh PostgreSQL database, or `None` (the test is skipped) when
    /// no server is configured.
    pub(super) async fn postgres() -> Option<Db> {
        let Ok(admin) = std::env::var("PUBLISHD_TEST_POSTGRES_URL") else {
            if std::env::var_os("PUBLISHD_TEST_REQUIRE_POSTGRES").is_some() {
                panic!(
                    "PUBLISHD_TEST_REQUIRE_POSTGRES is set but PUBLISHD_TEST_POSTGRES_URL is not: \
                     the PostgreSQL store cannot be tested (run scripts/test-env.sh)"
                );
            }
            eprintln!("PUBLISHD_TEST_POSTGRES_URL is not set: skipping the PostgreSQL variant");
            return None;
        };
        let name = format!("test_{}", Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|error| panic!("connecting to PUBLISHD_TEST_POSTGRES_URL: {error}"));
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        let mut url = url::Url::parse(&admin).unwrap();
        url.set_path(&format!("/{name}"));
        Some(Db::Postgres(PgDb {
            admin,
            name,
            url: url.to_string(),
        }))
    }

    pub(super) fn location(&self) -> Location {
        match self {
            Db::Sqlite(dir) => Location::Sqlite(dir.path().join("publishd.db")),
            Db::Postgres(db) => Location::Postgres(db.url.clone()),
        }
    }

    pub(super) async fn open(&self) -> Store {
        self.open_as(Instance::unbound()).await
    }

    async fn open_as(&self, instance: Instance) -> Store {
        Store::open(&self.location(), instance).await.unwrap()
    }

    /// An instance on `engine`.
    async fn open_on(&self, engine: &str) -> Store {
        self.open_as(Instance {
            id: Uuid::now_v7(),
            engine: Some(engine.to_owned()),
            address: format!("test-{engine}"),
        })
        .await
    }

    /// Sets a job's cancel flag and its two targets' statuses behind the
    /// store's back (one statement each, as the store writes them) and
    /// answers the status the triggers gave the job.
    pub(super) async fn raw_status(
        &self,
        job: Uuid,
        statuses: [TargetStatus; 2],
        cancel: bool,
    ) -> String {
        async fn run<D>(pool: sqlx::Pool<D>, statements: Vec<(&str, String)>, job: Uuid) -> String
        where
            D: sqlx::Database,
            for<'c> &'c sqlx::Pool<D>: sqlx::Executor<'c, Database = D>,
            for<'q> D::Arguments<'q>: sqlx::IntoArguments<'q, D>,
            for<'q> String: sqlx::Encode<'q, D> + sqlx::Decode<'q, D> + sqlx::Type<D>,
            usize: sqlx::ColumnIndex<D::Row>,
        {
            for (sql, value) in statements {
                sqlx::query(sql)
                    .bind(value)
                    .bind(job.to_string())
                    .execute(&pool)
                    .await
                    .unwrap();
            }
            sqlx::query_scalar("SELECT status FROM jobs WHERE id = $1")
                .bind(job.to_string())
                .fetch_one(&pool)
                .await
                .unwrap()
        }
        // The flag as the store writes it, bound as text: `TRUE`/`FALSE`
        // in SQL takes no type from the two databases' booleans.
        let flag = if cancel { "TRUE" } else { "FALSE" };
        let statements = vec![
            (
                "UPDATE jobs SET cancel_requested = ($1 = 'TRUE') WHERE id = $2",
                flag.to_owned(),
            ),
            (
                "UPDATE targets SET status = $1 WHERE job_id = $2 AND position = 0",
                statuses[0].as_str().to_owned(),
            ),
            (
                "UPDATE targets SET status = $1 WHERE job_id = $2 AND position = 1",
                statuses[1].as_str().to_owned(),
            ),
        ];
        match self {
            Db::Sqlite(dir) => {
                let path = dir.path().join("publishd.db");
                let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
                    .await
                    .unwrap();
                run(pool, statements, job).await
            }
            Db::Postgres(_) => run(self.raw_postgres().await, statements, job).await,
        }
    }

    /// A connection pool of the test's own, for what the store does not say.
    pub(super) async fn raw_postgres(&self) -> sqlx::PgPool {
        match self {
            Db::Postgres(db) => sqlx::PgPool::connect(&db.url).await.unwrap(),
            Db::Sqlite(_) => unreachable!("PostgreSQL only"),
        }
    }
}

/// Each test as a function of its database, run once per store.
macro_rules! both_stores {
    ($(async fn $name:ident($db:ident: Db) $body:block)*) => {$(
        mod $name {
            use super::*;

            async fn run($db: Db) $body

            #[tokio::test]
            async fn sqlite() {
                run(Db::sqlite()).await
            }

            #[tokio::test]
            async fn postgres() {
                if let Some(db) = Db::postgres().await {
                    run(db).await
                }
            }
        }
    )*};
}

/// Tests of several instances on one database: PostgreSQL only.
macro_rules! postgres_only {
    ($(async fn $name:ident($db:ident: Db) $body:block)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            async fn run($db: Db) $body
            if let Some(db) = Db::postgres().await {
                run(db).await
            }
        }
    )*};
}

pub(super) fn new_job(spec: serde_json::Value) -> NewJob {
    let spec: JobSpec = serde_json::from_value(spec).unwrap();
    NewJob {
        id: Uuid::now_v7(),
        plan: plan(&spec, Limits::default()).unwrap(),
        max_pending: 1000,
        has_registry_auth: false,
        idempotency_key: None,
        spec_hash: "h".to_owned(),
        submitter: Submitter::anonymous(),
        engine: None,
    }
}

/// A job of one image and the given custom tags.
fn job_of(repo: &str, tags: &[&str]) -> NewJob {
    let tags: Vec<_> = tags
        .iter()
        .map(|tag| serde_json::json!({"strategy": "custom", "value": tag}))
        .collect();
    new_job(serde_json::json!({
        "repo": repo, "images": [{"name": "app", "source": "src:1"}], "tags": tags
    }))
}

async fn queued(store: &Store, new: NewJob) -> Job {
    match store.create_job(new).await.unwrap() {
        Created::New(job) => job,
        _ => panic!("the job was not queued"),
    }
}

async fn store_with_a_job(db: &Db) -> Store {
    let store = db.open().await;
    queued(&store, job_of("127.0.0.1:5000/a", &["v1", "v2"])).await;
    store
}

fn succeeded() -> TargetOutcome {
    TargetOutcome::Succeeded {
        digest: "sha256:aa".to_owned(),
        image_id: Some("sha256:cc".to_owned()),
        up_to_date: true,
        published_via: Some(PublishedVia::Engine),
    }
}

both_stores! {
    async fn a_job_past_the_queue_limit_is_refused_whole(db: Db) {
        let store = store_with_a_job(&db).await;
        let new = |max_pending| NewJob {
            max_pending,
            spec_hash: "h2".to_owned(),
            ..job_of("127.0.0.1:5000/a", &["v3"])
        };
        let refused = store.create_job(new(2)).await.unwrap();
        assert!(matches!(refused, Created::Overloaded { pending: 2 }));
        assert!(matches!(store.create_job(new(3)).await.unwrap(), Created::New(_)));
    }

    async fn an_idempotency_key_answers_its_job_or_says_it_was_reused(db: Db) {
        let store = db.open().await;
        let keyed = |hash: &str| NewJob {
            idempotency_key: Some("k".to_owned()),
            spec_hash: hash.to_owned(),
            ..job_of("127.0.0.1:5000/a", &["v1"])
        };
        let first = queued(&store, keyed("h")).await;
        assert!(matches!(
            store.create_job(keyed("h")).await.unwrap(),
            Created::Existing(job) if job.id == first.id
        ));
        assert!(matches!(store.create_job(keyed("other")).await.unwrap(), Created::KeyReused));
        // Another submitter's key is its own.
        let team = NewJob {
            submitter: Submitter { name: Some("team".to_owned()), ..Submitter::anonymous() },
            ..keyed("h")
        };
        assert!(matches!(store.create_job(team).await.unwrap(), Created::New(_)));
        let (created, entry) = store
            .create_audited_job(keyed("h"), Box::new(|created| AuditEntry {
                actor: None,
                action: "job.submit",
                outcome: if matches!(created, Created::Existing(_)) { "replayed" } else { "accepted" },
                job_id: None,
                detail: serde_json::json!({"status": 200}),
            }))
            .await
            .unwrap();
        assert!(matches!(created, Created::Existing(_)));
        assert_eq!(entry.outcome, "replayed");
        let audit = store.list_audit(10, None).await.unwrap();
        assert_eq!(audit.events.len(), 1);
        assert_eq!(audit.events[0].detail["status"], 200);
    }

    async fn spellings_of_one_reference_never_run_at_once(db: Db) {
        let store = db.open().await;
        // `foo:v1`, `docker.io/library/foo:v1`, `index.docker.io/library/foo:v1`.
        for repo in ["foo", "docker.io/library/foo", "index.docker.io/library/foo"] {
            queued(&store, new_job(serde_json::json!({
                "repo": repo, "images": [{"source": "src:1"}],
                "tags": [{"strategy": "custom", "value": "v1"}]
            }))).await;
        }
        let first = store.claim_target(LEASE).await.unwrap().unwrap();
        assert_eq!(first.reference.as_deref(), Some("foo:v1"));
        assert!(
            store.claim_target(LEASE).await.unwrap().is_none(),
            "another spelling of foo:v1 was claimed while it was in flight"
        );
        let outcome = TargetOutcome::Failed { error: "x".to_owned() };
        store.finish_target(&first.claim, &outcome, &[]).await.unwrap();
        let second = store.claim_target(LEASE).await.unwrap().unwrap();
        assert_eq!(second.reference.as_deref(), Some("docker.io/library/foo:v1"));
        assert!(store.claim_target(LEASE).await.unwrap().is_none());
    }

    async fn reads_are_never_older_than_the_database(db: Db) {
        let store = store_with_a_job(&db).await;
        let page = store.list_jobs(&JobFilter::default(), 10, None).await.unwrap();
        let id = page.jobs[0].id;
        let before = store.get_job(id).await.unwrap().unwrap();
        assert_eq!(before.targets[0].status, TargetStatus::Pending);
        assert_eq!(store.get_job(id).await.unwrap().unwrap().targets.len(), 2);
        store.claim_target(LEASE).await.unwrap().unwrap();
        let after = store.get_job(id).await.unwrap().unwrap();
        assert_eq!(after.status, JobStatus::Running);
        queued(&store, job_of("127.0.0.1:5000/b", &["v1"])).await;
        let page = store.list_jobs(&JobFilter::default(), 10, None).await.unwrap();
        assert_eq!(page.jobs.len(), 2);
        assert_eq!(page.jobs[1].status, JobStatus::Running);
    }

    async fn pages_filter_and_continue(db: Db) {
        let store = db.open().await;
        for repo in ["127.0.0.1:5000/alpha", "127.0.0.1:5000/beta", "127.0.0.1:5000/gamma"] {
            queued(&store, job_of(repo, &["v1"])).await;
        }
        let first = store.list_jobs(&JobFilter::default(), 2, None).await.unwrap();
        assert_eq!(first.jobs.len(), 2);
        assert!(first.jobs[0].repo.ends_with("gamma"));
        let cursor = Uuid::parse_str(first.next_cursor.as_deref().unwrap()).unwrap();
        let rest = store.list_jobs(&JobFilter::default(), 2, Some(cursor)).await.unwrap();
        assert_eq!(rest.jobs.len(), 1);
        assert!(rest.next_cursor.is_none());
        assert_eq!(rest.jobs[0].targets.len(), 1);
        assert_eq!(rest.jobs[0].images.len(), 1);
        let list = |filter: JobFilter| {
            let store = store.clone();
            async move {
                let page = store.list_jobs(&filter, 10, None).await.unwrap();
                page.jobs.iter().map(|job| job.repo.rsplit('/').next().unwrap().to_owned()).collect::<Vec<_>>()
            }
        };
        let search = |text: &str| JobFilter { search: Some(text.to_owned()), ..JobFilter::default() };
        assert_eq!(list(search("BETA")).await, ["beta"]);
        assert!(list(search("%")).await.is_empty());
        let prefix = |text: &str| JobFilter { repo_prefix: Some(text.to_owned()), ..JobFilter::default() };
        assert_eq!(list(prefix("127.0.0.1:5000/")).await, ["gamma", "beta", "alpha"]);
        assert_eq!(list(prefix("127.0.0.1:5000/b")).await, ["beta"]);
        assert_eq!(list(prefix("127.0.0.1:5000/beta")).await, ["beta"]);
        assert!(list(prefix("127.0.0.1:5000/betas")).await.is_empty());
        assert!(list(prefix("127.0.0.1:5000/B")).await.is_empty());
        let queued_of = |submitter: &str| JobFilter {
            status: Some(JobStatus::Queued),
            submitted_by: Some(submitter.to_owned()),
            ..JobFilter::default()
        };
        assert_eq!(list(queued_of("")).await.len(), 3);
        assert!(list(queued_of("someone")).await.is_empty());
        // One target of beta fails: beta has a failed target, and is
        // failed, whatever the other filters.
        let claimed = store.claim_target(LEASE).await.unwrap().unwrap();
        let outcome = TargetOutcome::Failed { error: "x".to_owned() };
        store.finish_target(&claimed.claim, &outcome, &[]).await.unwrap();
        let failed = JobFilter { has_failed_target: true, ..JobFilter::default() };
        let first_repo = claimed.repo.rsplit('/').next().unwrap().to_owned();
        assert_eq!(list(failed.clone()).await, [first_repo.as_str()]);
        let failed_job = JobFilter { status: Some(JobStatus::Failed), submitted_by: Some(String::new()), ..failed.clone() };
        assert_eq!(list(failed_job).await, [first_repo.as_str()]);
        let failed_and_queued = JobFilter { status: Some(JobStatus::Queued), ..failed };
        assert!(list(failed_and_queued).await.is_empty());
        assert_eq!(list(JobFilter { status: Some(JobStatus::Queued), ..JobFilter::default() }).await.len(), 2);
        let counts = store.queue_counts().await.unwrap();
        assert_eq!(counts.targets_queued, 2);
        assert_eq!(counts.jobs.get(&JobStatus::Queued), Some(&2));
    }

    async fn leases_expire_on_the_stores_clock_and_lost_claims_write_nothing(db: Db) {
        let store = store_with_a_job(&db).await;
        let first = store.claim_target(Duration::ZERO).await.unwrap().unwrap();
        let second = store.claim_target(LEASE).await.unwrap().unwrap();
        assert_ne!(first.id, second.id);
        assert!(store.claim_target(LEASE).await.unwrap().is_none());
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(
            store.expired_leases().await.unwrap(),
            vec![(first.id, first.claim.token.clone())]
        );
        assert!(store.renew_lease(&second.claim, LEASE).await.unwrap());

        // Recovery takes the expired claim over: the old run is fenced out.
        let recovery = store
            .take_over(first.id, TakeOver::Expired { token: &first.claim.token }, LEASE)
            .await
            .unwrap()
            .expect("expired claim taken over");
        assert!(!store.renew_lease(&first.claim, LEASE).await.unwrap());
        let stale = store.set_step(&first.claim, TargetStatus::Pushing).await.unwrap_err();
        assert!(ClaimLost::is(&stale), "{stale:#}");
        let outcome = TargetOutcome::Succeeded {
            digest: "sha256:stale".to_owned(),
            image_id: None,
            up_to_date: false,
            published_via: Some(PublishedVia::Engine),
        };
        assert!(ClaimLost::is(
            &store.finish_target(&first.claim, &outcome, &[]).await.unwrap_err()
        ));
        assert!(ClaimLost::is(
            &store.release_target(&first.claim, Release::Stopped).await.unwrap_err()
        ));
        assert!(ClaimLost::is(
            &store.record_tag_plan(&first.claim, None, None, None).await.unwrap_err()
        ));
        // A live claim is not taken over as expired.
        assert!(store
            .take_over(second.id, TakeOver::Expired { token: &second.claim.token }, LEASE)
            .await
            .unwrap()
            .is_none());

        let release = Release::Abandoned { warning: None, max_runs: 5 };
        assert_eq!(store.release_target(&recovery, release).await.unwrap(), Released::Queued);
        assert!(store.expired_leases().await.unwrap().is_empty());
        let rerun = store.claim_target(LEASE).await.unwrap().unwrap();
        assert_eq!(rerun.id, first.id);
        assert_eq!(rerun.attempts, 2);
    }

    async fn a_target_whose_runs_never_finish_becomes_a_dead_letter(db: Db) {
        let store = store_with_a_job(&db).await;
        for run in 1..=3 {
            let target = store.claim_target(LEASE).await.unwrap().unwrap();
            let recovery = store.take_over(target.id, TakeOver::Any, LEASE).await.unwrap().unwrap();
            let release = Release::Abandoned {
                warning: Some(format!("run {run} died")),
                max_runs: 3,
            };
            let released = store.release_target(&recovery, release).await.unwrap();
            if run < 3 {
                assert_eq!(released, Released::Queued);
                // The other target of the job goes first next time.
                let other = store.claim_target(LEASE).await.unwrap().unwrap();
                store.release_target(&other.claim, Release::Stopped).await.unwrap();
            } else {
                assert_eq!(released, Released::DeadLetter);
            }
        }
        let job_id = store.claimed_target(1).await.unwrap().job_id;
        let job = store.get_job(job_id).await.unwrap().unwrap();
        let dead = job.targets.iter().find(|t| t.dead_letter).expect("a dead letter");
        assert_eq!(dead.status, TargetStatus::Failed);
        assert_eq!(dead.runs, 3);
        assert!(dead.error.as_deref().unwrap().starts_with("dead letter: 3 runs"));
        assert_eq!(dead.warnings.len(), 3);
        // Stopping the service is not a run that died.
        let other = job.targets.iter().find(|t| !t.dead_letter).unwrap();
        assert_eq!(other.runs, 0);
    }

    async fn delivery_attempts_recorded_before_classes_keep_only_their_class(db: Db) {
        // The database as it was before the classes, with a delivery whose
        // attempts kept the receiver's status and error text.
        let location = db.location();
        let kind = match &location {
            Location::Sqlite(_) => "sqlite",
            Location::Postgres(_) => "postgres",
        };
        let old = tempfile::tempdir().unwrap();
        let mut files: Vec<_> = std::fs::read_dir(format!("{}/migrations/{kind}", env!("CARGO_MANIFEST_DIR")))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect();
        files.sort();
        for file in files.iter().take_while(|file| !file.to_string_lossy().contains("delivery_attempt_classes")) {
            std::fs::copy(file, old.path().join(file.file_name().unwrap())).unwrap();
        }
        let migrator = sqlx::migrate::Migrator::new(old.path()).await.unwrap();
        let attempts = r#"[{"attempt":1,"at":"2026-01-01T00:00:00.000000Z","status":500,"error":"the receiver answered HTTP 500 secret-detail"},
                           {"attempt":2,"at":"2026-01-01T00:00:01.000000Z","status":null,"error":"error sending request: connection refused"},
                           {"attempt":3,"at":"2026-01-01T00:00:02.000000Z","status":null,"error":"error sending request: operation timed out"},
                           {"attempt":4,"at":"2026-01-01T00:00:03.000000Z","status":404,"error":"the receiver answered HTTP 404"},
                           {"attempt":5,"at":"2026-01-01T00:00:04.000000Z","status":204,"error":null}]"#;
        let insert = "INSERT INTO deliveries (id, job_id, url, created_at, state, attempts)
                      VALUES ('d1', 'j1', 'http://hooks.example/x', '2026-01-01T00:00:00.000000Z', 'delivered', $1)";
        let read = "SELECT attempts FROM deliveries WHERE id = 'd1'";
        let stored: String = match &location {
            Location::Sqlite(path) => {
                let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path).create_if_missing(true);
                let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
                migrator.run(&pool).await.unwrap();
                sqlx::query(insert).bind(attempts).execute(&pool).await.unwrap();
                pool.close().await;
                let store = db.open().await;
                drop(store);
                let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path).read_only(true);
                let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
                sqlx::query_scalar(read).fetch_one(&pool).await.unwrap()
            }
            Location::Postgres(_) => {
                let pool = db.raw_postgres().await;
                migrator.run(&pool).await.unwrap();
                sqlx::query(insert).bind(attempts).execute(&pool).await.unwrap();
                let _store = db.open().await;
                sqlx::query_scalar(read).fetch_one(&pool).await.unwrap()
            }
        };
        assert!(!stored.contains("secret-detail") && !stored.contains("status"), "{stored}");
        let attempts: Vec<DeliveryAttempt> = serde_json::from_str(&stored).unwrap();
        let results: Vec<_> = attempts.iter().map(|attempt| (attempt.attempt, attempt.result)).collect();
        assert_eq!(results, [
            (1, AttemptResult::ServerError),
            (2, AttemptResult::Refused),
            (3, AttemptResult::Timeout),
            (4, AttemptResult::ClientError),
            (5, AttemptResult::Accepted),
        ]);
        assert_eq!(attempts[0].at, "2026-01-01T00:00:00.000000Z");
    }

    async fn a_jobs_history_and_webhook_are_recorded(db: Db) {
        let store = db.open().await;
        let job = queued(&store, new_job(serde_json::json!({
            "repo": "127.0.0.1:5000/a", "images": [{"name": "app", "source": "src:1"}],
            "tags": [{"strategy": "custom", "value": "v1"}],
            "callback_url": "http://hooks.example/done",
            "platforms": ["linux/arm64", "linux/arm/v7"]
        }))).await;
        assert_eq!(job.platforms, Some(vec!["linux/arm64".to_owned(), "linux/arm/v7".to_owned()]));
        let target = store.claim_target(LEASE).await.unwrap().unwrap();
        let platforms: Vec<String> = target.platforms.iter().map(ToString::to_string).collect();
        assert_eq!(platforms, ["linux/arm64", "linux/arm/v7"]);
        store.record_tag_plan(&target.claim, Some("sha256:prior"), None, Some("staging:1")).await.unwrap();
        store.record_created_image(&target.claim, "sha256:made").await.unwrap();
        store.record_failed_attempt(&target.claim, "push", "refused", true).await.unwrap();
        store.set_step(&target.claim, TargetStatus::Pushing).await.unwrap();
        let warnings = ["w1".to_owned()];
        assert_eq!(
            store.finish_target(&target.claim, &succeeded(), &warnings).await.unwrap(),
            JobStatus::Succeeded
        );
        let events = store.job_events(job.id, 0, 100).await.unwrap();
        let kinds: Vec<&str> = events.iter().map(|event| event.kind.as_str()).collect();
        assert_eq!(kinds, ["job", "target", "target", "job", "attempt", "target", "target", "job"]);
        assert!(events.windows(2).all(|pair| pair[0].id < pair[1].id));
        assert_eq!(events[0].data, serde_json::json!({"status": "queued"}));
        assert_eq!(events[1].target, Some(0));
        assert_eq!(events[1].data["status"], "pending");
        assert_eq!(events[1].data["up_to_date"], false);
        assert_eq!(events[1].data["reference"], "127.0.0.1:5000/a/app:v1");
        assert_eq!(events[4].data["attempt"], 1);
        assert_eq!(events[4].data["step"], "push");
        assert_eq!(events[4].data["error"], "refused");
        assert_eq!(events[6].data["up_to_date"], true);
        assert_eq!(events[6].data["attempts"], 2);
        assert_eq!(events[6].data["digest"], "sha256:aa");
        assert!(events[7].ends_job());
        assert!(events[7].data["error"].is_null());
        assert_eq!(store.last_event_of(job.id).await.unwrap(), Some(events[7].id));
        let later = store.job_events(job.id, events[5].id, 100).await.unwrap();
        assert_eq!(later.len(), 2);

        let done = store.get_job(job.id).await.unwrap().unwrap();
        assert_eq!(done.targets[0].warnings, ["w1"]);
        assert_eq!(done.targets[0].digest.as_deref(), Some("sha256:aa"));
        assert_eq!(done.targets[0].image_id.as_deref(), Some("sha256:cc"));
        assert_eq!(done.platforms, job.platforms);
        assert_eq!(done.targets[0].attempt_errors.len(), 1);
        assert!(done.finished_at.is_some() && done.started_at.is_some());
        assert_eq!(done.deliveries.len(), 1);

        let due = store.due_deliveries(10, 10, &[]).await.unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].job_id, job.id);
        assert_eq!(due[0].attempts, 0);
        store.set_delivery_body(&due[0].id, "{\"a\":1}").await.unwrap();
        store.set_delivery_body(&due[0].id, "{\"b\":2}").await.unwrap();
        let attempt = DeliveryAttempt {
            attempt: 1,
            at: format_time(time::OffsetDateTime::now_utc()),
            result: AttemptResult::Accepted,
        };
        store.record_delivery_attempt(&due[0].id, &attempt, &DeliveryOutcome::Delivered).await.unwrap();
        assert!(store.due_deliveries(10, 10, &[]).await.unwrap().is_empty());
        let delivered = store.get_job(job.id).await.unwrap().unwrap();
        assert_eq!(delivered.deliveries[0].state, "delivered");
        assert_eq!(delivered.deliveries[0].attempts.len(), 1);
        assert_eq!(delivered.deliveries[0].attempts[0].result, AttemptResult::Accepted);

        // Past retention, the job goes with everything of its own.
        let future = format_time(time::OffsetDateTime::now_utc() + Duration::from_secs(60));
        let deleted = store.delete_finished_before(&future, &future, 10).await.unwrap();
        assert_eq!((deleted.jobs, deleted.more), (1, false));
        assert!(store.get_job(job.id).await.unwrap().is_none());
        assert!(store.job_events(job.id, 0, 100).await.unwrap().is_empty());
    }

    async fn a_cancel_stops_what_has_not_started(db: Db) {
        let store = store_with_a_job(&db).await;
        let running = store.claim_target(LEASE).await.unwrap().unwrap();
        let Cancelled::Requested(job) = store.cancel_job(running.job_id).await.unwrap() else {
            panic!("the cancel was not requested");
        };
        assert!(job.cancel_requested);
        assert_eq!(job.targets[1].status, TargetStatus::Cancelled);
        assert!(store.cancel_requested(job.id).await.unwrap());
        assert_eq!(
            store.release_target(&running.claim, Release::Stopped).await.unwrap(),
            Released::Cancelled
        );
        let job = store.get_job(job.id).await.unwrap().unwrap();
        assert_eq!(job.status, JobStatus::Cancelled);
        assert!(matches!(store.cancel_job(job.id).await.unwrap(), Cancelled::AlreadyFinished(_)));
        assert!(matches!(store.cancel_job(Uuid::now_v7()).await.unwrap(), Cancelled::NotFound));
        let events = store.job_events(job.id, 0, 100).await.unwrap();
        assert!(events.iter().any(|event| event.kind == "cancel"
            && event.data == serde_json::json!({"cancel_requested": true})));
    }

    async fn a_content_target_binds_its_reference_or_waits_for_it(db: Db) {
        let store = db.open().await;
        let content = || new_job(serde_json::json!({
            "repo": "127.0.0.1:5000/a", "images": [{"name": "app", "source": "src:1"}],
            "tags": [{"strategy": "content"}]
        }));
        let first = queued(&store, content()).await;
        let second = queued(&store, content()).await;
        let a = store.claim_target(LEASE).await.unwrap().unwrap();
        let b = store.claim_target(LEASE).await.unwrap().unwrap();
        assert_eq!((a.job_id, b.job_id), (first.id, second.id));
        assert!(a.reference.is_none());
        let resolved = ResolvedSource { image_id: "sha256:one".to_owned(), manifest_digest: None };
        let other = ResolvedSource { image_id: "sha256:two".to_owned(), manifest_digest: None };
        assert_eq!(store.resolve_source(first.id, 0, &resolved).await.unwrap().image_id, "sha256:one");
        assert_eq!(store.resolve_source(first.id, 0, &other).await.unwrap().image_id, "sha256:one");
        let reference = "127.0.0.1:5000/a/app:c1";
        assert_eq!(store.bind_reference(&a.claim, "c1", reference).await.unwrap(), Bound::Bound);
        assert_eq!(store.bind_reference(&b.claim, "c1", reference).await.unwrap(), Bound::Busy);
        let waiting = store.get_job(second.id).await.unwrap().unwrap();
        assert_eq!(waiting.targets[0].status, TargetStatus::Pending);
        assert_eq!(waiting.targets[0].attempts, 0);
        assert_eq!(waiting.targets[0].reference.as_deref(), Some(reference));
        assert!(store.claim_target(LEASE).await.unwrap().is_none());
        store.finish_target(&a.claim, &succeeded(), &[]).await.unwrap();
        let again = store.claim_target(LEASE).await.unwrap().unwrap();
        assert_eq!(again.job_id, second.id);
        assert_eq!(again.attempts, 1);
        let claimed = store.claimed_target(a.id).await.unwrap();
        assert_eq!(claimed.source_image_id.as_deref(), Some("sha256:one"));
    }

    async fn a_target_waits_for_its_jobs_credentials(db: Db) {
        let store = store_with_a_job(&db).await;
        let target = store.claim_target(LEASE).await.unwrap().unwrap();
        let later = format_time(time::OffsetDateTime::now_utc() + Duration::from_secs(3600));
        store.wait_for_credentials(&target.claim, &later, &later).await.unwrap();
        let other = store.claim_target(LEASE).await.unwrap().unwrap();
        assert_ne!(other.id, target.id);
        assert!(store.claim_target(LEASE).await.unwrap().is_none());
        store.credentials_arrived(target.job_id).await.unwrap();
        let again = store.claim_target(LEASE).await.unwrap().unwrap();
        assert_eq!(again.id, target.id);
        assert_eq!(again.attempts, 1);
        assert_eq!(again.credentials_wait_until, None);
    }

    async fn a_target_waits_for_a_seed_until_woken(db: Db) {
        let store = store_with_a_job(&db).await;
        let target = store.claim_target(LEASE).await.unwrap().unwrap();
        let later = format_time(time::OffsetDateTime::now_utc() + Duration::from_secs(3600));
        store.wait_for_seed(&target.claim, &later).await.unwrap();
        let other = store.claim_target(LEASE).await.unwrap().unwrap();
        assert_ne!(other.id, target.id);
        assert!(store.claim_target(LEASE).await.unwrap().is_none());
        // Waking a target in flight changes nothing of it.
        store.wake_targets(&[target.id, other.id]).await.unwrap();
        let again = store.claim_target(LEASE).await.unwrap().unwrap();
        assert_eq!(again.id, target.id);
        assert_eq!(again.attempts, 1, "the wait was not a try");
        assert_eq!(again.credentials_wait_until, None);
        assert!(store.renew_lease(&other.claim, LEASE).await.unwrap());
    }

    // On a shared database an instance claims only jobs on its engine (or
    // on none); alone with its file, publishd claims every job, whatever
    // its engine's name, so that a renamed engine strands nothing.
    async fn an_instance_claims_only_jobs_on_its_engine(db: Db) {
        let shared = matches!(db, Db::Postgres(_));
        let store = db.open_on("b").await;
        let on = |engine: Option<&str>, repo: &str| NewJob {
            engine: engine.map(str::to_owned),
            ..job_of(repo, &["v1"])
        };
        let elsewhere = queued(&store, on(Some("a"), "127.0.0.1:5000/a")).await;
        if shared {
            assert!(store.claim_target(LEASE).await.unwrap().is_none());
        }
        let anywhere = queued(&store, on(None, "127.0.0.1:5000/n")).await;
        let mine = queued(&store, on(Some("b"), "127.0.0.1:5000/b")).await;
        let mut claimed = Vec::new();
        while let Some(target) = store.claim_target(LEASE).await.unwrap() {
            claimed.push(target.job_id);
        }
        claimed.sort();
        let mut expected = vec![anywhere.id, mine.id];
        if !shared {
            expected.push(elsewhere.id);
        }
        expected.sort();
        assert_eq!(claimed, expected);
        let engines = store.engines().await.unwrap();
        let a = engines.iter().find(|e| e.name.as_deref() == Some("a")).unwrap();
        let a_queued = if shared { 1 } else { 0 };
        assert_eq!(a.instances.len(), 0);
        assert_eq!(a.queued_targets, a_queued);
        let b = engines.iter().find(|e| e.name.as_deref() == Some("b")).unwrap();
        assert_eq!((b.queued_targets, b.in_flight_targets, b.instances.len()), (0, 1, 1));
        assert!(b.instances[0].live);
        if shared {
            store.leave().await.unwrap();
            let engines = store.engines().await.unwrap();
            assert!(engines.iter().all(|engine| engine.instances.is_empty()));
        }
    }

    async fn seeds_audit_and_liveness_are_kept(db: Db) {
        let store = db.open().await;
        store.ping().await.unwrap();
        store.heartbeat().await.unwrap();
        let key = |engine: &str| SeedKey {
            source_image_id: "sha256:s".to_owned(),
            registry: "r.example".to_owned(),
            engine: engine.to_owned(),
        };
        let (docker20, docker26) = (key("docker 20.10.24 classic load"), key("docker 26.1.5 containerd build"));
        assert!(store.seed(&docker20).await.unwrap().is_none());
        let seed = |repository: &str| Seed {
            manifest: "{\n   \"schemaVersion\": 2\n}".to_owned(),
            media_type: "application/vnd.oci.image.manifest.v1+json".to_owned(),
            config: "{\"config\":{}}".to_owned(),
            layers: vec![Descriptor {
                media_type: "application/vnd.oci.image.layer.v1.tar+gzip".to_owned(),
                size: 3,
                digest: "sha256:l1".to_owned(),
            }],
            repository: repository.to_owned(),
        };
        store.record_seed(&docker20, &seed("one")).await.unwrap();
        store.record_seed(&docker20, &seed("two")).await.unwrap();
        let kept = store.seed(&docker20).await.unwrap().unwrap();
        assert_eq!(kept, seed("two"), "the last one, byte for byte");
        // Another engine format is another seed.
        assert!(store.seed(&docker26).await.unwrap().is_none());
        for outcome in ["reloaded", "failed", "reloaded"] {
            store
                .record_audit(AuditEntry {
                    actor: Some("ops".to_owned()),
                    action: "tokens.reload",
                    outcome,
                    job_id: None,
                    detail: serde_json::json!({}),
                })
                .await
                .unwrap();
        }
        let page = store.list_audit(2, None).await.unwrap();
        assert_eq!(page.events.len(), 2);
        let cursor = Uuid::parse_str(page.next_cursor.as_deref().unwrap()).unwrap();
        let rest = store.list_audit(2, Some(cursor)).await.unwrap();
        assert_eq!(rest.events.len(), 1);
        assert!(rest.next_cursor.is_none());
        let future = format_time(time::OffsetDateTime::now_utc() + Duration::from_secs(60));
        let deleted = store.delete_finished_before(&future, &future, 10).await.unwrap();
        assert_eq!((deleted.jobs, deleted.audit, deleted.seeds), (0, 3, 1));
    }

    async fn due_deliveries_take_turns_by_submitter_within_a_share(db: Db) {
        let store = db.open().await;
        // Five jobs of one submitter end, then one of another: five and
        // one deliveries due, the other's last.
        let mut jobs = HashMap::new();
        for (index, submitter) in ["hog", "hog", "hog", "hog", "hog", "other"].into_iter().enumerate() {
            let mut new = new_job(serde_json::json!({
                "repo": format!("127.0.0.1:5000/f{index}"), "images": [{"source": "src:1"}],
                "tags": [{"strategy": "custom", "value": "v1"}],
                "callback_url": "http://hooks.example/done"
            }));
            new.submitter.name = Some(submitter.to_owned());
            let job = queued(&store, new).await;
            let target = store.claim_target(LEASE).await.unwrap().unwrap();
            store.finish_target(&target.claim, &succeeded(), &[]).await.unwrap();
            jobs.insert(job.id, format!("{submitter}{}", jobs.len()));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let names = |due: &[DueDelivery]| -> Vec<String> {
            due.iter().map(|delivery| jobs[&delivery.job_id].clone()).collect()
        };
        let under_way = |due: &[DueDelivery]| -> Vec<UnderWay> {
            due.iter().map(|delivery| UnderWay { id: delivery.id.clone(), submitter: delivery.submitter.clone() }).collect()
        };
        // Each submitter's first, before anyone's second.
        let first = store.due_deliveries(2, 3, &[]).await.unwrap();
        assert_eq!(names(&first), ["hog0", "other5"]);
        assert_eq!(first[1].submitter, "other");
        // With those under way, the hog has two more of its three.
        let sending = under_way(&first);
        let second = store.due_deliveries(10, 3, &sending).await.unwrap();
        assert_eq!(names(&second), ["hog1", "hog2"]);
        let mut sending = sending;
        sending.extend(under_way(&second));
        assert!(store.due_deliveries(10, 3, &sending).await.unwrap().is_empty());
    }
}

/// Twenty targets of ten jobs, four repositories and two tags (eight
/// references), for instances on engine `e`.
async fn twenty_targets(store: &Store) {
    for i in 0..10 {
        let new = NewJob {
            engine: Some("e".to_owned()),
            ..job_of(&format!("127.0.0.1:5000/r{}", i % 4), &["v1", "v2"])
        };
        queued(store, new).await;
    }
}

postgres_only! {
    async fn instances_starting_at_once_migrate_the_database_once(db: Db) {
        let stores = futures_util::future::join_all((0..4).map(|_| db.open_on("e"))).await;
        queued(&stores[0], job_of("127.0.0.1:5000/a", &["v1"])).await;
        assert!(stores[3].claim_target(LEASE).await.unwrap().is_some());
        let engines = stores[1].engines().await.unwrap();
        assert_eq!(engines[0].instances.len(), 4);
    }

    async fn two_instances_never_claim_one_target_twice_nor_one_reference_at_once(db: Db) {
        let a = db.open_on("e").await;
        let b = db.open_on("e").await;
        twenty_targets(&a).await;
        let claimed: Arc<Mutex<HashMap<i64, usize>>> = Arc::default();
        let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
        let mut lanes = tokio::task::JoinSet::new();
        for lane in 0..8 {
            let store = if lane % 2 == 0 { a.clone() } else { b.clone() };
            let (claimed, in_flight) = (claimed.clone(), in_flight.clone());
            lanes.spawn(async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                while claimed.lock().unwrap().len() < 20 {
                    assert!(tokio::time::Instant::now() < deadline, "the queue never drained");
                    let Some(target) = store.claim_target(LEASE).await.unwrap() else {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        continue;
                    };
                    *claimed.lock().unwrap().entry(target.id).or_default() += 1;
                    let key = reference_key(target.reference.as_deref().unwrap());
                    assert!(
                        in_flight.lock().unwrap().insert(key.clone()),
                        "two targets of {key} in flight at once"
                    );
                    tokio::time::sleep(Duration::from_millis(fastrand::u64(1..5))).await;
                    in_flight.lock().unwrap().remove(&key);
                    store.finish_target(&target.claim, &succeeded(), &[]).await.unwrap();
                }
            });
        }
        while let Some(lane) = lanes.join_next().await {
            lane.unwrap();
        }
        let claimed = claimed.lock().unwrap().clone();
        assert_eq!(claimed.len(), 20);
        assert!(claimed.values().all(|&times| times == 1), "{claimed:?}");
        let page = a.list_jobs(&JobFilter::default(), 100, None).await.unwrap();
        assert!(page.jobs.iter().all(|job| job.status == JobStatus::Succeeded));
        assert_eq!(a.queue_counts().await.unwrap().targets_queued, 0);
    }

    async fn a_lease_expired_on_the_database_clock_is_taken_over_by_another_instance(db: Db) {
        let a = db.open_on("e").await;
        let b = db.open_on("e").await;
        let elsewhere = db.open_on("other").await;
        let job = queued(&a, NewJob { engine: Some("e".to_owned()), ..job_of("127.0.0.1:5000/a", &["v1", "v2"]) }).await;
        let first = a.claim_target(Duration::from_millis(500)).await.unwrap().unwrap();
        let second = a.claim_target(LEASE).await.unwrap().unwrap();
        assert_eq!((first.job_id, second.job_id), (job.id, job.id));
        assert!(b.expired_leases().await.unwrap().is_empty());
        assert!(b.take_over(first.id, TakeOver::Expired { token: &first.claim.token }, LEASE)
            .await.unwrap().is_none());
        // Nothing in flight is known dead at start: it may be another's.
        assert!(b.in_flight_targets().await.unwrap().is_empty());
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(b.expired_leases().await.unwrap(), vec![(first.id, first.claim.token.clone())]);
        assert!(elsewhere.expired_leases().await.unwrap().is_empty());
        let recovery = b
            .take_over(first.id, TakeOver::Expired { token: &first.claim.token }, LEASE)
            .await
            .unwrap()
            .expect("taken over");
        assert!(!a.renew_lease(&first.claim, LEASE).await.unwrap());
        assert!(ClaimLost::is(&a.set_step(&first.claim, TargetStatus::Pushing).await.unwrap_err()));
        assert!(ClaimLost::is(&a.finish_target(&first.claim, &succeeded(), &[]).await.unwrap_err()));
        assert!(b.take_over(second.id, TakeOver::Expired { token: &second.claim.token }, LEASE)
            .await.unwrap().is_none());
        let release = Release::Abandoned { warning: Some("its instance stopped".to_owned()), max_runs: 5 };
        assert_eq!(b.release_target(&recovery, release).await.unwrap(), Released::Queued);
        assert!(b.expired_leases().await.unwrap().is_empty());
    }

    async fn one_idempotency_key_on_two_instances_makes_one_job(db: Db) {
        let a = db.open().await;
        let b = db.open().await;
        for round in 0..10 {
            let keyed = || NewJob {
                idempotency_key: Some(format!("key-{round}")),
                ..job_of("127.0.0.1:5000/a", &["v1"])
            };
            let (one, two) = tokio::join!(a.create_job(keyed()), b.create_job(keyed()));
            match (one.unwrap(), two.unwrap()) {
                (Created::New(new), Created::Existing(existing))
                | (Created::Existing(existing), Created::New(new)) => assert_eq!(new.id, existing.id),
                _ => panic!("round {round}: not one new job and one existing"),
            }
        }
        let page = a.list_jobs(&JobFilter::default(), 100, None).await.unwrap();
        assert_eq!(page.jobs.len(), 10);
    }

    async fn the_queue_limit_holds_across_instances(db: Db) {
        let a = db.open().await;
        let b = db.open().await;
        let limited = |i: usize| NewJob { max_pending: 10, ..job_of(&format!("127.0.0.1:5000/q{i}"), &["v1", "v2"]) };
        let answers = futures_util::future::join_all((0..20).map(|i| {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            async move { store.create_job(limited(i)).await.unwrap() }
        }))
        .await;
        let accepted = answers.iter().filter(|answer| matches!(answer, Created::New(_))).count();
        assert_eq!(accepted, 5);
        assert_eq!(a.queue_counts().await.unwrap().targets_queued, 10);
    }

    async fn events_of_concurrent_writers_are_numbered_in_commit_order(db: Db) {
        let a = db.open_on("e").await;
        let b = db.open_on("e").await;
        let raw = db.raw_postgres().await;
        // Few jobs of many targets: writers on both instances meet on each
        // job's counter.
        let tags: Vec<String> = (0..12).map(|i| format!("v{i}")).collect();
        let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
        let mut jobs = Vec::new();
        for j in 0..3 {
            let repo = format!("127.0.0.1:5000/w{j}");
            jobs.push(queued(&a, NewJob { engine: Some("e".to_owned()), ..job_of(&repo, &tags) }).await.id);
        }
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (raw, done, jobs) = (raw.clone(), done.clone(), jobs.clone());
            tokio::spawn(async move {
                let mut last: HashMap<Uuid, i64> = HashMap::new();
                let mut reads = 0;
                loop {
                    let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                    for job in &jobs {
                        let seen = last.entry(*job).or_default();
                        let ids: Vec<i64> = sqlx::query_scalar(
                            "SELECT id FROM events WHERE job_id = $1 AND id > $2 ORDER BY id",
                        )
                        .bind(job.to_string())
                        .bind(*seen)
                        .fetch_all(&raw)
                        .await
                        .unwrap();
                        for id in ids {
                            assert_eq!(id, *seen + 1, "event {id} of {job} became visible after {seen}: a gap or a late id");
                            *seen = id;
                        }
                    }
                    reads += 1;
                    if finished {
                        return (last, reads);
                    }
                }
            })
        };
        let mut writers = tokio::task::JoinSet::new();
        for writer in 0..6 {
            let store = if writer % 2 == 0 { a.clone() } else { b.clone() };
            writers.spawn(async move {
                while let Some(target) = store.claim_target(LEASE).await.unwrap() {
                    store.record_failed_attempt(&target.claim, "push", "x", true).await.unwrap();
                    store.finish_target(&target.claim, &succeeded(), &[]).await.unwrap();
                }
            });
        }
        while let Some(writer) = writers.join_next().await {
            writer.unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let (last, reads) = reader.await.unwrap();
        for job in jobs {
            let (count, max): (i64, Option<i64>) =
                sqlx::query_as("SELECT count(*), max(id) FROM events WHERE job_id = $1")
                    .bind(job.to_string())
                    .fetch_one(&raw)
                    .await
                    .unwrap();
            assert_eq!((count, max), (last[&job], Some(last[&job])), "after {reads} reads");
            let events = a.job_events(job, 0, 1000).await.unwrap();
            // Created, 12 targets, then per target: claimed, failed try,
            // succeeded; the job running and succeeded.
            assert_eq!(events.len(), 1 + 12 + 12 * 3 + 2);
            assert_eq!(events[0].kind, "job");
            assert!(events.last().unwrap().ends_job());
        }
        raw.close().await;
    }

    async fn due_deliveries_are_handed_to_one_instance_only(db: Db) {
        let a = db.open().await;
        let b = db.open().await;
        for i in 0..30 {
            queued(&a, new_job(serde_json::json!({
                "repo": format!("127.0.0.1:5000/d{i}"), "images": [{"source": "src:1"}],
                "tags": [{"strategy": "custom", "value": "v1"}],
                "callback_url": "http://hooks.example/done"
            }))).await;
            let target = a.claim_target(LEASE).await.unwrap().unwrap();
            a.finish_target(&target.claim, &succeeded(), &[]).await.unwrap();
        }
        let take = |store: Store| async move {
            let mut taken = Vec::new();
            loop {
                let due = store.due_deliveries(4, 30, &[]).await.unwrap();
                if due.is_empty() {
                    return taken;
                }
                taken.extend(due.into_iter().map(|delivery| delivery.id));
            }
        };
        let (one, two) = tokio::join!(take(a.clone()), take(b.clone()));
        let all: HashSet<&String> = one.iter().chain(&two).collect();
        assert_eq!(one.len() + two.len(), 30, "{} + {}", one.len(), two.len());
        assert_eq!(all.len(), 30, "a delivery was handed out twice");
    }
}
