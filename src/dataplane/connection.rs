//! The connection state machine, shared by the io_uring and epoll drivers. It performs no I/O:
//! drivers feed it received bytes, end of stream, send progress and clock ticks; it tells them
//! what to send (slices of queued responses), whether to read, and when to close.
//!
//! Responses are queued in request order (pipelining), each with a sequence number. A response
//! whose bytes have all been sent stays queued until the driver releases it, because the kernel
//! may still read its pages (io_uring `SendZc` until the notification arrives).
//!
//! A response need not be whole when its request is parsed (quinn style: `handle_*`-like inputs
//! in, `poll_*`-like outputs out). The responder may answer [`Reply::Pending`]: the response
//! keeps its place and nothing after it is sent until [`Connection::complete`] gives it. Or it
//! may answer with a streaming [`Outgoing`] whose later body parts come through
//! [`Connection::append`] (or [`Connection::abort`], after which the connection closes once what
//! was sent is out, since the declared length cannot be met). After any of these inputs the
//! driver drives the connection as after a receive ([`Connection::has_unsent`] says there are
//! bytes to send) and drains [`Connection::poll_event`]: a response the connection gives up on
//! (client gone, timeout, close) is reported [`ConnectionEvent::Released`] so the responder can
//! drop the claims behind it.
//!
//! A queued response is shared (`Rc`) with the io_uring send that points the kernel at it: that
//! op keeps it alive until the kernel is done (zero-copy: until the notification). So a response
//! is changed only while nothing else holds it (`Rc::get_mut`): parts appended to a stream while
//! a send holds it are staged and join it once the send is over; its sent parts are trimmed then.

use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::config::ServeConfig;
use crate::dataplane::response::{BodyPart, FileRange, Outgoing, Reply};
use crate::http::{parse_request, Parsed, Request, RequestLimits};
use crate::io::slots::SlotKey;
use crate::io::uring::send::Part;

/// Answers requests; the data plane's handler in production, a stub in tests.
pub trait Respond {
    /// The reply to a parsed request. `keep_alive` says whether the connection stays open after
    /// it; `token` names the response in later [`Connection::complete`], [`Connection::append`]
    /// and [`Connection::abort`] calls when the reply is pending or streaming.
    fn respond(&mut self, request: &Request, keep_alive: bool, token: ResponseToken) -> Reply;
    /// A response to a request the connection itself refused (malformed head, timeout); the
    /// connection (`connection`, the driver's slot) closes after it.
    fn reject(&mut self, status: u16, message: &str, connection: SlotKey) -> Outgoing;
    /// A response went out whole (its last byte handed to the kernel and released), `elapsed`
    /// after its request was parsed; for the request-duration histogram.
    fn answered(&mut self, _elapsed: Duration) {}
}

/// Names one response of one connection: the connection's slot and the response's sequence
/// number (a stale token of a closed connection misses the reused slot by its generation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResponseToken {
    pub connection: SlotKey,
    pub seq: u64,
}

impl std::fmt::Display for ResponseToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let SlotKey { index, generation } = self.connection;
        write!(f, "response {} of connection {index}.{generation}", self.seq)
    }
}

/// What the connection tells its responder, through [`Connection::poll_event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionEvent {
    /// The connection gave up on this pending or streaming response (the client went away, it
    /// timed out, the connection closed): nothing more is taken for it; release its claims.
    Released(ResponseToken),
    /// An append to this streaming response was refused as full; there is room again.
    Writable(ResponseToken),
}

/// Why a pending or streaming response's input was refused.
#[derive(Debug, thiserror::Error)]
pub enum ResponseError {
    #[error("{0} is not waiting for its response (it was completed, released, or never pending)")]
    NotWaiting(ResponseToken),
    #[error("{0} is pending: it has no head to append parts to; complete it first")]
    NotStreaming(ResponseToken),
    #[error("{token} already holds its most parts or bytes; wait for ConnectionEvent::Writable")]
    Full { token: ResponseToken, parts: Vec<BodyPart> },
    #[error("parts appended to {token} run past the length its head declares")]
    TooLong { token: ResponseToken, parts: Vec<BodyPart> },
}

/// Per-connection limits, from `[serve]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub request: RequestLimits,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub send_timeout: Duration,
    /// A pending response not completed in this time is a 504; a streaming one given nothing to
    /// send for this long ends the connection.
    pub pending_timeout: Duration,
    pub pipeline_depth_max: usize,
    pub input_bytes_max: usize,
    /// Body parts one streaming response holds (appended, not yet sent and released).
    pub stream_parts_max: usize,
    /// Bytes of those parts.
    pub stream_bytes_max: u64,
}

impl ConnectionLimits {
    /// The limits configured in `[serve]`.
    pub fn from_config(config: &ServeConfig) -> ConnectionLimits {
        ConnectionLimits {
            request: RequestLimits {
                header_bytes_max: config.header_bytes_max,
                header_count_max: config.header_count_max,
                target_bytes_max: config.target_bytes_max,
                log_fields: false,
            },
            header_timeout: Duration::from_millis(config.header_timeout_ms),
            idle_timeout: Duration::from_millis(config.idle_timeout_ms),
            send_timeout: Duration::from_millis(config.send_timeout_ms),
            pending_timeout: Duration::from_millis(config.pending_timeout_ms),
            pipeline_depth_max: config.pipeline_depth_max.max(1),
            input_bytes_max: config.input_bytes_max.max(config.header_bytes_max),
            stream_parts_max: config.stream_queued_parts_max.max(1),
            stream_bytes_max: config.stream_queued_bytes_max.max(1),
        }
    }
}

/// The idle connections to reclaim at the connection limit: up to `count_max` of those whose
/// [`Connection::idle_since`] is set, the longest idle first (nginx's reusable connections).
/// A connection with a request in progress or a response queued is never among them.
pub fn oldest_idle<'a>(connections: impl Iterator<Item = (SlotKey, &'a Connection)>, count_max: usize) -> Vec<SlotKey> {
    let mut idle: Vec<(Instant, SlotKey)> =
        connections.filter_map(|(key, connection)| Some((connection.idle_since()?, key))).collect();
    if idle.len() > count_max && count_max > 0 {
        idle.select_nth_unstable_by_key(count_max - 1, |&(since, _)| since);
    }
    idle.truncate(count_max);
    idle.sort_unstable_by_key(|&(since, key)| (since, key.index));
    idle.into_iter().map(|(_, key)| key).collect()
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
    /// A pending or streaming response got nothing to send for too long.
    PendingTimeout,
    /// A streaming response was aborted short of its declared length.
    Aborted,
    /// The server is shutting down.
    Shutdown,
    /// Idle at the connection limit: closed, oldest first, to make room for a new client.
    Reclaimed,
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
            CloseReason::PendingTimeout => "pending_timeout",
            CloseReason::Aborted => "aborted",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Reclaimed => "reclaimed",
            CloseReason::Error => "error",
        }
    }
}

