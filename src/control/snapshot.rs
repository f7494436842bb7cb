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
//! Jobs wait in a bounded queue (`catalog_jobs_max`; past it the answer is 503). Each job gives
//! exactly one [`Done`]; the other results are changes, at most one per catalog entry per rescan.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

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
/// result; a rescan every `rescan`. Ends when `jobs` or `done` is disconnected.
pub fn spawn(
    mut keeper: Keeper,
    rescan: Duration,
    jobs: Receiver<Job>,
    done: Sender<Done>,
    wake: impl Fn() + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("tessera-catalog".into()).spawn(move || {
        let mut next_rescan = Instant::now() + rescan;
        loop {
            let results = match jobs.recv_timeout(next_rescan.saturating_duration_since(Instant::now())) {
                Ok(job) => vec![keeper.run(job)],
                Err(RecvTimeoutError::Timeout) => {
                    next_rescan = Instant::now() + rescan;
                    keeper.rescan().into_iter().map(|(id, entry)| Done::Changed { id, entry }).collect()
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
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
}
