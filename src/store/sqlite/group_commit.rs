//! Group commit of submissions, audit records and the lanes' queue writes
//! (claims, steps, outcomes). With `synchronous=FULL` every commit waits for
//! an fsync (about 7 ms on the machine the benchmark ran on), so a
//! transaction per POST (two, with its audit record) or per step of a
//! target bounds both by the disk's sync rate. One task writes them
//! instead: it takes everything queued (up to `MAX_BATCH`), writes each
//! request in a savepoint of its own in ONE transaction, commits once, and
//! only then answers each request. A request whose own writes fail is rolled
//! back to its savepoint and answered its error; the others still commit.
//! When the transaction itself fails (busy, full disk, I/O error), every
//! request of the batch gets that error, as a lone transaction's would.

use std::any::Any;
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use anyhow::Context;
use futures_util::future::BoxFuture;
use sqlx::{Acquire, Sqlite, SqliteConnection, SqlitePool};
use uuid::Uuid;

use crate::store::batch::Batcher;
use crate::store::sql::SqlStore;
use crate::store::{AuditEntry, AuditOf, Created, NewJob, StoreResult};

/// Most requests in one transaction: bounds how long a batch holds the
/// writer connection, and so how long its first request waits for its last.
const MAX_BATCH: usize = 256;

/// One request to the writer task.
pub(super) enum Write {
    // Boxed: a job is far larger than the other writes.
    Job {
        new: Box<NewJob>,
        audit: Option<AuditOf>,
        /// This instance, which holds the job's own credentials if it
        /// brought any.
        accepted_by: Uuid,
    },
    Audit(AuditEntry),
    Queue(QueueWrite),
}

/// A write of the queue's, run on the batch's connection (in its own
/// savepoint); its answer, boxed, goes back to the caller.
pub(super) type QueueWrite = Box<
    dyn for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, StoreResult<Box<dyn Any + Send>>>
        + Send,
>;

/// What a committed request did.
pub(super) enum Written {
    /// The job's outcome and the audit record written with it (boxed: the
    /// answer is large, and `Audited` nothing).
    Job(Box<(Created, Option<AuditEntry>)>),
    Audited,
    Queue(Box<dyn Any + Send>),
}

/// The task that writes everything, in batches.
pub(super) type GroupCommit = Batcher<Write, Written>;

/// Starts the writer task on `writer`, the one writer connection.
pub(super) fn start(writer: SqlitePool) -> GroupCommit {
    Batcher::start(MAX_BATCH, move |writes| commit(writer.clone(), writes))
}

/// Writes the batch in one transaction; one answer per write, in order.
async fn commit(writer: SqlitePool, writes: Vec<Write>) -> Vec<StoreResult<Written>> {
    let count = writes.len();
    let mut answers = Vec::with_capacity(count);
    let committed: StoreResult<()> = async {
        let mut tx = writer.begin().await?;
        // Submitters whose share an earlier job of this batch brought up to
        // date (with the same weight): see `insert_job`.
        let mut current_owners: HashSet<(Option<String>, u32)> = HashSet::new();
        for write in writes {
            let mut savepoint = tx.begin().await?;
            let written = match write {
                Write::Job {
                    new,
                    audit,
                    accepted_by,
                } => {
                    let owner = (new.submitter.name.clone(), new.submitter.weight);
                    let owner_current = current_owners.contains(&owner);
                    let created = match super::submit::insert_job(
                        &mut savepoint,
                        &new,
                        accepted_by,
                        owner_current,
                    )
                    .await
                    {
                        Ok(created) => created,
                        Err(error) => {
                            savepoint.rollback().await?;
                            answers.push(Err(error));
                            continue;
                        }
                    };
                    if matches!(created, Created::New(_)) {
                        current_owners.insert(owner);
                    } else {
                        // A refusal may come after the job's rows were
                        // written: only its audit record stays.
                        savepoint.rollback().await?;
                        savepoint = tx.begin().await?;
                    }
                    let entry = audit.map(|audit| audit(&created));
                    let recorded = match &entry {
                        Some(entry) => {
                            SqlStore::<Sqlite>::insert_audit(&mut savepoint, entry).await
                        }
                        None => Ok(()),
                    };
                    recorded.map(|()| Written::Job(Box::new((created, entry))))
                }
                Write::Audit(entry) => SqlStore::<Sqlite>::insert_audit(&mut savepoint, &entry)
                    .await
                    .map(|()| Written::Audited),
                Write::Queue(write) => write(&mut savepoint).await.map(Written::Queue),
            };
            match written {
                Ok(written) => {
                    savepoint.commit().await?;
                    answers.push(Ok(written));
                }
                Err(error) => {
                    // If this fails too, the transaction is gone (SQLite
                    // rolled it back for a full disk or an I/O error).
                    savepoint.rollback().await?;
                    answers.push(Err(error));
                }
            }
        }
        tx.commit().await.context("committing a batch of writes")?;
        Ok(())
    }
    .await;
    if let Err(error) = committed {
        let error = Arc::new(error);
        answers = (0..count)
            .map(|_| Err(anyhow::Error::new(BatchFailed(error.clone()))))
            .collect();
    }
    answers
}

/// A batch's failure, answered to each of its requests, with the original
/// error as its cause: a busy or full database is still told apart from a
/// bug (`api::error::DatabaseTrouble::of` reads the causes).
#[derive(Debug)]
struct BatchFailed(Arc<anyhow::Error>);

