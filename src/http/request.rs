//! Request heads: bytes in, a [`Request`] or a typed error (with its HTTP status) out.

use std::mem::MaybeUninit;

use crate::http::conditional::Conditions;

/// Limits applied while parsing a request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Largest request head (request line + headers + blank line), in bytes.
    pub header_bytes_max: usize,
    /// Most header fields.
    pub header_count_max: usize,
    /// Longest request target, in bytes.
    pub target_bytes_max: usize,
    /// Keep `Referer` and `User-Agent` ([`Request::log_fields`]) for an access log.
    pub log_fields: bool,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits { header_bytes_max: 8192, header_count_max: 64, target_bytes_max: 2048, log_fields: false }
    }
}

/// Request methods tessera knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    /// Any other token; answered 405 or 501 by the caller.
    Other,
}

/// HTTP version of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// A parsed request head, with the headers tessera acts on pulled out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The request target exactly as sent (path and query).
    pub target: String,
    pub version: Version,
    /// Whether the connection stays open after the response (HTTP/1.1 default, `Connection:` header).
    pub keep_alive: bool,
    /// The `Range:` header, if any.
    pub range: Option<String>,
    /// Length of the request body (0 without `Content-Length`).
    pub content_length: u64,
    /// The `Authorization:` header, if any.
    pub authorization: Option<String>,
    /// The `Host:` header, if any.
    pub host: Option<String>,
    /// The `Content-Type:` header, if any.
    pub content_type: Option<String>,
    /// The conditional headers, if any was sent (boxed: most requests have none, and a
    /// `Request` stays small).
    pub conditional: Option<Box<ConditionalHeaders>>,
    /// `Referer` and `User-Agent`, kept only when [`RequestLimits::log_fields`] asks (boxed and
    /// absent otherwise: no allocation per request without an access log).
    pub log_fields: Option<Box<LogFields>>,
}

/// The request headers an access log records and nothing acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogFields {
    pub referer: Option<String>,
    pub user_agent: Option<String>,
}

/// The conditional request headers, as sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConditionalHeaders {
    /// `If-None-Match:` (several fields joined with `, `).
    pub if_none_match: Option<String>,
    pub if_modified_since: Option<String>,
    pub if_range: Option<String>,
}

impl Request {
    /// The path part of the target (before `?`).
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(&self.target, |(path, _)| path)
    }

    /// The value of query parameter `name`, if present (no percent-decoding: ids never need it).
    pub fn query(&self, name: &str) -> Option<&str> {
        let (_, query) = self.target.split_once('?')?;
        query.split('&').filter_map(|pair| pair.split_once('=')).find(|(key, _)| *key == name).map(|(_, value)| value)
    }

    /// The conditional headers, borrowed.
    pub fn conditions(&self) -> Conditions<'_> {
        let Some(headers) = &self.conditional else { return Conditions::default() };
        Conditions {
            if_none_match: headers.if_none_match.as_deref(),
            if_modified_since: headers.if_modified_since.as_deref(),
            if_range: headers.if_range.as_deref(),
        }
    }
}

/// Result of feeding bytes to the parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A whole head: the request and how many bytes it took.
    Complete { request: Request, head_length: usize },
    /// More bytes are needed.
    Partial,
}

/// Why a request head was rejected; each maps to one status code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("request target is longer than {0} bytes")]
    TargetTooLong(usize),
    #[error("request head is larger than {0} bytes or has too many header fields")]
    HeadTooLarge(usize),
    #[error("unsupported HTTP version")]
    Version,
    #[error("chunked request bodies are not supported; send Content-Length")]
    Chunked,
}

impl RequestError {
    /// The status code to answer with.
    pub fn status(&self) -> u16 {
        match self {
            RequestError::Malformed(_) => 400,
            RequestError::TargetTooLong(_) => 414,
            RequestError::HeadTooLarge(_) => 431,
            RequestError::Version => 505,
            RequestError::Chunked => 411,
        }
    }
}

/// Header slots kept on the stack while parsing; a larger `header_count_max` uses the heap.
const STACK_HEADERS_MAX: usize = 64;

