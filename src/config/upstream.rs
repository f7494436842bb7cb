//! `[upstream]`: where a cache box fills its misses from, and every limit of the fill engine.
//!
//! The section is optional: without it `serve` is a seed that answers only what it holds.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::http::url::HttpUrl;

/// Why an `[upstream]` section is not usable; each variant names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamConfigError {
    #[error("upstream.service_url {value:?} is not an https:// URL")]
    ServiceUrl { value: String },
    #[error("upstream.service_urls[{index}] {value:?} is not an https:// URL")]
    ServiceUrls { index: usize, value: String },
    #[error("upstream.service_urls is set but upstream.service_url is empty; put the first service there")]
    ServiceUrlsAlone,
    #[error("upstream.pin_sha256 {value:?} is not 64 hex digits (SHA-256 of the server's SubjectPublicKeyInfo)")]
    PinSha256 { value: String },
    #[error("upstream.peers[{index}] {value:?} is not HOST:PORT")]
    Peer { index: usize, value: String },
    #[error("upstream.group {value:?} must be 1 to 64 printable characters without spaces")]
    Group { value: String },
    #[error("upstream.{key} is 0; it must be at least 1")]
    Zero { key: &'static str },
}

/// The `[upstream]` section: sources of missing pieces and the fill engine's limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The upstream metadata service (`https://HOST:PORT`); empty means it must come from `--upstream`.
    pub service_url: String,
    /// Further services of the same upstream fleet: with `service_url` they are ranked per
    /// content by rendezvous hashing of (this box's id, content id), the next asked on failure.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub service_urls: Vec<String>,
    /// CA certificate(s) (PEM) for `service_url`; without it the web roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// SHA-256 (hex) of the upstream service's SubjectPublicKeyInfo, to pin its key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pin_sha256: Option<String>,
    /// Parents that speak the piece API (`HOST:PORT`), asked for every content; two or more are
    /// ranked per content by rendezvous hashing (the first serves, the next when it fails).
    pub peers: Vec<String>,
    /// A ranked parent whose fetch failed is passed over this long, then tried again.
    pub parent_retry_ms: u64,
    /// Peer-matching group (site) the box asks peers for.
    pub group: String,
    /// Ask the upstream service for peers of `group` holding the content.
    pub peer_matching: bool,
    /// Use the manifest's HTTP sources (with Range).
    pub origin: bool,
    /// After a Range request (or a client that went away), keep filling the rest of the content
    /// in the background at low priority.
    pub fill_whole: bool,
    /// Contents being filled at once; a request needing one more gets 503 with Retry-After.
    pub fills_in_flight_max: u32,
    /// Piece fetches in flight for one content at once.
    pub pieces_in_flight_per_fill_max: u32,
    /// Pieces fetched ahead of a streaming response's position.
    pub read_ahead_pieces: u32,
    /// Connections opened to one source at most.
    pub connections_per_source_max: u32,
    /// Requests pipelined on one source connection at most.
    pub pipeline_depth: u32,
    /// A source connection not established after this long is abandoned.
    pub connect_timeout_ms: u64,
    /// A piece request with no complete answer this long after it was sent is failed and retried elsewhere.
    pub request_timeout_ms: u64,
    /// A response whose body has begun and then gets no byte this long fails (a source that
    /// hangs mid-piece), and its pieces are asked elsewhere.
    pub stall_timeout_ms: u64,
    /// One metadata fetch (manifest or hash file) is failed after this long.
    pub metadata_timeout_ms: u64,
    /// Bytes of pieces fetched and not yet verified and stored, at most.
    pub piece_memory_bytes_max: u64,
    /// Requests waiting for one piece (or for one id's metadata) at most.
    pub waiters_per_piece_max: u32,
    /// Failed fetches of one piece (bad, timed out, lost) before its waiters get an error.
    pub retries_per_piece_max: u32,
    /// Fetched metadata is used this long, then fetched again.
    pub metadata_expiry_ms: u64,
    /// Contents whose metadata is cached at most.
    pub metadata_entries_max: u32,
    /// Retry-After (seconds) sent with a 503 when a limit is hit.
    pub busy_retry_after_s: u32,
    /// Simple-mode pass-throughs streaming from an origin at once; one more gets 503 with Retry-After.
    pub pass_throughs_max: u32,
    /// Bytes of one pass-through held in the box at most (read from the origin, not yet taken
    /// by the device's socket); reading from the origin pauses at it.
    pub pass_through_buffer_bytes: u64,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            service_url: String::new(),
            service_urls: Vec::new(),
            ca_file: None,
            pin_sha256: None,
            peers: Vec::new(),
            parent_retry_ms: 30_000,
            group: "default".into(),
            peer_matching: false,
            origin: true,
            fill_whole: true,
            fills_in_flight_max: 64,
            pieces_in_flight_per_fill_max: 16,
            read_ahead_pieces: 8,
            connections_per_source_max: 4,
            pipeline_depth: 4,
            connect_timeout_ms: 5_000,
            request_timeout_ms: 10_000,
            stall_timeout_ms: 1_000,
            metadata_timeout_ms: 10_000,
            piece_memory_bytes_max: 256 << 20,
            waiters_per_piece_max: 1024,
            retries_per_piece_max: 4,
            metadata_expiry_ms: 300_000,
            metadata_entries_max: 65_536,
            busy_retry_after_s: 1,
            pass_throughs_max: 64,
            pass_through_buffer_bytes: 1 << 20,
        }
    }
}

