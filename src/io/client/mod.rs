//! The client-connection event loop: connect to an address, send byte buffers, receive bytes,
//! one timer per connection, a wake-up from other threads, close. Two backends behind one
//! interface: io_uring ([`uring`]) and mio/epoll ([`epoll`]). [`ClientLoop::new`] picks io_uring
//! unless it is unavailable (or `BackendChoice::Epoll` forces epoll) and logs the choice once.
//!
//! The loop moves bytes only; framing is the caller's (for HTTP, a sans-I/O client state machine
//! fed with each [`Event::Received`]). Every connection is one thread's: the loop is not `Send`,
//! its [`Waker`] is.
//!
//! ```no_run
//! use std::time::Duration;
//! use tessera::config::BackendChoice;
//! use tessera::io::client::{ClientConfig, ClientLoop, Event};
//!
//! let mut client = ClientLoop::new(BackendChoice::Auto, ClientConfig::default())?;
//! let conn = client.connect("127.0.0.1:7680".parse().unwrap())?;
//! client.send(conn, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n".to_vec())?;
//! client.set_timer(conn, Duration::from_secs(5))?;
//! let waker = client.waker(); // Send + Clone: `waker.wake()` from a verifier thread
//! let mut events = Vec::new();
//! loop {
//!     client.poll(&mut events, Some(Duration::from_millis(100)))?;
//!     for event in events.drain(..) {
//!         match event {
//!             Event::Connected { .. } | Event::Sent { .. } | Event::Woken => {}
//!             // Only after `client.receive_into(..)`: the lent buffer, back with its bytes.
//!             Event::Filled { buffer, .. } => drop(buffer),
//!             Event::Received { bytes, .. } => { /* feed the HTTP state machine */ }
//!             Event::Timer { conn } => client.close(conn),
//!             Event::Closed { error, .. } => return Ok(()),
//!         }
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod epoll;
pub mod uring;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Once;
use std::time::{Duration, Instant};

use crate::config::BackendChoice;
use crate::io::slots::SlotKey;
pub use crate::io::{choose_backend, Backend};

/// One connection of a [`ClientLoop`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    index: u32,
    generation: u32,
}

impl From<SlotKey> for ConnId {
    fn from(key: SlotKey) -> ConnId {
        ConnId { index: key.index, generation: key.generation }
    }
}

impl From<ConnId> for SlotKey {
    fn from(conn: ConnId) -> SlotKey {
        SlotKey { index: conn.index, generation: conn.generation }
    }
}

/// What the loop reports.
#[derive(Debug)]
pub enum Event {
    /// The connection is established; queued sends go out.
    Connected { conn: ConnId },
    /// Bytes arrived.
    Received { conn: ConnId, bytes: Vec<u8> },
    /// A receive into a lent buffer ([`ClientLoop::receive_into`]) took `bytes` bytes, written
    /// at `buffer[start..]`; the buffer is the caller's again.
    Filled { conn: ConnId, buffer: Vec<u8>, start: usize, bytes: usize },
    /// The kernel took this many more of the queued bytes.
    Sent { conn: ConnId, bytes: u64 },
    /// The connection's timer fired.
    Timer { conn: ConnId },
    /// The connection ended: by the peer (`error` is `None` at a clean end of stream), or by a
    /// failure (refused connect, reset). The id is dead from now on.
    Closed { conn: ConnId, error: Option<std::io::Error> },
    /// A [`Waker`] was used.
    Woken,
}

/// Received-byte buffers the caller handed back ([`ClientLoop::recycle`]), reused for the next
/// [`Event::Received`], so a busy connection does not allocate a buffer per receive.
#[derive(Debug, Default)]
pub(crate) struct Spare {
    buffers: Vec<Vec<u8>>,
}

/// Buffers kept for reuse at most (each up to `recv_buffer_bytes`).
const SPARE_BUFFERS_MAX: usize = 16;

impl Spare {
    /// `bytes` in a reused buffer when one is spare.
    pub(crate) fn copy_of(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut buffer = self.buffers.pop().unwrap_or_default();
        buffer.clear();
        buffer.extend_from_slice(bytes);
        buffer
    }

    /// A reused buffer when one is spare (its old bytes still in it), else an empty one.
    pub(crate) fn take(&mut self) -> Vec<u8> {
        self.buffers.pop().unwrap_or_default()
    }

    fn put(&mut self, buffer: Vec<u8>) {
        if self.buffers.len() < SPARE_BUFFERS_MAX {
            self.buffers.push(buffer);
        }
    }
}

/// A caller's buffer lent for one receive ([`ClientLoop::receive_into`]): at most `length`
/// bytes go to `buffer[start..]`.
#[derive(Debug)]
pub struct Lent {
    /// The caller's buffer; its bytes outside the place are never touched.
    pub buffer: Vec<u8>,
    /// Where in `buffer` the received bytes go.
    pub start: usize,
    /// Bytes the receive may write at most.
    pub length: usize,
}

