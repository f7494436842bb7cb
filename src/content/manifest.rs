//! Manifest v1: the JSON document fetched over TLS that anchors trust in a content's hash file.

use serde::{Deserialize, Serialize};

use crate::content::hashfile::Digest;
use crate::content::id::{ContentId, ContentIdError};
use crate::content::piece_size::{PieceSize, PieceSizeError};

/// The only manifest version this code writes and reads.
pub const MANIFEST_VERSION: u32 = 1;

/// Why bytes are not a valid v1 manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON or misses a required field: {0}")]
    Json(#[from] serde_json::Error),
    #[error("manifest version {0} is not supported (this build reads version {MANIFEST_VERSION})")]
    BadVersion(u32),
    #[error("manifest content_id: {0}")]
    ContentId(#[from] ContentIdError),
    #[error("manifest piece_size: {0}")]
    PieceSize(#[from] PieceSizeError),
    #[error("{field} is not 64 hex digits: {value:?}")]
    BadDigest { field: &'static str, value: String },
}

/// A content's manifest, as published by a seed's catalog and served by the metadata service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version; always [`MANIFEST_VERSION`].
    pub version: u32,
    /// The content id.
    pub content_id: String,
    /// Length of the content in bytes.
    pub content_length: u64,
    /// Piece size in bytes.
    pub piece_size: u32,
    /// SHA-256 of the hash file, lowercase hex.
    pub hashfile_sha256: String,
    /// Where the hash file may be fetched besides the metadata service.
    #[serde(default)]
    pub hashfile_urls: Vec<String>,
    /// HTTP sources of the whole content.
    #[serde(default)]
    pub sources: Vec<String>,
    /// SHA-256 of the whole content, lowercase hex, if the publisher gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl Manifest {
    /// Parses and validates manifest JSON; unknown fields are ignored.
    pub fn parse(bytes: &[u8]) -> Result<Self, ManifestError> {
        let manifest: Manifest = serde_json::from_slice(bytes)?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Checks every field that JSON typing alone does not.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.version != MANIFEST_VERSION {
            return Err(ManifestError::BadVersion(self.version));
        }
        ContentId::parse(&self.content_id)?;
        PieceSize::new(self.piece_size)?;
        parse_digest("hashfile_sha256", &self.hashfile_sha256)?;
        if let Some(whole) = &self.sha256 {
            parse_digest("sha256", whole)?;
        }
        Ok(())
    }

    /// Pretty JSON with a trailing newline.
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("manifest serializes");
        text.push('\n');
        text
    }

    /// The hash file digest as bytes (the manifest must have been validated).
    pub fn hashfile_digest(&self) -> Result<Digest, ManifestError> {
        parse_digest("hashfile_sha256", &self.hashfile_sha256)
    }

    /// The whole-file digest as bytes, if present.
    pub fn whole_digest(&self) -> Result<Option<Digest>, ManifestError> {
        self.sha256.as_deref().map(|hex| parse_digest("sha256", hex)).transpose()
    }
}

/// Parses 64 hex digits into a digest, naming `field` on failure.
pub fn parse_digest(field: &'static str, value: &str) -> Result<Digest, ManifestError> {
    let bad = || ManifestError::BadDigest { field, value: value.chars().take(80).collect() };
    if value.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(value, &mut out).map_err(|_| bad())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            version: 1,
            content_id: "pkg-1".into(),
            content_length: 10,
            piece_size: 1 << 20,
            hashfile_sha256: "ab".repeat(32),
            hashfile_urls: vec![],
            sources: vec!["http://127.0.0.1/pkg".into()],
            sha256: None,
        }
    }

    #[test]
    fn round_trips() {
        let json = sample().to_json();
        assert_eq!(Manifest::parse(json.as_bytes()).unwrap(), sample());
    }

    #[test]
    fn ignores_unknown_fields() {
        let mut value = serde_json::to_value(sample()).unwrap();
        value["future_field"] = serde_json::json!({"x": 1});
        assert_eq!(Manifest::parse(value.to_string().as_bytes()).unwrap(), sample());
    }

    #[test]
    fn rejects_missing_required_field_by_name() {
        let mut value = serde_json::to_value(sample()).unwrap();
        value.as_object_mut().unwrap().remove("hashfile_sha256");
        let error = Manifest::parse(value.to_string().as_bytes()).unwrap_err().to_string();
        assert!(error.contains("hashfile_sha256"), "{error}");
    }

    #[test]
    fn rejects_bad_values() {
        let mut bad = sample();
        bad.content_id = "../etc".into();
        assert!(matches!(bad.validate(), Err(ManifestError::ContentId(_))));
        let mut bad = sample();
        bad.piece_size = 1000;
        assert!(matches!(bad.validate(), Err(ManifestError::PieceSize(_))));
        let mut bad = sample();
        bad.hashfile_sha256 = "zz".repeat(32);
        assert!(matches!(bad.validate(), Err(ManifestError::BadDigest { field: "hashfile_sha256", .. })));
        let mut bad = sample();
        bad.version = 2;
        assert!(matches!(bad.validate(), Err(ManifestError::BadVersion(2))));
    }
}
