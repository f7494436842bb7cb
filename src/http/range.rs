//! Byte ranges (`Range: bytes=…`, RFC 9110 §14.2) resolved against a content length.
//!
//! One satisfiable range is a plain 206; several are a `multipart/byteranges` 206 (see
//! [`crate::http::multipart`]). Ranges that overlap, touch or come out of order are sorted and
//! coalesced (RFC 9110 lets a server do so), so no byte is sent twice: `bytes=0-,0-,0-…` cannot
//! amplify a response. A header with more than `ranges_max` ranges, or one that does not parse,
//! is ignored (200, the whole content), as RFC 9110 allows.

/// Bytes `start..=end` of a content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    /// Inclusive.
    pub end: u64,
}

impl ByteRange {
    /// Number of bytes in the range.
    pub fn length(&self) -> u64 {
        self.end - self.start + 1
    }
}

/// What a `Range:` header means for content of a given length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeOutcome {
    /// No usable range: send everything with 200.
    Full,
    /// Send bytes `start..=end` with 206.
    Partial { start: u64, end: u64 },
    /// Send these ranges (at least two, ascending, disjoint, not adjacent) as `multipart/byteranges`.
    Multiple(Vec<ByteRange>),
    /// Answer 416 with `Content-Range: bytes */length`.
    Unsatisfiable,
}

/// One `range-spec` of the header: satisfiable (clamped to the content), unsatisfiable, or malformed.
enum Spec {
    Satisfiable(ByteRange),
    Unsatisfiable,
    Malformed,
}

/// Resolves `header` (the `Range:` value) against `length`, honouring at most `ranges_max` ranges.
pub fn parse_range(header: Option<&str>, length: u64, ranges_max: usize) -> RangeOutcome {
    let Some(header) = header else { return RangeOutcome::Full };
    let header = header.trim();
    // The range unit is case-insensitive.
    let Some(spec) = header.get(..6).filter(|unit| unit.eq_ignore_ascii_case("bytes=")).map(|_| &header[6..]) else {
        return RangeOutcome::Full;
    };
    let mut ranges = Vec::new();
    let mut count = 0;
    for item in spec.split(',').map(str::trim).filter(|item| !item.is_empty()) {
        count += 1;
        if count > ranges_max {
            return RangeOutcome::Full;
        }
        match parse_spec(item, length) {
            Spec::Satisfiable(range) => ranges.push(range),
            Spec::Unsatisfiable => {}
            Spec::Malformed => return RangeOutcome::Full,
        }
    }
    if count == 0 {
        return RangeOutcome::Full;
    }
    coalesce(&mut ranges);
    match ranges.as_slice() {
        [] => RangeOutcome::Unsatisfiable,
        [only] => RangeOutcome::Partial { start: only.start, end: only.end },
        _ => RangeOutcome::Multiple(ranges),
    }
}

fn parse_spec(item: &str, length: u64) -> Spec {
    let Some((first, last)) = item.split_once('-') else { return Spec::Malformed };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // Suffix range: the last N bytes.
        let Ok(suffix) = last.parse::<u64>() else { return Spec::Malformed };
        if suffix == 0 || length == 0 {
            return Spec::Unsatisfiable;
        }
        return Spec::Satisfiable(ByteRange { start: length.saturating_sub(suffix), end: length - 1 });
    }
    let Ok(start) = first.parse::<u64>() else { return Spec::Malformed };
    let end = if last.is_empty() {
        u64::MAX
    } else {
        match last.parse::<u64>() {
            Ok(end) if end >= start => end,
            _ => return Spec::Malformed,
        }
    };
    if start >= length {
        return Spec::Unsatisfiable;
    }
    Spec::Satisfiable(ByteRange { start, end: end.min(length - 1) })
}

