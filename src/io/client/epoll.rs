//! The client loop on mio/epoll: non-blocking connect, readiness in, `read`/`write` calls.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use super::{check_send_room, ClientConfig, ClientError, ConnId, Event, Lent, Timers, Waker};
use crate::io::slots::{SlotKey, Slots};

const WAKE: Token = Token(usize::MAX);
/// Reads per connection per poll (fairness between connections).
const READS_PER_POLL_MAX: usize = 16;
/// Readiness events taken per poll.
const EVENTS_MAX: usize = 1024;

struct Conn {
    stream: TcpStream,
    queued: VecDeque<Rc<Vec<u8>>>,
    front_sent_bytes: usize,
    connected: bool,
    readable: bool,
    writable: bool,
    /// Cleared by [`EpollLoop::set_receiving`]: readiness is kept, nothing is read.
    receiving: bool,
    /// A caller's buffer for the next read ([`EpollLoop::receive_into`]).
    lent: Option<Lent>,
    timer: Option<Instant>,
}

/// The mio/epoll backend of [`super::ClientLoop`].
pub struct EpollLoop {
    poll: Poll,
    events: Events,
    waker: Arc<mio::Waker>,
    conns: Slots<Conn>,
    timers: Timers,
    read_buffer: Vec<u8>,
    pub(super) spare: super::Spare,
    /// Connections with readiness or sends left over from an earlier poll.
    dirty: Vec<SlotKey>,
    send_queued_bytes_max: u64,
}

impl EpollLoop {
    /// A poll instance for `config.connections_max` connections.
    pub fn new(config: ClientConfig) -> Result<EpollLoop, ClientError> {
        let setup = |source| ClientError::Setup { backend: "epoll", source };
        let poll = Poll::new().map_err(setup)?;
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKE).map_err(setup)?);
        Ok(EpollLoop {
            poll,
            events: Events::with_capacity(EVENTS_MAX),
            waker,
            conns: Slots::new(config.connections_max.clamp(1, (1 << 24) - 1)),
            timers: Timers::default(),
            read_buffer: vec![0; config.recv_buffer_bytes.max(512)],
            spare: super::Spare::default(),
            dirty: Vec::new(),
            send_queued_bytes_max: config.send_queued_bytes_max,
        })
    }

    /// See [`super::ClientLoop::waker`].
    pub fn waker(&self) -> Waker {
        Waker::Epoll(self.waker.clone())
    }

    /// See [`super::ClientLoop::connect`].
    pub fn connect(&mut self, address: SocketAddr) -> Result<ConnId, ClientError> {
        if self.conns.is_full() {
            return Err(ClientError::Full(self.conns.len()));
        }
        let socket_error = |source| ClientError::Socket { address, source };
        let stream = TcpStream::connect(address).map_err(socket_error)?;
        let _ = stream.set_nodelay(true);
        let key = self
            .conns
            .insert_with(|_| Conn {
                stream,
                queued: VecDeque::new(),
                front_sent_bytes: 0,
                connected: false,
                readable: false,
                writable: false,
                receiving: true,
                lent: None,
                timer: None,
            })
            .expect("checked not full");
        let conn = self.conns.get_mut(key).expect("just inserted");
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(source) = self.poll.registry().register(&mut conn.stream, Token(key.to_bits()), interest) {
            self.conns.remove(key);
            return Err(socket_error(source));
        }
        Ok(key.into())
    }

    fn live(&mut self, conn: ConnId) -> Result<&mut Conn, ClientError> {
        self.conns.get_mut(conn.into()).ok_or(ClientError::Closed(conn))
    }

    /// See [`super::ClientLoop::send_shared`].
    pub fn send(&mut self, conn: ConnId, bytes: Rc<Vec<u8>>) -> Result<(), ClientError> {
        let limit_bytes = self.send_queued_bytes_max;
        let state = self.live(conn)?;
        let queued_bytes = state.queued.iter().map(|b| b.len() as u64).sum::<u64>() - state.front_sent_bytes as u64;
        check_send_room(conn, queued_bytes, bytes.len() as u64, limit_bytes)?;
        state.queued.push_back(bytes);
        self.dirty.push(conn.into());
        Ok(())
    }

    /// See [`super::ClientLoop::receive_into`]: the next read of the connection goes into the
    /// loan.
    pub(super) fn receive_into(&mut self, conn: ConnId, lent: Lent) -> Result<(), Lent> {
        let Ok(state) = self.live(conn) else { return Err(lent) };
        if state.lent.is_some() {
            return Err(lent);
        }
        state.lent = Some(lent);
        if state.readable {
            self.dirty.push(conn.into());
        }
        Ok(())
    }

    /// See [`super::ClientLoop::set_receiving`].
    pub fn set_receiving(&mut self, conn: ConnId, receiving: bool) -> Result<(), ClientError> {
        let state = self.live(conn)?;
        let resumed = receiving && !state.receiving;
        state.receiving = receiving;
        if resumed {
            // Readiness that came while stopped was kept: read it now (edge-triggered).
            self.dirty.push(conn.into());
        }
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

    /// See [`super::ClientLoop::close`]. Nothing is lent to the kernel here: the socket closes now.
    pub fn close(&mut self, conn: ConnId) {
        if let Some(mut state) = self.conns.remove(conn.into()) {
            self.timers.set(conn, state.timer.take(), None);
            let _ = self.poll.registry().deregister(&mut state.stream);
        }
    }

    /// See [`super::ClientLoop::abort`].
    pub fn abort(&mut self, conn: ConnId) {
        if let Some(state) = self.conns.get_mut(conn.into()) {
            let _ = socket2::SockRef::from(&state.stream).set_linger(Some(Duration::ZERO));
        }
        self.close(conn);
    }

    /// See [`super::ClientLoop::connection_count`].
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// See [`super::ClientLoop::poll`].
    pub fn poll(&mut self, events: &mut Vec<Event>, timeout: Option<Duration>) -> Result<(), ClientError> {
        let now = Instant::now();
        let wait = if self.dirty.is_empty() { self.timers.wait(timeout, now) } else { Some(Duration::ZERO) };
        match self.poll.poll(&mut self.events, wait) {
            Ok(()) => {}
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Err(ClientError::Wait(error)),
        }
        for event in self.events.iter() {
            if event.token() == WAKE {
                events.push(Event::Woken);
                continue;
            }
            let key = SlotKey::from_bits(event.token().0);
            if let Some(conn) = self.conns.get_mut(key) {
                conn.readable |= event.is_readable() || event.is_read_closed() || event.is_error();
                conn.writable |= event.is_writable() || event.is_error();
                self.dirty.push(key);
            }
        }
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable_by_key(|k| (k.index, k.generation));
        dirty.dedup();
        for key in dirty {
            if let Some(error) = self.advance(key, events) {
                events.push(Event::Closed { conn: key.into(), error });
                self.close(key.into());
            }
        }
        for conn in self.timers.expired(Instant::now()) {
            if let Some(state) = self.conns.get_mut(conn.into()) {
                state.timer = None;
                events.push(Event::Timer { conn });
            }
        }
        Ok(())
    }

    /// Connects, writes and reads what readiness allows; `Some` when the connection ended
    /// (with the error, if it failed).
    fn advance(&mut self, key: SlotKey, events: &mut Vec<Event>) -> Option<Option<std::io::Error>> {
        let conn = self.conns.get_mut(key)?;
        if !conn.connected {
            if !conn.writable && !conn.readable {
                return None;
            }
            if let Ok(Some(error)) | Err(error) = conn.stream.take_error() {
                return Some(Some(error));
            }
            match conn.stream.peer_addr() {
                Ok(_) => conn.connected = true,
                Err(error) if error.kind() == ErrorKind::NotConnected => return None,
                Err(error) => return Some(Some(error)),
            }
            events.push(Event::Connected { conn: key.into() });
        }
        if let Some(error) = write_queued(conn, key, events) {
            return Some(Some(error));
        }
        read_some(conn, key, &mut self.read_buffer, &mut self.spare, events, &mut self.dirty)
    }
}