#[derive(Debug)]
struct Queued {
    seq: u64,
    /// `None` while pending. Shared with the send operation that points the kernel at it.
    outgoing: Option<Rc<Outgoing>>,
    /// Parts appended while a send held the response: they join it when the send is over.
    staged: Vec<BodyPart>,
    /// Ended short (aborted or cut): what is present is all that will be sent.
    ended: bool,
    /// Since when the response has waited on its responder (pending since, or streaming with
    /// every present byte sent since).
    stalled_since: Instant,
    /// An append was refused as full: report [`ConnectionEvent::Writable`] once there is room.
    append_refused: bool,
    /// When its request was parsed (the response's duration runs from here).
    queued_at: Instant,
}

impl Queued {
    fn new(seq: u64, outgoing: Option<Outgoing>, now: Instant) -> Queued {
        Queued {
            seq,
            outgoing: outgoing.map(Rc::new),
            staged: Vec::new(),
            ended: false,
            stalled_since: now,
            append_refused: false,
            queued_at: now,
        }
    }

    fn length(&self) -> u64 {
        self.outgoing.as_deref().map_or(0, Outgoing::length)
    }

    /// Whether every byte of the response is present (not pending, not streaming).
    fn is_complete(&self) -> bool {
        self.outgoing.as_deref().is_some_and(|outgoing| self.ended || outgoing.is_complete())
    }

    /// Parts held, staged ones included, and their bytes.
    fn parts_held(&self) -> (usize, u64) {
        let (parts, bytes) = self.outgoing.as_deref().map_or((0, 0), Outgoing::parts_held);
        let staged_bytes: u64 = self.staged.iter().map(|part| part.bytes().len() as u64).sum();
        (parts + self.staged.len(), bytes + staged_bytes)
    }

    /// Moves staged parts into the response once no send holds it.
    fn absorb_staged(&mut self) {
        if self.staged.is_empty() || self.ended {
            return;
        }
        let Some(outgoing) = self.outgoing.as_mut().and_then(Rc::get_mut) else { return };
        let staged = std::mem::take(&mut self.staged);
        let accepted = outgoing.append(staged);
        assert!(accepted.is_ok(), "staged parts were checked against the declared length");
    }
}

/// What [`Connection::fill_send`] put into the slice list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SendPlan {
    /// Bytes in the slices.
    pub bytes: u64,
    /// Sequence number of the last response the slices touch: release through it once the
    /// kernel is done with the bytes.
    pub through_seq: u64,
    /// The slices stop before bytes that go by `sendfile` ([`Connection::front_file`] once these
    /// are sent): send them with `MSG_MORE`.
    pub file_follows: bool,
}

/// One HTTP/1.1 server connection, without its socket.
#[derive(Debug)]
pub struct Connection {
    limits: ConnectionLimits,
    /// The driver's slot for this connection: the first half of every [`ResponseToken`].
    key: SlotKey,
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
    /// Reported through `poll_event`; at most one per queued response between drains.
    events: VecDeque<ConnectionEvent>,
}

impl Connection {
    /// Replaces the limits (a reload): requests parsed and timeouts checked from now on use them.
    pub fn set_limits(&mut self, limits: ConnectionLimits) {
        self.limits = limits;
    }

