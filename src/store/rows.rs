//! Rows as both databases answer them (`sqlx::FromRow` is generic over the
//! database), and the records they make: one mapping from columns to the
//! API's types, whichever store read them.

use std::collections::HashMap;

use anyhow::Context;
use uuid::Uuid;

use super::audit::AuditEvent;
use super::events::{Delivery, DueDelivery, Event};
use super::model::{ClaimedTarget, InstanceStatus, Job, JobImage, Target};
use super::queue::Claim;
use super::{LIVE_WITHIN, StoreResult};
use crate::domain::naming::RepoMode;
use crate::domain::platform::Platform;
use crate::domain::publish_via::{PublishVia, PublishedVia};
use crate::domain::spec::TagStrategy;
use crate::domain::status::{JobStatus, TargetStatus};

pub(super) fn parse_uuid(text: String) -> StoreResult<Uuid> {
    Uuid::parse_str(&text).with_context(|| format!("bad job id {text:?} in the database"))
}

pub(super) fn parse_enum<T>(
    value: &str,
    parse: fn(&str) -> Option<T>,
    what: &str,
) -> StoreResult<T> {
    parse(value).with_context(|| format!("bad {what} {value:?} in the database"))
}

fn optional_enum<T>(
    value: Option<String>,
    parse: fn(&str) -> Option<T>,
    what: &str,
) -> StoreResult<Option<T>> {
    value
        .map(|value| parse_enum(&value, parse, what))
        .transpose()
}

#[derive(sqlx::FromRow)]
pub(super) struct JobRow {
    pub id: String,
    status: String,
    repo: String,
    repo_mode: String,
    created_at: String,
    started_at: Option<String>,
    finished_at: Option<String>,
    error: Option<String>,
    cancel_requested: bool,
    submitted_by: String,
    callback_url: Option<String>,
    publish_via: Option<String>,
    engine: Option<String>,
    platforms: Option<String>,
}

impl JobRow {
    pub fn into_job(
        self,
        images: Vec<JobImage>,
        targets: Vec<Target>,
        deliveries: Vec<Delivery>,
    ) -> StoreResult<Job> {
        Ok(Job {
            id: parse_uuid(self.id)?,
            status: parse_enum(&self.status, JobStatus::parse, "job status")?,
            repo: self.repo,
            repo_mode: parse_enum(&self.repo_mode, RepoMode::parse, "repo mode")?,
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
            error: self.error,
            cancel_requested: self.cancel_requested,
            submitted_by: Some(self.submitted_by).filter(|name| !name.is_empty()),
            callback_url: self.callback_url,
            publish_via: optional_enum(self.publish_via, PublishVia::parse, "publish via")?,
            images,
            targets,
            deliveries,
            engine: self.engine,
            platforms: self
                .platforms
                .map(|platforms| serde_json::from_str(&platforms))
                .transpose()
                .context("bad platforms in the database")?,
        })
    }
}

/// Also read from PostgreSQL's `json_agg` of the table's rows.
#[derive(sqlx::FromRow, serde::Deserialize)]
pub(super) struct ImageRow {
    pub job_id: String,
    name: Option<String>,
    source: String,
    source_image_id: Option<String>,
    source_digest: Option<String>,
}

impl ImageRow {
    pub fn into_image(self) -> JobImage {
        JobImage {
            name: self.name,
            source: self.source,
            source_image_id: self.source_image_id,
            source_digest: self.source_digest,
        }
    }
}

/// Also read from PostgreSQL's `json_agg` of the table's rows.
#[derive(sqlx::FromRow, serde::Deserialize)]
pub(super) struct TargetRow {
    pub job_id: String,
    image_name: Option<String>,
    source: String,
    strategy: String,
    tag: Option<String>,
    reference: Option<String>,
    status: String,
    digest: Option<String>,
    image_id: Option<String>,
    attempts: i64,
    error: Option<String>,
    attempt_errors: String,
    up_to_date: bool,
    published_via: Option<String>,
    warnings: String,
    runs: i64,
    dead_letter: bool,
    credentials_wait_until: Option<String>,
    started_at: Option<String>,
    finished_at: Option<String>,
}

