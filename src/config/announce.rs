//! `[announce]`: how `serve` tells a metadata service which content it holds, so peer matching
//! can send devices to it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Settings of the seed's announces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnnounceConfig {
    /// Announce at all.
    pub enabled: bool,
    /// The metadata service (`https://HOST:PORT`); empty means the service embedded in this `serve`.
    pub service_url: String,
    /// CA certificate(s) (PEM) for `service_url`; empty means the embedded service's development CA,
    /// or the web roots for a remote service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Peer-matching group (site) this seed belongs to.
    pub group: String,
    /// This seed's peer id; empty means `HOSTNAME-PORT`.
    pub peer_id: String,
    /// Data-plane address devices should use (`IP:PORT`); empty means the address `serve` listens on
    /// (which must then be a specific IP, not 0.0.0.0).
    pub address: String,
    /// Time between announces; keep it well under the service's `peer_ttl_ms`.
    pub interval_ms: u64,
    /// Time before retrying a failed announce.
    pub retry_ms: u64,
    /// Most contents in one announce.
    pub contents_max: u32,
    /// File holding the service's announce token (first line); absent means the embedded
    /// service's own token when announcing to it, and no token for a remote service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

impl Default for AnnounceConfig {
    fn default() -> Self {
        AnnounceConfig {
            enabled: true,
            service_url: String::new(),
            ca_file: None,
            group: "default".into(),
            peer_id: String::new(),
            address: String::new(),
            interval_ms: 300_000,
            retry_ms: 10_000,
            contents_max: 10_000,
            token_file: None,
        }
    }
}
