//! The piece store: memory-mapped slab files of fixed-size slots plus a durable index log.
//! Content-addressed: a piece is stored once, under its SHA-256, whatever contents name it.
//!
//! Commit order for every batch of pieces (docs/ARCHITECTURE.md explains why it is safe):
//! 1. data written into free slots (`pwrite`), 2. slab files flushed (`fdatasync`),
//! 3. commit records appended to the index log, 4. the log flushed, 5. pieces made visible.
//!
//! A slot is reused only after its evict record is durable and its last pin is gone.

mod guard;
mod index_log;
mod record;
mod slab;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

pub use guard::{PieceGuard, PieceRef};
pub use index_log::INDEX_LOG_NAME;
pub use record::{RECORD_SIZE, STORE_FORMAT};

use crate::config::StoreConfig;
use crate::content::{Digest, PieceSize};
use index_log::{IndexLog, LogFormat};
use record::{Record, RecordKind};
use slab::Slab;

/// Seconds since the Unix epoch, as the store sees time (injectable for tests).
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The wall clock.
pub fn system_clock() -> Clock {
    Arc::new(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0))
}

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("store is full: {needed} slot(s) of {slot_size_bytes} bytes needed, none free or evictable (max {size_bytes_max} bytes, pinned pieces are never evicted)")]
    Full { needed: usize, slot_size_bytes: u64, size_bytes_max: u64 },
    #[error("store {path} is in use by another tessera process{holder}; stop it first (one process owns a store: its pins keep slots that are being sent from being rewritten)")]
    Locked { path: PathBuf, holder: String },
    #[error("piece {} is {length} bytes, more than its piece size {piece_size}", hex::encode(.digest))]
    PieceTooLarge { digest: Digest, length: usize, piece_size: u32 },
    #[error("store at {path} is format {format}, newer than this tessera reads (format {STORE_FORMAT}, and format 1 it migrates); run the tessera that wrote it, or move {path} away to start an empty store")]
    NewerFormat { path: PathBuf, format: u32 },
    #[error("{path} is not a tessera store index log (no format header); move the store directory away to start an empty store")]
    UnknownFormat { path: PathBuf },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

/// A piece handed to [`Store::ingest`]; the caller has already checked `bytes` against `digest`.
#[derive(Debug, Clone, Copy)]
pub struct NewPiece<'a> {
    pub bytes: &'a [u8],
    pub digest: Digest,
}

/// What an ingest did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestReport {
    /// Pieces written and committed.
    pub stored: usize,
    /// Pieces skipped because the store already had their digest (their age is renewed), or
    /// because the batch named the digest before.
    pub already_present: usize,
    /// Pieces evicted to make room.
    pub evicted: usize,
}

/// Counters for logs, metrics and the status page.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoreStats {
    pub pieces: u64,
    pub piece_bytes: u64,
    pub slab_bytes: u64,
    pub size_bytes_max: u64,
    /// The store's age limit (`[store] age_s_max`).
    pub age_s_max: u64,
    /// Pieces evicted since the store was opened (to make room, expired, or failing their check).
    pub evictions_total: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    slab: u32,
    slot: u32,
    generation: u64,
    length: u32,
    committed_unix_s: u64,
}

type SlotAddress = (u32, u32);

#[derive(Default)]
struct Index {
    pieces: HashMap<Digest, Entry>,
    slabs: Vec<Option<Arc<Slab>>>,
}

impl Index {
    fn piece_ref(&self, digest: &Digest) -> Option<PieceRef> {
        let entry = self.pieces.get(digest)?;
        Some(PieceRef {
            slab: self.slabs.get(entry.slab as usize)?.as_ref()?.clone(),
            slot: entry.slot,
            generation: entry.generation,
            length: entry.length,
            digest: *digest,
            committed_unix_s: entry.committed_unix_s,
        })
    }
}

struct Writer {
    log: IndexLog,
    /// Which digest each occupied slot holds: the inverse of `Index::pieces`.
    owners: HashMap<SlotAddress, Digest>,
    free: HashMap<u8, Vec<SlotAddress>>,
    draining: Vec<SlotAddress>,
    next_slab: u32,
    slab_bytes: u64,
    last_sweep_unix_s: u64,
}

