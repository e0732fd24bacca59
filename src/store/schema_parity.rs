//! The two databases' schemas say the same thing: the same tables, columns
//! (types mapped), indexes and, run through one script of operations, the
//! same history written by their triggers. One store's SQL runs on both
//! (`store/sql/`), so a column or an index added to one migration and not
//! the other fails here, not in production.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::Row;

use super::tests::Db;
use super::*;

/// What only one database has, and why; everything else must agree.
const POSTGRES_ONLY_TABLES: &[&str] = &[
    // Instances sharing one database beat here; one SQLite file has one.
    "instances",
];
const SQLITE_ONLY_COLUMNS: &[(&str, &str)] = &[
    // A lease on one process's monotonic clock; PostgreSQL's is on the
    // database's clock (`lease_expires_at`).
    ("targets", "lease_expires_ms"),
];
const POSTGRES_ONLY_COLUMNS: &[(&str, &str)] = &[("targets", "lease_expires_at")];

/// A column as both schemas can say it: its type's class and whether it
/// may be NULL.
type Columns = BTreeMap<(String, String), (&'static str, bool)>;

/// SQLite's declared types, by the affinity rules of its documentation.
fn sqlite_class(declared: &str) -> &'static str {
    let declared = declared.to_ascii_uppercase();
    if declared.contains("INT") {
        "integer"
    } else if declared.contains("CHAR") || declared.contains("TEXT") {
        "text"
    } else if declared.contains("REAL") || declared.contains("DOUB") {
        "real"
    } else {
        "other"
    }
}

/// PostgreSQL's types as SQLite stores them (booleans are integers there).
fn postgres_class(data_type: &str) -> &'static str {
    match data_type {
        "bigint" | "integer" | "smallint" | "boolean" => "integer",
        "text" | "character varying" => "text",
        "double precision" | "real" => "real",
        _ => "other",
    }
}

