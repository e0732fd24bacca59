//! A submission on SQLite, in a savepoint of the group-commit writer's
//! batch (`group_commit.rs`): one writer, so what it reads stays true until
//! it has written.

use anyhow::Context;
use sqlx::{Sqlite, SqliteConnection};
use uuid::Uuid;

use crate::domain::naming::reference_key;
use crate::domain::publish_via::PublishVia;
use crate::store::rows::{parse_uuid, platforms_column};
use crate::store::sql::{Dialect, SqlStore};
use crate::store::{Created, IN_FLIGHT, NewJob, StoreResult, now, queued_job};

/// The number of pending targets, as the triggers count them.
pub(super) const PENDING_COUNT: &str = "SELECT CAST(COALESCE(sum(n), 0) AS BIGINT) FROM counts
     WHERE kind = 'target' AND status = 'pending'";

/// What an earlier submission with the same idempotency key (keys are
/// the submitter's own: another token's job is never found) says of
/// this one: its job, a refusal if the body differs, or `None`.
async fn keyed_submission(
    conn: &mut SqliteConnection,
    new: &NewJob,
) -> StoreResult<Option<Created>> {
    let Some(key) = &new.idempotency_key else {
        return Ok(None);
    };
    let seen: Option<(String, String)> = sqlx::query_as(
        "SELECT id, spec_hash FROM jobs WHERE submitted_by = $1 AND idempotency_key = $2",
    )
    .bind(new.submitter.name.as_deref().unwrap_or(""))
    .bind(key.as_str())
    .fetch_optional(&mut *conn)
    .await
    .context("looking up the idempotency key")?;
    let Some((id, hash)) = seen else {
        return Ok(None);
    };
    if hash != new.spec_hash {
        return Ok(Some(Created::KeyReused));
    }
    let job = SqlStore::<Sqlite>::load_job(conn, parse_uuid(id)?)
        .await?
        .context("job vanished")?;
    Ok(Some(Created::Existing(job)))
}

/// Writes one submission (in the caller's transaction): the
/// idempotency key, the queue limits, the submitter's share, the job.
/// PostgreSQL's `publishd_submit` does the same. A refusal may come after
/// the job's rows were written: the caller rolls them back. `owner_current`: an earlier job of the same transaction already
/// brought the submitter's share up to date and left it queued targets.
pub(super) async fn insert_job(
    conn: &mut SqliteConnection,
    new: &NewJob,
    accepted_by: Uuid,
    owner_current: bool,
) -> StoreResult<Created> {
    if let Some(created) = keyed_submission(conn, new).await? {
        return Ok(created);
    }
    let submitter = new.submitter.name.as_deref().unwrap_or("");
    let now = now();
    let inserted = sqlx::query(
        "INSERT INTO jobs (id, status, repo, repo_mode, force, has_registry_auth,
                           idempotency_key, spec_hash, created_at, submitted_by,
                           use_service_credentials, required_labels, read_repos,
                           callback_url, publish_via, engine, accepted_by, platforms)
         VALUES ($1, 'queued', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
                 $16, $17)",
    )
    .bind(new.id.to_string())
    .bind(new.plan.repo.as_str())
    .bind(new.plan.repo_mode.as_str())
    .bind(new.plan.force)
    .bind(new.has_registry_auth)
    .bind(new.idempotency_key.clone())
    .bind(new.spec_hash.as_str())
    .bind(now.as_str())
    .bind(submitter)
    .bind(new.submitter.use_service_credentials)
    .bind(serde_json::to_string(&new.submitter.required_labels)?)
    .bind(serde_json::to_string(&new.submitter.read_repos)?)
    .bind(
        new.plan
            .callback
            .as_ref()
            .map(|callback| callback.url.clone()),
    )
    .bind(new.plan.publish_via.map(PublishVia::as_str))
    .bind(new.engine.clone())
    .bind(new.has_registry_auth.then(|| accepted_by.to_string()))
    .bind(platforms_column(&new.plan.platforms))
    .execute(&mut *conn)
    .await;
    inserted.context("inserting the job")?;
    insert_images(conn, new).await?;
    // Read in the same transaction as the insert: concurrent submissions
    // cannot overshoot the limit together. A count kept by triggers,
    // since counting the rows costs as much as the queue is long.
    let pending: i64 = sqlx::query_scalar(PENDING_COUNT)
        .fetch_one(&mut *conn)
        .await
        .context("reading the number of pending targets")?;
    if pending.saturating_add(new.plan.targets.len() as i64) > new.max_pending as i64 {
        return Ok(Created::Overloaded { pending });
    }
    if let Some(overloaded) = submitter_overloaded(conn, new).await? {
        return Ok(overloaded);
    }
    // A submitter that was idle starts level with the least-served one
    // still queued, not with the credit of its idle time.
    if !owner_current {
        let active = |owner: &str| {
            format!(
                "EXISTS (SELECT 1 FROM targets t WHERE t.submitted_by = {owner}
                         AND (t.status = 'pending' OR t.status IN {IN_FLIGHT}))"
            )
        };
        sqlx::query(&format!(
            "INSERT INTO owners (name, weight, pass) VALUES ($1, $2,
                 COALESCE((SELECT MIN(o.pass) FROM owners o WHERE {}), 0))
             ON CONFLICT (name) DO UPDATE SET weight = excluded.weight,
                 pass = CASE WHEN {} THEN owners.pass ELSE {} END",
            active("o.name"),
            active("owners.name"),
            Sqlite::greatest("owners.pass", "excluded.pass"),
        ))
        .bind(submitter)
        .bind(i64::from(new.submitter.weight))
        .execute(&mut *conn)
        .await
        .context("recording the submitter's share")?;
    }
    insert_targets(conn, new).await?;
    Ok(Created::New(queued_job(new, now)))
}

