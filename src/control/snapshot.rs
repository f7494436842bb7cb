//! The catalog as the service answers from it: a [`Snapshot`] in the handler's memory, and a
//! keeper thread that does every catalog read, write and fsync, so the service thread never
//! waits on the disk.
//!
//! - An id the snapshot lacks becomes a [`Job::Load`]; its answer waits (the connection keeps its
//!   place) until the keeper has looked on disk. So content that `tessera publish` wrote into the
//!   catalog a moment ago is served at once, and an absent id costs one lookup off the thread.
//! - Admin writes and removals are [`Job::Write`] and [`Job::Remove`], answered once durable.
//! - Every `catalog_rescan_ms` the keeper looks for entries changed or removed behind its back (by
//!   another process writing the same directory) and sends them as [`Done::Changed`].
//!
//! - On a cache box ([`MetadataUpstream`]), an id that is on disk neither is fetched upstream by
//!   the box's fill thread: the keeper asks once per id ([`UpstreamWaits`]), the fill thread
//!   verifies and catalogs the metadata and answers [`Fetched`], and the keeper loads the id from
//!   disk again; what the box cannot vouch for is a [`Done::Unavailable`], never a manifest.
//!
//! Jobs wait in a bounded queue (`catalog_jobs_max`; past it the answer is 503), and so do
//! requests waiting for upstream. Each job gives exactly one [`Done`] (a request waiting for
//! upstream gets it by its deadline at the latest); the other results are changes, at most one per
//! catalog entry per rescan.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::catalog::{Catalog, CatalogError};
use crate::content::{ContentId, Manifest};

/// Names the request a job answers (the event loop uses the connection's token).
pub type Ticket = u64;

/// One published content, ready to answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The manifest, as JSON.
    pub manifest_json: Arc<[u8]>,
    /// The hash file, when one is in the catalog beside the manifest.
    pub hashfile: Option<Arc<[u8]>>,
}

/// Every published content the service knows of, by id.
#[derive(Debug, Default)]
pub struct Snapshot {
    entries: HashMap<ContentId, Entry>,
}

impl Snapshot {
    /// The entry of `id`, if known.
    pub fn get(&self, id: &ContentId) -> Option<&Entry> {
        self.entries.get(id)
    }

    /// Records what the catalog holds for `id` now (`None`: nothing).
    pub fn set(&mut self, id: ContentId, entry: Option<Entry>) {
        match entry {
            Some(entry) => self.entries.insert(id, entry),
            None => self.entries.remove(&id),
        };
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Work for the keeper.
#[derive(Debug)]
pub enum Job {
    /// Look `id` up on disk.
    Load { ticket: Ticket, id: ContentId },
    /// Publish `id` durably.
    Write { ticket: Ticket, id: ContentId, hashfile: Vec<u8>, manifest: Box<Manifest> },
    /// Remove `id` durably.
    Remove { ticket: Ticket, id: ContentId },
}

/// What the keeper did.
#[derive(Debug)]
pub enum Done {
    /// The answer to a [`Job::Load`]: what the catalog holds for `id`.
    Loaded { ticket: Ticket, id: ContentId, result: Result<Option<Entry>, CatalogError> },
    /// The answer to a [`Job::Write`]: the entry now published.
    Written { ticket: Ticket, id: ContentId, result: Result<Entry, CatalogError> },
    /// The answer to a [`Job::Remove`]: whether there was something to remove.
    Removed { ticket: Ticket, id: ContentId, result: Result<bool, CatalogError> },
    /// A rescan found `id` changed on disk (`None`: removed or no longer readable).
    Changed { id: ContentId, entry: Option<Entry> },
    /// The answer to a [`Job::Load`] of an id a cache box could not get from upstream.
    Unavailable { ticket: Ticket, id: ContentId, miss: UpstreamMiss },
}

/// Why a cache box could not give the metadata of an id its catalog lacked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamMiss {
    /// Upstream has no metadata the box can vouch for: no manifest, or a hash file that does not
    /// verify against it (Simple mode).
    #[error("upstream has no metadata this box can vouch for ({reason})")]
    Unverified { reason: String },
    /// Upstream could not be reached, or answered with an error.
    #[error("the metadata could not be fetched from upstream: {reason}")]
    Unreachable { reason: String },
    /// The box's fill is at a limit.
    #[error("the box is busy fetching metadata from upstream; try again shortly")]
    Busy { retry_after_s: u32 },
    /// No answer from the fill within the keeper's deadline.
    #[error("no metadata from upstream within {timeout_ms} ms")]
    TimedOut { timeout_ms: u64 },
    /// Verified, but the box could not write it to its catalog.
    #[error("the box could not catalog the metadata: {reason}")]
    Local { reason: String },
}

impl UpstreamMiss {
    /// The HTTP status a device gets for it.
    pub fn status(&self) -> u16 {
        match self {
            UpstreamMiss::Unverified { .. } => 404,
            UpstreamMiss::Unreachable { .. } => 502,
            UpstreamMiss::Busy { .. } => 503,
            UpstreamMiss::TimedOut { .. } => 504,
            UpstreamMiss::Local { .. } => 500,
        }
    }
}

/// A cache box's fill thread's answer to an ask for `id`: `Ok` once the id's verified metadata is
/// in the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The id asked for.
    pub id: ContentId,
    /// Cataloged, or why not.
    pub result: Result<(), UpstreamMiss>,
}

