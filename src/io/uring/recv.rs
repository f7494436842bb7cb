//! Recv: one read at a time per connection, into a buffer the operation owns. The received bytes
//! can be read in place or taken with the buffer ([`RecvOp::take`]), so that a large receive is
//! handed on without a copy.

use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;

use io_uring::{opcode, types};

use crate::io::slots::SlotKey;
use crate::io::uring::op::{encode, leak_in_flight, OpKind, OpState, Submissions};

/// What a receive completion brought.
pub enum Received<'a> {
    /// Bytes arrived: the buffer's content until the next submit.
    Bytes(&'a [u8]),
    /// The peer closed its side.
    End,
    /// The receive failed with this errno.
    Failed(i32),
}

/// A connection's receive operation: its socket and its buffer.
pub struct RecvOp {
    socket: Rc<OwnedFd>,
    /// Empty while a receive is in flight (the kernel writes into its capacity); after a
    /// completion, the bytes received.
    buffer: Vec<u8>,
    size_bytes: usize,
    state: OpState,
}

impl RecvOp {
    /// A receive operation on `socket` with a buffer of `size_bytes`.
    pub fn new(socket: Rc<OwnedFd>, size_bytes: usize) -> RecvOp {
        let size_bytes = size_bytes.max(512);
        RecvOp { socket, buffer: Vec::with_capacity(size_bytes), size_bytes, state: OpState::Idle }
    }

    /// Whether the kernel may still write into the buffer.
    pub fn owns_buffer(&self) -> bool {
        self.state.owns_buffers()
    }

    /// Submits a receive for the connection at `key`.
    pub fn submit(&mut self, key: SlotKey, queue: &mut Submissions) {
        assert_eq!(self.state, OpState::Idle, "one receive at a time");
        self.buffer.clear();
        self.buffer.reserve(self.size_bytes);
        let length = self.buffer.capacity().min(u32::MAX as usize) as u32;
        let fd = types::Fd(self.socket.as_raw_fd());
        let entry = opcode::Recv::new(fd, self.buffer.as_mut_ptr(), length).build();
        // SAFETY: the buffer is a heap allocation of `length` bytes of capacity (written by the
        // kernel, read only after `complete` sets the length it reported), and the descriptor an
        // `Rc` this op owns; they are neither moved nor freed before the completion: `complete`
        // is the only way back to Idle, and dropping the op earlier leaks them (`Drop`).
        unsafe { queue.push(entry.user_data(encode(OpKind::Recv, key))) };
        self.state = OpState::InFlight;
    }

    /// The connection is closing: the result will be ignored, the buffer stays until completion.
    pub fn abandon(&mut self) {
        if self.state == OpState::InFlight {
            self.state = OpState::Abandoned;
        }
    }

    /// Handles the completion; the buffer is the owner's again.
    pub fn complete(&mut self, result: i32) -> Received<'_> {
        let abandoned = self.state == OpState::Abandoned;
        self.state = OpState::Idle;
        match result {
            _ if abandoned => Received::End,
            0 => Received::End,
            bytes if bytes > 0 => {
                let bytes = (bytes as usize).min(self.buffer.capacity());
                // SAFETY: the kernel wrote `bytes` bytes at the start of the buffer (a successful
                // recv's result, never more than the length submitted, its capacity).
                unsafe { self.buffer.set_len(bytes) };
                Received::Bytes(&self.buffer)
            }
            errno => Received::Failed(-errno),
        }
    }

    /// Takes the received bytes with their buffer, leaving `replacement` (any length and
    /// capacity: the next submit clears it and reserves the op's size) for the next receive.
    pub fn take(&mut self, replacement: Vec<u8>) -> Vec<u8> {
        assert_eq!(self.state, OpState::Idle, "the kernel still writes into the buffer");
        std::mem::replace(&mut self.buffer, replacement)
    }
}

impl Drop for RecvOp {
    fn drop(&mut self) {
        if self.state.owns_buffers() {
            leak_in_flight("recv", (std::mem::take(&mut self.buffer), self.socket.clone()));
        }
    }
}
