//! The client loop on io_uring: per connection one connect, one receive and one send in flight;
//! one timeout operation for the nearest timer, one eventfd read for wake-ups.

use std::collections::VecDeque;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use io_uring::cqueue;
use socket2::{Domain, Protocol, SockRef, Socket, Type};

use super::{check_send_room, ClientConfig, ClientError, ConnId, Event, Lent, Timers, Waker};
use crate::io::slots::{SlotKey, Slots};
use crate::io::uring::connect::ConnectOp;
use crate::io::uring::op::{decode, encode, OpKind};
use crate::io::uring::recv::{Received, RecvOp};
use crate::io::uring::ring::{Completion, Ring};
use crate::io::uring::send::{Part, SendOp, SendResult};
use crate::io::uring::timeout::TimeoutOp;
use crate::io::uring::wake::WakeOp;
use crate::io::uring::{build_ring, describe_setup_error};

/// Completions reaped per poll at most.
const COMPLETIONS_PER_POLL_MAX: usize = 1024;
/// Slices one send takes at most.
const SEND_IOVECS_MAX: usize = 64;

struct Conn {
    socket: Rc<OwnedFd>,
    connect: ConnectOp,
    recv: RecvOp,
    send: SendOp,
    /// Buffers not yet fully taken by the kernel, oldest first (the send op holds its own `Rc`s).
    queued: VecDeque<Rc<Vec<u8>>>,
    /// Bytes of `queued[0]` already taken.
    front_sent_bytes: u64,
    connected: bool,
    closing: bool,
    /// Cleared by [`UringLoop::set_receiving`]: no further receive is submitted.
    receiving: bool,
    timer: Option<Instant>,
}

impl Conn {
    fn owns_buffers(&self) -> bool {
        self.connect.owns_buffers() || self.recv.owns_buffer() || self.send.owns_buffers()
    }

    /// Counts `bytes` as taken: drops the buffers they complete.
    fn sent(&mut self, mut bytes: u64) {
        while bytes > 0 {
            let Some(front) = self.queued.front() else { return };
            let left = front.len() as u64 - self.front_sent_bytes;
            if bytes < left {
                self.front_sent_bytes += bytes;
                return;
            }
            bytes -= left;
            self.front_sent_bytes = 0;
            self.queued.pop_front();
        }
    }
}

/// The io_uring backend of [`super::ClientLoop`].
pub struct UringLoop {
    ring: Ring,
    conns: Slots<Conn>,
    timers: Timers,
    timeout: TimeoutOp,
    wake: WakeOp,
    recv_buffer_bytes: usize,
    pub(super) spare: super::Spare,
    /// Connections whose operations need (re)submitting.
    dirty: Vec<SlotKey>,
    send_queued_bytes_max: u64,
    /// Events produced outside a completion (a connect that failed at once).
    ready: Vec<Event>,
}

impl UringLoop {
    /// A ring sized for `config.connections_max` connections.
    pub fn new(config: ClientConfig) -> Result<UringLoop, ClientError> {
        let setup = |source| ClientError::Setup { backend: "uring", source };
        let connections_max = config.connections_max.clamp(1, (1 << 24) - 1);
        // Per connection a connect or a receive, a send and its notification; plus timeout,
        // wake and cancels.
        let submission_entries = config.ring_entries.max(8);
        // The kernel refuses a completion queue smaller than the submission queue.
        let completion_entries =
            (connections_max * 3 + 64).next_power_of_two().min(u32::MAX as usize).max(submission_entries as usize);
        let ring = build_ring(submission_entries, completion_entries as u32)
            .map_err(|error| setup(std::io::Error::other(describe_setup_error(error))))?;
        Ok(UringLoop {
            ring: Ring::new(ring),
            conns: Slots::new(connections_max),
            timers: Timers::default(),
            timeout: TimeoutOp::default(),
            wake: WakeOp::new().map_err(setup)?,
            recv_buffer_bytes: config.recv_buffer_bytes,
            spare: super::Spare::default(),
            dirty: Vec::new(),
            send_queued_bytes_max: config.send_queued_bytes_max,
            ready: Vec::new(),
        })
    }

    /// See [`super::ClientLoop::waker`].
    pub fn waker(&self) -> Waker {
        Waker::Uring(self.wake.waker())
    }

