//! Submissions on PostgreSQL: each instance sends what arrives together as
//! one batch, in one call of `publishd_submit` (see the migration), which
//! commits on its own. No transaction spans a round trip, so a client cut
//! off mid-submission holds nothing any other instance waits for; and a
//! batch whose answer the network lost is sent again as it was: its jobs
//! carry their ids, and a job already there is answered as new.

use anyhow::Context;
use serde::Serialize;
use sqlx::{PgPool, Postgres};
use uuid::Uuid;

use super::cut_off;
use crate::domain::naming::reference_key;
use crate::domain::publish_via::PublishVia;
use crate::store::batch::Batcher;
use crate::store::rows::platforms_column;
use crate::store::sql::SqlStore;
use crate::store::{AuditEntry, AuditOf, Created, NewJob, StoreResult, now, queued_job};

/// Most jobs in one call.
const MAX_BATCH: usize = 256;

/// One submission, and what makes its audit record.
pub(super) struct Submission {
    pub new: NewJob,
    pub audit: Option<AuditOf>,
}

pub(super) type Submissions = Batcher<Submission, (Created, Option<AuditEntry>)>;

/// Starts this instance's submission task.
pub(super) fn start(pool: PgPool, accepted_by: Uuid) -> Submissions {
    Batcher::start(MAX_BATCH, move |batch| {
        submit(pool.clone(), accepted_by, batch)
    })
}

/// A job as `publishd_submit` reads it.
#[derive(Serialize)]
struct JobRecord<'a> {
    id: String,
    repo: &'a str,
    repo_mode: &'a str,
    force: bool,
    has_registry_auth: bool,
    idempotency_key: Option<&'a str>,
    spec_hash: &'a str,
    created_at: &'a str,
    submitted_by: &'a str,
    weight: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_queued: Option<usize>,
    max_pending: usize,
    use_service_credentials: bool,
    required_labels: String,
    read_repos: String,
    callback_url: Option<&'a str>,
    publish_via: Option<&'a str>,
    engine: Option<&'a str>,
    accepted_by: Option<String>,
    platforms: Option<String>,
    images: Vec<ImageRecord<'a>>,
    targets: Vec<TargetRecord<'a>>,
    /// The audit records of the outcomes the call writes itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    accepted: Option<AuditRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    replayed: Option<AuditRecord>,
}

#[derive(Serialize)]
struct ImageRecord<'a> {
    position: usize,
    name: Option<&'a str>,
    source: &'a str,
    source_image_id: Option<&'a str>,
    source_digest: Option<&'a str>,
}

#[derive(Serialize)]
struct TargetRecord<'a> {
    position: usize,
    image_position: usize,
    image_name: Option<&'a str>,
    source: &'a str,
    strategy: &'a str,
    tag: Option<&'a str>,
    reference: Option<&'a str>,
    reference_key: Option<String>,
}

#[derive(Serialize)]
struct AuditRecord {
    id: String,
    at: String,
    actor: Option<String>,
    action: &'static str,
    outcome: &'static str,
    detail: String,
}

impl AuditRecord {
    fn of(entry: &AuditEntry) -> AuditRecord {
        AuditRecord {
            id: Uuid::now_v7().to_string(),
            at: now(),
            actor: entry.actor.clone(),
            action: entry.action,
            outcome: entry.outcome,
            detail: entry.detail.to_string(),
        }
    }
}

