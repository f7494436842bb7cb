//! Timeout: a completion after a duration, whose `timespec` the operation owns. The client loop
//! keeps one armed for its nearest timer, so the ring wakes for it while it waits for completions.

use std::time::Duration;

use io_uring::{opcode, types};

use crate::io::slots::SlotKey;
use crate::io::uring::op::{encode, leak_in_flight, OpKind, OpState, Submissions};

/// The loop's timer operation.
pub struct TimeoutOp {
    timespec: Box<types::Timespec>,
    state: OpState,
    /// When the armed timeout fires.
    armed_for: Option<std::time::Instant>,
}

impl Default for TimeoutOp {
    fn default() -> TimeoutOp {
        TimeoutOp { timespec: Box::new(types::Timespec::new()), state: OpState::Idle, armed_for: None }
    }
}

/// `user_data` of timeout completions (no connection slot).
fn user_data() -> u64 {
    encode(OpKind::Timeout, SlotKey { index: 0, generation: 0 })
}

impl TimeoutOp {
    /// Arms a timeout for `at` unless one is already in flight for that instant or sooner.
    pub fn arm(&mut self, at: std::time::Instant, now: std::time::Instant, queue: &mut Submissions) {
        if self.state != OpState::Idle {
            if self.armed_for.is_some_and(|armed| armed <= at) {
                return;
            }
            // An earlier deadline: cancel the armed one (its completion still comes) and re-arm
            // once it is idle again.
            if self.state == OpState::InFlight {
                crate::io::uring::cancel::cancel(user_data(), queue);
                self.state = OpState::Abandoned;
            }
            return;
        }
        *self.timespec = types::Timespec::from(at.saturating_duration_since(now).max(Duration::from_micros(1)));
        let entry = opcode::Timeout::new(&*self.timespec).build().user_data(user_data());
        // SAFETY: the timespec is a heap allocation this op owns until `complete` (dropping the
        // op earlier leaks it).
        unsafe { queue.push(entry) };
        self.state = OpState::InFlight;
        self.armed_for = Some(at);
    }

    /// Handles the completion (fired or cancelled): the loop checks its timers either way.
    pub fn complete(&mut self) {
        self.state = OpState::Idle;
        self.armed_for = None;
    }

    /// Whether `user_data` is this operation's.
    pub fn is_mine(user_data_value: u64) -> bool {
        user_data_value == user_data()
    }
}

impl Drop for TimeoutOp {
    fn drop(&mut self) {
        if self.state.owns_buffers() {
            leak_in_flight("timeout", std::mem::take(&mut self.timespec));
        }
    }
}