    /// See [`super::ClientLoop::connect`].
    pub fn connect(&mut self, address: SocketAddr) -> Result<ConnId, ClientError> {
        if self.conns.is_full() {
            return Err(ClientError::Full(self.conns.len()));
        }
        let socket = Socket::new(Domain::for_address(address), Type::STREAM.cloexec(), Some(Protocol::TCP))
            .and_then(|socket| socket.set_tcp_nodelay(true).map(|()| socket))
            .map_err(|source| ClientError::Socket { address, source })?;
        let socket = Rc::new(OwnedFd::from(socket));
        let recv_bytes = self.recv_buffer_bytes;
        let key = self
            .conns
            .insert_with(|_| Conn {
                connect: ConnectOp::new(socket.clone(), address),
                recv: RecvOp::new(socket.clone(), recv_bytes),
                send: SendOp::new(socket.clone(), SEND_IOVECS_MAX),
                socket,
                queued: VecDeque::new(),
                front_sent_bytes: 0,
                connected: false,
                closing: false,
                receiving: true,
                timer: None,
            })
            .expect("checked not full");
        let conn = self.conns.get_mut(key).expect("just inserted");
        conn.connect.submit(key, &mut self.ring.queue);
        Ok(key.into())
    }

    fn live(&mut self, conn: ConnId) -> Result<&mut Conn, ClientError> {
        self.conns.get_mut(conn.into()).filter(|c| !c.closing).ok_or(ClientError::Closed(conn))
    }

    /// See [`super::ClientLoop::send_shared`].
    pub fn send(&mut self, conn: ConnId, bytes: Rc<Vec<u8>>) -> Result<(), ClientError> {
        let limit_bytes = self.send_queued_bytes_max;
        let state = self.live(conn)?;
        let queued_bytes = state.queued.iter().map(|b| b.len() as u64).sum::<u64>() - state.front_sent_bytes;
        check_send_room(conn, queued_bytes, bytes.len() as u64, limit_bytes)?;
        state.queued.push_back(bytes);
        self.dirty.push(conn.into());
        Ok(())
    }

    /// See [`super::ClientLoop::set_receiving`].
    pub fn set_receiving(&mut self, conn: ConnId, receiving: bool) -> Result<(), ClientError> {
        let state = self.live(conn)?;
        let resumed = receiving && !state.receiving;
        state.receiving = receiving;
        if resumed {
            self.dirty.push(conn.into());
        }
        Ok(())
    }

    /// See [`super::ClientLoop::receive_into`]: the loan is taken when no receive is in flight;
    /// the next poll submits the receive into it.
    pub(super) fn receive_into(&mut self, conn: ConnId, lent: Lent) -> Result<(), Lent> {
        let Ok(state) = self.live(conn) else { return Err(lent) };
        state.recv.lend(lent)?;
        self.dirty.push(conn.into());
        Ok(())
    }

    /// See [`super::ClientLoop::set_timer`].
    pub fn set_timer(&mut self, conn: ConnId, after: Duration) -> Result<(), ClientError> {
        let state = self.live(conn)?;
        let at = Instant::now() + after;
        let old = state.timer.replace(at);
        self.timers.set(conn, old, Some(at));
        Ok(())
    }

    /// See [`super::ClientLoop::close`].
    pub fn close(&mut self, conn: ConnId) {
        self.end(conn, Shutdown::Both);
    }

    /// See [`super::ClientLoop::abort`]: no FIN first; the reset goes when the last operation
    /// lets the socket go.
    pub fn abort(&mut self, conn: ConnId) {
        if let Some(state) = self.conns.get_mut(conn.into()).filter(|state| !state.closing) {
            let _ = SockRef::from(&*state.socket).set_linger(Some(Duration::ZERO));
        }
        self.end(conn, Shutdown::Read);
    }

    /// Closes `conn`, shutting `how` at once (a receive in flight completes: the slot goes when
    /// every operation is idle).
    fn end(&mut self, conn: ConnId, how: Shutdown) {
        let key: SlotKey = conn.into();
        let Some(state) = self.conns.get_mut(key) else { return };
        if state.closing {
            return;
        }
        state.closing = true;
        self.timers.set(conn, state.timer.take(), None);
        state.recv.abandon();
        state.send.abandon();
        if state.connect.owns_buffers() {
            state.connect.abandon();
            crate::io::uring::cancel::cancel(encode(OpKind::Connect, key), &mut self.ring.queue);
        }
        let _ = SockRef::from(&*state.socket).shutdown(how);
        self.dirty.push(key);
    }

