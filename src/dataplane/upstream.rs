//! The data plane's side of a cache box's fill: what a worker sends the fill thread on a miss
//! ([`Miss`]), what it gets back ([`Filled`]), and how it is woken (one [`Waker`] per worker,
//! an event source on the worker's own ring or poll; no lock shared with other workers).
//!
//! Every miss sent gets exactly one final [`Done`] back (any [`Filled`] but `Landed` and the
//! pass-through ones), so a worker's table of pending responses empties itself; before it, a
//! streaming miss may get `Landed` answers as its pieces land in order. A worker whose response
//! went away (client gone, stream done) says so with [`UpstreamLink::send_gone`], so the fill
//! stops claiming for it. Both wake the fill thread's client loop (its [`Waker`], registered
//! with [`UpstreamLink::set_fill_waker`]).
//!
//! A Simple-mode miss is handed on to the pass-through thread ([`ToPassThrough::Start`]), which
//! answers it instead: `PassThrough` (the origin's head), then `PassThroughBody` chunks, which
//! the response completes with once their bytes add up to the head's length; or a final answer
//! (an error, `Busy`, or `Failed` when the origin ends the body short). The worker tells that
//! thread directly ([`UpstreamLink::send_pass`]) how much of the body its connection took
//! (the origin read waits for it: bounded bytes per pass-through) and when the response is gone.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::content::ContentId;
use crate::dataplane::connection::ResponseToken;
use crate::dataplane::status::FillStatus;
use crate::io::client::Waker;

/// Misses queued to the fill thread at most; past it the request gets 503.
pub const MISSES_QUEUED_MAX: usize = 4096;
/// Messages queued to the pass-through thread at most (starts, gone, and body bytes taken, of
/// which each pass-through has a bounded number outstanding).
pub const PASS_QUEUED_MAX: usize = 65_536;
/// Answers queued to one worker at most.
pub const DONE_QUEUED_MAX: usize = 65_536;
/// Catalog changes remembered for workers that have not looked yet; one that has missed more
/// drops everything it cached of the catalog.
pub const CATALOG_CHANGES_MAX: usize = 1024;

/// What a pending response needs before it can be answered from the catalog and the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// Only the metadata (the hash file).
    Metadata,
    /// A HEAD of the content: the metadata (or, in Simple mode, the origin's head).
    ContentHead { range: Option<String> },
    /// One piece.
    Piece(u64),
    /// The pieces under the request's `Range:` (all of them without one).
    Content { range: Option<String> },
}

/// One miss of one worker.
#[derive(Debug, Clone)]
pub struct Miss {
    /// The worker holding the pending response.
    pub worker: usize,
    /// The response.
    pub token: ResponseToken,
    /// The content.
    pub id: ContentId,
    /// What it needs.
    pub need: Need,
    /// The request's `If-Range:` with a `Range:` (a Simple-mode pass-through passes both on, so
    /// a resumed download is never spliced from two versions).
    pub if_range: Option<String>,
}

/// How a miss ended, or how far it got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filled {
    /// Not final: the pieces the miss needs have landed in order up to this one (exclusive), so
    /// a streaming response can send what it has.
    Landed { end_piece: u64 },
    /// What it needs is in the catalog and the store: answer it again.
    Ready,
    /// The content is in Simple mode (its metadata cannot be had or does not verify) and cannot
    /// be passed through: the reason says why.
    Simple { reason: String },
    /// Not final: Simple mode, passed through from the manifest's HTTP source (not stored, never
    /// served as pieces): the origin's head; the body follows in `PassThroughBody` chunks.
    PassThrough { head: PassHead },
    /// Not final: the next bytes of a pass-through's body.
    PassThroughBody { bytes: Vec<u8> },
    /// The pieces could not be had.
    Failed { reason: String },
    /// A limit was hit.
    Busy { retry_after_s: u32 },
}

