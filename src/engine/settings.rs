//! What the engine says about itself (`GET /version`, `GET /info`), read into
//! the few facts publishd acts on: which product and image store it is (so
//! the tag step picks a method that works there) and which registries it
//! treats as insecure (so the verifier reaches a registry the way the engine
//! did). Plain data and rules; the engine adapter fills it in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The engine behind the Docker Engine API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineProduct {
    Docker {
        version: String,
    },
    /// Podman's Docker-compatible API (`podman system service`).
    Podman {
        version: String,
    },
}

/// Where the engine keeps images; decides whether the load method works.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageStore {
    /// dockerd's graph drivers (overlay2 …): an image id is the sha256 of its
    /// config, and a load may name layers the engine already holds.
    Classic,
    /// dockerd with the containerd snapshotter (the default of newer Docker):
    /// image ids are manifest digests and a load needs every blob.
    Containerd,
    /// Podman's containers/storage.
    Podman,
}

/// How the tag step makes the labelled image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TagMethod {
    /// `load` on the classic store, `build` everywhere else.
    #[default]
    Auto,
    /// Load the labelled config alone (`POST /images/load`): fastest, and
    /// the config is exactly the source's plus the labels.
    Load,
    /// Build `FROM source` + `LABEL …`: every engine with the build API.
    Build,
}

impl TagMethod {
    pub fn parse(value: &str) -> Option<TagMethod> {
        match value {
            "auto" => Some(TagMethod::Auto),
            "load" => Some(TagMethod::Load),
            "build" => Some(TagMethod::Build),
            _ => None,
        }
    }

    /// The method to use on an engine with `store`: `Auto` resolved, an
    /// explicit choice kept.
    pub fn on(self, store: ImageStore) -> TagMethod {
        match (self, store) {
            (TagMethod::Auto, ImageStore::Classic) => TagMethod::Load,
            (TagMethod::Auto, _) => TagMethod::Build,
            (chosen, _) => chosen,
        }
    }
}

/// Which registries the engine reaches over plain HTTP or without checking
/// certificates: its `RegistryConfig`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrySettings {
    /// `InsecureRegistryCIDRs`: a registry whose address falls in one is insecure.
    pub insecure_cidrs: Vec<IpNet>,
    /// `IndexConfigs`: registries named in the engine's configuration, with
    /// whether each is secure; these win over the address rule.
    pub index_secure: HashMap<String, bool>,
}

impl Default for RegistrySettings {
    /// dockerd's defaults: loopback is insecure, nothing else is.
    fn default() -> Self {
        RegistrySettings {
            insecure_cidrs: ["127.0.0.0/8", "::1/128"]
                .iter()
                .filter_map(|cidr| IpNet::from_str(cidr).ok())
                .collect(),
            index_secure: HashMap::new(),
        }
    }
}

impl RegistrySettings {
    /// What the engine's configuration says of `registry` (`host[:port]`)
    /// by name, if it names it.
    pub fn configured(&self, registry: &str) -> Option<bool> {
        self.index_secure.get(registry).copied()
    }

    /// dockerd's rule (`isSecureIndex`): a registry named in its
    /// configuration is as configured; otherwise it is insecure when any
    /// of its addresses falls in an insecure CIDR, and secure when none does
    /// or its addresses are unknown.
    pub fn is_secure(&self, registry: &str, addresses: &[IpAddr]) -> bool {
        if let Some(secure) = self.configured(registry) {
            return secure;
        }
        !addresses
            .iter()
            .any(|address| self.insecure_cidrs.iter().any(|net| net.contains(address)))
    }
}

/// Everything publishd reads from the engine about the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineDescription {
    /// The engine's own name (`/info` Name: its host's name): what an
    /// instance names its engine by unless `--engine-name` says otherwise.
    pub name: String,
    pub product: EngineProduct,
    pub api_version: String,
    pub image_store: ImageStore,
    pub registries: RegistrySettings,
}

impl EngineDescription {
    /// What decides the bytes this engine pushes for a labelled image made
    /// by `method`: its product, version and image store, and the method.
    /// Seeds are kept per format, so an engine upgrade never mixes them.
    pub fn seed_format(&self, method: TagMethod) -> String {
        let (product, version) = match &self.product {
            EngineProduct::Docker { version } => ("docker", version),
            EngineProduct::Podman { version } => ("podman", version),
        };
        let store = match self.image_store {
            ImageStore::Classic => "classic",
            ImageStore::Containerd => "containerd",
            ImageStore::Podman => "podman",
        };
        let method = match method {
            TagMethod::Auto => "auto",
            TagMethod::Load => "load",
            TagMethod::Build => "build",
        };
        format!("{product} {version} {store} {method}")
    }
}

/// The parts of `GET /version` read here.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct VersionReport {
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub components: Vec<Component>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Component {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub version: String,
}

