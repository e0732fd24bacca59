//! The queue in PostgreSQL: claims that skip what other instances hold,
//! per-reference exclusion by a unique index, leases on the database's
//! clock, the fenced writes a lane makes while it runs a target, and the
//! take-overs recovery makes.

use std::time::Duration;

use anyhow::Context;
use sqlx::Row;
use uuid::Uuid;

use super::{PgStore, load_claimed, lock_job_of, refresh_job, violates};
use crate::domain::publish_via::PublishedVia;
use crate::domain::source::ResolvedSource;
use crate::domain::status::{JobStatus, TargetStatus};
use crate::store::model::{ClaimedTarget, TargetOutcome};
use crate::store::queue::fenced;
use crate::store::{
    Bound, Claim, ClaimLost, IN_FLIGHT, LIVE_WITHIN, Release, Released, StoreResult, TakeOver,
    bounded, now,
};

/// The partial unique index that keeps two targets of one reference out of
/// flight at once.
const ONE_IN_FLIGHT: &str = "targets_one_in_flight_per_reference";

/// Claims made again after a race for a reference was lost: the next try
/// sees the winner's claim and takes another target.
const CLAIM_TRIES: usize = 3;

/// The end of a lease `lease` from now on the database's clock, where `$n`
/// is the lease in seconds.
fn lease_end(n: u8) -> String {
    format!("clock_timestamp() + make_interval(secs => ${n})")
}

impl PgStore {
    /// Claims the oldest pending target (by the submitters' fair share)
    /// whose reference no other target is working on, skipping targets and
    /// jobs another transaction holds. Two instances that pick two targets
    /// of one reference at the same moment meet at the unique index: the
    /// loser tries again, and then sees the winner's claim.
    pub async fn claim_target(&self, lease: Duration) -> StoreResult<Option<ClaimedTarget>> {
        let now = now();
        for _ in 0..CLAIM_TRIES {
            let token = Uuid::now_v7().to_string();
            let mut tx = self.pool.begin().await?;
            let claimed = sqlx::query_scalar::<_, i64>(&format!(
                "UPDATE targets
                 SET status = 'tagging', attempts = attempts + 1, runs = runs + 1, error = NULL,
                     started_at = COALESCE(started_at, $1), claim_token = $2,
                     lease_expires_at = {lease_end},
                     previous_prior_image_id = CASE WHEN created_image_id IS NOT NULL
                         THEN prior_image_id ELSE previous_prior_image_id END,
                     previous_created_image_id = COALESCE(created_image_id, previous_created_image_id),
                     prior_image_id = NULL, created_image_id = NULL, staging_reference = NULL,
                     not_before = NULL
                 WHERE id = (
                     SELECT t.id FROM targets t JOIN jobs j ON j.id = t.job_id
                          LEFT JOIN owners o ON o.name = j.submitted_by
                     WHERE t.status = 'pending' AND NOT j.cancel_requested
                       AND (j.engine IS NULL OR j.engine = $4)
                       AND (j.accepted_by IS NULL OR j.accepted_by = $5 OR NOT EXISTS (
                            SELECT 1 FROM instances i WHERE i.id = j.accepted_by
                              AND i.heartbeat_at > clock_timestamp() - make_interval(secs => $6)))
                       AND (t.not_before IS NULL OR t.not_before <= $1)
                       AND (t.reference_key IS NULL OR NOT EXISTS (
                            SELECT 1 FROM targets u
                            WHERE u.reference_key = t.reference_key AND u.status IN {IN_FLIGHT}))
                     ORDER BY COALESCE(o.pass, 0), t.job_id, t.position
                     LIMIT 1
                     FOR UPDATE OF t SKIP LOCKED FOR NO KEY UPDATE OF j SKIP LOCKED)
                 RETURNING id",
                lease_end = lease_end(3)
            ))
            .bind(&now)
            .bind(&token)
            .bind(lease.as_secs_f64())
            .bind(&self.instance.engine)
            .bind(self.instance.id.to_string())
            .bind(LIVE_WITHIN.as_secs_f64())
            .fetch_optional(&mut *tx)
            .await;
            let id = match claimed {
                Ok(Some(id)) => id,
                Ok(None) => {
                    tx.rollback().await?;
                    return Ok(None);
                }
                Err(error) if violates(&error, ONE_IN_FLIGHT) => {
                    tx.rollback().await?;
                    continue;
                }
                Err(error) => return Err(error).context("claiming a target"),
            };
            let target = load_claimed(&mut tx, id).await?;
            // The submitter's turn is taken: the next claim goes to whoever
            // has had the least, by weight.
            sqlx::query(
                "UPDATE owners SET pass = pass + 1.0::float8 / weight
                 WHERE name = (SELECT submitted_by FROM jobs WHERE id = $1)",
            )
            .bind(target.job_id.to_string())
            .execute(&mut *tx)
            .await
            .context("advancing the submitter's turn")?;
            refresh_job(&mut tx, target.job_id).await?;
            tx.commit().await.context("committing a claim")?;
            return Ok(Some(target));
        }
        Ok(None)
    }

