//! Configuration: one TOML file, every limit with a default; the defaults are the embedded config.

mod announce;
mod download;
mod log;
mod registry;
mod reload;
mod serve;
mod service;
mod store;
mod upstream;
mod validate;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use announce::AnnounceConfig;
pub use download::DownloadConfig;
pub use log::{LogConfig, LogFormat};
pub use registry::{RegistryBackend, RegistryConfig, RegistryConfigError};
pub use reload::{plan_reload, Change, ReloadPlan};
pub use serve::{BackendChoice, ServeConfig};
pub use service::ServiceConfig;
pub use store::StoreConfig;
pub use upstream::{UpstreamConfig, UpstreamConfigError};
pub use validate::{Problem, Problems};

/// The embedded default configuration, as shipped in `appliance/tessera.toml`.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../appliance/tessera.toml");

/// How errors name the embedded default config.
pub const DEFAULT_CONFIG_ORIGIN: &str = "<embedded default>";

/// Why a config file was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {path} is not valid: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("config {path} has {source}")]
    Values { path: PathBuf, source: Problems },
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the catalog, the store and TLS material live.
    pub data_dir: PathBuf,
    /// Piece store limits.
    pub store: StoreConfig,
    /// The control plane: metadata and peer-matching service over TLS.
    pub service: ServiceConfig,
    /// Download engine limits (`tessera get`).
    pub download: DownloadConfig,
    /// The data plane (`tessera serve`).
    pub serve: ServeConfig,
    /// What `serve` announces to the metadata service.
    pub announce: AnnounceConfig,
    /// Where a cache box fills misses from; absent means `serve` answers only what it holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamConfig>,
    /// Where the service keeps its peer registry: in memory, or on Redis for a fleet.
    pub registry: RegistryConfig,
    /// The log's level and format, and the optional access log.
    pub log: LogConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("tessera-data"),
            store: StoreConfig::default(),
            service: ServiceConfig::default(),
            download: DownloadConfig::default(),
            serve: ServeConfig::default(),
            announce: AnnounceConfig::default(),
            upstream: None,
            registry: RegistryConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl Config {
    /// Parses TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let config = Self::parse_unchecked(text, origin)?;
        config.check(origin)?;
        Ok(config)
    }

    /// Parses TOML text without [`Config::validate`]: for `serve --check`, which reports bad
    /// values together with every other problem.
    pub fn parse_unchecked(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Invalid { path: origin.to_path_buf(), message: e.to_string() })
    }

    /// [`Config::validate`] as a [`ConfigError`] naming `origin`: what `config --check` and
    /// `serve` (after its command-line overrides) run before starting anything.
    pub fn check(&self, origin: &Path) -> Result<(), ConfigError> {
        self.validate().map_err(|source| ConfigError::Values { path: origin.to_path_buf(), source })
    }

    /// Loads a file, or the embedded default when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let config = Self::load_unchecked(path)?;
        config.check(path.unwrap_or(Path::new(DEFAULT_CONFIG_ORIGIN)))?;
        Ok(config)
    }

    /// [`Config::load`] without [`Config::validate`] (see [`Config::parse_unchecked`]).
    pub fn load_unchecked(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            None => Self::parse_unchecked(DEFAULT_CONFIG_TOML, Path::new(DEFAULT_CONFIG_ORIGIN)),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
                Self::parse_unchecked(&text, path)
            }
        }
    }

    /// The defaults as TOML.
    pub fn default_toml() -> String {
        toml::to_string_pretty(&Config::default()).expect("config serializes")
    }

    /// Directory of the catalog (hash files and manifests).
    pub fn catalog_dir(&self) -> PathBuf {
        self.data_dir.join("catalog")
    }

    /// Directory of the piece store.
    pub fn store_dir(&self) -> PathBuf {
        self.data_dir.join("store")
    }

    /// Directory of generated TLS material (the development CA and server certificate).
    pub fn tls_dir(&self) -> PathBuf {
        self.data_dir.join("tls")
    }

    /// The announce token file the service uses: `[service] announce_token_file`, or
    /// `DATA_DIR/announce.token` (made on first run).
    pub fn announce_token_file(&self) -> PathBuf {
        self.service.announce_token_file.clone().unwrap_or_else(|| self.data_dir.join("announce.token"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_config_is_the_defaults() {
        assert_eq!(Config::load(None).unwrap(), Config::default());
    }

    #[test]
    fn printed_defaults_parse_back() {
        assert_eq!(Config::parse(&Config::default_toml(), Path::new("x")).unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_is_named() {
        let error = Config::parse("[store]\nsize_bytes_maxx = 1\n", Path::new("my.toml")).unwrap_err().to_string();
        assert!(error.contains("size_bytes_maxx") && error.contains("my.toml"), "{error}");
    }

    /// The commented `[upstream]` block of the embedded file, uncommented: its values must be the defaults.
    fn embedded_upstream_uncommented() -> String {
        let start = DEFAULT_CONFIG_TOML.find("# [upstream]\n").expect("embedded file documents [upstream]");
        let setting =
            |line: &&str| line.starts_with('[') || line.split_once(" = ").is_some_and(|(key, _)| !key.contains(' '));
        DEFAULT_CONFIG_TOML[start..]
            .lines()
            .map(|line| line.trim_start_matches("# "))
            .filter(setting)
            .filter(|line| !line.starts_with("pin_sha256"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn embedded_upstream_block_is_the_defaults() {
        let config = Config::parse(&embedded_upstream_uncommented(), Path::new("x")).unwrap();
        let expected = UpstreamConfig {
            service_url: "https://seed.example:7443".into(),
            ca_file: Some("/etc/tessera/upstream-ca.pem".into()),
            ..UpstreamConfig::default()
        };
        assert_eq!(config.upstream, Some(expected));
    }

    #[test]
    fn bad_upstream_value_names_key_and_file() {
        let error = Config::parse("[upstream]\nservice_url = \"http://up:1\"\n", Path::new("box.toml")).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("upstream.service_url") && message.contains("box.toml"), "{message}");
    }

    #[test]
    fn partial_file_keeps_other_defaults() {
        let config = Config::parse("[store]\nage_s_max = 60\n", Path::new("x")).unwrap();
        assert_eq!(config.store.age_s_max, 60);
        assert_eq!(config.store.size_bytes_max, StoreConfig::default().size_bytes_max);
    }
}