/// Writes queued buffers while the socket takes them.
fn write_queued(conn: &mut Conn, key: SlotKey, events: &mut Vec<Event>) -> Option<std::io::Error> {
    let mut sent = 0u64;
    while conn.writable {
        let Some(front) = conn.queued.front() else { break };
        match conn.stream.write(&front[conn.front_sent_bytes..]) {
            Ok(bytes) => {
                sent += bytes as u64;
                conn.front_sent_bytes += bytes;
                if conn.front_sent_bytes == front.len() {
                    conn.queued.pop_front();
                    conn.front_sent_bytes = 0;
                }
            }
            Err(error) if error.kind() == ErrorKind::WouldBlock => conn.writable = false,
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Some(error),
        }
    }
    if sent > 0 {
        events.push(Event::Sent { conn: key.into(), bytes: sent });
    }
    None
}

/// Reads until the socket is drained (or the per-poll limit, then later polls go on). A loan
/// takes one read, and reading stops there for this poll: the caller lends the next place.
fn read_some(
    conn: &mut Conn,
    key: SlotKey,
    buffer: &mut [u8],
    spare: &mut super::Spare,
    events: &mut Vec<Event>,
    dirty: &mut Vec<SlotKey>,
) -> Option<Option<std::io::Error>> {
    if !conn.receiving {
        return None;
    }
    for _ in 0..READS_PER_POLL_MAX {
        if !conn.readable {
            return None;
        }
        if let Some(mut lent) = conn.lent.take() {
            let place = &mut lent.buffer[lent.start..lent.start + lent.length];
            match conn.stream.read(place) {
                Ok(0) => return Some(None),
                Ok(bytes) => {
                    let (buffer, start) = (lent.buffer, lent.start);
                    events.push(Event::Filled { conn: key.into(), buffer, start, bytes });
                    // More may be waiting: a later poll reads it, once the caller has lent again
                    // (or not).
                    dirty.push(key);
                    return None;
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => {
                    conn.readable = false;
                    conn.lent = Some(lent);
                }
                Err(error) if error.kind() == ErrorKind::Interrupted => conn.lent = Some(lent),
                Err(error) => return Some(Some(error)),
            }
            continue;
        }
        match conn.stream.read(buffer) {
            Ok(0) => return Some(None),
            Ok(bytes) => events.push(Event::Received { conn: key.into(), bytes: spare.copy_of(&buffer[..bytes]) }),
            Err(error) if error.kind() == ErrorKind::WouldBlock => conn.readable = false,
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Some(Some(error)),
        }
    }
    if conn.readable {
        dirty.push(key);
    }
    None
}
