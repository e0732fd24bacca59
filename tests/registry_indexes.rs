//! Registry sources that are image indexes: BuildKit's OCI index of one
//! platform and its provenance attestation, two platforms with and without
//! attestations, a Docker manifest list. Each is written by the test into
//! the real registry, published by a publishd without an engine to a second
//! repository and to a second registry, and checked where it lives: the
//! published index, each platform's manifest and config in the registry,
//! and each platform pulled by dockerd and by Podman, pullers we did not
//! write. Then werf's up-to-date rule for an index, `platforms` subsets, and
//! the sources publishd refuses, each with the part it cannot publish.

mod support;

use serde_json::{Value, json};
use support::engine::TestEngine;
use support::fault_proxy::{FaultProxy, Faults};
use support::images::{
    Format, OCI_MANIFEST, PlatformImage, push_attestation, push_index, push_platform_image, sha256,
};
use support::registry::Registry;
use support::{TestApp, TestEnv, unique};

/// An index as a builder pushed it.
struct Built {
    repository: String,
    tag: String,
    digest: String,
    bytes: Vec<u8>,
    images: Vec<PlatformImage>,
}

impl Built {
    fn source(&self, registry: &str) -> String {
        format!("docker://{registry}/{}:{}", self.repository, self.tag)
    }

    fn entries(&self) -> Vec<Value> {
        let index: Value = serde_json::from_slice(&self.bytes).unwrap();
        index["manifests"].as_array().unwrap().clone()
    }
}

