//! What every in-flight operation shares: how its completion finds its owner (`user_data`), the
//! lifecycle of the buffers it lends to the kernel, and the queue of entries awaiting submission.
//!
//! Lifecycle of every operation that lends memory to the kernel:
//!
//! ```text
//!   Idle ──submit──► InFlight ──completion──► Idle
//!                       │
//!                       └──owner gives up (close, shutdown)──► Abandoned ──completion──► Idle
//! ```
//!
//! Every operation owns what it lends to the kernel: its descriptor (an `Rc<OwnedFd>` shared with
//! its connection's other operations) and its buffers (the receive buffer; the iovec array,
//! message header and `Rc`s of the bytes a send points at). A cancelled or abandoned operation
//! keeps them until its completion (and zero-copy notification) arrives. Dropping an operation
//! while the kernel may still use its memory leaks that memory instead of freeing it (see each
//! op's `Drop`), so no caller can free memory under the kernel, whatever it does.

use std::collections::VecDeque;

use io_uring::{squeue, IoUring};

use crate::io::slots::SlotKey;

/// The operation kinds, each in its own file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OpKind {
    Accept = 1,
    Recv = 2,
    Send = 3,
    SendZc = 4,
    Cancel = 5,
    Connect = 6,
    Timeout = 7,
    Wake = 8,
    Writable = 9,
}

impl OpKind {
    fn from_u8(value: u8) -> Option<OpKind> {
        Some(match value {
            1 => OpKind::Accept,
            2 => OpKind::Recv,
            3 => OpKind::Send,
            4 => OpKind::SendZc,
            5 => OpKind::Cancel,
            6 => OpKind::Connect,
            7 => OpKind::Timeout,
            8 => OpKind::Wake,
            9 => OpKind::Writable,
            _ => return None,
        })
    }
}

/// `user_data` of an operation: kind in the top byte, slot index (24 bits), slot generation.
pub fn encode(kind: OpKind, key: SlotKey) -> u64 {
    debug_assert!(key.index < (1 << 24));
    ((kind as u64) << 56) | (u64::from(key.index) << 32) | u64::from(key.generation)
}

/// The kind and owner of a completion.
pub fn decode(user_data: u64) -> Option<(OpKind, SlotKey)> {
    let kind = OpKind::from_u8((user_data >> 56) as u8)?;
    Some((kind, SlotKey { index: ((user_data >> 32) & 0xff_ffff) as u32, generation: user_data as u32 }))
}

/// Where an operation is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpState {
    /// Not submitted: its buffers are the driver's.
    Idle,
    /// Queued or submitted: the kernel may read or write its buffers until the completion.
    InFlight,
    /// Its owner no longer wants the result, but the kernel may still use its buffers.
    Abandoned,
}

impl OpState {
    /// Whether the kernel may still touch the operation's buffers.
    pub fn owns_buffers(self) -> bool {
        self != OpState::Idle
    }
}

/// Entries waiting for room in the submission queue.
#[derive(Default)]
pub struct Submissions {
    pending: VecDeque<squeue::Entry>,
}

impl Submissions {
    /// Queues an entry.
    ///
    /// # Safety
    /// Every buffer the entry points to must stay valid, and not be moved or freed, until the
    /// entry's completion (and, for zero-copy sends, its notification) has been reaped.
    pub(crate) unsafe fn push(&mut self, entry: squeue::Entry) {
        self.pending.push_back(entry);
    }

    /// Whether entries are waiting.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Moves as many entries as fit into the ring's submission queue; returns how many moved.
    pub fn flush(&mut self, ring: &mut IoUring) -> usize {
        let mut submission = ring.submission();
        let mut moved = 0;
        while let Some(entry) = self.pending.front() {
            // SAFETY: every entry came through `Submissions::push`, whose callers guarantee that
            // the memory it references outlives the operation.
            if unsafe { submission.push(entry) }.is_err() {
                break;
            }
            self.pending.pop_front();
            moved += 1;
        }
        moved
    }
}

/// Keeps `memory` out of reach forever: an operation dropped while the kernel may still write
/// into (or read from) its memory must not free it.
pub(crate) fn leak_in_flight<T>(what: &'static str, memory: T) {
    tracing::debug!(what, "operation dropped while in flight; leaking its memory");
    std::mem::forget(memory);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips() {
        for kind in [
            OpKind::Accept,
            OpKind::Recv,
            OpKind::Send,
            OpKind::SendZc,
            OpKind::Cancel,
            OpKind::Connect,
            OpKind::Timeout,
            OpKind::Wake,
            OpKind::Writable,
        ] {
            let key = SlotKey { index: 0xab_cdef, generation: u32::MAX - 3 };
            assert_eq!(decode(encode(kind, key)), Some((kind, key)));
        }
        assert_eq!(decode(0), None);
    }
}