impl UpstreamConfig {
    /// Checks what TOML typing alone does not; the error names the key.
    pub fn validate(&self) -> Result<(), UpstreamConfigError> {
        if !self.service_url.is_empty() && !HttpUrl::parse(&self.service_url).is_ok_and(|url| url.is_tls()) {
            return Err(UpstreamConfigError::ServiceUrl { value: self.service_url.clone() });
        }
        let not_https = |url: &&String| !HttpUrl::parse(url).is_ok_and(|url| url.is_tls());
        if let Some((index, value)) = self.service_urls.iter().enumerate().find(|(_, url)| not_https(url)) {
            return Err(UpstreamConfigError::ServiceUrls { index, value: value.clone() });
        }
        if self.service_url.is_empty() && !self.service_urls.is_empty() {
            return Err(UpstreamConfigError::ServiceUrlsAlone);
        }
        if let Some(pin) = &self.pin_sha256 {
            if pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(UpstreamConfigError::PinSha256 { value: pin.clone() });
            }
        }
        if let Some((index, value)) = self.peers.iter().enumerate().find(|(_, peer)| !is_host_port(peer)) {
            return Err(UpstreamConfigError::Peer { index, value: value.clone() });
        }
        let group_ok = (1..=64).contains(&self.group.len()) && self.group.chars().all(|c| c.is_ascii_graphic());
        if !group_ok {
            return Err(UpstreamConfigError::Group { value: self.group.clone() });
        }
        self.validate_limits()
    }

    /// `service_url` and then `service_urls`, each once.
    pub fn all_service_urls(&self) -> Vec<String> {
        let mut urls = vec![self.service_url.clone()];
        for url in &self.service_urls {
            if !urls.contains(url) {
                urls.push(url.clone());
            }
        }
        urls
    }

    fn validate_limits(&self) -> Result<(), UpstreamConfigError> {
        let limits: [(&'static str, u64); 18] = [
            ("parent_retry_ms", self.parent_retry_ms),
            ("stall_timeout_ms", self.stall_timeout_ms),
            ("fills_in_flight_max", self.fills_in_flight_max.into()),
            ("pieces_in_flight_per_fill_max", self.pieces_in_flight_per_fill_max.into()),
            ("read_ahead_pieces", self.read_ahead_pieces.into()),
            ("connections_per_source_max", self.connections_per_source_max.into()),
            ("pipeline_depth", self.pipeline_depth.into()),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            ("metadata_timeout_ms", self.metadata_timeout_ms),
            ("piece_memory_bytes_max", self.piece_memory_bytes_max),
            ("waiters_per_piece_max", self.waiters_per_piece_max.into()),
            ("metadata_expiry_ms", self.metadata_expiry_ms),
            ("metadata_entries_max", self.metadata_entries_max.into()),
            ("busy_retry_after_s", self.busy_retry_after_s.into()),
            ("pass_throughs_max", self.pass_throughs_max.into()),
            ("pass_through_buffer_bytes", self.pass_through_buffer_bytes),
            // Zero retries is allowed in spirit (one attempt), but one failure must not end a fill
            // that another source could finish, so at least one retry is required.
            ("retries_per_piece_max", self.retries_per_piece_max.into()),
        ];
        match limits.iter().find(|(_, value)| *value == 0) {
            Some((key, _)) => Err(UpstreamConfigError::Zero { key }),
            None => Ok(()),
        }
    }
}

