//! Recv: one read at a time per connection, into a buffer the operation owns. The received bytes
//! can be read in place or taken with the buffer ([`RecvOp::take`]), so that a large receive is
//! handed on without a copy. A caller's buffer can be lent for one receive ([`RecvOp::lend`]):
//! the kernel then writes into the caller's place for the bytes, and the buffer goes back.

use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;

use io_uring::{opcode, types};

use crate::io::client::Lent;
use crate::io::slots::SlotKey;
use crate::io::uring::op::{encode, leak_in_flight, OpKind, OpState, Submissions};

/// `IORING_RECVSEND_POLL_FIRST` (Linux 5.19, as the provided-buffer rings `detect` requires):
/// wait for readiness before the first attempt.
const RECVSEND_POLL_FIRST: u16 = 1;

/// What a receive completion brought.
pub enum Received<'a> {
    /// Bytes arrived: the buffer's content until the next submit.
    Bytes(&'a [u8]),
    /// Bytes arrived in the lent buffer, this many at its `start`.
    Filled(Lent, usize),
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
    /// A caller's buffer for the next receive, or the one in flight.
    lent: Option<Lent>,
    size_bytes: usize,
    state: OpState,
    /// The last receive took less than it asked for (or none was made yet): the socket was
    /// empty then, so the next one waits for readiness before it tries. Otherwise io_uring tries
    /// at once, fails, arms a poll and tries again: two passes through the socket for every
    /// response a client waits for.
    drained: bool,
}

impl RecvOp {
    /// A receive operation on `socket` with a buffer of `size_bytes`.
    pub fn new(socket: Rc<OwnedFd>, size_bytes: usize) -> RecvOp {
        let size_bytes = size_bytes.max(512);
        RecvOp {
            socket,
            buffer: Vec::with_capacity(size_bytes),
            lent: None,
            size_bytes,
            state: OpState::Idle,
            drained: true,
        }
    }

    /// Whether the kernel may still write into the buffer.
    pub fn owns_buffer(&self) -> bool {
        self.state.owns_buffers()
    }

    /// Lends a caller's buffer to the next receive; refused (handed back) while a receive is in
    /// flight or another loan waits.
    pub fn lend(&mut self, lent: Lent) -> Result<(), Lent> {
        if self.state != OpState::Idle || self.lent.is_some() {
            return Err(lent);
        }
        assert!(lent.start + lent.length <= lent.buffer.len(), "a loan inside its buffer");
        self.lent = Some(lent);
        Ok(())
    }

    /// Submits a receive for the connection at `key`: into the lent buffer if there is one.
    pub fn submit(&mut self, key: SlotKey, queue: &mut Submissions) {
        assert_eq!(self.state, OpState::Idle, "one receive at a time");
        let (place, length) = match self.lent.as_mut() {
            // SAFETY: `start + length <= len` was checked by `lend`: the place is inside the
            // lent buffer's initialised bytes.
            Some(lent) => (unsafe { lent.buffer.as_mut_ptr().add(lent.start) }, lent.length),
            None => {
                self.buffer.clear();
                self.buffer.reserve(self.size_bytes);
                (self.buffer.as_mut_ptr(), self.buffer.capacity())
            }
        };
        let length = length.min(u32::MAX as usize) as u32;
        let fd = types::Fd(self.socket.as_raw_fd());
        let ioprio = if self.drained { RECVSEND_POLL_FIRST } else { 0 };
        let entry = opcode::Recv::new(fd, place, length).ioprio(ioprio).build();
        // SAFETY: the place is `length` writable bytes of a heap allocation (the op's buffer, read
        // only after `complete` sets the length the kernel reported, or the lent buffer, handed
        // back only by `complete`), and the descriptor an `Rc` this op owns; neither is moved
        // nor freed before the completion: `complete` is the only way back to Idle, and
        // dropping the op earlier leaks them (`Drop`).
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
        // A loan is only taken while idle, so a loan here is the one this receive wrote into;
        // it goes back with the bytes, or is dropped with the connection.
        let lent = self.lent.take();
        // What the receive asked for: the loan's length, or the buffer's capacity (`submit`).
        let asked = lent.as_ref().map_or(self.buffer.capacity(), |lent| lent.length).min(u32::MAX as usize);
        self.drained = result < 0 || (result as usize) < asked;
        match result {
            _ if abandoned => Received::End,
            0 => Received::End,
            bytes if bytes > 0 && lent.is_some() => {
                let lent = lent.expect("checked");
                let bytes = (bytes as usize).min(lent.length);
                Received::Filled(lent, bytes)
            }
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
            leak_in_flight("recv", (std::mem::take(&mut self.buffer), self.lent.take(), self.socket.clone()));
        }
    }
}
