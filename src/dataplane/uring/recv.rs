//! Recv: one read at a time per connection, into a buffer the connection slot owns.

use io_uring::{opcode, types};

use crate::dataplane::slots::SlotKey;
use crate::dataplane::uring::op::{encode, OpKind, OpState, Submissions};

/// What a receive completion brought.
pub enum Received<'a> {
    Bytes(&'a [u8]),
    /// The peer closed its side.
    End,
    /// The receive failed with this errno.
    Failed(i32),
}

/// A connection's receive operation and its buffer.
pub struct RecvOp {
    buffer: Box<[u8]>,
    state: OpState,
}

impl RecvOp {
    /// A receive operation with a buffer of `size_bytes`.
    pub fn new(size_bytes: usize) -> RecvOp {
        RecvOp { buffer: vec![0; size_bytes.max(512)].into_boxed_slice(), state: OpState::Idle }
    }

    /// Whether the kernel may still write into the buffer.
    pub fn owns_buffer(&self) -> bool {
        self.state.owns_buffers()
    }

    /// Submits a receive on `fd` for the connection at `key`.
    pub fn submit(&mut self, fd: i32, key: SlotKey, queue: &mut Submissions) {
        assert_eq!(self.state, OpState::Idle, "one receive at a time");
        let length = self.buffer.len().min(u32::MAX as usize) as u32;
        let entry = opcode::Recv::new(types::Fd(fd), self.buffer.as_mut_ptr(), length).build();
        // SAFETY: the buffer is a heap allocation owned by this op, which lives in a connection
        // slot that is not freed while the op owns the buffer (state != Idle, i.e. until the
        // completion is reaped); nothing else reads or writes the buffer meanwhile.
        unsafe { queue.push(entry.user_data(encode(OpKind::Recv, key))) };
        self.state = OpState::InFlight;
    }

    /// The connection is closing: the result will be ignored, the buffer stays until completion.
    pub fn abandon(&mut self) {
        if self.state == OpState::InFlight {
            self.state = OpState::Abandoned;
        }
    }

    /// Handles the completion; the buffer is the driver's again.
    pub fn complete(&mut self, result: i32) -> Received<'_> {
        let abandoned = self.state == OpState::Abandoned;
        self.state = OpState::Idle;
        match result {
            _ if abandoned => Received::End,
            0 => Received::End,
            bytes if bytes > 0 => Received::Bytes(&self.buffer[..bytes as usize]),
            errno => Received::Failed(-errno),
        }
    }
}
