//! The io_uring driver: one ring per worker, completions in, [`Connection`] decisions out.
//!
//! Per connection at most one receive and one send are in flight (`crate::io::uring`); each
//! operation owns its descriptor and the memory it lends (the send holds `Rc`s of the responses
//! its iovecs point into), so the connection state may drop a response as soon as its bytes
//! count as sent. A closing connection's slot is kept until its operations are idle so that
//! their completions still find it; were it dropped early, its operations would leak their
//! memory rather than free it under the kernel. The completion queue is sized for every operation that can be in flight
//! (at most 16,384 entries: idle connections post none), and the kernel's overflow backlog (`IORING_FEAT_NODROP`)
//! is counted if it is ever used.
//!
//! Stored slices of `send_file_bytes_min` bytes or more leave by `sendfile`, called from the
//! worker thread on the (non-blocking) socket: the socket takes the store file's pages and
//! nothing is copied. io_uring has no sendfile, and its splice is always handed to a kernel
//! worker thread. When the socket's buffer is full, a one-shot poll ([`WritableOp`]) says when
//! to go on. Heads and smaller slices go by io_uring `sendmsg` (with `MSG_MORE` when a file's
//! pages follow), one operation per connection at a time, never both kinds at once.
//!
//! Receives draw from the worker's provided-buffer ring ([`BufRing`]): a connection waiting for
//! its next request holds no receive buffer, and the buffer a completion names goes back to the
//! ring as soon as its bytes are taken in. At the connection limit the longest-idle connections
//! are reclaimed ([`oldest_idle`]); the slot table has room for those still draining.

use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::cqueue;
use socket2::SockRef;

use crate::dataplane::connection::{oldest_idle, CloseReason, Connection, ConnectionLimits};
use crate::dataplane::handler::Handler;
use crate::dataplane::live::{Settings, SettingsWatch};
use crate::dataplane::worker::{
    limits_of, reclaim_batch, tick_of, FileSends, TurnMarks, WorkerContext, WorkerCounters, WorkerError,
};
use crate::io::slots::{SlotKey, Slots};
use crate::io::sys::send_file;
use crate::io::uring::accept::{AcceptOp, Accepted};
use crate::io::uring::buf_ring::{BufRing, Pooled, PooledRecvOp};
use crate::io::uring::op::{decode, OpKind};
use crate::io::uring::ring::{Completion, Ring};
use crate::io::uring::send::{SendOp, SendResult};
use crate::io::uring::wake::WakeOp;
use crate::io::uring::writable::WritableOp;
use crate::io::uring::{build_ring, describe_setup_error, detect};

/// After the shutdown grace period, how long cut-off connections get for their last completions
/// before their buffers are leaked rather than freed under the kernel.
const TEARDOWN_WAIT: Duration = Duration::from_secs(2);
/// Completions reaped per turn at most.
const COMPLETIONS_PER_TURN_MAX: usize = 4096;
/// Largest completion queue asked for (256 KiB of ring, which the kernel wants physically
/// contiguous). Idle connections post no completions, and a turn reaps at most
/// `COMPLETIONS_PER_TURN_MAX`; a rare excess waits in the kernel's overflow backlog (NODROP).
const COMPLETION_ENTRIES_MAX: usize = 16384;
/// The buffer group of the receive buffer ring.
const RECV_BUFFER_GROUP: u16 = 0;

struct Conn {
    /// Also held by the operations (each owns its descriptor); closed when the last goes.
    socket: Rc<OwnedFd>,
    state: Connection,
    recv: PooledRecvOp,
    send: SendOp,
    /// Waits for room in the socket after a `sendfile` could not hand over all it was asked.
    writable: WritableOp,
    closing: bool,
}

impl Conn {
    /// Whether the kernel may still touch any of this connection's memory, or post a completion
    /// for its slot.
    fn owns_buffers(&self) -> bool {
        self.recv.owns_buffer() || self.send.owns_buffers() || self.writable.in_flight()
    }
}