    /// Extends a claim's lease; answers false if the claim is no longer
    /// the target's.
    pub async fn renew_lease(&self, claim: &Claim, lease: Duration) -> StoreResult<bool> {
        let result = sqlx::query(&format!(
            "UPDATE targets SET lease_expires_at = {}
             WHERE id = $2 AND claim_token = $3 AND status IN {IN_FLIGHT}",
            lease_end(1)
        ))
        .bind(lease.as_secs_f64())
        .bind(claim.target_id)
        .bind(&claim.token)
        .execute(&self.pool)
        .await
        .context("renewing a lease")?;
        Ok(result.rows_affected() == 1)
    }

    /// Gives a claimed `content` target its tag and reference, unless
    /// another target is working on that reference right now (committed, or
    /// claimed at this very moment by another instance: the unique index
    /// says so): then the target goes back to the queue with its reference,
    /// or is cancelled if its job was.
    pub async fn bind_reference(
        &self,
        claim: &Claim,
        tag: &str,
        reference: &str,
    ) -> StoreResult<Bound> {
        let key = crate::domain::naming::reference_key(reference);
        let mut busy_for_sure = false;
        loop {
            let mut tx = self.pool.begin().await?;
            let job_id = lock_job_of(&mut tx, claim.target_id)
                .await?
                .ok_or(ClaimLost {
                    target_id: claim.target_id,
                })?;
            let row = sqlx::query(&format!(
                "SELECT EXISTS (SELECT 1 FROM targets
                                WHERE reference_key = $1 AND id <> $2 AND status IN {IN_FLIGHT})
                            AS busy,
                        (SELECT cancel_requested FROM jobs WHERE id = $3) AS cancelled"
            ))
            .bind(&key)
            .bind(claim.target_id)
            .bind(job_id.to_string())
            .fetch_one(&mut *tx)
            .await?;
            let (busy, cancelled): (bool, bool) = (row.get("busy"), row.get("cancelled"));
            let bound = match (busy || busy_for_sure, cancelled) {
                (false, _) => Bound::Bound,
                (true, false) => Bound::Busy,
                (true, true) => Bound::Cancelled,
            };
            // Deferring is not a run of the target, nor a try.
            let result = sqlx::query(&format!(
                "UPDATE targets SET tag = $1, reference = $2, reference_key = $3,
                     status = CASE $4 WHEN 'bound' THEN 'tagging' WHEN 'busy' THEN 'pending'
                                      ELSE 'cancelled' END,
                     finished_at = CASE $4 WHEN 'cancelled' THEN $5 ELSE NULL END,
                     error = CASE $4 WHEN 'cancelled' THEN 'cancelled before it started'
                                     ELSE NULL END,
                     claim_token = CASE $4 WHEN 'bound' THEN claim_token ELSE NULL END,
                     runs = CASE $4 WHEN 'bound' THEN runs ELSE runs - 1 END,
                     attempts = CASE $4 WHEN 'bound' THEN attempts ELSE attempts - 1 END
                 WHERE id = $6 AND claim_token = $7 AND status IN {IN_FLIGHT}"
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
            .await;
            let result = match result {
                Err(error) if violates(&error, ONE_IN_FLIGHT) => {
                    // Another instance's target took the reference since
                    // this transaction looked: busy, whatever it reads next.
                    tx.rollback().await?;
                    busy_for_sure = true;
                    continue;
                }
                result => result.context("binding a content reference")?,
            };
            fenced(result.rows_affected(), claim)?;
            refresh_job(&mut tx, job_id).await?;
            tx.commit().await?;
            return Ok(bound);
        }
    }

    /// Records, before the tag step touches the engine, what the reference
    /// named and the id of the image about to be made.
    pub async fn record_tag_plan(
        &self,
        claim: &Claim,
        prior_image_id: Option<&str>,
        created_image_id: Option<&str>,
        staging_reference: Option<&str>,
    ) -> StoreResult<()> {
        let result = sqlx::query(
            "UPDATE targets SET prior_image_id = $1, created_image_id = $2, staging_reference = $3
             WHERE id = $4 AND claim_token = $5",
        )
        .bind(prior_image_id)
        .bind(created_image_id)
        .bind(staging_reference)
        .bind(claim.target_id)
        .bind(&claim.token)
        .execute(&self.pool)
        .await
        .context("recording the tag step's plan")?;
        fenced(result.rows_affected(), claim)
    }

    /// Records the image a build made, before its target reference is
    /// pointed at it.
    pub async fn record_created_image(
        &self,
        claim: &Claim,
        created_image_id: &str,
    ) -> StoreResult<()> {
        let result = sqlx::query(
            "UPDATE targets SET created_image_id = $1 WHERE id = $2 AND claim_token = $3",
        )
        .bind(created_image_id)
        .bind(claim.target_id)
        .bind(&claim.token)
        .execute(&self.pool)
        .await
        .context("recording the built image")?;
        fenced(result.rows_affected(), claim)
    }

    pub async fn set_step(&self, claim: &Claim, status: TargetStatus) -> StoreResult<()> {
        let result =
            sqlx::query("UPDATE targets SET status = $1 WHERE id = $2 AND claim_token = $3")
                .bind(status.as_str())
                .bind(claim.target_id)
                .bind(&claim.token)
                .execute(&self.pool)
                .await
                .context("recording a step")?;
        fenced(result.rows_affected(), claim)
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
                 attempt_errors = (attempt_errors::jsonb || jsonb_build_array(jsonb_build_object(
                     'attempt', attempts, 'step', $1::text, 'error', $2::text, 'at', $3::text)))::text,
                 attempts = attempts + $4
             WHERE id = $5 AND claim_token = $6",
        )
        .bind(step)
        .bind(bounded(error))
        .bind(now())
        .bind(i64::from(retrying))
        .bind(claim.target_id)
        .bind(&claim.token)
        .execute(&self.pool)
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
        let warnings: Vec<String> = warnings.iter().map(|w| bounded(w)).collect();
        let warnings = serde_json::to_string(&warnings)?;
        let lost = || ClaimLost {
            target_id: claim.target_id,
        };
        let mut tx = self.pool.begin().await?;
        let job_id = lock_job_of(&mut tx, claim.target_id)
            .await?
            .ok_or_else(lost)?;
        let result = sqlx::query(&format!(
            "UPDATE targets SET status = $1, digest = $2, error = $3, up_to_date = $4,
                                published_via = $5,
                                warnings = (warnings::jsonb || $6::jsonb)::text,
                                finished_at = $7, claim_token = NULL, lease_expires_at = NULL
             WHERE id = $8 AND claim_token = $9 AND status IN {IN_FLIGHT}"
        ))
        .bind(status)
        .bind(digest)
        .bind(error)
        .bind(up_to_date)
        .bind(via)
        .bind(warnings)
        .bind(now())
        .bind(claim.target_id)
        .bind(&claim.token)
        .execute(&mut *tx)
        .await
        .context("finishing a target")?;
        if result.rows_affected() == 0 {
            return Err(lost().into());
        }
        let status = refresh_job(&mut tx, job_id).await?;
        tx.commit().await?;
        Ok(status)
    }

