//! Test images built by BuildKit, the way pipelines build them today:
//! `docker buildx build` of the docker 26 CLI with its default `docker`
//! driver, on the test environment's dockerd 26 (containerd image store).
//! `FROM scratch` + `COPY` of a unique file, for any platform (no
//! emulation: nothing runs), with or without a provenance attestation;
//! pushed to a registry, or loaded into dockerd 26.

use std::process::Stdio;

use super::{TestEngineKind, env_var};

/// Where a build goes.
#[derive(Debug, Clone, Copy)]
pub enum Output<'a> {
    /// `--push` as this reference (`REGISTRY/REPO:TAG`).
    Push(&'a str),
    /// `--load` into dockerd 26 under this name.
    Load(&'a str),
}

/// One `docker buildx build`.
#[derive(Debug, Clone, Copy)]
pub struct Build<'a> {
    /// `os/arch[/variant]` each; one or more.
    pub platforms: &'a [&'a str],
    /// BuildKit's default provenance attestation (`mode=min`), or none.
    pub provenance: bool,
    pub output: Output<'a>,
}

impl Build<'_> {
    /// Runs the build; answers the digest BuildKit reports for what it
    /// made (the manifest, or the index of several platforms or with an
    /// attestation): on the containerd store, the loaded image's id.
    pub async fn run(&self) -> String {
        let context = tempfile::tempdir().unwrap();
        std::fs::write(
            context.path().join("Dockerfile"),
            "FROM scratch\nCOPY app.txt /app.txt\nLABEL built-by=buildkit\n",
        )
        .unwrap();
        std::fs::write(
            context.path().join("app.txt"),
            uuid::Uuid::now_v7().to_string(),
        )
        .unwrap();
        let metadata = context.path().join("metadata.json");
        let (flag, name) = match self.output {
            Output::Push(reference) => ("--push", reference),
            Output::Load(name) => ("--load", name),
        };
        let output = tokio::process::Command::new(env_var("PUBLISHD_TEST_DOCKER_CLI"))
            .env("DOCKER_CONFIG", env_var("PUBLISHD_TEST_DOCKER_CONFIG"))
            .args([
                "--host",
                &TestEngineKind::Docker26.host(),
                "buildx",
                "build",
            ])
            .args(["--platform", &self.platforms.join(",")])
            .arg(format!("--provenance={}", self.provenance))
            .args([flag, "--tag", name, "--metadata-file"])
            .arg(&metadata)
            .arg(context.path())
            .stdin(Stdio::null())
            .output()
            .await
            .expect("docker buildx runs");
        assert!(
            output.status.success(),
            "docker buildx build {flag} {name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let metadata: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&metadata).unwrap()).unwrap();
        metadata["containerimage.digest"]
            .as_str()
            .expect("BuildKit reports the image's digest")
            .to_owned()
    }
}