struct Worker {
    ring: Ring,
    accept: AcceptOp,
    /// Boxed: the table is allocated for the whole limit up front, and empty slots stay small.
    conns: Slots<Box<Conn>>,
    /// Open connections at most (the table has `reclaim_batch` more slots for closing ones).
    connections_max: usize,
    /// Idle connections reclaimed at once at the limit.
    reclaim_batch: usize,
    /// Connections in the table that are closing (waiting for their last completions).
    closing_count: usize,
    buffers: BufRing,
    handler: Handler,
    counters: WorkerCounters,
    limits: ConnectionLimits,
    iovecs_max: usize,
    send_bytes_max: u64,
    zero_copy_bytes_min: Option<u64>,
    zero_copy_pending_max: usize,
    /// When stored slices go by `sendfile`.
    file_sends: FileSends,
    /// Connections to advance this turn, in the order their completions came.
    dirty: Vec<SlotKey>,
    /// Which of them this turn has advanced already.
    advanced: TurnMarks,
    stopping: bool,
    accept_retry_at: Option<Instant>,
    /// A cache box's wake-up from its fill thread (answers to pending responses are waiting).
    wake: Option<WakeOp>,
    /// Reloaded settings not yet taken.
    watch: SettingsWatch,
}

/// Runs one worker on io_uring until the server stops. `ready` is called once, before serving.
pub fn run(mut context: WorkerContext, ready: impl FnOnce(Result<(), String>)) -> Result<(), WorkerError> {
    let index = context.index;
    let config = context.shared.config.clone();
    let connections_max = context.connections_max();
    let zero_copy_pending_max = config.send_zc_pending_max.max(1);
    // Per connection: a receive, a send, its zero-copy notifications; plus accepts and cancels.
    // Past the kernel's maximum, the overflow backlog (NODROP) keeps the rare excess.
    let notifications = if config.send_zc_bytes_min > 0 { zero_copy_pending_max } else { 0 };
    let reclaim_batch = reclaim_batch(connections_max);
    // The kernel wants at least as many completion entries as submission entries.
    let submission_entries = config.ring_entries.clamp(8, 32768);
    let completion_entries = ((connections_max + reclaim_batch) * (2 + notifications) + 256)
        .max(2 * submission_entries as usize)
        .next_power_of_two()
        .min(COMPLETION_ENTRIES_MAX);
    let ring = build_ring_fitting(submission_entries, completion_entries as u32);
    let ring = match ring {
        Ok(ring) => ring,
        Err(error) => {
            let message = describe_setup_error(error);
            ready(Err(message.clone()));
            return Err(WorkerError::Io { index, what: "io_uring setup", source: std::io::Error::other(message) });
        }
    };
    let support = match detect(&ring) {
        Ok(support) => support,
        Err(message) => {
            ready(Err(message.clone()));
            return Err(WorkerError::Io { index, what: "io_uring probe", source: std::io::Error::other(message) });
        }
    };
    let buffers = BufRing::new(&ring, RECV_BUFFER_GROUP, config.recv_buffers_per_worker, config.recv_buffer_bytes);
    let buffers = match buffers {
        Ok(buffers) => buffers,
        Err(error) => {
            let message = format!("io_uring provided-buffer ring (Linux 5.19+): {error}");
            ready(Err(message.clone()));
            return Err(WorkerError::Io {
                index,
                what: "io_uring buffer ring",
                source: std::io::Error::other(message),
            });
        }
    };
    let wake = match context.shared.upstream.as_ref().map(|link| (link, WakeOp::new())) {
        None => None,
        Some((link, Ok(op))) => {
            link.set_waker(index, crate::io::client::Waker::Uring(op.waker()));
            Some(op)
        }
        Some((_, Err(source))) => {
            ready(Err(format!("eventfd: {source}")));
            return Err(WorkerError::Io { index, what: "eventfd", source });
        }
    };
    let listener = context.listener.take().expect("a worker is started with its listener");
    let zero_copy_bytes_min = (support.zero_copy && config.send_zc_bytes_min > 0).then_some(config.send_zc_bytes_min);
    if index == 0 {
        tracing::info!(
            completion_entries,
            submission_entries = ring.params().sq_entries(),
            zero_copy = zero_copy_bytes_min.is_some(),
            zero_copy_bytes_min = config.send_zc_bytes_min,
            "io_uring rings ready"
        );
    }
    let mut worker = Worker {
        ring: Ring::new(ring),
        accept: AcceptOp::new(listener, true),
        conns: Slots::new(connections_max + reclaim_batch),
        connections_max,
        reclaim_batch,
        closing_count: 0,
        buffers,
        handler: context.handler(),
        counters: context.counters(),
        limits: context.limits(),
        iovecs_max: config.send_iovecs_max.clamp(1, 1024),
        send_bytes_max: config.send_bytes_per_turn_max as u64,
        zero_copy_bytes_min,
        zero_copy_pending_max,
        file_sends: context.file_sends(),
        dirty: Vec::new(),
        advanced: TurnMarks::new(connections_max + reclaim_batch),
        stopping: false,
        accept_retry_at: None,
        wake,
        watch: SettingsWatch::default(),
    };
    ready(Ok(()));
    let result = worker.serve(&context);
    worker.teardown();
    result.map_err(|source| WorkerError::Io { index, what: "io_uring_enter", source })
}

