//! A failed untag is a warning, not a failed publish: the real engine behind
//! a wrapper that refuses to remove names.

mod support;

use std::sync::Arc;

use async_trait::async_trait;
use publishd::credentials::RegistryAuth;
use publishd::engine::{
    DockerEngine, Engine, EngineDescription, EngineError, LabelBuild, LabelledImage, PushProgress,
    SourceImage,
};
use support::engine::TestEngine;
use support::registry::Registry;
use support::{TestApp, TestEnv, app_job, unique};

/// The real engine, except that removing a name always fails.
struct RemoveFails(DockerEngine);

#[async_trait]
impl Engine for RemoveFails {
    async fn ping(&self) -> Result<(), EngineError> {
        self.0.ping().await
    }
    async fn describe(&self) -> Result<EngineDescription, EngineError> {
        self.0.describe().await
    }
    async fn build_image(&self, build: &LabelBuild, name: &str) -> Result<String, EngineError> {
        self.0.build_image(build, name).await
    }
    async fn inspect_image(&self, name: &str) -> Result<Option<SourceImage>, EngineError> {
        self.0.inspect_image(name).await
    }
    async fn image_id(&self, reference: &str) -> Result<Option<String>, EngineError> {
        self.0.image_id(reference).await
    }
    async fn load_image(&self, image: &LabelledImage, reference: &str) -> Result<(), EngineError> {
        self.0.load_image(image, reference).await
    }
    async fn push(
        &self,
        reference: &str,
        auth: &RegistryAuth,
        progress: &(dyn Fn(PushProgress) + Send + Sync),
    ) -> Result<String, EngineError> {
        self.0.push(reference, auth, progress).await
    }
    async fn remove_reference(&self, _reference: &str) -> Result<(), EngineError> {
        Err(EngineError::Api {
            status: 409,
            message: "injected: image is in use".to_owned(),
        })
    }
    async fn tag_image(&self, image_id: &str, reference: &str) -> Result<(), EngineError> {
        self.0.tag_image(image_id, reference).await
    }
}

#[tokio::test]
async fn a_failed_untag_is_a_warning() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let name = unique("untag");
    engine.import_image(&name, "b1", &[]).await;
    let docker = DockerEngine::new(Some(&env.docker_host)).unwrap();
    let app = TestApp::spawn_on_engine(Arc::new(RemoveFails(docker))).await;
    let repo = format!("{}/{}", env.registry, unique("untag"));

    let job = app
        .run_job(&app_job(&repo, &format!("{name}:b1"), &["v1"]))
        .await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    let target = &job["targets"][0];
    let warnings = target["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{target:#}");
    assert!(
        warnings[0].as_str().unwrap().contains("injected"),
        "{target:#}"
    );
    let reference = target["reference"].as_str().unwrap();
    let pushed = Registry::open(&env.registry)
        .pushed(reference)
        .await
        .unwrap();
    assert_eq!(pushed.digest, target["digest"].as_str().unwrap());

    // The name really was left behind; clean it up through the real engine.
    assert!(engine.image(reference).await.is_some());
    engine
        .docker
        .remove_image(
            reference,
            None::<bollard::query_parameters::RemoveImageOptions>,
            None,
        )
        .await
        .unwrap();
}
