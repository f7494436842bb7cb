//! `[registry]`: where the metadata service keeps its peer registry — in its own memory (one box)
//! or on Redis, shared by every box of a fleet.

use serde::{Deserialize, Serialize};

/// Longest key prefix.
const KEY_PREFIX_LENGTH_MAX: usize = 64;

/// Which peer registry the service uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistryBackend {
    /// In the service's memory: peers announced to this service only.
    Memory,
    /// On a Redis server shared by several services.
    Redis,
}

/// A `[registry]` value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryConfigError {
    #[error("registry.url {url:?}: only redis://HOST[:PORT][/DB] is accepted")]
    BadUrl { url: String },
    #[error("registry.key_prefix {prefix:?}: use at most {KEY_PREFIX_LENGTH_MAX} of A-Z a-z 0-9 . _ - : (no braces: the group is the key's hash tag)")]
    BadPrefix { prefix: String },
    #[error("registry.{key} is 0; it must be at least 1")]
    Zero { key: &'static str },
    #[error("registry.reconnect_backoff_ms ({min}) is above registry.reconnect_backoff_ms_max ({max})")]
    Backoff { min: u64, max: u64 },
}

/// Settings of the peer registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// `memory` (one box) or `redis` (a fleet sharing one Redis).
    pub backend: RegistryBackend,
    /// The Redis server, `redis://HOST:PORT/DB`.
    pub url: String,
    /// Prepended to every Redis key, so several fleets can share one Redis.
    pub key_prefix: String,
    /// Time to open a connection to Redis.
    pub connect_timeout_ms: u64,
    /// Time one Redis command (or pipeline) may take; past it the service falls back to its own
    /// peers until Redis answers again.
    pub timeout_ms: u64,
    /// First wait before reconnecting after a Redis failure; doubled after each failed attempt.
    pub reconnect_backoff_ms: u64,
    /// Longest wait between reconnect attempts.
    pub reconnect_backoff_ms_max: u64,
    /// Live peers read from Redis for one peers query (then shuffled and capped).
    pub peers_scanned_max: u32,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            backend: RegistryBackend::Memory,
            url: "redis://127.0.0.1:6379/0".into(),
            key_prefix: "tessera:".into(),
            connect_timeout_ms: 500,
            timeout_ms: 250,
            reconnect_backoff_ms: 250,
            reconnect_backoff_ms_max: 10_000,
            peers_scanned_max: 1024,
        }
    }
}

impl RegistryConfig {
    /// Checks what TOML cannot.
    pub fn validate(&self) -> Result<(), RegistryConfigError> {
        let host = self.url.strip_prefix("redis://").unwrap_or("");
        if host.is_empty() || host.starts_with('/') || host.contains(char::is_whitespace) {
            return Err(RegistryConfigError::BadUrl { url: self.url.clone() });
        }
        let prefix_ok = self.key_prefix.len() <= KEY_PREFIX_LENGTH_MAX
            && self.key_prefix.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'));
        if !prefix_ok {
            return Err(RegistryConfigError::BadPrefix { prefix: self.key_prefix.clone() });
        }
        let positive = [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("timeout_ms", self.timeout_ms),
            ("reconnect_backoff_ms", self.reconnect_backoff_ms),
            ("peers_scanned_max", u64::from(self.peers_scanned_max)),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(RegistryConfigError::Zero { key });
        }
        if self.reconnect_backoff_ms > self.reconnect_backoff_ms_max {
            return Err(RegistryConfigError::Backoff {
                min: self.reconnect_backoff_ms,
                max: self.reconnect_backoff_ms_max,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        assert_eq!(RegistryConfig::default().validate(), Ok(()));
        let bad_url = RegistryConfig { url: "http://127.0.0.1:6379".into(), ..RegistryConfig::default() };
        assert!(bad_url.validate().unwrap_err().to_string().contains("registry.url"));
        let braces = RegistryConfig { key_prefix: "{x}".into(), ..RegistryConfig::default() };
        assert!(matches!(braces.validate(), Err(RegistryConfigError::BadPrefix { .. })));
        let zero = RegistryConfig { timeout_ms: 0, ..RegistryConfig::default() };
        assert_eq!(zero.validate(), Err(RegistryConfigError::Zero { key: "timeout_ms" }));
        let backoff = RegistryConfig { reconnect_backoff_ms_max: 1, ..RegistryConfig::default() };
        assert!(matches!(backoff.validate(), Err(RegistryConfigError::Backoff { .. })));
    }
}
