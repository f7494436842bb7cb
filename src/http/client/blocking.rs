//! One request on a blocking stream, driven through the sans-I/O [`Connection`]: the
//! transport (a `TcpStream`, a rustls `StreamOwned`...) is passed in, never owned (rustls style).

use std::io::{ErrorKind, Read, Write};
use std::time::Instant;

use crate::http::client::{ClientLimits, Connection, Event, ReceivedHead, RequestSpec, ResponseError, SendError};

/// Bytes read from the stream at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// A whole response.
#[derive(Debug, Clone)]
pub struct Response {
    pub head: ReceivedHead,
    pub body: Vec<u8>,
}

/// Why a blocking exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The stream failed (the caller knows whether that means TLS, a timeout or a reset).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Send(#[from] SendError),
    #[error(transparent)]
    Response(#[from] ResponseError),
}

/// Sends `spec` on `stream` and reads its whole response (body within `limits.body_bytes_max`);
/// a read past `deadline` fails as `TimedOut`. The stream's own timeouts bound each read.
pub fn exchange<S: Read + Write + ?Sized>(
    stream: &mut S,
    spec: &RequestSpec,
    limits: ClientLimits,
    deadline: Option<Instant>,
) -> Result<Response, ExchangeError> {
    let mut connection = Connection::new(limits);
    connection.send_request((), spec)?;
    stream.write_all(connection.transmit())?;
    let sent = connection.transmit().len();
    connection.transmitted(sent);
    stream.flush()?;
    let mut head = None;
    let mut body = Vec::new();
    let mut scratch = vec![0u8; READ_CHUNK_BYTES];
    // Bounded: each pass reads bytes or ends; the stream's timeouts and the deadline cap the reads.
    loop {
        while let Some(event) = connection.poll_event() {
            match event {
                Event::Head { head: received, .. } => head = Some(received),
                Event::BodyData { data, .. } => body.extend_from_slice(data),
                Event::Done { .. } => {
                    let head = head.ok_or(ResponseError::Truncated("before a response head"))?;
                    return Ok(Response { head, body });
                }
                Event::Closed { error, .. } => {
                    return Err(error.unwrap_or(ResponseError::Truncated("before the response was complete")).into());
                }
            }
        }
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            return Err(std::io::Error::from(ErrorKind::TimedOut).into());
        }
        match stream.read(&mut scratch) {
            Ok(0) => connection.handle_eof(),
            Ok(count) => connection.handle_input(&scratch[..count]),
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            // A peer that closes without TLS close_notify still delivered what it sent.
            Err(error) if error.kind() == ErrorKind::UnexpectedEof => connection.handle_eof(),
            Err(error) => return Err(error.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream that replays `input` and records what was written.
    struct Wire {
        input: std::io::Cursor<Vec<u8>>,
        written: Vec<u8>,
    }

    impl Read for Wire {
        fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
            self.input.read(buffer)
        }
    }

    impl Write for Wire {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.written.extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn wire(input: &[u8]) -> Wire {
        Wire { input: std::io::Cursor::new(input.to_vec()), written: Vec::new() }
    }

    #[test]
    fn sends_the_request_and_frames_one_response_within_the_body_limit() {
        let spec = RequestSpec::to_host("GET", "h:1".into(), "/x".into());
        let mut stream = wire(b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nabcNEXT");
        let response = exchange(&mut stream, &spec, ClientLimits::default(), None).unwrap();
        assert_eq!((response.head.status, &response.body[..]), (404, &b"abc"[..]));
        assert!(stream.written.starts_with(b"GET /x HTTP/1.1\r\nHost: h:1\r\n"));
        let limits = ClientLimits { body_bytes_max: 2, ..ClientLimits::default() };
        let error = exchange(&mut wire(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"), &spec, limits, None);
        assert!(matches!(error, Err(ExchangeError::Response(ResponseError::BodyTooLarge { limit: 2 }))));
        let short = exchange(
            &mut wire(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc"),
            &spec,
            ClientLimits::default(),
            None,
        );
        assert!(matches!(short, Err(ExchangeError::Response(ResponseError::Truncated(_)))));
    }

    #[test]
    fn reads_chunked_and_close_delimited_bodies() {
        let spec = RequestSpec::to_host("GET", "h".into(), "/".into());
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nT: 1\r\n\r\n";
        let response = exchange(&mut wire(chunked), &spec, ClientLimits::default(), None).unwrap();
        assert_eq!(response.body, b"abcde");
        let until_close = b"HTTP/1.0 200 OK\r\n\r\nall of it";
        let response = exchange(&mut wire(until_close), &spec, ClientLimits::default(), None).unwrap();
        assert_eq!(response.body, b"all of it");
    }
}