async fn sqlite_schema(db: &Db) -> (Columns, BTreeSet<String>) {
    let Location::Sqlite(path) = db.location() else {
        unreachable!("a SQLite database")
    };
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", path.display()))
        .await
        .unwrap();
    let columns = sqlx::query(
        "SELECT m.name AS table_name, c.name AS column_name, c.type AS declared,
                c.\"notnull\" AS not_null, c.pk AS pk
         FROM sqlite_master m, pragma_table_info(m.name) c
         WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND m.name NOT LIKE '_sqlx%'",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .iter()
    .map(|row| {
        let key = (row.get("table_name"), row.get("column_name"));
        let declared: String = row.get("declared");
        // A primary key is never NULL, whatever SQLite's declaration says.
        let nullable = row.get::<i64, _>("not_null") == 0 && row.get::<i64, _>("pk") == 0;
        (key, (sqlite_class(&declared), nullable))
    })
    .collect();
    let indexes = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    (columns, indexes)
}

async fn postgres_schema(db: &Db) -> (Columns, BTreeSet<String>) {
    let pool = db.raw_postgres().await;
    let columns = sqlx::query(
        "SELECT table_name::text, column_name::text, data_type::text, is_nullable::text
         FROM information_schema.columns
         WHERE table_schema = 'public' AND table_name NOT LIKE '_sqlx%'",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .iter()
    .map(|row| {
        let key = (row.get("table_name"), row.get("column_name"));
        let data_type: String = row.get("data_type");
        let nullable = row.get::<String, _>("is_nullable") == "YES";
        (key, (postgres_class(&data_type), nullable))
    })
    .collect();
    // Primary keys and UNIQUE constraints make indexes of their own in
    // PostgreSQL, named as the constraint; SQLite's are implicit.
    let indexes = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes i
         WHERE schemaname = 'public' AND tablename NOT LIKE '_sqlx%'
           AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    (columns, indexes)
}

#[tokio::test]
async fn schemas_agree() {
    let Some(postgres) = Db::postgres().await else {
        return;
    };
    let sqlite = Db::sqlite();
    let _stores = (sqlite.open().await, postgres.open().await);
    let (mut sqlite_columns, sqlite_indexes) = sqlite_schema(&sqlite).await;
    let (mut postgres_columns, postgres_indexes) = postgres_schema(&postgres).await;
    for (table, column) in SQLITE_ONLY_COLUMNS {
        assert!(
            sqlite_columns
                .remove(&(table.to_string(), column.to_string()))
                .is_some()
        );
    }
    for (table, column) in POSTGRES_ONLY_COLUMNS {
        assert!(
            postgres_columns
                .remove(&(table.to_string(), column.to_string()))
                .is_some()
        );
    }
    postgres_columns.retain(|(table, _), _| !POSTGRES_ONLY_TABLES.contains(&table.as_str()));
    let differing: Vec<_> = sqlite_columns
        .keys()
        .chain(postgres_columns.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|key| sqlite_columns.get(key) != postgres_columns.get(key))
        .map(|key| (key, sqlite_columns.get(key), postgres_columns.get(key)))
        .collect();
    assert!(
        differing.is_empty(),
        "columns that differ ((table, column), SQLite, PostgreSQL): {differing:#?}"
    );
    assert_eq!(
        sqlite_indexes, postgres_indexes,
        "indexes (SQLite, PostgreSQL)"
    );
}

/// One script of operations, and what the database wrote of it: every
/// event without its id and time, the deliveries, the counts.
async fn history_of(db: &Db) -> serde_json::Value {
    let store = db.open().await;
    let spec = |tags: &[&str]| {
        let tags: Vec<_> = tags
            .iter()
            .map(|tag| serde_json::json!({"strategy": "custom", "value": tag}))
            .collect();
        tests::new_job(serde_json::json!({
            "repo": "127.0.0.1:5000/a", "images": [{"name": "app", "source": "src:1"}],
            "tags": tags, "callback_url": "http://hooks.example/done"
        }))
    };
    let Created::New(published) = store.create_job(spec(&["v1", "v2"])).await.unwrap() else {
        panic!("refused")
    };
    let Created::New(cancelled) = store.create_job(spec(&["v3", "v4"])).await.unwrap() else {
        panic!("refused")
    };
    let lease = std::time::Duration::from_secs(30);
    let first = store.claim_target(lease).await.unwrap().unwrap();
    store
        .record_failed_attempt(&first.claim, "push", "refused", true)
        .await
        .unwrap();
    store
        .set_step(&first.claim, TargetStatus::Pushing)
        .await
        .unwrap();
    let done = TargetOutcome::Succeeded {
        digest: "sha256:aa".to_owned(),
        image_id: Some("sha256:cc".to_owned()),
        up_to_date: false,
        published_via: Some(crate::domain::publish_via::PublishedVia::Engine),
    };
    store
        .finish_target(&first.claim, &done, &["w".to_owned()])
        .await
        .unwrap();
    let second = store.claim_target(lease).await.unwrap().unwrap();
    let failed = TargetOutcome::Failed {
        error: "no".to_owned(),
    };
    store
        .finish_target(&second.claim, &failed, &[])
        .await
        .unwrap();
    let third = store.claim_target(lease).await.unwrap().unwrap();
    let abandoned = Release::Abandoned {
        warning: Some("left".to_owned()),
        max_runs: 5,
    };
    store.release_target(&third.claim, abandoned).await.unwrap();
    store.cancel_job(cancelled.id).await.unwrap();
    let mut history = Vec::new();
    for job in [published.id, cancelled.id] {
        for mut event in store.job_events(job, 0, 100).await.unwrap() {
            // A failed try's time is the clock's, which differs run to run.
            if let Some(attempt) = event.data.as_object_mut() {
                attempt.remove("at");
            }
            history.push(serde_json::json!([event.kind, event.target, event.data]));
        }
        let job = store.get_job(job).await.unwrap().unwrap();
        history.push(serde_json::json!([
            job.status,
            job.error,
            job.deliveries.len()
        ]));
    }
    let counts = store.queue_counts().await.unwrap();
    history.push(serde_json::json!([
        counts.targets_queued,
        counts.targets_in_flight
    ]));
    serde_json::Value::Array(history)
}

#[tokio::test]
async fn triggers_write_the_same_history() {
    let Some(postgres) = Db::postgres().await else {
        return;
    };
    let sqlite = history_of(&Db::sqlite()).await;
    assert_eq!(sqlite, history_of(&postgres).await);
}

/// The status the triggers give a job, for every pair of target statuses
/// and either cancel flag, is `domain::status::job_status`'s.
async fn statuses_follow_the_domain_rule(db: &Db) {
    use crate::domain::status::job_status;
    use TargetStatus::*;
    let store = db.open().await;
    let all = [
        Pending, Tagging, Pushing, Untagging, Succeeded, Failed, Cancelled,
    ];
    for first in all {
        for second in all {
            for cancel in [false, true] {
                // A repository of its own: targets left in flight hold theirs.
                let repo = format!("127.0.0.1:5000/{first:?}-{second:?}-{cancel}").to_lowercase();
                let Created::New(job) = store
                    .create_job(tests::new_job(serde_json::json!({
                        "repo": repo, "images": [{"name": "app", "source": "s:1"}],
                        "tags": [{"strategy": "custom", "value": "v1"},
                                 {"strategy": "custom", "value": "v2"}]
                    })))
                    .await
                    .unwrap()
                else {
                    panic!("refused")
                };
                let status = db.raw_status(job.id, [first, second], cancel).await;
                assert_eq!(
                    JobStatus::parse(&status),
                    Some(job_status(&[first, second], cancel)),
                    "{first:?} {second:?} cancel {cancel}"
                );
            }
        }
    }
}

#[tokio::test]
async fn statuses_follow_the_domain_rule_on_sqlite() {
    statuses_follow_the_domain_rule(&Db::sqlite()).await;
}

#[tokio::test]
async fn statuses_follow_the_domain_rule_on_postgres() {
    if let Some(db) = Db::postgres().await {
        statuses_follow_the_domain_rule(&db).await;
    }
}
