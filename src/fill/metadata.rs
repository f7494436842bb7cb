//! [`MetadataCache`]: one metadata fetch (manifest, then hash file) per id at a time, results
//! cached with an expiry, a changed hash file served as a new [`ContentVersion`] to new requests
//! while responses streaming the old one keep their `Arc`.
//!
//! Hits never wait on upstream: a worker serving an id whose metadata may have expired asks for
//! a background [`MetadataCache::refresh`]; every new version (first or changed) comes out of
//! [`MetadataCache::poll_version`] so the box's catalog, and through it the workers, switch to it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::content::{decide, ContentId, Digest, HashFile, Manifest, MetadataFailure, Mode, SimpleReason};

use super::limits::MetadataLimits;
use super::WaiterKey;

/// A content's verified metadata, as one version: what a streaming response holds on to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentVersion {
    /// The content id.
    pub id: ContentId,
    /// Numbers the versions of this process, from 1: a new version of an id always gets a larger
    /// number, even after its entry was dropped from the cache and fetched again.
    pub version: u64,
    /// The manifest.
    pub manifest: Manifest,
    /// The hash file, verified against the manifest.
    pub hashes: HashFile,
}

impl ContentVersion {
    /// Number of pieces.
    pub fn piece_count(&self) -> u64 {
        self.hashes.piece_count()
    }

    /// Digest of piece `index` (which must exist).
    pub fn digest(&self, index: u64) -> Digest {
        *self.hashes.digest(index).expect("piece index inside the content")
    }

    /// Length of piece `index` (which must exist).
    pub fn piece_length(&self, index: u64) -> u32 {
        self.hashes.piece_length(index).expect("piece index inside the content")
    }
}

/// A content whose metadata failed: its bytes are passed through from an HTTP source, never
/// stored or served as pieces, never announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimpleContent {
    /// The content id.
    pub id: ContentId,
    /// Why Simple mode.
    pub reason: SimpleReason,
    /// The manifest's HTTP sources, when the manifest was had (none: the box answers 502).
    pub sources: Vec<String>,
}

/// What is known of a content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Metadata {
    /// Verified metadata: pieces can be filled and served.
    P2p(Arc<ContentVersion>),
    /// Simple mode, with the reason.
    Simple(Arc<SimpleContent>),
}

/// The answer to a metadata request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaAnswer {
    /// Cached and fresh.
    Ready(Metadata),
    /// Being fetched: a [`MetaReady`] follows.
    Pending,
    /// A limit was hit: 503 with `Retry-After`.
    Busy {
        /// Seconds for `Retry-After`.
        retry_after_s: u32,
    },
}

/// A pending request's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaReady {
    /// Who asked.
    pub waiter: WaiterKey,
    /// The metadata.
    pub metadata: Metadata,
}

/// One metadata fetch, unique in the cache's lifetime; stale answers are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MetaFetchId(pub u64);

/// Which document to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaStep {
    /// The manifest, from the upstream service over TLS.
    Manifest,
    /// The hash file this manifest names (service, its hash-file URLs, or a parent).
    HashFile(Arc<Manifest>),
}

/// Fetch one document of one id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaFetch {
    /// Its id, for the answer.
    pub fetch: MetaFetchId,
    /// The content.
    pub id: ContentId,
    /// What to fetch.
    pub step: MetaStep,
}

/// What the metadata fetcher should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaAction {
    /// Fetch this document and answer with `handle_manifest` or `handle_hashfile`.
    Fetch(MetaFetch),
    /// It timed out: drop it.
    Cancel(MetaFetchId),
}

#[derive(Debug)]
struct InFlight {
    step: MetaStep,
    deadline_ms: u64,
}

#[derive(Debug)]
struct Entry {
    current: Option<Metadata>,
    expires_at_ms: u64,
    fetch: Option<InFlight>,
    waiters: Vec<WaiterKey>,
    last_used_ms: u64,
}

