//! Cancel: asks the kernel to end an in-flight operation early. The cancelled operation still
//! posts its own completion (usually `-ECANCELED`), and keeps its buffers until then.

use io_uring::opcode;

use crate::io::slots::SlotKey;
use crate::io::uring::op::{encode, OpKind, Submissions};

/// Queues a cancel of the operation with `target` user data.
pub fn cancel(target: u64, queue: &mut Submissions) {
    let entry =
        opcode::AsyncCancel::new(target).build().user_data(encode(OpKind::Cancel, SlotKey { index: 0, generation: 0 }));
    // SAFETY: a cancel lends no memory to the kernel.
    unsafe { queue.push(entry) };
}
