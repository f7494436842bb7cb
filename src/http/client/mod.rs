//! The one HTTP/1.1 client connection of the project, sans-I/O (quinn-proto style): requests go
//! in with [`Connection::send_request`], bytes to write come out of [`Connection::transmit`],
//! received bytes go in with [`Connection::handle_input`] (or straight into the caller's buffer,
//! see [`Connection::body_direct_bytes`]), and what happened comes out of
//! [`Connection::poll_event`]. Keep-alive and pipelining; `Content-Length`, chunked (trailers
//! read and dropped) and close-delimited bodies; HEAD/1xx/204/304 bodiless; every buffer bounded
//! by [`ClientLimits`]. Each request carries a tag `T` the caller chooses.
//!
//! [`blocking`] drives it over a blocking stream; [`redirect`] has curl's `-L` rules.

pub mod blocking;
mod head;
pub mod redirect;

use std::collections::VecDeque;

pub use head::{ReceivedHead, RequestSpec};

/// Longest chunk-size line accepted (hex size plus extensions).
const CHUNK_LINE_BYTES_MAX: usize = 1024;

/// Limits of one client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// Largest response head (and trailer section), in bytes.
    pub head_bytes_max: usize,
    /// Most header fields in a head.
    pub header_count_max: usize,
    /// Largest response body, in bytes.
    pub body_bytes_max: u64,
    /// Most requests sent and not yet answered.
    pub pipeline_depth_max: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits { head_bytes_max: 16_384, header_count_max: 64, body_bytes_max: 64 << 20, pipeline_depth_max: 32 }
    }
}

/// Why a request cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("{limit} requests are already waiting for answers (pipeline_depth_max)")]
    PipelineFull { limit: usize },
    #[error("the connection is closing; open another")]
    Closing,
    #[error("request {name} {value:?} contains a control character or is malformed")]
    BadField { name: &'static str, value: String },
}