/// The piece store. Shared across cores as `Arc<Store>`; reads take no lock once a
/// [`PieceRef`] is held, writes serialise on one writer lock.
pub struct Store {
    dir: PathBuf,
    /// Held (an exclusive `flock`) for the store's lifetime: pins live in this process's memory,
    /// so a second process writing the same slabs could rewrite a slot that is being sent.
    _lock: std::fs::File,
    config: StoreConfig,
    clock: Clock,
    index: RwLock<Index>,
    writer: Mutex<Writer>,
    access_tick: AtomicU64,
    touched_bytes: AtomicU64,
    /// Pieces evicted since open, for `/metrics` and the status page.
    evictions_total: AtomicU64,
}

const SWEEP_INTERVAL_S: u64 = 60;

/// Pieces a scrub pins and hashes at once: one full set of `hash_batch`'s lanes. The pins hold
/// off eviction of these pieces only for the time of one batch.
pub const SCRUB_BATCH_PIECES: usize = crate::hash::BATCH_LANES;

/// One ingest batch, split: pieces to write, and commit records renewing pieces already held
/// (pinned until the batch is visible).
struct Batch<'p, 'b> {
    fresh: Vec<&'p NewPiece<'b>>,
    renewed: Vec<Record>,
    _pinned: Vec<PieceGuard>,
}

impl Store {
    /// Opens (or creates) the store in `dir` with the wall clock.
    pub fn open(dir: &Path, config: &StoreConfig) -> Result<Store, StoreError> {
        Self::open_with_clock(dir, config, system_clock())
    }

