//! Prometheus metrics, served at `/metrics` in the text format.
//!
//! Counters and histograms count what this process did; the job and queue
//! gauges are read from the database at each scrape, so every instance
//! sharing a database reports the same, true, numbers.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::domain::retry::FailureKind;
use crate::domain::status::JobStatus;
use crate::store::{QueueCounts, Store, StoreResult};

/// The `Content-Type` of what `render` writes.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    step: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    /// The route's template (`/api/v1/jobs/{id}`), never the raw path: one
    /// series per route, whatever ids are asked for.
    route: String,
    status: u16,
}

/// How a step ended, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    Succeeded,
    Failed,
    Cancelled,
    /// The lane lost its claim, or the store failed under it.
    Abandoned,
}

impl StepOutcome {
    fn as_str(self) -> &'static str {
        match self {
            StepOutcome::Succeeded => "succeeded",
            StepOutcome::Failed => "failed",
            StepOutcome::Cancelled => "cancelled",
            StepOutcome::Abandoned => "abandoned",
        }
    }
}

/// How a webhook delivery attempt ended, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryResult {
    Delivered,
    /// Failed; tried again later.
    Retrying,
    /// Failed past `--webhook-max-age`; not tried again.
    GaveUp,
}

/// Everything measured, and the registry it is exported from.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    jobs: Family<StatusLabel, Gauge>,
    targets_queued: Gauge,
    targets_in_flight: Gauge,
    step_seconds: Family<StepLabels, Histogram>,
    pushed_bytes: Counter,
    retries: Family<KindLabel, Counter>,
    webhook_deliveries: Family<OutcomeLabel, Counter>,
    http_requests: Family<HttpLabels, Counter>,
    http_seconds: Family<HttpLabels, Histogram>,
}

/// Step durations: from a quick tag (tens of ms) to a long push (tens of minutes).
const STEP_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0, 600.0,
];
/// HTTP latencies: the API answers in milliseconds.
const HTTP_BUCKETS: [f64; 11] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("publishd");
        registry.register(
            "build",
            "The running publishd's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let jobs = Family::<StatusLabel, Gauge>::default();
        registry.register("jobs", "Jobs in the database, by status", jobs.clone());
        let targets_queued = Gauge::default();
        registry.register(
            "targets_queued",
            "Targets waiting for a lane",
            targets_queued.clone(),
        );
        let targets_in_flight = Gauge::default();
        registry.register(
            "targets_in_flight",
            "Targets a lane is working on (tagging, pushing or untagging)",
            targets_in_flight.clone(),
        );
        let step_seconds =
            Family::<StepLabels, Histogram>::new_with_constructor(|| Histogram::new(STEP_BUCKETS));
        registry.register(
            "step_duration_seconds",
            "Time a step of the publish procedure took, retries included, by step and outcome",
            step_seconds.clone(),
        );
        let pushed_bytes = Counter::default();
        registry.register(
            "pushed_bytes",
            "Layer bytes uploaded by successful pushes, as the engine reported them",
            pushed_bytes.clone(),
        );
        let retries = Family::<KindLabel, Counter>::default();
        registry.register(
            "retries",
            "Failed tries of a step that were retried, by kind of failure",
            retries.clone(),
        );
        let webhook_deliveries = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Webhook delivery attempts, by outcome",
            webhook_deliveries.clone(),
        );
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route template and status",
            http_requests.clone(),
        );
        let http_seconds =
            Family::<HttpLabels, Histogram>::new_with_constructor(|| Histogram::new(HTTP_BUCKETS));
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request (to the response's head), by method, route template and status",
            http_seconds.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                registry,
                jobs,
                targets_queued,
                targets_in_flight,
                step_seconds,
                pushed_bytes,
                retries,
                webhook_deliveries,
                http_requests,
                http_seconds,
            }),
        }
    }
}

impl Metrics {
    pub fn step_finished(&self, step: &'static str, outcome: StepOutcome, took: Duration) {
        self.inner
            .step_seconds
            .get_or_create(&StepLabels {
                step,
                outcome: outcome.as_str(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn retried(&self, kind: FailureKind) {
        let kind = match kind {
            FailureKind::Permanent => "permanent",
            FailureKind::Transient => "transient",
            FailureKind::Outage => "outage",
        };
        self.inner.retries.get_or_create(&KindLabel { kind }).inc();
    }

    pub fn pushed(&self, bytes: u64) {
        self.inner.pushed_bytes.inc_by(bytes);
    }

    pub fn webhook_attempt(&self, result: DeliveryResult) {
        let outcome = match result {
            DeliveryResult::Delivered => "delivered",
            DeliveryResult::Retrying => "retrying",
            DeliveryResult::GaveUp => "gave_up",
        };
        self.inner
            .webhook_deliveries
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    pub fn http_request(&self, method: &str, route: &str, status: u16, took: Duration) {
        let labels = HttpLabels {
            method: method.to_owned(),
            route: route.to_owned(),
            status,
        };
        self.inner.http_requests.get_or_create(&labels).inc();
        self.inner
            .http_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// The metrics as Prometheus text, with the gauges read from `store` now.
    pub async fn render(&self, store: &Store) -> StoreResult<String> {
        let counts = store.queue_counts().await?;
        self.set_counts(&counts);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.inner.registry)
            .map_err(|_| anyhow::anyhow!("writing the metrics as text"))?;
        Ok(text)
    }

    fn set_counts(&self, counts: &QueueCounts) {
        // Every status has a series, zero included, so an alert on one that
        // has never happened still has something to read.
        for status in [
            JobStatus::Queued,
            JobStatus::Running,
            JobStatus::Succeeded,
            JobStatus::Failed,
            JobStatus::Cancelled,
        ] {
            let count = counts.jobs.get(&status).copied().unwrap_or(0);
            self.inner
                .jobs
                .get_or_create(&StatusLabel {
                    status: status.as_str(),
                })
                .set(count);
        }
        self.inner.targets_queued.set(counts.targets_queued);
        self.inner.targets_in_flight.set(counts.targets_in_flight);
    }
}
