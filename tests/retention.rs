//! Retention: the background task deletes finished jobs older than
//! `--retention` with everything of theirs (targets, images, events,
//! deliveries) and frees their idempotency keys; recent and unfinished jobs,
//! and jobs whose webhook is still being tried, stay; `--retention 0` keeps
//! everything.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use support::binary::Server;
use support::engine::TestEngine;
use support::{HangingRegistry, TestApp, TestEnv, app_job, unique};

const THIRTY_DAYS: Duration = Duration::from_secs(30 * 24 * 3600);

/// The tables that hold a job's rows, by `job_id`.
const JOB_TABLES: [&str; 4] = ["targets", "job_images", "events", "deliveries"];

async fn database(dir: &Path) -> SqliteConnection {
    let options = SqliteConnectOptions::new().filename(dir.join("publishd.db"));
    SqliteConnection::connect_with(&options).await.unwrap()
}

/// The job's rows in each table, and whether the job row itself is there.
async fn rows_of(dir: &Path, id: &str) -> Vec<(String, i64)> {
    let mut db = database(dir).await;
    let mut counts = vec![(
        "jobs".to_owned(),
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE id = ?")
            .bind(id)
            .fetch_one(&mut db)
            .await
            .unwrap(),
    )];
    for table in JOB_TABLES {
        let count: i64 =
            sqlx::query_scalar(&format!("SELECT count(*) FROM {table} WHERE job_id = ?"))
                .bind(id)
                .fetch_one(&mut db)
                .await
                .unwrap();
        counts.push((table.to_owned(), count));
    }
    db.close().await.unwrap();
    counts
}

fn all_zero(rows: &[(String, i64)]) -> bool {
    rows.iter().all(|(_, count)| *count == 0)
}

/// "Finished long ago" without waiting a month: the test rewrites the
/// times of jobs in the database file while no service runs on it, the
/// only way to make a job that ended 40 days ago. (The short-retention test
/// below shows the task deleting jobs that really aged.)
async fn age(dir: &Path, ids: &[&str], by: Duration, finished: bool) {
    let then = time::OffsetDateTime::now_utc() - by;
    let then = then
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let mut db = database(dir).await;
    for id in ids {
        let sql = if finished {
            "UPDATE jobs SET created_at = ?1, started_at = ?1, finished_at = ?1 WHERE id = ?2"
        } else {
            "UPDATE jobs SET created_at = ?1 WHERE id = ?2"
        };
        let changed = sqlx::query(sql)
            .bind(&then)
            .bind(id)
            .execute(&mut db)
            .await
            .unwrap()
            .rows_affected();
        assert_eq!(changed, 1, "{id}");
        if finished {
            // A delivery is made when its job ends.
            sqlx::query("UPDATE deliveries SET created_at = ?1 WHERE job_id = ?2")
                .bind(&then)
                .bind(id)
                .execute(&mut db)
                .await
                .unwrap();
        }
        sqlx::query("UPDATE audit SET at = ?1 WHERE job_id = ?2")
            .bind(&then)
            .bind(id)
            .execute(&mut db)
            .await
            .unwrap();
    }
    db.close().await.unwrap();
}

async fn status_of(app: &TestApp, id: &str) -> u16 {
    app.get(&format!("/api/v1/jobs/{id}"))
        .await
        .status()
        .as_u16()
}