    /// Opens (or creates) the store in `dir`, replaying the index log; a format-1 store is
    /// migrated (its pieces re-keyed by their digests), a newer one refused.
    pub fn open_with_clock(dir: &Path, config: &StoreConfig, clock: Clock) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let lock = lock_store(dir)?;
        let (log, records, format) = IndexLog::open(dir)?;
        let (mut index, slab_bytes) = open_slabs(dir)?;
        let record_count = records.len();
        let owners = replay(&mut index, records);
        let mut free: HashMap<u8, Vec<SlotAddress>> = HashMap::new();
        for slab in index.slabs.iter().flatten() {
            for slot in (0..slab.slots.len() as u32).rev() {
                if !owners.contains_key(&(slab.number, slot)) {
                    free.entry(slab.slot_size_log2).or_default().push((slab.number, slot));
                }
            }
        }
        let writer = Writer {
            log,
            owners,
            free,
            draining: Vec::new(),
            next_slab: index.slabs.len() as u32,
            slab_bytes,
            last_sweep_unix_s: 0,
        };
        let store = Store {
            dir: dir.to_path_buf(),
            _lock: lock,
            config: config.clone(),
            clock,
            index: RwLock::new(index),
            writer: Mutex::new(writer),
            access_tick: AtomicU64::new(1),
            touched_bytes: AtomicU64::new(0),
            evictions_total: AtomicU64::new(0),
        };
        {
            let mut writer = store.lock_writer();
            let live = writer.owners.len();
            if format == LogFormat::V1 {
                store.compact(&mut writer)?;
                tracing::info!(store = %dir.display(), pieces = live, "migrated the store from format 1 to {STORE_FORMAT} (pieces keyed by SHA-256)");
            } else if record_count > 2 * live + 1024 {
                store.compact(&mut writer)?;
            }
            store.sweep_expired(&mut writer)?;
        }
        Ok(store)
    }

    /// The directory holding slabs and the index log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The limits the store runs with.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn read_index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write_index(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn now(&self) -> u64 {
        (self.clock)()
    }

    fn expired(&self, committed_unix_s: u64) -> bool {
        self.now() >= committed_unix_s.saturating_add(self.config.age_s_max)
    }

    /// Finds the piece whose SHA-256 is `digest`. The returned reference may be cached by a
    /// worker and pinned many times.
    pub fn lookup(&self, digest: &Digest) -> Option<PieceRef> {
        self.read_index().piece_ref(digest)
    }

    /// Pins a looked-up piece for reading, without a lock. `None` when it has since been evicted,
    /// expired, or (first read after a restart) its bytes do not match its digest.
    pub fn pin(&self, piece: &PieceRef) -> Option<PieceGuard> {
        let mut guard = self.pin_unverified(piece)?;
        if !piece.meta().verified.load(Ordering::Acquire) {
            let computed = crate::hash::sha256(guard.bytes());
            guard = self.settle(piece, guard, &computed)?;
        }
        self.touch(piece);
        Some(guard)
    }

    /// Pins a piece whose bytes may not have been checked yet; `None` when expired or evicted.
    fn pin_unverified(&self, piece: &PieceRef) -> Option<PieceGuard> {
        if self.expired(piece.committed_unix_s) {
            return None;
        }
        let meta = piece.meta();
        // Pin first, then check the generation: the evictor bumps the generation first, then
        // checks pins (both SeqCst), so at least one side sees the other.
        meta.pins.fetch_add(1, Ordering::SeqCst);
        let guard = PieceGuard::new(piece.slab.clone(), piece.slot, piece.length);
        if meta.generation.load(Ordering::SeqCst) != piece.generation {
            return None;
        }
        Some(guard)
    }

    /// Given the SHA-256 `computed` of a pinned piece's bytes: marks the piece verified, or (the
    /// digest is the key: bytes that do not hash to it are not this piece) discards it.
    fn settle(&self, piece: &PieceRef, guard: PieceGuard, computed: &Digest) -> Option<PieceGuard> {
        if *computed != piece.digest {
            drop(guard);
            tracing::warn!(piece = %hex::encode(piece.digest), "stored piece does not match its SHA-256; discarding it");
            self.discard(&piece.digest, piece.generation);
            return None;
        }
        piece.meta().verified.store(true, Ordering::Release);
        Some(guard)
    }

    /// Records a read of `piece` for eviction order and the touched-bytes count.
    fn touch(&self, piece: &PieceRef) {
        let tick = self.access_tick.fetch_add(1, Ordering::Relaxed);
        piece.meta().last_access.store(tick, Ordering::Relaxed);
        piece.slab.last_read.store(tick, Ordering::Relaxed);
        self.note_touched(u64::from(piece.length));
    }

    /// Looks up and pins a piece.
    pub fn get(&self, digest: &Digest) -> Option<PieceGuard> {
        let piece = self.lookup(digest)?;
        self.pin(&piece)
    }

    /// Whether the store holds the piece `digest` (not expired; bytes unchecked).
    pub fn contains(&self, digest: &Digest) -> bool {
        self.lookup(digest).is_some_and(|piece| !self.expired(piece.committed_unix_s))
    }

    /// Positions in `digests` (a hash file's list) of the pieces the store holds, ascending.
    pub fn indexes_held(&self, digests: &[Digest]) -> Vec<u64> {
        let guard = self.read_index();
        let held = |digest: &Digest| guard.pieces.get(digest).is_some_and(|e| !self.expired(e.committed_unix_s));
        (0..digests.len() as u64).filter(|&i| held(&digests[i as usize])).collect()
    }

    /// Digests of every stored piece, sorted.
    pub fn digests(&self) -> Vec<Digest> {
        let mut digests: Vec<Digest> = self.read_index().pieces.keys().copied().collect();
        digests.sort_unstable();
        digests
    }

    /// Counters for logs and metrics.
    pub fn stats(&self) -> StoreStats {
        let guard = self.read_index();
        StoreStats {
            pieces: guard.pieces.len() as u64,
            piece_bytes: guard.pieces.values().map(|e| u64::from(e.length)).sum(),
            slab_bytes: guard.slabs.iter().flatten().map(|s| s.size_bytes()).sum(),
            size_bytes_max: self.config.size_bytes_max,
            age_s_max: self.config.age_s_max,
            evictions_total: self.evictions_total.load(Ordering::Relaxed),
        }
    }

    /// Stores a batch of pieces in slots of `piece_size` (the class of the content they come
    /// from), with one slab sync per touched slab and one log sync for the batch. A digest the
    /// store already holds is not written again; its age is renewed. Returns once every piece of
    /// the batch is durable and visible. Safe to call from any thread while others read.
    pub fn ingest(&self, piece_size: PieceSize, pieces: &[NewPiece<'_>]) -> Result<IngestReport, StoreError> {
        for piece in pieces {
            if piece.bytes.len() > piece_size.bytes() as usize {
                return Err(StoreError::PieceTooLarge {
                    digest: piece.digest,
                    length: piece.bytes.len(),
                    piece_size: piece_size.bytes(),
                });
            }
        }
        let mut report = IngestReport::default();
        let mut writer = self.lock_writer();
        if self.now().saturating_sub(writer.last_sweep_unix_s) >= SWEEP_INTERVAL_S {
            report.evicted += self.sweep_expired(&mut writer)?;
        }
        // `_pinned` lives to the end: the renewed pieces must not be evicted to make room.
        let Batch { fresh, renewed, _pinned } = self.split_batch(&mut writer, pieces)?;
        report.already_present = pieces.len() - fresh.len();
        let class = piece_size.log2();
        let (slots, evicted) =
            if fresh.is_empty() { (Vec::new(), 0) } else { self.allocate(&mut writer, class, fresh.len())? };
        report.evicted += evicted;
        let slabs: Vec<Arc<Slab>> = {
            let guard = self.read_index();
            slots.iter().map(|(slab, _)| guard.slabs[*slab as usize].clone().expect("allocated slab exists")).collect()
        };
        write_durably(&slabs, &slots, &fresh)?;
        let now = self.now();
        let commit = |(slab, slot): SlotAddress, length: u32, digest: Digest| Record {
            kind: RecordKind::Commit,
            slot_size_log2: class,
            slab,
            slot,
            length,
            committed_unix_s: now,
            digest,
        };
        let mut records: Vec<Record> = slots
            .iter()
            .zip(&fresh)
            .map(|(&address, piece)| commit(address, piece.bytes.len() as u32, piece.digest))
            .collect();
        records.extend(renewed.iter().map(|r| Record { committed_unix_s: now, ..r.clone() }));
        writer.log.append(&records).map_err(io_error(&self.dir))?;
        self.publish_batch(&mut writer, &slabs, &slots, &fresh, &renewed, now);
        report.stored = fresh.len();
        let live = writer.owners.len() as u64;
        if writer.log.record_count() > 4 * live + 4096 {
            self.compact(&mut writer)?;
        }
        Ok(report)
    }

    /// Splits a batch into pieces to write (first mention of a digest the store lacks) and
    /// records renewing the age of digests it holds; those are pinned (and count as just used)
    /// so that making room for the rest cannot evict them. Expired holdings are evicted first,
    /// so a digest is never indexed twice.
    fn split_batch<'p, 'b>(
        &self,
        writer: &mut Writer,
        pieces: &'p [NewPiece<'b>],
    ) -> Result<Batch<'p, 'b>, StoreError> {
        let mut seen = std::collections::HashSet::with_capacity(pieces.len());
        let mut stale = Vec::new();
        let mut batch = Batch { fresh: Vec::new(), renewed: Vec::new(), _pinned: Vec::new() };
        {
            let guard = self.read_index();
            for piece in pieces.iter().filter(|p| seen.insert(p.digest)) {
                match guard.pieces.get(&piece.digest) {
                    Some(entry) if !self.expired(entry.committed_unix_s) => {
                        let slab = guard.slabs[entry.slab as usize].clone().expect("indexed slab exists");
                        let meta = &slab.slots[entry.slot as usize];
                        // Under the writer lock nothing evicts, so this pin needs no generation check.
                        meta.pins.fetch_add(1, Ordering::SeqCst);
                        meta.last_access.store(self.access_tick.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
                        batch.renewed.push(entry_record(RecordKind::Commit, slab.slot_size_log2, &piece.digest, entry));
                        batch._pinned.push(PieceGuard::new(slab, entry.slot, entry.length));
                    }
                    Some(entry) => {
                        stale.push((entry.slab, entry.slot));
                        batch.fresh.push(piece);
                    }
                    None => batch.fresh.push(piece),
                }
            }
        }
        self.evict(writer, &stale)?;
        Ok(batch)
    }

    /// Makes a durable batch visible: new pieces get their slots (generation bumped, already
    /// verified), renewed ones their new commit time.
    fn publish_batch(
        &self,
        writer: &mut Writer,
        slabs: &[Arc<Slab>],
        slots: &[SlotAddress],
        fresh: &[&NewPiece<'_>],
        renewed: &[Record],
        now: u64,
    ) {
        let mut guard = self.write_index();
        for ((slab, &(slab_number, slot)), piece) in slabs.iter().zip(slots).zip(fresh) {
            let meta = &slab.slots[slot as usize];
            let generation = meta.generation.fetch_add(1, Ordering::SeqCst) + 1;
            meta.verified.store(true, Ordering::Release);
            meta.last_access.store(self.access_tick.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
            let entry =
                Entry { slab: slab_number, slot, generation, length: piece.bytes.len() as u32, committed_unix_s: now };
            let previous = guard.pieces.insert(piece.digest, entry);
            assert!(previous.is_none(), "a digest is indexed once");
            let replaced = writer.owners.insert((slab_number, slot), piece.digest);
            assert!(replaced.is_none(), "an allocated slot was free");
        }
        for record in renewed {
            if let Some(entry) = guard.pieces.get_mut(&record.digest) {
                entry.committed_unix_s = now;
            }
        }
    }

    /// Removes the pieces `digests` (those held); pinned ones stay readable through their guards
    /// until dropped. Returns how many were removed.
    pub fn remove(&self, digests: &[Digest]) -> Result<usize, StoreError> {
        let mut writer = self.lock_writer();
        let victims: Vec<SlotAddress> = {
            let guard = self.read_index();
            digests.iter().filter_map(|d| guard.pieces.get(d)).map(|e| (e.slab, e.slot)).collect()
        };
        self.evict(&mut writer, &victims)?;
        Ok(victims.len())
    }

    /// Evicts every expired piece now; returns how many.
    pub fn sweep(&self) -> Result<usize, StoreError> {
        let mut writer = self.lock_writer();
        self.sweep_expired(&mut writer)
    }

    /// Checks every stored piece against its digest now, discarding bad ones; returns (good, bad).
    pub fn scrub(&self) -> (u64, u64) {
        self.scrub_while(&[], &|| true)
    }

    /// As [`Store::scrub`], stopping early once `keep_going` says no (checked before each batch
    /// of [`SCRUB_BATCH_PIECES`]). The held pieces among `first` are checked first, in that order,
    /// then the others.
    pub fn scrub_while(&self, first: &[Digest], keep_going: &dyn Fn() -> bool) -> (u64, u64) {
        let held = self.digests();
        let mut order = Vec::with_capacity(held.len());
        {
            let mut left: std::collections::HashSet<Digest> = held.iter().copied().collect();
            for digest in first.iter().chain(&held) {
                if left.remove(digest) {
                    order.push(*digest);
                }
            }
        }
        let (mut good, mut bad) = (0, 0);
        for digests in order.chunks(SCRUB_BATCH_PIECES) {
            if !keep_going() {
                break;
            }
            let (batch_good, batch_bad) = self.scrub_batch(digests);
            good += batch_good;
            bad += batch_bad;
        }
        (good, bad)
    }

    /// Checks the pieces `digests` (those still held and not expired) with one `hash_batch`.
    fn scrub_batch(&self, digests: &[Digest]) -> (u64, u64) {
        let (mut good, mut bad) = (0, 0);
        let mut unchecked = Vec::with_capacity(digests.len());
        for digest in digests {
            let Some(piece) = self.lookup(digest) else { continue };
            let Some(guard) = self.pin_unverified(&piece) else { continue };
            if piece.meta().verified.load(Ordering::Acquire) {
                self.touch(&piece);
                good += 1;
            } else {
                unchecked.push((piece, guard));
            }
        }
        let bytes: Vec<&[u8]> = unchecked.iter().map(|(_, guard)| guard.bytes()).collect();
        let computed = crate::hash::hash_batch(&bytes);
        drop(bytes);
        for ((piece, guard), digest) in unchecked.into_iter().zip(&computed) {
            match self.settle(&piece, guard, digest) {
                Some(_) => {
                    self.touch(&piece);
                    good += 1;
                }
                None => bad += 1,
            }
        }
        (good, bad)
    }

    fn sweep_expired(&self, writer: &mut Writer) -> Result<usize, StoreError> {
        writer.last_sweep_unix_s = self.now();
        let victims: Vec<SlotAddress> = {
            let guard = self.read_index();
            guard
                .pieces
                .values()
                .filter(|entry| self.expired(entry.committed_unix_s))
                .map(|entry| (entry.slab, entry.slot))
                .collect()
        };
        self.evict(writer, &victims)?;
        Ok(victims.len())
    }

    fn discard(&self, digest: &Digest, generation: u64) {
        let mut writer = self.lock_writer();
        let still_there = self.read_index().pieces.get(digest).map(|e| (e.generation, e.slab, e.slot));
        if let Some((current, slab, slot)) = still_there {
            if current == generation {
                if let Err(error) = self.evict(&mut writer, &[(slab, slot)]) {
                    tracing::error!(%error, piece = %hex::encode(digest), "could not record the discard of a corrupt piece");
                }
            }
        }
    }

    /// Finds `count` free slots of class `log2`, growing or evicting as the limits allow.
    fn allocate(&self, writer: &mut Writer, log2: u8, count: usize) -> Result<(Vec<SlotAddress>, usize), StoreError> {
        self.reclaim_drained(writer);
        let mut evicted = 0;
        loop {
            let have = writer.free.get(&log2).map_or(0, Vec::len);
            if have >= count {
                let free = writer.free.get_mut(&log2).expect("checked above");
                let at = free.len() - count;
                return Ok((free.split_off(at), evicted));
            }
            let slab_bytes = self.config.slab_size_bytes.max(1 << log2);
            if writer.slab_bytes + slab_bytes <= self.config.size_bytes_max {
                self.add_slab(writer, log2, slab_bytes)?;
                continue;
            }
            let victims = self.lru_victims(writer, log2, count - have);
            if victims.is_empty() {
                return Err(StoreError::Full {
                    needed: count - have,
                    slot_size_bytes: 1 << log2,
                    size_bytes_max: self.config.size_bytes_max,
                });
            }
            evicted += victims.len();
            self.evict(writer, &victims)?;
            if writer.free.get(&log2).map_or(0, Vec::len) == have {
                // Everything evicted was still pinned; it drains later.
                return Err(StoreError::Full {
                    needed: count - have,
                    slot_size_bytes: 1 << log2,
                    size_bytes_max: self.config.size_bytes_max,
                });
            }
        }
    }

    fn add_slab(&self, writer: &mut Writer, log2: u8, slab_bytes: u64) -> Result<(), StoreError> {
        let number = writer.next_slab;
        let slot_count = (slab_bytes >> log2) as u32;
        let slab = Slab::open(&self.dir, log2, number, slot_count).map_err(io_error(&self.dir))?;
        writer.next_slab += 1;
        writer.slab_bytes += slab.size_bytes();
        let free = writer.free.entry(log2).or_default();
        free.extend((0..slot_count).rev().map(|slot| (number, slot)));
        let mut guard = self.write_index();
        if guard.slabs.len() <= number as usize {
            guard.slabs.resize(number as usize + 1, None);
        }
        guard.slabs[number as usize] = Some(Arc::new(slab));
        Ok(())
    }

    /// Least recently used unpinned occupied slots of a class.
    fn lru_victims(&self, writer: &Writer, log2: u8, count: usize) -> Vec<SlotAddress> {
        let guard = self.read_index();
        let mut candidates: Vec<(u64, SlotAddress)> = writer
            .owners
            .keys()
            .filter_map(|&(slab_number, slot)| {
                let slab = guard.slabs.get(slab_number as usize)?.as_ref()?;
                let meta = &slab.slots[slot as usize];
                (slab.slot_size_log2 == log2 && meta.pins.load(Ordering::SeqCst) == 0)
                    .then(|| (meta.last_access.load(Ordering::Relaxed), (slab_number, slot)))
            })
            .collect();
        let take = count.min(candidates.len());
        if take == 0 {
            return Vec::new();
        }
        candidates.select_nth_unstable_by_key(take - 1, |(tick, _)| *tick);
        candidates.truncate(take);
        candidates.into_iter().map(|(_, address)| address).collect()
    }

    /// Makes pieces invisible, records the evictions durably, then frees their slots
    /// (or parks them until their last pin is dropped).
    fn evict(&self, writer: &mut Writer, victims: &[SlotAddress]) -> Result<(), StoreError> {
        if victims.is_empty() {
            return Ok(());
        }
        let mut records = Vec::with_capacity(victims.len());
        {
            let mut guard = self.write_index();
            for &(slab_number, slot) in victims {
                let Some(digest) = writer.owners.remove(&(slab_number, slot)) else { continue };
                let slab = guard.slabs[slab_number as usize].clone().expect("owned slot's slab exists");
                slab.slots[slot as usize].generation.fetch_add(1, Ordering::SeqCst);
                let entry = guard.pieces.remove(&digest).expect("owned slot has an index entry");
                assert_eq!((entry.slab, entry.slot), (slab_number, slot), "owners and index agree");
                records.push(entry_record(RecordKind::Evict, slab.slot_size_log2, &digest, &entry));
            }
        }
        writer.log.append(&records).map_err(io_error(&self.dir))?;
        self.evictions_total.fetch_add(records.len() as u64, Ordering::Relaxed);
        writer.draining.extend(records.iter().map(|record| (record.slab, record.slot)));
        self.reclaim_drained(writer);
        Ok(())
    }

    fn reclaim_drained(&self, writer: &mut Writer) {
        let guard = self.read_index();
        let mut still_pinned = Vec::new();
        for (slab_number, slot) in std::mem::take(&mut writer.draining) {
            let Some(Some(slab)) = guard.slabs.get(slab_number as usize) else { continue };
            if slab.slots[slot as usize].pins.load(Ordering::SeqCst) == 0 {
                writer.free.entry(slab.slot_size_log2).or_default().push((slab_number, slot));
            } else {
                still_pinned.push((slab_number, slot));
            }
        }
        writer.draining = still_pinned;
    }

    fn compact(&self, writer: &mut Writer) -> Result<(), StoreError> {
        let live: Vec<Record> = {
            let guard = self.read_index();
            guard
                .pieces
                .iter()
                .map(|(digest, entry)| {
                    let class = guard.slabs[entry.slab as usize].as_ref().map_or(0, |s| s.slot_size_log2);
                    entry_record(RecordKind::Commit, class, digest, entry)
                })
                .collect()
        };
        writer.log.rewrite(&live).map_err(io_error(&self.dir))
    }

    /// Bounds resident memory: after every `resident_trim_bytes` read, the most recently read
    /// slabs stay mapped up to that budget and every other slab drops its page-table entries.
    /// (Dropping all of them would make a hot working set refault on every window.)
    fn note_touched(&self, bytes: u64) {
        let before = self.touched_bytes.fetch_add(bytes, Ordering::Relaxed);
        let budget = self.config.resident_trim_bytes;
        if before + bytes < budget {
            return;
        }
        if self.touched_bytes.compare_exchange(before + bytes, 0, Ordering::Relaxed, Ordering::Relaxed).is_err() {
            return;
        }
        let mut slabs: Vec<Arc<Slab>> = self.read_index().slabs.iter().flatten().cloned().collect();
        slabs.sort_unstable_by_key(|slab| std::cmp::Reverse(slab.last_read.load(Ordering::Relaxed)));
        let mut kept_bytes = 0u64;
        for slab in slabs {
            let read_since_open = slab.last_read.load(Ordering::Relaxed) > 0;
            if read_since_open && kept_bytes + slab.size_bytes() <= budget {
                kept_bytes += slab.size_bytes();
            } else {
                slab.release_resident();
            }
        }
    }
}

/// Name of the lock file inside the store directory; it holds the owner's process id.
pub const LOCK_FILE_NAME: &str = "lock";

/// Tries of a lock this process itself released (see [`lock_store`]), and the wait between them.
const OWN_LOCK_RETRIES_MAX: u32 = 50;
const OWN_LOCK_RETRY_WAIT: std::time::Duration = std::time::Duration::from_millis(10);

/// Takes the store's exclusive lock, or says which process holds it.
fn lock_store(dir: &Path) -> Result<std::fs::File, StoreError> {
    use std::io::{Seek, Write};
    let path = dir.join(LOCK_FILE_NAME);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_error(&path))?;
    let mut attempts = 0;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) => {
                let pid = std::fs::read_to_string(&path).unwrap_or_default();
                // Held under this process's own id: this process closed the store, but a child
                // forked meanwhile still has the lock's descriptor until it execs (close-on-exec).
                if pid.trim() == std::process::id().to_string() && attempts < OWN_LOCK_RETRIES_MAX {
                    attempts += 1;
                    std::thread::sleep(OWN_LOCK_RETRY_WAIT);
                    continue;
                }
                let holder = match pid.trim() {
                    "" => String::new(),
                    pid => format!(" (pid {pid})"),
                };
                return Err(StoreError::Locked { path: dir.to_path_buf(), holder });
            }
            Err(std::fs::TryLockError::Error(source)) => return Err(StoreError::Io { path, source }),
        }
    }
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| write!(file, "{}", std::process::id()))
        .map_err(io_error(&path))?;
    Ok(file)
}