impl fmt::Display for BatchFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("writing a batch")
    }
}

impl std::error::Error for BatchFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&**self.0)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use futures_util::future::join_all;
    use uuid::Uuid;

    use super::*;
    use crate::domain::spec::{JobSpec, Limits, plan};
    use crate::store::Store;
    use crate::store::Submitter;

    fn job(tag: &str, key: Option<&str>, spec_hash: &str, max_pending: usize) -> NewJob {
        let spec: JobSpec = serde_json::from_value(serde_json::json!({
            "repo": "127.0.0.1:5000/a",
            "images": [{"name": "app", "source": "src:1"}],
            "tags": [{"strategy": "custom", "value": tag}]
        }))
        .unwrap();
        NewJob {
            id: Uuid::now_v7(),
            plan: plan(&spec, Limits::default()).unwrap(),
            max_pending,
            has_registry_auth: false,
            idempotency_key: key.map(str::to_owned),
            spec_hash: spec_hash.to_owned(),
            submitter: Submitter::anonymous(),
            engine: None,
        }
    }

    async fn open(dir: &Path) -> Store {
        Store::open_sqlite(&dir.join("publishd.db")).await.unwrap()
    }

    async fn count(dir: &Path, sql: &str) -> i64 {
        let path = dir.join("publishd.db");
        let reader = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", path.display()))
            .await
            .unwrap();
        sqlx::query_scalar(sql).fetch_one(&reader).await.unwrap()
    }

    // On the test's single-threaded runtime, every submission of a
    // `join_all` is queued before the writer task runs: they are one batch.

    #[tokio::test]
    async fn one_key_in_one_batch_makes_one_job() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).await;
        let mut submissions: Vec<_> = (0..20)
            .map(|_| store.create_job(job("v1", Some("k"), "same", 100)))
            .collect();
        submissions.push(store.create_job(job("v2", Some("k"), "other", 100)));
        let answers = join_all(submissions).await;
        let mut ids = Vec::new();
        let (mut new, mut existing) = (0, 0);
        for answer in &answers[..20] {
            match answer.as_ref().unwrap() {
                Created::New(job) => {
                    new += 1;
                    ids.push(job.id);
                }
                Created::Existing(job) => {
                    existing += 1;
                    ids.push(job.id);
                }
                _ => panic!("a submission with the same key and body was refused"),
            }
        }
        assert_eq!((new, existing), (1, 19));
        assert!(ids.iter().all(|id| *id == ids[0]));
        assert!(matches!(answers[20].as_ref().unwrap(), Created::KeyReused));
        assert_eq!(count(dir.path(), "SELECT count(*) FROM jobs").await, 1);
    }

    #[tokio::test]
    async fn refusals_in_a_batch_leave_the_others_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).await;
        let mut jobs: Vec<NewJob> = (0..10)
            .map(|i| job(&format!("v{i}"), None, "h", 5))
            .collect();
        // A write that fails in SQL (the same job id twice): only its own
        // savepoint is rolled back.
        let mut twin = job("twin", None, "h", 100);
        twin.id = jobs[0].id;
        jobs.push(twin);
        let answers = join_all(jobs.into_iter().map(|new| store.create_job(new))).await;
        let accepted = answers
            .iter()
            .filter(|answer| matches!(answer, Ok(Created::New(_))))
            .count();
        let overloaded = answers
            .iter()
            .filter(|answer| matches!(answer, Ok(Created::Overloaded { pending: 5 })))
            .count();
        assert_eq!((accepted, overloaded), (5, 5));
        let failed = answers[10].as_ref().err().expect("the twin failed");
        assert!(format!("{failed:#}").contains("UNIQUE"), "{failed:#}");
        assert_eq!(count(dir.path(), "SELECT count(*) FROM jobs").await, 5);
        assert_eq!(
            count(
                dir.path(),
                "SELECT sum(n) FROM counts WHERE kind = 'target' AND status = 'pending'"
            )
            .await,
            5
        );
    }

    #[tokio::test]
    async fn every_acknowledged_job_is_there_after_a_restart_as_answered() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).await;
        let jobs = (0..50).map(|i| job(&format!("v{i}"), None, "h", 1000));
        let audits = (0..50).map(|i| AuditEntry {
            actor: None,
            action: "job.cancel",
            outcome: "refused",
            job_id: None,
            detail: serde_json::json!({"i": i}),
        });
        let (answers, audited) = tokio::join!(
            join_all(jobs.map(|new| store.create_job(new))),
            join_all(audits.map(|entry| store.record_audit(entry)))
        );
        assert!(audited.iter().all(Result::is_ok));
        drop(store);
        let store = open(dir.path()).await;
        for answer in answers {
            let Created::New(answered) = answer.unwrap() else {
                panic!("refused")
            };
            let stored = store.get_job(answered.id).await.unwrap().expect("kept");
            assert_eq!(
                serde_json::to_value(&answered).unwrap(),
                serde_json::to_value(&stored).unwrap()
            );
        }
        assert_eq!(count(dir.path(), "SELECT count(*) FROM audit").await, 50);
        assert_eq!(
            count(
                dir.path(),
                "SELECT sum(n) FROM counts WHERE kind = 'target' AND status = 'pending'"
            )
            .await,
            50
        );
    }
}