/// How the keeper of a cache box's embedded service has ids its catalog lacks fetched upstream.
pub struct MetadataUpstream {
    /// Asks the fill thread for an id's metadata (bounded; full: 503).
    pub asks: Sender<ContentId>,
    /// Wakes the fill thread after an ask.
    pub wake: Box<dyn Fn() + Send>,
    /// The fill thread's answers, one per ask.
    pub answers: Receiver<Fetched>,
    /// A request still unanswered this long after it began waiting is answered 504.
    pub timeout: Duration,
}

/// What became of a request that joined [`UpstreamWaits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The first for its id: ask upstream.
    Ask,
    /// An ask for its id is out already.
    Joined,
    /// At the limit: answer 503.
    Busy,
}

/// Requests whose id the catalog lacked, waiting for upstream (sans-I/O): one ask per id at a
/// time, at most `waiting_max` requests, each answered by its deadline.
#[derive(Debug)]
pub struct UpstreamWaits {
    by_id: HashMap<ContentId, Vec<(Ticket, Instant)>>,
    waiting: usize,
    waiting_max: usize,
    timeout: Duration,
}

impl UpstreamWaits {
    /// No request waits yet.
    pub fn new(waiting_max: usize, timeout: Duration) -> UpstreamWaits {
        assert!(waiting_max >= 1, "room for one waiting request at least");
        UpstreamWaits { by_id: HashMap::new(), waiting: 0, waiting_max, timeout }
    }

    /// `ticket` waits for `id` from `now`.
    pub fn wait(&mut self, ticket: Ticket, id: &ContentId, now: Instant) -> Wait {
        if self.waiting >= self.waiting_max {
            return Wait::Busy;
        }
        self.waiting += 1;
        let deadline = now + self.timeout;
        match self.by_id.get_mut(id) {
            Some(tickets) => {
                tickets.push((ticket, deadline));
                Wait::Joined
            }
            None => {
                self.by_id.insert(id.clone(), vec![(ticket, deadline)]);
                Wait::Ask
            }
        }
    }

    /// Upstream answered for `id` (or cannot be asked): the requests to answer.
    pub fn answered(&mut self, id: &ContentId) -> Vec<Ticket> {
        let tickets: Vec<Ticket> = self.by_id.remove(id).unwrap_or_default().into_iter().map(|(t, _)| t).collect();
        self.waiting -= tickets.len();
        tickets
    }

    /// The requests whose deadline is past, to answer 504 (a later answer finds them gone).
    pub fn expire(&mut self, now: Instant) -> Vec<(Ticket, ContentId)> {
        let mut expired = Vec::new();
        self.by_id.retain(|id, tickets| {
            tickets.retain(|&(ticket, deadline)| {
                let keep = deadline > now;
                if !keep {
                    expired.push((ticket, id.clone()));
                }
                keep
            });
            !tickets.is_empty()
        });
        self.waiting -= expired.len();
        debug_assert_eq!(self.waiting, self.by_id.values().map(Vec::len).sum::<usize>());
        expired
    }

    /// When [`UpstreamWaits::expire`] is next due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.by_id.values().flatten().map(|&(_, deadline)| deadline).min()
    }
}

/// The keeper's side of a cache box's upstream: its link to the fill thread and who waits.
struct Asking {
    upstream: MetadataUpstream,
    waits: UpstreamWaits,
}