async fn wait_gone(app: &TestApp, id: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        match status_of(app, id).await {
            404 => return start.elapsed(),
            200 => {}
            other => panic!("GET job {id}: {other}"),
        }
        assert!(
            start.elapsed() < limit,
            "job {id} still there after {limit:?}: {:#}",
            app.job(id).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn submit_keyed(app: &TestApp, spec: &Value, key: &str) -> (u16, Value) {
    let response = app
        .client
        .post(app.url("/api/v1/jobs"))
        .header("Idempotency-Key", key)
        .json(spec)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// A receiver that accepts every webhook.
async fn accepting_receiver() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let router = axum::Router::new().route("/hook", axum::routing::post(|| async { "ok" }));
    let task = tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (url, task)
}

async fn source_image(prefix: &str) -> String {
    let name = unique(prefix);
    TestEngine::connect().import_image(&name, "b1", &[]).await;
    format!("{name}:b1")
}

#[tokio::test]
async fn jobs_finished_long_ago_go_with_all_their_rows_and_the_rest_stay() {
    let env = TestEnv::get();
    let hanging = HangingRegistry::start().await;
    let (receiver, _receiving) = accepting_receiver().await;
    let nobody = format!("http://127.0.0.1:{}/hook", support::binary::free_port());
    let dir = tempfile::tempdir().unwrap();
    let source = source_image("retention").await;
    let repo = format!("{}/{}", env.registry, unique("retention"));
    // One lane, so a push that hangs keeps the jobs after it queued; a
    // zero grace period abandons that push at the stop.
    let configure = |settings: &mut publishd::config::Settings| {
        settings.workers = 1;
        settings.shutdown_grace = Duration::ZERO;
        settings.webhook_secret = Some(b"secret".to_vec());
        settings.allow_callback = support::loopback_callbacks();
    };
    let first = TestApp::spawn_in(dir.path(), configure).await;

    // old: succeeded, its webhook delivered, submitted with a key.
    let mut old_spec = app_job(&repo, &source, &["old"]);
    old_spec["callback_url"] = json!(receiver);
    let (status, old) = submit_keyed(&first, &old_spec, "pipeline-1").await;
    assert_eq!(status, 202, "{old:#}");
    let old = old["id"].as_str().unwrap().to_owned();
    first.wait_finished(&old).await;
    first
        .wait_for(&old, Duration::from_secs(10), |job| {
            job["deliveries"][0]["state"] == "delivered"
        })
        .await;
    // old_undelivered: its receiver is down, the delivery still pending.
    let mut undelivered_spec = app_job(&repo, &source, &["undelivered"]);
    undelivered_spec["callback_url"] = json!(nobody);
    let old_undelivered = first.submit(&undelivered_spec).await;
    first
        .wait_for(&old_undelivered, Duration::from_secs(60), |job| {
            job["deliveries"][0]["attempts"]
                .as_array()
                .is_some_and(|attempts| !attempts.is_empty())
        })
        .await;
    // long_undelivered: the same, but ended longer ago than twice the
    // retention.
    let mut long_undelivered_spec = app_job(&repo, &source, &["long-undelivered"]);
    long_undelivered_spec["callback_url"] = json!(nobody);
    let long_undelivered = first.submit(&long_undelivered_spec).await;
    first.wait_finished(&long_undelivered).await;
    // recent: succeeded, and stays recent.
    let recent = first.submit(&app_job(&repo, &source, &["recent"])).await;
    assert_eq!(first.wait_finished(&recent).await["status"], "succeeded");
    // running: its push hangs, whatever its age; queued behind it; and
    // old_cancelled, cancelled while it waited.
    let mut stuck_spec = app_job(
        &format!("{}/{}", hanging.address, unique("stuck")),
        &source,
        &["v1"],
    );
    stuck_spec["force"] = json!(true);
    let running = first.submit(&stuck_spec).await;
    first
        .wait_for(&running, Duration::from_secs(30), |job| {
            job["targets"][0]["status"] == "pushing"
        })
        .await;
    // Queued behind it, and hanging too once it runs: after the restart
    // either may hold the lane, and neither can end.
    let mut queued_spec = stuck_spec.clone();
    queued_spec["repo"] = json!(format!("{}/{}", hanging.address, unique("queued")));
    let queued = first.submit(&queued_spec).await;
    let old_cancelled = first.submit(&app_job(&repo, &source, &["cancelled"])).await;
    let cancel = first
        .client
        .post(first.url(&format!("/api/v1/jobs/{old_cancelled}/cancel")))
        .send()
        .await
        .unwrap();
    assert!(cancel.status().is_success());
    assert_eq!(
        first.wait_finished(&old_cancelled).await["status"],
        "cancelled"
    );
    assert_eq!(first.job(&queued).await["status"], "queued");
    first.stop().await;

    let forty_days = Duration::from_secs(40 * 24 * 3600);
    age(
        dir.path(),
        &[&old, &old_undelivered, &old_cancelled],
        forty_days,
        true,
    )
    .await;
    age(dir.path(), &[&running, &queued], forty_days, false).await;
    age(
        dir.path(),
        &[&long_undelivered],
        Duration::from_secs(70 * 24 * 3600),
        true,
    )
    .await;
    for id in [&old, &old_cancelled] {
        let rows = rows_of(dir.path(), id).await;
        let expected_deliveries = i64::from(id == &old);
        assert!(
            rows.iter()
                .all(|(table, count)| *count > 0
                    || (table == "deliveries" && expected_deliveries == 0)),
            "{id}: {rows:?}"
        );
    }

    // Seeds recorded long ago go too (their layers may have been collected
    // since); one recorded lately stays.
    let mut db = database(dir.path()).await;
    for (source, days) in [("sha256:old-seed", 40), ("sha256:new-seed", 1)] {
        let at = (time::OffsetDateTime::now_utc() - Duration::from_secs(days * 24 * 3600))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        sqlx::query(
            "INSERT INTO seeds (source_image_id, registry, engine, manifest, media_type,
                                config, layers, repository, recorded_at)
             VALUES (?, '127.0.0.1:1', 'docker 20.10 classic load', '{}',
                     'application/vnd.docker.distribution.manifest.v2+json', '{}', '[]', 'r', ?)",
        )
        .bind(source)
        .bind(at)
        .execute(&mut db)
        .await
        .unwrap();
    }
    db.close().await.unwrap();

    // The default retention: the task's first sweep runs at start. No
    // webhook secret any more, so the pending deliveries are sent by nobody.
    let second = TestApp::spawn_in(dir.path(), |settings| {
        configure(settings);
        settings.webhook_secret = None;
        settings.retention = Some(THIRTY_DAYS);
    })
    .await;
    wait_gone(&second, &old, Duration::from_secs(10)).await;
    wait_gone(&second, &old_cancelled, Duration::from_secs(5)).await;
    // A pending delivery keeps its job for one more retention period, no
    // longer: the job that ended 70 days ago goes with its delivery.
    wait_gone(&second, &long_undelivered, Duration::from_secs(5)).await;
    for id in [&old, &old_cancelled, &long_undelivered] {
        let rows = rows_of(dir.path(), id).await;
        assert!(all_zero(&rows), "{id} left rows: {rows:?}");
    }
    // The audit trail of those submissions was as old, and went too.
    let mut db = database(dir.path()).await;
    let audit: i64 = sqlx::query_scalar("SELECT count(*) FROM audit WHERE job_id IN (?, ?)")
        .bind(&old)
        .bind(&old_cancelled)
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(audit, 0);
    let seeds: Vec<String> =
        sqlx::query_scalar("SELECT source_image_id FROM seeds WHERE source_image_id LIKE '%-seed'")
            .fetch_all(&mut db)
            .await
            .unwrap();
    assert_eq!(seeds, ["sha256:new-seed"]);
    db.close().await.unwrap();

    // Kept: recent, unfinished however old, and one whose webhook is still
    // being tried.
    for id in [&recent, &running, &queued, &old_undelivered] {
        assert_eq!(status_of(&second, id).await, 200, "{id}");
        let rows = rows_of(dir.path(), id).await;
        assert!(
            rows.iter()
                .filter(|(table, _)| table != "deliveries")
                .all(|(_, count)| *count > 0),
            "{id}: {rows:?}"
        );
    }
    assert_eq!(
        second.job(&old_undelivered).await["deliveries"][0]["state"],
        "pending"
    );
    for id in [&running, &queued] {
        let job = second.job(id).await;
        assert!(
            matches!(job["status"].as_str(), Some("running" | "queued")),
            "{job:#}"
        );
    }

    // The key of the deleted job is free: the same submission makes a new
    // job (without its callback: this instance has no webhook secret).
    old_spec.as_object_mut().unwrap().remove("callback_url");
    let (status, again) = submit_keyed(&second, &old_spec, "pipeline-1").await;
    assert_eq!(status, 202, "{again:#}");
    assert_ne!(again["id"], old);
    second.stop().await;
}

#[tokio::test]
async fn the_background_task_deletes_jobs_as_they_age_past_a_short_retention() {
    let env = TestEnv::get();
    let hanging = HangingRegistry::start().await;
    let app = TestApp::spawn_with(|settings| {
        settings.retention = Some(Duration::from_secs(2));
        settings.shutdown_grace = Duration::ZERO;
    })
    .await;
    let source = source_image("retention-short").await;
    let repo = format!("{}/{}", env.registry, unique("retention-short"));
    let mut stuck_spec = app_job(
        &format!("{}/{}", hanging.address, unique("stuck")),
        &source,
        &["v1"],
    );
    stuck_spec["force"] = json!(true);
    let running = app.submit(&stuck_spec).await;

    let spec = app_job(&repo, &source, &["v1"]);
    let (status, job) = submit_keyed(&app, &spec, "short-1").await;
    assert_eq!(status, 202, "{job:#}");
    let id = job["id"].as_str().unwrap().to_owned();
    let finished = app.wait_finished(&id).await;
    assert_eq!(finished["status"], "succeeded");
    // While it is young the key answers the job itself.
    let (status, replay) = submit_keyed(&app, &spec, "short-1").await;
    assert_eq!((status, &replay["id"]), (200, &json!(id)));
    assert!(!all_zero(&rows_of(&app.dir, &id).await));

    // Two seconds of retention, a sweep every second.
    let waited = wait_gone(&app, &id, Duration::from_secs(10)).await;
    assert!(
        waited >= Duration::from_millis(500),
        "gone after {waited:?}"
    );
    let rows = rows_of(&app.dir, &id).await;
    assert!(all_zero(&rows), "left rows: {rows:?}");
    // The running job is older than the retention too, and stays.
    assert_eq!(status_of(&app, &running).await, 200);
    assert_eq!(app.job(&running).await["status"], "running");
    let (status, again) = submit_keyed(&app, &spec, "short-1").await;
    assert_eq!(status, 202, "{again:#}");
    assert_ne!(again["id"], json!(id));
    app.stop().await;
}

#[tokio::test]
async fn retention_zero_keeps_everything() {
    let env = TestEnv::get();
    let dir = tempfile::tempdir().unwrap();
    let source = source_image("retention-zero").await;
    let repo = format!("{}/{}", env.registry, unique("retention-zero"));
    let app = TestApp::spawn_in(dir.path(), |_| {}).await;
    let id = app.submit(&app_job(&repo, &source, &["v1"])).await;
    assert_eq!(app.wait_finished(&id).await["status"], "succeeded");
    app.stop().await;
    age(
        dir.path(),
        &[&id],
        Duration::from_secs(10 * 365 * 24 * 3600),
        true,
    )
    .await;

    // The real binary, with `PUBLISHD_RETENTION=0` (`--retention 0`).
    let server = Server::start(dir.path(), 1, &[("PUBLISHD_RETENTION", "0")]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(server.job(&id).await["id"], id.as_str());
    server.terminate().await;
    assert!(!all_zero(&rows_of(dir.path(), &id).await));

    // The same database under the default retention: the job goes at once.
    let server = Server::start(dir.path(), 2, &[]).await;
    let start = Instant::now();
    loop {
        let answer = server
            .client
            .get(format!("{}/api/v1/jobs/{id}", server.base))
            .send()
            .await
            .unwrap();
        if answer.status() == 404 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "not deleted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.terminate().await;
    assert!(all_zero(&rows_of(dir.path(), &id).await));
}

/// Copies job `id` (its row, targets, images and deliveries; the insert
/// trigger records its first event) `times` times under new ids: a backlog
/// of finished jobs without publishing each.
async fn clone_job(dir: &Path, id: &str, times: usize) {
    let mut db = database(dir).await;
    let mut tx = db.begin().await.unwrap();
    for (table, key) in [
        ("jobs", "id"),
        ("targets", "job_id"),
        ("job_images", "job_id"),
        ("deliveries", "job_id"),
    ] {
        sqlx::query(&format!(
            "CREATE TEMP TABLE copy_{table} AS SELECT * FROM {table} WHERE {key} = ?"
        ))
        .bind(id)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    for _ in 0..times {
        let new = uuid::Uuid::now_v7().to_string();
        for statement in [
            "UPDATE copy_jobs SET id = ?1, idempotency_key = NULL",
            "UPDATE copy_targets SET id = NULL, job_id = ?1",
            "UPDATE copy_job_images SET job_id = ?1",
            "UPDATE copy_deliveries SET id = lower(hex(randomblob(16))), job_id = ?1",
            "INSERT INTO jobs SELECT * FROM copy_jobs",
            "INSERT INTO targets SELECT * FROM copy_targets",
            "INSERT INTO job_images SELECT * FROM copy_job_images",
            "INSERT INTO deliveries SELECT * FROM copy_deliveries",
        ] {
            sqlx::query(statement)
                .bind(&new)
                .execute(&mut *tx)
                .await
                .unwrap();
        }
    }
    tx.commit().await.unwrap();
    db.close().await.unwrap();
}

/// Rows of `table` whose job is gone.
async fn orphans(dir: &Path, table: &str) -> i64 {
    let mut db = database(dir).await;
    let count = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {table} WHERE job_id NOT IN (SELECT id FROM jobs)"
    ))
    .fetch_one(&mut db)
    .await
    .unwrap();
    db.close().await.unwrap();
    count
}

#[tokio::test]
async fn a_backlog_of_old_jobs_goes_in_batches_and_leaves_no_orphans() {
    let env = TestEnv::get();
    let (receiver, _receiving) = accepting_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let source = source_image("retention-backlog").await;
    let repo = format!("{}/{}", env.registry, unique("retention-backlog"));
    let with_secret = |settings: &mut publishd::config::Settings| {
        settings.webhook_secret = Some(b"secret".to_vec());
        settings.allow_callback = support::loopback_callbacks();
    };
    let first = TestApp::spawn_in(dir.path(), with_secret).await;
    let mut spec = app_job(&repo, &source, &["v1", "v2"]);
    spec["callback_url"] = json!(receiver);
    let old = first.submit(&spec).await;
    first
        .wait_for(&old, Duration::from_secs(60), |job| {
            job["deliveries"][0]["state"] == "delivered"
        })
        .await;
    let recent = first.submit(&app_job(&repo, &source, &["v3"])).await;
    first.wait_finished(&recent).await;
    first.stop().await;
    // 1 + 1000 old jobs: five full batches and a last one.
    age(
        dir.path(),
        &[&old],
        Duration::from_secs(31 * 24 * 3600),
        true,
    )
    .await;
    clone_job(dir.path(), &old, 1000).await;
    let mut db = database(dir.path()).await;
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(jobs, 1002);
    db.close().await.unwrap();

    let second = TestApp::spawn_in(dir.path(), |settings| {
        with_secret(settings);
        settings.retention = Some(THIRTY_DAYS);
    })
    .await;
    wait_gone(&second, &old, Duration::from_secs(10)).await;
    let start = Instant::now();
    loop {
        let page: Value = second
            .get("/api/v1/jobs?limit=100")
            .await
            .json()
            .await
            .unwrap();
        let ids: Vec<&str> = page["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|job| job["id"].as_str().unwrap())
            .collect();
        if ids == [recent.as_str()] {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{} jobs left",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for table in JOB_TABLES {
        assert_eq!(orphans(dir.path(), table).await, 0, "orphans in {table}");
    }
    assert!(!all_zero(&rows_of(dir.path(), &recent).await));
    second.stop().await;
}
