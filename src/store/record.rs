//! Index log records (store format 2): a header, then fixed 72-byte entries, each checksummed, so
//! a torn tail is detected on replay. A record names a piece by its SHA-256 only: the store is
//! content-addressed, and which contents use a piece is the hash files' business.
//!
//! Layout (little-endian), specified in docs/protocol.md:
//! header `0 magic "TSTO" | 4 format u32 | 8 zero [56] | 64 checksum`;
//! record `0 magic "TRC2" | 4 kind | 5 slot size log2 | 6 zero [2] | 8 slab u32 | 12 slot u32 |
//! 16 length u32 | 20 zero u32 | 24 committed unix s u64 | 32 digest [32] | 64 checksum`;
//! the checksum is the first 8 bytes of SHA-256 over bytes 0..64.

use crate::content::Digest;

/// Bytes per record (and of the header).
pub const RECORD_SIZE: usize = 72;
/// The store format this code writes.
pub const STORE_FORMAT: u32 = 2;
const HEADER_MAGIC: [u8; 4] = *b"TSTO";
const RECORD_MAGIC: [u8; 4] = *b"TRC2";
const CHECKSUM_OFFSET: usize = 64;

/// Format 1 (pieces keyed by content id and index): 256-byte records starting with this magic.
pub const V1_MAGIC: [u8; 4] = *b"TREC";
/// Bytes per format-1 record.
pub const V1_RECORD_SIZE: usize = 256;
const V1_CHECKSUM_OFFSET: usize = 248;

/// What a record says happened to a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A piece's bytes are durable in the slot and the piece is visible (or its age renewed).
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
    pub length: u32,
    pub committed_unix_s: u64,
    pub digest: Digest,
}

/// The log's first `RECORD_SIZE` bytes: which format the store is in.
pub fn encode_header(format: u32) -> [u8; RECORD_SIZE] {
    let mut out = [0u8; RECORD_SIZE];
    out[0..4].copy_from_slice(&HEADER_MAGIC);
    out[4..8].copy_from_slice(&format.to_le_bytes());
    seal(&mut out, CHECKSUM_OFFSET);
    out
}

/// The format a header names; `None` when `bytes` do not start with an intact header.
pub fn decode_header(bytes: &[u8]) -> Option<u32> {
    let header = bytes.get(..RECORD_SIZE)?;
    if header[0..4] != HEADER_MAGIC || !sealed(header, CHECKSUM_OFFSET) {
        return None;
    }
    Some(u32::from_le_bytes(header[4..8].try_into().ok()?))
}

impl Record {
    /// The record's bytes, checksum included.
    pub fn encode(&self) -> [u8; RECORD_SIZE] {
        let mut out = [0u8; RECORD_SIZE];
        out[0..4].copy_from_slice(&RECORD_MAGIC);
        out[4] = self.kind as u8;
        out[5] = self.slot_size_log2;
        out[8..12].copy_from_slice(&self.slab.to_le_bytes());
        out[12..16].copy_from_slice(&self.slot.to_le_bytes());
        out[16..20].copy_from_slice(&self.length.to_le_bytes());
        out[24..32].copy_from_slice(&self.committed_unix_s.to_le_bytes());
        out[32..64].copy_from_slice(&self.digest);
        seal(&mut out, CHECKSUM_OFFSET);
        out
    }

    /// Decodes a record; `None` for anything torn, foreign or inconsistent.
    pub fn decode(bytes: &[u8]) -> Option<Record> {
        if bytes.len() != RECORD_SIZE || bytes[0..4] != RECORD_MAGIC || !sealed(bytes, CHECKSUM_OFFSET) {
            return None;
        }
        Some(Record {
            kind: kind(bytes[4])?,
            slot_size_log2: bytes[5],
            slab: u32::from_le_bytes(bytes[8..12].try_into().ok()?),
            slot: u32::from_le_bytes(bytes[12..16].try_into().ok()?),
            length: u32::from_le_bytes(bytes[16..20].try_into().ok()?),
            committed_unix_s: u64::from_le_bytes(bytes[24..32].try_into().ok()?),
            digest: bytes[32..64].try_into().ok()?,
        })
    }