    /// A connection accepted at `now`, living in the driver's slot `key`.
    pub fn new(limits: ConnectionLimits, key: SlotKey, now: Instant) -> Connection {
        Connection {
            limits,
            key,
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
            events: VecDeque::new(),
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

    /// The peer closed its sending side: answer what is complete, then close. Like nginx, a
    /// client that closes while waiting is taken as gone: responses still pending or streaming
    /// are given up (reported `Released`) rather than awaited.
    pub fn receive_eof(&mut self, now: Instant, responder: &mut impl Respond) {
        self.parse(now, responder);
        if let Some(index) = self.queue.iter().position(|q| !q.is_complete()).filter(|_| !self.close_now) {
            self.cut_at(index, true, now);
        }
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

    /// Whether any queued byte can be sent now (a pending response, and what follows it, waits).
    pub fn has_unsent(&self) -> bool {
        self.queue.get(self.sent_count).is_some_and(|q| q.length() > self.front_sent_bytes)
    }

    /// Responses queued and not yet released (pending ones included).
    pub fn queued_count(&self) -> usize {
        self.queue.len()
    }

    /// Appends up to `count_max` unsent slices, in order, to `slices`; they stop before the
    /// first bytes that go by `sendfile` (segments of at least `file_bytes_min` bytes in a store
    /// whose pages may go to sockets; `None`: none do).
    pub fn fill_send<'a>(
        &'a self,
        slices: &mut Vec<&'a [u8]>,
        count_max: usize,
        file_bytes_min: Option<u64>,
    ) -> SendPlan {
        let mut plan = SendPlan::default();
        let mut offset = self.front_sent_bytes;
        for queued in self.queue.iter().skip(self.sent_count) {
            let Some(outgoing) = &queued.outgoing else { break };
            for (slice, from_file) in outgoing.slices_marked_from(offset, file_bytes_min) {
                if from_file {
                    plan.file_follows = true;
                    return plan;
                }
                if slices.len() >= count_max {
                    return plan;
                }
                slices.push(slice);
                plan.bytes += slice.len() as u64;
                plan.through_seq = queued.seq;
            }
            offset = 0;
            if !outgoing.is_complete() {
                // Pipeline order: nothing after a response still streaming.
                break;
            }
        }
        plan
    }

    /// The next unsent bytes, when they go by `sendfile` (see [`Connection::fill_send`]): the
    /// rest of their segment. `None` when the next bytes are in memory, or nothing can be sent.
    pub fn front_file(&self, file_bytes_min: Option<u64>) -> Option<FileRange<'_>> {
        file_bytes_min?;
        let outgoing = self.queue.get(self.sent_count)?.outgoing.as_ref()?;
        outgoing.file_from(self.front_sent_bytes, file_bytes_min)
    }

    /// The unsent responses, up to `count_max` of them, as parts a send operation keeps alive
    /// until the kernel is done with their bytes.
    pub fn unsent_parts(&self, count_max: usize) -> Vec<Part> {
        let mut skip_bytes = self.front_sent_bytes;
        let mut parts = Vec::new();
        for queued in self.queue.iter().skip(self.sent_count).take(count_max) {
            let Some(outgoing) = &queued.outgoing else { break };
            parts.push(Part { owner: outgoing.clone(), skip_bytes: outgoing.segment_skip(skip_bytes) });
            skip_bytes = 0;
            if !queued.is_complete() {
                // Pipeline order: nothing after a response still streaming.
                break;
            }
        }
        parts
    }

    /// Records that the kernel accepted `bytes` more bytes of the queued output.
    pub fn sent(&mut self, mut bytes: u64, now: Instant) {
        self.absorb_front();
        if bytes > 0 {
            self.last_send_progress = now;
        }
        while bytes > 0 {
            let Some(queued) = self.queue.get(self.sent_count) else {
                panic!("sent {bytes} bytes more than were queued");
            };
            let left = queued.length() - self.front_sent_bytes;
            assert!(left > 0, "sent {bytes} bytes past what response {} has so far", queued.seq);
            if bytes < left {
                self.front_sent_bytes += bytes;
                return;
            }
            bytes -= left;
            self.front_sent_bytes += left;
            self.settle_front(now);
        }
        if !self.has_unsent() {
            self.waiting_since = now;
        }
    }

    /// Drops fully sent responses with sequence numbers up to `seq` (their pins go with them),
    /// and the sent parts of a streaming response among them, then reads further pipelined
    /// requests if the queue has room again.
    pub fn release_through(&mut self, seq: u64, now: Instant, responder: &mut impl Respond) {
        self.absorb_front();
        while self.sent_count > 0 && self.queue.front().is_some_and(|q| q.seq <= seq) {
            let released = self.queue.pop_front().expect("the front was just looked at");
            self.sent_count -= 1;
            responder.answered(now.saturating_duration_since(released.queued_at));
        }
        if self.sent_count == 0 {
            self.trim_front(seq);
        }
        if self.queue.is_empty() && self.queue.capacity() > 0 {
            // An idle connection keeps no queue either (a few dozen bytes per slot, per idle client).
            self.queue = VecDeque::new();
        }
        self.parse(now, responder);
    }

    /// Gives pending response `token` its response: complete, or streaming (its head and first
    /// parts now, the rest through [`Connection::append`]).
    pub fn complete(&mut self, token: ResponseToken, outgoing: Outgoing, now: Instant) -> Result<(), ResponseError> {
        let index = self.waiting_index(token)?;
        if self.queue[index].outgoing.is_some() {
            return Err(ResponseError::NotWaiting(token));
        }
        let was_unsent = self.has_unsent();
        let queued = &mut self.queue[index];
        queued.outgoing = Some(Rc::new(outgoing));
        queued.stalled_since = now;
        self.made_ready(was_unsent, now);
        Ok(())
    }

    /// Appends body parts to streaming response `token`; refused (parts handed back) past the
    /// per-response limits (the connection's, and the response's own held-bytes bound), or past
    /// the length its head declares.
    pub fn append(&mut self, token: ResponseToken, parts: Vec<BodyPart>, now: Instant) -> Result<(), ResponseError> {
        let index = self.waiting_index(token)?;
        let limits = self.limits;
        let queued = &mut self.queue[index];
        let Some(outgoing) = queued.outgoing.as_deref() else { return Err(ResponseError::NotStreaming(token)) };
        let (held_parts, held_bytes) = queued.parts_held();
        let bytes: u64 = parts.iter().map(|part| part.bytes().len() as u64).sum();
        let staged_bytes: u64 = queued.staged.iter().map(|part| part.bytes().len() as u64).sum();
        if outgoing.length() + staged_bytes + bytes > outgoing.length_declared() {
            return Err(ResponseError::TooLong { token, parts });
        }
        // A part larger than the byte bound is taken once nothing is held, or it never would be.
        let bytes_max = limits.stream_bytes_max.min(outgoing.held_bytes_max());
        let over_bytes = held_bytes > 0 && held_bytes + bytes > bytes_max;
        if held_parts + parts.len() > limits.stream_parts_max || over_bytes {
            queued.append_refused = true;
            return Err(ResponseError::Full { token, parts });
        }
        let was_unsent = self.has_unsent();
        let queued = &mut self.queue[index];
        queued.staged.extend(parts);
        queued.absorb_staged();
        queued.stalled_since = now;
        self.made_ready(was_unsent, now);
        Ok(())
    }

    /// Gives up streaming (or pending) response `token`: what of it was sent stays sent, nothing
    /// after it is sent, and the connection closes (its declared length cannot be met).
    pub fn abort(&mut self, token: ResponseToken, now: Instant) -> Result<(), ResponseError> {
        let index = self.waiting_index(token)?;
        self.cut_at(index, false, now);
        self.finish_reading(CloseReason::Aborted);
        Ok(())
    }

    /// The next thing the responder must hear of (drain after every input).
    pub fn poll_event(&mut self) -> Option<ConnectionEvent> {
        self.events.pop_front()
    }

    /// Whether the driver should close the socket now (it must still keep every buffer of an
    /// in-flight operation until that operation completes).
    pub fn should_close(&self) -> bool {
        self.close_now || (self.close_after_output && self.sent_count == self.queue.len())
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
        self.absorb_front();
        self.expire_waiting(now, responder);
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
                let outgoing = responder.reject(408, "request head not received in time\n", self.key);
                self.push(Reply::Ready(outgoing), now);
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

    /// Since when the connection has been idle: no request started, nothing queued, not closing
    /// (nginx's "reusable" state). `None` while it has work; only idle ones may be reclaimed.
    pub fn idle_since(&self) -> Option<Instant> {
        let idle =
            self.queue.is_empty() && self.pending_input().is_empty() && !self.close_now && !self.close_after_output;
        idle.then_some(self.waiting_since)
    }

    /// Closes an idle connection to make room at the connection limit (no response is lost:
    /// it has none, and its client's next request finds the socket closed, as after an idle timeout).
    pub fn reclaim(&mut self) {
        debug_assert!(self.idle_since().is_some(), "only idle connections are reclaimed");
        self.close(CloseReason::Reclaimed);
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
            let released: Vec<u64> = self.queue.iter().filter(|q| !q.is_complete()).map(|q| q.seq).collect();
            for seq in released {
                self.release(seq);
            }
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

    fn token(&self, seq: u64) -> ResponseToken {
        ResponseToken { connection: self.key, seq }
    }

    fn release(&mut self, seq: u64) {
        self.events.push_back(ConnectionEvent::Released(self.token(seq)));
    }

    /// Where response `token` is queued, if it is still waiting on the responder.
    fn waiting_index(&self, token: ResponseToken) -> Result<usize, ResponseError> {
        let front_seq = self.queue.front().map_or(0, |q| q.seq);
        let index = token.seq.checked_sub(front_seq).map(|at| at as usize);
        match index {
            Some(index)
                if token.connection == self.key
                    && !self.close_now
                    && self.queue.get(index).is_some_and(|q| q.seq == token.seq && !q.is_complete()) =>
            {
                Ok(index)
            }
            _ => Err(ResponseError::NotWaiting(token)),
        }
    }

    /// Parts staged on the streaming response at the send front join it once no send holds it.
    fn absorb_front(&mut self) {
        if let Some(queued) = self.queue.get_mut(self.sent_count) {
            queued.absorb_staged();
        }
    }

    /// New bytes became sendable: the send timeout counts from now if nothing was waiting to go.
    fn made_ready(&mut self, was_unsent: bool, now: Instant) {
        if !was_unsent && self.has_unsent() {
            self.last_send_progress = now;
        }
    }

    /// Moves past the front response once all its bytes are sent and it is complete; a streaming
    /// one with every present byte sent starts waiting on its responder.
    fn settle_front(&mut self, now: Instant) {
        let Some(queued) = self.queue.get_mut(self.sent_count) else { return };
        if self.front_sent_bytes < queued.length() {
            return;
        }
        if queued.is_complete() {
            self.sent_count += 1;
            self.front_sent_bytes = 0;
        } else if queued.outgoing.is_some() {
            queued.stalled_since = now;
        }
    }

    /// Drops the sent parts of the partly sent front response (released through `seq`) and
    /// reports it writable if an append was refused for want of the room this made.
    fn trim_front(&mut self, seq: u64) {
        let limits = self.limits;
        let Some(queued) = self.queue.front_mut().filter(|q| q.seq <= seq) else { return };
        queued.absorb_staged();
        // Trimmed only while no send holds the response; a later release trims what this skips.
        let Some(outgoing) = queued.outgoing.as_mut().and_then(Rc::get_mut) else { return };
        outgoing.trim_sent(self.front_sent_bytes);
        let bytes_max = limits.stream_bytes_max.min(outgoing.held_bytes_max());
        let (parts, bytes) = queued.parts_held();
        if queued.append_refused && parts < limits.stream_parts_max && bytes < bytes_max {
            queued.append_refused = false;
            let token = ResponseToken { connection: self.key, seq: queued.seq };
            self.events.push_back(ConnectionEvent::Writable(token));
        }
    }

    /// Ends the pipeline at `queue[index]` (not complete): what follows it was never handed to
    /// the kernel and goes; it goes too unless some of its bytes may be out already, in which case
    /// it ends with what it has. Given-up responses are reported released (`index` itself only
    /// if `report_cut`).
    fn cut_at(&mut self, index: usize, report_cut: bool, now: Instant) {
        assert!(!self.queue[index].is_complete(), "only a waiting response is cut");
        let dropped: Vec<u64> = self.queue.drain(index + 1..).filter(|q| !q.is_complete()).map(|q| q.seq).collect();
        for seq in dropped {
            self.release(seq);
        }
        if report_cut {
            self.release(self.queue[index].seq);
        }
        // Only if every response before it is complete can a send have reached its bytes.
        let reached = self.queue.range(self.sent_count..index).all(Queued::is_complete);
        let queued = &mut self.queue[index];
        if reached && queued.outgoing.is_some() {
            queued.ended = true;
            queued.staged.clear();
        } else {
            self.queue.pop_back();
        }
        self.settle_front(now);
    }

    /// The first response waiting on its responder for longer than the pending timeout becomes
    /// a 504 if nothing of it was sent, or ends the connection after what was; later responses go.
    fn expire_waiting(&mut self, now: Instant, responder: &mut impl Respond) {
        let timeout = self.limits.pending_timeout;
        // A streaming response waits on its responder only once all it has is sent (it is then
        // the send front); one queued behind others is waiting its turn, not its parts.
        let starving = !self.has_unsent() && self.queue.get(self.sent_count).is_some_and(|q| q.outgoing.is_some());
        let expired = self.queue.iter().enumerate().position(|(index, q)| {
            let waiting = q.outgoing.is_none() || (starving && index == self.sent_count);
            waiting && !q.is_complete() && now.saturating_duration_since(q.stalled_since) >= timeout
        });
        let Some(index) = expired else { return };
        if self.queue[index].outgoing.is_some() {
            self.cut_at(index, true, now);
        } else {
            let seq = self.queue[index].seq;
            let dropped: Vec<u64> = self.queue.drain(index + 1..).filter(|q| !q.is_complete()).map(|q| q.seq).collect();
            for later in dropped {
                self.release(later);
            }
            self.release(seq);
            let was_unsent = self.has_unsent();
            self.queue[index].outgoing =
                Some(Rc::new(responder.reject(504, "the response was not ready in time\n", self.key)));
            self.made_ready(was_unsent, now);
        }
        self.finish_reading(CloseReason::PendingTimeout);
    }

    fn push(&mut self, reply: Reply, now: Instant) {
        let was_unsent = self.has_unsent();
        let outgoing = match reply {
            Reply::Ready(outgoing) => Some(outgoing),
            Reply::Pending => None,
        };
        self.queue.push_back(Queued::new(self.next_seq, outgoing, now));
        self.next_seq += 1;
        self.served_any = true;
        // Sending starts now; the send timeout counts from here, not from the last send.
        self.made_ready(was_unsent, now);
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
                    let reply = responder.respond(&request, keep_alive, self.token(self.next_seq));
                    self.push(reply, now);
                    if !keep_alive {
                        self.finish_reading(CloseReason::Finished);
                    }
                }
                Err(error) => {
                    let outgoing = responder.reject(error.status(), &format!("{error}\n"), self.key);
                    self.push(Reply::Ready(outgoing), now);
                    self.finish_reading(CloseReason::Finished);
                }
            }
        }
        if self.input_start > 0 && self.input_start == self.input.len() {
            // Everything parsed: an idle connection keeps no input buffer.
            self.input = Vec::new();
            self.input_start = 0;
        } else if self.input_start >= 4096 {
            self.input.drain(..self.input_start);
            self.input_start = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::response::{Body, PieceSlice};
    use crate::http::ResponseHead;

    /// Answers 200 with the request path as the body.
    struct Echo;

    fn echo(request: &Request, keep_alive: bool) -> Outgoing {
        let body: std::sync::Arc<[u8]> = request.path().as_bytes().into();
        Outgoing::with_head(&text_head(body.len() as u64, keep_alive), Body::Shared(body))
    }

    fn text_head(content_length: u64, keep_alive: bool) -> ResponseHead<'static> {
        ResponseHead {
            status: 200,
            content_length,
            content_type: "text/plain",
            content_range: None,
            keep_alive,
            extra: &[],
        }
    }

    impl Respond for Echo {
        fn respond(&mut self, request: &Request, keep_alive: bool, _token: ResponseToken) -> Reply {
            Reply::Ready(echo(request, keep_alive))
        }

        fn reject(&mut self, status: u16, message: &str, _connection: SlotKey) -> Outgoing {
            Outgoing::text(status, message, false, false)
        }
    }

    const KEY: SlotKey = SlotKey { index: 3, generation: 7 };

    fn limits() -> ConnectionLimits {
        let config = ServeConfig {
            header_timeout_ms: 100,
            idle_timeout_ms: 1000,
            send_timeout_ms: 500,
            pending_timeout_ms: 300,
            stream_queued_parts_max: 3,
            pipeline_depth_max: 4,
            ..ServeConfig::default()
        };
        ConnectionLimits::from_config(&config)
    }

    /// Sends everything queued (as a socket that takes all would) and releases it.
    fn drain(connection: &mut Connection, now: Instant) -> String {
        let mut slices = Vec::new();
        let plan = connection.fill_send(&mut slices, 1024, None);
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
        let mut c = Connection::new(limits(), KEY, now);
        c.receive(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nGET /c HT", now, &mut Echo);
        assert_eq!(c.queued_count(), 2);
        c.receive(b"TP/1.1\r\n\r\n", now, &mut Echo);
        assert_eq!(bodies(&drain(&mut c, now)), ["/a", "/b", "/c"]);
        assert!(!c.should_close() && c.wants_read() && c.queued_count() == 0);
    }

    #[test]
    fn pipeline_limit_pauses_reading_until_responses_are_released() {
        let now = Instant::now();
        let mut c = Connection::new(limits(), KEY, now);
        let six: String = (0..6).map(|i| format!("GET /{i} HTTP/1.1\r\n\r\n")).collect();
        c.receive(six.as_bytes(), now, &mut Echo);
        assert_eq!(c.queued_count(), 4);
        assert!(!c.wants_read());
        // Sent but not released (a zero-copy send awaiting its notification) still counts.
        let mut slices = Vec::new();
        let plan = c.fill_send(&mut slices, 1024, None);
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
        let mut c = Connection::new(limits(), KEY, now);
        c.receive(b"GET /abcdef HTTP/1.1\r\n\r\nGET /g HTTP/1.1\r\n\r\n", now, &mut Echo);
        let mut wire = Vec::new();
        loop {
            let mut slices = Vec::new();
            let plan = c.fill_send(&mut slices, 2, None);
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
        let mut c = Connection::new(limits(), KEY, now);
        c.receive(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n", now, &mut Echo);
        let mut slices = Vec::new();
        let first = c.fill_send(&mut slices, 2, None);
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
        let mut c = Connection::new(limits(), KEY, now);
        c.receive(b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\nGET /ignored HTTP/1.1\r\n\r\n", now, &mut Echo);
        assert!(!c.wants_read() && !c.should_close());
        let wire = drain(&mut c, now);
        assert!(wire.contains("Connection: close"));
        assert_eq!(bodies(&wire), ["/a"]);
        assert_eq!(c.close_reason(), Some(CloseReason::Finished));

        let mut c = Connection::new(limits(), KEY, now);
        c.receive(b"GET /old HTTP/1.0\r\n\r\n", now, &mut Echo);
        drain(&mut c, now);
        assert!(c.should_close());
        let mut c = Connection::new(limits(), KEY, now);
        c.receive(b"GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", now, &mut Echo);
        drain(&mut c, now);
        assert!(!c.should_close());
    }

    #[test]
    fn malformed_and_oversized_heads_are_answered_then_closed() {
        let now = Instant::now();
        let mut c = Connection::new(limits(), KEY, now);
        c.receive(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", now, &mut Echo);
        let wire = drain(&mut c, now);
        assert!(wire.starts_with("HTTP/1.1 400 "), "{wire}");
        assert!(c.should_close());

        let mut c = Connection::new(limits(), KEY, now);
        let big = format!("GET / HTTP/1.1\r\nX: {}", "y".repeat(9000));
        c.receive(big.as_bytes(), now, &mut Echo);
        assert!(drain(&mut c, now).starts_with("HTTP/1.1 431 "));
        assert!(c.should_close());
    }

    #[test]
    fn request_with_a_body_is_answered_then_closed() {
        let now = Instant::now();
        let mut c = Connection::new(limits(), KEY, now);
        c.receive(b"GET /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", now, &mut Echo);
        drain(&mut c, now);
        assert!(c.should_close());
    }

    #[test]
    fn slowloris_gets_408_and_close_after_the_header_timeout() {
        let start = Instant::now();
        let mut c = Connection::new(limits(), KEY, start);
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
        let mut c = Connection::new(limits(), KEY, start);
        c.on_tick(start + Duration::from_millis(99), &mut Echo);
        assert!(!c.should_close());
        c.on_tick(start + Duration::from_millis(100), &mut Echo);
        assert_eq!(c.close_reason(), Some(CloseReason::HeaderTimeout));

        let mut c = Connection::new(limits(), KEY, start);
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
        let mut c = Connection::new(limits(), KEY, start);
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
        let mut c = Connection::new(limits(), KEY, now);
        c.input.extend_from_slice(b"GET /a HTTP/1.1\r\n\r\nGET /partial");
        c.receive_eof(now, &mut Echo);
        assert_eq!(bodies(&drain(&mut c, now)), ["/a"]);
        assert_eq!(c.close_reason(), Some(CloseReason::PeerClosed));
    }

    #[test]
    fn shutdown_finishes_queued_responses_and_closes_idle_ones() {
        let now = Instant::now();
        let mut idle = Connection::new(limits(), KEY, now);
        idle.begin_shutdown();
        assert_eq!(idle.close_reason(), Some(CloseReason::Shutdown));
        let mut busy = Connection::new(limits(), KEY, now);
        busy.receive(b"GET /a HTTP/1.1\r\n\r\n", now, &mut Echo);
        busy.begin_shutdown();
        assert!(!busy.should_close() && !busy.wants_read());
        assert_eq!(bodies(&drain(&mut busy, now)), ["/a"]);
        assert_eq!(busy.close_reason(), Some(CloseReason::Shutdown));
    }
    /// A store whose content `c` has pieces 0..4, piece `i` all letter `a + i`.
    struct Pieces {
        _dir: tempfile::TempDir,
        store: crate::store::Store,
        digests: Vec<crate::content::Digest>,
    }

    impl Pieces {
        fn new() -> Pieces {
            use crate::content::PieceSize;
            const PIECE: u32 = 64 * 1024;
            let dir = tempfile::tempdir().unwrap();
            let config = crate::config::StoreConfig {
                size_bytes_max: 4 * u64::from(PIECE),
                slab_size_bytes: 4 * u64::from(PIECE),
                ..crate::config::StoreConfig::default()
            };
            let store = crate::store::Store::open(dir.path(), &config).unwrap();
            let owned: Vec<Vec<u8>> = (0..4).map(|i| vec![b'a' + i; PIECE as usize]).collect();
            let pieces: Vec<crate::store::NewPiece<'_>> = (0..4)
                .map(|i| crate::store::NewPiece { bytes: &owned[i], digest: crate::hash::sha256(&owned[i]) })
                .collect();
            let digests = pieces.iter().map(|piece| piece.digest).collect();
            store.ingest(PieceSize::new(PIECE).unwrap(), &pieces).unwrap();
            Pieces { _dir: dir, store, digests }
        }

        /// The first `length` bytes of piece `index`, pinned.
        fn slice(&self, index: u64, length: u32) -> BodyPart {
            PieceSlice::new(self.store.get(&self.digests[index as usize]).unwrap(), 0, length).into()
        }
    }

    /// Echo, except that `/pending…` is pending, `/stream…` streams a 6-byte body of which
    /// "aaa" is present, and `/relay…` streams a 7-byte body of owned bytes, 2 held at most.
    /// Keeps the tokens it was given, in order.
    struct Stub {
        pieces: Pieces,
        tokens: Vec<ResponseToken>,
    }

    impl Stub {
        fn new() -> Stub {
            Stub { pieces: Pieces::new(), tokens: Vec::new() }
        }
    }

    impl Respond for Stub {
        fn respond(&mut self, request: &Request, keep_alive: bool, token: ResponseToken) -> Reply {
            self.tokens.push(token);
            if request.path().starts_with("/pending") {
                Reply::Pending
            } else if request.path().starts_with("/stream") {
                Reply::Ready(Outgoing::streaming(&text_head(6, keep_alive), vec![self.pieces.slice(0, 3)]))
            } else if request.path().starts_with("/relay") {
                Reply::Ready(Outgoing::streaming(&text_head(7, keep_alive), vec![]).with_held_bytes_max(2))
            } else {
                Reply::Ready(echo(request, keep_alive))
            }
        }

        fn reject(&mut self, status: u16, message: &str, _connection: SlotKey) -> Outgoing {
            Outgoing::text(status, message, false, false)
        }
    }

    fn text(body: &str) -> Outgoing {
        Outgoing::text(200, body, true, false)
    }

    fn events(connection: &mut Connection) -> Vec<ConnectionEvent> {
        std::iter::from_fn(|| connection.poll_event()).collect()
    }

    #[test]
    fn a_pending_response_holds_later_ones_until_it_completes() {
        let now = Instant::now();
        let (mut stub, mut c) = (Stub::new(), Connection::new(limits(), KEY, now));
        c.receive(b"GET /a HTTP/1.1\r\n\r\nGET /pending HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\n", now, &mut stub);
        assert_eq!(c.queued_count(), 3);
        assert_eq!(bodies(&drain(&mut c, now)), ["/a"]);
        assert!(!c.has_unsent() && !c.should_close() && c.wants_read());
        assert_eq!(drain(&mut c, now), "", "/c waits behind the pending response");
        let token = stub.tokens[1];
        assert_eq!(token, ResponseToken { connection: KEY, seq: 2 });
        let stranger = ResponseToken { connection: SlotKey { index: 3, generation: 8 }, ..token };
        assert!(matches!(c.complete(stranger, text("no"), now), Err(ResponseError::NotWaiting(_))));
        c.complete(token, text("done"), now).unwrap();
        assert!(c.has_unsent());
        assert_eq!(bodies(&drain(&mut c, now)), ["done", "/c"]);
        assert!(matches!(c.complete(token, text("again"), now), Err(ResponseError::NotWaiting(_))));
        assert_eq!((c.queued_count(), events(&mut c)), (0, vec![]));
    }

    /// Echo that keeps the durations it is told of.
    #[derive(Default)]
    struct Timed(Vec<Duration>);

    impl Respond for Timed {
        fn respond(&mut self, request: &Request, keep_alive: bool, _token: ResponseToken) -> Reply {
            if request.path() == "/pending" {
                return Reply::Pending;
            }
            Reply::Ready(echo(request, keep_alive))
        }

        fn reject(&mut self, status: u16, message: &str, _connection: SlotKey) -> Outgoing {
            Outgoing::text(status, message, false, false)
        }

        fn answered(&mut self, elapsed: Duration) {
            self.0.push(elapsed);
        }
    }

    #[test]
    fn a_response_is_timed_from_its_parse_to_its_release() {
        let t0 = Instant::now();
        let (mut timed, mut c) = (Timed::default(), Connection::new(limits(), KEY, t0));
        c.receive(b"GET /pending HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n", t0, &mut timed);
        let t1 = t0 + Duration::from_millis(40);
        c.complete(ResponseToken { connection: KEY, seq: 1 }, text("late"), t1).unwrap();
        let mut slices = Vec::new();
        let plan = c.fill_send(&mut slices, 1024, None);
        drop(slices);
        c.sent(plan.bytes, t1);
        assert!(timed.0.is_empty(), "sent is not released: the kernel may still read it");
        let t2 = t1 + Duration::from_millis(5);
        c.release_through(plan.through_seq, t2, &mut timed);
        assert_eq!(timed.0, [Duration::from_millis(45); 2]);
    }

    #[test]
    fn completions_out_of_order_go_out_in_request_order() {
        let now = Instant::now();
        let (mut stub, mut c) = (Stub::new(), Connection::new(limits(), KEY, now));
        c.receive(b"GET /pending1 HTTP/1.1\r\n\r\nGET /pending2 HTTP/1.1\r\n\r\n", now, &mut stub);
        c.complete(stub.tokens[1], text("second"), now).unwrap();
        assert!(!c.has_unsent());
        c.complete(stub.tokens[0], text("first"), now).unwrap();
        assert_eq!(bodies(&drain(&mut c, now)), ["first", "second"]);
    }

    #[test]
    fn a_streaming_response_sends_its_head_then_parts_as_they_come() {
        let now = Instant::now();
        let (mut stub, mut c) = (Stub::new(), Connection::new(limits(), KEY, now));
        c.receive(b"GET /stream HTTP/1.1\r\n\r\nGET /next HTTP/1.1\r\n\r\n", now, &mut stub);
        let token = stub.tokens[0];
        let wire = drain(&mut c, now);
        assert!(wire.starts_with("HTTP/1.1 200 ") && wire.contains("Content-Length: 6\r\n"), "{wire}");
        assert!(wire.ends_with("\r\n\r\naaa"), "{wire}");
        assert!(!c.has_unsent() && c.queued_count() == 2 && !c.should_close());
        c.append(token, vec![stub.pieces.slice(1, 2)], now).unwrap();
        assert_eq!(drain(&mut c, now), "bb", "/next waits for the end of the stream");
        c.append(token, vec![stub.pieces.slice(2, 1)], now).unwrap();
        let rest = drain(&mut c, now);
        assert!(rest.starts_with("cHTTP/1.1 200 "), "{rest}");
        assert_eq!(bodies(&rest), ["/next"]);
        assert!(matches!(c.append(token, vec![], now), Err(ResponseError::NotWaiting(_))));
        assert!(!c.should_close() && c.queued_count() == 0 && events(&mut c).is_empty());
    }

    #[test]
    fn aborting_a_stream_closes_after_what_was_sent() {
        let now = Instant::now();
        let (mut stub, mut c) = (Stub::new(), Connection::new(limits(), KEY, now));
        c.receive(b"GET /stream HTTP/1.1\r\n\r\nGET /pending HTTP/1.1\r\n\r\nGET /a HTTP/1.1\r\n\r\n", now, &mut stub);
        assert!(drain(&mut c, now).ends_with("aaa"));
        c.append(stub.tokens[0], vec![stub.pieces.slice(1, 1)], now).unwrap();
        c.abort(stub.tokens[0], now).unwrap();
        // The aborting caller knows; the pending response cut off behind the stream is reported.
        assert_eq!(events(&mut c), [ConnectionEvent::Released(stub.tokens[1])]);
        assert!(!c.wants_read() && !c.should_close(), "the part already given still goes out");
        assert_eq!(drain(&mut c, now), "b");
        assert_eq!(c.close_reason(), Some(CloseReason::Aborted));

        // A stream aborted before any of it could be sent is not sent at all.
        let (mut stub, mut c) = (Stub::new(), Connection::new(limits(), KEY, now));
        c.receive(b"GET /pending HTTP/1.1\r\n\r\nGET /stream HTTP/1.1\r\n\r\n", now, &mut stub);
        c.abort(stub.tokens[1], now).unwrap();
        c.complete(stub.tokens[0], text("first"), now).unwrap();
        assert_eq!(bodies(&drain(&mut c, now)), ["first"]);
        assert_eq!(c.close_reason(), Some(CloseReason::Aborted));
    }

    #[test]
    fn a_client_that_goes_away_releases_its_pending_responses() {
        let now = Instant::now();
        let (mut stub, mut c) = (Stub::new(), Connection::new(limits(), KEY, now));
        c.receive(b"GET /a HTTP/1.1\r\n\r\nGET /pending1 HTTP/1.1\r\n\r\nGET /stream HTTP/1.1\r\n\r\n", now, &mut stub);
        c.receive_eof(now, &mut stub);
        let mut released = events(&mut c);
        released.sort_by_key(|event| match event {
            ConnectionEvent::Released(token) | ConnectionEvent::Writable(token) => token.seq,
        });
        let expected: Vec<_> = stub.tokens[1..].iter().map(|&t| ConnectionEvent::Released(t)).collect();
        assert_eq!(released, expected);
        assert_eq!(bodies(&drain(&mut c, now)), ["/a"], "what was ready still goes");
        assert_eq!(c.close_reason(), Some(CloseReason::PeerClosed));
        assert!(c.complete(stub.tokens[1], text("late"), now).is_err());

        let (mut stub, mut c) = (Stub::new(), Connection::new(limits(), KEY, now));
        c.receive(b"GET /pending HTTP/1.1\r\n\r\n", now, &mut stub);
        c.fail();
        assert_eq!(events(&mut c), [ConnectionEvent::Released(stub.tokens[0])]);
        assert!(c.should_close());
    }

    #[test]
    fn a_pending_response_not_completed_in_time_is_a_504() {
        let start = Instant::now();
        let (mut stub, mut c) = (Stub::new(), Connection::new(limits(), KEY, start));
        c.receive(b"GET /a HTTP/1.1\r\n\r\nGET /pending HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\n", start, &mut stub);
        assert_eq!(bodies(&drain(&mut c, start)), ["/a"]);
        c.on_tick(start + Duration::from_millis(299), &mut stub);
        assert!(!c.has_unsent() && events(&mut c).is_empty());
        c.on_tick(start + Duration::from_millis(300), &mut stub);
        assert_eq!(events(&mut c), [ConnectionEvent::Released(stub.tokens[1])]);
        let wire = drain(&mut c, start + Duration::from_millis(300));
        assert!(wire.starts_with("HTTP/1.1 504 ") && wire.contains("Connection: close"), "{wire}");
        assert_eq!(bodies(&wire).len(), 1, "nothing after the 504: {wire}");
        assert_eq!(c.close_reason(), Some(CloseReason::PendingTimeout));
        assert!(c.complete(stub.tokens[1], text("late"), start).is_err());
    }

    #[test]
    fn a_stream_starved_of_parts_is_cut_but_not_one_waiting_its_turn() {
        let start = Instant::now();
        let (mut stub, mut c) = (Stub::new(), Connection::new(limits(), KEY, start));
        c.receive(b"GET /stream HTTP/1.1\r\n\r\n", start, &mut stub);
        drain(&mut c, start + Duration::from_millis(100));
        c.on_tick(start + Duration::from_millis(399), &mut stub);
        assert!(!c.should_close(), "the wait counts from the last byte sent");
        c.on_tick(start + Duration::from_millis(400), &mut stub);
        assert_eq!(events(&mut c), [ConnectionEvent::Released(stub.tokens[0])]);
        assert_eq!(c.close_reason(), Some(CloseReason::PendingTimeout));

        // Behind a response the client does not read, a stream waits its turn: only the send
        // timeout applies, and it releases the stream.
        let (mut stub, mut c) = (Stub::new(), Connection::new(limits(), KEY, start));
        c.receive(b"GET /a HTTP/1.1\r\n\r\nGET /stream HTTP/1.1\r\n\r\n", start, &mut stub);
        c.on_tick(start + Duration::from_millis(450), &mut stub);
        assert!(!c.should_close() && events(&mut c).is_empty());
        c.on_tick(start + Duration::from_millis(500), &mut stub);
        assert_eq!(c.close_reason(), Some(CloseReason::SendTimeout));
        assert_eq!(events(&mut c), [ConnectionEvent::Released(stub.tokens[1])]);
    }

    #[test]
    fn pending_responses_count_against_the_pipeline_limit() {
        let now = Instant::now();
        let (mut stub, mut c) = (Stub::new(), Connection::new(limits(), KEY, now));
        let five: String = (0..5).map(|i| format!("GET /pending{i} HTTP/1.1\r\n\r\n")).collect();
        c.receive(five.as_bytes(), now, &mut stub);
        assert_eq!((c.queued_count(), stub.tokens.len()), (4, 4));
        assert!(!c.wants_read());
        for &token in stub.tokens.clone().iter() {
            c.complete(token, text("x"), now).unwrap();
        }
        drain(&mut c, now);
        assert_eq!(stub.tokens.len(), 4, "the fifth is parsed by the drain's release (with Echo)");
        assert_eq!(c.queued_count(), 1);
    }

    #[test]
    fn a_full_stream_refuses_parts_until_sent_ones_are_released() {
        let now = Instant::now();
        let (mut stub, mut c) = (Stub::new(), Connection::new(limits(), KEY, now));
        c.receive(b"GET /stream HTTP/1.1\r\n\r\n", now, &mut stub);
        let token = stub.tokens[0];
        // Three parts at most (the limits): "aaa" plus two more.
        c.append(token, vec![stub.pieces.slice(1, 1), stub.pieces.slice(2, 1)], now).unwrap();
        let refused = match c.append(token, vec![stub.pieces.slice(3, 1)], now) {
            Err(ResponseError::Full { parts, .. }) => parts,
            other => panic!("{other:?}"),
        };
        // Sent but not released: the kernel may still read those parts, so they stay held.
        let mut slices = Vec::new();
        let plan = c.fill_send(&mut slices, 16, None);
        assert!(slices.concat().ends_with(b"aaabc"));
        drop(slices);
        c.sent(plan.bytes, now);
        assert!(events(&mut c).is_empty());
        c.release_through(plan.through_seq, now, &mut stub);
        assert_eq!(events(&mut c), [ConnectionEvent::Writable(token)]);
        let too_long = vec![stub.pieces.slice(3, 2)];
        assert!(matches!(c.append(token, too_long, now), Err(ResponseError::TooLong { .. })));
        c.append(token, refused, now).unwrap();
        assert_eq!(drain(&mut c, now), "d");
        assert!(c.queued_count() == 0 && !c.should_close());
    }

    #[test]
    fn a_response_holds_no_more_bytes_than_its_own_bound() {
        let now = Instant::now();
        let (mut stub, mut c) = (Stub::new(), Connection::new(limits(), KEY, now));
        c.receive(b"GET /relay HTTP/1.1\r\n\r\n", now, &mut stub);
        let token = stub.tokens[0];
        let bytes = |text: &str| vec![BodyPart::Bytes(text.as_bytes().to_vec())];
        c.append(token, bytes("ab"), now).unwrap();
        // Two bytes held: the connection's own bound (3 parts) is not reached, the response's is.
        assert!(matches!(c.append(token, bytes("c"), now), Err(ResponseError::Full { .. })));
        let wire = drain(&mut c, now);
        assert!(wire.ends_with("\r\n\r\nab"), "{wire:?}");
        assert_eq!(events(&mut c), [ConnectionEvent::Writable(token)]);
        c.append(token, bytes("cd"), now).unwrap();
        assert_eq!(drain(&mut c, now), "cd");
        // Larger than the bound: taken since nothing is held (else it never would be).
        c.append(token, bytes("efg"), now).unwrap();
        assert_eq!(drain(&mut c, now), "efg");
        assert!(c.queued_count() == 0 && !c.should_close());
    }

    #[test]
    fn idle_connections_are_reclaimed_longest_idle_first_and_busy_ones_never() {
        let start = Instant::now();
        let key = |index| SlotKey { index, generation: 1 };
        let at = |ms| start + Duration::from_millis(ms);
        // 0: idle since it opened; 1: served, idle since 30 ms; 2: a request head half read;
        // 3: served, idle since 20 ms; 4: a response queued and not sent.
        let mut connections: Vec<Connection> = (0..5).map(|i| Connection::new(limits(), key(i), start)).collect();
        connections[1].receive(b"GET /a HTTP/1.1\r\n\r\n", at(5), &mut Echo);
        drain(&mut connections[1], at(30));
        connections[2].receive(b"GET /a HTTP/1.1\r\n", at(1), &mut Echo);
        connections[3].receive(b"GET /b HTTP/1.1\r\n\r\n", at(5), &mut Echo);
        drain(&mut connections[3], at(20));
        connections[4].receive(b"GET /c HTTP/1.1\r\n\r\n", at(5), &mut Echo);
        assert_eq!(connections[2].idle_since(), None);
        assert_eq!(connections[4].idle_since(), None);
        fn keyed(connections: &[Connection]) -> impl Iterator<Item = (SlotKey, &Connection)> {
            connections.iter().enumerate().map(|(i, c)| (SlotKey { index: i as u32, generation: 1 }, c))
        }
        assert_eq!(oldest_idle(keyed(&connections), 2), vec![key(0), key(3)]);
        assert_eq!(oldest_idle(keyed(&connections), 10), vec![key(0), key(3), key(1)]);
        assert_eq!(oldest_idle(keyed(&connections), 0), vec![]);
        connections[0].reclaim();
        assert_eq!(connections[0].close_reason(), Some(CloseReason::Reclaimed));
        assert_eq!(oldest_idle(keyed(&connections), 10), vec![key(3), key(1)]);
    }
}