impl Asking {
    /// A load found nothing on disk: wait for upstream (asking once per id), or answer now.
    fn wait(&mut self, ticket: Ticket, id: ContentId, now: Instant) -> Vec<Done> {
        match self.waits.wait(ticket, &id, now) {
            Wait::Joined => Vec::new(),
            Wait::Busy => vec![Done::Unavailable { ticket, id, miss: UpstreamMiss::Busy { retry_after_s: 1 } }],
            Wait::Ask => match self.upstream.asks.try_send(id.clone()) {
                Ok(()) => {
                    (self.upstream.wake)();
                    Vec::new()
                }
                Err(error) => {
                    let miss = match error {
                        TrySendError::Full(_) => UpstreamMiss::Busy { retry_after_s: 1 },
                        TrySendError::Disconnected(_) => {
                            UpstreamMiss::Unreachable { reason: "the box's fill thread has stopped".into() }
                        }
                    };
                    self.unavailable(&id, &miss)
                }
            },
        }
    }

    /// The fill thread answered: what the catalog now holds, or why there is nothing.
    fn answered(&mut self, fetched: Fetched, keeper: &mut Keeper) -> Vec<Done> {
        match fetched.result {
            Err(miss) => self.unavailable(&fetched.id, &miss),
            Ok(()) => {
                let tickets = self.waits.answered(&fetched.id);
                // One disk read per request: `CatalogError` holds an `io::Error`, which does not clone.
                let load = |ticket| Done::Loaded { ticket, id: fetched.id.clone(), result: keeper.load(&fetched.id) };
                tickets.into_iter().map(load).collect()
            }
        }
    }

    fn unavailable(&mut self, id: &ContentId, miss: &UpstreamMiss) -> Vec<Done> {
        let tickets = self.waits.answered(id);
        tickets.into_iter().map(|ticket| Done::Unavailable { ticket, id: id.clone(), miss: miss.clone() }).collect()
    }

    /// Requests past their deadline: 504.
    fn expire(&mut self, now: Instant) -> Vec<Done> {
        let timeout_ms = self.waits.timeout.as_millis() as u64;
        let expired = self.waits.expire(now).into_iter();
        expired
            .map(|(ticket, id)| Done::Unavailable { ticket, id, miss: UpstreamMiss::TimedOut { timeout_ms } })
            .collect()
    }
}

/// What identifies a version of a file on disk: inode, length, modification time.
type FileStamp = Option<(u64, u64, i64, i64)>;

/// The catalog's disk side; owned by the keeper thread.
pub struct Keeper {
    catalog: Catalog,
    /// The stamps of the manifest and hash file of every entry last loaded.
    stamps: HashMap<ContentId, [FileStamp; 2]>,
}

impl Keeper {
    /// A keeper of `catalog` that has loaded nothing yet.
    pub fn new(catalog: Catalog) -> Keeper {
        Keeper { catalog, stamps: HashMap::new() }
    }

    /// Loads every entry (at start, before the service thread runs); unreadable ones are logged
    /// and left out, so a request for them reports the error.
    pub fn load_all(&mut self) -> Snapshot {
        let mut snapshot = Snapshot::default();
        for (id, entry) in self.rescan() {
            snapshot.set(id, entry);
        }
        snapshot
    }

    /// Does one job.
    pub fn run(&mut self, job: Job) -> Done {
        match job {
            Job::Load { ticket, id } => {
                let result = self.load(&id);
                Done::Loaded { ticket, id, result }
            }
            Job::Write { ticket, id, hashfile, manifest } => {
                let result = self.catalog.write(&id, &hashfile, &manifest).and_then(|()| {
                    self.load(&id)?.ok_or_else(|| CatalogError::Io {
                        path: self.catalog.manifest_path(&id),
                        source: std::io::Error::other("gone right after it was written"),
                    })
                });
                Done::Written { ticket, id, result }
            }
            Job::Remove { ticket, id } => {
                let result = self.catalog.remove(&id);
                self.stamps.remove(&id);
                Done::Removed { ticket, id, result }
            }
        }
    }

