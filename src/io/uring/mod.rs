//! io_uring: kernel support checks, ring setup, and one file per operation kind. Every
//! operation owns the memory it lends to the kernel (see [`op`]); the loops that drive them are
//! the data plane's server driver (`dataplane::uring`) and the client loop ([`crate::io::client`]).

pub mod accept;
pub mod buf_ring;
pub mod cancel;
pub mod connect;
pub mod op;
pub mod recv;
pub mod ring;
pub mod send;
pub mod send_zc;
pub mod timeout;
pub mod wake;
pub mod writable;

use io_uring::{opcode, IoUring, Probe};

/// What this kernel's io_uring offers beyond what [`probe`] requires.
#[derive(Debug, Clone, Copy)]
pub struct Support {
    /// `SendMsgZc` (Linux 6.1+).
    pub zero_copy: bool,
}

/// Checks that `ring` has every operation the server and client loops use.
pub fn detect(ring: &IoUring) -> Result<Support, String> {
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe).map_err(|e| format!("IORING_REGISTER_PROBE failed: {e}"))?;
    for (code, name) in [
        (opcode::Accept::CODE, "accept"),
        (opcode::Recv::CODE, "recv"),
        (opcode::SendMsg::CODE, "sendmsg"),
        (opcode::AsyncCancel::CODE, "async_cancel"),
        (opcode::Connect::CODE, "connect"),
        (opcode::Send::CODE, "send"),
        (opcode::Timeout::CODE, "timeout"),
        (opcode::Read::CODE, "read"),
        (opcode::PollAdd::CODE, "poll_add"),
    ] {
        if !probe.is_supported(code) {
            return Err(format!("the kernel's io_uring lacks the {name} operation"));
        }
    }
    if !ring.params().is_feature_ext_arg() || !ring.params().is_feature_nodrop() {
        return Err("the kernel's io_uring lacks EXT_ARG or NODROP (Linux 5.11+ needed)".into());
    }
    // The server's receives draw from a provided-buffer ring: try registering a small one.
    let mut buffers = buf_ring::BufRing::new(ring, u16::MAX, 1, 512)
        .map_err(|e| format!("the kernel's io_uring lacks provided-buffer rings (Linux 5.19+ needed): {e}"))?;
    buffers.unregister(ring, true);
    Ok(Support { zero_copy: probe.is_supported(opcode::SendMsgZc::CODE) })
}

/// Whether io_uring can run here; the reason when it cannot.
pub fn probe() -> Result<(), String> {
    if let Ok(text) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        if text.trim() == "2" {
            return Err("/proc/sys/kernel/io_uring_disabled is 2".into());
        }
    }
    let ring = IoUring::new(8).map_err(describe_setup_error)?;
    detect(&ring).map(|_| ())
}

/// Whether this kernel's io_uring has zero-copy `sendmsg` (Linux 6.1+).
pub fn zero_copy_supported() -> bool {
    IoUring::new(8).ok().and_then(|ring| detect(&ring).ok()).is_some_and(|support| support.zero_copy)
}

/// A readable reason for an `io_uring_setup` failure.
pub fn describe_setup_error(error: std::io::Error) -> String {
    match error.raw_os_error() {
        Some(libc::EPERM) => "io_uring_setup: permission denied (seccomp policy or io_uring_disabled)".into(),
        Some(libc::ENOSYS) => "io_uring_setup: the kernel has no io_uring".into(),
        _ => format!("io_uring_setup: {error}"),
    }
}

/// A ring with `submission_entries` and `completion_entries`. Only this thread submits and reaps,
/// so task work is deferred to our own `io_uring_enter` (6.1+); older kernels get a plain ring.
pub fn build_ring(submission_entries: u32, completion_entries: u32) -> std::io::Result<IoUring> {
    let tuned = IoUring::builder()
        .setup_cqsize(completion_entries)
        .setup_clamp()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(submission_entries);
    match tuned {
        Ok(ring) => Ok(ring),
        Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
            IoUring::builder().setup_cqsize(completion_entries).setup_clamp().build(submission_entries)
        }
        Err(error) => Err(error),
    }
}