impl TargetRow {
    pub fn into_target(self) -> StoreResult<Target> {
        Ok(Target {
            image: self.image_name,
            source: self.source,
            strategy: parse_enum(&self.strategy, TagStrategy::parse, "strategy")?,
            tag: self.tag,
            reference: self.reference,
            status: parse_enum(&self.status, TargetStatus::parse, "target status")?,
            digest: self.digest,
            image_id: self.image_id,
            attempts: self.attempts,
            error: self.error,
            attempt_errors: serde_json::from_str(&self.attempt_errors)
                .context("bad attempt errors in the database")?,
            up_to_date: self.up_to_date,
            published_via: optional_enum(self.published_via, PublishedVia::parse, "published via")?,
            warnings: serde_json::from_str(&self.warnings)
                .context("bad warnings in the database")?,
            runs: self.runs,
            dead_letter: self.dead_letter,
            credentials_wait_until: self.credentials_wait_until,
            started_at: self.started_at,
            finished_at: self.finished_at,
        })
    }
}

/// What `CLAIMED` selects.
#[derive(sqlx::FromRow)]
pub(super) struct ClaimedRow {
    id: i64,
    position: i64,
    job_id: String,
    repo: String,
    repo_mode: String,
    image_name: Option<String>,
    source: String,
    strategy: String,
    tag: Option<String>,
    reference: Option<String>,
    status: String,
    attempts: i64,
    force: bool,
    has_registry_auth: bool,
    prior_image_id: Option<String>,
    created_image_id: Option<String>,
    staging_reference: Option<String>,
    image_position: i64,
    source_image_id: Option<String>,
    source_digest: Option<String>,
    claim_token: Option<String>,
    previous_prior_image_id: Option<String>,
    previous_created_image_id: Option<String>,
    credentials_wait_until: Option<String>,
    use_service_credentials: bool,
    required_labels: String,
    read_repos: String,
    publish_via: Option<String>,
    platforms: Option<String>,
}

/// A target with its job and image, as a lane needs it; the dialect's
/// placeholder for the target id follows.
pub(super) const CLAIMED: &str =
    "SELECT t.id, t.position, t.job_id, j.repo, j.repo_mode, t.image_name, t.source,
        t.strategy, t.tag, t.reference, t.status, t.attempts, j.force, j.has_registry_auth,
        t.prior_image_id, t.created_image_id, t.staging_reference, t.image_position,
        i.source_image_id, i.source_digest, t.claim_token, t.previous_prior_image_id,
        t.previous_created_image_id, t.credentials_wait_until,
        j.use_service_credentials, j.required_labels, j.read_repos, j.publish_via, j.platforms
 FROM targets t JOIN jobs j ON j.id = t.job_id
      JOIN job_images i ON i.job_id = t.job_id AND i.position = t.image_position
 WHERE t.id = ";

