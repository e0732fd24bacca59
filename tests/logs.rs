//! `--log-format json` on the real binary: one JSON object per line, a job's
//! lines carrying its `job_id` (and a target's its `reference`), an HTTP
//! request's lines its request id, which the caller gets back.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::binary::Server;
use support::engine::TestEngine;
use support::{TestEnv, app_job, unique};

/// Every line of the server's log as JSON; a line that is not fails the test.
fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|error| panic!("not JSON ({error}): {line}"));
            assert!(value.is_object(), "{line}");
            value
        })
        .collect()
}

#[tokio::test]
async fn json_logs_carry_the_job_the_target_and_the_request() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        0,
        &[("PUBLISHD_LOG_FORMAT", "json"), ("RUST_LOG", "info")],
    )
    .await;
    let name = unique("logs");
    engine.import_image(&name, "b1", &[]).await;
    let repo = format!("{}/{}", env.registry, unique("logs"));
    let reference = format!("{repo}/app:v1");

    // A request id the caller chose comes back, and names its log lines.
    let response = server
        .client
        .post(format!("{}/api/v1/jobs", server.base))
        .header("x-request-id", "pipeline-42-submit")
        .json(&app_job(&repo, &format!("{name}:b1"), &["v1"]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["x-request-id"], "pipeline-42-submit");
    let job: Value = response.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_owned();
    // Without one, the service makes one up and says which.
    let response = server
        .client
        .get(format!("{}/api/v1/jobs/{id}", server.base))
        .send()
        .await
        .unwrap();
    let generated = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(uuid::Uuid::parse_str(&generated).is_ok(), "{generated}");

    let finished = server.wait_finished(&id).await;
    assert_eq!(finished["status"], "succeeded", "{finished:#}");
    // A failed request is logged too (the line an operator looks for).
    let response = server
        .client
        .post(format!("{}/api/v1/jobs", server.base))
        .header("x-request-id", "pipeline-42-bad")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    server.terminate().await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let log = std::fs::read_to_string(dir.path().join("serve-0.log")).unwrap();
    let lines = json_lines(&log);
    assert!(lines.len() > 5, "{log}");
    for line in &lines {
        assert!(line["timestamp"].is_string(), "{line}");
        assert!(line["level"].is_string(), "{line}");
        // Span fields sit at the top level, beside the event's own.
        assert!(
            line.get("spans").is_none() && line.get("span").is_none(),
            "{line}"
        );
    }

    // The request's lines: the submission, its answer, its status.
    let submitted: Vec<&Value> = lines
        .iter()
        .filter(|line| line["request_id"] == "pipeline-42-submit")
        .collect();
    assert!(
        submitted
            .iter()
            .any(|line| line["status"] == 202 && line["method"] == "POST"),
        "{submitted:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|line| line["request_id"] == generated.as_str()),
        "{log}"
    );
    assert!(
        lines
            .iter()
            .any(|line| line["request_id"] == "pipeline-42-bad" && line["status"] == 400),
        "{log}"
    );

    // The job's lines: every one that is about it says so in `job_id`, and
    // the target's steps also in `reference`.
    let about_job: Vec<&Value> = lines
        .iter()
        .filter(|line| line["job_id"] == id.as_str())
        .collect();
    assert!(!about_job.is_empty(), "{log}");
    for line in &lines {
        if line.to_string().contains(&id) {
            assert_eq!(
                line["job_id"],
                id.as_str(),
                "a line about the job without job_id: {line}"
            );
        }
        if line.get("reference").is_some() {
            assert!(line["job_id"].is_string(), "{line}");
        }
    }
    let target_lines: Vec<&&Value> = about_job
        .iter()
        .filter(|line| line["reference"] == reference.as_str())
        .collect();
    assert!(
        target_lines.len() >= 2,
        "the target's steps are logged with its reference: {about_job:#?}"
    );
}
