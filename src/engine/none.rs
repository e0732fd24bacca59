//! The engine of a publishd run with `--docker-host none`: it publishes
//! registry sources (`docker://`) only, and every engine call answers that
//! there is no engine. The API refuses local sources up front; this is what
//! a target left over from a run with an engine meets.

use async_trait::async_trait;

use super::{
    Engine, EngineDescription, EngineError, LabelBuild, LabelledImage, PushProgress, SourceImage,
};
use crate::credentials::RegistryAuth;

/// Why there is no engine, as every call and the probes say it.
pub const NO_ENGINE: &str =
    "publishd runs without a docker engine (--docker-host none): only docker:// sources";

pub struct NoEngine;

fn none<T>() -> Result<T, EngineError> {
    Err(EngineError::Absent)
}

#[async_trait]
impl Engine for NoEngine {
    async fn ping(&self) -> Result<(), EngineError> {
        none()
    }

    async fn describe(&self) -> Result<EngineDescription, EngineError> {
        none()
    }

    async fn inspect_image(&self, _name: &str) -> Result<Option<SourceImage>, EngineError> {
        none()
    }

    async fn image_id(&self, _reference: &str) -> Result<Option<String>, EngineError> {
        none()
    }

    async fn load_image(
        &self,
        _image: &LabelledImage,
        _reference: &str,
    ) -> Result<(), EngineError> {
        none()
    }

    async fn build_image(&self, _build: &LabelBuild, _name: &str) -> Result<String, EngineError> {
        none()
    }

    async fn push(
        &self,
        _reference: &str,
        _auth: &RegistryAuth,
        _progress: &(dyn Fn(PushProgress) + Send + Sync),
    ) -> Result<String, EngineError> {
        none()
    }

    async fn remove_reference(&self, _reference: &str) -> Result<(), EngineError> {
        none()
    }

    async fn tag_image(&self, _image_id: &str, _reference: &str) -> Result<(), EngineError> {
        none()
    }
}