/// Writes each fresh piece into its slot, then syncs every touched slab once (commit steps 1-2).
fn write_durably(slabs: &[Arc<Slab>], slots: &[SlotAddress], fresh: &[&NewPiece<'_>]) -> Result<(), StoreError> {
    for ((slab, (_, slot)), piece) in slabs.iter().zip(slots).zip(fresh) {
        slab.write(*slot, piece.bytes).map_err(io_error(slab.path()))?;
    }
    let mut synced = std::collections::HashSet::new();
    for slab in slabs {
        if synced.insert(slab.number) {
            slab.sync().map_err(io_error(slab.path()))?;
        }
    }
    Ok(())
}

/// The record that commits (or evicts) `entry`.
fn entry_record(kind: RecordKind, slot_size_log2: u8, digest: &Digest, entry: &Entry) -> Record {
    Record {
        kind,
        slot_size_log2,
        slab: entry.slab,
        slot: entry.slot,
        length: entry.length,
        committed_unix_s: entry.committed_unix_s,
        digest: *digest,
    }
}

/// Maps every slab file in `dir`; returns the index (no pieces yet) and the slabs' total bytes.
fn open_slabs(dir: &Path) -> Result<(Index, u64), StoreError> {
    let mut index = Index::default();
    let mut slab_bytes = 0;
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name();
        let Some((log2, number)) = Slab::parse_file_name(&name.to_string_lossy()) else { continue };
        if !(16..=24).contains(&log2) {
            continue;
        }
        let length = entry.metadata().map_err(io_error(&entry.path()))?.len();
        let slot_count = (length >> log2).max(1) as u32;
        let slab = Slab::open(dir, log2, number, slot_count).map_err(io_error(&entry.path()))?;
        slab_bytes += slab.size_bytes();
        let at = number as usize;
        if index.slabs.len() <= at {
            index.slabs.resize(at + 1, None);
        }
        index.slabs[at] = Some(Arc::new(slab));
    }
    Ok((index, slab_bytes))
}