impl Entry {
    fn new(now_ms: u64) -> Entry {
        Entry { current: None, expires_at_ms: 0, fetch: None, waiters: Vec::new(), last_used_ms: now_ms }
    }
}

/// The per-id metadata state machine.
#[derive(Debug)]
pub struct MetadataCache {
    limits: MetadataLimits,
    entries: HashMap<ContentId, Entry>,
    fetches: HashMap<MetaFetchId, ContentId>,
    next_fetch: u64,
    actions: VecDeque<MetaAction>,
    ready: VecDeque<MetaReady>,
    /// New versions not yet taken; at most one per cached id (older ones of an id are dropped).
    versions: VecDeque<Arc<ContentVersion>>,
    /// The last version number given.
    last_version: u64,
}

impl MetadataCache {
    /// Replaces the limits on a reload: expiry and retry timing only (the bounds of what the
    /// cache holds stay, as the engine's do).
    pub fn set_limits(&mut self, limits: MetadataLimits) {
        let sizes = |l: &MetadataLimits| (l.entries_max, l.fetches_in_flight_max, l.waiters_per_id_max, l.timeout_ms);
        assert_eq!(sizes(&limits), sizes(&self.limits), "a reload changed a bound of what the cache holds");
        self.limits = limits;
    }

    /// An empty cache.
    pub fn new(limits: MetadataLimits) -> MetadataCache {
        assert!(limits.entries_max >= 1 && limits.fetches_in_flight_max >= 1 && limits.waiters_per_id_max >= 1);
        MetadataCache {
            limits,
            entries: HashMap::new(),
            fetches: HashMap::new(),
            next_fetch: 0,
            actions: VecDeque::new(),
            ready: VecDeque::new(),
            versions: VecDeque::new(),
            last_version: 0,
        }
    }

    /// `waiter` needs the metadata of `id`: fresh cached metadata at once, else it waits on the
    /// one fetch of that id (started if none runs).
    pub fn request(&mut self, waiter: WaiterKey, id: &ContentId, now_ms: u64) -> MetaAnswer {
        let busy = MetaAnswer::Busy { retry_after_s: self.limits.busy_retry_after_s };
        if !self.entries.contains_key(id) && !self.make_room(now_ms) {
            return busy;
        }
        let fetching = self.fetches.len();
        let entry = self.entries.entry(id.clone()).or_insert_with(|| Entry::new(now_ms));
        entry.last_used_ms = now_ms;
        if let (Some(current), None) = (&entry.current, &entry.fetch) {
            if now_ms < entry.expires_at_ms {
                return MetaAnswer::Ready(current.clone());
            }
        }
        if entry.waiters.len() >= self.limits.waiters_per_id_max as usize {
            return busy;
        }
        if entry.fetch.is_none() {
            if fetching >= self.limits.fetches_in_flight_max as usize {
                return busy;
            }
            self.start(id.clone(), MetaStep::Manifest, now_ms);
        }
        let entry = self.entries.get_mut(id).expect("entry present");
        entry.waiters.push(waiter);
        debug_assert!(entry.waiters.len() <= self.limits.waiters_per_id_max as usize);
        MetaAnswer::Pending
    }

    /// A worker served `id` from what it holds and its metadata may be stale: fetch it again in
    /// the background unless it is fresh or being fetched. Nobody waits; a changed version comes
    /// out of [`MetadataCache::poll_version`]. Returns whether a fetch started (not when a limit
    /// is hit: a later hint tries again).
    pub fn refresh(&mut self, id: &ContentId, now_ms: u64) -> bool {
        if let Some(entry) = self.entries.get(id) {
            if entry.fetch.is_some() || (entry.current.is_some() && now_ms < entry.expires_at_ms) {
                return false;
            }
        } else if !self.make_room(now_ms) {
            return false;
        }
        if self.fetches.len() >= self.limits.fetches_in_flight_max as usize {
            return false;
        }
        let entry = self.entries.entry(id.clone()).or_insert_with(|| Entry::new(now_ms));
        entry.last_used_ms = now_ms;
        self.start(id.clone(), MetaStep::Manifest, now_ms);
        true
    }

