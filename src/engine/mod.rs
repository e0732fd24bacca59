//! The Docker engine (or an engine with its API, such as Podman), behind a
//! small interface: what the publish procedure needs of it and nothing more.
//! Knows the Engine API; knows nothing of jobs.

mod docker;
pub mod image_config;
mod none;
mod push;
pub mod settings;
mod transport;

use async_trait::async_trait;

pub use docker::{DockerEngine, url_safe_registry_auth};
pub use image_config::{LabelBuild, LabelledImage, SourceImage};
pub use none::{NO_ENGINE, NoEngine};
pub use settings::{EngineDescription, EngineProduct, ImageStore, RegistrySettings, TagMethod};

use crate::credentials::RegistryAuth;

/// Bytes of a push's layers sent so far, of all it has to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PushProgress {
    pub bytes_done: u64,
    pub bytes_total: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The engine could not be reached at all.
    #[error("docker engine unreachable: {0}")]
    Unreachable(String),
    /// There is no engine to reach (`--docker-host none`), and there will be
    /// none for as long as this process runs: nothing waits for it.
    #[error("{NO_ENGINE}")]
    Absent,
    /// The engine answered with an error.
    #[error("docker engine error (HTTP {status}): {message}")]
    Api { status: u16, message: String },
    /// A push stream carried an error item, or ended without a digest.
    #[error("{0}")]
    Push(String),
    /// The engine answered something we cannot read.
    #[error("unexpected answer from the docker engine: {0}")]
    Protocol(String),
}

/// The operations of one publish, as the engine sees them.
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    async fn ping(&self) -> Result<(), EngineError>;

    /// Which engine this is, how it stores images and which registries it
    /// treats as insecure. Read from the engine, kept for a short while.
    async fn describe(&self) -> Result<EngineDescription, EngineError>;

    /// The image a name or id points to, or `None` if there is none.
    async fn inspect_image(&self, name: &str) -> Result<Option<SourceImage>, EngineError>;

    /// The id of the image `reference` names, or `None`.
    async fn image_id(&self, reference: &str) -> Result<Option<String>, EngineError>;

    /// Makes `image` exist locally, named `reference`, by loading its config
    /// alone: its layers are the source's, which the engine already has, so
    /// nothing is copied. Classic image store only.
    async fn load_image(&self, image: &LabelledImage, reference: &str) -> Result<(), EngineError>;

    /// Builds `FROM source` with the labels and names the result `name`;
    /// answers its id. Works on every engine with the build API.
    async fn build_image(&self, build: &LabelBuild, name: &str) -> Result<String, EngineError>;

    /// Pushes `reference` and answers the manifest digest the registry took,
    /// telling `progress` how far it has come as it goes. Dropping the
    /// future stops the push.
    async fn push(
        &self,
        reference: &str,
        auth: &RegistryAuth,
        progress: &(dyn Fn(PushProgress) + Send + Sync),
    ) -> Result<String, EngineError>;

    /// Removes the name `reference` (the image goes too if that was its last name).
    async fn remove_reference(&self, reference: &str) -> Result<(), EngineError>;

    /// Names the image `image_id` as `reference`.
    async fn tag_image(&self, image_id: &str, reference: &str) -> Result<(), EngineError>;
}