fn record<'a>(submission: &'a Submission, created_at: &'a str, accepted_by: Uuid) -> JobRecord<'a> {
    let new = &submission.new;
    let plan = &new.plan;
    let queued = || queued_job(new, created_at.to_owned());
    let audit_of = |created: Created| {
        submission
            .audit
            .as_ref()
            .map(|audit| AuditRecord::of(&audit(&created)))
    };
    JobRecord {
        id: new.id.to_string(),
        repo: &plan.repo,
        repo_mode: plan.repo_mode.as_str(),
        force: plan.force,
        has_registry_auth: new.has_registry_auth,
        idempotency_key: new.idempotency_key.as_deref(),
        spec_hash: &new.spec_hash,
        created_at,
        submitted_by: new.submitter.name.as_deref().unwrap_or(""),
        weight: new.submitter.weight,
        max_queued: new.submitter.max_queued_targets,
        max_pending: new.max_pending,
        use_service_credentials: new.submitter.use_service_credentials,
        required_labels: serde_json::to_string(&new.submitter.required_labels)
            .unwrap_or_else(|_| "{}".to_owned()),
        read_repos: serde_json::to_string(&new.submitter.read_repos)
            .unwrap_or_else(|_| "[]".to_owned()),
        callback_url: plan.callback.as_ref().map(|callback| callback.url.as_str()),
        publish_via: plan.publish_via.map(PublishVia::as_str),
        engine: new.engine.as_deref(),
        accepted_by: new.has_registry_auth.then(|| accepted_by.to_string()),
        platforms: platforms_column(&plan.platforms),
        images: plan
            .images
            .iter()
            .enumerate()
            .map(|(position, image)| ImageRecord {
                position,
                name: image.name.as_deref(),
                source: &image.source,
                source_image_id: image.source_image_id.as_deref(),
                source_digest: image.source_digest.as_deref(),
            })
            .collect(),
        targets: plan
            .targets
            .iter()
            .enumerate()
            .map(|(position, target)| TargetRecord {
                position,
                image_position: target.image_index,
                image_name: target.image_name.as_deref(),
                source: &target.source,
                strategy: target.strategy.as_str(),
                tag: target.tag.as_deref(),
                reference: target.reference.as_deref(),
                reference_key: target.reference.as_deref().map(reference_key),
            })
            .collect(),
        accepted: audit_of(Created::New(queued())),
        replayed: audit_of(Created::Existing(queued())),
    }
}

/// Sends the batch (again, once, if the connection was cut before its
/// answer came) and answers each submission.
async fn submit(
    pool: PgPool,
    accepted_by: Uuid,
    batch: Vec<Submission>,
) -> Vec<StoreResult<(Created, Option<AuditEntry>)>> {
    let created_at = now();
    let answered = async {
        let records: Vec<JobRecord<'_>> = batch
            .iter()
            .map(|submission| record(submission, &created_at, accepted_by))
            .collect();
        let records = serde_json::to_string(&records)?;
        let call = || {
            sqlx::query_as::<_, (Option<String>, String, Option<i64>)>(
                "SELECT job, verdict, tally FROM publishd_submit(CAST($1 AS jsonb))",
            )
            .bind(&records)
            .fetch_all(&pool)
        };
        let verdicts = match call().await {
            Err(error) if cut_off(&error) => call().await,
            verdicts => verdicts,
        }
        .context("submitting a batch of jobs")?;
        anyhow::ensure!(
            verdicts.len() == batch.len(),
            "a batch of {} submissions was answered {} times",
            batch.len(),
            verdicts.len()
        );
        Ok::<_, anyhow::Error>(verdicts)
    }
    .await;
    let verdicts = match answered {
        Ok(verdicts) => verdicts,
        Err(error) => {
            let error = std::sync::Arc::new(error);
            return batch
                .iter()
                .map(|_| Err(anyhow::anyhow!("{error:#}")))
                .collect();
        }
    };
    let mut answers = Vec::with_capacity(batch.len());
    for (submission, (job, verdict, tally)) in batch.into_iter().zip(verdicts) {
        answers.push(answer(&pool, submission, &created_at, job, &verdict, tally).await);
    }
    answers
}

/// What the call's verdict on one submission means, with its audit record
/// (written here for a refusal: a refusal writes nothing else).
async fn answer(
    pool: &PgPool,
    submission: Submission,
    created_at: &str,
    job: Option<String>,
    verdict: &str,
    tally: Option<i64>,
) -> StoreResult<(Created, Option<AuditEntry>)> {
    let Submission { new, audit } = submission;
    let created = match (verdict, job) {
        ("new", _) => Created::New(queued_job(&new, created_at.to_owned())),
        ("existing", Some(id)) => {
            let id = Uuid::parse_str(&id).context("a job id from the database")?;
            let mut conn = pool.acquire().await?;
            let job = SqlStore::<Postgres>::load_job(&mut conn, id)
                .await?
                .context("the job of an idempotency key vanished")?;
            Created::Existing(job)
        }
        ("key_reused", _) => Created::KeyReused,
        ("overloaded", _) => Created::Overloaded {
            pending: tally.unwrap_or_default(),
        },
        ("submitter_overloaded", _) => Created::SubmitterOverloaded {
            pending: tally.unwrap_or_default(),
            limit: new.submitter.max_queued_targets.unwrap_or_default(),
        },
        (verdict, _) => anyhow::bail!("publishd_submit answered {verdict:?}"),
    };
    let entry = audit.map(|audit| audit(&created));
    if let Some(entry) = &entry
        && !matches!(created, Created::New(_) | Created::Existing(_))
    {
        let mut conn = pool.acquire().await?;
        SqlStore::<Postgres>::insert_audit(&mut conn, entry).await?;
    }
    Ok((created, entry))
}