/// Applies the log in order; returns which digest each occupied slot holds. A digest committed
/// again in another slot (format 1 could hold one piece twice) moves there; its old slot is free.
fn replay(index: &mut Index, records: Vec<Record>) -> HashMap<SlotAddress, Digest> {
    let mut owners: HashMap<SlotAddress, Digest> = HashMap::new();
    for record in records {
        let address = (record.slab, record.slot);
        let slab = match index.slabs.get(record.slab as usize) {
            Some(Some(slab))
                if (record.slot as usize) < slab.slots.len() && slab.slot_size_log2 == record.slot_size_log2 =>
            {
                slab
            }
            _ => continue,
        };
        match record.kind {
            RecordKind::Commit => {
                if u64::from(record.length) > slab.slot_size() {
                    continue;
                }
                if let Some(old) = owners.remove(&address) {
                    index.pieces.remove(&old);
                }
                let entry = Entry {
                    slab: record.slab,
                    slot: record.slot,
                    generation: 1,
                    length: record.length,
                    committed_unix_s: record.committed_unix_s,
                };
                if let Some(previous) = index.pieces.insert(record.digest, entry) {
                    owners.remove(&(previous.slab, previous.slot));
                }
                owners.insert(address, record.digest);
            }
            RecordKind::Evict => {
                if owners.get(&address) == Some(&record.digest) {
                    owners.remove(&address);
                    index.pieces.remove(&record.digest);
                }
            }
        }
    }
    for &(slab_number, slot) in owners.keys() {
        if let Some(Some(slab)) = index.slabs.get(slab_number as usize) {
            slab.slots[slot as usize].generation.store(1, Ordering::SeqCst);
        }
    }
    owners
}

#[cfg(test)]
mod tests;
