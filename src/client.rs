//! `publishd publish`: a pipeline step in one command. Submits a job to a
//! running service, waits for it and reports each target; the exit code says
//! whether everything was published.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::config::PublishArgs;

/// How often the job is polled.
const POLL: Duration = Duration::from_millis(500);

/// Runs the step; answers whether every target succeeded.
pub async fn publish(args: PublishArgs) -> anyhow::Result<bool> {
    let body = job_body(&args)?;
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = &args.token {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .context("the token is not a valid header value")?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .build()?;
    let base = args.server.trim_end_matches('/');
    let mut request = client.post(format!("{base}/api/v1/jobs")).json(&body);
    if let Some(key) = &args.idempotency_key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("submitting to {base}"))?;
    let status = response.status();
    let answer: Value = response.json().await.context("reading the answer")?;
    if !status.is_success() {
        let error = &answer["error"];
        let field = error["field"]
            .as_str()
            .map(|f| format!(" ({f})"))
            .unwrap_or_default();
        bail!(
            "publishd refused the job: {}{field}",
            error["message"].as_str().unwrap_or("?")
        );
    }
    let id = answer["id"]
        .as_str()
        .context("the answer has no job id")?
        .to_owned();
    eprintln!("job {id} accepted; waiting");

    let deadline = Instant::now() + Duration::from_secs(args.wait_timeout);
    let job = loop {
        let job: Value = client
            .get(format!("{base}/api/v1/jobs/{id}"))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("reading job {id}"))?
            .json()
            .await?;
        if matches!(
            job["status"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        ) {
            break job;
        }
        if Instant::now() > deadline {
            bail!(
                "job {id} still {} after {}s",
                job["status"],
                args.wait_timeout
            );
        }
        tokio::time::sleep(POLL).await;
    };
    for target in job["targets"].as_array().into_iter().flatten() {
        let reference = target["reference"].as_str().unwrap_or("(no reference)");
        match target["status"].as_str() {
            Some("succeeded") => {
                // An up-to-date target was already in the registry: not pushed.
                let verb = if target["up_to_date"] == true {
                    "up-to-date"
                } else {
                    "published"
                };
                println!(
                    "{verb} {reference}@{}",
                    target["digest"].as_str().unwrap_or("?")
                );
            }
            other => println!(
                "{} {reference}: {}",
                other.unwrap_or("?"),
                target["error"].as_str().unwrap_or("")
            ),
        }
    }
    eprintln!("job {id} {}", job["status"].as_str().unwrap_or("?"));
    Ok(job["status"] == "succeeded")
}

/// The job spec the flags describe.
fn job_body(args: &PublishArgs) -> anyhow::Result<Value> {
    let images: Vec<Value> = args
        .images
        .iter()
        .map(|image| match image.split_once('=') {
            Some((name, source)) => json!({"name": name, "source": source}),
            None => json!({"name": null, "source": image}),
        })
        .collect();
    let tags = args
        .tags
        .iter()
        .map(|tag| match tag.split_once(':') {
            Some((strategy, value)) => Ok(json!({"strategy": strategy, "value": value})),
            None if tag == "content" => Ok(json!({"strategy": "content"})),
            None => bail!("--tag {tag:?}: expected STRATEGY:VALUE or content"),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(json!({"repo": args.repo, "repo_mode": args.repo_mode, "images": images, "tags": tags}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_become_a_job_spec() {
        let args = PublishArgs {
            server: String::new(),
            repo: "reg/acme".to_owned(),
            repo_mode: "monorepo".to_owned(),
            images: vec!["api=acme/api:b1".to_owned(), "sha256:abc".to_owned()],
            tags: vec!["git-branch:feature/x:y".to_owned(), "content".to_owned()],
            token: None,
            idempotency_key: None,
            wait_timeout: 1,
        };
        assert_eq!(
            job_body(&args).unwrap(),
            json!({
                "repo": "reg/acme", "repo_mode": "monorepo",
                "images": [{"name": "api", "source": "acme/api:b1"}, {"name": null, "source": "sha256:abc"}],
                "tags": [{"strategy": "git-branch", "value": "feature/x:y"}, {"strategy": "content"}]
            })
        );
        let bad = PublishArgs {
            tags: vec!["custom".to_owned()],
            ..args
        };
        assert!(job_body(&bad).is_err());
    }
}
