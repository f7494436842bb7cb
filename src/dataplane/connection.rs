//! The connection state machine, shared by the io_uring and epoll drivers. It performs no I/O:
//! drivers feed it received bytes, end of stream, send progress and clock ticks; it tells them
//! what to send (slices of queued responses), whether to read, and when to close.
//!
//! Responses are queued in request order (pipelining), each with a sequence number, and shared
//! (`Rc`) with the io_uring send that points the kernel at them: that op keeps them alive until
//! the kernel is done (zero-copy: until the notification). A response whose bytes have all been
//! sent stays queued until the driver releases it.

use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::config::ServeConfig;
use crate::dataplane::response::Outgoing;
use crate::http::{parse_request, Parsed, Request, RequestLimits};
use crate::io::uring::send::Part;

/// Answers requests; the data plane's handler in production, a stub in tests.
pub trait Respond {
    /// The response to a parsed request. `keep_alive` says whether the connection stays open after it.
    fn respond(&mut self, request: &Request, keep_alive: bool) -> Outgoing;
    /// A response to a request the connection itself refused (malformed head, timeout); the
    /// connection closes after it.
    fn reject(&mut self, status: u16, message: &str) -> Outgoing;
}

/// Per-connection limits, from `[serve]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub request: RequestLimits,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub send_timeout: Duration,
    pub pipeline_depth_max: usize,
    pub input_bytes_max: usize,
}

impl ConnectionLimits {
    /// The limits configured in `[serve]`.
    pub fn from_config(config: &ServeConfig) -> ConnectionLimits {
        ConnectionLimits {
            request: RequestLimits {
                header_bytes_max: config.header_bytes_max,
                header_count_max: config.header_count_max,
                target_bytes_max: config.target_bytes_max,
            },
            header_timeout: Duration::from_millis(config.header_timeout_ms),
            idle_timeout: Duration::from_millis(config.idle_timeout_ms),
            send_timeout: Duration::from_millis(config.send_timeout_ms),
            pipeline_depth_max: config.pipeline_depth_max.max(1),
            input_bytes_max: config.input_bytes_max.max(config.header_bytes_max),
        }
    }
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed its side.
    PeerClosed,
    /// A response said `Connection: close` (HTTP/1.0, the client asked, or an error) and went out.
    Finished,
    /// A request head did not arrive in time (slowloris).
    HeaderTimeout,
    /// Keep-alive with nothing to do for too long.
    IdleTimeout,
    /// The peer accepted no response bytes for too long.
    SendTimeout,
    /// The server is shutting down.
    Shutdown,
    /// The socket failed.
    Error,
}

impl CloseReason {
    /// Label for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::Finished => "finished",
            CloseReason::HeaderTimeout => "header_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::SendTimeout => "send_timeout",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Error => "error",
        }
    }
}

#[derive(Debug)]
struct Queued {
    seq: u64,
    /// Shared with the send operations that point the kernel at it (io_uring).
    outgoing: Rc<Outgoing>,
}

/// What [`Connection::fill_send`] put into the slice list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SendPlan {
    /// Bytes in the slices.
    pub bytes: u64,
    /// Sequence number of the last response the slices touch: release through it once the
    /// kernel is done with the bytes.
    pub through_seq: u64,
}

/// One HTTP/1.1 server connection, without its socket.
#[derive(Debug)]
pub struct Connection {
    limits: ConnectionLimits,
    input: Vec<u8>,
    input_start: usize,
    queue: VecDeque<Queued>,
    /// Responses at the front of `queue` whose bytes have all been sent (awaiting release).
    sent_count: usize,
    /// Bytes already sent of `queue[sent_count]`.
    front_sent_bytes: u64,
    next_seq: u64,
    head_since: Option<Instant>,
    waiting_since: Instant,
    served_any: bool,
    last_send_progress: Instant,
    close_after_output: bool,
    close_now: bool,
    reason: Option<CloseReason>,
}

impl Connection {
    /// A connection accepted at `now`.
    pub fn new(limits: ConnectionLimits, now: Instant) -> Connection {
        Connection {
            limits,
            input: Vec::new(),
            input_start: 0,
            queue: VecDeque::new(),
            sent_count: 0,
            front_sent_bytes: 0,
            next_seq: 1,
            head_since: None,
            waiting_since: now,
            served_any: false,
            last_send_progress: now,
            close_after_output: false,
            close_now: false,
            reason: None,
        }
    }

