//! Conditional requests (RFC 9110 §13): `If-None-Match`, `If-Modified-Since` and `If-Range`
//! evaluated against a representation's validators. Pure functions: headers in, a decision out.

use std::time::{SystemTime, UNIX_EPOCH};

/// A representation's validators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validators<'a> {
    /// The strong entity tag, quotes included (`"…"`).
    pub etag: &'a str,
    /// `Last-Modified`, in whole seconds since the Unix epoch.
    pub last_modified_s: u64,
}

/// The conditional headers of a request (GET or HEAD: the data plane has no other method).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Conditions<'a> {
    pub if_none_match: Option<&'a str>,
    pub if_modified_since: Option<&'a str>,
    pub if_range: Option<&'a str>,
}

impl Conditions<'_> {
    /// Whether the client already holds this representation, so the answer is 304 Not Modified.
    ///
    /// `If-None-Match` uses weak comparison and `*` matches any representation; when it is
    /// present, `If-Modified-Since` is ignored (RFC 9110 §13.2.2). An unreadable date is ignored.
    pub fn not_modified(&self, validators: &Validators<'_>) -> bool {
        if let Some(tags) = self.if_none_match {
            return tags.trim() == "*" || entity_tags(tags).any(|tag| tag.opaque == opaque(validators.etag));
        }
        match self.if_modified_since.and_then(parse_date_s) {
            Some(since_s) => validators.last_modified_s <= since_s,
            None => false,
        }
    }

    /// Whether a `Range` may be honoured: true without `If-Range`, or when its validator matches
    /// (an entity tag by strong comparison, a date exactly); false means "send the whole content".
    pub fn range_allowed(&self, validators: &Validators<'_>) -> bool {
        let Some(value) = self.if_range.map(str::trim) else { return true };
        if value.starts_with('"') || value.starts_with("W/") {
            let mut tags = entity_tags(value);
            return match (tags.next(), tags.next()) {
                (Some(tag), None) => !tag.weak && tag.opaque == opaque(validators.etag),
                _ => false,
            };
        }
        parse_date_s(value) == Some(validators.last_modified_s)
    }
}

/// One `entity-tag` of a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EntityTag<'a> {
    weak: bool,
    /// Between the quotes.
    opaque: &'a str,
}

/// The opaque part of our own (always well-formed, strong) tag.
fn opaque(etag: &str) -> &str {
    etag.trim_matches('"')
}

/// The entity tags of a comma-separated list; stops at the first malformed element.
fn entity_tags(list: &str) -> impl Iterator<Item = EntityTag<'_>> {
    let mut rest = list;
    std::iter::from_fn(move || {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        let (weak, tagged) = match rest.strip_prefix("W/") {
            Some(after) => (true, after),
            None => (false, rest),
        };
        let quoted = tagged.strip_prefix('"')?;
        // etagc excludes DQUOTE, so the next quote closes the tag (commas may sit inside).
        let close = quoted.find('"')?;
        rest = &quoted[close + 1..];
        Some(EntityTag { weak, opaque: &quoted[..close] })
    })
}

/// A strong entity tag made of a SHA-256 digest: `"` + 64 lowercase hex digits + `"`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DigestTag([u8; 66]);

impl DigestTag {
    /// The tag of `digest`.
    pub fn new(digest: &[u8; 32]) -> DigestTag {
        let mut tag = [b'"'; 66];
        hex::encode_to_slice(digest, &mut tag[1..65]).expect("64 hex digits fit");
        DigestTag(tag)
    }

    /// The tag as sent in `ETag:`, quotes included.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("ASCII tag")
    }
}

impl std::fmt::Debug for DigestTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An HTTP-date (IMF-fixdate, or the obsolete RFC 850 and asctime forms) in Unix seconds.
pub fn parse_date_s(text: &str) -> Option<u64> {
    let time = httpdate::parse_http_date(text.trim()).ok()?;
    time.duration_since(UNIX_EPOCH).ok().map(|since| since.as_secs())
}