    /// See [`super::ClientLoop::connection_count`].
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// See [`super::ClientLoop::poll`].
    pub fn poll(&mut self, events: &mut Vec<Event>, timeout: Option<Duration>) -> Result<(), ClientError> {
        self.advance_dirty();
        let now = Instant::now();
        if let Some(at) = self.timers.next() {
            self.timeout.arm(at, now, &mut self.ring.queue);
        }
        self.wake.arm(&mut self.ring.queue);
        let busy = !self.ready.is_empty() || !self.dirty.is_empty();
        let wait = if busy { Duration::ZERO } else { timeout.unwrap_or(Duration::from_secs(3600)) };
        self.ring.submit_and_wait(wait).map_err(ClientError::Wait)?;
        let mut completions: Vec<Completion> = Vec::new();
        self.ring.reap(&mut completions, COMPLETIONS_PER_POLL_MAX);
        events.append(&mut self.ready);
        for (user_data, result, flags) in completions {
            self.dispatch(user_data, result, flags, events);
        }
        for conn in self.timers.expired(Instant::now()) {
            if let Some(state) = self.conns.get_mut(conn.into()) {
                state.timer = None;
                events.push(Event::Timer { conn });
            }
        }
        // The next receives and sends are queued by the next poll, before it submits: a
        // connection whose bytes are reported now has no receive in flight while the caller
        // handles them, so it may lend a buffer for the next one (`receive_into`).
        Ok(())
    }

    fn dispatch(&mut self, user_data: u64, result: i32, flags: u32, events: &mut Vec<Event>) {
        if TimeoutOp::is_mine(user_data) {
            return self.timeout.complete();
        }
        if WakeOp::is_mine(user_data) {
            self.wake.complete();
            return events.push(Event::Woken);
        }
        let Some((kind, key)) = decode(user_data) else { return };
        let conn = ConnId::from(key);
        let Some(state) = self.conns.get_mut(key) else { return };
        self.dirty.push(key);
        let failed = match kind {
            OpKind::Connect => match state.connect.complete(result) {
                Some(Ok(())) => {
                    state.connected = true;
                    events.push(Event::Connected { conn });
                    None
                }
                Some(Err(error)) => Some(Some(error)),
                None => None,
            },
            OpKind::Recv => match state.recv.complete(result) {
                Received::Bytes(bytes) if !state.closing => {
                    // A mostly full buffer is handed on as it is (a spare one takes its place); a
                    // few bytes are copied out, keeping the large buffer for the next receive.
                    let bytes = if bytes.len() >= self.recv_buffer_bytes / 2 {
                        state.recv.take(self.spare.take())
                    } else {
                        self.spare.copy_of(bytes)
                    };
                    events.push(Event::Received { conn, bytes });
                    None
                }
                Received::Filled(lent, bytes) if !state.closing => {
                    events.push(Event::Filled { conn, buffer: lent.buffer, start: lent.start, bytes });
                    None
                }
                Received::Bytes(_) | Received::Filled(..) => None,
                Received::End => Some(None),
                Received::Failed(errno) => Some(Some(std::io::Error::from_raw_os_error(errno))),
            },
            OpKind::Send | OpKind::SendZc if cqueue::notif(flags) => {
                state.send.notified();
                None
            }
            OpKind::Send | OpKind::SendZc => match state.send.complete(result, cqueue::more(flags)) {
                SendResult::Sent(bytes) => {
                    state.sent(bytes);
                    events.push(Event::Sent { conn, bytes });
                    None
                }
                SendResult::Failed(errno) => Some(Some(std::io::Error::from_raw_os_error(errno))),
                SendResult::Ignored => None,
            },
            _ => None,
        };
        if let Some(error) = failed {
            if !state.closing {
                events.push(Event::Closed { conn, error });
                self.close(conn);
            }
        }
    }

    fn advance_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable_by_key(|k| (k.index, k.generation));
        dirty.dedup();
        for key in dirty {
            self.advance(key);
        }
    }

    /// Submits the receive and send a connection needs, or frees a closed one whose operations
    /// are all idle (until then its operations own their memory, so the slot must stay for
    /// their completions to find).
    fn advance(&mut self, key: SlotKey) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if conn.closing {
            if !conn.owns_buffers() {
                self.conns.remove(key);
            }
            return;
        }
        if !conn.connected {
            return;
        }
        if conn.send.is_idle() && !conn.queued.is_empty() {
            let mut skip_bytes = conn.front_sent_bytes;
            let parts: Vec<Part> = conn
                .queued
                .iter()
                .take(SEND_IOVECS_MAX)
                .map(|buffer| {
                    let part = Part { owner: buffer.clone(), skip_bytes };
                    skip_bytes = 0;
                    part
                })
                .collect();
            conn.send.submit(key, parts, None, None, &mut self.ring.queue);
        }
        if conn.receiving && !conn.recv.owns_buffer() {
            conn.recv.submit(key, &mut self.ring.queue);
        }
    }
}

impl Drop for UringLoop {
    /// Closes every connection and waits (bounded) for their operations; whatever the kernel
    /// still holds after that is leaked by the operations themselves, never freed under it.
    fn drop(&mut self) {
        for key in self.conns.keys() {
            self.close(key.into());
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut events = Vec::new();
        while !self.conns.is_empty() && Instant::now() < deadline {
            if self.poll(&mut events, Some(Duration::from_millis(10))).is_err() {
                break;
            }
            events.clear();
        }
    }
}