/// Limits of a client loop.
#[derive(Debug, Clone, Copy)]
pub struct ClientConfig {
    /// Connections open at once at most.
    pub connections_max: usize,
    /// Size of each connection's receive buffer.
    pub recv_buffer_bytes: usize,
    /// io_uring submission queue entries.
    pub ring_entries: u32,
    /// Bytes a connection may have queued and not yet taken by the kernel.
    pub send_queued_bytes_max: u64,
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig {
            connections_max: 1024,
            recv_buffer_bytes: 64 * 1024,
            ring_entries: 256,
            send_queued_bytes_max: 16 * 1024 * 1024,
        }
    }
}

/// Why a client-loop call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("io_uring was required but is unavailable: {0}")]
    UringUnavailable(String),
    #[error("cannot set up the {backend} client loop: {source}")]
    Setup { backend: &'static str, source: std::io::Error },
    #[error("cannot open a connection to {address}: {source}")]
    Socket { address: SocketAddr, source: std::io::Error },
    #[error("all {0} client connections are in use")]
    Full(usize),
    #[error(
        "connection {conn:?} has {queued_bytes} bytes queued; {more_bytes} more would pass the limit of {limit_bytes}"
    )]
    SendQueueFull { conn: ConnId, queued_bytes: u64, more_bytes: u64, limit_bytes: u64 },
    #[error("connection {0:?} is closed")]
    Closed(ConnId),
    #[error("client loop wait failed: {0}")]
    Wait(std::io::Error),
}

/// Wakes a [`ClientLoop`] from another thread (it reports [`Event::Woken`]).
#[derive(Clone)]
pub enum Waker {
    Uring(crate::io::uring::wake::Waker),
    Epoll(std::sync::Arc<mio::Waker>),
}

impl Waker {
    /// Ends the loop's current (or next) wait.
    pub fn wake(&self) -> std::io::Result<()> {
        match self {
            Waker::Uring(waker) => waker.wake(),
            Waker::Epoll(waker) => waker.wake(),
        }
    }
}

/// The client event loop, on one of its backends.
pub enum ClientLoop {
    Uring(Box<uring::UringLoop>),
    Epoll(Box<epoll::EpollLoop>),
}

static BACKEND_LOGGED: Once = Once::new();

impl ClientLoop {
    /// A loop on the backend `choice` resolves to (logged once per process).
    pub fn new(choice: BackendChoice, config: ClientConfig) -> Result<ClientLoop, ClientError> {
        let (backend, why) = choose_backend(choice).map_err(ClientError::UringUnavailable)?;
        BACKEND_LOGGED
            .call_once(|| tracing::info!(backend = backend.name(), why = why.as_str(), "client loop backend"));
        Ok(match backend {
            Backend::Uring => ClientLoop::Uring(Box::new(uring::UringLoop::new(config)?)),
            Backend::Epoll => ClientLoop::Epoll(Box::new(epoll::EpollLoop::new(config)?)),
        })
    }

    /// The backend this loop runs on.
    pub fn backend(&self) -> Backend {
        match self {
            ClientLoop::Uring(_) => Backend::Uring,
            ClientLoop::Epoll(_) => Backend::Epoll,
        }
    }

    /// A handle that wakes this loop from any thread.
    pub fn waker(&self) -> Waker {
        match self {
            ClientLoop::Uring(inner) => inner.waker(),
            ClientLoop::Epoll(inner) => inner.waker(),
        }
    }

    /// Starts connecting to `address`; [`Event::Connected`] or [`Event::Closed`] follows.
    pub fn connect(&mut self, address: SocketAddr) -> Result<ConnId, ClientError> {
        match self {
            ClientLoop::Uring(inner) => inner.connect(address),
            ClientLoop::Epoll(inner) => inner.connect(address),
        }
    }

    /// Queues `bytes` to send, after everything queued before (also before the connect is done).
    pub fn send(&mut self, conn: ConnId, bytes: Vec<u8>) -> Result<(), ClientError> {
        self.send_shared(conn, Rc::new(bytes))
    }

    /// Like [`ClientLoop::send`] for bytes the caller keeps and sends again (a load generator's
    /// request): the loop holds its `Rc` until the kernel took them, then drops it, so the
    /// caller may reuse the buffer once it is the only owner (`Rc::get_mut`). No copy, no
    /// allocation.
    pub fn send_shared(&mut self, conn: ConnId, bytes: Rc<Vec<u8>>) -> Result<(), ClientError> {
        match self {
            ClientLoop::Uring(inner) => inner.send(conn, bytes),
            ClientLoop::Epoll(inner) => inner.send(conn, bytes),
        }
    }

    /// Stops (`false`) or resumes (`true`) receiving on the connection: while stopped, no
    /// [`Event::Received`] comes for it beyond a receive already in flight, and TCP flow control
    /// slows the peer (a relay whose reader is slower than its source holds bounded bytes).
    pub fn set_receiving(&mut self, conn: ConnId, receiving: bool) -> Result<(), ClientError> {
        match self {
            ClientLoop::Uring(inner) => inner.set_receiving(conn, receiving),
            ClientLoop::Epoll(inner) => inner.set_receiving(conn, receiving),
        }
    }

