//! Test-side view of the real engine: make source images, read what is left.

use std::collections::BTreeMap;

use bollard::auth::DockerCredentials;
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateImageOptionsBuilder, ListImagesOptions, RemoveImageOptions,
    TagImageOptionsBuilder,
};
use bollard::{Docker, body_full};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::Value;

use super::TestEnv;

pub struct TestEngine {
    pub docker: Docker,
    /// The engine's socket, to say which engine failed.
    host: String,
}

/// What a test needs to know of a local image.
#[derive(Debug, Clone)]
pub struct LocalImage {
    pub id: String,
    pub config: Value,
    pub layers: Vec<String>,
}

/// An image as an engine that pulled it keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    pub labels: BTreeMap<String, String>,
    pub diff_ids: Vec<String>,
    pub os: String,
    pub architecture: String,
    /// The platform's variant, where the engine reports one (dockerd 20.10,
    /// API 1.41, reports none).
    pub variant: Option<String>,
}

impl TestEngine {
    pub fn connect() -> TestEngine {
        Self::connect_to(&TestEnv::get().docker_host)
    }

    pub fn connect_to(host: &str) -> TestEngine {
        // The test script's engine is Debian's dockerd 20.10: API 1.41.
        let version = bollard::ClientVersion {
            major_version: 1,
            minor_version: 41,
        };
        let docker = Docker::connect_with_unix(host, 120, &version)
            .expect("test engine")
            // The engine decodes X-Registry-Auth as URL-safe base64 (a pull
            // with credentials).
            .with_request_modifier(publishd::engine::url_safe_registry_auth);
        TestEngine {
            docker,
            host: host.to_owned(),
        }
    }

    /// `docker import` of a one-file tarball with unique content: an image
    /// without CMD or ENTRYPOINT, named `name:tag`. `changes` are Dockerfile
    /// instructions such as `ENV A=1`.
    pub async fn import_image(&self, name: &str, tag: &str, changes: &[&str]) -> String {
        let content = uuid::Uuid::now_v7().to_string();
        self.import_file(name, tag, "hello.txt", content.as_bytes(), changes)
            .await;
        self.image(&format!("{name}:{tag}"))
            .await
            .expect("imported image")
            .id
    }

    /// An image of one layer holding `size` bytes that do not compress, so
    /// its push takes long enough to report progress, named `name:tag`.
    pub async fn import_random_image(&self, name: &str, tag: &str, size: usize) {
        // xorshift: incompressible for gzip, and no extra crate.
        let mut state = uuid::Uuid::now_v7().as_u128() as u64 | 1;
        let mut content = Vec::with_capacity(size + 8);
        while content.len() < size {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            content.extend_from_slice(&state.to_le_bytes());
        }
        self.import_file(name, tag, "payload.bin", &content, &[])
            .await;
    }

    /// `docker import` of a tarball of one file.
    async fn import_file(
        &self,
        name: &str,
        tag: &str,
        file: &str,
        content: &[u8],
        changes: &[&str],
    ) {
        let mut archive = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        archive.append_data(&mut header, file, content).unwrap();
        let body = Bytes::from(archive.into_inner().unwrap());
        // The tag inside `repo`: Podman ignores the `tag` parameter of an
        // import (dockerd takes either).
        let options = CreateImageOptionsBuilder::default()
            .from_src("-")
            .repo(&format!("{name}:{tag}"))
            .changes(changes.iter().map(|change| change.to_string()).collect())
            .build();
        let mut stream = self
            .docker
            .create_image(Some(options), Some(body_full(body)), None);
        while let Some(item) = stream.next().await {
            item.expect("import");
        }
    }