impl ClaimedRow {
    pub fn into_claimed(self) -> StoreResult<ClaimedTarget> {
        Ok(ClaimedTarget {
            id: self.id,
            position: self.position,
            claim: Claim {
                target_id: self.id,
                token: self.claim_token.unwrap_or_default(),
            },
            job_id: parse_uuid(self.job_id)?,
            repo: self.repo,
            repo_mode: parse_enum(&self.repo_mode, RepoMode::parse, "repo mode")?,
            image_name: self.image_name,
            source: self.source,
            strategy: parse_enum(&self.strategy, TagStrategy::parse, "strategy")?,
            tag: self.tag,
            reference: self.reference,
            status: parse_enum(&self.status, TargetStatus::parse, "target status")?,
            attempts: self.attempts,
            force: self.force,
            has_registry_auth: self.has_registry_auth,
            prior_image_id: self.prior_image_id,
            created_image_id: self.created_image_id,
            staging_reference: self.staging_reference,
            previous_prior_image_id: self.previous_prior_image_id,
            previous_created_image_id: self.previous_created_image_id,
            image_position: self.image_position,
            source_image_id: self.source_image_id,
            source_digest: self.source_digest,
            credentials_wait_until: self.credentials_wait_until,
            use_service_credentials: self.use_service_credentials,
            required_labels: serde_json::from_str(&self.required_labels)
                .context("bad required labels in the database")?,
            read_repos: serde_json::from_str(&self.read_repos)
                .context("bad read_repos in the database")?,
            publish_via: optional_enum(self.publish_via, PublishVia::parse, "publish via")?,
            platforms: platforms_of(self.platforms)?,
        })
    }
}

/// A job's `platforms` column: a JSON array of platforms, or null for all.
fn platforms_of(column: Option<String>) -> StoreResult<Vec<Platform>> {
    let Some(column) = column else {
        return Ok(Vec::new());
    };
    let texts: Vec<String> =
        serde_json::from_str(&column).context("bad platforms in the database")?;
    texts
        .iter()
        .map(|text| {
            Platform::parse(text)
                .map_err(|error| anyhow::anyhow!("bad platform in the database: {error}"))
        })
        .collect()
}

/// The `platforms` column a plan's platforms are stored as.
pub(super) fn platforms_column(platforms: &[Platform]) -> Option<String> {
    (!platforms.is_empty()).then(|| {
        serde_json::Value::from(
            platforms
                .iter()
                .map(Platform::to_string)
                .collect::<Vec<_>>(),
        )
        .to_string()
    })
}

/// Also read from PostgreSQL's `json_agg` of the table's rows.
#[derive(sqlx::FromRow, serde::Deserialize)]
pub(super) struct DeliveryRow {
    pub job_id: String,
    id: String,
    url: String,
    state: String,
    attempts: String,
    next_attempt_at: Option<String>,
}

impl DeliveryRow {
    pub fn into_delivery(self) -> StoreResult<Delivery> {
        Ok(Delivery {
            id: self.id,
            url: Some(self.url),
            state: self.state,
            attempts: serde_json::from_str(&self.attempts)
                .context("bad delivery attempts in the database")?,
            next_attempt_at: self.next_attempt_at,
        })
    }
}

/// A due delivery, with `tries`: how many attempts it has had.
#[derive(sqlx::FromRow)]
pub(super) struct DueDeliveryRow {
    id: String,
    job_id: String,
    submitter: String,
    url: String,
    created_at: String,
    body: Option<String>,
    tries: i64,
}