/// Parses one request head from the start of `buffer`.
pub fn parse_request(buffer: &[u8], limits: &RequestLimits) -> Result<Parsed, RequestError> {
    let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS_MAX];
    let mut heap = Vec::new();
    let headers = if limits.header_count_max <= STACK_HEADERS_MAX {
        &mut stack[..limits.header_count_max]
    } else {
        heap.resize_with(limits.header_count_max, MaybeUninit::uninit);
        &mut heap[..]
    };
    let mut parsed = httparse::Request::new(&mut []);
    let status = match parsed.parse_with_uninit_headers(buffer, headers) {
        Ok(status) => status,
        Err(httparse::Error::TooManyHeaders) => return Err(RequestError::HeadTooLarge(limits.header_bytes_max)),
        Err(httparse::Error::Version) => return Err(RequestError::Version),
        Err(error) => {
            // A request line longer than the target limit is reported as 414 even if malformed later.
            return Err(target_too_long(buffer, limits).unwrap_or(RequestError::Malformed(error.to_string())));
        }
    };
    let head_length = match status {
        httparse::Status::Partial => {
            if let Some(error) = target_too_long(buffer, limits) {
                return Err(error);
            }
            if buffer.len() >= limits.header_bytes_max {
                return Err(RequestError::HeadTooLarge(limits.header_bytes_max));
            }
            return Ok(Parsed::Partial);
        }
        httparse::Status::Complete(length) => length,
    };
    if head_length > limits.header_bytes_max {
        return Err(RequestError::HeadTooLarge(limits.header_bytes_max));
    }
    let target = parsed.path.ok_or_else(|| RequestError::Malformed("no request target".into()))?;
    if target.len() > limits.target_bytes_max {
        return Err(RequestError::TargetTooLong(limits.target_bytes_max));
    }
    let version = match parsed.version {
        Some(0) => Version::Http10,
        Some(1) => Version::Http11,
        _ => return Err(RequestError::Version),
    };
    let method = match parsed.method.unwrap_or("") {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        _ => Method::Other,
    };
    let mut request = Request {
        method,
        target: target.to_string(),
        version,
        keep_alive: version == Version::Http11,
        range: None,
        content_length: 0,
        authorization: None,
        host: None,
        content_type: None,
        conditional: None,
        log_fields: None,
    };
    let mut seen_length = false;
    for header in parsed.headers.iter() {
        let value = std::str::from_utf8(header.value)
            .map_err(|_| RequestError::Malformed(format!("header {} is not UTF-8", header.name)))?
            .trim();
        let name = header.name;
        if name.eq_ignore_ascii_case("connection") {
            request.keep_alive = keep_alive_after(value, request.keep_alive);
        } else if name.eq_ignore_ascii_case("content-length") {
            let length: u64 = value
                .parse()
                .map_err(|_| RequestError::Malformed(format!("Content-Length {value:?} is not a number")))?;
            if seen_length && length != request.content_length {
                return Err(RequestError::Malformed("conflicting Content-Length headers".into()));
            }
            seen_length = true;
            request.content_length = length;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(RequestError::Chunked);
        } else if name.eq_ignore_ascii_case("range") {
            request.range = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("authorization") {
            request.authorization = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("host") {
            request.host = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("content-type") {
            request.content_type = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("if-none-match") {
            let headers = request.conditional.get_or_insert_default();
            // A list field may be split over several lines (RFC 9110 §5.3).
            match &mut headers.if_none_match {
                Some(list) => {
                    list.push_str(", ");
                    list.push_str(value);
                }
                None => headers.if_none_match = Some(value.to_string()),
            }
        } else if name.eq_ignore_ascii_case("if-modified-since") {
            request.conditional.get_or_insert_default().if_modified_since = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("if-range") {
            request.conditional.get_or_insert_default().if_range = Some(value.to_string());
        } else if limits.log_fields && name.eq_ignore_ascii_case("referer") {
            request.log_fields.get_or_insert_default().referer = Some(value.to_string());
        } else if limits.log_fields && name.eq_ignore_ascii_case("user-agent") {
            request.log_fields.get_or_insert_default().user_agent = Some(value.to_string());
        }
    }
    Ok(Parsed::Complete { request, head_length })
}

/// Whether the connection stays open given a `Connection:` header `value` and the version's default
/// (shared by request and response parsing).
pub fn keep_alive_after(value: &str, default: bool) -> bool {
    let mut keep_alive = default;
    for token in value.split(',').map(str::trim) {
        if token.eq_ignore_ascii_case("close") {
            keep_alive = false;
        } else if token.eq_ignore_ascii_case("keep-alive") {
            keep_alive = true;
        }
    }
    keep_alive
}

/// `Some(TargetTooLong)` when the request line's target already exceeds the limit.
fn target_too_long(buffer: &[u8], limits: &RequestLimits) -> Option<RequestError> {
    let line_end = buffer.iter().position(|&b| b == b'\n').unwrap_or(buffer.len());
    let line = &buffer[..line_end];
    let start = line.iter().position(|&b| b == b' ')? + 1;
    let length = line[start..].iter().position(|&b| b == b' ').unwrap_or(line.len() - start);
    (length > limits.target_bytes_max).then_some(RequestError::TargetTooLong(limits.target_bytes_max))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Parsed, RequestError> {
        parse_request(text.as_bytes(), &RequestLimits::default())
    }

    fn complete(text: &str) -> (Request, usize) {
        match parse(text).unwrap() {
            Parsed::Complete { request, head_length } => (request, head_length),
            Parsed::Partial => panic!("partial"),
        }
    }

    #[test]
    fn parses_get_with_range_and_keep_alive_defaults() {
        let text = "GET /v1/content/a/piece/3?x=1 HTTP/1.1\r\nHost: h\r\nRange: bytes=0-9\r\n\r\nNEXT";
        let (request, length) = complete(text);
        assert_eq!(length, text.len() - 4);
        assert_eq!(request.method, Method::Get);
        assert_eq!(request.path(), "/v1/content/a/piece/3");
        assert_eq!(request.query("x"), Some("1"));
        assert_eq!(request.range.as_deref(), Some("bytes=0-9"));
        assert!(request.keep_alive);
        let (request, _) = complete("GET / HTTP/1.0\r\n\r\n");
        assert!(!request.keep_alive);
        let (request, _) = complete("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(request.keep_alive);
        let (request, _) = complete("HEAD / HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(!request.keep_alive && request.method == Method::Head);
    }

    #[test]
    fn conditional_headers_are_kept_and_if_none_match_lines_joined() {
        let text = "GET / HTTP/1.1\r\nIf-None-Match: \"a\"\r\nif-none-match: W/\"b\"\r\n\
                    If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\nIf-Range: \"c\"\r\n\r\n";
        let (request, _) = complete(text);
        let conditions = request.conditions();
        assert_eq!(conditions.if_none_match, Some("\"a\", W/\"b\""));
        assert_eq!(conditions.if_modified_since, Some("Sun, 06 Nov 1994 08:49:37 GMT"));
        assert_eq!(conditions.if_range, Some("\"c\""));
    }

    #[test]
    fn partial_until_blank_line() {
        assert_eq!(parse("GET / HTTP/1.1\r\nHost: x\r\n").unwrap(), Parsed::Partial);
        assert_eq!(parse("GE").unwrap(), Parsed::Partial);
    }

    #[test]
    fn limits_give_414_and_431() {
        let long_target = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(3000));
        assert_eq!(parse(&long_target).unwrap_err().status(), 414);
        let partial_long = format!("GET /{}", "a".repeat(3000));
        assert_eq!(parse(&partial_long).unwrap_err().status(), 414);
        let big_head = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "b".repeat(9000));
        assert_eq!(parse(&big_head).unwrap_err().status(), 431);
        let unfinished_big_head = format!("GET / HTTP/1.1\r\nX: {}", "b".repeat(9000));
        assert_eq!(parse(&unfinished_big_head).unwrap_err().status(), 431);
        let many = format!("GET / HTTP/1.1\r\n{}\r\n", "A: b\r\n".repeat(100));
        assert_eq!(parse(&many).unwrap_err().status(), 431);
    }

    #[test]
    fn malformed_heads_give_400_and_bodies_need_length() {
        assert_eq!(parse("GET / HTTP/1.1\r\nBad Header\r\n\r\n").unwrap_err().status(), 400);
        assert_eq!(parse("\x01\x02 / HTTP/1.1\r\n\r\n").unwrap_err().status(), 400);
        assert_eq!(parse("POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n").unwrap_err().status(), 400);
        assert_eq!(parse("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap_err().status(), 411);
        let (request, _) = complete("POST /v1/announce HTTP/1.1\r\nContent-Length: 12\r\n\r\n");
        assert_eq!(request.content_length, 12);
    }
}