/// What BuildKit pushes for `platforms`: the images, then (with
/// `provenance`) one attestation manifest per image, in one index.
async fn build(
    registry: &Registry,
    platforms: &[&'static str],
    provenance: bool,
    format: Format,
) -> Built {
    let repository = unique("ci/multi");
    let mut images = Vec::new();
    for platform in platforms {
        images.push(push_platform_image(registry, &repository, platform, format).await);
    }
    let mut entries: Vec<Value> = images.iter().map(PlatformImage::descriptor).collect();
    if provenance {
        for image in &images {
            entries.push(push_attestation(registry, &repository, image).await);
        }
    }
    let (digest, bytes) = push_index(registry, &repository, "build-1", format, &entries).await;
    Built {
        repository,
        tag: "build-1".to_owned(),
        digest,
        bytes,
        images,
    }
}

async fn spawn_engineless() -> TestApp {
    TestApp::spawn_with(|settings| settings.docker_host = Some("none".to_owned())).await
}

/// `REGISTRY/REPOSITORY:TAG` split.
fn parts(reference: &str) -> (&str, &str, &str) {
    let (registry, path) = reference.split_once('/').unwrap();
    let (repository, tag) = path.rsplit_once(':').unwrap();
    (registry, repository, tag)
}

/// The target published `built` whole (or the images of `platforms` and
/// their attestations): the registry serves an index of the source's media
/// type and annotations, whose platform images carry werf's labels over the
/// builder's config and layers, and whose attestations are the builder's
/// bytes, re-pointed at the new manifests. Answers the index.
async fn assert_index(
    reader: &Registry,
    target: &Value,
    built: &Built,
    platforms: &[&str],
) -> Value {
    assert_eq!(target["status"], "succeeded", "{target:#}");
    assert_eq!(target["published_via"], "registry", "{target:#}");
    let reference = target["reference"].as_str().unwrap();
    let (_, repository, tag) = parts(reference);
    let (digest, bytes) = reader.raw_manifest(repository, tag).await.unwrap();
    assert_eq!(
        target["digest"],
        digest.as_str(),
        "the index is the target's digest"
    );
    assert_eq!(
        target["image_id"],
        digest.as_str(),
        "an index's id is its digest"
    );
    let index: Value = serde_json::from_slice(&bytes).unwrap();
    let source: Value = serde_json::from_slice(&built.bytes).unwrap();
    assert_eq!(index["mediaType"], source["mediaType"]);
    assert_eq!(index["annotations"], source["annotations"]);

    let kept_image =
        |image: &PlatformImage| platforms.is_empty() || platforms.contains(&image.platform);
    let mut expected: Vec<(Value, Option<&PlatformImage>)> = Vec::new();
    for entry in built.entries() {
        let image = built
            .images
            .iter()
            .find(|image| entry["digest"] == image.digest.as_str());
        let described = built.images.iter().find(|image| {
            entry["annotations"]["vnd.docker.reference.digest"] == image.digest.as_str()
        });
        match (image, described) {
            (Some(image), _) if kept_image(image) => expected.push((entry, Some(image))),
            (None, Some(image)) if kept_image(image) => expected.push((entry, None)),
            _ => {}
        }
    }
    let written = index["manifests"].as_array().unwrap();
    assert_eq!(written.len(), expected.len(), "{index:#}");
    let mut new_digests = Vec::new();
    for (written, (entry, image)) in written.iter().zip(&expected) {
        assert_eq!(written["mediaType"], entry["mediaType"]);
        assert_eq!(written["platform"], entry["platform"]);
        let Some(image) = image else { continue };
        let new = written["digest"].as_str().unwrap();
        assert_ne!(new, image.digest, "{} got werf's labels", image.platform);
        let pushed = reader.by_digest(repository, new).await;
        assert_eq!(pushed.manifest["mediaType"], image.media_type);
        assert_eq!(
            pushed.label("werf-content-signature"),
            Some(built.digest.as_str())
        );
        assert_eq!(pushed.label("werf-docker-image-name"), Some(reference));
        assert_eq!(pushed.label("werf-image-tag"), target["tag"].as_str());
        assert_eq!(pushed.label("werf-image-version"), Some("1"));
        assert_eq!(pushed.label("built-by"), Some("ci"));
        assert_eq!(pushed.config["config"]["Env"], json!(["MODE=ci"]));
        assert_eq!(pushed.diff_ids(), image.diff_ids);
        assert_eq!(pushed.layer_digests(), image.layers, "{}", image.platform);
        new_digests.push((image.digest.clone(), new.to_owned()));
    }
    for (written, (entry, image)) in written.iter().zip(&expected) {
        if image.is_some() {
            continue;
        }
        // Carried byte for byte, and re-pointed at the new manifest.
        assert_eq!(written["digest"], entry["digest"]);
        let (served, _) = reader
            .raw_manifest(repository, written["digest"].as_str().unwrap())
            .await
            .unwrap();
        assert_eq!(written["digest"], served.as_str());
        let old = entry["annotations"]["vnd.docker.reference.digest"]
            .as_str()
            .unwrap();
        let new = &new_digests.iter().find(|(from, _)| from == old).unwrap().1;
        assert_eq!(
            written["annotations"]["vnd.docker.reference.digest"],
            new.as_str()
        );
        assert_eq!(
            written["annotations"]["vnd.docker.reference.type"],
            "attestation-manifest"
        );
    }
    index
}

/// Pulls each platform of `reference` with a real engine and checks what
/// it kept: werf's labels, the builder's layers, the platform.
async fn assert_pulled(
    engine: &TestEngine,
    reference: &str,
    built: &Built,
    credentials: Option<(&str, &str)>,
) {
    for image in &built.images {
        let pulled = engine
            .pull(reference, Some(image.platform), credentials)
            .await;
        let mut platform = image.platform.splitn(3, '/');
        let os_arch = (platform.next().unwrap(), platform.next().unwrap());
        assert_eq!(
            (pulled.os.as_str(), pulled.architecture.as_str()),
            os_arch,
            "{reference}"
        );
        if let Some(variant) = &pulled.variant {
            assert_eq!(Some(variant.as_str()), platform.next(), "{reference}");
        }
        assert_eq!(
            pulled.diff_ids, image.diff_ids,
            "{reference} {}",
            image.platform
        );
        assert_eq!(
            pulled.labels.get("werf-content-signature"),
            Some(&built.digest),
            "{reference} {}",
            image.platform
        );
        assert_eq!(
            pulled
                .labels
                .get("werf-docker-image-name")
                .map(String::as_str),
            Some(reference)
        );
        assert_eq!(
            pulled.labels.get("built-by").map(String::as_str),
            Some("ci")
        );
    }
}

/// Both pullers at hand: the test dockerd, and Podman where it runs.
fn pullers() -> Vec<TestEngine> {
    let env = TestEnv::get();
    let mut engines = vec![TestEngine::connect()];
    match &env.podman {
        Ok(host) => engines.push(TestEngine::connect_to(host)),
        Err(why) => eprintln!("Podman does not pull here: {why}"),
    }
    engines
}

#[tokio::test]
async fn buildkits_single_platform_index_with_provenance_is_published_whole() {
    let env = TestEnv::get();
    let reader = Registry::open(&env.registry);
    let built = build(&reader, &["linux/amd64"], true, Format::Oci).await;
    let app = spawn_engineless().await;

    // To a second repository of the same registry, by tag and by content.
    let repo = format!("{}/{}", env.registry, unique("pub"));
    let job = app
        .run_job(&json!({
            "repo": repo,
            "images": [{"name": "app", "source": built.source(&env.registry)}],
            "tags": [{"strategy": "custom", "value": "v1"}, {"strategy": "content"}],
        }))
        .await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    assert_eq!(job["images"][0]["source_digest"], built.digest.as_str());
    assert_eq!(job["images"][0]["source_image_id"], built.digest.as_str());
    let content = built.digest.trim_start_matches("sha256:");
    assert_eq!(
        job["targets"][1]["reference"],
        format!("{repo}/app:{content}")
    );
    for target in job["targets"].as_array().unwrap() {
        assert_index(&reader, target, &built, &[]).await;
    }
    for engine in pullers() {
        assert_pulled(&engine, &format!("{repo}/app:v1"), &built, None).await;
    }

    // To a second registry, behind token auth, with the job's credentials.
    let other = Registry::with_auth(&env.token_registry, &env.auth_user, &env.auth_password);
    let repo = format!("{}/{}", env.token_registry, unique("pub"));
    let job = app
        .run_job(&json!({
            "repo": repo,
            "images": [{"name": "app", "source": built.source(&env.registry)}],
            "tags": [{"strategy": "custom", "value": "v1"}],
            "registry_auth": {"username": env.auth_user, "password": env.auth_password},
        }))
        .await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    assert_index(&other, &job["targets"][0], &built, &[]).await;
    let credentials = Some((env.auth_user.as_str(), env.auth_password.as_str()));
    for engine in pullers() {
        assert_pulled(&engine, &format!("{repo}/app:v1"), &built, credentials).await;
    }

    // A platform it lacks is refused, saying what it is: one platform and
    // an attestation, not "a multi-platform image".
    let answer = app
        .post_job(&json!({
            "repo": repo,
            "images": [{"name": "app", "source": built.source(&env.registry)}],
            "tags": [{"strategy": "custom", "value": "v2"}],
            "platforms": ["linux/arm64"],
        }))
        .await;
    assert_eq!(answer.status(), 422);
    let error: Value = answer.json::<Value>().await.unwrap()["error"].clone();
    assert_eq!(error["field"], "images[0].source", "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("no image for linux/arm64")
            && message.contains("1 platform (linux/amd64) and 1 attestation"),
        "{message}"
    );
    assert!(!message.contains("multi-platform"), "{message}");
}

#[tokio::test]
async fn two_platforms_are_published_with_and_without_attestations() {
    let env = TestEnv::get();
    let reader = Registry::open(&env.registry);
    let app = spawn_engineless().await;
    for provenance in [true, false] {
        let built = build(
            &reader,
            &["linux/amd64", "linux/arm64"],
            provenance,
            Format::Oci,
        )
        .await;
        let repo = format!("{}/{}", env.registry, unique("pub"));
        let spec = json!({
            "repo": repo,
            "images": [{"name": "app", "source": built.source(&env.registry)}],
            "tags": [{"strategy": "custom", "value": "v1"}],
        });
        let job = app.run_job(&spec).await;
        let index = assert_index(&reader, &job["targets"][0], &built, &[]).await;
        assert_eq!(
            index["manifests"].as_array().unwrap().len(),
            if provenance { 4 } else { 2 }
        );
        for engine in pullers() {
            assert_pulled(&engine, &format!("{repo}/app:v1"), &built, None).await;
        }

        // werf's up-to-date rule: the tag holds an index of the same
        // platforms whose images carry the same content signature.
        let again = app.run_job(&spec).await;
        assert_eq!(again["targets"][0]["up_to_date"], true, "{again:#}");
        assert_eq!(again["targets"][0]["digest"], job["targets"][0]["digest"]);
        assert_eq!(again["targets"][0]["image_id"], job["targets"][0]["digest"]);

        // A subset: arm64 alone (with its attestation), under v1 too: an
        // index of other platforms is not up to date.
        let mut subset = spec.clone();
        subset["platforms"] = json!(["linux/arm64"]);
        let job = app.run_job(&subset).await;
        assert_eq!(job["targets"][0]["up_to_date"], false, "{job:#}");
        let index = assert_index(&reader, &job["targets"][0], &built, &["linux/arm64"]).await;
        assert_eq!(
            index["manifests"].as_array().unwrap().len(),
            if provenance { 2 } else { 1 }
        );
        assert_eq!(job["platforms"], json!(["linux/arm64"]));
        let again = app.run_job(&subset).await;
        assert_eq!(again["targets"][0]["up_to_date"], true, "{again:#}");
        let arm64 = TestEngine::connect()
            .pull(&format!("{repo}/app:v1"), Some("linux/arm64"), None)
            .await;
        assert_eq!(arm64.diff_ids, built.images[1].diff_ids);
    }
}

#[tokio::test]
async fn a_docker_manifest_list_is_published_as_a_manifest_list() {
    let env = TestEnv::get();
    let reader = Registry::open(&env.registry);
    let built = build(
        &reader,
        &["linux/amd64", "linux/arm/v7"],
        false,
        Format::Docker,
    )
    .await;
    let app = spawn_engineless().await;
    for (registry, reader, auth) in [
        (&env.registry, Registry::open(&env.registry), None),
        (
            &env.token_registry,
            Registry::with_auth(&env.token_registry, &env.auth_user, &env.auth_password),
            Some(json!({"username": env.auth_user, "password": env.auth_password})),
        ),
    ] {
        let repo = format!("{registry}/{}", unique("pub"));
        let mut spec = json!({
            "repo": repo,
            "images": [{"name": "app", "source": built.source(&env.registry)}],
            "tags": [{"strategy": "custom", "value": "v1"}],
        });
        if let Some(auth) = auth {
            spec["registry_auth"] = auth;
        }
        let job = app.run_job(&spec).await;
        let index = assert_index(&reader, &job["targets"][0], &built, &[]).await;
        assert_eq!(
            index["mediaType"],
            "application/vnd.docker.distribution.manifest.list.v2+json"
        );
        // Up to date with a variant among its platforms.
        let again = app.run_job(&spec).await;
        assert_eq!(again["targets"][0]["up_to_date"], true, "{again:#}");
        let credentials = spec
            .get("registry_auth")
            .map(|_| (env.auth_user.as_str(), env.auth_password.as_str()));
        for engine in pullers() {
            assert_pulled(&engine, &format!("{repo}/app:v1"), &built, credentials).await;
        }
    }
}

#[tokio::test]
async fn what_cannot_be_published_is_refused_naming_the_part() {
    let env = TestEnv::get();
    let reader = Registry::open(&env.registry);
    let app = spawn_engineless().await;
    let repository = unique("ci/odd");
    let refusal = |source: String| {
        let app = &app;
        let repo = format!("{}/{}", env.registry, unique("pub"));
        async move {
            let answer = app
                .post_job(
                    &json!({"repo": repo, "images": [{"name": "app", "source": source}],
                                  "tags": [{"strategy": "custom", "value": "v1"}]}),
                )
                .await;
            let status = answer.status();
            let error: Value = answer.json::<Value>().await.unwrap()["error"].clone();
            assert_eq!(status, 422, "{error}");
            assert_eq!(error["field"], "images[0].source", "{error}");
            error["message"].as_str().unwrap().to_owned()
        }
    };
    let put = |manifest: Value| {
        let (reader, repository, registry) = (&reader, &repository, &env.registry);
        async move {
            let media_type = manifest["mediaType"].as_str().unwrap().to_owned();
            let bytes = serde_json::to_vec(&manifest).unwrap();
            let digest = reader
                .put_manifest(repository, &sha256(&bytes), &media_type, &bytes)
                .await;
            format!("docker://{registry}/{repository}@{digest}")
        }
    };
    // A blob's descriptor fields.
    let blob = |media_type: &'static str, bytes: &'static [u8]| {
        let (reader, repository) = (&reader, &repository);
        async move {
            let digest = reader.put_blob(repository, bytes).await;
            json!({"mediaType": media_type, "size": bytes.len(), "digest": digest})
        }
    };
    const IMAGE_CONFIG: &[u8] =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    const LAYER: &[u8] = b"not really a layer";

    // An artifact (a Helm chart): its config is not an image config.
    let message = refusal(
        put(json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                   "config": blob("application/vnd.cncf.helm.config.v1+json", br#"{"name":"chart","version":"1.0.0"}"#).await,
                   "layers": [blob("application/vnd.cncf.helm.chart.content.v1.tar+gzip", LAYER).await]}))
        .await,
    )
    .await;
    assert!(
        message.contains("\"application/vnd.cncf.helm.config.v1+json\", not an image config"),
        "{message}"
    );

    // A Windows base layer, which registries need not hold.
    let mut foreign = blob(
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        LAYER,
    )
    .await;
    foreign["urls"] = json!(["https://example.com/base"]);
    let message = refusal(
        put(json!({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                   "config": blob("application/vnd.docker.container.image.v1+json", IMAGE_CONFIG).await,
                   "layers": [foreign.clone()]}))
        .await,
    )
    .await;
    let layer = foreign["digest"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            "layer 0 ({layer}) is a foreign (non-distributable) layer"
        )),
        "{message}"
    );

    // A layer type publishd does not know.
    let message = refusal(
        put(json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                   "config": blob("application/vnd.oci.image.config.v1+json", IMAGE_CONFIG).await,
                   "layers": [blob("application/x-squashfs", LAYER).await]}))
        .await,
    )
    .await;
    assert!(
        message.contains("unknown media type \"application/x-squashfs\""),
        "{message}"
    );

    // An index inside an index.
    let image = push_platform_image(&reader, &repository, "linux/amd64", Format::Oci).await;
    let (inner, bytes) = push_index(
        &reader,
        &repository,
        "inner",
        Format::Oci,
        &[image.descriptor()],
    )
    .await;
    let message = refusal(
        put(
            json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                   "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json",
                                  "size": bytes.len(), "digest": inner,
                                  "platform": {"os": "linux", "architecture": "amd64"}}]}),
        )
        .await,
    )
    .await;
    assert!(message.contains("is itself an index"), "{message}");
}

