//! The io_uring driver: one ring per worker, completions in, [`Connection`] decisions out.
//!
//! Per connection at most one receive and one send are in flight; their buffers (the receive
//! buffer, the iovec array and message header, and the queued responses the iovecs point into)
//! live in the connection's slot, which is freed only once every operation has completed and
//! every zero-copy notification has arrived — whether the connection closed, failed or was cut
//! off by shutdown. The completion queue is sized for every operation that can be in flight, and
//! the kernel's overflow backlog (`IORING_FEAT_NODROP`) is counted if it is ever used.

mod accept;
mod cancel;
mod op;
mod recv;
mod send;
mod send_zc;

use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, types, IoUring, Probe};

use crate::dataplane::connection::{CloseReason, Connection, ConnectionLimits};
use crate::dataplane::handler::Handler;
use crate::dataplane::slots::{SlotKey, Slots};
use crate::dataplane::worker::{WorkerContext, WorkerError};
use accept::{AcceptOp, Accepted};
use op::{decode, OpKind, Submissions};
use recv::{Received, RecvOp};
use send::{SendOp, SendResult};

/// After the shutdown grace period, how long cut-off connections get for their last completions
/// before their buffers are leaked rather than freed under the kernel.
const TEARDOWN_WAIT: Duration = Duration::from_secs(2);
/// Completions reaped per turn at most.
const COMPLETIONS_PER_TURN_MAX: usize = 4096;

/// What this kernel's io_uring offers the driver.
#[derive(Debug, Clone, Copy)]
struct Support {
    zero_copy: bool,
}

fn detect(ring: &IoUring) -> Result<Support, String> {
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe).map_err(|e| format!("IORING_REGISTER_PROBE failed: {e}"))?;
    for (code, name) in [
        (opcode::Accept::CODE, "accept"),
        (opcode::Recv::CODE, "recv"),
        (opcode::SendMsg::CODE, "sendmsg"),
        (opcode::AsyncCancel::CODE, "async_cancel"),
    ] {
        if !probe.is_supported(code) {
            return Err(format!("the kernel's io_uring lacks the {name} operation"));
        }
    }
    if !ring.params().is_feature_ext_arg() || !ring.params().is_feature_nodrop() {
        return Err("the kernel's io_uring lacks EXT_ARG or NODROP (Linux 5.11+ needed)".into());
    }
    Ok(Support { zero_copy: probe.is_supported(opcode::SendMsgZc::CODE) })
}

/// Whether io_uring can run here; the reason when it cannot.
pub fn probe() -> Result<(), String> {
    if let Ok(text) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        if text.trim() == "2" {
            return Err("/proc/sys/kernel/io_uring_disabled is 2".into());
        }
    }
    let ring = IoUring::new(8).map_err(describe_setup_error)?;
    detect(&ring).map(|_| ())
}

/// Whether this kernel's io_uring has zero-copy `sendmsg` (Linux 6.1+).
pub fn zero_copy_supported() -> bool {
    IoUring::new(8).ok().and_then(|ring| detect(&ring).ok()).is_some_and(|support| support.zero_copy)
}

fn describe_setup_error(error: std::io::Error) -> String {
    match error.raw_os_error() {
        Some(libc::EPERM) => "io_uring_setup: permission denied (seccomp policy or io_uring_disabled)".into(),
        Some(libc::ENOSYS) => "io_uring_setup: the kernel has no io_uring".into(),
        _ => format!("io_uring_setup: {error}"),
    }
}

/// A ring with `submission_entries` and `completion_entries`. Only this thread submits and reaps,
/// so task work is deferred to our own `io_uring_enter` (6.1+); older kernels get a plain ring.
fn build_ring(submission_entries: u32, completion_entries: u32) -> std::io::Result<IoUring> {
    let tuned = IoUring::builder()
        .setup_cqsize(completion_entries)
        .setup_clamp()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(submission_entries);
    match tuned {
        Ok(ring) => Ok(ring),
        Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
            IoUring::builder().setup_cqsize(completion_entries).setup_clamp().build(submission_entries)
        }
        Err(error) => Err(error),
    }
}

struct Conn {
    stream: TcpStream,
    state: Connection,
    recv: RecvOp,
    send: SendOp,
    closing: bool,
}

impl Conn {
    /// Whether the kernel may still touch any of this connection's memory.
    fn owns_buffers(&self) -> bool {
        self.recv.owns_buffer() || self.send.owns_buffers()
    }
}

