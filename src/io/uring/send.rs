//! Send: one `sendmsg` at a time per connection. The operation holds an `Rc` of every buffer its
//! iovecs point into, so the bytes live as long as the kernel may read them: until the
//! completion for a plain send, until the notification for a zero-copy one ([`super::send_zc`]).
//! The owner may drop its own references to those buffers as soon as the bytes count as sent.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::rc::Rc;

use io_uring::{opcode, types};

use crate::io::slots::SlotKey;
use crate::io::uring::op::{encode, leak_in_flight, OpKind, OpState, Submissions};
use crate::io::uring::send_zc;

/// Bytes a send may point the kernel at, as a list of segments that never change once built
/// (a response head and its body slices; a request buffer).
pub trait Segments {
    /// How many segments.
    fn segment_count(&self) -> usize;
    /// Segment `at`.
    fn segment(&self, at: usize) -> &[u8];
    /// The file segment `at` lies in and its offset there, when its bytes may go to a socket
    /// straight from the file's pages (`sendfile`); `None` for bytes only in memory.
    fn segment_file(&self, _at: usize) -> Option<(BorrowedFd<'_>, u64)> {
        None
    }

    /// Where segment `at` starts in its file, when it goes to the socket by `sendfile` rather
    /// than by copy: it lies in a file whose pages may go to sockets, and has at least
    /// `file_bytes_min` bytes (`None`: nothing goes by file). A segment goes one way whole, so
    /// one half sent goes on the way it started.
    fn file_for_send(&self, at: usize, file_bytes_min: Option<u64>) -> Option<(BorrowedFd<'_>, u64)> {
        let min = file_bytes_min?;
        if (self.segment(at).len() as u64) < min.max(1) {
            return None;
        }
        self.segment_file(at)
    }
}

impl Segments for Vec<u8> {
    fn segment_count(&self) -> usize {
        1
    }

    fn segment(&self, _at: usize) -> &[u8] {
        self
    }
}

/// One owner's bytes to send, after the first `skip_bytes` of them (already sent).
#[derive(Clone)]
pub struct Part {
    pub owner: Rc<dyn Segments>,
    pub skip_bytes: u64,
}

/// What a send completion brought.
pub enum SendResult {
    /// The kernel took this many bytes.
    Sent(u64),
    /// The send failed with this errno.
    Failed(i32),
    /// The connection had given up on the send.
    Ignored,
}

/// A connection's send operation: its socket, the iovec array and message header it lends to the
/// kernel, and the buffers the iovecs point into. The iovec array exists only while a send is in
/// flight, so an idle connection does not pay for it.
pub struct SendOp {
    socket: Rc<OwnedFd>,
    iovecs_max: usize,
    /// Most bytes one send hands the kernel (fairness between connections).
    bytes_max: u64,
    /// Empty while idle; `iovecs_max` entries while a send is in flight.
    iovecs: Box<[libc::iovec]>,
    header: Box<libc::msghdr>,
    state: OpState,
    /// The buffers of the send in flight.
    in_flight: Vec<Part>,
    /// Zero-copy sends whose notification has not arrived.
    notifications_pending: usize,
    /// Their buffers: notifications all carry the same `user_data`, so none is released until
    /// every one is in.
    awaiting_notification: Vec<Part>,
}

impl SendOp {
    /// A send operation on `socket` with room for `iovecs_max` slices.
    pub fn new(socket: Rc<OwnedFd>, iovecs_max: usize) -> SendOp {
        // SAFETY: msghdr is plain old data; all-zero is a valid (empty) header.
        let header: libc::msghdr = unsafe { std::mem::zeroed() };
        SendOp {
            socket,
            iovecs_max: iovecs_max.max(1),
            bytes_max: u64::MAX,
            iovecs: Box::default(),
            header: Box::new(header),
            state: OpState::Idle,
            in_flight: Vec::new(),
            notifications_pending: 0,
            awaiting_notification: Vec::new(),
        }
    }

    /// Caps the bytes each send submitted from now on hands the kernel at `bytes_max` (at
    /// least 1); the rest goes in later sends. Unbounded until set.
    pub fn set_bytes_max(&mut self, bytes_max: u64) {
        self.bytes_max = bytes_max.max(1);
    }

    /// Most slices one send takes.
    pub fn iovecs_max(&self) -> usize {
        self.iovecs_max
    }

    /// Whether no send is in flight (a new one may be submitted).
    pub fn is_idle(&self) -> bool {
        self.state == OpState::Idle
    }

    /// Whether the kernel may still read memory this op holds (an in-flight send or a pending
    /// zero-copy notification).
    pub fn owns_buffers(&self) -> bool {
        self.state.owns_buffers() || self.notifications_pending > 0
    }

