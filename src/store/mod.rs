//! The piece store: memory-mapped slab files of fixed-size slots plus a durable index log.
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
pub use record::RECORD_SIZE;

use crate::config::StoreConfig;
use crate::content::{ContentId, Digest, PieceSize};
use index_log::IndexLog;
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
    #[error("piece {index} of {content_id} is {length} bytes, more than its piece size {piece_size}")]
    PieceTooLarge { content_id: ContentId, index: u64, length: usize, piece_size: u32 },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

/// A piece handed to [`Store::ingest`]; the caller has already checked `bytes` against `digest`.
#[derive(Debug, Clone, Copy)]
pub struct NewPiece<'a> {
    pub index: u64,
    pub bytes: &'a [u8],
    pub digest: Digest,
}

/// What an ingest did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestReport {
    /// Pieces written and committed.
    pub stored: usize,
    /// Pieces skipped because the store already had them.
    pub already_present: usize,
    /// Pieces evicted to make room.
    pub evicted: usize,
}

/// Counters for logs and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub pieces: u64,
    pub piece_bytes: u64,
    pub slab_bytes: u64,
    pub size_bytes_max: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    slab: u32,
    slot: u32,
    generation: u64,
    length: u32,
    digest: Digest,
    committed_unix_s: u64,
}

type SlotAddress = (u32, u32);

#[derive(Default)]
struct Index {
    contents: HashMap<ContentId, HashMap<u64, Entry>>,
    slabs: Vec<Option<Arc<Slab>>>,
}

struct Writer {
    log: IndexLog,
    owners: HashMap<SlotAddress, (ContentId, u64)>,
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
}

const SWEEP_INTERVAL_S: u64 = 60;

impl Store {
    /// Opens (or creates) the store in `dir` with the wall clock.
    pub fn open(dir: &Path, config: &StoreConfig) -> Result<Store, StoreError> {
        Self::open_with_clock(dir, config, system_clock())
    }

