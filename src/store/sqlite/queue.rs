//! The queue in SQLite: claims, leases on this process's monotonic clock
//! (one publishd per database file), the fenced writes a lane makes while
//! it runs a target, and the take-overs recovery makes.

use std::time::Duration;

use anyhow::Context;
use sqlx::Row;
use uuid::Uuid;

use super::{SqliteStore, load_claimed, parse_uuid, refresh_job};
use crate::domain::publish_via::PublishedVia;
use crate::domain::source::ResolvedSource;
use crate::domain::status::{JobStatus, TargetStatus};
use crate::store::model::{ClaimedTarget, TargetOutcome};
use crate::store::queue::fenced;
use crate::store::{
    Bound, Claim, ClaimLost, IN_FLIGHT, Release, Released, StoreResult, TakeOver, bounded, now,
};

impl SqliteStore {
    /// Milliseconds on this store's monotonic clock.
    fn now_ms(&self) -> i64 {
        i64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    fn lease_end_ms(&self, lease: Duration) -> i64 {
        self.now_ms()
            .saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX))
    }

    /// Claims the oldest pending target whose reference no other target is
    /// working on, in one statement: two lanes can never hold one reference.
    /// A `content` target whose source was not resolved yet has no
    /// reference; it takes one with [`SqliteStore::bind_reference`]. What the
    /// previous run recorded of the engine moves to `previous_*`, so a run
    /// that dies before recording its own plan is never undone with another
    /// run's records.
    pub async fn claim_target(&self, lease: Duration) -> StoreResult<Option<ClaimedTarget>> {
        // Idle lanes look for work twice a second each: with nothing
        // pending, a look on a reader leaves the writer connection free, and
        // the reads kept while it is idle current (`answers.rs`). A target
        // committed after this look wakes the lanes.
        let pending: i64 = sqlx::query_scalar("SELECT count FROM pending_targets")
            .fetch_one(&self.reader)
            .await
            .context("reading the number of pending targets")?;
        if pending == 0 {
            return Ok(None);
        }
        let now = now();
        let token = Uuid::now_v7().to_string();
        let lease_end = self.lease_end_ms(lease);
        self.write_batched(move |conn| {
            Box::pin(async move {
                let claimed = sqlx::query(&format!(
                    "UPDATE targets
                     SET status = 'tagging', attempts = attempts + 1, runs = runs + 1, error = NULL,
                         started_at = COALESCE(started_at, ?1), claim_token = ?2, lease_expires_ms = ?3,
                         previous_prior_image_id = CASE WHEN created_image_id IS NOT NULL
                             THEN prior_image_id ELSE previous_prior_image_id END,
                         previous_created_image_id = COALESCE(created_image_id, previous_created_image_id),
                         prior_image_id = NULL, created_image_id = NULL, staging_reference = NULL,
                         not_before = NULL
                     WHERE id = (
                         SELECT t.id FROM targets t JOIN jobs j ON j.id = t.job_id
                              LEFT JOIN owners o ON o.name = j.submitted_by
                         WHERE t.status = 'pending' AND j.cancel_requested = 0
                           AND (t.not_before IS NULL OR t.not_before <= ?1)
                           AND (t.reference_key IS NULL OR NOT EXISTS (
                                SELECT 1 FROM targets u
                                WHERE u.reference_key = t.reference_key AND u.status IN {IN_FLIGHT}))
                         ORDER BY COALESCE(o.pass, 0), t.job_id, t.position
                         LIMIT 1)
                     RETURNING id"
                ))
                .bind(&now)
                .bind(&token)
                .bind(lease_end)
                .fetch_optional(&mut *conn)
                .await
                .context("claiming a target")?;
                let Some(row) = claimed else {
                    return Ok(None);
                };
                let target = load_claimed(conn, row.get("id")).await?;
                // The submitter's turn is taken: the next claim goes to whoever has
                // had the least, by weight.
                sqlx::query(
                    "UPDATE owners SET pass = pass + 1.0 / weight
                     WHERE name = (SELECT submitted_by FROM jobs WHERE id = ?)",
                )
                .bind(target.job_id.to_string())
                .execute(&mut *conn)
                .await
                .context("advancing the submitter's turn")?;
                refresh_job(conn, target.job_id).await?;
                Ok(Some(target))
            })
        })
        .await
    }

    /// Extends a claim's lease; answers false if the claim is no longer
    /// the target's.
    pub async fn renew_lease(&self, claim: &Claim, lease: Duration) -> StoreResult<bool> {
        let result = sqlx::query(&format!(
            "UPDATE targets SET lease_expires_ms = ?
             WHERE id = ? AND claim_token = ? AND status IN {IN_FLIGHT}"
        ))
        .bind(self.lease_end_ms(lease))
        .bind(claim.target_id)
        .bind(&claim.token)
        .execute(&self.writer)
        .await
        .context("renewing a lease")?;
        Ok(result.rows_affected() == 1)
    }

    /// Gives a claimed `content` target its tag and reference, unless
    /// another target is working on that reference right now: then the
    /// target goes back to the queue with its reference (so it waits for the
    /// other), or is cancelled if its job was.
    pub async fn bind_reference(
        &self,
        claim: &Claim,
        tag: &str,
        reference: &str,
    ) -> StoreResult<Bound> {
        let mut tx = self.writer.begin().await?;
        let key = super::reference_key(reference);
        let row = sqlx::query(&format!(
            "SELECT EXISTS (SELECT 1 FROM targets
                            WHERE reference_key = ?1 AND id <> ?2 AND status IN {IN_FLIGHT}) AS busy,
                    (SELECT j.cancel_requested FROM targets t JOIN jobs j ON j.id = t.job_id
                     WHERE t.id = ?2) AS cancelled"
        ))
        .bind(&key)
        .bind(claim.target_id)
        .fetch_one(&mut *tx)
        .await?;
        let (busy, cancelled): (bool, bool) = (row.get("busy"), row.get("cancelled"));
        let bound = match (busy, cancelled) {
            (false, _) => Bound::Bound,
            (true, false) => Bound::Busy,
            (true, true) => Bound::Cancelled,
        };
        // Deferring is not a run of the target, nor a try.
        let result = sqlx::query(&format!(
            "UPDATE targets SET tag = ?1, reference = ?2, reference_key = ?3,
                 status = CASE ?4 WHEN 'bound' THEN 'tagging' WHEN 'busy' THEN 'pending'
                                  ELSE 'cancelled' END,
                 finished_at = CASE ?4 WHEN 'cancelled' THEN ?5 ELSE NULL END,
                 error = CASE ?4 WHEN 'cancelled' THEN 'cancelled before it started' ELSE NULL END,
                 claim_token = CASE ?4 WHEN 'bound' THEN claim_token ELSE NULL END,
                 runs = CASE ?4 WHEN 'bound' THEN runs ELSE runs - 1 END,
                 attempts = CASE ?4 WHEN 'bound' THEN attempts ELSE attempts - 1 END
             WHERE id = ?6 AND claim_token = ?7 AND status IN {IN_FLIGHT}"
        ))
        .bind(tag)
        .bind(reference)
        .bind(&key)
        .bind(match bound {
            Bound::Bound => "bound",
            Bound::Busy => "busy",
            Bound::Cancelled => "cancelled",
        })
        .bind(now())
        .bind(claim.target_id)
        .bind(&claim.token)
        .execute(&mut *tx)
        .await
        .context("binding a content reference")?;
        fenced(result.rows_affected(), claim)?;
        let job_id: String = sqlx::query_scalar("SELECT job_id FROM targets WHERE id = ?")
            .bind(claim.target_id)
            .fetch_one(&mut *tx)
            .await?;
        refresh_job(&mut tx, parse_uuid(job_id)?).await?;
        tx.commit().await?;
        Ok(bound)
    }

    /// Records, before the tag step touches the engine, what the reference
    /// named and the id of the image about to be made: what recovery needs
    /// to undo the step whenever the process dies. `created_image_id` is
    /// known in advance for a load; a build's image is known only once
    /// built, so its temporary name is recorded instead.
    pub async fn record_tag_plan(
        &self,
        claim: &Claim,
        prior_image_id: Option<&str>,
        created_image_id: Option<&str>,
        staging_reference: Option<&str>,
    ) -> StoreResult<()> {
        let claim = claim.clone();
        let (prior, created, staging) = (
            prior_image_id.map(str::to_owned),
            created_image_id.map(str::to_owned),
            staging_reference.map(str::to_owned),
        );
        self.write_batched(move |conn| {
            Box::pin(async move {
                let result = sqlx::query(
                    "UPDATE targets SET prior_image_id = ?, created_image_id = ?, staging_reference = ?
                     WHERE id = ? AND claim_token = ?",
                )
                .bind(prior)
                .bind(created)
                .bind(staging)
                .bind(claim.target_id)
                .bind(&claim.token)
                .execute(&mut *conn)
                .await
                .context("recording the tag step's plan")?;
                fenced(result.rows_affected(), &claim)
            })
        })
        .await
    }

    /// Records the image a build made, before its target reference is
    /// pointed at it.
    pub async fn record_created_image(
        &self,
        claim: &Claim,
        created_image_id: &str,
    ) -> StoreResult<()> {
        let result =
            sqlx::query("UPDATE targets SET created_image_id = ? WHERE id = ? AND claim_token = ?")
                .bind(created_image_id)
                .bind(claim.target_id)
                .bind(&claim.token)
                .execute(&self.writer)
                .await
                .context("recording the built image")?;
        fenced(result.rows_affected(), claim)
    }

    pub async fn set_step(&self, claim: &Claim, status: TargetStatus) -> StoreResult<()> {
        let claim = claim.clone();
        self.write_batched(move |conn| {
            Box::pin(async move {
                let result =
                    sqlx::query("UPDATE targets SET status = ? WHERE id = ? AND claim_token = ?")
                        .bind(status.as_str())
                        .bind(claim.target_id)
                        .bind(&claim.token)
                        .execute(&mut *conn)
                        .await
                        .context("recording a step")?;
                fenced(result.rows_affected(), &claim)
            })
        })
        .await
    }

    /// Records a failed try of `step`; when another try follows, counts it.
    pub async fn record_failed_attempt(
        &self,
        claim: &Claim,
        step: &str,
        error: &str,
        retrying: bool,
    ) -> StoreResult<()> {
        let result = sqlx::query(
            "UPDATE targets SET
                 attempt_errors = json_insert(attempt_errors, '$[#]',
                     json_object('attempt', attempts, 'step', ?, 'error', ?, 'at', ?)),
                 attempts = attempts + ?
             WHERE id = ? AND claim_token = ?",
        )
        .bind(step)
        .bind(bounded(error))
        .bind(now())
        .bind(i64::from(retrying))
        .bind(claim.target_id)
        .bind(&claim.token)
        .execute(&self.writer)
        .await
        .context("recording a failed attempt")?;
        fenced(result.rows_affected(), claim)
    }

    /// Records how a target ended and brings its job's status up to date;
    /// answers the job's new status.
    pub async fn finish_target(
        &self,
        claim: &Claim,
        outcome: &TargetOutcome,
        warnings: &[String],
    ) -> StoreResult<JobStatus> {
        let (status, digest, error, up_to_date, via) = match outcome {
            TargetOutcome::Succeeded {
                digest,
                up_to_date,
                published_via,
            } => (
                "succeeded",
                Some(digest.as_str()),
                None,
                *up_to_date,
                published_via.map(PublishedVia::as_str),
            ),
            TargetOutcome::Failed { error } => ("failed", None, Some(bounded(error)), false, None),
            TargetOutcome::Cancelled => {
                ("cancelled", None, Some("cancelled".to_owned()), false, None)
            }
        };
        let (digest, via) = (digest.map(str::to_owned), via);
        let warnings: Vec<String> = warnings.iter().map(|w| bounded(w)).collect();
        let warnings = serde_json::to_string(&warnings)?;
        let claim = claim.clone();
        let now = now();
        self.write_batched(move |conn| {
            Box::pin(async move {
                let job_id: Option<String> = sqlx::query_scalar(&format!(
                    "UPDATE targets SET status = ?, digest = ?, error = ?, up_to_date = ?,
                                        published_via = ?,
                                        warnings = (SELECT json_group_array(value) FROM (
                                            SELECT 0 AS part, key, value FROM json_each(targets.warnings)
                                            UNION ALL SELECT 1, key, value FROM json_each(?)
                                            ORDER BY part, key)),
                                        finished_at = ?, claim_token = NULL, lease_expires_ms = NULL
                     WHERE id = ? AND claim_token = ? AND status IN {IN_FLIGHT} RETURNING job_id"
                ))
                .bind(status)
                .bind(digest)
                .bind(error)
                .bind(up_to_date)
                .bind(via)
                .bind(warnings)
                .bind(now)
                .bind(claim.target_id)
                .bind(&claim.token)
                .fetch_optional(&mut *conn)
                .await
                .context("finishing a target")?;
                let job_id = job_id.ok_or(ClaimLost {
                    target_id: claim.target_id,
                })?;
                refresh_job(conn, parse_uuid(job_id)?).await
            })
        })
        .await
    }

    /// Puts a claimed target back in the queue, cancels it if its job was
    /// cancelled, or fails it as a dead letter after too many runs that
    /// never finished.
    pub async fn release_target(&self, claim: &Claim, release: Release) -> StoreResult<Released> {
        let (counts, max_runs, warning) = match &release {
            Release::Stopped => (false, u32::MAX, None),
            Release::Abandoned { warning, max_runs } => (true, *max_runs, warning.clone()),
        };
        let mut tx = self.writer.begin().await?;
        let row = sqlx::query(&format!(
            "UPDATE targets SET
                 runs = runs - CASE WHEN ?1 THEN 0 ELSE 1 END,
                 attempts = attempts - CASE WHEN ?1 THEN 0 ELSE 1 END,
                 status = CASE
                     WHEN (SELECT cancel_requested FROM jobs WHERE jobs.id = targets.job_id)
                         THEN 'cancelled'
                     WHEN ?1 AND runs >= ?2 THEN 'failed'
                     ELSE 'pending' END,
                 dead_letter = CASE
                     WHEN (SELECT cancel_requested FROM jobs WHERE jobs.id = targets.job_id) THEN 0
                     WHEN ?1 AND runs >= ?2 THEN 1 ELSE 0 END,
                 error = CASE
                     WHEN (SELECT cancel_requested FROM jobs WHERE jobs.id = targets.job_id)
                         THEN 'cancelled'
                     WHEN ?1 AND runs >= ?2 THEN 'dead letter: ' || runs || ' runs of this target '
                         || 'never finished (each was cut short: its worker crashed, it lost its '
                         || 'lease, or publishd died); it is not run again'
                     ELSE NULL END,
                 finished_at = CASE
                     WHEN (SELECT cancel_requested FROM jobs WHERE jobs.id = targets.job_id)
                         OR (?1 AND runs >= ?2) THEN ?3 ELSE NULL END,
                 warnings = CASE WHEN ?4 IS NULL THEN warnings
                                 ELSE json_insert(warnings, '$[#]', ?4) END,
                 claim_token = NULL, lease_expires_ms = NULL
             WHERE id = ?5 AND claim_token = ?6 AND status IN {IN_FLIGHT}
             RETURNING job_id, status"
        ))
        .bind(counts)
        .bind(i64::from(max_runs))
        .bind(now())
        .bind(warning.as_deref().map(bounded))
        .bind(claim.target_id)
        .bind(&claim.token)
        .fetch_optional(&mut *tx)
        .await
        .context("releasing a target")?
        .ok_or(ClaimLost {
            target_id: claim.target_id,
        })?;
        let status: String = row.get("status");
        refresh_job(&mut tx, parse_uuid(row.get("job_id"))?).await?;
        tx.commit().await?;
        Ok(match status.as_str() {
            "cancelled" => Released::Cancelled,
            "failed" => Released::DeadLetter,
            _ => Released::Queued,
        })
    }

    /// Puts back a target whose job brought credentials that a restart lost:
    /// it is not claimed again before `retry_at`, and fails once
    /// `wait_until` (kept from the first wait) has passed. Not a run, nor a
    /// try. Cancelled instead if its job was cancelled meanwhile (a pending
    /// target of a cancelled job would never be claimed again).
    pub async fn wait_for_credentials(
        &self,
        claim: &Claim,
        wait_until: &str,
        retry_at: &str,
    ) -> StoreResult<()> {
        let mut tx = self.writer.begin().await?;
        let job_id: Option<String> = sqlx::query_scalar(&format!(
            "UPDATE targets SET
                 status = CASE WHEN (SELECT cancel_requested FROM jobs WHERE jobs.id = targets.job_id)
                          THEN 'cancelled' ELSE 'pending' END,
                 error = CASE WHEN (SELECT cancel_requested FROM jobs WHERE jobs.id = targets.job_id)
                         THEN 'cancelled' ELSE error END,
                 finished_at = CASE WHEN (SELECT cancel_requested FROM jobs WHERE jobs.id = targets.job_id)
                               THEN ?1 ELSE NULL END,
                 attempts = attempts - 1, runs = runs - 1,
                 claim_token = NULL, lease_expires_ms = NULL, not_before = ?2,
                 credentials_wait_until = COALESCE(credentials_wait_until, ?3)
             WHERE id = ?4 AND claim_token = ?5 AND status IN {IN_FLIGHT} RETURNING job_id"
        ))
        .bind(now())
        .bind(retry_at)
        .bind(wait_until)
        .bind(claim.target_id)
        .bind(&claim.token)
        .fetch_optional(&mut *tx)
        .await
        .context("putting a target back to wait for credentials")?;
        let job_id = job_id.ok_or(ClaimLost {
            target_id: claim.target_id,
        })?;
        refresh_job(&mut tx, parse_uuid(job_id)?).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The job was resubmitted with its credentials: its waiting targets may
    /// be claimed at once.
    pub async fn credentials_arrived(&self, job_id: Uuid) -> StoreResult<()> {
        sqlx::query(
            "UPDATE targets SET not_before = NULL, credentials_wait_until = NULL
             WHERE job_id = ? AND status = 'pending'",
        )
        .bind(job_id.to_string())
        .execute(&self.writer)
        .await
        .context("waking targets that waited for credentials")?;
        Ok(())
    }

    /// Takes a target in flight over from the run that held it, if
    /// `condition` holds, with a fresh claim for recovery to use: from then
    /// on every write of the old run changes nothing.
    pub async fn take_over(
        &self,
        target_id: i64,
        condition: TakeOver<'_>,
        lease: Duration,
    ) -> StoreResult<Option<Claim>> {
        let token = Uuid::now_v7().to_string();
        let (held_by, expired_before) = match condition {
            TakeOver::Any => (None, None),
            TakeOver::Expired { token } => (Some(token), Some(self.now_ms())),
            TakeOver::Held { token } => (Some(token), None),
        };
        let result = sqlx::query(&format!(
            "UPDATE targets SET claim_token = ?1, lease_expires_ms = ?2
             WHERE id = ?3 AND status IN {IN_FLIGHT}
               AND (?4 IS NULL OR claim_token = ?4)
               AND (?5 IS NULL OR lease_expires_ms IS NULL OR lease_expires_ms < ?5)"
        ))
        .bind(&token)
        .bind(self.lease_end_ms(lease))
        .bind(target_id)
        .bind(held_by)
        .bind(expired_before)
        .execute(&self.writer)
        .await
        .context("taking over a target")?;
        Ok((result.rows_affected() == 1).then_some(Claim { target_id, token }))
    }

    /// Targets left mid-step: at start-up these belong to a process that died.
    pub async fn in_flight_targets(&self) -> StoreResult<Vec<i64>> {
        let ids = sqlx::query_scalar(&format!(
            "SELECT id FROM targets WHERE status IN {IN_FLIGHT}"
        ))
        .fetch_all(&self.reader)
        .await
        .context("listing targets in flight")?;
        Ok(ids)
    }

    /// Claims whose lease ran out: (target id, claim token). Read without
    /// the writer, so it answers while the writer is held.
    pub async fn expired_leases(&self) -> StoreResult<Vec<(i64, String)>> {
        let rows = sqlx::query(&format!(
            "SELECT id, claim_token FROM targets
             WHERE status IN {IN_FLIGHT} AND claim_token IS NOT NULL
               AND (lease_expires_ms IS NULL OR lease_expires_ms < ?)"
        ))
        .bind(self.now_ms())
        .fetch_all(&self.reader)
        .await
        .context("listing expired leases")?;
        Ok(rows
            .iter()
            .map(|row| (row.get("id"), row.get("claim_token")))
            .collect())
    }

    pub async fn cancel_requested(&self, job_id: Uuid) -> StoreResult<bool> {
        let requested = sqlx::query_scalar("SELECT cancel_requested FROM jobs WHERE id = ?")
            .bind(job_id.to_string())
            .fetch_one(&self.reader)
            .await
            .context("reading a job's cancel flag")?;
        Ok(requested)
    }

    /// A target as a lane sees it, with what its last run recorded.
    pub async fn claimed_target(&self, id: i64) -> StoreResult<ClaimedTarget> {
        let mut tx = self.writer.begin().await?;
        let target = load_claimed(&mut tx, id).await?;
        tx.commit().await?;
        Ok(target)
    }

    /// Records what an image of a job resolved to, unless another target of
    /// the image resolved it first; answers what every target of the image
    /// publishes.
    pub async fn resolve_source(
        &self,
        job_id: Uuid,
        image_position: i64,
        resolved: &ResolvedSource,
    ) -> StoreResult<ResolvedSource> {
        // Both columns are set together: the first resolution wins whole.
        let (image_id, manifest_digest) = sqlx::query_as(
            "UPDATE job_images
             SET source_digest = CASE WHEN source_image_id IS NULL THEN ? ELSE source_digest END,
                 source_image_id = COALESCE(source_image_id, ?)
             WHERE job_id = ? AND position = ? RETURNING source_image_id, source_digest",
        )
        .bind(&resolved.manifest_digest)
        .bind(&resolved.image_id)
        .bind(job_id.to_string())
        .bind(image_position)
        .fetch_one(&self.writer)
        .await
        .context("recording a resolved source")?;
        Ok(ResolvedSource {
            image_id,
            manifest_digest,
        })
    }
}