impl DueDeliveryRow {
    pub fn into_due(self) -> StoreResult<DueDelivery> {
        Ok(DueDelivery {
            id: self.id,
            job_id: parse_uuid(self.job_id)?,
            submitter: self.submitter,
            url: self.url,
            created_at: self.created_at,
            body: self.body,
            attempts: self.tries,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct EventRow {
    id: i64,
    job_id: String,
    at: String,
    kind: String,
    position: Option<i64>,
    data: String,
}

impl EventRow {
    pub fn into_event(self) -> StoreResult<Event> {
        Ok(Event {
            id: self.id,
            job_id: parse_uuid(self.job_id)?,
            at: self.at,
            kind: self.kind,
            target: self.position,
            data: serde_json::from_str(&self.data).context("bad event data in the database")?,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct AuditRow {
    id: String,
    at: String,
    actor: Option<String>,
    action: String,
    outcome: String,
    job_id: Option<String>,
    detail: String,
}

impl AuditRow {
    pub fn into_event(self) -> StoreResult<AuditEvent> {
        Ok(AuditEvent {
            id: parse_uuid(self.id)?,
            at: self.at,
            actor: self.actor,
            action: self.action,
            outcome: self.outcome,
            job_id: self.job_id.map(parse_uuid).transpose()?,
            detail: serde_json::from_str(&self.detail)
                .context("bad audit detail in the database")?,
        })
    }
}

/// A job from its row and the JSON arrays of its targets', images' and
/// deliveries' rows, as one statement reads them on PostgreSQL.
pub(super) fn job_of_json(
    job: JobRow,
    images: &str,
    targets: &str,
    deliveries: &str,
) -> StoreResult<Job> {
    fn rows<T: serde::de::DeserializeOwned>(json: &str, what: &str) -> StoreResult<Vec<T>> {
        serde_json::from_str(json).with_context(|| format!("bad {what} rows from the database"))
    }
    job_of(
        job,
        rows(images, "image")?,
        rows(targets, "target")?,
        rows(deliveries, "delivery")?,
    )
}

/// A job from its rows.
pub(super) fn job_of(
    job: JobRow,
    images: Vec<ImageRow>,
    targets: Vec<TargetRow>,
    deliveries: Vec<DeliveryRow>,
) -> StoreResult<Job> {
    let targets = targets
        .into_iter()
        .map(TargetRow::into_target)
        .collect::<StoreResult<_>>()?;
    let deliveries = deliveries
        .into_iter()
        .map(DeliveryRow::into_delivery)
        .collect::<StoreResult<_>>()?;
    let images = images.into_iter().map(ImageRow::into_image).collect();
    job.into_job(images, targets, deliveries)
}

/// Jobs from their rows and the rows of theirs, in the order of `jobs`.
pub(super) fn jobs_of(
    jobs: Vec<JobRow>,
    images: Vec<ImageRow>,
    targets: Vec<TargetRow>,
    deliveries: Vec<DeliveryRow>,
) -> StoreResult<Vec<Job>> {
    let mut images_by_job: HashMap<String, Vec<ImageRow>> = HashMap::new();
    for image in images {
        images_by_job
            .entry(image.job_id.clone())
            .or_default()
            .push(image);
    }
    let mut targets_by_job: HashMap<String, Vec<TargetRow>> = HashMap::new();
    for target in targets {
        targets_by_job
            .entry(target.job_id.clone())
            .or_default()
            .push(target);
    }
    let mut deliveries_by_job: HashMap<String, Vec<DeliveryRow>> = HashMap::new();
    for delivery in deliveries {
        deliveries_by_job
            .entry(delivery.job_id.clone())
            .or_default()
            .push(delivery);
    }
    jobs.into_iter()
        .map(|job| {
            let images = images_by_job.remove(&job.id).unwrap_or_default();
            let targets = targets_by_job.remove(&job.id).unwrap_or_default();
            let deliveries = deliveries_by_job.remove(&job.id).unwrap_or_default();
            job_of(job, images, targets, deliveries)
        })
        .collect()
}

/// An instance, with the age of its heartbeat on the database's clock.
#[derive(sqlx::FromRow)]
pub(super) struct InstanceRow {
    id: String,
    engine: Option<String>,
    address: String,
    started_at: String,
    heartbeat_age_seconds: f64,
}

impl InstanceRow {
    pub fn into_instance(self) -> StoreResult<(Option<String>, InstanceStatus)> {
        let status = InstanceStatus {
            id: parse_uuid(self.id)?,
            address: self.address,
            started_at: self.started_at,
            heartbeat_age_seconds: self.heartbeat_age_seconds.max(0.0),
            live: self.heartbeat_age_seconds < LIVE_WITHIN.as_secs_f64(),
        };
        Ok((self.engine, status))
    }
}

/// Targets waiting and under way on one engine.
#[derive(sqlx::FromRow)]
pub(super) struct EngineTargetsRow {
    pub engine: String,
    pub queued: i64,
    pub in_flight: i64,
}
