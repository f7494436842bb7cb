//! The mio/epoll driver: the fallback where io_uring is unavailable. Readiness in, plain
//! `read`/`writev`/`sendfile` calls, all decisions left to [`Connection`].
//!
//! Bodies leave without a user-space copy: stored slices of `send_file_bytes_min` bytes or more
//! go by `sendfile` (the socket takes the store file's pages, so the kernel copies nothing
//! either); heads and smaller slices by `writev`, pointing the kernel at the pinned piece slices
//! directly. Reads go into one per-worker buffer; a connection keeps only
//! the bytes it has not parsed yet. At the connection limit the longest-idle connections are
//! closed to make room ([`oldest_idle`]), and each connection hands the kernel at most
//! `send_bytes_per_turn_max` bytes per turn, so one fast reader cannot starve the others.

use std::io::{ErrorKind, IoSlice, Read};
use std::sync::Arc;
use std::time::Instant;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use socket2::SockRef;

use crate::dataplane::connection::{oldest_idle, CloseReason, Connection, ConnectionEvent, ConnectionLimits};
use crate::dataplane::handler::Handler;
use crate::dataplane::live::{Settings, SettingsWatch};
use crate::dataplane::worker::{
    limits_of, reclaim_batch, tick_of, FileSends, TurnMarks, WorkerContext, WorkerCounters, WorkerError,
};
use crate::io::slots::{SlotKey, Slots};
use crate::io::sys::send_file;

const LISTENER: Token = Token(usize::MAX);
/// A cache box's wake-up from its fill thread.
const WAKE: Token = Token(usize::MAX - 1);
/// Connections accepted per loop turn, so a flood of connects cannot starve established ones.
const ACCEPTS_PER_TURN_MAX: usize = 64;
/// Reads per connection per loop turn (fairness between connections).
const READS_PER_TURN_MAX: usize = 16;
/// Readiness events taken per poll.
const EVENTS_MAX: usize = 1024;

struct Socket {
    stream: TcpStream,
    state: Connection,
    readable: bool,
    writable: bool,
}

fn token(key: SlotKey) -> Token {
    Token(key.to_bits())
}

fn key(token: Token) -> SlotKey {
    SlotKey::from_bits(token.0)
}

