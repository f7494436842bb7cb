//! Accept: multishot where the kernel has it (5.19+), single-shot re-armed otherwise.

use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};

use io_uring::{cqueue, opcode, types};

use crate::io::slots::SlotKey;
use crate::io::uring::op::{encode, OpKind, OpState, Submissions};

/// The listener's `user_data` key (no connection slot).
const LISTENER_KEY: SlotKey = SlotKey { index: 0, generation: 0 };

/// What one accept completion brought.
pub enum Accepted {
    /// A new connection.
    Connection(TcpStream),
    /// Accept failed with this errno; it is re-armed on the next turn.
    Failed(i32),
    /// The operation ended (cancelled, or multishot fell back to single-shot): nothing accepted.
    Nothing,
}

/// The worker's accept operation on its own listener.
pub struct AcceptOp {
    listener: Option<TcpListener>,
    state: OpState,
    multishot: bool,
    accepted_any: bool,
}

impl AcceptOp {
    /// Accepts on `listener`, multishot if `multishot`.
    pub fn new(listener: TcpListener, multishot: bool) -> AcceptOp {
        AcceptOp { listener: Some(listener), state: OpState::Idle, multishot, accepted_any: false }
    }

    /// `user_data` of accept completions.
    pub fn user_data() -> u64 {
        encode(OpKind::Accept, LISTENER_KEY)
    }

    /// Submits the accept unless one is in flight or the listener is closed.
    pub fn arm(&mut self, queue: &mut Submissions) {
        let Some(listener) = &self.listener else { return };
        if self.state != OpState::Idle {
            return;
        }
        let fd = types::Fd(listener.as_raw_fd());
        let entry = if self.multishot {
            opcode::AcceptMulti::new(fd).flags(libc::SOCK_CLOEXEC).build()
        } else {
            opcode::Accept::new(fd, std::ptr::null_mut(), std::ptr::null_mut()).flags(libc::SOCK_CLOEXEC).build()
        };
        // SAFETY: accept lends no memory (null address pointers); the listener fd stays open
        // until the operation is Idle again (`close_when_idle`).
        unsafe { queue.push(entry.user_data(Self::user_data())) };
        self.state = OpState::InFlight;
    }

    /// Handles one completion.
    pub fn complete(&mut self, result: i32, flags: u32) -> Accepted {
        if !cqueue::more(flags) {
            self.state = OpState::Idle;
        }
        if result >= 0 {
            self.accepted_any = true;
            // SAFETY: a non-negative accept result is a new descriptor that nothing else owns.
            return Accepted::Connection(unsafe { TcpStream::from_raw_fd(result) });
        }
        let errno = -result;
        if errno == libc::EINVAL && self.multishot && !self.accepted_any {
            // Kernels before 5.19 refuse the multishot flag: accept one at a time.
            tracing::info!("multishot accept unavailable; using single-shot accept");
            self.multishot = false;
            return Accepted::Nothing;
        }
        if errno == libc::ECANCELED || self.state == OpState::Abandoned {
            return Accepted::Nothing;
        }
        Accepted::Failed(errno)
    }

    /// Stops accepting: cancels the in-flight accept (its completion still arrives).
    pub fn cancel(&mut self, queue: &mut Submissions) {
        if self.state == OpState::InFlight {
            crate::io::uring::cancel::cancel(Self::user_data(), queue);
            self.state = OpState::Abandoned;
        }
        self.close_when_idle();
    }

    /// Closes the listener once no accept is in flight; returns whether it is closed.
    pub fn close_when_idle(&mut self) -> bool {
        if self.state == OpState::Idle {
            self.listener = None;
        }
        self.listener.is_none()
    }
}