struct Worker {
    ring: IoUring,
    queue: Submissions,
    accept: AcceptOp,
    conns: Slots<Conn>,
    handler: Handler,
    limits: ConnectionLimits,
    recv_buffer_bytes: usize,
    iovecs_max: usize,
    zero_copy_bytes_min: Option<u64>,
    zero_copy_pending_max: usize,
    dirty: Vec<SlotKey>,
    stopping: bool,
    accept_retry_at: Option<Instant>,
    overflow_seen: u32,
}

/// Runs one worker on io_uring until the server stops. `ready` is called once, before serving.
pub fn run(mut context: WorkerContext, ready: impl FnOnce(Result<(), String>)) -> Result<(), WorkerError> {
    let index = context.index;
    let config = context.shared.config.clone();
    let connections_max = context.connections_max();
    let zero_copy_pending_max = config.send_zc_pending_max.max(1);
    // Per connection: a receive, a send, its zero-copy notifications; plus accepts and cancels.
    let completion_entries = (connections_max * (2 + zero_copy_pending_max) + 256).next_power_of_two();
    let ring = build_ring(config.ring_entries.max(8), completion_entries.min(u32::MAX as usize) as u32);
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
        ring,
        queue: Submissions::default(),
        accept: AcceptOp::new(listener, true),
        conns: Slots::new(connections_max),
        handler: context.handler(),
        limits: context.limits(),
        recv_buffer_bytes: config.recv_buffer_bytes,
        iovecs_max: config.send_iovecs_max.clamp(1, 1024),
        zero_copy_bytes_min,
        zero_copy_pending_max,
        dirty: Vec::new(),
        stopping: false,
        accept_retry_at: None,
        overflow_seen: 0,
    };
    ready(Ok(()));
    let result = worker.serve(&context);
    worker.teardown();
    result.map_err(|source| WorkerError::Io { index, what: "io_uring_enter", source })
}

impl Worker {
    fn serve(&mut self, context: &WorkerContext) -> std::io::Result<()> {
        let tick = context.tick();
        let mut next_tick = Instant::now() + tick;
        let mut grace_deadline = None;
        let mut completions = Vec::with_capacity(COMPLETIONS_PER_TURN_MAX);
        self.accept.arm(&mut self.queue);
        loop {
            let now = Instant::now();
            let wait = if self.dirty.is_empty() { next_tick.saturating_duration_since(now) } else { Duration::ZERO };
            self.submit_and_wait(wait)?;
            self.reap(&mut completions);
            let now = Instant::now();
            self.handler.set_now(now);
            for (user_data, result, flags) in completions.drain(..) {
                self.dispatch(user_data, result, flags, now);
            }
            if now >= next_tick {
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
                self.accept.cancel(&mut self.queue);
                for key in self.conns.keys() {
                    if let Some(conn) = self.conns.get_mut(key) {
                        conn.state.begin_shutdown();
                        self.dirty.push(key);
                    }
                }
            }
            if !self.stopping && self.accept_retry_at.is_some_and(|at| now >= at) {
                self.accept_retry_at = None;
                self.accept.arm(&mut self.queue);
            }
            self.advance_dirty();
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

    /// Pushes queued entries to the kernel and waits up to `wait` for a completion.
    fn submit_and_wait(&mut self, wait: Duration) -> std::io::Result<()> {
        loop {
            self.queue.flush(&mut self.ring);
            if self.queue.is_empty() {
                break;
            }
            // The submission queue is full: hand it to the kernel and refill.
            match self.ring.submit() {
                Ok(_) => {}
                Err(error) if error.raw_os_error() == Some(libc::EBUSY) => break,
                Err(error) if error.raw_os_error() == Some(libc::EINTR) => {}
                Err(error) => return Err(error),
            }
        }
        let wait = if self.queue.is_empty() { wait } else { Duration::ZERO };
        let timespec = types::Timespec::from(wait);
        let args = types::SubmitArgs::new().timespec(&timespec);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(error) if matches!(error.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY)) => Ok(()),
            Err(error) => Err(error),
        }
    }

