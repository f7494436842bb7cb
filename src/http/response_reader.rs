//! Client-side HTTP/1.1 response framing, sans-I/O: bytes in, heads and body spans out; plus
//! [`read_response`], the one blocking loop around it that the small blocking clients share.
//!
//! Handles what piece servers and HTTP origins send: `Content-Length` bodies, bodies delimited by
//! connection close, bodiless responses (HEAD, 1xx, 204, 304), and pipelined responses back to
//! back in one buffer. Chunked bodies are refused (no piece server or static origin needs them).

/// Limits applied while reading responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseLimits {
    /// Largest response head, in bytes.
    pub head_bytes_max: usize,
    /// Most header fields.
    pub header_count_max: usize,
}

impl Default for ResponseLimits {
    fn default() -> Self {
        ResponseLimits { head_bytes_max: 16_384, header_count_max: 64 }
    }
}

/// A parsed response head, with the fields the download client acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// `Content-Length`, if sent.
    pub content_length: Option<u64>,
    /// `Content-Range: bytes START-END/TOTAL` as (start, end, total); total `None` for `*`.
    pub content_range: Option<(u64, u64, Option<u64>)>,
    /// Whether the server keeps the connection open after this response.
    pub keep_alive: bool,
}

/// Why bytes from a server are not an acceptable response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("malformed response head: {0}")]
    Malformed(String),
    #[error("response head is larger than {0} bytes")]
    HeadTooLarge(usize),
    #[error("chunked responses are not supported")]
    Chunked,
    #[error("connection closed {0}")]
    Truncated(&'static str),
}

/// One step of reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Feed more bytes.
    NeedMore,
    /// A head was read; it took `consumed` bytes.
    Head { head: ResponseHead, consumed: usize },
    /// The first `length` bytes of the input are body bytes.
    Body { length: usize },
    /// The current response is complete; the next bytes belong to the next response.
    Complete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Body { remaining: u64 },
    UntilClose,
    Closed,
}

/// Reads a sequence of responses on one connection.
#[derive(Debug, Clone)]
pub struct ResponseReader {
    limits: ResponseLimits,
    state: State,
}

impl ResponseReader {
    /// A reader waiting for the first response head.
    pub fn new(limits: ResponseLimits) -> ResponseReader {
        ResponseReader { limits, state: State::Head }
    }

    /// Takes the next step on `input` (the unconsumed bytes received so far).
    ///
    /// `bodiless` says the response being read answers a HEAD request.
    pub fn step(&mut self, input: &[u8], bodiless: bool) -> Result<Step, ResponseError> {
        match self.state {
            State::Closed => Err(ResponseError::Truncated("after a response that ended the connection")),
            State::Head => {
                let Some((head, consumed)) = parse_head(input, &self.limits)? else { return Ok(Step::NeedMore) };
                let no_body = bodiless || head.status < 200 || head.status == 204 || head.status == 304;
                self.state = match (no_body, head.content_length) {
                    (true, _) => State::Body { remaining: 0 },
                    (false, Some(length)) => State::Body { remaining: length },
                    (false, None) => State::UntilClose,
                };
                Ok(Step::Head { head, consumed })
            }
            State::Body { remaining: 0 } => {
                self.state = State::Head;
                Ok(Step::Complete)
            }
            State::Body { remaining } => {
                if input.is_empty() {
                    return Ok(Step::NeedMore);
                }
                let length = (input.len() as u64).min(remaining);
                self.state = State::Body { remaining: remaining - length };
                Ok(Step::Body { length: length as usize })
            }
            State::UntilClose => {
                if input.is_empty() {
                    return Ok(Step::NeedMore);
                }
                Ok(Step::Body { length: input.len() })
            }
        }
    }

    /// The peer closed the connection: completes a close-delimited body, or says what was cut.
    pub fn eof(&mut self) -> Result<Step, ResponseError> {
        match self.state {
            State::UntilClose => {
                self.state = State::Closed;
                Ok(Step::Complete)
            }
            State::Body { remaining: 0 } => {
                self.state = State::Closed;
                Ok(Step::Complete)
            }
            State::Body { .. } => Err(ResponseError::Truncated("in the middle of a body")),
            State::Head | State::Closed => Err(ResponseError::Truncated("before a response head")),
        }
    }

