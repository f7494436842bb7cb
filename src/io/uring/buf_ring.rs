//! A provided-buffer ring (`IORING_REGISTER_PBUF_RING`, Linux 5.19+) and the receive that draws
//! from it. The kernel picks a buffer only when bytes arrive, so a connection waiting for its
//! next request holds no receive buffer: a worker's connections share `count` buffers.
//!
//! A buffer is the kernel's from the moment it is in the ring until a completion names it
//! (`IORING_CQE_F_BUFFER`); it is then the owner's until [`BufRing::recycle`] puts it back.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::io::slots::SlotKey;
use crate::io::uring::op::{encode, leak_in_flight, OpKind, OpState, Submissions};

/// The kernel's limit on ring entries.
const ENTRIES_MAX: usize = 32768;
/// The ring of entries must be page-aligned.
const PAGE_BYTES: usize = 4096;

/// A registered ring of `count` receive buffers of `size_bytes` each.
pub struct BufRing {
    group: u16,
    /// `count` entries (16 bytes each), page-aligned; the tail lives in entry 0's reserved field.
    entries: *mut BufRingEntry,
    entries_layout: Layout,
    buffers: Box<[u8]>,
    size_bytes: usize,
    /// Buffer count minus one: buffer ids and entry positions are masked with it.
    mask: u16,
    tail: u16,
    registered: bool,
}

impl BufRing {
    /// Registers `count` (rounded to a power of two, at most 32768) buffers of `size_bytes` as
    /// buffer group `group` of `ring`, all handed to the kernel.
    pub fn new(ring: &IoUring, group: u16, count: usize, size_bytes: usize) -> std::io::Result<BufRing> {
        let count = count.clamp(1, ENTRIES_MAX).next_power_of_two();
        let size_bytes = size_bytes.clamp(512, u32::MAX as usize);
        let bytes = (count * std::mem::size_of::<BufRingEntry>()).next_multiple_of(PAGE_BYTES);
        let entries_layout = Layout::from_size_align(bytes, PAGE_BYTES).map_err(std::io::Error::other)?;
        // SAFETY: the layout has a non-zero size; the allocation is freed only by `Drop`, with
        // the same layout, once the kernel no longer knows of it.
        let entries = unsafe { alloc_zeroed(entries_layout) }.cast::<BufRingEntry>();
        if entries.is_null() {
            return Err(std::io::Error::from(std::io::ErrorKind::OutOfMemory));
        }
        let mut buffers = vec![0u8; count * size_bytes].into_boxed_slice();
        // Fault the pool in now: it is a fixed cost of the worker, not something that grows (as
        // a lazily touched pool would seem to) with the connections that happen to use it.
        for page in buffers.chunks_mut(PAGE_BYTES) {
            page[0] = 1;
        }
        let mut buf_ring = BufRing {
            group,
            entries,
            entries_layout,
            buffers,
            size_bytes,
            mask: (count - 1) as u16,
            tail: 0,
            registered: false,
        };
        // SAFETY: `entries` points to `count` zeroed, page-aligned entries that stay allocated
        // while registered: `Drop` frees them only after unregistering, and leaks them if that fails.
        unsafe { ring.submitter().register_buf_ring_with_flags(entries as u64, count as u16, group, 0) }?;
        buf_ring.registered = true;
        for bid in 0..count {
            buf_ring.push(bid as u16);
        }
        buf_ring.publish();
        Ok(buf_ring)
    }

    /// The buffer group receives name to draw from this ring.
    pub fn group(&self) -> u16 {
        self.group
    }

    /// Bytes one buffer holds (a receive reads at most this many).
    pub fn size_bytes(&self) -> usize {
        self.size_bytes
    }

    /// The first `length` bytes of buffer `bid`, which a completion handed to the owner.
    pub fn bytes(&self, bid: u16, length: usize) -> &[u8] {
        let start = usize::from(bid) * self.size_bytes;
        &self.buffers[start..start + length.min(self.size_bytes)]
    }

    /// Hands buffer `bid` back to the kernel once its bytes were consumed.
    pub fn recycle(&mut self, bid: u16) {
        self.push(bid);
        self.publish();
    }