/// The head of a Simple-mode pass-through, as the origin gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassHead {
    /// Why the content is in Simple mode.
    pub reason: String,
    /// The origin's status: 200, 206 or 416.
    pub status: u16,
    /// The origin's `Content-Length` (for a HEAD, of the body it would send).
    pub content_length: u64,
    /// Whether no body follows (a HEAD).
    pub head_only: bool,
    /// Origin fields passed on as they are (`Content-Type`, `Content-Range`, `Accept-Ranges`,
    /// `ETag`, `Last-Modified`), control characters removed.
    pub fields: Vec<(&'static str, String)>,
    /// Body bytes the device's connection may hold for it at most.
    pub held_bytes_max: u64,
}

/// What a worker (or the fill thread, for `Start`) tells the pass-through thread.
#[derive(Debug, Clone)]
pub enum ToPassThrough {
    /// Pass a Simple-mode miss through from `url`; `reason` says why it is in Simple mode.
    Start { miss: Miss, url: String, reason: String },
    /// The response's connection took `bytes` more of its body.
    Taken { worker: usize, token: ResponseToken, bytes: u64 },
    /// The response is gone (client gone, or it ended): close its origin connection.
    Gone { worker: usize, token: ResponseToken },
}

/// What a worker tells the fill thread.
#[derive(Debug, Clone)]
pub enum FromWorker {
    /// A response needs what the store lacks.
    Miss(Miss),
    /// A response no longer waits (client gone, or it has all it needs).
    Gone { worker: usize, token: ResponseToken },
    /// A worker served this id from what it holds, and its metadata may have expired: refetch
    /// it in the background (nobody waits for it).
    Refresh { id: ContentId },
}

/// The answer to one [`Miss`].
#[derive(Debug, Clone)]
pub struct Done {
    pub token: ResponseToken,
    pub filled: Filled,
}

/// One worker's mailbox.
pub struct WorkerLink {
    done_tx: Sender<Done>,
    done_rx: Receiver<Done>,
    /// Set by the worker's driver once its ring or poll exists.
    waker: OnceLock<Waker>,
}

/// The channels between the workers, the fill thread and the pass-through thread.
pub struct UpstreamLink {
    misses: Sender<FromWorker>,
    workers: Vec<WorkerLink>,
    /// Wakes the fill thread's client loop; set once it runs.
    fill_waker: OnceLock<Waker>,
    /// The fill thread's counters, rendered for `/metrics` by the fill thread itself.
    metrics_text: Mutex<String>,
    /// Counts catalog entries the fill thread wrote; `catalog_changes` names the last ones.
    catalog_generation: AtomicU64,
    catalog_changes: Mutex<VecDeque<(u64, ContentId)>>,
    /// How long an id is served from the catalog before a worker asks for its metadata again
    /// (`[upstream] metadata_expiry_ms`; 0 until the fill thread sets it).
    refresh_after_ms: AtomicU64,
    pass_tx: Sender<ToPassThrough>,
    pass_rx: Receiver<ToPassThrough>,
    /// Set by the pass-through thread once its client loop exists.
    pass_waker: OnceLock<Waker>,
    /// The pass-through thread's counters, rendered by it.
    pass_metrics_text: Mutex<String>,
    /// The fill's state for the status page, as the fill thread last published it.
    fill_status: Mutex<FillStatus>,
}

impl UpstreamLink {
    /// A link for `workers` workers, and the fill thread's end of the miss queue.
    pub fn new(workers: usize) -> (UpstreamLink, Receiver<FromWorker>) {
        let (misses, misses_rx) = crossbeam_channel::bounded(MISSES_QUEUED_MAX);
        let workers = (0..workers)
            .map(|_| {
                let (done_tx, done_rx) = crossbeam_channel::bounded(DONE_QUEUED_MAX);
                WorkerLink { done_tx, done_rx, waker: OnceLock::new() }
            })
            .collect();
        let (pass_tx, pass_rx) = crossbeam_channel::bounded(PASS_QUEUED_MAX);
        let link = UpstreamLink {
            misses,
            workers,
            fill_waker: OnceLock::new(),
            metrics_text: Mutex::new(String::new()),
            catalog_generation: AtomicU64::new(0),
            catalog_changes: Mutex::new(VecDeque::new()),
            refresh_after_ms: AtomicU64::new(0),
            pass_tx,
            pass_rx,
            pass_waker: OnceLock::new(),
            pass_metrics_text: Mutex::new(String::new()),
            fill_status: Mutex::new(FillStatus::default()),
        };
        (link, misses_rx)
    }