/// Runs one worker on epoll until the server stops. `ready` is called once, before serving.
pub fn run(mut context: WorkerContext, ready: impl FnOnce(Result<(), String>)) -> Result<(), WorkerError> {
    let index = context.index;
    let io = |what: &'static str| move |source| WorkerError::Io { index, what, source };
    let std_listener = context.listener.take().expect("a worker is started with its listener");
    let upstream = context.shared.upstream.clone();
    let setup = move || -> Result<(Poll, TcpListener), std::io::Error> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::from_std(std_listener);
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        if let Some(link) = upstream {
            let waker = std::sync::Arc::new(mio::Waker::new(poll.registry(), WAKE)?);
            link.set_waker(index, crate::io::client::Waker::Epoll(waker));
        }
        Ok((poll, listener))
    };
    let (mut poll, listener) = match setup() {
        Ok(parts) => parts,
        Err(error) => {
            ready(Err(format!("epoll setup: {error}")));
            return Err(io("epoll setup")(error));
        }
    };
    ready(Ok(()));
    let mut worker = Worker {
        limits: context.limits(),
        handler: context.handler(),
        counters: context.counters(),
        sockets: Slots::new(context.connections_max()),
        recv_buffer: vec![0; context.shared.config.recv_buffer_bytes.max(512)],
        iovecs_max: context.shared.config.send_iovecs_max.clamp(1, 1024),
        send_bytes_max: context.shared.config.send_bytes_per_turn_max.max(1),
        file_sends: context.file_sends(),
        reclaim_batch: reclaim_batch(context.connections_max()),
        connections_max: context.connections_max(),
        watch: SettingsWatch::default(),
        listener: Some(listener),
    };
    let mut tick = context.tick();
    let mut events = Events::with_capacity(EVENTS_MAX);
    let mut accept_ready = true;
    let mut next_tick = Instant::now() + tick;
    let mut grace_deadline = None;
    let mut dirty: Vec<SlotKey> = Vec::new();
    let mut carry: Vec<SlotKey> = Vec::new();
    let mut marks = TurnMarks::new(context.connections_max());
    loop {
        let busy = (accept_ready && worker.listener.is_some()) || !carry.is_empty();
        let wait = if busy { Some(std::time::Duration::ZERO) } else { Some(tick) };
        match poll.poll(&mut events, wait) {
            Ok(()) => {}
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Err(io("epoll wait")(error)),
        }
        let now = Instant::now();
        worker.handler.set_now(now);
        dirty.append(&mut carry);
        let mut woken = false;
        for event in events.iter() {
            if event.token() == LISTENER {
                accept_ready = true;
                continue;
            }
            if event.token() == WAKE {
                woken = true;
                continue;
            }
            let key = key(event.token());
            if let Some(socket) = worker.sockets.get_mut(key) {
                socket.readable |= event.is_readable() || event.is_read_closed() || event.is_error();
                socket.writable |= event.is_writable() || event.is_write_closed() || event.is_error();
                dirty.push(key);
            }
        }
        if woken {
            worker.complete_filled(now, &mut dirty);
        }
        if accept_ready && grace_deadline.is_none() {
            accept_ready = worker.accept(&poll, now, &mut dirty);
        }
        if now >= next_tick {
            if let Some(settings) = worker.watch.poll(&context.shared.live) {
                tick = tick_of(&settings);
                worker.apply(&context, settings);
            }
            next_tick = now + tick;
            for key in worker.sockets.keys() {
                if let Some(socket) = worker.sockets.get_mut(key) {
                    socket.state.on_tick(now, &mut worker.handler);
                    dirty.push(key);
                }
            }
        }
        if grace_deadline.is_none() && context.stopping() {
            grace_deadline = Some(context.grace_deadline(now));
            if let Some(mut listener) = worker.listener.take() {
                let _ = poll.registry().deregister(&mut listener);
            }
            for key in worker.sockets.keys() {
                if let Some(socket) = worker.sockets.get_mut(key) {
                    socket.state.begin_shutdown();
                    dirty.push(key);
                }
            }
        }
        // Each connection once, in the order its events came (those carried over first).
        marks.next_turn();
        for key in dirty.drain(..) {
            if marks.first_this_turn(key) && worker.drive(&poll, key, now) {
                carry.push(key);
            }
        }
        worker.handler.flush_access_log();
        if let Some(deadline) = grace_deadline {
            if worker.sockets.is_empty() {
                return Ok(());
            }
            if now >= deadline {
                for key in worker.sockets.keys() {
                    worker.close(&poll, key, CloseReason::Shutdown);
                }
                return Ok(());
            }
        }
    }
}

struct Worker {
    limits: ConnectionLimits,
    handler: Handler,
    counters: WorkerCounters,
    /// Boxed: the table is allocated for the whole limit up front, and empty slots stay small.
    sockets: Slots<Box<Socket>>,
    /// Every connection reads into this one buffer.
    recv_buffer: Vec<u8>,
    iovecs_max: usize,
    /// Bytes one connection may write per turn.
    send_bytes_max: usize,
    /// When stored slices go by `sendfile`.
    file_sends: FileSends,
    /// Idle connections reclaimed at once at the limit.
    reclaim_batch: usize,
    /// Open connections at most (a reload may lower it below the table's size).
    connections_max: usize,
    /// Reloaded settings not yet taken.
    watch: SettingsWatch,
    listener: Option<TcpListener>,
}