    /// Decodes a format-1 record, dropping the content id and piece index it was keyed by (its
    /// digest is all format 2 needs); `None` for anything torn or foreign.
    pub fn decode_v1(bytes: &[u8]) -> Option<Record> {
        if bytes.len() != V1_RECORD_SIZE || bytes[0..4] != V1_MAGIC || !sealed(bytes, V1_CHECKSUM_OFFSET) {
            return None;
        }
        Some(Record {
            kind: kind(bytes[4])?,
            slot_size_log2: bytes[5],
            slab: u32::from_le_bytes(bytes[8..12].try_into().ok()?),
            slot: u32::from_le_bytes(bytes[12..16].try_into().ok()?),
            length: u32::from_le_bytes(bytes[24..28].try_into().ok()?),
            committed_unix_s: u64::from_le_bytes(bytes[32..40].try_into().ok()?),
            digest: bytes[40..72].try_into().ok()?,
        })
    }

    /// A format-1 record of this piece (content `id`, piece `index`), as the old store wrote it.
    #[cfg(test)]
    pub fn encode_v1(&self, id: &str, index: u64) -> [u8; V1_RECORD_SIZE] {
        let mut out = [0u8; V1_RECORD_SIZE];
        out[0..4].copy_from_slice(&V1_MAGIC);
        out[4] = self.kind as u8;
        out[5] = self.slot_size_log2;
        out[6] = id.len() as u8;
        out[8..12].copy_from_slice(&self.slab.to_le_bytes());
        out[12..16].copy_from_slice(&self.slot.to_le_bytes());
        out[16..24].copy_from_slice(&index.to_le_bytes());
        out[24..28].copy_from_slice(&self.length.to_le_bytes());
        out[32..40].copy_from_slice(&self.committed_unix_s.to_le_bytes());
        out[40..72].copy_from_slice(&self.digest);
        out[72..72 + id.len()].copy_from_slice(id.as_bytes());
        seal(&mut out, V1_CHECKSUM_OFFSET);
        out
    }
}

fn kind(byte: u8) -> Option<RecordKind> {
    match byte {
        1 => Some(RecordKind::Commit),
        2 => Some(RecordKind::Evict),
        _ => None,
    }
}

/// Writes the checksum of `bytes[..at]` at `at`.
fn seal(bytes: &mut [u8], at: usize) {
    let checksum = checksum(&bytes[..at]);
    bytes[at..at + 8].copy_from_slice(&checksum);
}

fn sealed(bytes: &[u8], at: usize) -> bool {
    checksum(&bytes[..at])[..] == bytes[at..at + 8]
}

fn checksum(bytes: &[u8]) -> [u8; 8] {
    crate::hash::sha256(bytes)[..8].try_into().expect("8 bytes")
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
            length: 1 << 20,
            committed_unix_s: 1_700_000_000,
            digest: [9; 32],
        }
    }

    #[test]
    fn round_trips() {
        assert_eq!(Record::decode(&sample().encode()), Some(sample()));
        assert_eq!(decode_header(&encode_header(STORE_FORMAT)), Some(STORE_FORMAT));
    }

    #[test]
    fn format_1_records_keep_their_slot_and_digest() {
        assert_eq!(Record::decode_v1(&sample().encode_v1(&"z".repeat(128), 99)), Some(sample()));
    }

    #[test]
    fn any_flipped_bit_or_short_read_is_rejected() {
        let bytes = sample().encode();
        for i in [0, 4, 10, 30, 50, 65, 71] {
            let mut bad = bytes;
            bad[i] ^= 0x10;
            assert_eq!(Record::decode(&bad), None, "byte {i}");
        }
        assert_eq!(Record::decode(&bytes[..RECORD_SIZE - 1]), None);
        let mut header = encode_header(STORE_FORMAT);
        header[5] ^= 1;
        assert_eq!(decode_header(&header), None);
        assert_eq!(Record::decode(&encode_header(STORE_FORMAT)), None, "a header is not a record");
    }
}
