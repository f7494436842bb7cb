//! Writable: a one-shot `POLLOUT` poll on a connection's socket. The data plane sends stored
//! slices with `sendfile` from the worker thread (io_uring's splice would hand each to a kernel
//! worker thread); when the socket's buffer is full, this operation says when it has room again.
//! It lends no memory, only its descriptor, which it shares with the connection's other
//! operations.

use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;

use io_uring::{opcode, types};

use crate::io::slots::SlotKey;
use crate::io::uring::op::{encode, OpKind, OpState, Submissions};

/// A connection's wait for room in its socket's send buffer.
pub struct WritableOp {
    socket: Rc<OwnedFd>,
    state: OpState,
}

impl WritableOp {
    /// The poll operation of `socket`.
    pub fn new(socket: Rc<OwnedFd>) -> WritableOp {
        WritableOp { socket, state: OpState::Idle }
    }

    /// Whether no poll is in flight.
    pub fn is_idle(&self) -> bool {
        self.state == OpState::Idle
    }

    /// Whether a completion is still to come (the connection's slot must wait for it).
    pub fn in_flight(&self) -> bool {
        self.state.owns_buffers()
    }

    /// Asks for a completion once the socket of the connection at `key` is writable (or has
    /// failed: the next send says how).
    pub fn arm(&mut self, key: SlotKey, queue: &mut Submissions) {
        assert_eq!(self.state, OpState::Idle, "one poll at a time");
        let entry = opcode::PollAdd::new(types::Fd(self.socket.as_raw_fd()), libc::POLLOUT as u32)
            .build()
            .user_data(encode(OpKind::Writable, key));
        // SAFETY: a poll lends the kernel no memory; the descriptor is kept open by `socket`.
        unsafe { queue.push(entry) };
        self.state = OpState::InFlight;
    }

    /// The connection is closing: the completion will be ignored (shutting the socket down makes
    /// it come at once).
    pub fn abandon(&mut self) {
        if self.state == OpState::InFlight {
            self.state = OpState::Abandoned;
        }
    }

    /// Handles the completion; returns whether the connection still wants it.
    pub fn complete(&mut self) -> bool {
        let wanted = self.state == OpState::InFlight;
        self.state = OpState::Idle;
        wanted
    }
}
