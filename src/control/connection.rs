//! One client connection of the service: TLS, request framing and timeouts around the
//! sans-I/O [`Handler`]. The socket is non-blocking; the event loop calls in on readiness, and
//! with [`Connection::deliver`] when an answer the handler deferred is ready.

use std::io::{ErrorKind, Read, Write};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use rustls::ServerConnection;

use crate::control::handler::{Handler, Response};
use crate::control::snapshot::Ticket;
use crate::http::{parse_request, Method, Parsed, Request, RequestLimits, ResponseHead};

/// Per-connection limits, from the `[service]` config.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub request: RequestLimits,
    pub body_bytes_max: u64,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
}

enum Phase {
    /// Waiting for a request head (or the handshake); `idle` until its first byte arrives.
    Head { idle: bool },
    /// The head is in; waiting for `request.content_length` body bytes after `head_length`.
    Body { request: Request, head_length: usize },
    /// The request is in and its answer deferred (the catalog keeper is on it); later requests
    /// wait in `inbound`, so answers keep their order.
    Answering { keep_alive: bool, head_only: bool },
}

/// What the event loop should do with a connection after driving it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Keep it; wait for readability, plus writability when asked.
    Wait { writable: bool },
    /// Close and forget it.
    Close,
}

/// A client connection.
pub struct Connection {
    pub socket: TcpStream,
    /// The client's IP (an announce must name its own).
    from: IpAddr,
    /// Names this connection's deferred answers.
    ticket: Ticket,
    tls: ServerConnection,
    /// Plaintext received and not yet consumed by a response.
    inbound: Vec<u8>,
    /// Plaintext of the response being sent, and how much of it rustls has taken.
    outbound: Vec<u8>,
    outbound_taken: usize,
    phase: Phase,
    deadline: Instant,
    /// No more requests are answered: close once the response is out (error or `Connection: close`).
    closing: bool,
    /// The client sent EOF: answer what is complete, then close.
    peer_closed: bool,
}

impl Connection {
    /// A connection from `from` just accepted at `now`; its deferred answers come back under `ticket`.
    pub fn new(
        socket: TcpStream,
        from: IpAddr,
        tls: ServerConnection,
        limits: &ConnectionLimits,
        now: Instant,
        ticket: Ticket,
    ) -> Connection {
        Connection {
            socket,
            from,
            ticket,
            tls,
            inbound: Vec::new(),
            outbound: Vec::new(),
            outbound_taken: 0,
            phase: Phase::Head { idle: false },
            deadline: now + limits.header_timeout,
            closing: false,
            peer_closed: false,
        }
    }

    /// Whether the current phase's time ran out.
    pub fn timed_out(&self, now: Instant) -> bool {
        now >= self.deadline
    }

    /// Reads what arrived, answers complete requests, writes what it can.
    pub fn drive(&mut self, handler: &mut Handler, limits: &ConnectionLimits, now: Instant) -> Next {
        if let Err(error) = self.read_available(limits, now) {
            tracing::debug!(%error, "control connection read failed");
            // Try to deliver a TLS alert (e.g. for a plain-HTTP client) before closing.
            let _ = self.tls.write_tls(&mut self.socket);
            return Next::Close;
        }
        // Bounded: each pass either sends a whole response or stops; requests come from a bounded buffer.
        loop {
            if let Err(error) = self.flush(limits, now) {
                tracing::debug!(%error, "control connection write failed");
                return Next::Close;
            }
            if self.outbound_taken < self.outbound.len() || self.closing || !self.answer_one(handler, limits, now) {
                break;
            }
        }
        let all_sent = self.outbound.is_empty() && !self.tls.wants_write();
        let answering = matches!(self.phase, Phase::Answering { .. });
        if (self.closing || self.peer_closed) && all_sent && !answering {
            self.tls.send_close_notify();
            let _ = self.tls.write_tls(&mut self.socket);
            return Next::Close;
        }
        Next::Wait { writable: self.tls.wants_write() || !self.outbound.is_empty() }
    }

