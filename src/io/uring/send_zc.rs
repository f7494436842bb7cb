//! SendZc: `sendmsg` without copying the bytes into the socket buffer; the NIC (or loopback)
//! reads the pinned pages directly. Each send posts two completions: the result (flagged
//! `IORING_CQE_F_MORE`), then a notification (`IORING_CQE_F_NOTIF`) once the kernel no longer
//! references the pages. Only then may the piece guards behind them be dropped; [`super::send`]
//! counts the pending notifications and holds every response until they are all in.

use io_uring::{opcode, squeue, types};

/// The entry for a zero-copy send of `header` on `fd`.
pub fn entry(fd: i32, header: *const libc::msghdr) -> squeue::Entry {
    opcode::SendMsgZc::new(types::Fd(fd), header).flags(libc::MSG_NOSIGNAL as u32).build()
}