/// Keeps the client's order when the ranges ascend with gaps between them; otherwise sorts them
/// and merges every range that overlaps or touches the one before.
fn coalesce(ranges: &mut Vec<ByteRange>) {
    let separate = ranges.windows(2).all(|pair| pair[0].end.saturating_add(1) < pair[1].start);
    if separate {
        return;
    }
    ranges.sort_unstable_by_key(|range| range.start);
    let mut merged: Vec<ByteRange> = Vec::with_capacity(ranges.len());
    for range in ranges.drain(..) {
        match merged.last_mut() {
            Some(last) if range.start <= last.end.saturating_add(1) => last.end = last.end.max(range.end),
            _ => merged.push(range),
        }
    }
    debug_assert!(merged.windows(2).all(|pair| pair[0].end + 1 < pair[1].start));
    *ranges = merged;
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 8;

    fn parse(header: &str, length: u64) -> RangeOutcome {
        parse_range(Some(header), length, MAX)
    }

    fn multiple(ranges: &[(u64, u64)]) -> RangeOutcome {
        RangeOutcome::Multiple(ranges.iter().map(|&(start, end)| ByteRange { start, end }).collect())
    }

    #[test]
    fn resolves_single_ranges() {
        assert_eq!(parse_range(None, 10, MAX), RangeOutcome::Full);
        assert_eq!(parse("bytes=0-4", 10), RangeOutcome::Partial { start: 0, end: 4 });
        assert_eq!(parse("bytes=5-", 10), RangeOutcome::Partial { start: 5, end: 9 });
        assert_eq!(parse("bytes=5-100", 10), RangeOutcome::Partial { start: 5, end: 9 });
        assert_eq!(parse("bytes=-3", 10), RangeOutcome::Partial { start: 7, end: 9 });
        assert_eq!(parse("bytes=-30", 10), RangeOutcome::Partial { start: 0, end: 9 });
        assert_eq!(parse("Bytes=1-2", 10), RangeOutcome::Partial { start: 1, end: 2 });
    }

    #[test]
    fn unsatisfiable_and_ignored_forms() {
        assert_eq!(parse("bytes=10-", 10), RangeOutcome::Unsatisfiable);
        assert_eq!(parse("bytes=-0", 10), RangeOutcome::Unsatisfiable);
        assert_eq!(parse("bytes=0-0", 0), RangeOutcome::Unsatisfiable);
        assert_eq!(parse("bytes=10-12,20-", 10), RangeOutcome::Unsatisfiable);
        assert_eq!(parse("bytes=5-2", 10), RangeOutcome::Full);
        assert_eq!(parse("bytes=0-1,5-2", 10), RangeOutcome::Full, "one malformed spec voids the header");
        assert_eq!(parse("items=0-1", 10), RangeOutcome::Full);
        assert_eq!(parse("bytes=x-1", 10), RangeOutcome::Full);
        assert_eq!(parse("bytes=", 10), RangeOutcome::Full);
        assert_eq!(parse("bytes=,", 10), RangeOutcome::Full);
    }

    #[test]
    fn several_ranges_keep_their_order_when_separate() {
        assert_eq!(parse("bytes=0-1,4-5", 10), multiple(&[(0, 1), (4, 5)]));
        assert_eq!(parse("bytes=0-1, 4-5 ,-2", 10), multiple(&[(0, 1), (4, 5), (8, 9)]));
        assert_eq!(parse("bytes=0-1,20-30,4-5", 10), multiple(&[(0, 1), (4, 5)]), "unsatisfiable parts drop out");
        assert_eq!(parse("bytes=0-1,20-30", 10), RangeOutcome::Partial { start: 0, end: 1 });
    }

    #[test]
    fn overlapping_touching_or_unordered_ranges_are_coalesced() {
        assert_eq!(parse("bytes=0-4,2-6", 10), RangeOutcome::Partial { start: 0, end: 6 });
        assert_eq!(parse("bytes=0-1,2-3", 10), RangeOutcome::Partial { start: 0, end: 3 });
        assert_eq!(parse("bytes=6-7,0-1", 10), multiple(&[(0, 1), (6, 7)]));
        assert_eq!(parse("bytes=0-,0-,0-,0-", 10), RangeOutcome::Partial { start: 0, end: 9 });
        assert_eq!(parse("bytes=8-9,0-1,1-3,-1", 10), multiple(&[(0, 3), (8, 9)]));
    }

    #[test]
    fn more_ranges_than_the_limit_are_ignored() {
        let eight = "bytes=0-0,2-2,4-4,6-6,8-8,10-10,12-12,14-14";
        assert!(matches!(parse(eight, 100), RangeOutcome::Multiple(ranges) if ranges.len() == 8));
        assert_eq!(parse(&format!("{eight},16-16"), 100), RangeOutcome::Full);
        assert_eq!(parse_range(Some("bytes=0-1,4-5"), 10, 1), RangeOutcome::Full);
    }
}