    fn read_available(&mut self, limits: &ConnectionLimits, now: Instant) -> std::io::Result<()> {
        let inbound_max = limits.request.header_bytes_max + limits.body_bytes_max as usize;
        loop {
            match self.tls.read_tls(&mut self.socket) {
                Ok(0) => {
                    self.peer_closed = true;
                    return Ok(());
                }
                Ok(_) => {}
                Err(error) if error.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            }
            let state = self.tls.process_new_packets().map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))?;
            let available = state.plaintext_bytes_to_read();
            if available == 0 {
                continue;
            }
            if self.inbound.len() + available > inbound_max {
                return Err(std::io::Error::new(ErrorKind::InvalidData, "client sent more than one request's limit"));
            }
            if let Phase::Head { idle: true } = self.phase {
                self.phase = Phase::Head { idle: false };
                self.deadline = now + limits.header_timeout;
            }
            let start = self.inbound.len();
            self.inbound.resize(start + available, 0);
            self.tls.reader().read_exact(&mut self.inbound[start..])?;
        }
    }

    /// Answers the next complete request in `inbound`, if there is one.
    fn answer_one(&mut self, handler: &mut Handler, limits: &ConnectionLimits, now: Instant) -> bool {
        if let Phase::Head { .. } = self.phase {
            if self.inbound.is_empty() {
                return false;
            }
            match parse_request(&self.inbound, &limits.request) {
                Ok(Parsed::Partial) => return false,
                Err(error) => {
                    self.queue(&Response::error(error.status(), error.to_string()), false, false);
                    return true;
                }
                Ok(Parsed::Complete { request, head_length }) => {
                    if request.content_length > limits.body_bytes_max {
                        let message = format!(
                            "request body of {} bytes is over the {}-byte limit",
                            request.content_length, limits.body_bytes_max
                        );
                        self.queue(&Response::error(413, message), false, false);
                        return true;
                    }
                    self.deadline = now + limits.body_timeout;
                    self.phase = Phase::Body { request, head_length };
                }
            }
        }
        let Phase::Body { request, head_length } = &self.phase else { return false };
        let end = head_length + request.content_length as usize;
        if self.inbound.len() < end {
            return false;
        }
        let answer = handler.handle(request, &self.inbound[*head_length..end], self.from, now, self.ticket);
        let (keep_alive, head_only) = (request.keep_alive, request.method == Method::Head);
        self.inbound.drain(..end);
        match answer {
            Some(response) => {
                self.answered(&response, keep_alive, head_only, limits, now);
                true
            }
            None => {
                // The keeper answers within its own time; the body timeout bounds the wait.
                self.phase = Phase::Answering { keep_alive, head_only };
                self.deadline = now + limits.body_timeout;
                false
            }
        }
    }

    /// Queues the answer the handler deferred; the event loop then drives the connection.
    pub fn deliver(&mut self, response: &Response, limits: &ConnectionLimits, now: Instant) {
        if let Phase::Answering { keep_alive, head_only } = self.phase {
            self.answered(response, keep_alive, head_only, limits, now);
        }
    }

    fn answered(
        &mut self,
        response: &Response,
        keep_alive: bool,
        head_only: bool,
        limits: &ConnectionLimits,
        now: Instant,
    ) {
        self.queue(response, keep_alive, head_only);
        self.phase = Phase::Head { idle: self.inbound.is_empty() };
        self.deadline = now + if self.inbound.is_empty() { limits.idle_timeout } else { limits.header_timeout };
    }

    fn queue(&mut self, response: &Response, keep_alive: bool, head_only: bool) {
        let extra: Vec<(&str, &str)> = response.extra.iter().map(|(name, value)| (*name, value.as_str())).collect();
        let head = ResponseHead {
            status: response.status,
            content_length: response.body.len() as u64,
            content_type: response.content_type,
            content_range: None,
            keep_alive,
            extra: &extra,
        };
        head.write_to(&mut self.outbound);
        if !head_only {
            self.outbound.extend_from_slice(&response.body);
        }
        if !keep_alive {
            self.closing = true;
        }
    }

    /// Hands plaintext to rustls as its buffer allows and writes TLS records until the socket blocks.
    fn flush(&mut self, limits: &ConnectionLimits, now: Instant) -> std::io::Result<()> {
        loop {
            while self.outbound_taken < self.outbound.len() {
                let taken = self.tls.writer().write(&self.outbound[self.outbound_taken..])?;
                if taken == 0 {
                    break;
                }
                self.outbound_taken += taken;
            }
            if self.outbound_taken == self.outbound.len() {
                self.outbound.clear();
                self.outbound_taken = 0;
            }
            if !self.tls.wants_write() {
                return Ok(());
            }
            match self.tls.write_tls(&mut self.socket) {
                Ok(0) => return Err(std::io::Error::new(ErrorKind::WriteZero, "client stopped reading")),
                // A slow reader keeps the connection while it makes progress.
                Ok(_) if !self.outbound.is_empty() => self.deadline = self.deadline.max(now + limits.idle_timeout),
                Ok(_) => {}
                Err(error) if error.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
    }
}
