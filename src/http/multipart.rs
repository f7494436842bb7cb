//! The framing of a `multipart/byteranges` body (RFC 9110 §14.6): the small part heads and the
//! closing delimiter, written into one buffer. The parts' bytes are not copied here: the caller
//! sends framing span 0, range 0's bytes, span 1, range 1's bytes, …, then the last span.

use std::ops::Range;

use crate::http::range::ByteRange;
use crate::http::response::push_content_range;
use crate::http::ContentRange;

/// Length of a boundary [`Framing::new`] makes from a random `u64`.
pub const BOUNDARY_BYTES: usize = 24;

/// The framing bytes of one multipart body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Framing {
    /// Every part head and the closing delimiter, back to back.
    pub bytes: Vec<u8>,
    /// `spans[i]` is the part head before range `i`; the last span is the closing delimiter.
    pub spans: Vec<Range<usize>>,
    /// `multipart/byteranges; boundary=…`, for the response's `Content-Type`.
    pub content_type: String,
}

impl Framing {
    /// The framing for `ranges` of content of `length` bytes whose parts have type `part_type`;
    /// `nonce` makes the boundary (a fresh random value per response, so content cannot hold it by
    /// design).
    pub fn new(ranges: &[ByteRange], length: u64, part_type: &str, nonce: u64) -> Framing {
        let mut boundary = [0u8; BOUNDARY_BYTES];
        boundary[..8].copy_from_slice(b"tessera-");
        hex::encode_to_slice(nonce.to_be_bytes(), &mut boundary[8..]).expect("16 hex digits fit");
        // One part head is under 100 bytes plus the type.
        let mut bytes = Vec::with_capacity((ranges.len() + 1) * (100 + BOUNDARY_BYTES + part_type.len()));
        let mut spans = Vec::with_capacity(ranges.len() + 1);
        for range in ranges {
            assert!(range.start <= range.end && range.end < length, "range {range:?} outside {length} bytes");
            let start = bytes.len();
            bytes.extend_from_slice(b"\r\n--");
            bytes.extend_from_slice(&boundary);
            bytes.extend_from_slice(b"\r\nContent-Type: ");
            bytes.extend_from_slice(part_type.as_bytes());
            bytes.extend_from_slice(b"\r\n");
            push_content_range(&mut bytes, &ContentRange::Bytes { start: range.start, end: range.end, length });
            bytes.extend_from_slice(b"\r\n");
            spans.push(start..bytes.len());
        }
        let start = bytes.len();
        bytes.extend_from_slice(b"\r\n--");
        bytes.extend_from_slice(&boundary);
        bytes.extend_from_slice(b"--\r\n");
        spans.push(start..bytes.len());
        let boundary = std::str::from_utf8(&boundary).expect("ASCII boundary");
        Framing { bytes, spans, content_type: format!("multipart/byteranges; boundary={boundary}") }
    }

    /// Bytes of the whole body: the framing plus every range's bytes.
    pub fn body_length(&self, ranges: &[ByteRange]) -> u64 {
        self.bytes.len() as u64 + ranges.iter().map(ByteRange::length).sum::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body a client would receive, assembled from the framing and the content.
    fn assemble(framing: &Framing, ranges: &[ByteRange], content: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        for (span, range) in framing.spans.iter().zip(ranges) {
            body.extend_from_slice(&framing.bytes[span.clone()]);
            body.extend_from_slice(&content[range.start as usize..=range.end as usize]);
        }
        body.extend_from_slice(&framing.bytes[framing.spans.last().unwrap().clone()]);
        body
    }

    #[test]
    fn body_is_parts_with_type_and_range_then_closing_delimiter() {
        let content: Vec<u8> = (0..200u8).collect();
        let ranges = [ByteRange { start: 0, end: 9 }, ByteRange { start: 100, end: 102 }];
        let framing = Framing::new(&ranges, 200, "application/octet-stream", 0xfeed);
        assert_eq!(framing.content_type, "multipart/byteranges; boundary=tessera-000000000000feed");
        let body = assemble(&framing, &ranges, &content);
        assert_eq!(body.len() as u64, framing.body_length(&ranges));
        let mut expected = b"\r\n--tessera-000000000000feed\r\nContent-Type: application/octet-stream\r\n\
            Content-Range: bytes 0-9/200\r\n\r\n"
            .to_vec();
        expected.extend_from_slice(&content[..10]);
        expected.extend_from_slice(
            b"\r\n--tessera-000000000000feed\r\nContent-Type: application/octet-stream\r\n\
              Content-Range: bytes 100-102/200\r\n\r\n",
        );
        expected.extend_from_slice(&content[100..103]);
        expected.extend_from_slice(b"\r\n--tessera-000000000000feed--\r\n");
        assert_eq!(body, expected);
    }

    #[test]
    fn boundaries_differ_per_nonce_and_have_a_fixed_length() {
        let ranges = [ByteRange { start: 1, end: 1 }, ByteRange { start: 3, end: 3 }];
        let a = Framing::new(&ranges, 4, "x/y", 1);
        let b = Framing::new(&ranges, 4, "x/y", u64::MAX);
        assert_ne!(a.content_type, b.content_type);
        assert_eq!(a.bytes.len(), b.bytes.len());
        assert_eq!(a.spans.len(), 3);
    }
}