/// The submitter's own limit on pending targets, if `new` would pass it.
async fn submitter_overloaded(
    conn: &mut SqliteConnection,
    new: &NewJob,
) -> StoreResult<Option<Created>> {
    let Some(limit) = new.submitter.max_queued_targets else {
        return Ok(None);
    };
    let pending: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM targets WHERE submitted_by = $1 AND status = 'pending'",
    )
    .bind(new.submitter.name.as_deref().unwrap_or(""))
    .fetch_one(&mut *conn)
    .await
    .context("counting the submitter's pending targets")?;
    Ok(
        (pending.saturating_add(new.plan.targets.len() as i64) > limit as i64)
            .then_some(Created::SubmitterOverloaded { pending, limit }),
    )
}

/// The job's images.
async fn insert_images(conn: &mut SqliteConnection, new: &NewJob) -> StoreResult<()> {
    for (position, image) in new.plan.images.iter().enumerate() {
        sqlx::query(
            "INSERT INTO job_images (job_id, position, name, source, source_image_id,
                                     source_digest)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(new.id.to_string())
        .bind(position as i64)
        .bind(&image.name)
        .bind(&image.source)
        .bind(&image.source_image_id)
        .bind(&image.source_digest)
        .execute(&mut *conn)
        .await
        .context("inserting an image")?;
    }
    Ok(())
}

/// The job's targets, pending.
async fn insert_targets(conn: &mut SqliteConnection, new: &NewJob) -> StoreResult<()> {
    let submitter = new.submitter.name.as_deref().unwrap_or("");
    for (position, target) in new.plan.targets.iter().enumerate() {
        sqlx::query(
            "INSERT INTO targets (job_id, position, image_position, image_name, source,
                                  strategy, tag, reference, reference_key, status,
                                  submitted_by, engine)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', $10, $11)",
        )
        .bind(new.id.to_string())
        .bind(position as i64)
        .bind(target.image_index as i64)
        .bind(&target.image_name)
        .bind(&target.source)
        .bind(target.strategy.as_str())
        .bind(&target.tag)
        .bind(&target.reference)
        .bind(target.reference.as_deref().map(reference_key))
        .bind(submitter)
        .bind(&new.engine)
        .execute(&mut *conn)
        .await
        .context("inserting a target")?;
    }
    Ok(())
}