#[tokio::test]
async fn a_registry_that_refuses_zstd_layers_is_named_as_the_reason() {
    let env = TestEnv::get();
    let reader = Registry::open(&env.registry);
    let repository = unique("ci/zstd");
    // The layer's bytes are not zstd: nothing reads them, the target
    // registry refuses the manifest before any puller could.
    const LAYER: &[u8] = b"zstd frames would be here";
    let layer = reader.put_blob(&repository, LAYER).await;
    let config = serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [sha256(b"a tar")]}}))
    .unwrap();
    let config_digest = reader.put_blob(&repository, &config).await;
    let manifest = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": config.len(), "digest": config_digest},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "size": LAYER.len(), "digest": layer}]}))
    .unwrap();
    let digest = reader
        .put_manifest(&repository, "zstd", OCI_MANIFEST, &manifest)
        .await;

    let proxy = FaultProxy::start(&env.registry, Faults::RefuseZstd).await;
    let app = spawn_engineless().await;
    let job = app
        .run_job(&json!({
            "repo": format!("{}/{}", proxy.address, unique("pub")),
            "images": [{"name": "app", "source": format!("docker://{}/{repository}@{digest}", env.registry)}],
            "tags": [{"strategy": "custom", "value": "v1"}],
        }))
        .await;
    assert_eq!(job["status"], "failed", "{job:#}");
    let error = job["targets"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("MANIFEST_INVALID")
            && error.contains(&format!("its layer {layer} is zstd-compressed")),
        "{error}"
    );
    assert_eq!(
        proxy.injected(),
        1,
        "refused once: a refusal is not retried"
    );
}
