//! The mode decision: P2P when the hash file is had and verified against the manifest, Simple otherwise.
//!
//! A pure function so every branch of rule 2 and rule 5 is unit-tested without I/O.

use std::fmt;

use crate::content::hashfile::{HashFile, HashFileError};
use crate::content::manifest::Manifest;
use crate::hash::sha256;

/// Why a piece of metadata could not be had. Callers map their typed fetch errors onto this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataFailure {
    /// The service answered that it has no such content.
    NotFound,
    /// The fetch failed (TLS, connection, HTTP status, timeout); the text says how.
    Fetch(String),
}

impl fmt::Display for MetadataFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetadataFailure::NotFound => f.write_str("not found"),
            MetadataFailure::Fetch(why) => f.write_str(why),
        }
    }
}

/// Why a download runs in Simple mode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimpleReason {
    #[error("no manifest: the metadata service has no such content")]
    NoManifest,
    #[error("manifest could not be fetched: {0}")]
    ManifestFetch(String),
    #[error("manifest is invalid: {0}")]
    ManifestInvalid(String),
    #[error("no hash file: no source has it")]
    NoHashFile,
    #[error("hash file could not be fetched: {0}")]
    HashFileFetch(String),
    #[error("hash file SHA-256 {actual} does not match the manifest's {expected}")]
    HashFileDigestMismatch { expected: String, actual: String },
    #[error("hash file does not parse: {0}")]
    HashFileParse(HashFileError),
    #[error("hash file says content length {hashfile} but the manifest says {manifest}")]
    LengthMismatch { manifest: u64, hashfile: u64 },
    #[error("hash file says piece size {hashfile} but the manifest says {manifest}")]
    PieceSizeMismatch { manifest: u32, hashfile: u32 },
}

/// How a download proceeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Peers may be used: every piece is checked against these hashes.
    P2p { hashes: HashFile },
    /// HTTP sources only; nothing is asked of or offered to peers.
    Simple { reason: SimpleReason },
}

impl Mode {
    /// Short name for logs and summaries: `p2p` or `simple`.
    pub fn name(&self) -> &'static str {
        match self {
            Mode::P2p { .. } => "p2p",
            Mode::Simple { .. } => "simple",
        }
    }
}

/// Decides the mode from what the metadata fetches gave.
///
/// `manifest` is the parsed manifest (or why there is none); `hashfile` the raw hash file bytes.
pub fn decide(manifest: Result<&Manifest, MetadataFailure>, hashfile: Result<&[u8], MetadataFailure>) -> Mode {
    match decide_inner(manifest, hashfile) {
        Ok(hashes) => Mode::P2p { hashes },
        Err(reason) => Mode::Simple { reason },
    }
}