    /// The entries whose files changed since they were last loaded, and those that went away.
    pub fn rescan(&mut self) -> Vec<(ContentId, Option<Entry>)> {
        let ids = match self.catalog.list() {
            Ok(ids) => ids,
            Err(error) => {
                tracing::warn!(%error, "catalog rescan failed; keeping what is known");
                return Vec::new();
            }
        };
        let mut changes = Vec::new();
        let gone: Vec<ContentId> = self.stamps.keys().filter(|id| ids.binary_search(id).is_err()).cloned().collect();
        for id in gone {
            self.stamps.remove(&id);
            changes.push((id, None));
        }
        for id in ids {
            if self.stamps.get(&id) == Some(&self.stamp(&id)) {
                continue;
            }
            match self.load(&id) {
                Ok(entry) => changes.push((id, entry)),
                Err(error) => {
                    tracing::warn!(%error, "catalog entry unreadable; requests for it report the error");
                    changes.push((id, None));
                }
            }
        }
        changes
    }

    /// Reads `id` from disk and remembers the stamps of what it read.
    fn load(&mut self, id: &ContentId) -> Result<Option<Entry>, CatalogError> {
        // Stamps first: a change after them shows on the next rescan.
        let stamp = self.stamp(id);
        let Some(manifest) = self.catalog.read_manifest(id)? else {
            self.stamps.remove(id);
            return Ok(None);
        };
        let hashfile = self.catalog.read_hashfile(id)?.map(Arc::from);
        self.stamps.insert(id.clone(), stamp);
        Ok(Some(Entry { manifest_json: Arc::from(manifest.to_json().into_bytes()), hashfile }))
    }

    fn stamp(&self, id: &ContentId) -> [FileStamp; 2] {
        let of = |path: std::path::PathBuf| {
            std::fs::metadata(path).ok().map(|m| (m.ino(), m.len(), m.mtime(), m.mtime_nsec()))
        };
        [of(self.catalog.manifest_path(id)), of(self.catalog.hashfile_path(id))]
    }
}

/// Runs `keeper` on a thread of its own: jobs from `jobs`, results to `done`, `wake` after each
/// result; a rescan every `rescan`. With `upstream` (a cache box), a load of an id that is not on
/// disk waits for the box's fill thread, at most `catalog_jobs_max` such loads at once. Ends when
/// `jobs` or `done` is disconnected.
pub fn spawn(
    keeper: Keeper,
    rescan: Duration,
    jobs: Receiver<Job>,
    done: Sender<Done>,
    upstream: Option<(MetadataUpstream, UpstreamWaits)>,
    wake: impl Fn() + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    let asking = upstream.map(|(upstream, waits)| Asking { upstream, waits });
    let mut keeper_loop = KeeperLoop { keeper, asking, rescan, next_rescan: Instant::now() + rescan };
    std::thread::Builder::new().name("tessera-catalog".into()).spawn(move || {
        // A fill thread that went away answers no more; its waiting requests then time out.
        let mut answers =
            keeper_loop.asking.as_ref().map_or_else(crossbeam_channel::never, |a| a.upstream.answers.clone());
        loop {
            let due = keeper_loop.next_due().saturating_duration_since(Instant::now());
            let mut results = Vec::new();
            crossbeam_channel::select! {
                recv(jobs) -> job => match job {
                    Ok(job) => results = keeper_loop.run(job),
                    Err(_) => return,
                },
                recv(answers) -> fetched => match fetched {
                    Ok(fetched) => results = keeper_loop.answered(fetched),
                    Err(_) => answers = crossbeam_channel::never(),
                },
                default(due) => {}
            }
            results.extend(keeper_loop.tick(Instant::now()));
            if results.is_empty() {
                continue;
            }
            for result in results {
                if done.send(result).is_err() {
                    return;
                }
            }
            wake();
        }
    })
}

/// What the keeper thread owns.
struct KeeperLoop {
    keeper: Keeper,
    asking: Option<Asking>,
    rescan: Duration,
    next_rescan: Instant,
}

impl KeeperLoop {
    /// Does one job; on a cache box, a load that finds nothing on disk waits for upstream.
    fn run(&mut self, job: Job) -> Vec<Done> {
        match (self.keeper.run(job), self.asking.as_mut()) {
            (Done::Loaded { ticket, id, result: Ok(None) }, Some(asking)) => asking.wait(ticket, id, Instant::now()),
            (done, _) => vec![done],
        }
    }

    fn answered(&mut self, fetched: Fetched) -> Vec<Done> {
        match self.asking.as_mut() {
            Some(asking) => asking.answered(fetched, &mut self.keeper),
            None => Vec::new(),
        }
    }