    /// The waiter went away.
    pub fn cancel(&mut self, waiter: WaiterKey, id: &ContentId) {
        if let Some(entry) = self.entries.get_mut(id) {
            entry.waiters.retain(|w| *w != waiter);
        }
    }

    /// The manifest fetch ended; on success the hash file is fetched next.
    pub fn handle_manifest(&mut self, fetch: MetaFetchId, manifest: Result<Manifest, MetadataFailure>, now_ms: u64) {
        let Some(id) = self.take_fetch(fetch, |step| matches!(step, MetaStep::Manifest)) else { return };
        match manifest {
            Ok(manifest) => self.start(id, MetaStep::HashFile(Arc::new(manifest)), now_ms),
            Err(failure) => {
                let simple = match decide(Err(failure), Err(MetadataFailure::NotFound)) {
                    Mode::Simple { reason } => reason,
                    Mode::P2p { .. } => unreachable!("no manifest is never P2P"),
                };
                self.finish_simple(id, simple, Vec::new(), now_ms);
            }
        }
    }

    /// The hash file fetch ended: verified against the manifest, it makes the content P2P.
    pub fn handle_hashfile(&mut self, fetch: MetaFetchId, hashfile: Result<Vec<u8>, MetadataFailure>, now_ms: u64) {
        let manifest = match self.fetches.get(&fetch).and_then(|id| self.entries[id].fetch.as_ref()) {
            Some(InFlight { step: MetaStep::HashFile(manifest), .. }) => manifest.clone(),
            _ => return,
        };
        let Some(id) = self.take_fetch(fetch, |step| matches!(step, MetaStep::HashFile(_))) else { return };
        match decide(Ok(&manifest), hashfile.as_deref().map_err(Clone::clone)) {
            Mode::P2p { hashes } => self.finish_p2p(id, &manifest, hashes, now_ms),
            Mode::Simple { reason } => self.finish_simple(id, reason, manifest.sources.clone(), now_ms),
        }
    }