    fn reap(&mut self, completions: &mut Vec<(u64, i32, u32)>) {
        let mut queue = self.ring.completion();
        let overflow = queue.overflow();
        for entry in queue.by_ref().take(COMPLETIONS_PER_TURN_MAX) {
            completions.push((entry.user_data(), entry.result(), entry.flags()));
        }
        drop(queue);
        if overflow != self.overflow_seen {
            let count = overflow.wrapping_sub(self.overflow_seen);
            self.overflow_seen = overflow;
            self.handler.metrics().completion_overflow(u64::from(count));
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
            OpKind::Cancel => {}
            OpKind::Recv => {
                let Some(conn) = self.conns.get_mut(key) else { return };
                match conn.recv.complete(result) {
                    Received::Bytes(bytes) => conn.state.receive(bytes, now, &mut self.handler),
                    Received::End => conn.state.receive_eof(now, &mut self.handler),
                    Received::Failed(errno) => {
                        tracing::debug!(error = %std::io::Error::from_raw_os_error(errno), "receive failed");
                        conn.state.fail();
                    }
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
                            self.handler.metrics().sent(bytes);
                            conn.state.sent(bytes, now);
                        }
                        SendResult::Failed(errno) => {
                            tracing::debug!(error = %std::io::Error::from_raw_os_error(errno), "send failed");
                            conn.state.fail();
                        }
                        SendResult::Ignored => {}
                    }
                }
                if let Some(seq) = conn.send.releasable() {
                    conn.state.release_through(seq, now, &mut self.handler);
                }
                self.dirty.push(key);
            }
        }
    }

    fn accepted(&mut self, result: i32, flags: u32, now: Instant) {
        match self.accept.complete(result, flags) {
            Accepted::Connection(stream) => {
                if self.stopping || self.conns.is_full() {
                    self.handler.metrics().refused();
                    drop(stream);
                } else {
                    let _ = stream.set_nodelay(true);
                    let (limits, recv_bytes, iovecs) = (self.limits, self.recv_buffer_bytes, self.iovecs_max);
                    let key = self
                        .conns
                        .insert_with(|key| Conn {
                            stream,
                            state: Connection::new(limits, key, now),
                            recv: RecvOp::new(recv_bytes),
                            send: SendOp::new(iovecs),
                            closing: false,
                        })
                        .expect("checked not full");
                    self.handler.metrics().opened();
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
            self.accept.arm(&mut self.queue);
        }
    }

    fn advance_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable_by_key(|k| (k.index, k.generation));
        dirty.dedup();
        for key in dirty.drain(..) {
            self.advance(key);
        }
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    /// Starts the next send and receive a connection needs, or closes it.
    fn advance(&mut self, key: SlotKey) {
        let Some(conn) = self.conns.get_mut(key) else { return };
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
            }
            return;
        }
        let fd = conn.stream.as_raw_fd();
        if conn.send.is_idle()
            && conn.state.has_unsent()
            && conn.send.notifications_pending() < self.zero_copy_pending_max
        {
            let mut slices = Vec::with_capacity(conn.send.iovecs_max().min(16));
            let plan = conn.state.fill_send(&mut slices, conn.send.iovecs_max());
            let zero_copy = self.zero_copy_bytes_min.is_some_and(|min| plan.bytes >= min);
            if zero_copy {
                self.handler.metrics().zero_copy_send();
            }
            // SAFETY: the slices point into responses queued on `conn.state`; they are released
            // (and their pins dropped) only through `release_through(seq)` with `seq` from
            // `send.releasable()`, which covers this send only after its completion and every
            // pending notification; the slot itself is not freed while `owns_buffers()`.
            unsafe { conn.send.submit(fd, key, &slices, plan.through_seq, zero_copy, &mut self.queue) };
        }
        if !conn.recv.owns_buffer() && conn.state.wants_read() {
            conn.recv.submit(fd, key, &mut self.queue);
        }
    }

    /// Shuts the socket down so in-flight operations complete promptly; the slot is freed when
    /// they have.
    fn begin_close(&mut self, key: SlotKey, reason: CloseReason) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        conn.closing = true;
        conn.recv.abandon();
        conn.send.abandon();
        // Queued bytes still go out before the FIN; a pending receive completes at once.
        let _ = conn.stream.shutdown(Shutdown::Both);
        self.handler.metrics().closed(reason);
        self.dirty.push(key);
    }

    /// After serving: cut every connection, wait (bounded) for their completions, and leak the
    /// buffers of any the kernel still holds rather than free memory under it.
    fn teardown(&mut self) {
        self.accept.cancel(&mut self.queue);
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
                self.advance(key);
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
        if !self.conns.is_empty() {
            tracing::warn!(connections = self.conns.len(), "operations still in flight at exit; leaking their buffers");
            std::mem::forget(std::mem::replace(&mut self.conns, Slots::new(1)));
        }
    }
}