impl Worker {
    /// Accepts up to a turn's worth of connections; returns whether more may be waiting.
    fn accept(&mut self, poll: &Poll, now: Instant, dirty: &mut Vec<SlotKey>) -> bool {
        for _ in 0..ACCEPTS_PER_TURN_MAX {
            let Some(listener) = &self.listener else { return false };
            let (mut stream, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(error) if error.kind() == ErrorKind::WouldBlock => return false,
                Err(error) => {
                    // EMFILE, ECONNABORTED...: the listener stays; try again next turn.
                    tracing::warn!(%error, "accept failed");
                    return false;
                }
            };
            if self.at_limit() {
                self.reclaim_idle(poll);
            }
            if self.at_limit() {
                self.counters.refused();
                continue;
            }
            let _ = stream.set_nodelay(true);
            let limits = self.limits;
            let mut registered = Ok(());
            let key = self.sockets.insert_with(|key| {
                registered = poll.registry().register(&mut stream, token(key), Interest::READABLE | Interest::WRITABLE);
                Box::new(Socket { stream, state: Connection::new(limits, key, now), readable: true, writable: true })
            });
            let key = key.expect("checked not full");
            if let Err(error) = registered {
                tracing::warn!(%error, "cannot register connection");
                self.sockets.remove(key);
                continue;
            }
            if self.handler.wants_peers() {
                self.handler.opened(key, peer);
            }
            self.counters.opened();
            dirty.push(key);
        }
        true
    }

    fn at_limit(&self) -> bool {
        self.sockets.is_full() || self.sockets.len() >= self.connections_max
    }

    /// Takes on reloaded settings: open connections get the new limits too.
    fn apply(&mut self, context: &WorkerContext, settings: Arc<Settings>) {
        self.limits = limits_of(&settings);
        self.send_bytes_max = settings.serve.send_bytes_per_turn_max.max(1);
        self.file_sends.bytes_per_turn_max = settings.serve.send_file_bytes_per_turn_max as u64;
        self.connections_max = context.connections_live_max(&settings);
        self.handler.apply(settings);
        let wants_peers = self.handler.wants_peers();
        for key in self.sockets.keys() {
            let Some(socket) = self.sockets.get_mut(key) else { continue };
            socket.state.set_limits(self.limits);
            if let (true, Ok(peer)) = (wants_peers, socket.stream.peer_addr()) {
                self.handler.opened(key, peer);
            }
        }
    }

    /// At the connection limit: closes the longest-idle connections to make room. One whose
    /// socket may hold unread bytes (readable since its last read) is not idle.
    fn reclaim_idle(&mut self, poll: &Poll) {
        let open = self.sockets.iter().filter(|(_, socket)| !socket.readable).map(|(key, socket)| (key, &socket.state));
        for key in oldest_idle(open, self.reclaim_batch) {
            if let Some(socket) = self.sockets.get_mut(key) {
                socket.state.reclaim();
                self.close(poll, key, CloseReason::Reclaimed);
            }
        }
    }

