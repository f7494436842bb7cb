//! A ring and its submission backlog: what every io_uring loop does each turn (push queued
//! entries, wait with a timeout, reap completions, count the kernel's overflow backlog).

use std::time::Duration;

use io_uring::{types, IoUring};

use crate::io::uring::op::Submissions;

/// One completion: `(user_data, result, flags)`.
pub type Completion = (u64, i32, u32);

/// A ring, the entries waiting for room in it, and the overflow count last seen.
pub struct Ring {
    ring: IoUring,
    /// Entries waiting for room in the submission queue; ops push here.
    pub queue: Submissions,
    overflow_seen: u32,
}

impl Ring {
    /// Wraps a ring built by [`super::build_ring`].
    pub fn new(ring: IoUring) -> Ring {
        Ring { ring, queue: Submissions::default(), overflow_seen: 0 }
    }

    /// The ring itself (to register resources with it).
    pub fn inner(&self) -> &IoUring {
        &self.ring
    }

    /// The ring's setup parameters.
    pub fn params(&self) -> &io_uring::Parameters {
        self.ring.params()
    }

    /// Pushes queued entries to the kernel and waits up to `wait` for a completion.
    pub fn submit_and_wait(&mut self, wait: Duration) -> std::io::Result<()> {
        loop {
            self.queue.flush(&mut self.ring);
            if self.queue.is_empty() {
                break;
            }
            // The submission queue is full: hand it to the kernel and refill.
            match self.ring.submit() {
                Ok(_) => {}
                Err(error) if error.raw_os_error() == Some(libc::EBUSY) => break,
                Err(error) if error.raw_os_error() == Some(libc::EINTR) => {}
                Err(error) => return Err(error),
            }
        }
        let wait = if self.queue.is_empty() { wait } else { Duration::ZERO };
        let timespec = types::Timespec::from(wait);
        let args = types::SubmitArgs::new().timespec(&timespec);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(error) if matches!(error.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY)) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Appends up to `count_max` completions; returns how many the kernel had to keep in its
    /// overflow backlog since the last call (`IORING_FEAT_NODROP`: none are lost).
    pub fn reap(&mut self, completions: &mut Vec<Completion>, count_max: usize) -> u32 {
        let mut queue = self.ring.completion();
        let overflow = queue.overflow();
        for entry in queue.by_ref().take(count_max) {
            completions.push((entry.user_data(), entry.result(), entry.flags()));
        }
        drop(queue);
        let count = overflow.wrapping_sub(self.overflow_seen);
        self.overflow_seen = overflow;
        count
    }
}
