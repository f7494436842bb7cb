//! Hash file v1: the SHA-256 of every piece, in a canonical binary form (see docs/protocol.md).

use crate::content::piece_size::{PieceSize, PieceSizeError};

/// First eight bytes of every hash file.
pub const HASHFILE_MAGIC: [u8; 8] = *b"TSRHASH\0";
/// The only version this code writes and reads.
pub const HASHFILE_VERSION: u16 = 1;
/// Bytes before the first digest.
pub const HASHFILE_HEADER_SIZE: usize = 32;
/// Bytes in one SHA-256 digest.
pub const DIGEST_SIZE: usize = 32;

/// A SHA-256 digest.
pub type Digest = [u8; DIGEST_SIZE];

/// Why bytes are not a valid v1 hash file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashFileError {
    #[error("hash file is truncated: {found} bytes, at least {needed} needed")]
    Truncated { found: usize, needed: usize },
    #[error("hash file has bad magic {0:02x?} (not a tessera hash file)")]
    BadMagic([u8; 8]),
    #[error("hash file version {0} is not supported (this build reads version {HASHFILE_VERSION})")]
    BadVersion(u16),
    #[error("hash file reserved header bytes are not zero")]
    ReservedNotZero,
    #[error("hash file piece size: {0}")]
    PieceSize(#[from] PieceSizeError),
    #[error(
        "hash file says {piece_count} pieces, but {content_length} bytes in pieces of {piece_size} make {expected}"
    )]
    CountMismatch { piece_count: u64, content_length: u64, piece_size: u32, expected: u64 },
    #[error("hash file piece count {0} overflows the digest table size")]
    Overflow(u64),
    #[error("hash file has {0} trailing bytes after the last digest")]
    Trailing(usize),
}

/// A parsed, self-consistent hash file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashFile {
    piece_size: PieceSize,
    content_length: u64,
    digests: Vec<Digest>,
}

impl HashFile {
    /// Builds a hash file from digests computed over `content_length` bytes in pieces of `piece_size`.
    pub fn new(piece_size: PieceSize, content_length: u64, digests: Vec<Digest>) -> Result<Self, HashFileError> {
        let expected = piece_size.piece_count(content_length);
        if digests.len() as u64 != expected {
            return Err(HashFileError::CountMismatch {
                piece_count: digests.len() as u64,
                content_length,
                piece_size: piece_size.bytes(),
                expected,
            });
        }
        Ok(HashFile { piece_size, content_length, digests })
    }

    /// Parses the canonical v1 encoding; every deviation is its own error.
    pub fn parse(bytes: &[u8]) -> Result<Self, HashFileError> {
        if bytes.len() < HASHFILE_HEADER_SIZE {
            return Err(HashFileError::Truncated { found: bytes.len(), needed: HASHFILE_HEADER_SIZE });
        }
        let magic: [u8; 8] = bytes[0..8].try_into().expect("8 bytes");
        if magic != HASHFILE_MAGIC {
            return Err(HashFileError::BadMagic(magic));
        }
        let version = u16::from_le_bytes(bytes[8..10].try_into().expect("2 bytes"));
        if version != HASHFILE_VERSION {
            return Err(HashFileError::BadVersion(version));
        }
        if bytes[10..12] != [0, 0] {
            return Err(HashFileError::ReservedNotZero);
        }
        let piece_size = PieceSize::new(u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes")))?;
        let content_length = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
        let piece_count = u64::from_le_bytes(bytes[24..32].try_into().expect("8 bytes"));
        let expected = piece_size.piece_count(content_length);
        if piece_count != expected {
            return Err(HashFileError::CountMismatch {
                piece_count,
                content_length,
                piece_size: piece_size.bytes(),
                expected,
            });
        }
        let table_size = piece_count
            .checked_mul(DIGEST_SIZE as u64)
            .and_then(|n| n.checked_add(HASHFILE_HEADER_SIZE as u64))
            .and_then(|n| usize::try_from(n).ok())
            .ok_or(HashFileError::Overflow(piece_count))?;
        if bytes.len() < table_size {
            return Err(HashFileError::Truncated { found: bytes.len(), needed: table_size });
        }
        if bytes.len() > table_size {
            return Err(HashFileError::Trailing(bytes.len() - table_size));
        }
        let digests = bytes[HASHFILE_HEADER_SIZE..]
            .chunks_exact(DIGEST_SIZE)
            .map(|chunk| chunk.try_into().expect("32 bytes"))
            .collect();
        Ok(HashFile { piece_size, content_length, digests })
    }

    /// The canonical v1 encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HASHFILE_HEADER_SIZE + self.digests.len() * DIGEST_SIZE);
        out.extend_from_slice(&HASHFILE_MAGIC);
        out.extend_from_slice(&HASHFILE_VERSION.to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.piece_size.bytes().to_le_bytes());
        out.extend_from_slice(&self.content_length.to_le_bytes());
        out.extend_from_slice(&(self.digests.len() as u64).to_le_bytes());
        for digest in &self.digests {
            out.extend_from_slice(digest);
        }
        out
    }

