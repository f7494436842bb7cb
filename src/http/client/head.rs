//! Response heads and request heads of the client side: the one request builder of the project
//! ([`RequestSpec::write_head`]) and the one response-head parser (httparse inside).

use crate::http::client::{ClientLimits, ResponseError, SendError};
use crate::http::url::HttpUrl;

/// One request to send: what the request builder writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestSpec {
    /// `GET`, `HEAD`, `POST`, `PUT` or `DELETE`.
    pub method: &'static str,
    /// Path and query, starting with `/`.
    pub target: String,
    /// The `Host:` header value.
    pub host: String,
    /// `Range: bytes=FIRST-LAST` (inclusive), if wanted.
    pub range: Option<(u64, u64)>,
    /// `Authorization: Bearer TOKEN`, if wanted.
    pub bearer: Option<String>,
    /// A body and its content type.
    pub body: Option<(&'static str, Vec<u8>)>,
    /// Send `Connection: close` (one request on this connection).
    pub close: bool,
    /// Further header fields, as given (a device's `Range:` a box passes on, for instance).
    pub fields: Vec<(&'static str, String)>,
}

impl RequestSpec {
    /// `method` of `url`'s target, keep-alive, no body.
    pub fn new(method: &'static str, url: &HttpUrl) -> RequestSpec {
        RequestSpec::to_host(method, url.authority(), url.target())
    }

    /// `method` of `target` on `host` (for peers addressed by socket address).
    pub fn to_host(method: &'static str, host: String, target: String) -> RequestSpec {
        RequestSpec { method, target, host, range: None, bearer: None, body: None, close: false, fields: Vec::new() }
    }

    /// Whether the response to this request has no body whatever its head says.
    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }

    /// Appends the request (head and body) to `out`; a field with a control character is refused
    /// (it would split the head: header injection).
    pub fn write_head(&self, out: &mut Vec<u8>) -> Result<(), SendError> {
        use std::fmt::Write as _;
        for (name, value) in [("target", &self.target), ("host", &self.host)] {
            check_field(name, value)?;
        }
        if let Some(token) = &self.bearer {
            check_field("authorization", token)?;
        }
        for (name, value) in &self.fields {
            check_field(name, value)?;
        }
        if self.target.contains(' ') || !self.target.starts_with('/') {
            return Err(SendError::BadField { name: "target", value: self.target.clone() });
        }
        let mut head = String::with_capacity(160);
        let _ = write!(head, "{} {} HTTP/1.1\r\nHost: {}\r\n", self.method, self.target, self.host);
        let _ = write!(head, "User-Agent: tessera/{}\r\n", env!("CARGO_PKG_VERSION"));
        if let Some((first, last)) = self.range {
            let _ = write!(head, "Range: bytes={first}-{last}\r\n");
        }
        if let Some(token) = &self.bearer {
            let _ = write!(head, "Authorization: Bearer {token}\r\n");
        }
        for (name, value) in &self.fields {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        match &self.body {
            Some((content_type, body)) => {
                let _ = write!(head, "Content-Type: {content_type}\r\nContent-Length: {}\r\n", body.len());
            }
            None if matches!(self.method, "POST" | "PUT") => head.push_str("Content-Length: 0\r\n"),
            None => {}
        }
        if self.close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        out.extend_from_slice(head.as_bytes());
        if let Some((_, body)) = &self.body {
            out.extend_from_slice(body);
        }
        Ok(())
    }
}

fn check_field(name: &'static str, value: &str) -> Result<(), SendError> {
    if value.chars().any(char::is_control) {
        return Err(SendError::BadField { name, value: value.to_string() });
    }
    Ok(())
}

/// Header fields parsed without allocating (the default `header_count_max`).
const STACK_FIELDS: usize = 64;

/// A response head as received, with the fields clients act on parsed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedHead {
    pub status: u16,
    /// `Content-Length`, if sent.
    pub content_length: Option<u64>,
    /// `Content-Range: bytes START-END/TOTAL` as (start, end, total); total `None` for `*`.
    pub content_range: Option<(u64, u64, Option<u64>)>,
    /// Whether the server keeps the connection open after this response.
    pub keep_alive: bool,
    /// `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// `Location`, for redirects.
    pub location: Option<String>,
    /// Every header field, name and value (values not UTF-8 are refused).
    pub headers: Vec<(String, String)>,
}