    /// Puts a claimed target back in the queue, cancels it if its job was
    /// cancelled, or fails it as a dead letter after too many runs that
    /// never finished.
    pub async fn release_target(&self, claim: &Claim, release: Release) -> StoreResult<Released> {
        let (counts, max_runs, warning) = match &release {
            Release::Stopped => (false, u32::MAX, None),
            Release::Abandoned { warning, max_runs } => (true, *max_runs, warning.clone()),
        };
        let lost = || ClaimLost {
            target_id: claim.target_id,
        };
        let mut tx = self.pool.begin().await?;
        // The job locked first: its cancel flag is read as committed last.
        let job_id = lock_job_of(&mut tx, claim.target_id)
            .await?
            .ok_or_else(lost)?;
        let row = sqlx::query(&format!(
            "UPDATE targets SET
                 runs = runs - CASE WHEN $1 THEN 0 ELSE 1 END,
                 attempts = attempts - CASE WHEN $1 THEN 0 ELSE 1 END,
                 status = CASE
                     WHEN (SELECT cancel_requested FROM jobs WHERE jobs.id = targets.job_id)
                         THEN 'cancelled'
                     WHEN $1 AND runs >= $2 THEN 'failed'
                     ELSE 'pending' END,
                 dead_letter = CASE
                     WHEN (SELECT cancel_requested FROM jobs WHERE jobs.id = targets.job_id)
                         THEN false
                     WHEN $1 AND runs >= $2 THEN true ELSE false END,
                 error = CASE
                     WHEN (SELECT cancel_requested FROM jobs WHERE jobs.id = targets.job_id)
                         THEN 'cancelled'
                     WHEN $1 AND runs >= $2 THEN 'dead letter: ' || runs || ' runs of this target '
                         || 'never finished (each was cut short: its worker crashed, it lost its '
                         || 'lease, or publishd died); it is not run again'
                     ELSE NULL END,
                 finished_at = CASE
                     WHEN (SELECT cancel_requested FROM jobs WHERE jobs.id = targets.job_id)
                         OR ($1 AND runs >= $2) THEN $3 ELSE NULL END,
                 warnings = CASE WHEN $4::text IS NULL THEN warnings
                                 ELSE (warnings::jsonb || jsonb_build_array($4::text))::text END,
                 claim_token = NULL, lease_expires_at = NULL
             WHERE id = $5 AND claim_token = $6 AND status IN {IN_FLIGHT}
             RETURNING status"
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
        .ok_or_else(lost)?;
        let status: String = row.get("status");
        refresh_job(&mut tx, job_id).await?;
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
    /// try. Cancelled instead if its job was cancelled meanwhile.
    pub async fn wait_for_credentials(
        &self,
        claim: &Claim,
        wait_until: &str,
        retry_at: &str,
    ) -> StoreResult<()> {
        let lost = || ClaimLost {
            target_id: claim.target_id,
        };
        let mut tx = self.pool.begin().await?;
        let job_id = lock_job_of(&mut tx, claim.target_id)
            .await?
            .ok_or_else(lost)?;
        let result = sqlx::query(&format!(
            "UPDATE targets SET
                 status = CASE WHEN (SELECT cancel_requested FROM jobs WHERE jobs.id = targets.job_id)
                          THEN 'cancelled' ELSE 'pending' END,
                 error = CASE WHEN (SELECT cancel_requested FROM jobs WHERE jobs.id = targets.job_id)
                         THEN 'cancelled' ELSE error END,
                 finished_at = CASE WHEN (SELECT cancel_requested FROM jobs WHERE jobs.id = targets.job_id)
                               THEN $1 ELSE NULL END,
                 attempts = attempts - 1, runs = runs - 1,
                 claim_token = NULL, lease_expires_at = NULL, not_before = $2,
                 credentials_wait_until = COALESCE(credentials_wait_until, $3)
             WHERE id = $4 AND claim_token = $5 AND status IN {IN_FLIGHT}"
        ))
        .bind(now())
        .bind(retry_at)
        .bind(wait_until)
        .bind(claim.target_id)
        .bind(&claim.token)
        .execute(&mut *tx)
        .await
        .context("putting a target back to wait for credentials")?;
        fenced(result.rows_affected(), claim)?;
        refresh_job(&mut tx, job_id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The job was resubmitted with its credentials: its waiting targets may
    /// be claimed at once.
    /// This instance holds them now: it claims the job's targets from here on.
    pub async fn credentials_arrived(&self, job_id: Uuid) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE jobs SET accepted_by = $2 WHERE id = $1 AND has_registry_auth")
            .bind(job_id.to_string())
            .bind(self.instance.id.to_string())
            .execute(&mut *tx)
            .await
            .context("recording who holds a job's credentials")?;
        sqlx::query(
            "UPDATE targets SET not_before = NULL, credentials_wait_until = NULL
             WHERE job_id = $1 AND status = 'pending'",
        )
        .bind(job_id.to_string())
        .execute(&mut *tx)
        .await
        .context("waking targets that waited for credentials")?;
        tx.commit().await?;
        Ok(())
    }

    /// Takes a target in flight over from the run that held it, if
    /// `condition` holds (an expired lease on the database's clock), with a
    /// fresh claim for recovery to use: from then on every write of the old
    /// run changes nothing.
    pub async fn take_over(
        &self,
        target_id: i64,
        condition: TakeOver<'_>,
        lease: Duration,
    ) -> StoreResult<Option<Claim>> {
        let token = Uuid::now_v7().to_string();
        let (held_by, expired) = match condition {
            TakeOver::Any => (None, false),
            TakeOver::Expired { token } => (Some(token), true),
            TakeOver::Held { token } => (Some(token), false),
        };
        let result = sqlx::query(&format!(
            "UPDATE targets SET claim_token = $1, lease_expires_at = {}
             WHERE id = $3 AND status IN {IN_FLIGHT}
               AND ($4::text IS NULL OR claim_token = $4)
               AND (NOT $5 OR lease_expires_at IS NULL OR lease_expires_at < clock_timestamp())",
            lease_end(2)
        ))
        .bind(&token)
        .bind(lease.as_secs_f64())
        .bind(target_id)
        .bind(held_by)
        .bind(expired)
        .execute(&self.pool)
        .await
        .context("taking over a target")?;
        Ok((result.rows_affected() == 1).then_some(Claim { target_id, token }))
    }

    /// Nothing: with several instances on one database, a target in flight
    /// at start-up may well be another instance's. Recovery is by lease
    /// expiry only ([`PgStore::expired_leases`]).
    pub async fn in_flight_targets(&self) -> StoreResult<Vec<i64>> {
        Ok(Vec::new())
    }

    /// Claims whose lease ran out on the database's clock: (target id, claim
    /// token), of jobs on this instance's engine (or on none): only an
    /// instance on that engine can undo what was done there.
    pub async fn expired_leases(&self) -> StoreResult<Vec<(i64, String)>> {
        let rows = sqlx::query(&format!(
            "SELECT t.id, t.claim_token FROM targets t JOIN jobs j ON j.id = t.job_id
             WHERE t.status IN {IN_FLIGHT} AND t.claim_token IS NOT NULL
               AND (t.lease_expires_at IS NULL OR t.lease_expires_at < clock_timestamp())
               AND (j.engine IS NULL OR j.engine = $1)
             ORDER BY t.id"
        ))
        .bind(&self.instance.engine)
        .fetch_all(&self.pool)
        .await
        .context("listing expired leases")?;
        Ok(rows
            .iter()
            .map(|row| (row.get("id"), row.get("claim_token")))
            .collect())
    }

    pub async fn cancel_requested(&self, job_id: Uuid) -> StoreResult<bool> {
        let requested = sqlx::query_scalar("SELECT cancel_requested FROM jobs WHERE id = $1")
            .bind(job_id.to_string())
            .fetch_one(&self.pool)
            .await
            .context("reading a job's cancel flag")?;
        Ok(requested)
    }

    /// A target as a lane sees it, with what its last run recorded.
    pub async fn claimed_target(&self, id: i64) -> StoreResult<ClaimedTarget> {
        let mut conn = self.pool.acquire().await?;
        load_claimed(&mut conn, id).await
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
             SET source_digest = CASE WHEN source_image_id IS NULL THEN $1 ELSE source_digest END,
                 source_image_id = COALESCE(source_image_id, $2)
             WHERE job_id = $3 AND position = $4 RETURNING source_image_id, source_digest",
        )
        .bind(&resolved.manifest_digest)
        .bind(&resolved.image_id)
        .bind(job_id.to_string())
        .bind(image_position)
        .fetch_one(&self.pool)
        .await
        .context("recording a resolved source")?;
        Ok(ResolvedSource {
            image_id,
            manifest_digest,
        })
    }
}
