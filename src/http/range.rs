//! Single byte ranges (`Range: bytes=…`) resolved against a content length.
//!
//! Multi-range requests get the whole content (200): RFC 9110 lets a server ignore Range, and
//! no client tessera serves (curl, wget, aria2, package managers) needs multipart responses.

/// What a `Range:` header means for content of a given length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeOutcome {
    /// No usable range: send everything with 200.
    Full,
    /// Send bytes `start..=end` with 206.
    Partial { start: u64, end: u64 },
    /// Answer 416 with `Content-Range: bytes */length`.
    Unsatisfiable,
}

/// Resolves `header` (the `Range:` value) against `length`.
pub fn parse_range(header: Option<&str>, length: u64) -> RangeOutcome {
    let Some(header) = header else { return RangeOutcome::Full };
    let Some(spec) = header.trim().strip_prefix("bytes=") else { return RangeOutcome::Full };
    if spec.contains(',') {
        return RangeOutcome::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else { return RangeOutcome::Full };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // Suffix range: the last N bytes.
        let Ok(suffix) = last.parse::<u64>() else { return RangeOutcome::Full };
        if suffix == 0 || length == 0 {
            return RangeOutcome::Unsatisfiable;
        }
        return RangeOutcome::Partial { start: length.saturating_sub(suffix), end: length - 1 };
    }
    let Ok(start) = first.parse::<u64>() else { return RangeOutcome::Full };
    let end = if last.is_empty() {
        u64::MAX
    } else {
        match last.parse::<u64>() {
            Ok(end) if end >= start => end,
            _ => return RangeOutcome::Full,
        }
    };
    if start >= length {
        return RangeOutcome::Unsatisfiable;
    }
    RangeOutcome::Partial { start, end: end.min(length - 1) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_single_ranges() {
        assert_eq!(parse_range(None, 10), RangeOutcome::Full);
        assert_eq!(parse_range(Some("bytes=0-4"), 10), RangeOutcome::Partial { start: 0, end: 4 });
        assert_eq!(parse_range(Some("bytes=5-"), 10), RangeOutcome::Partial { start: 5, end: 9 });
        assert_eq!(parse_range(Some("bytes=5-100"), 10), RangeOutcome::Partial { start: 5, end: 9 });
        assert_eq!(parse_range(Some("bytes=-3"), 10), RangeOutcome::Partial { start: 7, end: 9 });
        assert_eq!(parse_range(Some("bytes=-30"), 10), RangeOutcome::Partial { start: 0, end: 9 });
    }

    #[test]
    fn unsatisfiable_and_ignored_forms() {
        assert_eq!(parse_range(Some("bytes=10-"), 10), RangeOutcome::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 10), RangeOutcome::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-0"), 0), RangeOutcome::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-1,4-5"), 10), RangeOutcome::Full);
        assert_eq!(parse_range(Some("bytes=5-2"), 10), RangeOutcome::Full);
        assert_eq!(parse_range(Some("items=0-1"), 10), RangeOutcome::Full);
        assert_eq!(parse_range(Some("bytes=x-1"), 10), RangeOutcome::Full);
    }
}
