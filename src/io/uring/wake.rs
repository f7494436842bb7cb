//! Wake: an eventfd read kept armed on the ring, so another thread can end the loop's wait by
//! writing to the eventfd through a [`Waker`] (`Send + Clone`).

use std::os::fd::AsRawFd;
use std::sync::Arc;

use io_uring::{opcode, types};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::io::slots::SlotKey;
use crate::io::uring::op::{encode, leak_in_flight, OpKind, OpState, Submissions};

/// Wakes the ring's loop from any thread.
#[derive(Clone)]
pub struct Waker {
    eventfd: Arc<EventFd>,
}

impl Waker {
    /// Ends the loop's current (or next) wait with a wake event.
    pub fn wake(&self) -> std::io::Result<()> {
        match self.eventfd.write(1) {
            Ok(_) => Ok(()),
            // The counter is saturated: a wake is already pending.
            Err(nix::errno::Errno::EAGAIN) => Ok(()),
            Err(errno) => Err(errno.into()),
        }
    }
}

/// The loop's side: an 8-byte read of the eventfd, re-armed after each wake.
pub struct WakeOp {
    eventfd: Arc<EventFd>,
    counter: Box<[u8; 8]>,
    state: OpState,
}

fn user_data() -> u64 {
    encode(OpKind::Wake, SlotKey { index: 0, generation: 0 })
}

impl WakeOp {
    /// A new eventfd and its reader.
    pub fn new() -> std::io::Result<WakeOp> {
        let eventfd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        Ok(WakeOp { eventfd: Arc::new(eventfd), counter: Box::new([0; 8]), state: OpState::Idle })
    }

    /// A handle other threads use to wake the loop.
    pub fn waker(&self) -> Waker {
        Waker { eventfd: self.eventfd.clone() }
    }

    /// Submits the read unless one is in flight.
    pub fn arm(&mut self, queue: &mut Submissions) {
        if self.state != OpState::Idle {
            return;
        }
        let fd = types::Fd(self.eventfd.as_raw_fd());
        let entry = opcode::Read::new(fd, self.counter.as_mut_ptr(), 8).build().user_data(user_data());
        // SAFETY: the counter is a heap allocation and the eventfd an `Arc` this op owns until
        // `complete` (dropping the op earlier leaks them).
        unsafe { queue.push(entry) };
        self.state = OpState::InFlight;
    }

    /// Handles the completion: the wake was consumed; re-arm with [`WakeOp::arm`].
    pub fn complete(&mut self) {
        self.state = OpState::Idle;
    }

    /// Whether `user_data` is this operation's.
    pub fn is_mine(user_data_value: u64) -> bool {
        user_data_value == user_data()
    }
}

impl Drop for WakeOp {
    fn drop(&mut self) {
        if self.state.owns_buffers() {
            leak_in_flight("wake", (std::mem::take(&mut self.counter), self.eventfd.clone()));
        }
    }
}
