//! Index log records: fixed 256-byte entries, each checksummed, so a torn tail is detected on replay.
//!
//! Layout (little-endian), specified in docs/protocol.md:
//! `0 magic "TREC" | 4 kind | 5 slot size log2 | 6 id length | 7 zero | 8 slab u32 | 12 slot u32 |
//! 16 piece index u64 | 24 length u32 | 28 zero u32 | 32 committed unix s u64 | 40 digest [32] |
//! 72 id [128] | 200 zero [48] | 248 checksum: first 8 bytes of SHA-256 over bytes 0..248`.

use crate::content::{ContentId, Digest};

/// Bytes per record.
pub const RECORD_SIZE: usize = 256;
const RECORD_MAGIC: [u8; 4] = *b"TREC";
const CHECKSUM_OFFSET: usize = 248;

/// What a record says happened to a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A piece's bytes are durable in the slot and the piece is visible.
    Commit = 1,
    /// The piece left the slot; the slot may be reused.
    Evict = 2,
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub kind: RecordKind,
    pub slot_size_log2: u8,
    pub slab: u32,
    pub slot: u32,
    pub content_id: ContentId,
    pub piece_index: u64,
    pub length: u32,
    pub committed_unix_s: u64,
    pub digest: Digest,
}

impl Record {
    /// The record's bytes, checksum included.
    pub fn encode(&self) -> [u8; RECORD_SIZE] {
        let mut out = [0u8; RECORD_SIZE];
        let id = self.content_id.as_str().as_bytes();
        out[0..4].copy_from_slice(&RECORD_MAGIC);
        out[4] = self.kind as u8;
        out[5] = self.slot_size_log2;
        out[6] = id.len() as u8;
        out[8..12].copy_from_slice(&self.slab.to_le_bytes());
        out[12..16].copy_from_slice(&self.slot.to_le_bytes());
        out[16..24].copy_from_slice(&self.piece_index.to_le_bytes());
        out[24..28].copy_from_slice(&self.length.to_le_bytes());
        out[32..40].copy_from_slice(&self.committed_unix_s.to_le_bytes());
        out[40..72].copy_from_slice(&self.digest);
        out[72..72 + id.len()].copy_from_slice(id);
        let checksum = checksum(&out[..CHECKSUM_OFFSET]);
        out[CHECKSUM_OFFSET..].copy_from_slice(&checksum);
        out
    }

    /// Decodes a record; `None` for anything torn, foreign or inconsistent.
    pub fn decode(bytes: &[u8]) -> Option<Record> {
        if bytes.len() != RECORD_SIZE || bytes[0..4] != RECORD_MAGIC {
            return None;
        }
        if checksum(&bytes[..CHECKSUM_OFFSET]) != bytes[CHECKSUM_OFFSET..] {
            return None;
        }
        let kind = match bytes[4] {
            1 => RecordKind::Commit,
            2 => RecordKind::Evict,
            _ => return None,
        };
        let id_length = usize::from(bytes[6]);
        let id = std::str::from_utf8(bytes.get(72..72 + id_length)?).ok()?;
        Some(Record {
            kind,
            slot_size_log2: bytes[5],
            slab: u32::from_le_bytes(bytes[8..12].try_into().ok()?),
            slot: u32::from_le_bytes(bytes[12..16].try_into().ok()?),
            content_id: ContentId::parse(id).ok()?,
            piece_index: u64::from_le_bytes(bytes[16..24].try_into().ok()?),
            length: u32::from_le_bytes(bytes[24..28].try_into().ok()?),
            committed_unix_s: u64::from_le_bytes(bytes[32..40].try_into().ok()?),
            digest: bytes[40..72].try_into().ok()?,
        })
    }
}

fn checksum(bytes: &[u8]) -> [u8; 8] {
    crate::hash::hash_piece(bytes)[..8].try_into().expect("8 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            kind: RecordKind::Commit,
            slot_size_log2: 20,
            slab: 3,
            slot: 17,
            content_id: ContentId::parse(&"z".repeat(128)).unwrap(),
            piece_index: 99,
            length: 1 << 20,
            committed_unix_s: 1_700_000_000,
            digest: [9; 32],
        }
    }

    #[test]
    fn round_trips() {
        assert_eq!(Record::decode(&sample().encode()), Some(sample()));
    }

    #[test]
    fn any_flipped_bit_or_short_read_is_rejected() {
        let bytes = sample().encode();
        for i in [0, 4, 10, 30, 50, 100, 249] {
            let mut bad = bytes;
            bad[i] ^= 0x10;
            assert_eq!(Record::decode(&bad), None, "byte {i}");
        }
        assert_eq!(Record::decode(&bytes[..255]), None);
    }
}