    /// Feeds received bytes; queues responses for every complete request the pipeline limit allows.
    pub fn receive(&mut self, bytes: &[u8], now: Instant, responder: &mut impl Respond) {
        if self.close_after_output || self.close_now || bytes.is_empty() {
            return;
        }
        if self.pending_input().is_empty() {
            self.head_since = Some(now);
        }
        self.input.extend_from_slice(bytes);
        self.parse(now, responder);
    }

    /// The peer closed its sending side: answer what is complete, then close.
    pub fn receive_eof(&mut self, now: Instant, responder: &mut impl Respond) {
        self.parse(now, responder);
        self.finish_reading(CloseReason::PeerClosed);
    }

    /// Whether the driver should read more bytes now (false while the pipeline or the input
    /// buffer is full, or once no further request will be read).
    pub fn wants_read(&self) -> bool {
        !self.close_now
            && !self.close_after_output
            && self.queue.len() < self.limits.pipeline_depth_max
            && self.pending_input().len() < self.limits.input_bytes_max
    }

    /// Whether any queued byte is still unsent.
    pub fn has_unsent(&self) -> bool {
        self.sent_count < self.queue.len()
    }

    /// Responses queued and not yet released.
    pub fn queued_count(&self) -> usize {
        self.queue.len()
    }