    /// Zero-copy notifications still to come.
    pub fn notifications_pending(&self) -> usize {
        self.notifications_pending
    }

    /// Sends `parts` (as many segments as fit the iovec array) for the connection at `key`,
    /// with `SendMsgZc` when they add up to `zero_copy_bytes_min` or more. The send stops before
    /// a segment that goes by `sendfile` (see [`Segments::file_for_send`]; the caller sends it)
    /// and then says `MSG_MORE`, so the bytes before it wait for its pages. Returns the bytes
    /// submitted and whether the send is zero-copy.
    pub fn submit(
        &mut self,
        key: SlotKey,
        parts: Vec<Part>,
        zero_copy_bytes_min: Option<u64>,
        file_bytes_min: Option<u64>,
        queue: &mut Submissions,
    ) -> (u64, bool) {
        assert_eq!(self.state, OpState::Idle, "one send at a time");
        if self.iovecs.is_empty() {
            let empty = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
            self.iovecs = vec![empty; self.iovecs_max].into_boxed_slice();
        }
        let mut count = 0;
        let mut bytes = 0u64;
        let mut file_follows = false;
        'parts: for part in &parts {
            let mut skip = part.skip_bytes;
            for at in 0..part.owner.segment_count() {
                if count == self.iovecs.len() || bytes >= self.bytes_max {
                    break 'parts;
                }
                let segment = part.owner.segment(at);
                if skip >= segment.len() as u64 {
                    skip -= segment.len() as u64;
                    continue;
                }
                if part.owner.file_for_send(at, file_bytes_min).is_some() {
                    file_follows = true;
                    break 'parts;
                }
                let rest = &segment[skip as usize..];
                let rest = &rest[..rest.len().min((self.bytes_max - bytes).try_into().unwrap_or(usize::MAX))];
                skip = 0;
                self.iovecs[count] = libc::iovec { iov_base: rest.as_ptr() as *mut libc::c_void, iov_len: rest.len() };
                count += 1;
                bytes += rest.len() as u64;
            }
        }
        if count == 0 {
            self.iovecs = Box::default();
            return (0, false);
        }
        let zero_copy = zero_copy_bytes_min.is_some_and(|min| bytes >= min);
        self.header.msg_iov = self.iovecs.as_mut_ptr();
        self.header.msg_iovlen = count as _;
        let header: *const libc::msghdr = &*self.header;
        let fd = self.socket.as_raw_fd();
        let entry = if zero_copy {
            send_zc::entry(fd, header).user_data(encode(OpKind::SendZc, key))
        } else {
            let more = if file_follows { libc::MSG_MORE } else { 0 };
            opcode::SendMsg::new(types::Fd(fd), header)
                .flags((libc::MSG_NOSIGNAL | more) as u32)
                .build()
                .user_data(encode(OpKind::Send, key))
        };
        self.in_flight = parts;
        // SAFETY: the header, the iovec array and the descriptor are owned by this op; every
        // iovec points into a segment of an `Rc` in `in_flight` (segments never change while
        // shared). All are kept until the completion (`in_flight`) and, for a zero-copy send,
        // the notification (`awaiting_notification`); dropping the op earlier leaks them (`Drop`).
        unsafe { queue.push(entry) };
        self.state = OpState::InFlight;
        (bytes, zero_copy)
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
        // The kernel took the header and iovecs when it issued the send (a zero-copy one keeps
        // only the pages, held by `awaiting_notification`).
        self.iovecs = Box::default();
        let parts = std::mem::take(&mut self.in_flight);
        if more {
            self.notifications_pending += 1;
            self.awaiting_notification.extend(parts);
        }
        match result {
            _ if abandoned => SendResult::Ignored,
            bytes if bytes >= 0 => SendResult::Sent(bytes as u64),
            errno => SendResult::Failed(-errno),
        }
    }

    /// Handles a zero-copy notification; once all are in, the kernel is done with their pages.
    pub fn notified(&mut self) {
        self.notifications_pending = self.notifications_pending.saturating_sub(1);
        if self.notifications_pending == 0 {
            self.awaiting_notification.clear();
        }
    }
}

impl Drop for SendOp {
    fn drop(&mut self) {
        if self.owns_buffers() {
            let iovecs = std::mem::take(&mut self.iovecs);
            let empty = Box::new(*self.header);
            let header = std::mem::replace(&mut self.header, empty);
            let parts = (std::mem::take(&mut self.in_flight), std::mem::take(&mut self.awaiting_notification));
            leak_in_flight("send", (iovecs, header, parts, self.socket.clone()));
        }
    }
}