/// [`build_ring`], halving the completion queue (down to twice the submission queue) while the
/// kernel cannot find the contiguous memory for it.
fn build_ring_fitting(submission_entries: u32, mut completion_entries: u32) -> std::io::Result<io_uring::IoUring> {
    loop {
        match build_ring(submission_entries, completion_entries) {
            Err(error) if error.raw_os_error() == Some(libc::ENOMEM) && completion_entries > 2 * submission_entries => {
                completion_entries /= 2;
                tracing::warn!(
                    completion_entries,
                    "io_uring ring does not fit in memory; trying a smaller completion queue"
                );
            }
            built => return built,
        }
    }
}

impl Worker {
    fn serve(&mut self, context: &WorkerContext) -> std::io::Result<()> {
        let mut tick = context.tick();
        let mut next_tick = Instant::now() + tick;
        let mut grace_deadline = None;
        let mut completions = Vec::with_capacity(COMPLETIONS_PER_TURN_MAX);
        self.accept.arm(&mut self.ring.queue);
        if let Some(wake) = &mut self.wake {
            wake.arm(&mut self.ring.queue);
        }
        loop {
            let now = Instant::now();
            let wait = if self.dirty.is_empty() { next_tick.saturating_duration_since(now) } else { Duration::ZERO };
            self.submit_and_wait(wait)?;
            self.reap(&mut completions);
            let now = Instant::now();
            self.handler.set_now(now);
            // Accepts last: bytes that came in this batch make their connection busy before an
            // idle one is picked for reclaiming.
            completions.sort_by_key(|&(user_data, _, _)| matches!(decode(user_data), Some((OpKind::Accept, _))));
            for (user_data, result, flags) in completions.drain(..) {
                self.dispatch(user_data, result, flags, now);
            }
            if now >= next_tick {
                if let Some(settings) = self.watch.poll(&context.shared.live) {
                    tick = tick_of(&settings);
                    self.apply(context, settings);
                }
                next_tick = now + tick;
                for key in self.conns.keys() {
                    if let Some(conn) = self.conns.get_mut(key) {
                        conn.state.on_tick(now, &mut self.handler);
                        self.dirty.push(key);
                    }
                }
            }
            if !self.stopping && context.stopping() {
                self.stopping = true;
                grace_deadline = Some(context.grace_deadline(now));
                self.accept.cancel(&mut self.ring.queue);
                for key in self.conns.keys() {
                    if let Some(conn) = self.conns.get_mut(key) {
                        conn.state.begin_shutdown();
                        self.dirty.push(key);
                    }
                }
            }
            if !self.stopping && self.accept_retry_at.is_some_and(|at| now >= at) {
                self.accept_retry_at = None;
                self.accept.arm(&mut self.ring.queue);
            }
            self.advance_dirty();
            self.handler.flush_access_log();
            if let Some(deadline) = grace_deadline {
                let listener_closed = self.accept.close_when_idle();
                if self.conns.is_empty() && listener_closed {
                    return Ok(());
                }
                if now >= deadline {
                    return Ok(());
                }
            }
        }
    }

    fn submit_and_wait(&mut self, wait: Duration) -> std::io::Result<()> {
        self.ring.submit_and_wait(wait)
    }

    fn reap(&mut self, completions: &mut Vec<Completion>) {
        let count = self.ring.reap(completions, COMPLETIONS_PER_TURN_MAX);
        if count > 0 {
            self.counters.completion_overflow(u64::from(count));
            tracing::warn!(count, "io_uring completion queue overflowed (completions kept by the kernel)");
        }
    }

