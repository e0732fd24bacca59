//! `GET /metrics`: Prometheus text, read by a Prometheus text parser and
//! checked against the known counts of a run against the real engine and
//! registry.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::engine::TestEngine;
use support::fault_proxy::{FaultProxy, Faults};
use support::{TestApp, TestEnv, app_job, unique};

/// One sample, owned: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Scrapes `/metrics` and parses it as the Prometheus text format; anything
/// the parser cannot read fails the test.
async fn scrape(app: &TestApp) -> Vec<Sample> {
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.unwrap();
    let (rest, families) = nom_openmetrics::parser::prometheus(&text)
        .unwrap_or_else(|error| panic!("not Prometheus text ({error:?}):\n{text}"));
    assert_eq!(rest.trim(), "", "unparsed: {rest}");
    families
        .iter()
        .flat_map(|family| &family.samples)
        .map(|sample| Sample {
            name: sample.name().to_owned(),
            labels: sample
                .labels()
                .iter()
                .map(|label| (label.name.to_owned(), label.value.clone()))
                .collect(),
            value: sample.number(),
        })
        .collect()
}

/// The samples of `name` whose labels include all of `labels`.
fn samples<'a>(scrape: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    scrape
        .iter()
        .filter(|sample| sample.name == name)
        .filter(|sample| {
            labels
                .iter()
                .all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(*value))
        })
        .collect()
}

/// The value of the one series `name` with `labels`.
fn value(scrape: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found = samples(scrape, name, labels);
    assert_eq!(found.len(), 1, "one {name} {labels:?} in {scrape:#?}");
    found[0].value
}

/// How many observations the histogram `name` with `labels` holds, over
/// every series that matches; its buckets are checked on the way.
fn observations(scrape: &[Sample], name: &str, labels: &[(&str, &str)]) -> u64 {
    let counts = samples(scrape, &format!("{name}_count"), labels);
    let mut total = 0;
    for count in counts {
        let mut series: Vec<(&str, &str)> = count
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let buckets = samples(scrape, &format!("{name}_bucket"), &series);
        // Cumulative buckets never decrease, and +Inf holds them all.
        assert!(buckets.windows(2).all(|w| w[0].value <= w[1].value));
        series.push(("le", "+Inf"));
        assert_eq!(
            value(scrape, &format!("{name}_bucket"), &series),
            count.value
        );
        total += count.value as u64;
    }
    total
}