    /// Opens (or creates) the store in `dir`, replaying the index log.
    pub fn open_with_clock(dir: &Path, config: &StoreConfig, clock: Clock) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let lock = lock_store(dir)?;
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
        let (log, records) = IndexLog::open(dir).map_err(io_error(dir))?;
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
        };
        {
            let mut writer = store.lock_writer();
            let live = writer.owners.len();
            if record_count > 2 * live + 1024 {
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

    /// Finds a piece. The returned reference may be cached by a worker and pinned many times.
    pub fn lookup(&self, id: &str, index: u64) -> Option<PieceRef> {
        let guard = self.read_index();
        let entry = guard.contents.get(id)?.get(&index)?;
        let slab = guard.slabs.get(entry.slab as usize)?.as_ref()?.clone();
        Some(PieceRef {
            slab,
            slot: entry.slot,
            generation: entry.generation,
            length: entry.length,
            digest: entry.digest,
            committed_unix_s: entry.committed_unix_s,
        })
    }

    /// Pins a looked-up piece for reading, without a lock. `None` when it has since been evicted,
    /// expired, or (first read after a restart) its bytes do not match its digest.
    pub fn pin(&self, id: &str, index: u64, piece: &PieceRef) -> Option<PieceGuard> {
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
        if !meta.verified.load(Ordering::Acquire) {
            if crate::hash::hash_piece(guard.bytes()) != piece.digest {
                drop(guard);
                tracing::warn!(content = id, piece = index, "stored piece does not match its hash; discarding it");
                self.discard(id, index, piece.generation);
                return None;
            }
            meta.verified.store(true, Ordering::Release);
        }
        let tick = self.access_tick.fetch_add(1, Ordering::Relaxed);
        meta.last_access.store(tick, Ordering::Relaxed);
        piece.slab.last_read.store(tick, Ordering::Relaxed);
        self.note_touched(u64::from(piece.length));
        Some(guard)
    }

    /// Looks up and pins a piece.
    pub fn get(&self, id: &str, index: u64) -> Option<PieceGuard> {
        let piece = self.lookup(id, index)?;
        self.pin(id, index, &piece)
    }

    /// Whether the store holds piece `index` of `id` (not expired; bytes unchecked).
    pub fn contains(&self, id: &str, index: u64) -> bool {
        self.lookup(id, index).is_some_and(|piece| !self.expired(piece.committed_unix_s))
    }

    /// Indexes of the pieces held for `id`, sorted.
    pub fn piece_indexes(&self, id: &str) -> Vec<u64> {
        let guard = self.read_index();
        let mut indexes: Vec<u64> = guard.contents.get(id).map(|m| m.keys().copied().collect()).unwrap_or_default();
        indexes.sort_unstable();
        indexes
    }

    /// Ids of the contents with at least one piece, sorted.
    pub fn content_ids(&self) -> Vec<ContentId> {
        let mut ids: Vec<ContentId> = self.read_index().contents.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Counters for logs and metrics.
    pub fn stats(&self) -> StoreStats {
        let guard = self.read_index();
        let mut stats = StoreStats { size_bytes_max: self.config.size_bytes_max, ..StoreStats::default() };
        for pieces in guard.contents.values() {
            stats.pieces += pieces.len() as u64;
            stats.piece_bytes += pieces.values().map(|e| u64::from(e.length)).sum::<u64>();
        }
        stats.slab_bytes = guard.slabs.iter().flatten().map(|s| s.size_bytes()).sum();
        stats
    }

    /// Stores pieces of one content. Returns once every stored piece is durable and visible.
    pub fn ingest(
        &self,
        id: &ContentId,
        piece_size: PieceSize,
        pieces: &[NewPiece<'_>],
    ) -> Result<IngestReport, StoreError> {
        let mut report = IngestReport::default();
        for piece in pieces {
            if piece.bytes.len() > piece_size.bytes() as usize {
                return Err(StoreError::PieceTooLarge {
                    content_id: id.clone(),
                    index: piece.index,
                    length: piece.bytes.len(),
                    piece_size: piece_size.bytes(),
                });
            }
        }
        let mut writer = self.lock_writer();
        if self.now().saturating_sub(writer.last_sweep_unix_s) >= SWEEP_INTERVAL_S {
            report.evicted += self.sweep_expired(&mut writer)?;
        }
        let mut seen = std::collections::HashSet::new();
        let fresh: Vec<&NewPiece<'_>> =
            pieces.iter().filter(|p| !self.contains(id.as_str(), p.index) && seen.insert(p.index)).collect();
        report.already_present = pieces.len() - fresh.len();
        if fresh.is_empty() {
            return Ok(report);
        }
        let class = piece_size.log2();
        let (slots, evicted) = self.allocate(&mut writer, class, fresh.len())?;
        report.evicted += evicted;
        let slabs: Vec<Arc<Slab>> = {
            let guard = self.read_index();
            slots.iter().map(|(slab, _)| guard.slabs[*slab as usize].clone().expect("allocated slab exists")).collect()
        };
        for ((slab, (_, slot)), piece) in slabs.iter().zip(&slots).zip(&fresh) {
            slab.write(*slot, piece.bytes).map_err(io_error(slab.path()))?;
        }
        let mut synced = std::collections::HashSet::new();
        for slab in &slabs {
            if synced.insert(slab.number) {
                slab.sync().map_err(io_error(slab.path()))?;
            }
        }
        let now = self.now();
        let records: Vec<Record> = slots
            .iter()
            .zip(&fresh)
            .map(|((slab, slot), piece)| Record {
                kind: RecordKind::Commit,
                slot_size_log2: class,
                slab: *slab,
                slot: *slot,
                content_id: id.clone(),
                piece_index: piece.index,
                length: piece.bytes.len() as u32,
                committed_unix_s: now,
                digest: piece.digest,
            })
            .collect();
        writer.log.append(&records).map_err(io_error(&self.dir))?;
        let mut guard = self.write_index();
        let contents = guard.contents.entry(id.clone()).or_default();
        for ((slab, (slab_number, slot)), piece) in slabs.iter().zip(&slots).zip(&fresh) {
            let meta = &slab.slots[*slot as usize];
            let generation = meta.generation.fetch_add(1, Ordering::SeqCst) + 1;
            meta.verified.store(true, Ordering::Release);
            meta.last_access.store(self.access_tick.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
            contents.insert(
                piece.index,
                Entry {
                    slab: *slab_number,
                    slot: *slot,
                    generation,
                    length: piece.bytes.len() as u32,
                    digest: piece.digest,
                    committed_unix_s: now,
                },
            );
            writer.owners.insert((*slab_number, *slot), (id.clone(), piece.index));
        }
        drop(guard);
        report.stored = fresh.len();
        let live = writer.owners.len() as u64;
        if writer.log.record_count() > 4 * live + 4096 {
            self.compact(&mut writer)?;
        }
        Ok(report)
    }

    /// Removes every piece of `id`; pinned pieces stay readable through their guards until dropped.
    pub fn remove_content(&self, id: &str) -> Result<usize, StoreError> {
        let mut writer = self.lock_writer();
        let victims: Vec<SlotAddress> =
            writer.owners.iter().filter(|(_, (owner, _))| owner.as_str() == id).map(|(slot, _)| *slot).collect();
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
        self.scrub_while(&|| true)
    }

    /// As [`Store::scrub`], stopping early once `keep_going` says no (checked before each piece).
    pub fn scrub_while(&self, keep_going: &dyn Fn() -> bool) -> (u64, u64) {
        let (mut good, mut bad) = (0, 0);
        for id in self.content_ids() {
            for index in self.piece_indexes(id.as_str()) {
                if !keep_going() {
                    return (good, bad);
                }
                match self.get(id.as_str(), index) {
                    Some(_) => good += 1,
                    None if !self.contains(id.as_str(), index) => bad += 1,
                    None => {}
                }
            }
        }
        (good, bad)
    }

    fn sweep_expired(&self, writer: &mut Writer) -> Result<usize, StoreError> {
        writer.last_sweep_unix_s = self.now();
        let victims: Vec<SlotAddress> = {
            let guard = self.read_index();
            guard
                .contents
                .values()
                .flat_map(|pieces| pieces.values())
                .filter(|entry| self.expired(entry.committed_unix_s))
                .map(|entry| (entry.slab, entry.slot))
                .collect()
        };
        self.evict(writer, &victims)?;
        Ok(victims.len())
    }

    fn discard(&self, id: &str, index: u64, generation: u64) {
        let mut writer = self.lock_writer();
        let still_there =
            self.read_index().contents.get(id).and_then(|m| m.get(&index)).map(|e| (e.generation, e.slab, e.slot));
        if let Some((current, slab, slot)) = still_there {
            if current == generation {
                if let Err(error) = self.evict(&mut writer, &[(slab, slot)]) {
                    tracing::error!(%error, content = id, piece = index, "could not record the discard of a corrupt piece");
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
        let mut slabs = Vec::with_capacity(victims.len());
        {
            let mut guard = self.write_index();
            for &(slab_number, slot) in victims {
                let Some((id, index)) = writer.owners.remove(&(slab_number, slot)) else { continue };
                let slab = guard.slabs[slab_number as usize].clone().expect("owned slot's slab exists");
                slab.slots[slot as usize].generation.fetch_add(1, Ordering::SeqCst);
                let entry = guard.contents.get_mut(&id).and_then(|pieces| pieces.remove(&index));
                if guard.contents.get(&id).is_some_and(HashMap::is_empty) {
                    guard.contents.remove(&id);
                }
                let entry = entry.expect("owned slot has an index entry");
                records.push(Record {
                    kind: RecordKind::Evict,
                    slot_size_log2: slab.slot_size_log2,
                    slab: slab_number,
                    slot,
                    content_id: id,
                    piece_index: index,
                    length: entry.length,
                    committed_unix_s: entry.committed_unix_s,
                    digest: entry.digest,
                });
                slabs.push(slab);
            }
        }
        writer.log.append(&records).map_err(io_error(&self.dir))?;
        for (slab, record) in slabs.iter().zip(&records) {
            writer.draining.push((slab.number, record.slot));
        }
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
                .contents
                .iter()
                .flat_map(|(id, pieces)| {
                    let guard = &guard;
                    pieces.iter().map(move |(index, entry)| Record {
                        kind: RecordKind::Commit,
                        slot_size_log2: guard.slabs[entry.slab as usize].as_ref().map_or(0, |s| s.slot_size_log2),
                        slab: entry.slab,
                        slot: entry.slot,
                        content_id: id.clone(),
                        piece_index: *index,
                        length: entry.length,
                        committed_unix_s: entry.committed_unix_s,
                        digest: entry.digest,
                    })
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
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let pid = std::fs::read_to_string(&path).unwrap_or_default();
            let holder = match pid.trim() {
                "" => String::new(),
                pid => format!(" (pid {pid})"),
            };
            return Err(StoreError::Locked { path: dir.to_path_buf(), holder });
        }
        Err(std::fs::TryLockError::Error(source)) => return Err(StoreError::Io { path, source }),
    }
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| write!(file, "{}", std::process::id()))
        .map_err(io_error(&path))?;
    Ok(file)
}

/// Applies the log in order; returns which piece each occupied slot holds.
fn replay(index: &mut Index, records: Vec<Record>) -> HashMap<SlotAddress, (ContentId, u64)> {
    let mut owners: HashMap<SlotAddress, (ContentId, u64)> = HashMap::new();
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
                if let Some((old_id, old_index)) = owners.remove(&address) {
                    remove_entry(index, &old_id, old_index);
                }
                let pieces = index.contents.entry(record.content_id.clone()).or_default();
                if let Some(previous) = pieces.insert(
                    record.piece_index,
                    Entry {
                        slab: record.slab,
                        slot: record.slot,
                        generation: 1,
                        length: record.length,
                        digest: record.digest,
                        committed_unix_s: record.committed_unix_s,
                    },
                ) {
                    owners.remove(&(previous.slab, previous.slot));
                }
                owners.insert(address, (record.content_id, record.piece_index));
            }
            RecordKind::Evict => {
                if owners.get(&address).is_some_and(|(id, i)| *id == record.content_id && *i == record.piece_index) {
                    owners.remove(&address);
                    remove_entry(index, &record.content_id, record.piece_index);
                }
            }
        }
    }
    for (&(slab_number, slot), _) in owners.iter() {
        if let Some(Some(slab)) = index.slabs.get(slab_number as usize) {
            slab.slots[slot as usize].generation.store(1, Ordering::SeqCst);
        }
    }
    owners
}

fn remove_entry(index: &mut Index, id: &ContentId, piece_index: u64) {
    if let Some(pieces) = index.contents.get_mut(id) {
        pieces.remove(&piece_index);
        if pieces.is_empty() {
            index.contents.remove(id);
        }
    }
}

#[cfg(test)]
mod tests;
