//! Entry points shared by the `cargo fuzz` targets (`fuzz/`) and the corpus replay test
//! (`tests/fuzz_corpora.rs`): each takes arbitrary bytes, runs one parser, and asserts what must
//! hold for any input — no panic, limits kept, and a parsed value that re-encodes to what was read.
//! Keeping them in the library means CI replays every committed corpus file without nightly.

use crate::content::{HashFile, Manifest};
use crate::control::validate::parse_announce;
use crate::http::client::fuzz_responses;
use crate::http::request::{parse_request, Parsed, RequestLimits};
use crate::http::{parse_range, RangeOutcome};

/// Most content ids an announce may carry in the fuzzed configuration.
const ANNOUNCE_CONTENTS_MAX: usize = 64;

/// A request head: a complete head stays within the limits and parses the same from its own bytes.
pub fn request_head(data: &[u8]) {
    let limits = RequestLimits::default();
    match parse_request(data, &limits) {
        Ok(Parsed::Complete { request, head_length }) => {
            assert!(head_length <= data.len(), "head_length {head_length} past the input");
            assert!(head_length <= limits.header_bytes_max, "head of {head_length} bytes passed the limit");
            assert!(request.target.len() <= limits.target_bytes_max, "target passed the limit");
            let again = parse_request(&data[..head_length], &limits);
            assert_eq!(again, Ok(Parsed::Complete { request, head_length }), "head parses differently alone");
        }
        Ok(Parsed::Partial) => assert!(data.len() <= limits.header_bytes_max, "partial head past the limit"),
        Err(error) => assert!((400..=505).contains(&error.status()), "status {} for {error}", error.status()),
    }
}

/// A hash file: whatever parses is canonical (re-encodes to the same bytes).
pub fn hashfile(data: &[u8]) {
    if let Ok(parsed) = HashFile::parse(data) {
        assert_eq!(parsed.to_bytes(), data, "a parsed hash file re-encodes differently");
        assert_eq!(parsed.piece_size().piece_count(parsed.content_length()), parsed.digests().len() as u64);
    }
}

/// A manifest: whatever parses is valid and survives its own JSON encoding.
pub fn manifest(data: &[u8]) {
    if let Ok(parsed) = Manifest::parse(data) {
        let again = Manifest::parse(parsed.to_json().as_bytes()).expect("a parsed manifest re-parses");
        assert_eq!(again, parsed, "a manifest changed through its own JSON");
        assert!(parsed.hashfile_digest().is_ok());
    }
}

/// An announce body: accepted announces keep the contents limit.
pub fn announce(data: &[u8]) {
    match parse_announce(data, ANNOUNCE_CONTENTS_MAX) {
        Ok(announce) => assert!(announce.holdings.len() <= ANNOUNCE_CONTENTS_MAX, "contents limit passed"),
        Err(message) => assert!(!message.is_empty(), "an empty error message"),
    }
}

/// Most ranges one request may ask for in the fuzzed configuration.
const RANGES_MAX: usize = 8;

/// A `Range:` header (after an 8-byte content length): every range served lies inside the
/// content, several come ascending, disjoint and not touching, and never more than the limit.
pub fn range(data: &[u8]) {
    let Some((length, header)) = data.split_first_chunk::<8>() else { return };
    let length = u64::from_le_bytes(*length) % (1 << 40);
    let Ok(header) = std::str::from_utf8(header) else { return };
    match parse_range(Some(header), length, RANGES_MAX) {
        RangeOutcome::Full | RangeOutcome::Unsatisfiable => {}
        RangeOutcome::Partial { start, end } => assert!(start <= end && end < length, "{start}-{end} of {length}"),
        RangeOutcome::Multiple(ranges) => {
            assert!((2..=RANGES_MAX).contains(&ranges.len()), "{} ranges", ranges.len());
            for pair in ranges.windows(2) {
                assert!(pair[0].end + 1 < pair[1].start, "ranges overlap, touch or go backwards: {ranges:?}");
            }
            for range in &ranges {
                assert!(range.start <= range.end && range.end < length, "{range:?} of {length}");
            }
        }
    }
}

/// Response bytes to the HTTP client connection (first byte: requests in flight; second: where
/// the input is split in two reads): it must neither panic nor loop.
pub fn http_client(data: &[u8]) {
    let Some((&[requests, split], bytes)) = data.split_first_chunk::<2>() else { return };
    fuzz_responses(bytes, usize::from(split), usize::from(requests % 8));
}

/// A fuzz target's entry point.
pub type Target = fn(&[u8]);

/// Every fuzz target by name, for the corpus replay test.
pub const TARGETS: &[(&str, Target)] = &[
    ("request_head", request_head),
    ("hashfile", hashfile),
    ("manifest", manifest),
    ("announce", announce),
    ("range", range),
    ("http_client", http_client),
];
