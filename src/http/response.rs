//! Response heads, written straight into the caller's buffer (no `fmt` machinery: the data plane
//! writes one per request).

/// Reason phrase of the status codes tessera sends.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        206 => "Partial Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// A response head to serialise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead<'a> {
    pub status: u16,
    pub content_length: u64,
    pub content_type: &'a str,
    /// `Content-Range` (for 206 and 416).
    pub content_range: Option<ContentRange>,
    /// Whether the connection stays open; `false` adds `Connection: close`.
    pub keep_alive: bool,
    /// Further `(name, value)` headers.
    pub extra: &'a [(&'a str, &'a str)],
}

/// A `Content-Range` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentRange {
    /// `bytes {start}-{end}/{length}` (`end` inclusive).
    Bytes { start: u64, end: u64, length: u64 },
    /// `bytes */{length}` (with 416).
    Unsatisfiable { length: u64 },
}

impl ResponseHead<'_> {
    /// Appends the head (status line, headers, blank line) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let reason = reason_phrase(self.status);
        let extra_bytes: usize = self.extra.iter().map(|(name, value)| name.len() + value.len() + 4).sum();
        // Fixed text, reason, content type, the extra headers and room for every number.
        out.reserve(160 + reason.len() + self.content_type.len() + extra_bytes);
        out.extend_from_slice(b"HTTP/1.1 ");
        push_decimal(out, u64::from(self.status));
        out.push(b' ');
        out.extend_from_slice(reason.as_bytes());
        out.extend_from_slice(b"\r\n");
        // A 304 has no body, so no Content-Length or Content-Type describing one (RFC 9110 §15.4.5).
        if self.status != 304 {
            out.extend_from_slice(b"Content-Length: ");
            push_decimal(out, self.content_length);
            out.extend_from_slice(b"\r\nContent-Type: ");
            out.extend_from_slice(self.content_type.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if let Some(range) = &self.content_range {
            push_content_range(out, range);
        }
        for (name, value) in self.extra {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if !self.keep_alive {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// Appends a `Content-Range: …` header line (shared by response heads and multipart part heads).
pub(crate) fn push_content_range(out: &mut Vec<u8>, range: &ContentRange) {
    match *range {
        ContentRange::Bytes { start, end, length } => {
            out.extend_from_slice(b"Content-Range: bytes ");
            push_decimal(out, start);
            out.push(b'-');
            push_decimal(out, end);
            out.push(b'/');
            push_decimal(out, length);
        }
        ContentRange::Unsatisfiable { length } => {
            out.extend_from_slice(b"Content-Range: bytes */");
            push_decimal(out, length);
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends `value` in decimal.
fn push_decimal(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// A whole small response (head and text body), e.g. for errors.
pub fn text_response(status: u16, body: &str, keep_alive: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + body.len());
    ResponseHead {
        status,
        content_length: body.len() as u64,
        content_type: "text/plain; charset=utf-8",
        content_range: None,
        keep_alive,
        extra: &[],
    }
    .write_to(&mut out);
    out.extend_from_slice(body.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_parseable_head() {
        let bytes = text_response(404, "no such content\n", false);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(text.contains("Content-Length: 16\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\nno such content\n"));
    }

    #[test]
    fn writes_ranges_extra_headers_and_every_digit() {
        let extra = [("Accept-Ranges", "bytes")];
        let mut head = ResponseHead {
            status: 206,
            content_length: u64::MAX,
            content_type: "application/octet-stream",
            content_range: Some(ContentRange::Bytes { start: 0, end: 9, length: 18_446_744_073_709_551_615 }),
            keep_alive: true,
            extra: &extra,
        };
        let mut out = Vec::new();
        head.write_to(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 206 Partial Content\r\nContent-Length: 18446744073709551615\r\n\
             Content-Type: application/octet-stream\r\nContent-Range: bytes 0-9/18446744073709551615\r\n\
             Accept-Ranges: bytes\r\n\r\n"
        );
        head.status = 416;
        head.content_length = 22;
        head.content_range = Some(ContentRange::Unsatisfiable { length: 1000 });
        head.keep_alive = false;
        let mut out = Vec::new();
        head.write_to(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 416 Range Not Satisfiable\r\nContent-Length: 22\r\n"), "{text}");
        assert!(text.contains("Content-Range: bytes */1000\r\n") && text.ends_with("Connection: close\r\n\r\n"));
    }

    #[test]
    fn not_modified_has_no_length_or_type() {
        let extra = [("ETag", "\"t\"")];
        let head = ResponseHead {
            status: 304,
            content_length: 0,
            content_type: "text/plain",
            content_range: None,
            keep_alive: true,
            extra: &extra,
        };
        let mut out = Vec::new();
        head.write_to(&mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "HTTP/1.1 304 Not Modified\r\nETag: \"t\"\r\n\r\n");
    }
}