    fn dispatch(&mut self, user_data: u64, result: i32, flags: u32, now: Instant) {
        let Some((kind, key)) = decode(user_data) else {
            tracing::error!(user_data, "completion with unknown user_data");
            return;
        };
        match kind {
            OpKind::Accept => self.accepted(result, flags, now),
            OpKind::Cancel | OpKind::Connect | OpKind::Timeout => {}
            OpKind::Wake => self.woken(now),
            OpKind::Writable => {
                if let Some(conn) = self.conns.get_mut(key) {
                    conn.writable.complete();
                    self.dirty.push(key);
                }
            }
            OpKind::Recv => {
                let Some(conn) = self.conns.get_mut(key) else {
                    if let Some(bid) = cqueue::buffer_select(flags) {
                        self.buffers.recycle(bid);
                    }
                    return;
                };
                let (received, bid) = conn.recv.complete(result, flags);
                match received {
                    Pooled::Bytes { bid, length } => {
                        conn.state.receive(self.buffers.bytes(bid, length), now, &mut self.handler)
                    }
                    Pooled::End => conn.state.receive_eof(now, &mut self.handler),
                    // Every buffer was taken when the bytes came: `advance` receives again.
                    Pooled::NoBuffer => {}
                    Pooled::Failed(errno) => {
                        tracing::debug!(error = %std::io::Error::from_raw_os_error(errno), "receive failed");
                        conn.state.fail();
                    }
                }
                // The connection copied what it has not parsed yet: the buffer is free again.
                if let Some(bid) = bid {
                    self.buffers.recycle(bid);
                }
                self.dirty.push(key);
            }
            OpKind::Send | OpKind::SendZc => {
                let Some(conn) = self.conns.get_mut(key) else { return };
                if cqueue::notif(flags) {
                    conn.send.notified();
                } else {
                    match conn.send.complete(result, cqueue::more(flags)) {
                        SendResult::Sent(bytes) => {
                            self.counters.sent(bytes);
                            conn.state.sent(bytes, now);
                            // The send op keeps its own references to the bytes for as long as
                            // the kernel needs them (zero-copy: until the notification).
                            conn.state.release_through(u64::MAX, now, &mut self.handler);
                        }
                        SendResult::Failed(errno) => {
                            tracing::debug!(error = %std::io::Error::from_raw_os_error(errno), "send failed");
                            conn.state.fail();
                        }
                        SendResult::Ignored => {}
                    }
                }
                self.dirty.push(key);
            }
        }
    }

    /// The fill thread answered pending responses: complete them and re-arm the wake-up.
    fn woken(&mut self, now: Instant) {
        let Some(wake) = &mut self.wake else { return };
        wake.complete();
        wake.arm(&mut self.ring.queue);
        for token in self.handler.take_filled() {
            let Some(conn) = self.conns.get_mut(token.connection) else {
                self.handler.forget_response(token);
                continue;
            };
            self.handler.deliver(token, &mut conn.state, now);
            self.dirty.push(token.connection);
        }
    }

    fn accepted(&mut self, result: i32, flags: u32, now: Instant) {
        match self.accept.complete(result, flags) {
            Accepted::Connection(stream) => {
                if !self.stopping && self.conns.len() - self.closing_count >= self.connections_max {
                    self.reclaim_idle();
                }
                if self.stopping
                    || self.conns.len() - self.closing_count >= self.connections_max
                    || self.conns.is_full()
                {
                    self.counters.refused();
                    drop(stream);
                } else if self.file_sends.enabled() && stream.set_nonblocking(true).is_err() {
                    // `sendfile` on a blocking socket would stall the worker: refuse instead.
                    self.counters.refused();
                    drop(stream);
                } else {
                    let _ = stream.set_nodelay(true);
                    let peer = if self.handler.wants_peers() { stream.peer_addr().ok() } else { None };
                    let (limits, iovecs) = (self.limits, self.iovecs_max);
                    let socket = Rc::new(OwnedFd::from(stream));
                    let key = self
                        .conns
                        .insert_with(|key| {
                            Box::new(Conn {
                                recv: PooledRecvOp::new(socket.clone()),
                                send: SendOp::new(socket.clone(), iovecs),
                                writable: WritableOp::new(socket.clone()),
                                socket,
                                state: Connection::new(limits, key, now),
                                closing: false,
                            })
                        })
                        .expect("checked not full");
                    if let Some(peer) = peer {
                        self.handler.opened(key, peer);
                    }
                    self.counters.opened();
                    self.dirty.push(key);
                }
            }
            Accepted::Failed(errno) => {
                tracing::warn!(error = %std::io::Error::from_raw_os_error(errno), "accept failed");
                // EMFILE and friends: retry on a later turn instead of spinning.
                self.accept_retry_at = Some(now + Duration::from_millis(10));
                return;
            }
            Accepted::Nothing => {}
        }
        if !self.stopping && self.accept_retry_at.is_none() {
            self.accept.arm(&mut self.ring.queue);
        }
    }

