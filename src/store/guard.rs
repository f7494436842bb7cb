//! Read access to stored pieces: a cacheable reference and a pin that keeps the slot's bytes.

use std::os::fd::BorrowedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::content::Digest;
use crate::store::slab::{Slab, SlotMeta};

/// Where a piece lives, as of one lookup. Cheap to clone and to cache per worker; pin it with
/// [`crate::store::Store::pin`] to read, which fails safely if the piece has since moved.
#[derive(Debug, Clone)]
pub struct PieceRef {
    pub(super) slab: Arc<Slab>,
    pub(super) slot: u32,
    pub(super) generation: u64,
    pub(super) length: u32,
    pub(super) digest: Digest,
    pub(super) committed_unix_s: u64,
}

impl PieceRef {
    /// Length of the piece in bytes.
    pub fn length(&self) -> u32 {
        self.length
    }

    /// SHA-256 of the piece, from the index.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    pub(super) fn meta(&self) -> &SlotMeta {
        &self.slab.slots[self.slot as usize]
    }
}

/// A pinned piece: its bytes stay in place (the slot is neither evicted nor rewritten) until drop.
#[derive(Debug)]
pub struct PieceGuard {
    slab: Arc<Slab>,
    slot: u32,
    length: u32,
}

impl PieceGuard {
    /// Wraps a pin already counted on the slot; dropping the guard releases it.
    pub(super) fn new(slab: Arc<Slab>, slot: u32, length: u32) -> PieceGuard {
        PieceGuard { slab, slot, length }
    }

    /// The piece's bytes, straight from the mapping.
    pub fn bytes(&self) -> &[u8] {
        self.slab.bytes(self.slot, self.length)
    }

    /// Length in bytes.
    pub fn length(&self) -> u32 {
        self.length
    }

    /// The slab file and the piece's offset in it, for senders that hand the file's pages to a
    /// socket (`sendfile`); `None` when the store's file system cannot punch holes.
    pub fn file_range(&self) -> Option<(BorrowedFd<'_>, u64)> {
        self.slab.file_range(self.slot)
    }
}

impl Drop for PieceGuard {
    fn drop(&mut self) {
        self.slab.slots[self.slot as usize].pins.fetch_sub(1, Ordering::SeqCst);
    }
}