    /// When [`KeeperLoop::tick`] has something to do.
    fn next_due(&self) -> Instant {
        let deadline = self.asking.as_ref().and_then(|asking| asking.waits.next_deadline());
        deadline.map_or(self.next_rescan, |deadline| deadline.min(self.next_rescan))
    }

    /// Requests past their deadline, and the rescan when it is due.
    fn tick(&mut self, now: Instant) -> Vec<Done> {
        let mut results = self.asking.as_mut().map(|asking| asking.expire(now)).unwrap_or_default();
        if now >= self.next_rescan {
            self.next_rescan = now + self.rescan;
            results.extend(self.keeper.rescan().into_iter().map(|(id, entry)| Done::Changed { id, entry }));
        }
        results
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(id: &str, hashfile: &[u8]) -> Manifest {
        Manifest {
            version: 1,
            content_id: id.into(),
            content_length: 0,
            piece_size: 1 << 20,
            hashfile_sha256: hex::encode(crate::hash::sha256(hashfile)),
            hashfile_urls: vec![],
            sources: vec![],
            sha256: None,
        }
    }

    #[test]
    fn rescan_reports_only_what_changed_behind_the_keeper() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::new(dir.path().join("catalog"));
        let (a, b) = (ContentId::parse("a").unwrap(), ContentId::parse("b").unwrap());
        catalog.write(&a, b"hf-a", &manifest("a", b"hf-a")).unwrap();
        let mut keeper = Keeper::new(catalog.clone());
        let snapshot = keeper.load_all();
        assert_eq!(snapshot.len(), 1);
        assert_eq!(snapshot.get(&a).unwrap().hashfile.as_deref(), Some(b"hf-a".as_slice()));
        assert!(keeper.rescan().is_empty(), "nothing changed");
        catalog.write(&b, b"hf-b", &manifest("b", b"hf-b")).unwrap();
        catalog.remove(&a).unwrap();
        let changes = keeper.rescan();
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(changes.contains(&(a.clone(), None)));
        assert!(changes.iter().any(|(id, entry)| *id == b && entry.is_some()));
        assert!(keeper.rescan().is_empty());
    }