/// `HOST:PORT` (or `[V6]:PORT`) with a port of 1 to 65535.
fn is_host_port(text: &str) -> bool {
    let Some((host, port)) = text.rsplit_once(':') else { return false };
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let host_ok = !host.is_empty() && !host.contains(['/', ' ', '@']);
    host_ok && port.parse::<u16>().is_ok_and(|port| port != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(change: impl FnOnce(&mut UpstreamConfig)) -> Result<(), UpstreamConfigError> {
        let mut config = UpstreamConfig { service_url: "https://up.example:7443".into(), ..Default::default() };
        change(&mut config);
        config.validate()
    }

    #[test]
    fn defaults_with_a_service_are_valid() {
        assert_eq!(with(|_| {}), Ok(()));
        assert_eq!(UpstreamConfig::default().validate(), Ok(()));
    }

    #[test]
    fn each_bad_value_names_its_key() {
        type Change = Box<dyn FnOnce(&mut UpstreamConfig)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|c| c.service_url = "http://up:7443".into()), "upstream.service_url"),
            (Box::new(|c| c.service_url = "up:7443".into()), "upstream.service_url"),
            (
                Box::new(|c| c.service_urls = vec!["https://b:7443".into(), "http://c:7443".into()]),
                "upstream.service_urls[1]",
            ),
            (
                Box::new(|c| {
                    c.service_url = String::new();
                    c.service_urls = vec!["https://b:7443".into()];
                }),
                "upstream.service_urls",
            ),
            (Box::new(|c| c.pin_sha256 = Some("abc".into())), "upstream.pin_sha256"),
            (Box::new(|c| c.peers = vec!["10.0.0.1:7680".into(), "parent".into()]), "upstream.peers[1]"),
            (Box::new(|c| c.peers = vec!["parent:0".into()]), "upstream.peers[0]"),
            (Box::new(|c| c.group = "a b".into()), "upstream.group"),
            (Box::new(|c| c.read_ahead_pieces = 0), "upstream.read_ahead_pieces"),
            (Box::new(|c| c.piece_memory_bytes_max = 0), "upstream.piece_memory_bytes_max"),
            (Box::new(|c| c.metadata_expiry_ms = 0), "upstream.metadata_expiry_ms"),
            (Box::new(|c| c.pass_throughs_max = 0), "upstream.pass_throughs_max"),
        ];
        for (change, key) in cases {
            let message = with(change).unwrap_err().to_string();
            assert!(message.starts_with(key), "{message:?} should name {key}");
        }
    }

    #[test]
    fn host_port_forms() {
        assert!(is_host_port("parent.example:7680"));
        assert!(is_host_port("[::1]:7680"));
        assert!(!is_host_port("parent.example"));
        assert!(!is_host_port(":7680"));
        assert!(!is_host_port("h:99999"));
    }
}