    /// Lends `buffer` for the connection's next receive: at most `length` bytes are written
    /// straight into `buffer[start..]` (no copy through the loop's own buffer), and
    /// [`Event::Filled`] hands it back. For a body of known length whose bytes have a place
    /// waiting. Call it with every event of a poll handled: bytes already received go out as
    /// [`Event::Received`] first, so a receive already in flight (io_uring) refuses the loan, as
    /// does a closed connection or one with a loan pending; the buffer comes back as the error.
    /// A connection that ends with the loan out drops the buffer.
    pub fn receive_into(&mut self, conn: ConnId, buffer: Vec<u8>, start: usize, length: usize) -> Result<(), Vec<u8>> {
        assert!(start.checked_add(length).is_some_and(|end| end <= buffer.len()), "a loan inside the buffer");
        if length == 0 {
            return Err(buffer);
        }
        let lent = Lent { buffer, start, length };
        let refused = match self {
            ClientLoop::Uring(inner) => inner.receive_into(conn, lent),
            ClientLoop::Epoll(inner) => inner.receive_into(conn, lent),
        };
        refused.map_err(|lent| lent.buffer)
    }

    /// Sets the connection's one timer to fire `after` from now (replacing any earlier setting).
    pub fn set_timer(&mut self, conn: ConnId, after: Duration) -> Result<(), ClientError> {
        match self {
            ClientLoop::Uring(inner) => inner.set_timer(conn, after),
            ClientLoop::Epoll(inner) => inner.set_timer(conn, after),
        }
    }

    /// Closes the connection; no event for it follows. Memory the kernel still uses is kept
    /// until its operations complete.
    pub fn close(&mut self, conn: ConnId) {
        match self {
            ClientLoop::Uring(inner) => inner.close(conn),
            ClientLoop::Epoll(inner) => inner.close(conn),
        }
    }

    /// Closes the connection with a reset (`SO_LINGER` 0) rather than a FIN: for a response
    /// abandoned mid-body, so that the peer stops sending at once. A graceful close there can
    /// leave the peer pushing into a zero window nobody reads until its own timeout.
    pub fn abort(&mut self, conn: ConnId) {
        match self {
            ClientLoop::Uring(inner) => inner.abort(conn),
            ClientLoop::Epoll(inner) => inner.abort(conn),
        }
    }

    /// Open connections (closing ones whose operations are still in flight included).
    pub fn connection_count(&self) -> usize {
        match self {
            ClientLoop::Uring(inner) => inner.connection_count(),
            ClientLoop::Epoll(inner) => inner.connection_count(),
        }
    }

    /// Hands back the bytes of an [`Event::Received`] once read, for the next receive to reuse.
    pub fn recycle(&mut self, bytes: Vec<u8>) {
        match self {
            ClientLoop::Uring(client) => client.spare.put(bytes),
            ClientLoop::Epoll(client) => client.spare.put(bytes),
        }
    }

    /// Waits up to `timeout` (`None`: until something happens) and appends what happened.
    pub fn poll(&mut self, events: &mut Vec<Event>, timeout: Option<Duration>) -> Result<(), ClientError> {
        match self {
            ClientLoop::Uring(inner) => inner.poll(events, timeout),
            ClientLoop::Epoll(inner) => inner.poll(events, timeout),
        }
    }
}

/// Refuses `more_bytes` on `conn` if its queue would pass `limit_bytes`; shared by both backends.
pub(crate) fn check_send_room(
    conn: ConnId,
    queued_bytes: u64,
    more_bytes: u64,
    limit_bytes: u64,
) -> Result<(), ClientError> {
    if queued_bytes.saturating_add(more_bytes) > limit_bytes {
        return Err(ClientError::SendQueueFull { conn, queued_bytes, more_bytes, limit_bytes });
    }
    Ok(())
}

/// Per-connection timers, nearest first; shared by both backends.
#[derive(Default)]
pub(crate) struct Timers {
    deadlines: BTreeSet<(Instant, ConnId)>,
}

impl Timers {
    /// Replaces `old` (the connection's previous deadline) with `at`.
    pub(crate) fn set(&mut self, conn: ConnId, old: Option<Instant>, at: Option<Instant>) {
        if let Some(old) = old {
            self.deadlines.remove(&(old, conn));
        }
        if let Some(at) = at {
            self.deadlines.insert((at, conn));
        }
    }

    /// The nearest deadline.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// Removes and returns the connections whose deadline is at or before `now`.
    pub(crate) fn expired(&mut self, now: Instant) -> Vec<ConnId> {
        let mut fired = Vec::new();
        while let Some(&(at, conn)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.remove(&(at, conn));
            fired.push(conn);
        }
        fired
    }

    /// How long a wait of at most `timeout` may last before the nearest deadline.
    pub(crate) fn wait(&self, timeout: Option<Duration>, now: Instant) -> Option<Duration> {
        let until_timer = self.next().map(|at| at.saturating_duration_since(now));
        match (timeout, until_timer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests;