    #[test]
    fn jobs_write_load_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::new(dir.path().join("catalog"));
        let mut keeper = Keeper::new(catalog.clone());
        let id = ContentId::parse("x").unwrap();
        let written = keeper.run(Job::Write {
            ticket: 7,
            id: id.clone(),
            hashfile: b"hf".to_vec(),
            manifest: Box::new(manifest("x", b"hf")),
        });
        let Done::Written { ticket: 7, result: Ok(entry), .. } = written else { panic!("{written:?}") };
        assert_eq!(catalog.read_manifest(&id).unwrap().unwrap().to_json().as_bytes(), &*entry.manifest_json);
        assert!(keeper.rescan().is_empty(), "the keeper's own write is no change behind its back");
        let loaded = keeper.run(Job::Load { ticket: 8, id: id.clone() });
        assert!(matches!(loaded, Done::Loaded { ticket: 8, result: Ok(Some(_)), .. }), "{loaded:?}");
        let removed = keeper.run(Job::Remove { ticket: 9, id: id.clone() });
        assert!(matches!(removed, Done::Removed { ticket: 9, result: Ok(true), .. }), "{removed:?}");
        let loaded = keeper.run(Job::Load { ticket: 10, id });
        assert!(matches!(loaded, Done::Loaded { result: Ok(None), .. }), "{loaded:?}");
    }

    /// A box's keeper loop over a catalog in `dir`: at most `waiting_max` requests waiting, the
    /// fill thread's end of the link (its asks, its answers).
    fn box_keeper(dir: &std::path::Path, waiting_max: usize) -> (KeeperLoop, Receiver<ContentId>, Sender<Fetched>) {
        let (asks, asked) = crossbeam_channel::bounded(waiting_max);
        let (answer, answers) = crossbeam_channel::unbounded();
        let timeout = Duration::from_secs(5);
        let upstream = MetadataUpstream { asks, wake: Box::new(|| {}), answers, timeout };
        let asking = Asking { upstream, waits: UpstreamWaits::new(waiting_max, timeout) };
        let keeper = Keeper::new(Catalog::new(dir.join("catalog")));
        let rescan = Duration::from_secs(3600);
        (KeeperLoop { keeper, asking: Some(asking), rescan, next_rescan: Instant::now() + rescan }, asked, answer)
    }

    #[test]
    fn a_box_keeper_asks_upstream_once_per_id_and_loads_what_the_fill_cataloged() {
        let dir = tempfile::tempdir().unwrap();
        let (mut keeper, asked, _answer) = box_keeper(dir.path(), 4);
        let id = ContentId::parse("x").unwrap();
        assert!(keeper.run(Job::Load { ticket: 1, id: id.clone() }).is_empty(), "it waits for upstream");
        assert!(keeper.run(Job::Load { ticket: 2, id: id.clone() }).is_empty());
        assert_eq!(asked.try_iter().collect::<Vec<_>>(), vec![id.clone()], "one ask for both");
        // The fill thread verified and cataloged it.
        Catalog::new(dir.path().join("catalog")).write(&id, b"hf", &manifest("x", b"hf")).unwrap();
        let done = keeper.answered(Fetched { id: id.clone(), result: Ok(()) });
        let tickets: Vec<Ticket> = done
            .iter()
            .map(|done| match done {
                Done::Loaded { ticket, result: Ok(Some(entry)), .. } => {
                    assert_eq!(entry.hashfile.as_deref(), Some(b"hf".as_slice()));
                    *ticket
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(tickets, vec![1, 2]);
        // On disk now: answered without asking.
        let done = keeper.run(Job::Load { ticket: 3, id });
        assert!(matches!(done.as_slice(), [Done::Loaded { ticket: 3, result: Ok(Some(_)), .. }]), "{done:?}");
        assert!(asked.is_empty());
        assert!(keeper.tick(Instant::now()).is_empty(), "nobody waits");
    }

    #[test]
    fn a_box_keeper_answers_what_upstream_lacks_busy_past_its_bound_and_504_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let (mut keeper, asked, answer) = box_keeper(dir.path(), 2);
        let (a, b, c) =
            (ContentId::parse("a").unwrap(), ContentId::parse("b").unwrap(), ContentId::parse("c").unwrap());
        assert!(keeper.run(Job::Load { ticket: 1, id: a.clone() }).is_empty());
        assert!(keeper.run(Job::Load { ticket: 2, id: b.clone() }).is_empty());
        let busy = keeper.run(Job::Load { ticket: 3, id: c });
        let [Done::Unavailable { ticket: 3, miss, .. }] = busy.as_slice() else { panic!("{busy:?}") };
        assert_eq!(miss.status(), 503);
        assert_eq!(asked.len(), 2);
        let unverified = UpstreamMiss::Unverified { reason: "no manifest".into() };
        let done = keeper.answered(Fetched { id: a.clone(), result: Err(unverified.clone()) });
        assert!(
            matches!(done.as_slice(), [Done::Unavailable { ticket: 1, miss, .. }] if *miss == unverified),
            "{done:?}"
        );
        assert_eq!(unverified.status(), 404);
        assert!(keeper.tick(Instant::now()).is_empty(), "b is not due yet");
        let late = keeper.tick(Instant::now() + Duration::from_secs(6));
        let [Done::Unavailable { ticket: 2, id, miss: UpstreamMiss::TimedOut { timeout_ms: 5000 } }] = late.as_slice()
        else {
            panic!("{late:?}")
        };
        assert_eq!(*id, b);
        // A late answer finds nobody; the fill thread gone, a new request is answered at once.
        assert!(keeper.answered(Fetched { id: b, result: Ok(()) }).is_empty());
        drop(asked);
        let gone = keeper.run(Job::Load { ticket: 4, id: a });
        assert!(
            matches!(gone.as_slice(), [Done::Unavailable { ticket: 4, miss: UpstreamMiss::Unreachable { .. }, .. }]),
            "{gone:?}"
        );
        drop(answer);
    }

    #[test]
    fn without_upstream_an_absent_id_is_answered_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let keeper = Keeper::new(Catalog::new(dir.path().join("catalog")));
        let rescan = Duration::from_secs(3600);
        let mut keeper = KeeperLoop { keeper, asking: None, rescan, next_rescan: Instant::now() + rescan };
        let done = keeper.run(Job::Load { ticket: 1, id: ContentId::parse("x").unwrap() });
        assert!(matches!(done.as_slice(), [Done::Loaded { ticket: 1, result: Ok(None), .. }]), "{done:?}");
    }
}
