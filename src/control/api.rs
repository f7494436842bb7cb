//! Wire types of the control plane's JSON bodies, shared by the service and the client.

use serde::{Deserialize, Serialize};

/// Longest peer id or group name.
pub const NAME_LENGTH_MAX: usize = 128;
/// Largest piece bitfield in one announce entry (16 KiB: 131072 pieces, 128 GiB at 1 MiB).
pub const BITFIELD_BYTES_MAX: usize = 16 << 10;

/// `POST /v1/announce`: what one peer holds now. Replaces the peer's previous announce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnounceRequest {
    /// The peer's id, stable across announces: `[A-Za-z0-9._:-]{1,128}`.
    pub peer_id: String,
    /// The peer's group (site); peers are matched within a group only.
    pub group: String,
    /// The peer's data-plane address, `IP:PORT`.
    pub address: String,
    /// Content the peer holds.
    pub contents: Vec<AnnouncedContent>,
}

/// One content in an announce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnouncedContent {
    /// The content id.
    pub id: String,
    /// Pieces held, as hex of a bitfield (piece 0 is the high bit of the first byte); absent means all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitfield: Option<String>,
}

/// `GET /v1/content/{id}/peers`: peers of the asker's group that hold the content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeersResponse {
    /// The content asked about.
    pub content_id: String,
    /// The group matched.
    pub group: String,
    /// At most the configured number of peers, shuffled.
    pub peers: Vec<PeerInfo>,
}

/// One peer holding a content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// The peer's id.
    pub peer_id: String,
    /// Its data-plane address, `IP:PORT`.
    pub address: String,
    /// Pieces it holds (hex bitfield); absent means all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitfield: Option<String>,
}

/// `PUT /v1/content/{id}`: publish a content's metadata (admin only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishBody {
    /// The manifest (v1 JSON); its `content_id` must equal the path's id.
    pub manifest: serde_json::Value,
    /// The hash file, hex; its SHA-256 must equal the manifest's `hashfile_sha256`.
    pub hashfile_hex: String,
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What was wrong, naming the field or value at fault.
    pub error: String,
}

/// Checks a peer id or group name: `[A-Za-z0-9._:-]{1,128}`; the error names `field`.
pub fn validate_name(field: &str, value: &str) -> Result<(), String> {
    let shown: String = value.chars().take(40).collect();
    if value.is_empty() {
        return Err(format!("{field} is empty"));
    }
    if value.len() > NAME_LENGTH_MAX {
        return Err(format!("{field} {shown:?}… is {} bytes long; the limit is {NAME_LENGTH_MAX}", value.len()));
    }
    if let Some(bad) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'))) {
        return Err(format!("{field} {shown:?} has {bad:?}; only A-Z a-z 0-9 . _ - : are allowed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_by_field() {
        assert!(validate_name("group", "site-a:floor.2_x").is_ok());
        assert!(validate_name("group", "").unwrap_err().contains("group is empty"));
        assert!(validate_name("peer_id", "a b").unwrap_err().contains("peer_id"));
        assert!(validate_name("peer_id", &"x".repeat(129)).unwrap_err().contains("limit"));
    }
}