fn decide_inner(
    manifest: Result<&Manifest, MetadataFailure>,
    hashfile: Result<&[u8], MetadataFailure>,
) -> Result<HashFile, SimpleReason> {
    let manifest = match manifest {
        Ok(manifest) => manifest,
        Err(MetadataFailure::NotFound) => return Err(SimpleReason::NoManifest),
        Err(MetadataFailure::Fetch(why)) => return Err(SimpleReason::ManifestFetch(why)),
    };
    let expected = manifest.hashfile_digest().map_err(|e| SimpleReason::ManifestInvalid(e.to_string()))?;
    let bytes = match hashfile {
        Ok(bytes) => bytes,
        Err(MetadataFailure::NotFound) => return Err(SimpleReason::NoHashFile),
        Err(MetadataFailure::Fetch(why)) => return Err(SimpleReason::HashFileFetch(why)),
    };
    let actual = sha256(bytes);
    if actual != expected {
        return Err(SimpleReason::HashFileDigestMismatch {
            expected: hex::encode(expected),
            actual: hex::encode(actual),
        });
    }
    let hashes = HashFile::parse(bytes).map_err(SimpleReason::HashFileParse)?;
    if hashes.content_length() != manifest.content_length {
        return Err(SimpleReason::LengthMismatch {
            manifest: manifest.content_length,
            hashfile: hashes.content_length(),
        });
    }
    if hashes.piece_size().bytes() != manifest.piece_size {
        return Err(SimpleReason::PieceSizeMismatch {
            manifest: manifest.piece_size,
            hashfile: hashes.piece_size().bytes(),
        });
    }
    Ok(hashes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::piece_size::PieceSize;

    fn hashfile() -> HashFile {
        HashFile::new(PieceSize::new(65536).unwrap(), 70000, vec![[7; 32], [8; 32]]).unwrap()
    }

    fn manifest_for(bytes: &[u8]) -> Manifest {
        Manifest {
            version: 1,
            content_id: "c".into(),
            content_length: 70000,
            piece_size: 65536,
            hashfile_sha256: hex::encode(sha256(bytes)),
            hashfile_urls: vec![],
            sources: vec![],
            sha256: None,
        }
    }

    fn reason(mode: Mode) -> SimpleReason {
        match mode {
            Mode::Simple { reason } => reason,
            Mode::P2p { .. } => panic!("expected simple mode"),
        }
    }

    #[test]
    fn verified_hash_file_gives_p2p() {
        let bytes = hashfile().to_bytes();
        let manifest = manifest_for(&bytes);
        assert_eq!(decide(Ok(&manifest), Ok(&bytes)), Mode::P2p { hashes: hashfile() });
    }

    #[test]
    fn missing_or_failed_manifest_gives_simple() {
        let bytes = hashfile().to_bytes();
        assert_eq!(reason(decide(Err(MetadataFailure::NotFound), Ok(&bytes))), SimpleReason::NoManifest);
        let mode = decide(Err(MetadataFailure::Fetch("certificate expired".into())), Ok(&bytes));
        assert!(reason(mode).to_string().contains("certificate expired"));
    }

    #[test]
    fn invalid_manifest_digest_gives_simple() {
        let bytes = hashfile().to_bytes();
        let mut manifest = manifest_for(&bytes);
        manifest.hashfile_sha256 = "nothex".into();
        assert!(matches!(reason(decide(Ok(&manifest), Ok(&bytes))), SimpleReason::ManifestInvalid(_)));
    }

    #[test]
    fn missing_or_failed_hash_file_gives_simple() {
        let bytes = hashfile().to_bytes();
        let manifest = manifest_for(&bytes);
        assert_eq!(reason(decide(Ok(&manifest), Err(MetadataFailure::NotFound))), SimpleReason::NoHashFile);
        let mode = decide(Ok(&manifest), Err(MetadataFailure::Fetch("connection refused".into())));
        assert_eq!(reason(mode), SimpleReason::HashFileFetch("connection refused".into()));
    }

    #[test]
    fn tampered_hash_file_gives_simple() {
        let bytes = hashfile().to_bytes();
        let manifest = manifest_for(&bytes);
        let mut tampered = bytes.clone();
        *tampered.last_mut().unwrap() ^= 1;
        let why = reason(decide(Ok(&manifest), Ok(&tampered)));
        assert!(matches!(why, SimpleReason::HashFileDigestMismatch { .. }));
        assert!(why.to_string().contains("does not match"));
    }

    #[test]
    fn unparseable_hash_file_gives_simple_even_when_digest_matches() {
        let garbage = b"not a hash file".to_vec();
        let manifest = manifest_for(&garbage);
        assert!(matches!(reason(decide(Ok(&manifest), Ok(&garbage))), SimpleReason::HashFileParse(_)));
    }

    #[test]
    fn length_or_piece_size_disagreement_gives_simple() {
        let bytes = hashfile().to_bytes();
        let mut manifest = manifest_for(&bytes);
        manifest.content_length = 70001;
        assert_eq!(
            reason(decide(Ok(&manifest), Ok(&bytes))),
            SimpleReason::LengthMismatch { manifest: 70001, hashfile: 70000 }
        );
        let mut manifest = manifest_for(&bytes);
        manifest.piece_size = 131072;
        assert_eq!(
            reason(decide(Ok(&manifest), Ok(&bytes))),
            SimpleReason::PieceSizeMismatch { manifest: 131072, hashfile: 65536 }
        );
    }
}