    /// Number of workers.
    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// A worker's driver registers its wake-up.
    pub fn set_waker(&self, worker: usize, waker: Waker) {
        let _ = self.workers[worker].waker.set(waker);
    }

    /// The fill thread registers the wake-up of its client loop.
    pub fn set_fill_waker(&self, waker: Waker) {
        let _ = self.fill_waker.set(waker);
    }

    /// Hands a miss to the fill thread; `false` when its queue is full (answer 503).
    pub fn send_miss(&self, miss: Miss) -> bool {
        let sent = !matches!(
            self.misses.try_send(FromWorker::Miss(miss)),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_))
        );
        self.wake_fill();
        sent
    }

    /// Tells the fill thread a response stopped waiting. Best effort: when the queue is full the
    /// fill goes on for it (as a background fill) and its answers are dropped.
    pub fn send_gone(&self, worker: usize, token: ResponseToken) {
        let _ = self.misses.try_send(FromWorker::Gone { worker, token });
        self.wake_fill();
    }

    /// Wakes the fill thread after a message was queued (it also looks every few tens of ms).
    fn wake_fill(&self) {
        if let Some(waker) = self.fill_waker.get() {
            if let Err(error) = waker.wake() {
                tracing::warn!(%error, "cannot wake the fill thread");
            }
        }
    }

    /// Asks the fill thread to refetch `id`'s metadata in the background. Best effort, and
    /// only while the queue is less than half full: misses come first.
    pub fn send_refresh(&self, id: &ContentId) {
        if self.misses.len() < MISSES_QUEUED_MAX / 2 {
            let _ = self.misses.try_send(FromWorker::Refresh { id: id.clone() });
            self.wake_fill();
        }
    }

    /// Sets how long an id is served before its metadata is asked for again (the fill thread).
    pub fn set_refresh_after_ms(&self, refresh_after_ms: u64) {
        self.refresh_after_ms.store(refresh_after_ms, Ordering::Relaxed);
    }

    /// How long an id is served before its metadata is asked for again; 0: never.
    pub fn refresh_after_ms(&self) -> u64 {
        self.refresh_after_ms.load(Ordering::Relaxed)
    }

    /// The fill thread wrote `id`'s catalog entry (a first or a new version): workers drop what
    /// they cached of it.
    pub fn catalog_changed(&self, id: &ContentId) {
        let mut changes = self.catalog_changes.lock().unwrap_or_else(PoisonError::into_inner);
        let generation = self.catalog_generation.load(Ordering::Relaxed) + 1;
        if changes.len() == CATALOG_CHANGES_MAX {
            changes.pop_front();
        }
        changes.push_back((generation, id.clone()));
        // Published under the lock, after the change it counts.
        self.catalog_generation.store(generation, Ordering::Release);
    }

    /// How many catalog changes there were (one load: workers check it on every lookup).
    pub fn catalog_generation(&self) -> u64 {
        self.catalog_generation.load(Ordering::Acquire)
    }

    /// The generation now and the ids changed after `seen`; `None` when some of them are no
    /// longer remembered (drop everything cached).
    pub fn catalog_changes_since(&self, seen: u64) -> (u64, Option<Vec<ContentId>>) {
        let changes = self.catalog_changes.lock().unwrap_or_else(PoisonError::into_inner);
        let generation = self.catalog_generation.load(Ordering::Acquire);
        let oldest = changes.front().map_or(generation + 1, |(at, _)| *at);
        if oldest > seen + 1 {
            return (generation, None);
        }
        let ids = changes.iter().filter(|(at, _)| *at > seen).map(|(_, id)| id.clone()).collect();
        (generation, Some(ids))
    }

    /// The fill (or pass-through) thread answers a miss and wakes its worker; `false` when the
    /// worker's queue is full and the answer was dropped.
    pub fn send_done(&self, worker: usize, done: Done) -> bool {
        let link = &self.workers[worker];
        if let Err(error) = link.done_tx.try_send(done) {
            // The response then ends by its pending timeout (504); the queue bound is huge.
            tracing::warn!(worker, error = %error, "a worker's fill answers are not being taken");
            return false;
        }
        if let Some(waker) = link.waker.get() {
            if let Err(error) = waker.wake() {
                tracing::warn!(worker, %error, "cannot wake a worker");
            }
        }
        true
    }

    /// The fill thread publishes its counters (Prometheus text).
    pub fn set_metrics_text(&self, text: String) {
        *self.metrics_text.lock().unwrap_or_else(PoisonError::into_inner) = text;
    }

    /// The pass-through thread publishes its counters (Prometheus text).
    pub fn set_pass_metrics_text(&self, text: String) {
        *self.pass_metrics_text.lock().unwrap_or_else(PoisonError::into_inner) = text;
    }

    /// The fill and pass-through threads' counters, for `/metrics`.
    pub fn metrics_text(&self) -> String {
        let mut text = self.metrics_text.lock().unwrap_or_else(PoisonError::into_inner).clone();
        text.push_str(&self.pass_metrics_text.lock().unwrap_or_else(PoisonError::into_inner));
        text
    }

    /// The fill thread publishes its state for the status page.
    pub fn set_fill_status(&self, status: FillStatus) {
        *self.fill_status.lock().unwrap_or_else(PoisonError::into_inner) = status;
    }

    /// The fill's state as last published, for the status page.
    pub fn fill_status(&self) -> FillStatus {
        self.fill_status.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The pass-through thread registers its wake-up.
    pub fn set_pass_waker(&self, waker: Waker) {
        let _ = self.pass_waker.set(waker);
    }

    /// The pass-through thread's end of its queue.
    pub fn pass_receiver(&self) -> Receiver<ToPassThrough> {
        self.pass_rx.clone()
    }

    /// Tells the pass-through thread something and wakes it; `false` when its queue is full.
    /// (A `Taken` cannot be lost that way: each pass-through has a bounded number outstanding,
    /// far below the queue's bound.)
    pub fn send_pass(&self, message: ToPassThrough) -> bool {
        if self.pass_tx.try_send(message).is_err() {
            tracing::warn!("the pass-through queue is full");
            return false;
        }
        if let Some(waker) = self.pass_waker.get() {
            if let Err(error) = waker.wake() {
                tracing::warn!(%error, "cannot wake the pass-through thread");
            }
        }
        true
    }

    /// A worker takes its answers.
    pub fn take_done(&self, worker: usize) -> impl Iterator<Item = Done> + '_ {
        self.workers[worker].done_rx.try_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_learns_which_catalog_entries_changed_since_it_last_looked() {
        let (link, _misses) = UpstreamLink::new(1);
        assert_eq!(link.catalog_changes_since(0), (0, Some(vec![])));
        let (a, b) = (ContentId::parse("a").unwrap(), ContentId::parse("b").unwrap());
        link.catalog_changed(&a);
        link.catalog_changed(&b);
        assert_eq!(link.catalog_generation(), 2);
        assert_eq!(link.catalog_changes_since(0), (2, Some(vec![a.clone(), b.clone()])));
        assert_eq!(link.catalog_changes_since(1), (2, Some(vec![b])));
        for _ in 0..CATALOG_CHANGES_MAX {
            link.catalog_changed(&a);
        }
        assert_eq!(link.catalog_changes_since(1), (CATALOG_CHANGES_MAX as u64 + 2, None), "forgotten: drop all");
        let seen = CATALOG_CHANGES_MAX as u64 + 1;
        assert_eq!(link.catalog_changes_since(seen), (seen + 1, Some(vec![a])));
    }
}
