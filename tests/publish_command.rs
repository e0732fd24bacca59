//! `publishd publish`, the one-command pipeline step, against a running
//! service and the real registry.

mod support;

use std::process::Output;

use support::engine::TestEngine;
use support::registry::Registry;
use support::{TestApp, TestEnv, unique};

async fn run_publish(app: &TestApp, args: &[&str]) -> Output {
    let server = app.url("");
    let args: Vec<String> = ["publish", "--server", server.as_str()]
        .iter()
        .chain(args)
        .map(|s| s.to_string())
        .collect();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_publishd"))
        .args(&args)
        .output()
        .await
        .expect("publishd runs")
}

#[tokio::test]
async fn publishes_and_reports_each_reference_with_its_digest() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let name = unique("cmd");
    engine.import_image(&name, "b1", &[]).await;
    let app = TestApp::spawn().await;
    let repo = format!("{}/{}", env.registry, unique("cmd"));
    let source = format!("backend={name}:b1");
    let registry = Registry::open(&env.registry);
    let args = [
        "--repo",
        &repo,
        "--image",
        &source,
        "--tag",
        "custom:v1",
        "--tag",
        "git-branch:feature/Login",
    ];
    // The second run finds the same build in the registry: nothing is pushed.
    for verb in ["published ", "up-to-date "] {
        let output = run_publish(&app, &args).await;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stdout}\n{stderr}");
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 2, "{stdout}");
        for line in lines {
            let (reference, digest) = line
                .strip_prefix(verb)
                .and_then(|rest| rest.rsplit_once('@'))
                .unwrap_or_else(|| panic!("report line {line:?}"));
            let pushed = registry.pushed(reference).await.expect("in the registry");
            assert_eq!(pushed.digest, digest);
        }
    }
}

#[tokio::test]
async fn exit_codes_tell_failed_from_refused() {
    let env = TestEnv::get();
    let app = TestApp::spawn().await;
    let repo = format!("{}/{}", env.registry, unique("cmd-fail"));
    let failed = run_publish(
        &app,
        &[
            "--repo",
            &repo,
            "--image",
            "app=no-such-image:1",
            "--tag",
            "custom:v1",
        ],
    )
    .await;
    assert_eq!(failed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&failed.stdout).contains("does not exist"));

    let refused = run_publish(
        &app,
        &["--repo", &repo, "--image", "app=x", "--tag", "custom:-bad"],
    )
    .await;
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("tags[0].value"));
}