/// Parses one response head at the start of `input`: `None` until it is complete.
/// With `keep_fields` false, `headers` stays empty: parsing allocates nothing (a load
/// generator's heads).
pub(crate) fn parse_head(
    input: &[u8],
    limits: &ClientLimits,
    keep_fields: bool,
) -> Result<Option<(ReceivedHead, usize)>, ResponseError> {
    // The usual field limit fits on the stack; a larger one is allocated.
    let mut on_stack = [httparse::EMPTY_HEADER; STACK_FIELDS];
    let mut on_heap = Vec::new();
    let headers: &mut [httparse::Header] = if limits.header_count_max <= STACK_FIELDS {
        &mut on_stack[..limits.header_count_max]
    } else {
        on_heap.resize(limits.header_count_max, httparse::EMPTY_HEADER);
        &mut on_heap
    };
    let mut response = httparse::Response::new(headers);
    let too_large = ResponseError::HeadTooLarge { limit: limits.head_bytes_max };
    let consumed = match response.parse(input) {
        Ok(httparse::Status::Complete(consumed)) if consumed > limits.head_bytes_max => return Err(too_large),
        Ok(httparse::Status::Complete(consumed)) => consumed,
        Ok(httparse::Status::Partial) if input.len() >= limits.head_bytes_max => return Err(too_large),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ResponseError::TooManyHeaders { limit: limits.header_count_max })
        }
        Err(source) => return Err(ResponseError::Malformed { reason: source.to_string() }),
    };
    let status = response.code.ok_or_else(|| ResponseError::Malformed { reason: "no status code".into() })?;
    let mut head = ReceivedHead {
        status,
        content_length: None,
        content_range: None,
        keep_alive: response.version == Some(1),
        chunked: false,
        location: None,
        headers: if keep_fields { Vec::with_capacity(response.headers.len()) } else { Vec::new() },
    };
    for header in response.headers.iter() {
        let value = std::str::from_utf8(header.value)
            .map_err(|_| ResponseError::Malformed { reason: format!("header {} is not UTF-8", header.name) })?
            .trim();
        apply_field(&mut head, header.name, value)?;
        if keep_fields {
            head.headers.push((header.name.to_string(), value.to_string()));
        }
    }
    if head.chunked {
        // RFC 9112 6.3: Transfer-Encoding overrides Content-Length.
        head.content_length = None;
    }
    Ok(Some((head, consumed)))
}

fn apply_field(head: &mut ReceivedHead, name: &str, value: &str) -> Result<(), ResponseError> {
    let malformed = |what: &str| ResponseError::Malformed { reason: format!("{what} {value:?}") };
    if name.eq_ignore_ascii_case("content-length") {
        let length: u64 = value.parse().map_err(|_| malformed("Content-Length"))?;
        if head.content_length.is_some_and(|seen| seen != length) {
            return Err(malformed("conflicting Content-Length"));
        }
        head.content_length = Some(length);
    } else if name.eq_ignore_ascii_case("transfer-encoding") {
        // Only chunked (last) or identity can be framed; gzip and friends are not asked for.
        let last = value.rsplit(',').next().unwrap_or_default().trim();
        if last.eq_ignore_ascii_case("chunked") {
            head.chunked = true;
        } else if !last.eq_ignore_ascii_case("identity") {
            return Err(malformed("Transfer-Encoding"));
        }
    } else if name.eq_ignore_ascii_case("connection") {
        head.keep_alive = crate::http::request::keep_alive_after(value, head.keep_alive);
    } else if name.eq_ignore_ascii_case("location") {
        head.location = Some(value.to_string());
    } else if name.eq_ignore_ascii_case("content-range") {
        // `bytes */N` (with 416) carries no range.
        if !value.strip_prefix("bytes").is_some_and(|rest| rest.trim_start().starts_with('*')) {
            head.content_range = Some(parse_content_range(value).ok_or_else(|| malformed("Content-Range"))?);
        }
    }
    Ok(())
}

/// Parses `bytes START-END/TOTAL` (TOTAL may be `*`).
fn parse_content_range(value: &str) -> Option<(u64, u64, Option<u64>)> {
    let spec = value.strip_prefix("bytes")?.trim_start();
    let (range, total) = spec.split_once('/')?;
    let (start, end) = range.trim().split_once('-')?;
    let (start, end): (u64, u64) = (start.trim().parse().ok()?, end.trim().parse().ok()?);
    if end < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        text => Some(text.parse().ok()?),
    };
    Some((start, end, total))
}
