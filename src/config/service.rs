//! `[service]`: the control plane (metadata, peer matching, announces, admin) over TLS.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Settings and limits of the metadata and peer-matching service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceConfig {
    /// Run the service inside `tessera serve` (`--no-service` turns it off for one run).
    pub enabled: bool,
    /// Address the HTTPS listener binds.
    pub listen: String,
    /// Server certificate chain (PEM); without it a development CA and certificate are made under `DATA_DIR/tls/`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// Private key of `cert_file` (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// File holding the admin bearer token for remote publishing and removal (first line, trimmed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<PathBuf>,
    /// The admin bearer token itself (prefer `admin_token_file`); with neither, remote writes are refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,
    /// Largest accepted request body (a publish carries the hash file as hex).
    pub request_body_bytes_max: u64,
    /// Largest accepted request head (request line and headers).
    pub request_head_bytes_max: u32,
    /// Announces accepted from one peer id per minute; more get 429.
    pub announces_per_peer_per_minute_max: u32,
    /// Content ids accepted in one announce.
    pub announce_contents_max: u32,
    /// Peers returned for one content by one peers query.
    pub peers_returned_max: u32,
    /// Peer-content entries the registry holds; announces past it get 503.
    pub registry_entries_max: u64,
    /// A peer's announce expires this long after it was made unless it is repeated.
    pub peer_ttl_ms: u64,
    /// Open client connections; more are accepted and closed at once.
    pub connections_max: u32,
    /// Time a connection has to finish the TLS handshake and send a request head.
    pub header_timeout_ms: u64,
    /// Time a request has to deliver its body once the head is in.
    pub body_timeout_ms: u64,
    /// A keep-alive connection with no request for this long is closed.
    pub idle_timeout_ms: u64,
    /// How often the catalog directory is looked at for entries changed by another process.
    pub catalog_rescan_ms: u64,
    /// Catalog reads and writes waiting for the catalog thread; more get 503.
    pub catalog_jobs_max: u32,
    /// File holding the bearer token announces must carry (first line); absent means
    /// `DATA_DIR/announce.token`, made on first run (mode 0600). Copy it to every box of a site.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub announce_token_file: Option<PathBuf>,
    /// Accept announces without a token (a lab); logged as a warning at start.
    pub announce_open: bool,
    /// Accept an announce whose address is not the announcing host's own IP (behind NAT, or a
    /// host announcing for another); loopback callers may always announce any address.
    pub announce_any_address: bool,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            enabled: true,
            listen: "127.0.0.1:7443".into(),
            cert_file: None,
            key_file: None,
            admin_token_file: None,
            admin_token: None,
            request_body_bytes_max: 16 << 20,
            request_head_bytes_max: 16 << 10,
            announces_per_peer_per_minute_max: 12,
            announce_contents_max: 10_000,
            peers_returned_max: 32,
            registry_entries_max: 1_000_000,
            peer_ttl_ms: 900_000,
            connections_max: 1024,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
            catalog_rescan_ms: 2_000,
            catalog_jobs_max: 64,
            announce_token_file: None,
            announce_open: false,
            announce_any_address: false,
        }
    }
}