/// The parts of `GET /info` read here.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InfoReport {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub driver_status: Option<Vec<Vec<String>>>,
    #[serde(default)]
    pub registry_config: Option<RegistryConfigReport>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RegistryConfigReport {
    #[serde(default, rename = "InsecureRegistryCIDRs")]
    pub insecure_registry_cidrs: Option<Vec<String>>,
    #[serde(default)]
    pub index_configs: Option<HashMap<String, IndexConfigReport>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IndexConfigReport {
    #[serde(default)]
    pub secure: Option<bool>,
}

/// dockerd reports the containerd snapshotter in `DriverStatus` as
/// `["driver-type", "io.containerd.snapshotter.v1"]`.
const CONTAINERD_SNAPSHOTTER: &str = "io.containerd.snapshotter.v1";

impl EngineDescription {
    pub fn from_reports(version: &VersionReport, info: &InfoReport) -> EngineDescription {
        let podman = version
            .components
            .iter()
            .find(|component| component.name.eq_ignore_ascii_case("Podman Engine"));
        let product = match podman {
            Some(podman) => EngineProduct::Podman {
                version: podman.version.clone(),
            },
            None => EngineProduct::Docker {
                version: version.version.clone(),
            },
        };
        let containerd = info.driver_status.iter().flatten().any(|pair| {
            pair.first().is_some_and(|key| key == "driver-type")
                && pair
                    .get(1)
                    .is_some_and(|value| value == CONTAINERD_SNAPSHOTTER)
        });
        let image_store = match (&product, containerd) {
            (EngineProduct::Podman { .. }, _) => ImageStore::Podman,
            (_, true) => ImageStore::Containerd,
            (_, false) => ImageStore::Classic,
        };
        let registries = match &info.registry_config {
            Some(config) => RegistrySettings {
                insecure_cidrs: config
                    .insecure_registry_cidrs
                    .iter()
                    .flatten()
                    .filter_map(|cidr| IpNet::from_str(cidr).ok())
                    .collect(),
                index_secure: config
                    .index_configs
                    .iter()
                    .flatten()
                    .map(|(name, index)| (name.clone(), index.secure.unwrap_or(true)))
                    .collect(),
            },
            None => RegistrySettings::default(),
        };
        EngineDescription {
            name: info.name.clone(),
            product,
            api_version: version.api_version.clone(),
            image_store,
            registries,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn describe(version: serde_json::Value, info: serde_json::Value) -> EngineDescription {
        EngineDescription::from_reports(
            &serde_json::from_value(version).unwrap(),
            &serde_json::from_value(info).unwrap(),
        )
    }

    #[test]
    fn dockerd_20_10_is_the_classic_store() {
        let engine = describe(
            json!({"Version": "20.10.24", "ApiVersion": "1.41",
                   "Components": [{"Name": "Engine", "Version": "20.10.24"}]}),
            json!({"Driver": "overlay2", "DriverStatus": [["Backing Filesystem", "extfs"]],
                   "RegistryConfig": {"InsecureRegistryCIDRs": ["127.0.0.0/8"],
                       "IndexConfigs": {"docker.io": {"Name": "docker.io", "Secure": true, "Official": true},
                                        "insecure.test:5000": {"Name": "insecure.test:5000", "Secure": false}}}}),
        );
        assert_eq!(
            engine.product,
            EngineProduct::Docker {
                version: "20.10.24".into()
            }
        );
        assert_eq!(engine.image_store, ImageStore::Classic);
        assert_eq!(
            engine.registries.configured("insecure.test:5000"),
            Some(false)
        );
        assert_eq!(engine.registries.configured("docker.io"), Some(true));
        assert_eq!(TagMethod::Auto.on(engine.image_store), TagMethod::Load);
    }

    #[test]
    fn the_containerd_snapshotter_is_detected() {
        // What Docker 24+ reports with the containerd image store.
        let engine = describe(
            json!({"Version": "28.2.2", "ApiVersion": "1.50"}),
            json!({"Driver": "overlayfs",
                   "DriverStatus": [["driver-type", "io.containerd.snapshotter.v1"]]}),
        );
        assert_eq!(engine.image_store, ImageStore::Containerd);
        assert_eq!(TagMethod::Auto.on(engine.image_store), TagMethod::Build);
        assert_eq!(TagMethod::Load.on(engine.image_store), TagMethod::Load);
    }

    #[test]
    fn podman_is_detected_by_its_component() {
        let engine = describe(
            json!({"Version": "4.3.1", "ApiVersion": "1.41",
                   "Components": [{"Name": "Podman Engine", "Version": "4.3.1"}]}),
            json!({}),
        );
        assert_eq!(
            engine.product,
            EngineProduct::Podman {
                version: "4.3.1".into()
            }
        );
        assert_eq!(engine.image_store, ImageStore::Podman);
        assert_eq!(TagMethod::Auto.on(engine.image_store), TagMethod::Build);
    }

    #[test]
    fn security_follows_dockerds_rule() {
        let settings = RegistrySettings {
            insecure_cidrs: vec![
                "127.0.0.0/8".parse().unwrap(),
                "10.1.0.0/16".parse().unwrap(),
            ],
            index_secure: HashMap::from([
                ("named.test:5000".to_owned(), false),
                ("127.0.0.1:6000".to_owned(), true),
            ]),
        };
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let private: IpAddr = "10.1.2.3".parse().unwrap();
        let public: IpAddr = "192.0.2.10".parse().unwrap();
        assert!(!settings.is_secure("localhost:5000", &[loopback]));
        assert!(!settings.is_secure("build.test:5000", &[public, private]));
        assert!(settings.is_secure("registry.test", &[public]));
        // Named in the configuration: as configured, whatever the address.
        assert!(!settings.is_secure("named.test:5000", &[public]));
        assert!(settings.is_secure("127.0.0.1:6000", &[loopback]));
        // Unresolvable (e.g. behind a proxy): secure.
        assert!(settings.is_secure("unknown.test", &[]));
    }
}