    /// Takes on reloaded settings: open connections get the new limits too (a send in flight
    /// keeps the per-turn bound it was submitted with).
    fn apply(&mut self, context: &WorkerContext, settings: Arc<Settings>) {
        self.limits = limits_of(&settings);
        self.send_bytes_max = settings.serve.send_bytes_per_turn_max as u64;
        self.file_sends.bytes_per_turn_max = settings.serve.send_file_bytes_per_turn_max as u64;
        self.connections_max = context.connections_live_max(&settings);
        self.handler.apply(settings);
        let wants_peers = self.handler.wants_peers();
        for key in self.conns.keys() {
            let Some(conn) = self.conns.get_mut(key) else { continue };
            conn.state.set_limits(self.limits);
            if let (true, Ok(Some(peer))) =
                (wants_peers, SockRef::from(&*conn.socket).peer_addr().map(|a| a.as_socket()))
            {
                self.handler.opened(key, peer);
            }
        }
    }

    /// At the connection limit: closes the longest-idle connections to make room.
    fn reclaim_idle(&mut self) {
        let open = self.conns.iter().filter(|(_, conn)| !conn.closing).map(|(key, conn)| (key, &conn.state));
        for key in oldest_idle(open, self.reclaim_batch) {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.state.reclaim();
                self.begin_close(key, CloseReason::Reclaimed);
            }
        }
    }

    /// Advances every connection named this turn, once each, in the order their events came.
    fn advance_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        self.advanced.next_turn();
        let now = Instant::now();
        for key in dirty.drain(..) {
            if self.advanced.first_this_turn(key) {
                self.advance(key, now);
            }
        }
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    /// Starts the next send and receive a connection needs, or closes it.
    fn advance(&mut self, key: SlotKey, now: Instant) {
        let open = self.conns.len() - self.closing_count;
        let Some(conn) = self.conns.get_mut(key) else { return };
        // Responses given up (release their fills) or with room again (append what waits).
        while let Some(event) = conn.state.poll_event() {
            self.handler.connection_event(event, &mut conn.state, now);
        }
        if !conn.closing {
            if let Some(reason) = conn.state.close_reason() {
                self.begin_close(key, reason);
            }
        }
        let Some(conn) = self.conns.get_mut(key) else { return };
        if conn.closing {
            if !conn.owns_buffers() {
                // Every completion and notification is in: the kernel holds no pointer into the
                // slot any more, so the socket, buffers and pinned pieces can go.
                self.conns.remove(key);
                self.closing_count -= 1;
            }
            return;
        }
        if conn.send.is_idle()
            && conn.writable.is_idle()
            && conn.state.has_unsent()
            && conn.send.notifications_pending() < self.zero_copy_pending_max
        {
            let file_bytes_min = self.file_sends.bytes_min_now(open);
            let bytes_max = self.file_sends.bytes_per_turn(self.send_bytes_max, file_bytes_min);
            if let Some(range) = conn.state.front_file(file_bytes_min) {
                let length = range.length.min(bytes_max);
                match send_file(&*conn.socket, range.file, range.offset, length as usize) {
                    Ok(0) => conn.state.fail(),
                    Ok(bytes) => {
                        self.counters.file_send();
                        self.counters.sent(bytes as u64);
                        conn.state.sent(bytes as u64, now);
                        // The socket took the pages themselves: the store never rewrites a
                        // slot's pages in place, so the guards may go.
                        conn.state.release_through(u64::MAX, now, &mut self.handler);
                        if (bytes as u64) < length {
                            conn.writable.arm(key, &mut self.ring.queue);
                        }
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                        conn.writable.arm(key, &mut self.ring.queue)
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(error) => {
                        tracing::debug!(%error, "sendfile failed");
                        conn.state.fail();
                    }
                }
                // More to send (the next turn: one send per connection per turn), or a failure
                // to act on.
                if conn.writable.is_idle() {
                    self.dirty.push(key);
                }
            } else {
                let parts = conn.state.unsent_parts(conn.send.iovecs_max());
                conn.send.set_bytes_max(bytes_max);
                let (_, zero_copy) =
                    conn.send.submit(key, parts, self.zero_copy_bytes_min, file_bytes_min, &mut self.ring.queue);
                if zero_copy {
                    self.counters.zero_copy_send();
                }
            }
        }
        if !conn.recv.owns_buffer() && conn.state.wants_read() {
            conn.recv.submit(key, &self.buffers, &mut self.ring.queue);
        }
    }

    /// Shuts the socket down so in-flight operations complete promptly; the slot is freed when
    /// they have.
    fn begin_close(&mut self, key: SlotKey, reason: CloseReason) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        conn.closing = true;
        self.closing_count += 1;
        self.handler.closed(key);
        conn.recv.abandon();
        conn.send.abandon();
        conn.writable.abandon();
        // Queued bytes still go out before the FIN; a pending receive completes at once.
        let _ = SockRef::from(&*conn.socket).shutdown(Shutdown::Both);
        self.counters.closed(reason);
        self.dirty.push(key);
    }

    /// After serving: cut every connection, wait (bounded) for their completions, and leak the
    /// buffers of any the kernel still holds rather than free memory under it.
    fn teardown(&mut self) {
        self.accept.cancel(&mut self.ring.queue);
        for key in self.conns.keys() {
            if self.conns.get_mut(key).is_some_and(|c| !c.closing) {
                self.begin_close(key, CloseReason::Shutdown);
            }
        }
        let deadline = Instant::now() + TEARDOWN_WAIT;
        let mut completions = Vec::new();
        loop {
            let now = Instant::now();
            self.advance_dirty();
            for key in self.conns.keys() {
                self.advance(key, now);
            }
            let listener_closed = self.accept.close_when_idle();
            if (self.conns.is_empty() && listener_closed) || now >= deadline {
                break;
            }
            if self.submit_and_wait(Duration::from_millis(10)).is_err() {
                break;
            }
            self.reap(&mut completions);
            for (user_data, result, flags) in completions.drain(..) {
                self.dispatch(user_data, result, flags, now);
            }
        }
        let receives_idle = self.conns.is_empty();
        if !receives_idle {
            tracing::warn!(connections = self.conns.len(), "operations still in flight at exit; leaking their buffers");
            std::mem::forget(std::mem::replace(&mut self.conns, Slots::new(1)));
        }
        // Receives still in flight could yet write into a buffer: then the ring is leaked.
        self.buffers.unregister(self.ring.inner(), receives_idle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Heap bytes malloc adds to each allocation (glibc: one size word, 16-byte granules).
    const MALLOC_OVERHEAD_BYTES: usize = 16;

    #[test]
    fn an_idle_connection_costs_under_1_kib() {
        // What an idle connection holds in user space: its boxed state, the send's message
        // header, the shared descriptor's `Rc` box, and its slot in the table (box pointer,
        // generation, free-list entry, its last-advanced mark). No receive buffer, iovecs, input
        // or queue while idle.
        let boxed = |bytes: usize| (bytes + MALLOC_OVERHEAD_BYTES).next_multiple_of(16);
        let bytes = boxed(std::mem::size_of::<Conn>())
            + boxed(std::mem::size_of::<libc::msghdr>())
            + boxed(2 * std::mem::size_of::<usize>() + std::mem::size_of::<OwnedFd>())
            + std::mem::size_of::<Option<Box<Conn>>>()
            + 2 * std::mem::size_of::<u32>()
            + std::mem::size_of::<(u32, u64)>();
        assert!(bytes <= 1024, "an idle io_uring connection holds {bytes} bytes");
    }
}