#[tokio::test]
async fn metrics_count_what_a_run_did() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let proxy = FaultProxy::start(&env.registry, Faults::ManifestPut(503)).await;
    let app = TestApp::spawn_with(|settings| settings.retry.attempts = 3).await;

    // A job of two targets that succeeds, with 1 MiB that gzip cannot shrink.
    let good = unique("metrics");
    engine.import_random_image(&good, "b1", 1 << 20).await;
    let job = app
        .run_job(&app_job(
            &format!("{}/{}", env.registry, unique("metrics")),
            &format!("{good}:b1"),
            &["v1", "v2"],
        ))
        .await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    // The push through the engine of the target that took the seed turn
    // (whichever lane got there first) is the other's seed: the other is
    // written registry-side, with no tag and no untag.
    let mut via: Vec<&str> = job["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|target| target["published_via"].as_str().unwrap())
        .collect();
    via.sort();
    assert_eq!(via, ["engine", "registry"], "{job:#}");
    // And one whose registry refuses every manifest: three tries, two retries.
    let bad = unique("metrics-bad");
    engine.import_image(&bad, "b1", &[]).await;
    let job = app
        .run_job(&app_job(
            &format!("{}/{}", proxy.address, unique("metrics")),
            &format!("{bad}:b1"),
            &["v1"],
        ))
        .await;
    assert_eq!(job["status"], "failed", "{job:#}");
    // A request for a job that does not exist, counted by its route.
    let missing = app
        .get(&format!("/api/v1/jobs/{}", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(missing.status(), 404);

    let scrape = scrape(&app).await;

    let info = samples(&scrape, "publishd_build_info", &[]);
    assert_eq!(info.len(), 1, "{scrape:#?}");
    assert_eq!(info[0].labels["version"], env!("CARGO_PKG_VERSION"));

    for (status, count) in [
        ("queued", 0.0),
        ("running", 0.0),
        ("succeeded", 1.0),
        ("failed", 1.0),
        ("cancelled", 0.0),
    ] {
        assert_eq!(
            value(&scrape, "publishd_jobs", &[("status", status)]),
            count,
            "{status}"
        );
    }
    assert_eq!(value(&scrape, "publishd_targets_queued", &[]), 0.0);
    assert_eq!(value(&scrape, "publishd_targets_in_flight", &[]), 0.0);

    let step = |step: &str, outcome: &str| {
        observations(
            &scrape,
            "publishd_step_duration_seconds",
            &[("step", step), ("outcome", outcome)],
        )
    };
    assert_eq!(step("push", "succeeded"), 2);
    assert_eq!(step("push", "failed"), 1);
    assert_eq!(step("verify", "succeeded"), 2);
    assert_eq!(
        step("untag", "succeeded"),
        2,
        "every target the engine tagged cleans up"
    );
    assert_eq!(step("tag", "succeeded"), 2, "one tag per run on the engine");
    assert_eq!(step("tag", "failed"), 0);

    assert_eq!(
        value(&scrape, "publishd_retries_total", &[("kind", "transient")]),
        2.0
    );
    let pushed = value(&scrape, "publishd_pushed_bytes_total", &[]);
    assert!(
        (f64::from(1 << 20)..f64::from(3 << 20)).contains(&pushed),
        "pushed {pushed} bytes for one 1 MiB layer pushed once"
    );

    // Requests by route template, never by raw path.
    assert_eq!(
        value(
            &scrape,
            "publishd_http_requests_total",
            &[
                ("method", "POST"),
                ("route", "/api/v1/jobs"),
                ("status", "202")
            ]
        ),
        2.0
    );
    assert_eq!(
        value(
            &scrape,
            "publishd_http_requests_total",
            &[
                ("method", "GET"),
                ("route", "/api/v1/jobs/{id}"),
                ("status", "404")
            ]
        ),
        1.0
    );
    let polls = value(
        &scrape,
        "publishd_http_requests_total",
        &[
            ("method", "GET"),
            ("route", "/api/v1/jobs/{id}"),
            ("status", "200"),
        ],
    );
    assert!(polls >= 2.0, "run_job polls each job: {polls}");
    assert_eq!(
        observations(
            &scrape,
            "publishd_http_request_duration_seconds",
            &[
                ("method", "GET"),
                ("route", "/api/v1/jobs/{id}"),
                ("status", "200")
            ]
        ),
        polls as u64
    );
    let missing_path = missing.url().path().to_owned();
    assert!(
        scrape
            .iter()
            .all(|sample| sample.labels.get("route") != Some(&missing_path)),
        "a raw path became a label"
    );
}

#[tokio::test]
async fn queued_and_in_flight_targets_are_gauged_and_the_scrape_needs_no_token() {
    // A token guards the API, not the scrape.
    let app = TestApp::spawn_with(|settings| {
        settings.workers = 1;
        settings.tokens.tokens = Some("secret-token".into());
    })
    .await;
    let engine = TestEngine::connect();
    let hanging = support::HangingRegistry::start().await;
    let name = unique("gauges");
    engine.import_image(&name, "b1", &[]).await;
    let mut spec = app_job(
        &format!("{}/{}", hanging.address, unique("gauges")),
        &format!("{name}:b1"),
        &["v1", "v2", "v3"],
    );
    // `force` skips the up-to-date read: the lane hangs in the push.
    spec["force"] = serde_json::json!(true);
    let response = app
        .client
        .post(app.url("/api/v1/jobs"))
        .bearer_auth("secret-token")
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);

    // One lane: one target pushing into a registry that never answers, two waiting.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let scrape = scrape(&app).await;
        let in_flight = value(&scrape, "publishd_targets_in_flight", &[]);
        let queued = value(&scrape, "publishd_targets_queued", &[]);
        let running = value(&scrape, "publishd_jobs", &[("status", "running")]);
        if in_flight == 1.0 && queued == 2.0 && running == 1.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "in flight {in_flight}, queued {queued}, running jobs {running}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
