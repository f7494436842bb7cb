//! Response heads.

use std::fmt::Write as _;

/// Reason phrase of the status codes tessera sends.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        206 => "Partial Content",
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
        503 => "Service Unavailable",
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
    /// `Content-Range` value (for 206 and 416).
    pub content_range: Option<String>,
    /// Whether the connection stays open; `false` adds `Connection: close`.
    pub keep_alive: bool,
    /// Further `(name, value)` headers.
    pub extra: &'a [(&'a str, &'a str)],
}

impl ResponseHead<'_> {
    /// Appends the head (status line, headers, blank line) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut text = String::with_capacity(160);
        let _ = write!(text, "HTTP/1.1 {} {}\r\n", self.status, reason_phrase(self.status));
        let _ = write!(text, "Content-Length: {}\r\nContent-Type: {}\r\n", self.content_length, self.content_type);
        if let Some(range) = &self.content_range {
            let _ = write!(text, "Content-Range: {range}\r\n");
        }
        for (name, value) in self.extra {
            let _ = write!(text, "{name}: {value}\r\n");
        }
        if !self.keep_alive {
            text.push_str("Connection: close\r\n");
        }
        text.push_str("\r\n");
        out.extend_from_slice(text.as_bytes());
    }
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
}