    /// An Engine-API build (classic builder) of `dockerfile` with one unique
    /// file `app.txt` in its context, named `name:tag`.
    pub async fn build_image(&self, name: &str, tag: &str, dockerfile: &str) -> String {
        let content = uuid::Uuid::now_v7().to_string();
        let mut archive = tar::Builder::new(Vec::new());
        for (file, data) in [
            ("Dockerfile", dockerfile.as_bytes()),
            ("app.txt", content.as_bytes()),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            archive.append_data(&mut header, file, data).unwrap();
        }
        let reference = format!("{name}:{tag}");
        let options = BuildImageOptionsBuilder::default()
            .dockerfile("Dockerfile")
            .t(&reference)
            .rm(true)
            .build();
        let mut stream = self.docker.build_image(
            options,
            None,
            Some(body_full(Bytes::from(archive.into_inner().unwrap()))),
        );
        while let Some(item) = stream.next().await {
            let item = item.expect("build");
            assert!(
                item.error_detail.is_none(),
                "build failed: {:?}",
                item.error_detail
            );
        }
        self.image(&reference).await.expect("built image").id
    }

    /// Pulls `reference` (`REGISTRY/REPO:TAG`) for `platform` (the
    /// engine's own if `None`), with `credentials` (a username and
    /// password) if given; answers what the engine kept, and removes it
    /// again.
    pub async fn pull(
        &self,
        reference: &str,
        platform: Option<&str>,
        credentials: Option<(&str, &str)>,
    ) -> Pulled {
        let options = CreateImageOptionsBuilder::default()
            .from_image(reference)
            .platform(platform.unwrap_or_default())
            .build();
        let credentials = credentials.map(|(username, password)| DockerCredentials {
            username: Some(username.to_owned()),
            password: Some(password.to_owned()),
            serveraddress: reference.split('/').next().map(str::to_owned),
            ..Default::default()
        });
        let what = format!("{} pulling {reference} ({platform:?})", self.host);
        let mut stream = self.docker.create_image(Some(options), None, credentials);
        while let Some(item) = stream.next().await {
            let item = item.unwrap_or_else(|error| panic!("{what}: {error}"));
            assert!(
                item.error_detail.is_none(),
                "{what}: {:?}",
                item.error_detail
            );
        }
        let inspect = self
            .docker
            .inspect_image(reference)
            .await
            .unwrap_or_else(|error| panic!("{what}: pulled but not there: {error}"));
        self.docker
            .remove_image(reference, None::<RemoveImageOptions>, None)
            .await
            .unwrap_or_else(|error| panic!("{what}: removing it again: {error}"));
        Pulled {
            labels: inspect
                .config
                .and_then(|config| config.labels)
                .unwrap_or_default()
                .into_iter()
                .collect(),
            diff_ids: inspect.root_fs.and_then(|fs| fs.layers).unwrap_or_default(),
            os: inspect.os.unwrap_or_default(),
            architecture: inspect.architecture.unwrap_or_default(),
            variant: inspect.variant.filter(|variant| !variant.is_empty()),
        }
    }

    pub async fn image(&self, name: &str) -> Option<LocalImage> {
        let inspect = self.docker.inspect_image(name).await.ok()?;
        let mut config = serde_json::to_value(&inspect.config).unwrap();
        // bollard reads an absent map (Volumes, ExposedPorts) as an empty one.
        if let Value::Object(fields) = &mut config {
            fields.retain(|_, value| value.as_object().is_none_or(|map| !map.is_empty()));
        }
        Some(LocalImage {
            id: inspect.id.clone().unwrap(),
            config,
            layers: inspect.root_fs.and_then(|fs| fs.layers).unwrap_or_default(),
        })
    }

    pub async fn tag(&self, image: &str, reference: &str) {
        let (repo, tag) = reference.rsplit_once(':').unwrap();
        let options = TagImageOptionsBuilder::default()
            .repo(repo)
            .tag(tag)
            .build();
        self.docker
            .tag_image(image, Some(options))
            .await
            .expect("tag");
    }

    /// Every local name that starts with `prefix`.
    pub async fn names_under(&self, prefix: &str) -> Vec<String> {
        // dockerd 26's containerd store fails a listing that meets an image
        // another test is removing at that moment ("content digest ...:
        // not found"): list again.
        let mut tries = 0;
        let images = loop {
            match self.docker.list_images(None::<ListImagesOptions>).await {
                Ok(images) => break images,
                Err(error) if tries < 5 && error.to_string().contains("not found") => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(error) => panic!("list images: {error}"),
            }
        };
        images
            .into_iter()
            .flat_map(|image| image.repo_tags)
            .filter(|name| name.starts_with(prefix))
            .collect()
    }
}
