//! A lease that runs out while its lane is alive: the database's writer is
//! held by another process past the lease, the lane stops before its lease
//! ends, recovery takes the target over once the writer is free, and the
//! target is published once, by the run that took over, in one terminal
//! state that never changes afterwards.

mod support;

use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::Connection;
use sqlx::sqlite::SqliteConnectOptions;
use support::engine::TestEngine;
use support::fault_proxy::{FaultProxy, Faults};
use support::registry::Registry;
use support::{TestApp, TestEnv, app_job, unique};

#[tokio::test]
async fn a_lease_lost_to_a_held_writer_is_taken_over_and_recorded_once() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let name = unique("lease");
    engine.import_image(&name, "b1", &[]).await;
    // Every request to the registry waits: the push is under way for
    // seconds, long enough to hold the writer meanwhile.
    let proxy = FaultProxy::start(
        &env.registry,
        Faults::Random {
            rate: 0.0,
            seed: 1,
            latency: Duration::from_millis(400),
        },
    )
    .await;
    let lease = Duration::from_secs(3);
    let app = TestApp::spawn_with(|settings| {
        settings.workers = 1;
        settings.lease = lease;
    })
    .await;
    let repository = unique("lease");
    let repo = format!("{}/{repository}", proxy.address);
    let mut spec = app_job(&repo, &format!("{name}:b1"), &["v1"]);
    spec["force"] = serde_json::json!(true);
    let id = app.submit(&spec).await;
    app.wait_for(&id, Duration::from_secs(30), |job| {
        job["targets"][0]["status"] == "pushing"
    })
    .await;

    // Another process holds the writer for twice the lease.
    let options = SqliteConnectOptions::from_str("sqlite://")
        .unwrap()
        .filename(app.dir.join("publishd.db"));
    let mut holder = sqlx::SqliteConnection::connect_with(&options)
        .await
        .unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut holder)
        .await
        .unwrap();
    let held = Instant::now();
    tokio::time::sleep(lease * 2).await;
    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();
    assert!(held.elapsed() >= lease * 2);

    let job = app.wait_finished(&id).await;
    let target = job["targets"][0].clone();
    assert_eq!(target["status"], "succeeded", "{job:#}");
    // The first run stopped when it could not keep its lease; the second
    // published.
    assert_eq!(target["attempts"], 2, "{job:#}");
    assert_eq!(target["runs"], 2, "{job:#}");
    let direct = format!("{}/{repository}/app:v1", env.registry);
    let pushed = Registry::open(&env.registry)
        .pushed(&direct)
        .await
        .expect("published");
    assert_eq!(pushed.digest, target["digest"].as_str().unwrap());

    // Nothing the first run still had in hand changes the result later.
    tokio::time::sleep(lease * 2).await;
    let later = app.job(&id).await;
    assert_eq!(later["targets"][0], target, "the terminal state changed");
    assert_eq!(later["status"], "succeeded");
    assert!(engine.names_under(&repo).await.is_empty());
}