    /// Body bytes still expected of a `Content-Length` body being read, so that a driver can
    /// receive them straight into their destination and pass them to [`ResponseReader::step`].
    pub fn body_remaining(&self) -> Option<u64> {
        match self.state {
            State::Body { remaining } => Some(remaining),
            _ => None,
        }
    }

    /// Whether the reader is between responses (nothing half-read).
    pub fn is_idle(&self) -> bool {
        self.state == State::Head
    }
}

fn parse_head(input: &[u8], limits: &ResponseLimits) -> Result<Option<(ResponseHead, usize)>, ResponseError> {
    let mut headers = vec![httparse::EMPTY_HEADER; limits.header_count_max];
    let mut response = httparse::Response::new(&mut headers);
    let consumed = match response.parse(input) {
        Ok(httparse::Status::Complete(consumed)) => consumed,
        Ok(httparse::Status::Partial) => {
            if input.len() >= limits.head_bytes_max {
                return Err(ResponseError::HeadTooLarge(limits.head_bytes_max));
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(ResponseError::HeadTooLarge(limits.head_bytes_max)),
        Err(error) => return Err(ResponseError::Malformed(error.to_string())),
    };
    if consumed > limits.head_bytes_max {
        return Err(ResponseError::HeadTooLarge(limits.head_bytes_max));
    }
    let status = response.code.ok_or_else(|| ResponseError::Malformed("no status code".into()))?;
    let mut head =
        ResponseHead { status, content_length: None, content_range: None, keep_alive: response.version == Some(1) };
    for header in response.headers.iter() {
        let value = std::str::from_utf8(header.value)
            .map_err(|_| ResponseError::Malformed(format!("header {} is not UTF-8", header.name)))?
            .trim();
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            let length: u64 =
                value.parse().map_err(|_| ResponseError::Malformed(format!("Content-Length {value:?}")))?;
            if head.content_length.is_some_and(|seen| seen != length) {
                return Err(ResponseError::Malformed("conflicting Content-Length headers".into()));
            }
            head.content_length = Some(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if !value.eq_ignore_ascii_case("identity") {
                return Err(ResponseError::Chunked);
            }
        } else if name.eq_ignore_ascii_case("connection") {
            head.keep_alive = crate::http::request::keep_alive_after(value, head.keep_alive);
        } else if name.eq_ignore_ascii_case("content-range") {
            if value.strip_prefix("bytes").is_some_and(|rest| rest.trim_start().starts_with('*')) {
                // `bytes */N` (with 416) carries no range.
                continue;
            }
            head.content_range = Some(
                parse_content_range(value)
                    .ok_or_else(|| ResponseError::Malformed(format!("Content-Range {value:?}")))?,
            );
        }
    }
    Ok(Some((head, consumed)))
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

/// Why a blocking read of one response failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadResponseError {
    /// The stream failed (the caller knows whether that means TLS, a timeout or a reset).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Response(#[from] ResponseError),
    #[error("body larger than {0} bytes")]
    TooLarge(u64),
}

/// Reads one whole response (head and a body of at most `body_bytes_max`) from a blocking stream;
/// a read past `deadline` fails as `TimedOut`.
pub fn read_response<R: std::io::Read + ?Sized>(
    stream: &mut R,
    bodiless: bool,
    body_bytes_max: u64,
    deadline: Option<std::time::Instant>,
) -> Result<(ResponseHead, Vec<u8>), ReadResponseError> {
    let mut reader = ResponseReader::new(ResponseLimits::default());
    let mut input: Vec<u8> = Vec::new();
    let mut head: Option<ResponseHead> = None;
    let mut body = Vec::new();
    let mut scratch = vec![0u8; 64 * 1024];
    let mut eof = false;
    // Bounded: every pass consumes input, reads bytes, or ends; the socket timeouts and the
    // deadline cap the reads.
    loop {
        let step = if eof && input.is_empty() { reader.eof()? } else { reader.step(&input, bodiless)? };
        match step {
            Step::Head { head: parsed, consumed } => {
                if !bodiless && parsed.content_length.is_some_and(|length| length > body_bytes_max) {
                    return Err(ReadResponseError::TooLarge(body_bytes_max));
                }
                head = Some(parsed);
                input.drain(..consumed);
            }
            Step::Body { length } => {
                body.extend(input.drain(..length));
                if body.len() as u64 > body_bytes_max {
                    return Err(ReadResponseError::TooLarge(body_bytes_max));
                }
            }
            Step::Complete => {
                let head = head.ok_or(ResponseError::Truncated("before a response head"))?;
                return Ok((head, body));
            }
            Step::NeedMore => {
                if eof {
                    return Err(ResponseError::Truncated("before the response was complete").into());
                }
                if deadline.is_some_and(|deadline| std::time::Instant::now() >= deadline) {
                    return Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into());
                }
                match stream.read(&mut scratch) {
                    Ok(0) => eof = true,
                    Ok(count) => input.extend_from_slice(&scratch[..count]),
                    Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                    // A peer that closes without TLS close_notify still delivered what it sent.
                    Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => eof = true,
                    Err(error) => return Err(error.into()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the reader over `input` to the end, returning heads and bodies.
    fn read_all(input: &[u8], close: bool) -> Result<Vec<(u16, Vec<u8>)>, ResponseError> {
        let mut reader = ResponseReader::new(ResponseLimits::default());
        let mut at = 0;
        let mut out: Vec<(u16, Vec<u8>)> = Vec::new();
        for _ in 0..10_000 {
            match reader.step(&input[at..], false)? {
                Step::NeedMore if close => match reader.eof()? {
                    Step::Complete => return Ok(out),
                    other => panic!("eof gave {other:?}"),
                },
                Step::NeedMore => return Ok(out),
                Step::Head { head, consumed } => {
                    out.push((head.status, Vec::new()));
                    at += consumed;
                }
                Step::Body { length } => {
                    out.last_mut().unwrap().1.extend_from_slice(&input[at..at + length]);
                    at += length;
                }
                Step::Complete => {}
            }
        }
        panic!("reader did not finish");
    }

    #[test]
    fn reads_pipelined_responses_back_to_back() {
        let input = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\nHTTP/1.1 206 Partial Content\r\nContent-Range: bytes 2-3/10\r\nContent-Length: 2\r\n\r\nxy";
        let responses = read_all(input, false).unwrap();
        assert_eq!(responses, vec![(200, b"abc".to_vec()), (404, vec![]), (206, b"xy".to_vec())]);
    }

    #[test]
    fn partial_input_waits_and_byte_at_a_time_works() {
        let input = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nwxyz";
        let mut reader = ResponseReader::new(ResponseLimits::default());
        assert_eq!(reader.step(&input[..10], false).unwrap(), Step::NeedMore);
        let mut body = Vec::new();
        let mut buffer = Vec::new();
        let mut completed = false;
        for &byte in input.iter() {
            buffer.push(byte);
            for _ in 0..4 {
                match reader.step(&buffer, false).unwrap() {
                    Step::NeedMore => break,
                    Step::Head { head, consumed } => {
                        assert_eq!(head.content_length, Some(4));
                        buffer.drain(..consumed);
                    }
                    Step::Body { length } => body.extend(buffer.drain(..length)),
                    Step::Complete => completed = true,
                }
            }
        }
        assert!(completed && reader.is_idle());
        assert_eq!(body, b"wxyz");
    }

    #[test]
    fn body_remaining_counts_down_a_content_length_body() {
        let mut reader = ResponseReader::new(ResponseLimits::default());
        assert_eq!(reader.body_remaining(), None);
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
        assert!(matches!(reader.step(head, false).unwrap(), Step::Head { .. }));
        assert_eq!(reader.body_remaining(), Some(5));
        // Bytes received elsewhere (straight into a piece buffer) are passed in as they are.
        assert_eq!(reader.step(b"abc", false).unwrap(), Step::Body { length: 3 });
        assert_eq!(reader.body_remaining(), Some(2));
        assert_eq!(reader.step(b"de", false).unwrap(), Step::Body { length: 2 });
        assert_eq!(reader.step(b"", false).unwrap(), Step::Complete);
        assert_eq!(reader.body_remaining(), None);
        let mut until_close = ResponseReader::new(ResponseLimits::default());
        assert!(matches!(until_close.step(b"HTTP/1.0 200 OK\r\n\r\n", false).unwrap(), Step::Head { .. }));
        assert_eq!(until_close.body_remaining(), None);
    }

    #[test]
    fn close_delimited_body_ends_at_eof_and_short_body_is_truncation() {
        let input = b"HTTP/1.0 200 OK\r\n\r\nall of it";
        assert_eq!(read_all(input, true).unwrap(), vec![(200, b"all of it".to_vec())]);
        let short = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc";
        assert_eq!(read_all(short, true), Err(ResponseError::Truncated("in the middle of a body")));
        let mut reader = ResponseReader::new(ResponseLimits::default());
        assert_eq!(reader.eof(), Err(ResponseError::Truncated("before a response head")));
    }

    #[test]
    fn head_fields_and_keep_alive() {
        let mut reader = ResponseReader::new(ResponseLimits::default());
        let input = b"HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */100\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        let Step::Head { head, .. } = reader.step(input, false).unwrap() else { panic!() };
        assert_eq!(head.status, 416);
        assert!(!head.keep_alive);
        assert_eq!(head.content_range, None, "bytes */N has no range");
        let input = b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-9/*\r\nContent-Length: 10\r\n\r\n";
        let mut reader = ResponseReader::new(ResponseLimits::default());
        let Step::Head { head, .. } = reader.step(input, false).unwrap() else { panic!() };
        assert_eq!(head.content_range, Some((0, 9, None)));
        assert!(head.keep_alive);
    }

    #[test]
    fn head_requests_and_no_content_have_no_body() {
        let input = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        let mut reader = ResponseReader::new(ResponseLimits::default());
        let Step::Head { consumed, .. } = reader.step(input, true).unwrap() else { panic!() };
        assert_eq!(reader.step(&input[consumed..], false).unwrap(), Step::Complete);
        let Step::Head { head, .. } = reader.step(&input[consumed..], false).unwrap() else { panic!() };
        assert_eq!(head.status, 204);
        assert_eq!(reader.step(b"", false).unwrap(), Step::Complete);
    }

    #[test]
    fn rejects_chunked_oversized_and_malformed() {
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(read_all(chunked, false), Err(ResponseError::Chunked));
        let limits = ResponseLimits { head_bytes_max: 64, header_count_max: 8 };
        let big = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(100));
        assert_eq!(ResponseReader::new(limits).step(big.as_bytes(), false), Err(ResponseError::HeadTooLarge(64)));
        assert!(matches!(read_all(b"HTTX/1.1 200 OK\r\n\r\n", false), Err(ResponseError::Malformed(_))));
        let conflicting = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert!(matches!(read_all(conflicting, false), Err(ResponseError::Malformed(_))));
        let bad_range = b"HTTP/1.1 206 OK\r\nContent-Range: bytes 9-2/10\r\nContent-Length: 0\r\n\r\n";
        assert!(matches!(read_all(bad_range, false), Err(ResponseError::Malformed(_))));
    }

    #[test]
    fn blocking_read_frames_one_response_and_enforces_the_body_limit() {
        let wire = b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nabcNEXT".to_vec();
        let (head, body) = read_response(&mut &wire[..], false, 10, None).unwrap();
        assert_eq!((head.status, &body[..]), (404, &b"abc"[..]));
        assert!(matches!(read_response(&mut &wire[..], false, 2, None), Err(ReadResponseError::TooLarge(2))));
        let short = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc".to_vec();
        assert!(matches!(read_response(&mut &short[..], false, 10, None), Err(ReadResponseError::Response(_))));
        let bad = b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n".to_vec();
        assert!(matches!(read_response(&mut &bad[..], false, 10, None), Err(ReadResponseError::Response(_))));
    }
}