/// `time` as an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`, always 29 bytes).
pub fn format_date(time: SystemTime) -> [u8; 29] {
    use std::io::Write;
    let mut out = [0u8; 29];
    write!(&mut out[..], "{}", httpdate::HttpDate::from(time)).expect("an IMF-fixdate is 29 bytes");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const TAG: &str = "\"abc123\"";
    /// Sun, 06 Nov 1994 08:49:37 GMT
    const MODIFIED_S: u64 = 784_111_777;
    const VALIDATORS: Validators<'static> = Validators { etag: TAG, last_modified_s: MODIFIED_S };

    fn none_match(value: &str) -> bool {
        Conditions { if_none_match: Some(value), ..Conditions::default() }.not_modified(&VALIDATORS)
    }

    fn modified_since(value: &str) -> bool {
        Conditions { if_modified_since: Some(value), ..Conditions::default() }.not_modified(&VALIDATORS)
    }

    fn if_range(value: &str) -> bool {
        Conditions { if_range: Some(value), ..Conditions::default() }.range_allowed(&VALIDATORS)
    }

    #[test]
    fn dates_format_and_parse_in_every_form() {
        let time = UNIX_EPOCH + Duration::from_secs(MODIFIED_S);
        assert_eq!(&format_date(time), b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(parse_date_s("Sun, 06 Nov 1994 08:49:37 GMT"), Some(MODIFIED_S));
        assert_eq!(parse_date_s("Sunday, 06-Nov-94 08:49:37 GMT"), Some(MODIFIED_S));
        assert_eq!(parse_date_s("Sun Nov  6 08:49:37 1994"), Some(MODIFIED_S));
        assert_eq!(parse_date_s("yesterday"), None);
    }

    #[test]
    fn digest_tags_are_quoted_lowercase_hex() {
        let tag = DigestTag::new(&[0xab; 32]);
        assert_eq!(tag.as_str(), format!("\"{}\"", "ab".repeat(32)));
        let validators = Validators { etag: tag.as_str(), last_modified_s: 0 };
        let conditions = Conditions { if_none_match: Some(tag.as_str()), ..Conditions::default() };
        assert!(conditions.not_modified(&validators));
    }

    #[test]
    fn if_none_match_uses_weak_comparison_and_star() {
        assert!(none_match(TAG));
        assert!(none_match("W/\"abc123\""));
        assert!(none_match("\"other\", \"abc123\""));
        assert!(none_match("\"a,b\",W/\"abc123\""), "commas inside a tag do not split it");
        assert!(none_match("*"));
        assert!(!none_match("\"other\""));
        assert!(!none_match("abc123"), "an unquoted tag is malformed");
        assert!(!none_match(""));
    }

    #[test]
    fn if_modified_since_compares_seconds_and_yields_to_if_none_match() {
        assert!(modified_since("Sun, 06 Nov 1994 08:49:37 GMT"));
        assert!(modified_since("Mon, 07 Nov 1994 00:00:00 GMT"));
        assert!(!modified_since("Sun, 06 Nov 1994 08:49:36 GMT"));
        assert!(!modified_since("not a date"));
        let both = Conditions {
            if_none_match: Some("\"other\""),
            if_modified_since: Some("Mon, 07 Nov 1994 00:00:00 GMT"),
            ..Conditions::default()
        };
        assert!(!both.not_modified(&VALIDATORS), "If-None-Match decides when present");
        assert!(!Conditions::default().not_modified(&VALIDATORS));
    }

    #[test]
    fn if_range_needs_a_strong_match_or_the_exact_date() {
        assert!(Conditions::default().range_allowed(&VALIDATORS));
        assert!(if_range(TAG));
        assert!(!if_range("W/\"abc123\""), "weak tags never match in If-Range");
        assert!(!if_range("\"other\""));
        assert!(!if_range("\"abc123\", \"x\""), "one validator, not a list");
        assert!(if_range("Sun, 06 Nov 1994 08:49:37 GMT"));
        assert!(!if_range("Mon, 07 Nov 1994 00:00:00 GMT"), "a later date is not the same version");
        assert!(!if_range("garbage"));
    }
}