    /// Appends up to `count_max` unsent slices, in order, to `slices`.
    pub fn fill_send<'a>(&'a self, slices: &mut Vec<&'a [u8]>, count_max: usize) -> SendPlan {
        let mut plan = SendPlan::default();
        let mut skip = self.front_sent_bytes;
        for queued in self.queue.iter().skip(self.sent_count) {
            for at in 0..queued.outgoing.segment_count() {
                if slices.len() >= count_max {
                    return plan;
                }
                let segment = queued.outgoing.segment(at);
                if skip >= segment.len() as u64 {
                    skip -= segment.len() as u64;
                    continue;
                }
                let rest = &segment[skip as usize..];
                skip = 0;
                slices.push(rest);
                plan.bytes += rest.len() as u64;
                plan.through_seq = queued.seq;
            }
        }
        plan
    }

    /// The unsent responses, up to `count_max` of them, as parts a send operation keeps alive
    /// until the kernel is done with their bytes.
    pub fn unsent_parts(&self, count_max: usize) -> Vec<Part> {
        let mut skip_bytes = self.front_sent_bytes;
        let mut parts = Vec::new();
        for queued in self.queue.iter().skip(self.sent_count).take(count_max) {
            parts.push(Part { owner: queued.outgoing.clone(), skip_bytes });
            skip_bytes = 0;
        }
        parts
    }

    /// Records that the kernel accepted `bytes` more bytes of the queued output.
    pub fn sent(&mut self, mut bytes: u64, now: Instant) {
        if bytes > 0 {
            self.last_send_progress = now;
        }
        while bytes > 0 {
            let Some(queued) = self.queue.get(self.sent_count) else {
                panic!("sent {bytes} bytes more than were queued");
            };
            let left = queued.outgoing.length() - self.front_sent_bytes;
            if bytes < left {
                self.front_sent_bytes += bytes;
                return;
            }
            bytes -= left;
            self.front_sent_bytes = 0;
            self.sent_count += 1;
        }
        if !self.has_unsent() {
            self.waiting_since = now;
        }
    }

    /// Drops fully sent responses with sequence numbers up to `seq` (their pins go with them),
    /// then reads further pipelined requests if the queue has room again.
    pub fn release_through(&mut self, seq: u64, now: Instant, responder: &mut impl Respond) {
        while self.sent_count > 0 && self.queue.front().is_some_and(|q| q.seq <= seq) {
            self.queue.pop_front();
            self.sent_count -= 1;
        }
        self.parse(now, responder);
    }

    /// Whether the driver should close the socket now (it must still keep every buffer of an
    /// in-flight operation until that operation completes).
    pub fn should_close(&self) -> bool {
        self.close_now || (self.close_after_output && !self.has_unsent())
    }

    /// Why the connection is closing, once it is.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.should_close().then_some(self.reason.unwrap_or(CloseReason::Finished))
    }

    /// Marks the socket as failed: close without sending more.
    pub fn fail(&mut self) {
        self.close(CloseReason::Error);
    }

    /// Applies the timeouts at `now`.
    pub fn on_tick(&mut self, now: Instant, responder: &mut impl Respond) {
        if self.close_now {
            return;
        }
        if self.has_unsent() {
            if now.saturating_duration_since(self.last_send_progress) >= self.limits.send_timeout {
                self.close(CloseReason::SendTimeout);
            }
            return;
        }
        if self.close_after_output {
            return;
        }
        if let Some(since) = self.head_since.filter(|_| !self.pending_input().is_empty()) {
            if now.saturating_duration_since(since) >= self.limits.header_timeout {
                let outgoing = responder.reject(408, "request head not received in time\n");
                self.push(outgoing, now);
                self.finish_reading(CloseReason::HeaderTimeout);
            }
            return;
        }
        if self.queue.is_empty() {
            let limit = if self.served_any { self.limits.idle_timeout } else { self.limits.header_timeout };
            let reason = if self.served_any { CloseReason::IdleTimeout } else { CloseReason::HeaderTimeout };
            if now.saturating_duration_since(self.waiting_since) >= limit {
                self.close(reason);
            }
        }
    }

    /// The server is stopping: finish the responses already queued, read no further requests.
    pub fn begin_shutdown(&mut self) {
        if self.queue.is_empty() {
            self.close(CloseReason::Shutdown);
        } else {
            self.finish_reading(CloseReason::Shutdown);
        }
    }

    fn close(&mut self, reason: CloseReason) {
        if !self.close_now {
            self.close_now = true;
            self.reason.get_or_insert(reason);
        }
    }

    fn finish_reading(&mut self, reason: CloseReason) {
        self.close_after_output = true;
        self.reason.get_or_insert(reason);
        self.input.clear();
        self.input_start = 0;
    }

    fn pending_input(&self) -> &[u8] {
        &self.input[self.input_start..]
    }

    fn push(&mut self, outgoing: Outgoing, now: Instant) {
        if !self.has_unsent() {
            // Sending starts now; the send timeout counts from here, not from the last send.
            self.last_send_progress = now;
        }
        self.queue.push_back(Queued { seq: self.next_seq, outgoing: Rc::new(outgoing) });
        self.next_seq += 1;
        self.served_any = true;
    }

    fn parse(&mut self, now: Instant, responder: &mut impl Respond) {
        while !self.close_after_output
            && !self.close_now
            && self.queue.len() < self.limits.pipeline_depth_max
            && !self.pending_input().is_empty()
        {
            match parse_request(self.pending_input(), &self.limits.request) {
                Ok(Parsed::Partial) => break,
                Ok(Parsed::Complete { request, head_length }) => {
                    self.input_start += head_length;
                    self.head_since = (!self.pending_input().is_empty()).then_some(now);
                    // Request bodies are not part of the data plane: answer, then close rather than
                    // read and discard them.
                    let keep_alive = request.keep_alive && request.content_length == 0;
                    let outgoing = responder.respond(&request, keep_alive);
                    self.push(outgoing, now);
                    if !keep_alive {
                        self.finish_reading(CloseReason::Finished);
                    }
                }
                Err(error) => {
                    let outgoing = responder.reject(error.status(), &format!("{error}\n"));
                    self.push(outgoing, now);
                    self.finish_reading(CloseReason::Finished);
                }
            }
        }
        if self.input_start > 0 && (self.input_start == self.input.len() || self.input_start >= 4096) {
            self.input.drain(..self.input_start);
            self.input_start = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::response::Body;
    use crate::http::ResponseHead;

    /// Answers 200 with the request path as the body.
    struct Echo;

    impl Respond for Echo {
        fn respond(&mut self, request: &Request, keep_alive: bool) -> Outgoing {
            let body: std::sync::Arc<[u8]> = request.path().as_bytes().into();
            let head = ResponseHead {
                status: 200,
                content_length: body.len() as u64,
                content_type: "text/plain",
                content_range: None,
                keep_alive,
                extra: &[],
            };
            Outgoing::with_head(&head, Body::Shared(body))
        }

        fn reject(&mut self, status: u16, message: &str) -> Outgoing {
            Outgoing::text(status, message, false, false)
        }
    }

    fn limits() -> ConnectionLimits {
        let config = ServeConfig {
            header_timeout_ms: 100,
            idle_timeout_ms: 1000,
            send_timeout_ms: 500,
            pipeline_depth_max: 4,
            ..ServeConfig::default()
        };
        ConnectionLimits::from_config(&config)
    }

    /// Sends everything queued (as a socket that takes all would) and releases it.
    fn drain(connection: &mut Connection, now: Instant) -> String {
        let mut slices = Vec::new();
        let plan = connection.fill_send(&mut slices, 1024);
        let bytes: Vec<u8> = slices.concat();
        assert_eq!(bytes.len() as u64, plan.bytes);
        connection.sent(plan.bytes, now);
        connection.release_through(plan.through_seq, now, &mut Echo);
        String::from_utf8(bytes).unwrap()
    }

    fn bodies(wire: &str) -> Vec<String> {
        wire.split("HTTP/1.1 ").skip(1).map(|r| r.split("\r\n\r\n").nth(1).unwrap_or("").to_string()).collect()
    }

    #[test]
    fn pipelined_requests_are_answered_in_order() {
        let now = Instant::now();
        let mut c = Connection::new(limits(), now);
        c.receive(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nGET /c HT", now, &mut Echo);
        assert_eq!(c.queued_count(), 2);
        c.receive(b"TP/1.1\r\n\r\n", now, &mut Echo);
        assert_eq!(bodies(&drain(&mut c, now)), ["/a", "/b", "/c"]);
        assert!(!c.should_close() && c.wants_read() && c.queued_count() == 0);
    }

    #[test]
    fn pipeline_limit_pauses_reading_until_responses_are_released() {
        let now = Instant::now();
        let mut c = Connection::new(limits(), now);
        let six: String = (0..6).map(|i| format!("GET /{i} HTTP/1.1\r\n\r\n")).collect();
        c.receive(six.as_bytes(), now, &mut Echo);
        assert_eq!(c.queued_count(), 4);
        assert!(!c.wants_read());
        // Sent but not released (a zero-copy send awaiting its notification) still counts.
        let mut slices = Vec::new();
        let plan = c.fill_send(&mut slices, 1024);
        drop(slices);
        c.sent(plan.bytes, now);
        assert!(!c.wants_read() && !c.has_unsent());
        c.release_through(plan.through_seq, now, &mut Echo);
        assert_eq!(c.queued_count(), 2);
        assert_eq!(bodies(&drain(&mut c, now)), ["/4", "/5"]);
    }

    #[test]
    fn partial_sends_resume_mid_slice() {
        let now = Instant::now();
        let mut c = Connection::new(limits(), now);
        c.receive(b"GET /abcdef HTTP/1.1\r\n\r\nGET /g HTTP/1.1\r\n\r\n", now, &mut Echo);
        let mut wire = Vec::new();
        loop {
            let mut slices = Vec::new();
            let plan = c.fill_send(&mut slices, 2);
            if plan.bytes == 0 {
                break;
            }
            // The socket takes 7 bytes at a time.
            let take = plan.bytes.min(7);
            wire.extend_from_slice(&slices.concat()[..take as usize]);
            c.sent(take, now);
            c.release_through(plan.through_seq, now, &mut Echo);
        }
        assert_eq!(bodies(&String::from_utf8(wire).unwrap()), ["/abcdef", "/g"]);
        assert_eq!(c.queued_count(), 0);
    }

    #[test]
    fn release_never_drops_unsent_or_later_responses() {
        let now = Instant::now();
        let mut c = Connection::new(limits(), now);
        c.receive(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n", now, &mut Echo);
        let mut slices = Vec::new();
        let first = c.fill_send(&mut slices, 2);
        assert_eq!(first.through_seq, 1);
        let first_length = slices.iter().map(|s| s.len() as u64).sum::<u64>();
        drop(slices);
        c.sent(first_length, now);
        c.release_through(u64::MAX, now, &mut Echo);
        assert_eq!(c.queued_count(), 1, "only the fully sent response goes");
        assert!(c.has_unsent());
    }

    #[test]
    fn connection_close_and_http10_close_after_the_response() {
        let now = Instant::now();
        let mut c = Connection::new(limits(), now);
        c.receive(b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\nGET /ignored HTTP/1.1\r\n\r\n", now, &mut Echo);
        assert!(!c.wants_read() && !c.should_close());
        let wire = drain(&mut c, now);
        assert!(wire.contains("Connection: close"));
        assert_eq!(bodies(&wire), ["/a"]);
        assert_eq!(c.close_reason(), Some(CloseReason::Finished));

        let mut c = Connection::new(limits(), now);
        c.receive(b"GET /old HTTP/1.0\r\n\r\n", now, &mut Echo);
        drain(&mut c, now);
        assert!(c.should_close());
        let mut c = Connection::new(limits(), now);
        c.receive(b"GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", now, &mut Echo);
        drain(&mut c, now);
        assert!(!c.should_close());
    }

    #[test]
    fn malformed_and_oversized_heads_are_answered_then_closed() {
        let now = Instant::now();
        let mut c = Connection::new(limits(), now);
        c.receive(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", now, &mut Echo);
        let wire = drain(&mut c, now);
        assert!(wire.starts_with("HTTP/1.1 400 "), "{wire}");
        assert!(c.should_close());

        let mut c = Connection::new(limits(), now);
        let big = format!("GET / HTTP/1.1\r\nX: {}", "y".repeat(9000));
        c.receive(big.as_bytes(), now, &mut Echo);
        assert!(drain(&mut c, now).starts_with("HTTP/1.1 431 "));
        assert!(c.should_close());
    }

    #[test]
    fn request_with_a_body_is_answered_then_closed() {
        let now = Instant::now();
        let mut c = Connection::new(limits(), now);
        c.receive(b"GET /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", now, &mut Echo);
        drain(&mut c, now);
        assert!(c.should_close());
    }

    #[test]
    fn slowloris_gets_408_and_close_after_the_header_timeout() {
        let start = Instant::now();
        let mut c = Connection::new(limits(), start);
        c.receive(b"GET / HTTP/1.1\r\nX-a: 1\r\n", start, &mut Echo);
        c.on_tick(start + Duration::from_millis(50), &mut Echo);
        c.receive(b"X-b: 2\r\n", start + Duration::from_millis(60), &mut Echo);
        assert!(!c.has_unsent());
        // Trickling bytes does not extend the deadline: it counts from the head's first byte.
        c.on_tick(start + Duration::from_millis(100), &mut Echo);
        let wire = drain(&mut c, start + Duration::from_millis(100));
        assert!(wire.starts_with("HTTP/1.1 408 "), "{wire}");
        assert_eq!(c.close_reason(), Some(CloseReason::HeaderTimeout));
    }

    #[test]
    fn silent_and_idle_connections_are_closed() {
        let start = Instant::now();
        let mut c = Connection::new(limits(), start);
        c.on_tick(start + Duration::from_millis(99), &mut Echo);
        assert!(!c.should_close());
        c.on_tick(start + Duration::from_millis(100), &mut Echo);
        assert_eq!(c.close_reason(), Some(CloseReason::HeaderTimeout));

        let mut c = Connection::new(limits(), start);
        c.receive(b"GET /a HTTP/1.1\r\n\r\n", start, &mut Echo);
        drain(&mut c, start + Duration::from_millis(10));
        // After a response the idle (keep-alive) timeout applies, not the header timeout.
        c.on_tick(start + Duration::from_millis(500), &mut Echo);
        assert!(!c.should_close());
        c.on_tick(start + Duration::from_millis(1010), &mut Echo);
        assert_eq!(c.close_reason(), Some(CloseReason::IdleTimeout));
    }

    #[test]
    fn a_peer_that_reads_nothing_hits_the_send_timeout() {
        let start = Instant::now();
        let mut c = Connection::new(limits(), start);
        c.on_tick(start + Duration::from_millis(90), &mut Echo);
        c.receive(b"GET /a HTTP/1.1\r\n\r\n", start + Duration::from_millis(90), &mut Echo);
        c.on_tick(start + Duration::from_millis(400), &mut Echo);
        assert!(!c.should_close(), "a pending response is not a header timeout");
        c.on_tick(start + Duration::from_millis(600), &mut Echo);
        assert_eq!(c.close_reason(), Some(CloseReason::SendTimeout));
    }

    #[test]
    fn eof_answers_complete_requests_then_closes() {
        let now = Instant::now();
        let mut c = Connection::new(limits(), now);
        c.input.extend_from_slice(b"GET /a HTTP/1.1\r\n\r\nGET /partial");
        c.receive_eof(now, &mut Echo);
        assert_eq!(bodies(&drain(&mut c, now)), ["/a"]);
        assert_eq!(c.close_reason(), Some(CloseReason::PeerClosed));
    }

    #[test]
    fn shutdown_finishes_queued_responses_and_closes_idle_ones() {
        let now = Instant::now();
        let mut idle = Connection::new(limits(), now);
        idle.begin_shutdown();
        assert_eq!(idle.close_reason(), Some(CloseReason::Shutdown));
        let mut busy = Connection::new(limits(), now);
        busy.receive(b"GET /a HTTP/1.1\r\n\r\n", now, &mut Echo);
        busy.begin_shutdown();
        assert!(!busy.should_close() && !busy.wants_read());
        assert_eq!(bodies(&drain(&mut busy, now)), ["/a"]);
        assert_eq!(busy.close_reason(), Some(CloseReason::Shutdown));
    }
}