    /// Piece size of the content.
    pub fn piece_size(&self) -> PieceSize {
        self.piece_size
    }

    /// Length of the content in bytes.
    pub fn content_length(&self) -> u64 {
        self.content_length
    }

    /// Number of pieces.
    pub fn piece_count(&self) -> u64 {
        self.digests.len() as u64
    }

    /// All digests, in piece order.
    pub fn digests(&self) -> &[Digest] {
        &self.digests
    }

    /// The digest of piece `index`, if it exists.
    pub fn digest(&self, index: u64) -> Option<&Digest> {
        usize::try_from(index).ok().and_then(|i| self.digests.get(i))
    }

    /// Length in bytes of piece `index` (the last piece may be short).
    pub fn piece_length(&self, index: u64) -> Option<u32> {
        self.piece_size.piece_length(self.content_length, index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> HashFile {
        let size = PieceSize::new(65536).unwrap();
        HashFile::new(size, 65536 * 2 + 10, vec![[1; 32], [2; 32], [3; 32]]).unwrap()
    }

    #[test]
    fn round_trips_and_is_canonical() {
        let bytes = sample().to_bytes();
        assert_eq!(bytes.len(), 32 + 3 * 32);
        let parsed = HashFile::parse(&bytes).unwrap();
        assert_eq!(parsed, sample());
        assert_eq!(parsed.to_bytes(), bytes);
        assert_eq!(parsed.piece_length(2), Some(10));
        assert_eq!(parsed.piece_length(3), None);
    }

    #[test]
    fn zero_length_content_has_zero_pieces() {
        let empty = HashFile::new(PieceSize::DEFAULT, 0, vec![]).unwrap();
        assert_eq!(HashFile::parse(&empty.to_bytes()).unwrap().piece_count(), 0);
    }

    #[test]
    fn rejects_truncated_extended_and_corrupted_bytes() {
        let bytes = sample().to_bytes();
        assert!(matches!(HashFile::parse(&bytes[..bytes.len() - 1]), Err(HashFileError::Truncated { .. })));
        assert!(matches!(HashFile::parse(&bytes[..20]), Err(HashFileError::Truncated { .. })));
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(HashFile::parse(&longer), Err(HashFileError::Trailing(1)));
        let mut bad = bytes.clone();
        bad[0] ^= 1;
        assert!(matches!(HashFile::parse(&bad), Err(HashFileError::BadMagic(_))));
        let mut bad = bytes.clone();
        bad[8] = 2;
        assert_eq!(HashFile::parse(&bad), Err(HashFileError::BadVersion(2)));
        let mut bad = bytes.clone();
        bad[11] = 1;
        assert_eq!(HashFile::parse(&bad), Err(HashFileError::ReservedNotZero));
        let mut bad = bytes.clone();
        bad[12..16].copy_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(HashFile::parse(&bad), Err(HashFileError::PieceSize(_))));
        let mut bad = bytes.clone();
        bad[24] = 4;
        assert!(matches!(HashFile::parse(&bad), Err(HashFileError::CountMismatch { piece_count: 4, .. })));
        let mut bad = bytes.clone();
        bad[16..24].copy_from_slice(&(65536u64 * 5).to_le_bytes());
        assert!(matches!(HashFile::parse(&bad), Err(HashFileError::CountMismatch { expected: 5, .. })));
    }

    #[test]
    fn rejects_lengths_that_overflow() {
        let mut bad = sample().to_bytes();
        bad[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        let count = PieceSize::new(65536).unwrap().piece_count(u64::MAX);
        bad[24..32].copy_from_slice(&count.to_le_bytes());
        let error = HashFile::parse(&bad).unwrap_err();
        assert!(matches!(error, HashFileError::Overflow(_) | HashFileError::Truncated { .. }), "{error}");
    }

    #[test]
    fn new_rejects_wrong_digest_count() {
        let error = HashFile::new(PieceSize::DEFAULT, 1, vec![]).unwrap_err();
        assert!(matches!(error, HashFileError::CountMismatch { expected: 1, .. }));
    }
}
