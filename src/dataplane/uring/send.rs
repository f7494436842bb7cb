//! Send: one `sendmsg` at a time per connection, its iovecs pointing at the queued responses
//! (heads and mmap'd piece slices). Plain sends are done with their bytes at the completion;
//! zero-copy sends ([`super::send_zc`]) only at their notification, so responses are released
//! only when no notification is outstanding.

use io_uring::{opcode, types};

use crate::dataplane::slots::SlotKey;
use crate::dataplane::uring::op::{encode, OpKind, OpState, Submissions};
use crate::dataplane::uring::send_zc;

/// What a send completion brought.
pub enum SendResult {
    /// The kernel took this many bytes.
    Sent(u64),
    /// The send failed with this errno.
    Failed(i32),
    /// The connection had given up on the send.
    Ignored,
}

/// A connection's send operation: the iovec array and message header it lends to the kernel.
pub struct SendOp {
    iovecs: Box<[libc::iovec]>,
    header: Box<libc::msghdr>,
    state: OpState,
    /// Sequence number of the last response the in-flight send touches.
    through_seq: u64,
    /// Highest `through_seq` of completed sends: releasable once no notification is pending.
    completed_through: u64,
    /// Zero-copy sends whose notification has not arrived.
    notifications_pending: usize,
}

impl SendOp {
    /// A send operation with room for `iovecs_max` slices.
    pub fn new(iovecs_max: usize) -> SendOp {
        let empty = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
        // SAFETY: msghdr is plain old data; all-zero is a valid (empty) header.
        let header: libc::msghdr = unsafe { std::mem::zeroed() };
        SendOp {
            iovecs: vec![empty; iovecs_max.max(1)].into_boxed_slice(),
            header: Box::new(header),
            state: OpState::Idle,
            through_seq: 0,
            completed_through: 0,
            notifications_pending: 0,
        }
    }

    /// Most slices one send takes.
    pub fn iovecs_max(&self) -> usize {
        self.iovecs.len()
    }

    /// Whether no send is in flight (a new one may be submitted).
    pub fn is_idle(&self) -> bool {
        self.state == OpState::Idle
    }

    /// Whether the kernel may still read memory this op pointed it at (an in-flight send or a
    /// pending zero-copy notification).
    pub fn owns_buffers(&self) -> bool {
        self.state.owns_buffers() || self.notifications_pending > 0
    }

    /// Zero-copy notifications still to come.
    pub fn notifications_pending(&self) -> usize {
        self.notifications_pending
    }

    /// Sends `slices` on `fd` for the connection at `key`; `zero_copy` picks `SendMsgZc`.
    ///
    /// # Safety
    /// The memory of every slice must stay valid until [`SendOp::releasable`] returns a sequence
    /// number of at least `through_seq`.
    pub unsafe fn submit(
        &mut self,
        fd: i32,
        key: SlotKey,
        slices: &[&[u8]],
        through_seq: u64,
        zero_copy: bool,
        queue: &mut Submissions,
    ) {
        assert_eq!(self.state, OpState::Idle, "one send at a time");
        assert!(!slices.is_empty() && slices.len() <= self.iovecs.len());
        for (iovec, slice) in self.iovecs.iter_mut().zip(slices) {
            *iovec = libc::iovec { iov_base: slice.as_ptr() as *mut libc::c_void, iov_len: slice.len() };
        }
        self.header.msg_iov = self.iovecs.as_mut_ptr();
        self.header.msg_iovlen = slices.len() as _;
        let header: *const libc::msghdr = &*self.header;
        let entry = if zero_copy {
            send_zc::entry(fd, header).user_data(encode(OpKind::SendZc, key))
        } else {
            opcode::SendMsg::new(types::Fd(fd), header)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build()
                .user_data(encode(OpKind::Send, key))
        };
        // SAFETY: the header and iovec array are heap allocations owned by this op, which lives
        // in a connection slot that is not freed while `owns_buffers()`; the slices' memory is
        // kept by the caller's contract above.
        unsafe { queue.push(entry) };
        self.state = OpState::InFlight;
        self.through_seq = through_seq;
    }

    /// The connection is closing: the result will be ignored; buffers stay until completion.
    pub fn abandon(&mut self) {
        if self.state == OpState::InFlight {
            self.state = OpState::Abandoned;
        }
    }

    /// Handles a send's (first) completion; `more` says a zero-copy notification follows.
    pub fn complete(&mut self, result: i32, more: bool) -> SendResult {
        let abandoned = self.state == OpState::Abandoned;
        self.state = OpState::Idle;
        if more {
            self.notifications_pending += 1;
        }
        self.completed_through = self.completed_through.max(self.through_seq);
        match result {
            _ if abandoned => SendResult::Ignored,
            bytes if bytes >= 0 => SendResult::Sent(bytes as u64),
            errno => SendResult::Failed(-errno),
        }
    }

    /// Handles a zero-copy notification: the kernel is done with that send's pages.
    pub fn notified(&mut self) {
        self.notifications_pending = self.notifications_pending.saturating_sub(1);
    }

    /// The sequence number through which responses may be dropped now, if any.
    pub fn releasable(&self) -> Option<u64> {
        (self.state == OpState::Idle && self.notifications_pending == 0 && self.completed_through > 0)
            .then_some(self.completed_through)
    }
}