    /// Moves bytes both ways as far as the socket allows (within a turn's budgets), then closes
    /// if the connection is done. Returns whether it wants another turn: a budget ran out with
    /// bytes still readable or still to send, or a stream got parts after the last write.
    fn drive(&mut self, poll: &Poll, key: SlotKey, now: Instant) -> bool {
        let file_bytes_min = self.file_sends.bytes_min_now(self.sockets.len());
        let Some(socket) = self.sockets.get_mut(key) else { return false };
        let handler = &mut self.handler;
        let mut reads = 0;
        let mut send_budget = self.file_sends.bytes_per_turn(self.send_bytes_max as u64, file_bytes_min) as usize;
        loop {
            while socket.writable && socket.state.has_unsent() && !socket.state.should_close() && send_budget > 0 {
                let written = match socket.state.front_file(file_bytes_min) {
                    Some(range) => {
                        let length = range.length.min(send_budget as u64) as usize;
                        let sent = send_file(&socket.stream, range.file, range.offset, length);
                        if sent.is_ok() {
                            self.counters.file_send();
                        }
                        sent
                    }
                    None => {
                        let mut slices = Vec::with_capacity(self.iovecs_max.min(16));
                        let plan = socket.state.fill_send(&mut slices, self.iovecs_max, file_bytes_min);
                        trim_to(&mut slices, send_budget);
                        let iovecs: Vec<IoSlice<'_>> = slices.iter().map(|s| IoSlice::new(s)).collect();
                        // A head followed by a file's pages: hold the head for them (`MSG_MORE`).
                        let flags = if plan.file_follows { libc::MSG_MORE } else { 0 };
                        SockRef::from(&socket.stream).send_vectored_with_flags(&iovecs, flags)
                    }
                };
                match written {
                    Ok(0) => socket.state.fail(),
                    Ok(bytes) => {
                        send_budget -= bytes.min(send_budget);
                        self.counters.sent(bytes as u64);
                        socket.state.sent(bytes as u64, now);
                        // writev and sendfile are done with user memory when they return (pages
                        // handed over stay the socket's: the store never rewrites them in place).
                        socket.state.release_through(u64::MAX, now, handler);
                    }
                    Err(error) if error.kind() == ErrorKind::WouldBlock => socket.writable = false,
                    Err(error) if error.kind() == ErrorKind::Interrupted => {}
                    Err(_) => socket.state.fail(),
                }
            }
            if !(socket.readable && socket.state.wants_read()) || reads >= READS_PER_TURN_MAX {
                break;
            }
            reads += 1;
            match socket.stream.read(&mut self.recv_buffer) {
                Ok(0) => {
                    socket.readable = false;
                    socket.state.receive_eof(now, handler);
                }
                Ok(bytes) => socket.state.receive(&self.recv_buffer[..bytes], now, handler),
                Err(error) if error.kind() == ErrorKind::WouldBlock => socket.readable = false,
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(_) => socket.state.fail(),
            }
        }
        // Responses given up (release their fills) or with room again (append what waits).
        let mut appended = false;
        while let Some(event) = socket.state.poll_event() {
            appended |= matches!(event, ConnectionEvent::Writable(_));
            handler.connection_event(event, &mut socket.state, now);
        }
        if let Some(reason) = socket.state.close_reason() {
            self.close(poll, key, reason);
            return false;
        }
        let read_more = reads >= READS_PER_TURN_MAX && socket.readable && socket.state.wants_read();
        let send_more = (send_budget == 0 || appended) && socket.writable && socket.state.has_unsent();
        read_more || send_more
    }

    /// The fill thread answered pending responses: complete them.
    fn complete_filled(&mut self, now: Instant, dirty: &mut Vec<SlotKey>) {
        for token in self.handler.take_filled() {
            let Some(socket) = self.sockets.get_mut(token.connection) else {
                self.handler.forget_response(token);
                continue;
            };
            self.handler.deliver(token, &mut socket.state, now);
            dirty.push(token.connection);
        }
    }

    fn close(&mut self, poll: &Poll, key: SlotKey, reason: CloseReason) {
        if let Some(mut socket) = self.sockets.remove(key) {
            self.handler.closed(key);
            let _ = poll.registry().deregister(&mut socket.stream);
            self.counters.closed(reason);
        }
    }
}

/// Shortens `slices` to their first `bytes_max` bytes.
fn trim_to(slices: &mut Vec<&[u8]>, mut bytes_max: usize) {
    slices.retain_mut(|slice| {
        let keep = slice.len().min(bytes_max);
        *slice = &slice[..keep];
        bytes_max -= keep;
        keep > 0
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_are_trimmed_to_the_turn_budget() {
        let (a, b, c) = (vec![1u8; 10], vec![2u8; 10], vec![3u8; 10]);
        let mut slices: Vec<&[u8]> = vec![&a, &b, &c];
        trim_to(&mut slices, 15);
        assert_eq!(slices, vec![&a[..], &b[..5]]);
        trim_to(&mut slices, 100);
        assert_eq!(slices.concat().len(), 15);
    }

    #[test]
    fn an_idle_connection_costs_under_1_kib() {
        // Its boxed state (with malloc's size word) and its slot in the table; it reads into the
        // worker's buffer and keeps no input or queue while idle.
        let bytes = (std::mem::size_of::<Socket>() + 16).next_multiple_of(16)
            + std::mem::size_of::<Option<Box<Socket>>>()
            + 2 * std::mem::size_of::<u32>();
        assert!(bytes <= 1024, "an idle epoll connection holds {bytes} bytes");
    }
}