/// Why the bytes from a server are not an acceptable response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("malformed response: {reason}")]
    Malformed { reason: String },
    #[error("response head is larger than {limit} bytes (head_bytes_max)")]
    HeadTooLarge { limit: usize },
    #[error("response head has more than {limit} fields (header_count_max)")]
    TooManyHeaders { limit: usize },
    #[error("response body is larger than {limit} bytes (body_bytes_max)")]
    BodyTooLarge { limit: u64 },
    #[error("bad chunked body: {reason}")]
    BadChunk { reason: &'static str },
    #[error("the server sent a response nobody asked for")]
    Unsolicited,
    #[error("connection closed {0}")]
    Truncated(&'static str),
}

/// What happened on the connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a, T> {
    /// The head of the response to `tag`.
    Head { tag: &'a T, head: ReceivedHead },
    /// Body bytes of the response to `tag` (bytes received with `handle_body_direct` are not
    /// repeated here).
    BodyData { tag: &'a T, data: &'a [u8] },
    /// The response to `tag` is complete.
    Done { tag: T },
    /// The connection is over: closed as HTTP allows (`error` is `None`; unanswered requests
    /// were lost without blame) or broken. Nothing follows this event.
    Closed { unanswered: Vec<T>, error: Option<ResponseError> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recv {
    Head,
    Length { remaining: u64 },
    ChunkSize,
    ChunkData { remaining: u64 },
    ChunkEnd,
    Trailers { bytes: usize },
    UntilClose,
}

/// One step of the receiver, before borrows are handed out.
enum Step<T> {
    Again,
    Wait,
    Head(ReceivedHead),
    Body(std::ops::Range<usize>),
    Done(T),
    Closed,
}

struct InFlight<T> {
    tag: T,
    is_head: bool,
}

/// One client connection's HTTP state.
pub struct Connection<T> {
    limits: ClientLimits,
    out: Vec<u8>,
    in_flight: VecDeque<InFlight<T>>,
    input: Vec<u8>,
    input_at: usize,
    recv: Recv,
    body_bytes: u64,
    eof: bool,
    peer_closes: bool,
    sent_close: bool,
    ended: bool,
    keep_fields: bool,
}

impl<T> Connection<T> {
    /// A fresh connection under `limits`.
    pub fn new(limits: ClientLimits) -> Connection<T> {
        Connection {
            limits,
            out: Vec::new(),
            in_flight: VecDeque::new(),
            input: Vec::new(),
            input_at: 0,
            recv: Recv::Head,
            body_bytes: 0,
            eof: false,
            peer_closes: false,
            sent_close: false,
            ended: false,
            keep_fields: true,
        }
    }

    /// Whether response heads carry every header field in [`ReceivedHead::headers`] (the
    /// default); without them parsing a head allocates nothing (status, length, framing and
    /// the other parsed fields are still there).
    pub fn keep_header_fields(&mut self, keep: bool) {
        self.keep_fields = keep;
    }

    /// Queues `spec` for sending; its response will carry `tag`.
    pub fn send_request(&mut self, tag: T, spec: &RequestSpec) -> Result<(), SendError> {
        self.check_can_send()?;
        spec.write_head(&mut self.out)?;
        self.sent_close |= spec.close;
        self.in_flight.push_back(InFlight { tag, is_head: spec.is_head() });
        Ok(())
    }

    /// Records a request whose bytes the caller wrote to the transport itself (built once with
    /// [`RequestSpec::write_head`] and sent again and again, as a load generator does); its
    /// response will carry `tag`. `is_head`: the request was a HEAD (its response has no body).
    pub fn send_prepared(&mut self, tag: T, is_head: bool) -> Result<(), SendError> {
        self.check_can_send()?;
        self.in_flight.push_back(InFlight { tag, is_head });
        Ok(())
    }

    fn check_can_send(&self) -> Result<(), SendError> {
        if self.can_send() {
            return Ok(());
        }
        Err(if self.in_flight.len() >= self.limits.pipeline_depth_max {
            SendError::PipelineFull { limit: self.limits.pipeline_depth_max }
        } else {
            SendError::Closing
        })
    }

    /// Whether another request may be sent on this connection now.
    pub fn can_send(&self) -> bool {
        !self.ended && !self.peer_closes && !self.sent_close && self.in_flight.len() < self.limits.pipeline_depth_max
    }

    /// Requests sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Gives up on the connection (timeout, transport error): the unanswered requests' tags.
    pub fn abandon(&mut self) -> Vec<T> {
        self.ended = true;
        self.in_flight.drain(..).map(|f| f.tag).collect()
    }

    /// Bytes waiting to be written to the transport.
    pub fn transmit(&self) -> &[u8] {
        &self.out
    }

    /// The transport took the first `count` bytes of [`Connection::transmit`].
    pub fn transmitted(&mut self, count: usize) {
        assert!(count <= self.out.len(), "transmitted more than was pending");
        self.out.drain(..count);
    }

    /// Bytes received from the server.
    pub fn handle_input(&mut self, bytes: &[u8]) {
        if self.input_at > 0 {
            self.input.drain(..self.input_at);
            self.input_at = 0;
        }
        self.input.extend_from_slice(bytes);
    }

    /// How many bytes the caller may receive straight into its own body buffer (no copy through
    /// the connection): nonzero only inside a body of known length with nothing buffered.
    pub fn body_direct_bytes(&self) -> u64 {
        if self.input_at < self.input.len() || self.in_flight.is_empty() {
            return 0;
        }
        match self.recv {
            Recv::Length { remaining } | Recv::ChunkData { remaining } => remaining,
            _ => 0,
        }
    }

    /// The caller received `count` body bytes itself (at most [`Connection::body_direct_bytes`]).
    pub fn handle_body_direct(&mut self, count: u64) {
        assert!(count <= self.body_direct_bytes(), "direct body bytes beyond what the framing allows");
        match &mut self.recv {
            Recv::Length { remaining } | Recv::ChunkData { remaining } => *remaining -= count,
            _ => unreachable!("checked by body_direct_bytes"),
        }
    }

    /// The server closed its side.
    pub fn handle_eof(&mut self) {
        self.eof = true;
    }

    /// The next thing that happened, or `None` until more input (or EOF) arrives.
    pub fn poll_event(&mut self) -> Option<Event<'_, T>> {
        if self.ended {
            return None;
        }
        // Bounded: every `Again` consumes input or moves the receiver to a later state.
        let step = loop {
            match self.step() {
                Ok(Step::Again) => continue,
                other => break other,
            }
        };
        let closed = |this: &mut Self, error| {
            this.ended = true;
            Some(Event::Closed { unanswered: this.in_flight.drain(..).map(|f| f.tag).collect(), error })
        };
        match step {
            Ok(Step::Again | Step::Wait) => None,
            Ok(Step::Head(head)) => Some(Event::Head { tag: &self.in_flight[0].tag, head }),
            Ok(Step::Body(span)) => Some(Event::BodyData { tag: &self.in_flight[0].tag, data: &self.input[span] }),
            Ok(Step::Done(tag)) => Some(Event::Done { tag }),
            Ok(Step::Closed) => closed(self, None),
            Err(error) => closed(self, Some(error)),
        }
    }

    fn step(&mut self) -> Result<Step<T>, ResponseError> {
        let available = self.input.len() - self.input_at;
        match self.recv {
            Recv::Head => self.step_head(),
            Recv::Length { remaining: 0 } => Ok(self.finish()),
            Recv::ChunkData { remaining: 0 } => {
                self.recv = Recv::ChunkEnd;
                Ok(Step::Again)
            }
            Recv::Length { remaining } | Recv::ChunkData { remaining } => {
                if available == 0 {
                    return self.wait("in the middle of a body");
                }
                let count = (available as u64).min(remaining);
                self.recv = match self.recv {
                    Recv::Length { .. } => Recv::Length { remaining: remaining - count },
                    _ => Recv::ChunkData { remaining: remaining - count },
                };
                Ok(Step::Body(self.take(count as usize)))
            }
            Recv::ChunkSize => self.step_chunk_size(),
            Recv::ChunkEnd => {
                if available < 2 {
                    return self.wait("in a chunked body");
                }
                if &self.input[self.input_at..self.input_at + 2] != b"\r\n" {
                    return Err(ResponseError::BadChunk { reason: "chunk data not followed by CRLF" });
                }
                self.input_at += 2;
                self.recv = Recv::ChunkSize;
                Ok(Step::Again)
            }
            Recv::Trailers { bytes } => self.step_trailer(bytes),
            Recv::UntilClose if available > 0 => {
                self.body_bytes += available as u64;
                if self.body_bytes > self.limits.body_bytes_max {
                    return Err(ResponseError::BodyTooLarge { limit: self.limits.body_bytes_max });
                }
                Ok(Step::Body(self.take(available)))
            }
            Recv::UntilClose if self.eof => Ok(self.finish()),
            Recv::UntilClose => Ok(Step::Wait),
        }
    }

    fn step_head(&mut self) -> Result<Step<T>, ResponseError> {
        if self.peer_closes {
            // The server said it closes after the last response: what was pipelined behind it
            // is lost without blame, and anything it still sends is not ours.
            return Ok(Step::Closed);
        }
        let available = &self.input[self.input_at..];
        if available.is_empty() {
            return match self.eof {
                true if self.in_flight.is_empty() => Ok(Step::Closed),
                true => Err(ResponseError::Truncated("before a response head")),
                false => Ok(Step::Wait),
            };
        }
        let Some(front) = self.in_flight.front() else { return Err(ResponseError::Unsolicited) };
        let is_head = front.is_head;
        let Some((head, consumed)) = head::parse_head(available, &self.limits, self.keep_fields)? else {
            return self.wait("in a response head");
        };
        self.input_at += consumed;
        if (100..200).contains(&head.status) {
            // Interim responses (100 Continue, 103 Early Hints) precede the real one.
            return Ok(Step::Again);
        }
        self.peer_closes = !head.keep_alive;
        self.body_bytes = 0;
        self.recv = if is_head || head.status == 204 || head.status == 304 {
            Recv::Length { remaining: 0 }
        } else if head.chunked {
            Recv::ChunkSize
        } else if let Some(length) = head.content_length {
            if length > self.limits.body_bytes_max {
                return Err(ResponseError::BodyTooLarge { limit: self.limits.body_bytes_max });
            }
            Recv::Length { remaining: length }
        } else {
            self.peer_closes = true;
            Recv::UntilClose
        };
        Ok(Step::Head(head))
    }

    fn step_chunk_size(&mut self) -> Result<Step<T>, ResponseError> {
        let Some(line) = self.line()? else { return self.wait("in a chunked body") };
        let text = std::str::from_utf8(&self.input[line.clone()]).unwrap_or("");
        let size_text = text.split(';').next().unwrap_or_default().trim();
        let bad = ResponseError::BadChunk { reason: "chunk size is not hexadecimal" };
        if size_text.is_empty() || size_text.len() > 16 {
            return Err(bad);
        }
        let size = u64::from_str_radix(size_text, 16).map_err(|_| bad)?;
        self.body_bytes = self.body_bytes.saturating_add(size);
        if self.body_bytes > self.limits.body_bytes_max {
            return Err(ResponseError::BodyTooLarge { limit: self.limits.body_bytes_max });
        }
        self.recv = if size == 0 { Recv::Trailers { bytes: 0 } } else { Recv::ChunkData { remaining: size } };
        Ok(Step::Again)
    }

    fn step_trailer(&mut self, bytes: usize) -> Result<Step<T>, ResponseError> {
        let Some(line) = self.line()? else { return self.wait("in a chunked trailer") };
        if line.is_empty() {
            return Ok(self.finish());
        }
        let bytes = bytes + line.len();
        if bytes > self.limits.head_bytes_max {
            return Err(ResponseError::HeadTooLarge { limit: self.limits.head_bytes_max });
        }
        self.recv = Recv::Trailers { bytes };
        Ok(Step::Again)
    }

    /// The next CRLF-terminated line (without its CRLF), consumed; `None` until complete.
    fn line(&mut self) -> Result<Option<std::ops::Range<usize>>, ResponseError> {
        let available = &self.input[self.input_at..];
        let Some(end) = available.windows(2).position(|pair| pair == b"\r\n") else {
            if available.len() > CHUNK_LINE_BYTES_MAX {
                return Err(ResponseError::BadChunk { reason: "chunk line too long" });
            }
            return Ok(None);
        };
        if end > CHUNK_LINE_BYTES_MAX {
            return Err(ResponseError::BadChunk { reason: "chunk line too long" });
        }
        let start = self.input_at;
        self.input_at += end + 2;
        Ok(Some(start..start + end))
    }

    fn take(&mut self, count: usize) -> std::ops::Range<usize> {
        let start = self.input_at;
        self.input_at += count;
        start..start + count
    }

    fn wait(&self, where_: &'static str) -> Result<Step<T>, ResponseError> {
        if self.eof {
            return Err(ResponseError::Truncated(where_));
        }
        Ok(Step::Wait)
    }

    fn finish(&mut self) -> Step<T> {
        self.recv = Recv::Head;
        let done = self.in_flight.pop_front().expect("a response in progress has a request");
        Step::Done(done.tag)
    }
}

/// Feeds arbitrary bytes to a connection with `requests` GETs in flight, split at `split`, and
/// drains every event: the fuzzing entry point (it must never panic or loop).
pub fn fuzz_responses(bytes: &[u8], split: usize, requests: usize) -> usize {
    let mut connection = Connection::new(ClientLimits { body_bytes_max: 1 << 20, ..ClientLimits::default() });
    let spec = RequestSpec::to_host("GET", "h".into(), "/".into());
    for tag in 0..requests.min(32) {
        let _ = connection.send_request(tag, &spec);
    }
    let split = split.min(bytes.len());
    let mut events = 0;
    for part in [&bytes[..split], &bytes[split..]] {
        connection.handle_input(part);
        while connection.poll_event().is_some() {
            events += 1;
        }
    }
    connection.handle_eof();
    while connection.poll_event().is_some() {
        events += 1;
    }
    events
}

#[cfg(test)]
mod tests;
