//! A local source on dockerd 26's containerd image store, built by
//! BuildKit as a pipeline builds it today (one platform, no attestation: a
//! single image). Its id there is its manifest's digest, which is what the
//! content tag and werf's content signature name; its first target goes
//! through the engine (the build tag method, OCI manifests), the others are
//! written registry-side from that push, and clients we did not write (the
//! other dockerd, Podman) pull them with their labels, layers and platform.

mod support;

use serde_json::json;
use support::buildkit::{Build, Output};
use support::engine::{Pulled, TestEngine};
use support::registry::Registry;
use support::{TestApp, TestEngineKind, TestEnv, unique};

#[tokio::test]
async fn a_buildkit_image_is_published_from_the_containerd_store() {
    let env = TestEnv::get();
    let docker26 = TestEngineKind::Docker26;
    let name = format!("{}:b1", unique("buildkit"));
    let id = Build {
        platforms: &["linux/amd64"],
        provenance: false,
        output: Output::Load(&name),
    }
    .run()
    .await;
    let engine = TestEngine::connect_to(&docker26.host());
    let source = engine.image(&name).await.unwrap();
    assert_eq!(source.id, id, "the engine's id is the manifest digest");

    let app = TestApp::spawn_with(|settings| {
        settings.docker_host = Some(docker26.host());
        settings.workers = 3;
    })
    .await;
    let repo = format!("{}/{}", env.registry, unique("containerd"));
    let job = app
        .run_job(&json!({
            "repo": repo,
            "images": [{"name": "app", "source": name}],
            "tags": [{"strategy": "custom", "value": "v1"},
                     {"strategy": "custom", "value": "v2"},
                     {"strategy": "content"}]
        }))
        .await;
    let registry = Registry::open(&env.registry);
    registry.assert_holds(&job).await;
    let targets = job["targets"].as_array().unwrap();
    assert_eq!(
        targets[2]["reference"],
        format!("{repo}/app:{}", id.trim_start_matches("sha256:"))
    );
    let mut ways: Vec<_> = targets
        .iter()
        .map(|target| target["published_via"].as_str().unwrap())
        .collect();
    ways.sort();
    assert_eq!(ways, ["engine", "registry", "registry"], "{job:#}");
    let others = [
        Some(TestEngine::connect_to(&TestEngineKind::Docker20.host())),
        env.podman
            .as_ref()
            .ok()
            .map(|host| TestEngine::connect_to(host)),
    ];
    for target in targets {
        let reference = target["reference"].as_str().unwrap();
        let pushed = registry.pushed(reference).await.unwrap();
        assert_eq!(
            pushed.manifest["mediaType"],
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(pushed.label("werf-content-signature"), Some(id.as_str()));
        assert_eq!(pushed.label("built-by"), Some("buildkit"));
        assert_eq!(pushed.diff_ids(), source.layers);
        assert_eq!(
            (
                pushed.config["os"].as_str(),
                pushed.config["architecture"].as_str()
            ),
            (Some("linux"), Some("amd64"))
        );
        let expected = Pulled {
            labels: serde_json::from_value(pushed.config["config"]["Labels"].clone()).unwrap(),
            diff_ids: source.layers.clone(),
            os: "linux".to_owned(),
            architecture: "amd64".to_owned(),
            variant: None,
        };
        for other in others.iter().flatten() {
            assert_eq!(
                other.pull(reference, None, None).await,
                expected,
                "{reference}"
            );
        }
    }
    if let Err(reason) = &env.podman {
        eprintln!("Podman cannot run here, so it pulled nothing: {reason}");
    }
    assert!(engine.names_under(&repo).await.is_empty());
    assert!(engine.image(&name).await.is_some(), "the source is kept");
}
