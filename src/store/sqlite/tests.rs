//! The SQLite store's own: migrations from old schemas and the lock file.
//! What both stores do is tested in `store/tests.rs`.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use uuid::Uuid;

use crate::domain::spec::{JobSpec, Limits, plan};
use crate::store::{Created, NewJob, Store, Submitter};

const LEASE: Duration = Duration::from_secs(30);

/// A database written before jobs had owners keeps its jobs, their
/// idempotency keys and their targets through the migration that
/// rebuilds the jobs table.
#[tokio::test]
async fn a_database_from_before_owners_is_migrated_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("publishd.db");
    // The migrations as they stood before owners, from the repository.
    let old_migrations = dir.path().join("old-migrations");
    std::fs::create_dir(&old_migrations).unwrap();
    let mut files: Vec<_> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect();
    files.sort();
    let before_owners = files
        .iter()
        .take_while(|file| !file.to_string_lossy().contains("owners_and_audit"));
    for file in before_owners {
        std::fs::copy(file, old_migrations.join(file.file_name().unwrap())).unwrap();
    }
    let options = SqliteConnectOptions::from_str("sqlite://")
        .unwrap()
        .filename(&path)
        .create_if_missing(true)
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new()
        .connect_with(options)
        .await
        .unwrap();
    sqlx::migrate::Migrator::new(old_migrations.as_path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    let id = Uuid::now_v7().to_string();
    sqlx::query(
        "INSERT INTO jobs (id, status, repo, repo_mode, idempotency_key, spec_hash, created_at)
         VALUES (?, 'queued', '127.0.0.1:5000/a', 'multirepo', 'key-1', 'h', '2026-01-01T00:00:00.000000Z')",
    )
    .bind(&id)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO job_images (job_id, position, name, source) VALUES (?, 0, 'app', 'src:1')",
    )
    .bind(&id)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO targets (job_id, position, image_name, source, strategy, tag, reference,
                              reference_key, status)
         VALUES (?, 0, 'app', 'src:1', 'custom', 'v1', '127.0.0.1:5000/a/app:v1',
                 '127.0.0.1:5000/a/app:v1', 'pending')",
    )
    .bind(&id)
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    let store = Store::open_sqlite(&path).await.unwrap();
    let job = store
        .get_job(Uuid::parse_str(&id).unwrap())
        .await
        .unwrap()
        .expect("the job survived");
    assert_eq!(job.submitted_by, None);
    assert_eq!(job.targets.len(), 1);
    assert_eq!(job.images[0].source, "src:1");
    // Its key is still its submitter's (nobody's), and only theirs.
    let spec: JobSpec = serde_json::from_value(serde_json::json!({
        "repo": "127.0.0.1:5000/a", "images": [{"name": "app", "source": "src:1"}],
        "tags": [{"strategy": "custom", "value": "v1"}]
    }))
    .unwrap();
    let plan = plan(&spec, Limits::default()).unwrap();
    let new = |submitter| NewJob {
        id: Uuid::now_v7(),
        plan: plan.clone(),
        max_pending: 100,
        has_registry_auth: false,
        idempotency_key: Some("key-1".to_owned()),
        spec_hash: "h".to_owned(),
        submitter,
        engine: None,
    };
    assert!(matches!(
        store.create_job(new(Submitter::anonymous())).await.unwrap(),
        Created::Existing(existing) if existing.id == job.id
    ));
    let team = Submitter {
        name: Some("team-a".to_owned()),
        ..Submitter::anonymous()
    };
    assert!(matches!(
        store.create_job(new(team)).await.unwrap(),
        Created::New(_)
    ));
    assert_eq!(
        store.claim_target(LEASE).await.unwrap().unwrap().job_id,
        job.id
    );
}

#[tokio::test]
async fn one_process_per_database() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("publishd.db"))
        .await
        .unwrap();
    let error = Store::open_sqlite(&dir.path().join("publishd.db"))
        .await
        .err()
        .expect("refused");
    assert!(
        error.to_string().contains("in use by another publishd"),
        "{error}"
    );
    drop(store);
    Store::open_sqlite(&dir.path().join("publishd.db"))
        .await
        .expect("free again");
}
