//! Slab files: fixed-size slots in one file, mapped read-only and shared by every core.
//!
//! Bytes go in with `pwrite` (the page cache keeps the shared mapping coherent) and come out
//! as slices of the mapping, so serving a piece copies nothing in user space.
//!
//! They may also come out as the file's own pages (`sendfile`), which a socket then references
//! after the call returns: until the peer has read them, on loopback; until they are
//! acknowledged, on a network. Rewriting such pages in place would change bytes already "sent".
//! So where the file system can punch holes, a slot whose pages were handed out (or that an
//! earlier process wrote: its sockets may outlive it) has them dropped from the file
//! (`FALLOC_FL_PUNCH_HOLE`) before a new piece is written into it: sockets keep the old pages,
//! the new piece gets fresh ones. Slots never handed out are rewritten in place, without the
//! punch (a file system transaction each). Where the file system cannot punch holes,
//! [`Slab::file_range`] says `None` and senders copy from the mapping instead.

#![allow(unsafe_code)] // the one file of the store that maps memory; every block has a SAFETY line

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use memmap2::{Mmap, MmapOptions, UncheckedAdvice};

/// Per-slot state that readers touch without a lock.
#[derive(Debug, Default)]
pub struct SlotMeta {
    /// Readers (guards) currently holding the slot's bytes; a pinned slot is never rewritten.
    pub pins: AtomicU32,
    /// Bumped whenever the slot's piece is invalidated or the slot is reassigned.
    pub generation: AtomicU64,
    /// Access tick of the last read, for LRU eviction.
    pub last_access: AtomicU64,
    /// Whether the bytes were checked against the digest since this process opened the store.
    pub verified: AtomicBool,
    /// Whether a socket may still hold the slot's pages (they were handed out for `sendfile`,
    /// or by a process before this one): the slot is punched out before it is rewritten.
    pub lent: AtomicBool,
}

/// One slab file and its mapping.
#[derive(Debug)]
pub struct Slab {
    /// Global slab number (part of the file name and of index records).
    pub number: u32,
    /// log2 of the slot size.
    pub slot_size_log2: u8,
    /// Lock-free per-slot state.
    pub slots: Box<[SlotMeta]>,
    /// Access tick of the last read of any slot (0: none since open), for the resident-memory trim.
    pub last_read: AtomicU64,
    path: PathBuf,
    file: File,
    map: Mmap,
    /// Whether the file system punches holes: a slot's pages may then be handed to sockets.
    file_sends: bool,
}

impl Slab {
    /// File name of slab `number` with slots of `2^slot_size_log2` bytes.
    pub fn file_name(slot_size_log2: u8, number: u32) -> String {
        format!("slab-{slot_size_log2:02}-{number:06}.dat")
    }

    /// Parses a slab file name into (slot size log2, number).
    pub fn parse_file_name(name: &str) -> Option<(u8, u32)> {
        let rest = name.strip_prefix("slab-")?.strip_suffix(".dat")?;
        let (log2, number) = rest.split_once('-')?;
        Some((log2.parse().ok()?, number.parse().ok()?))
    }

    /// Opens (creating if missing) a slab of `slot_count` slots in `dir`.
    pub fn open(dir: &Path, slot_size_log2: u8, number: u32, slot_count: u32) -> std::io::Result<Slab> {
        let path = dir.join(Self::file_name(slot_size_log2, number));
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        let size_bytes = u64::from(slot_count) << slot_size_log2;
        let length_before = file.metadata()?.len();
        if length_before != size_bytes {
            file.set_len(size_bytes)?;
        }
        // SAFETY: the mapping is read-only and shared. Bytes of a slot change (through pwrite)
        // only while the slot holds no visible piece and no pin, so no slice handed out by a
        // guard ever observes a write; other processes do not write tessera's slab files.
        let map = unsafe { MmapOptions::new().len(size_bytes as usize).map(&file)? };
        // The sockets of an earlier process may outlive it for a while, still sending its pages.
        let lent = length_before > 0;
        let slots = (0..slot_count).map(|_| SlotMeta { lent: AtomicBool::new(lent), ..SlotMeta::default() }).collect();
        let file_sends = punches_holes(&file, size_bytes);
        Ok(Slab { number, slot_size_log2, slots, last_read: AtomicU64::new(0), path, file, map, file_sends })
    }

    /// Slot size in bytes.
    pub fn slot_size(&self) -> u64 {
        1u64 << self.slot_size_log2
    }

    /// Size of the slab file in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.slot_size() * self.slots.len() as u64
    }

    fn offset(&self, slot: u32) -> u64 {
        u64::from(slot) << self.slot_size_log2
    }

    /// The first `length` bytes of `slot`, straight from the mapping.
    pub fn bytes(&self, slot: u32, length: u32) -> &[u8] {
        let start = self.offset(slot) as usize;
        &self.map[start..start + length as usize]
    }

    /// Writes a piece into a slot that holds no visible piece and no pin.
    ///
    /// When its pages may have gone to a socket, the slot's old pages are punched out first, so
    /// that a socket still holding them keeps the old piece's bytes (see the module doc).
    pub fn write(&self, slot: u32, bytes: &[u8]) -> std::io::Result<()> {
        assert!(bytes.len() as u64 <= self.slot_size(), "piece larger than slot");
        if self.file_sends && self.slots[slot as usize].lent.swap(false, Ordering::AcqRel) {
            punch_hole(&self.file, self.offset(slot), self.slot_size())?;
        }
        self.file.write_all_at(bytes, self.offset(slot))
    }

    /// Makes written bytes durable.
    pub fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// The file and byte offset of `slot`, for senders that hand the file's pages to a socket
    /// (`sendfile`); `None` where the file system cannot punch holes, so pages may not leave.
    /// Marks the slot lent: its next write punches its pages out first.
    pub fn file_range(&self, slot: u32) -> Option<(BorrowedFd<'_>, u64)> {
        if !self.file_sends {
            return None;
        }
        // Before the caller can hand the pages out; the writer sees it once the pin is dropped.
        self.slots[slot as usize].lent.store(true, Ordering::Release);
        Some((self.file.as_fd(), self.offset(slot)))
    }

    /// Drops this process's page-table entries for the slab: resident memory falls, the page
    /// cache keeps the data, and the next read faults the pages back in.
    pub fn release_resident(&self) {
        // SAFETY: MADV_DONTNEED on a shared, file-backed, read-only mapping never discards data:
        // the file's page cache is the source of truth and later reads refault identical bytes.
        if let Err(error) = unsafe { self.map.unchecked_advise(UncheckedAdvice::DontNeed) } {
            tracing::debug!(%error, path = %self.path.display(), "madvise(DONTNEED) failed");
        }
    }

    /// Path of the slab file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn punch_hole(file: &File, offset: u64, length: u64) -> std::io::Result<()> {
    use nix::fcntl::{fallocate, FallocateFlags};
    let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    fallocate(file, flags, offset as i64, length as i64).map_err(std::io::Error::from)
}

/// Whether `file`'s file system punches holes: tried past its end (`size_bytes`), where it
/// drops nothing.
fn punches_holes(file: &File, size_bytes: u64) -> bool {
    match punch_hole(file, size_bytes, 4096) {
        Ok(()) => true,
        Err(error) => {
            tracing::info!(%error, "the store's file system cannot punch holes: pieces are sent by copy");
            false
        }
    }
}