    /// Fails every fetch whose deadline has passed.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        let mut expired: Vec<(MetaFetchId, bool)> = self
            .fetches
            .iter()
            .filter_map(|(fetch, id)| {
                let in_flight = self.entries[id].fetch.as_ref().expect("fetch of a live entry");
                (in_flight.deadline_ms <= now_ms).then_some((*fetch, in_flight.step == MetaStep::Manifest))
            })
            .collect();
        // Map order is arbitrary; outputs come in fetch order so runs are reproducible.
        expired.sort_unstable();
        for (fetch, manifest_step) in expired {
            self.actions.push_back(MetaAction::Cancel(fetch));
            let failure = MetadataFailure::Fetch(format!("no answer within {} ms", self.limits.timeout_ms));
            if manifest_step {
                self.handle_manifest(fetch, Err(failure), now_ms);
            } else {
                self.handle_hashfile(fetch, Err(failure), now_ms);
            }
        }
    }

    /// Next fetch to start or drop.
    pub fn poll_action(&mut self) -> Option<MetaAction> {
        self.actions.pop_front()
    }

    /// Next new version of an id (its first, or a changed hash file), for the catalog: what the
    /// workers serve from then on.
    pub fn poll_version(&mut self) -> Option<Arc<ContentVersion>> {
        self.versions.pop_front()
    }

    /// Next answer to a pending request.
    pub fn poll_ready(&mut self) -> Option<MetaReady> {
        self.ready.pop_front()
    }

    /// When [`MetadataCache::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.fetches.values().filter_map(|id| self.entries[id].fetch.as_ref()).map(|f| f.deadline_ms).min()
    }

    /// Ids cached (gauge).
    pub fn entries(&self) -> usize {
        self.entries.len()
    }

    fn start(&mut self, id: ContentId, step: MetaStep, now_ms: u64) {
        let fetch = MetaFetchId(self.next_fetch);
        self.next_fetch += 1;
        let entry = self.entries.get_mut(&id).expect("entry of a fetch");
        assert!(entry.fetch.is_none(), "one metadata fetch per id at a time");
        entry.fetch = Some(InFlight { step: step.clone(), deadline_ms: now_ms + self.limits.timeout_ms });
        self.fetches.insert(fetch, id.clone());
        self.actions.push_back(MetaAction::Fetch(MetaFetch { fetch, id, step }));
    }

    /// Ends a fetch whose step matches; `None` for a stale or unexpected answer.
    fn take_fetch(&mut self, fetch: MetaFetchId, step_is: impl Fn(&MetaStep) -> bool) -> Option<ContentId> {
        let id = self.fetches.get(&fetch)?.clone();
        let entry = self.entries.get_mut(&id).expect("fetch of a live entry");
        if !entry.fetch.as_ref().is_some_and(|f| step_is(&f.step)) {
            return None;
        }
        entry.fetch = None;
        self.fetches.remove(&fetch);
        Some(id)
    }

    fn finish_p2p(&mut self, id: ContentId, manifest: &Manifest, hashes: HashFile, now_ms: u64) {
        let entry = self.entries.get_mut(&id).expect("entry of a fetch");
        let unchanged = match &entry.current {
            Some(Metadata::P2p(old)) => old.manifest == *manifest && old.hashes == hashes,
            _ => false,
        };
        if !unchanged {
            self.last_version += 1;
            let version =
                ContentVersion { id: id.clone(), version: self.last_version, manifest: manifest.clone(), hashes };
            let version = Arc::new(version);
            entry.current = Some(Metadata::P2p(version.clone()));
            // Bounded by the entries: an id's older version not yet taken is superseded.
            self.versions.retain(|old| old.id != id);
            self.versions.push_back(version);
            if self.versions.len() > self.limits.entries_max as usize {
                self.versions.pop_front();
            }
        }
        self.answer(id, now_ms + self.limits.expiry_ms);
    }

    fn finish_simple(&mut self, id: ContentId, reason: SimpleReason, sources: Vec<String>, now_ms: u64) {
        let entry = self.entries.get_mut(&id).expect("entry of a fetch");
        // A network failure does not undo verified metadata: keep serving it and try again soon.
        let network = matches!(reason, SimpleReason::ManifestFetch(_) | SimpleReason::HashFileFetch(_));
        if network && matches!(entry.current, Some(Metadata::P2p(_))) {
            return self.answer(id, now_ms + self.limits.retry_ms);
        }
        entry.current = Some(Metadata::Simple(Arc::new(SimpleContent { id: id.clone(), reason, sources })));
        self.answer(id, now_ms + self.limits.expiry_ms);
    }

    /// Answers every waiter of `id` with its current metadata.
    fn answer(&mut self, id: ContentId, expires_at_ms: u64) {
        let entry = self.entries.get_mut(&id).expect("entry of a fetch");
        entry.expires_at_ms = expires_at_ms;
        let metadata = entry.current.clone().expect("a finished fetch leaves metadata");
        for waiter in entry.waiters.drain(..) {
            self.ready.push_back(MetaReady { waiter, metadata: metadata.clone() });
        }
    }

    /// Makes room for one more entry: drops an expired idle one, else the least recently used idle
    /// one; false when every entry is being fetched.
    fn make_room(&mut self, now_ms: u64) -> bool {
        if self.entries.len() < self.limits.entries_max as usize {
            return true;
        }
        let idle = self.entries.iter().filter(|(_, e)| e.fetch.is_none() && e.waiters.is_empty());
        let victim =
            idle.min_by_key(|(id, e)| (e.expires_at_ms > now_ms, e.last_used_ms, *id)).map(|(id, _)| id.clone());
        match victim {
            Some(id) => {
                self.entries.remove(&id);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
#[path = "metadata_tests.rs"]
mod tests;