    /// Writes the entry for `bid` at the (unpublished) tail.
    fn push(&mut self, bid: u16) {
        assert!(bid <= self.mask, "buffer id {bid} is not in this ring");
        let at = usize::from(self.tail & self.mask);
        let address = self.buffers[usize::from(bid) * self.size_bytes..].as_mut_ptr();
        // SAFETY: `at` is below the ring's entry count (masked by `count - 1`); the kernel reads
        // entries only below the published tail, and this one is past it until `publish`.
        let entry = unsafe { &mut *self.entries.add(at) };
        entry.set_addr(address as u64);
        entry.set_len(self.size_bytes as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the pushed entries visible to the kernel.
    fn publish(&self) {
        // SAFETY: the tail is the u16 in entry 0's reserved field, inside the live allocation,
        // aligned to 2; the kernel reads it with acquire ordering, so this release store orders
        // the entries written before it.
        let tail = unsafe { AtomicU16::from_ptr(BufRingEntry::tail(self.entries).cast_mut()) };
        tail.store(self.tail, Ordering::Release);
    }

    /// Unregisters the ring so its memory may be freed; call once no receive drawing from it is
    /// in flight (else the kernel could still write into a buffer, and the memory is leaked).
    pub fn unregister(&mut self, ring: &IoUring, receives_idle: bool) {
        if self.registered && receives_idle && ring.submitter().unregister_buf_ring(self.group).is_ok() {
            self.registered = false;
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if self.registered {
            // The kernel may still pick or write a buffer: keep the memory out of reach forever.
            leak_in_flight("buffer ring", std::mem::take(&mut self.buffers));
            return;
        }
        // SAFETY: allocated in `new` with this layout, unregistered, and freed only here.
        unsafe { dealloc(self.entries.cast(), self.entries_layout) };
    }
}

/// What a pooled receive completion brought.
#[derive(Debug, PartialEq, Eq)]
pub enum Pooled {
    /// This many bytes, in buffer `bid` (recycle it once consumed).
    Bytes { bid: u16, length: usize },
    /// The peer closed its side.
    End,
    /// Every buffer was in use: submit the receive again once some are recycled.
    NoBuffer,
    /// The receive failed with this errno.
    Failed(i32),
}

/// A connection's receive that draws its buffer from the worker's [`BufRing`]: it holds no
/// memory of its own while waiting.
pub struct PooledRecvOp {
    socket: Rc<OwnedFd>,
    state: OpState,
}

impl PooledRecvOp {
    /// A receive on `socket`.
    pub fn new(socket: Rc<OwnedFd>) -> PooledRecvOp {
        PooledRecvOp { socket, state: OpState::Idle }
    }

    /// Whether a receive is in flight (its completion is still to come).
    pub fn owns_buffer(&self) -> bool {
        self.state.owns_buffers()
    }

    /// Submits a receive for the connection at `key`, into a buffer of `buffers`.
    pub fn submit(&mut self, key: SlotKey, buffers: &BufRing, queue: &mut Submissions) {
        assert_eq!(self.state, OpState::Idle, "one receive at a time");
        let fd = types::Fd(self.socket.as_raw_fd());
        let entry = opcode::Recv::new(fd, std::ptr::null_mut(), buffers.size_bytes() as u32)
            .buf_group(buffers.group())
            .build()
            .flags(squeue::Flags::BUFFER_SELECT);
        // SAFETY: the descriptor is an `Rc` this op owns and keeps until the completion
        // (dropping the op earlier leaks it: `Drop`); the buffer the kernel picks belongs to the
        // ring, which stays registered and allocated while any receive is in flight.
        unsafe { queue.push(entry.user_data(encode(OpKind::Recv, key))) };
        self.state = OpState::InFlight;
    }

    /// The connection is closing: the result will be ignored (a picked buffer is still named).
    pub fn abandon(&mut self) {
        if self.state == OpState::InFlight {
            self.state = OpState::Abandoned;
        }
    }

    /// Handles the completion. A buffer it names is the owner's to recycle, even when the
    /// receive was abandoned (then reported as `End` with the buffer in `bid`).
    pub fn complete(&mut self, result: i32, flags: u32) -> (Pooled, Option<u16>) {
        let abandoned = self.state == OpState::Abandoned;
        self.state = OpState::Idle;
        let bid = cqueue::buffer_select(flags);
        let pooled = match (result, bid) {
            _ if abandoned => Pooled::End,
            (0, _) => Pooled::End,
            (bytes, Some(bid)) if bytes > 0 => Pooled::Bytes { bid, length: bytes as usize },
            (bytes, None) if bytes > 0 => Pooled::Failed(libc::EIO),
            (errno, _) if -errno == libc::ENOBUFS => Pooled::NoBuffer,
            (errno, _) => Pooled::Failed(-errno),
        };
        (pooled, bid)
    }
}

impl Drop for PooledRecvOp {
    fn drop(&mut self) {
        if self.state.owns_buffers() {
            leak_in_flight("pooled recv", self.socket.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    use super::*;
    use crate::io::uring::ring::Ring;

    /// Submits `op` and waits (bounded) for its completion.
    fn receive(ring: &mut Ring, op: &mut PooledRecvOp, buffers: &BufRing) -> (Pooled, Option<u16>) {
        let key = SlotKey { index: 1, generation: 1 };
        op.submit(key, buffers, &mut ring.queue);
        let mut completions = Vec::new();
        for _ in 0..200 {
            ring.submit_and_wait(Duration::from_millis(10)).unwrap();
            ring.reap(&mut completions, 8);
            if let Some(&(_, result, flags)) = completions.first() {
                return op.complete(result, flags);
            }
        }
        panic!("no receive completion");
    }

    #[test]
    fn receives_draw_buffers_from_the_ring_and_recycled_ones_are_reused() {
        if let Err(reason) = super::super::probe() {
            eprintln!("io_uring unavailable here ({reason}); not tested");
            return;
        }
        let mut ring = Ring::new(super::super::build_ring(8, 16).unwrap());
        // Rounded up to two buffers of 512 bytes.
        let mut buffers = BufRing::new(ring.inner(), 7, 2, 100).unwrap();
        let (mut near, far) = UnixStream::pair().unwrap();
        let mut op = PooledRecvOp::new(Rc::new(OwnedFd::from(far)));
        let mut seen = Vec::new();
        for round in 0..5u8 {
            near.write_all(&[round; 600]).unwrap();
            let (first, bid) = receive(&mut ring, &mut op, &buffers);
            assert_eq!(first, Pooled::Bytes { bid: bid.unwrap(), length: 512 });
            assert_eq!(buffers.bytes(bid.unwrap(), 512), &[round; 512][..]);
            let (second, other) = receive(&mut ring, &mut op, &buffers);
            assert_eq!(second, Pooled::Bytes { bid: other.unwrap(), length: 88 });
            assert_ne!(bid, other, "a buffer not yet recycled is not lent twice");
            seen.extend([bid, other]);
            buffers.recycle(bid.unwrap());
            buffers.recycle(other.unwrap());
        }
        // Two buffers served ten receives: they came back each round.
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 2);
        drop(near);
        assert_eq!(receive(&mut ring, &mut op, &buffers).0, Pooled::End);
        buffers.unregister(ring.inner(), true);
        assert!(!buffers.registered);
    }
}
