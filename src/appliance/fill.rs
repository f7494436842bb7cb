//! A cache box's fill thread: it owns the sans-I/O [`FillEngine`] and [`MetadataCache`] and runs
//! the ring layer's client loop (`fill/fetch_loop.rs`: io_uring or epoll, as `[serve] backend`),
//! on which piece fetches go out over persistent, pipelined connections to the parents, peers and
//! origin URLs. Workers' misses wake the loop through its `Waker`; received pieces go to verifier
//! threads, which hash them and ingest the good ones into the store in batches
//! (`fill/store_sink.rs`: several pieces per fsync) and wake the loop with the verdicts. Metadata
//! and the Simple-mode pass-through run on blocking helper threads (`fill/fetcher.rs`). Each miss
//! is answered once through the worker's own wake-up.
//!
//! A piece reaches the store only after its SHA-256 matched the verified hash file, and waiters
//! hear it landed only once it is stored; a source that sends a bad piece is counted in the
//! node-wide [`NodeBans`] and, once banned, is not picked for any content until the ban expires.

mod expiry;
mod fetch_loop;
mod fetcher;
mod metrics;
mod passthrough;
mod policy;
pub mod service_asks;
mod store_sink;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::appliance::announcer::AnnounceTrigger;
use crate::catalog::Catalog;
use crate::config::{Config, UpstreamConfig};
use crate::content::{ContentId, MetadataFailure};
use crate::control::client::ClientError;
use crate::dataplane::connection::ResponseToken;
use crate::dataplane::status::{unix_now_s, ServiceHealth};
use crate::dataplane::upstream::{Done, Filled, FromWorker, Miss, Need, ToPassThrough, UpstreamLink};
use crate::download::ban::{BanLimits, NodeBans};
use crate::download::verify::{Check, Checked, Verifier};
use crate::download::ServiceMetadata;
use crate::fill::{ContentVersion, FailReason, SimpleContent};
use crate::fill::{
    FetchAction, FillEngine, FillLimits, MetaAction, MetaAnswer, MetaReady, Metadata, MetadataCache, MetadataLimits,
    SourceKind, WaiterEvent, WaiterKey, WaiterToken, Want, WorkerId,
};
use crate::http::{parse_range, RangeOutcome};
use crate::io::client::Waker;
use crate::store::Store;
use crate::tls::TlsClientOptions;
use fetch_loop::{FetchLimits, FetchOutcome, Fetches};
use fetcher::{Job, JobResult};
use store_sink::{StorePiece, StoreSink};

/// Blocking helper threads for metadata fetches.
const HELPER_THREADS: u32 = 2;
/// Jobs queued to the helper threads at most (the metadata cache bounds what it starts far below).
const JOBS_QUEUED_MAX: usize = 4096;
/// The fill thread looks for a stop request at least this often.
const STOP_POLL_MS: u64 = 50;
/// Verifier threads (hashing 1 MiB takes about 0.8 ms: two keep up with a 10 Gbit/s fill).
const VERIFY_THREADS: u32 = 2;
/// Pieces one store ingest takes at most (they share its fsync).
const STORE_BATCH_PIECES_MAX: u32 = 16;
/// Reloaded `[upstream]` settings waiting for the fill thread at most (it takes them every turn).
const RELOADS_QUEUED_MAX: usize = 4;
/// Pieces handed to the verifier at once at most; more wait in the fill thread (their bytes are
/// within the engine's `piece_memory_bytes_max` either way).
const VERIFY_QUEUE_PIECES_MAX: u32 = 1024;

/// Why the fill thread did not start.
#[derive(Debug, thiserror::Error)]
pub enum FillStartError {
    #[error("upstream: {0}")]
    Client(#[from] ClientError),
    #[error("cannot start a fill thread: {0}")]
    Thread(std::io::Error),
    #[error("upstream fetch loop: {0}")]
    Loop(#[from] crate::io::client::ClientError),
    #[error("cannot start the pass-through loop: {0}")]
    PassThrough(crate::io::client::ClientError),
}

/// The running fill thread and its helper and verifier threads; dropping it stops them.
pub struct FillHandle {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Wakes the fill loop so it sees the stop at once.
    waker: Option<Waker>,
    /// Reloaded `[upstream]` settings to the fill thread.
    reloads: Sender<UpstreamConfig>,
}

impl FillHandle {
    /// Hands the fill thread reloaded `[upstream]` settings (only its live ones differ: see
    /// `config::plan_reload`); it takes them at its next turn.
    pub fn reload(&self, upstream: UpstreamConfig) {
        if self.reloads.try_send(upstream).is_err() {
            tracing::warn!("the fill thread has not taken the previous reloads; this one is dropped");
        }
        if let Some(waker) = &self.waker {
            let _ = waker.wake();
        }
    }
}

impl Drop for FillHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(waker) = &self.waker {
            let _ = waker.wake();
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Starts the fill thread for `config.upstream` over the server's store and catalog.
pub fn start(
    config: &Config,
    upstream: &UpstreamConfig,
    store: Arc<Store>,
    link: Arc<UpstreamLink>,
    misses: Receiver<FromWorker>,
    announce: AnnounceTrigger,
    asked: Option<service_asks::ServiceAsks>,
) -> Result<FillHandle, FillStartError> {
    let options = TlsClientOptions {
        ca_file: upstream.ca_file.clone(),
        pin_spki_sha256: upstream.pin_sha256.clone(),
        timeout_ms: upstream.metadata_timeout_ms,
        ..TlsClientOptions::default()
    };
    let services = ServiceMetadata::ranked(&upstream.all_service_urls(), &box_id(config), options)?;
    let stop = Arc::new(AtomicBool::new(false));
    let (jobs_tx, jobs_rx) = crossbeam_channel::bounded::<Job>(JOBS_QUEUED_MAX);
    let (results_tx, results_rx) = crossbeam_channel::bounded::<JobResult>(JOBS_QUEUED_MAX);
    let (reloads, reloaded) = crossbeam_channel::bounded::<UpstreamConfig>(RELOADS_QUEUED_MAX);
    let mut handle = FillHandle { stop: stop.clone(), threads: Vec::new(), waker: None, reloads };
    handle.threads.push(passthrough::start(config.serve.backend, upstream, link.clone(), stop.clone())?);
    // The client loop is the fill thread's own (not `Send`): it is made there, and its waker
    // comes back.
    let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Result<Waker, FillStartError>>(1);
    let (config, upstream_config, link_waker) = (config.clone(), upstream.clone(), link.clone());
    let thread = std::thread::Builder::new()
        .name("tessera-fill".into())
        .spawn(move || {
            let mut fill = match FillThread::new(&config, &upstream_config, store, link, jobs_tx) {
                Ok(fill) => fill,
                Err(error) => return drop(ready_tx.send(Err(error))),
            };
            let _ = ready_tx.send(Ok(fill.fetches.waker()));
            fill.set_asked(asked);
            fill.with_announce(announce).run(&misses, &results_rx, &reloaded, &stop);
        })
        .map_err(FillStartError::Thread)?;
    handle.threads.push(thread);
    let waker = match ready_rx.recv() {
        Ok(Ok(waker)) => waker,
        Ok(Err(error)) => return Err(error),
        Err(_) => return Err(FillStartError::Thread(std::io::Error::other("the fill thread ended at start"))),
    };
    handle.waker = Some(waker.clone());
    link_waker.set_fill_waker(waker.clone());
    for index in 0..HELPER_THREADS {
        let context = fetcher::Context { services: services.clone(), waker: waker.clone() };
        let (jobs, results) = (jobs_rx.clone(), results_tx.clone());
        let thread = std::thread::Builder::new()
            .name(format!("tessera-fetch{index}"))
            .spawn(move || fetcher::run(&context, &jobs, &results))
            .map_err(FillStartError::Thread)?;
        handle.threads.push(thread);
    }
    Ok(handle)
}

/// Names this box when it ranks its upstream services per content: `[announce] peer_id`, else
/// the host name.
fn box_id(config: &Config) -> String {
    if !config.announce.peer_id.is_empty() {
        return config.announce.peer_id.clone();
    }
    crate::io::sys::host_name().unwrap_or_else(|| "tessera".into())
}

/// One miss being served.
struct Waiting {
    miss: Miss,
    content: Option<Arc<ContentVersion>>,
    /// Pieces `next..end` are still wanted; `landed` holds those that came out of order.
    next: u64,
    end: u64,
    landed: HashSet<u64>,
    /// When it missed (the fill's first-byte latency runs from here).
    missed_at_ms: u64,
}

struct FillThread {
    engine: FillEngine,
    meta: MetadataCache,
    /// Source names for the ban policy.
    names: policy::SourceNames,
    /// The node-wide bans (the policy holds the same records), for `/metrics`.
    bans: NodeBans,
    catalog: Catalog,
    link: Arc<UpstreamLink>,
    jobs: Sender<Job>,
    store: Arc<Store>,
    /// Piece fetches on the client loop.
    fetches: Fetches,
    /// Hashes received pieces and stores the good ones, batched.
    verifier: Verifier<StoreSink>,
    /// Received pieces waiting for room in the verifier's queue.
    to_verify: VecDeque<Check<StorePiece>>,
    origin: bool,
    ranges_max: usize,
    waiting: HashMap<WaiterKey, Waiting>,
    /// The waiter of each response waiting, to hear when it leaves.
    by_response: HashMap<(usize, ResponseToken), WaiterKey>,
    next_token: u64,
    /// Content versions written to the catalog (so workers and the embedded service know them).
    cataloged: HashMap<ContentId, u64>,
    started: Instant,
    /// Pieces stored are announced soon, so devices find this box for what it just filled.
    announce: AnnounceTrigger,
    /// Simple-mode answers, for `/metrics`.
    simple: metrics::SimpleCounts,
    /// The embedded service's asks for metadata of ids its catalog lacks.
    asked: Option<service_asks::ServiceAsks>,
    /// The upstream metadata service and how it answered lately, for the status page.
    service_url: String,
    service_health: ServiceHealth,
}

impl FillThread {
    /// The fill thread's state, made on the fill thread (its client loop is not `Send`).
    fn new(
        config: &Config,
        upstream: &UpstreamConfig,
        store: Arc<Store>,
        link: Arc<UpstreamLink>,
        jobs: Sender<Job>,
    ) -> Result<FillThread, FillStartError> {
        let bans = NodeBans::new(BanLimits {
            bad_pieces_max: config.download.ban_after_bad_pieces.max(1),
            duration_ms: config.download.ban_duration_s.saturating_mul(1000),
        });
        let names = policy::SourceNames::default();
        let policy = policy::BannedSources::new(bans.clone(), names.clone());
        let mut engine = FillEngine::new(FillLimits::from_config(upstream), Box::new(policy));
        let parents = upstream
            .peers
            .iter()
            .filter_map(|peer| {
                let id = engine.add_source(SourceKind::Parent, peer)?;
                names.set(id, peer);
                Some(id)
            })
            .collect();
        engine.set_parents(parents);
        if upstream.peers.len() >= 2 {
            engine.rank_parents(&box_id(config), upstream.parent_retry_ms);
        }
        link.set_refresh_after_ms(upstream.metadata_expiry_ms);
        let limits = FetchLimits {
            connections_per_source_max: upstream.connections_per_source_max,
            pipeline_depth: upstream.pipeline_depth,
            connect_timeout_ms: upstream.connect_timeout_ms,
            request_timeout_ms: upstream.request_timeout_ms,
            stall_timeout_ms: upstream.stall_timeout_ms,
        };
        let fetches = Fetches::new(config.serve.backend, limits)?;
        let queue = (upstream.piece_memory_bytes_max >> 20).clamp(4, u64::from(VERIFY_QUEUE_PIECES_MAX)) as u32;
        let sink = StoreSink { store: store.clone() };
        let verifier = Verifier::start(VERIFY_THREADS, queue, STORE_BATCH_PIECES_MAX, sink, fetches.waker())
            .map_err(FillStartError::Thread)?;
        Ok(FillThread {
            engine,
            names,
            bans,
            meta: MetadataCache::new(MetadataLimits::from_config(upstream)),
            catalog: Catalog::new(config.catalog_dir()),
            link,
            jobs,
            store,
            fetches,
            verifier,
            to_verify: VecDeque::new(),
            origin: upstream.origin,
            ranges_max: config.serve.ranges_per_request_max,
            waiting: HashMap::new(),
            by_response: HashMap::new(),
            next_token: 0,
            cataloged: HashMap::new(),
            started: Instant::now(),
            announce: AnnounceTrigger::default(),
            simple: metrics::SimpleCounts::default(),
            asked: None,
            service_url: upstream.service_url.clone(),
            service_health: ServiceHealth::default(),
        })
    }

    fn with_announce(mut self, announce: AnnounceTrigger) -> FillThread {
        self.announce = announce;
        self
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn run(
        mut self,
        misses: &Receiver<FromWorker>,
        results: &Receiver<JobResult>,
        reloaded: &Receiver<UpstreamConfig>,
        stop: &AtomicBool,
    ) {
        while !stop.load(Ordering::Acquire) {
            let now = self.now_ms();
            let due = [self.engine.poll_timeout(), self.meta.poll_timeout()].into_iter().flatten().min();
            let wait_ms = due.map_or(STOP_POLL_MS, |at| at.saturating_sub(now)).min(STOP_POLL_MS);
            // Misses, helper results and verdicts wake the loop (they are sent before the wake).
            if let Err(error) = self.fetches.poll(Duration::from_millis(wait_ms)) {
                tracing::error!(%error, "the fill's client loop failed; fills stop");
                return;
            }
            // Bounded by the queues' bounds.
            while let Ok(message) = misses.try_recv() {
                match message {
                    FromWorker::Miss(miss) => self.on_miss(miss),
                    FromWorker::Gone { worker, token } => self.on_gone(worker, token),
                    FromWorker::Refresh { id } => self.on_refresh(&id),
                }
            }
            while let Ok(result) = results.try_recv() {
                self.on_result(result);
            }
            while let Ok(upstream) = reloaded.try_recv() {
                self.apply(&upstream);
            }
            self.take_asks();
            self.take_verdicts();
            let now = self.now_ms();
            self.engine.handle_timeout(now);
            self.meta.handle_timeout(now);
            self.pump();
            self.publish_metrics();
        }
    }

    /// Takes reloaded `[upstream]` settings: metadata expiry, retries, whole-content fill, the
    /// piece-memory budget, whether to use the origin.
    fn apply(&mut self, upstream: &UpstreamConfig) {
        self.engine.set_limits(FillLimits::from_config(upstream));
        self.meta.set_limits(MetadataLimits::from_config(upstream));
        self.link.set_refresh_after_ms(upstream.metadata_expiry_ms);
        self.origin = upstream.origin;
    }

    /// Fetches that ended: bytes go to the verifier, failures to the engine (asked again
    /// elsewhere). `true` if there was any.
    fn take_outcomes(&mut self) -> bool {
        let mut any = false;
        while let Some(outcome) = self.fetches.poll_outcome() {
            any = true;
            let now = self.now_ms();
            match outcome {
                FetchOutcome::Received { fetch, buffer, length } => {
                    self.engine.handle_received(fetch.fetch, now);
                    let piece_size = fetch.content.hashes.piece_size();
                    let tag = StorePiece { fetch: fetch.fetch, source: fetch.source, piece: fetch.piece, piece_size };
                    let check = Check { tag, buffer, length, expected: Some(fetch.digest), write: true };
                    self.to_verify.push_back(check);
                }
                FetchOutcome::Bad { fetch } => {
                    let (_, name) = self.engine.source(fetch.source);
                    tracing::warn!(source = name, id = %fetch.content.id, piece = fetch.piece, "bad piece: not the length or range asked for; dropped");
                    self.engine.handle_received(fetch.fetch, now);
                    self.engine.handle_bad(fetch.fetch, now);
                }
                FetchOutcome::Failed { fetch, failure } => self.engine.handle_fetch_failed(fetch, failure, now),
            }
        }
        while self.verifier.has_room() {
            let Some(check) = self.to_verify.pop_front() else { break };
            self.verifier.submit(check);
        }
        any
    }

    /// Verdicts of the verifier: stored pieces land for their waiters, bad ones are blamed on
    /// their source and asked elsewhere.
    fn take_verdicts(&mut self) {
        while let Some(Checked { tag, good, error, buffer }) = self.verifier.try_result() {
            self.fetches.give(buffer);
            let now = self.now_ms();
            let fetch = tag.fetch;
            if !good {
                let (_, name) = self.engine.source(tag.source);
                tracing::warn!(
                    source = name,
                    piece = tag.piece,
                    "bad piece: its SHA-256 is not the hash file's; dropped"
                );
                self.engine.handle_bad(fetch, now);
                continue;
            }
            self.engine.handle_verified(fetch, now);
            match error {
                None => {
                    self.engine.handle_stored(fetch, now);
                    self.announce.announce_soon();
                }
                Some(reason) => self.engine.handle_store_failed(fetch, reason, now),
            }
        }
    }

    fn on_miss(&mut self, miss: Miss) {
        self.next_token += 1;
        let key = WaiterKey { worker: WorkerId(miss.worker as u16), token: WaiterToken(self.next_token) };
        let id = miss.id.clone();
        self.by_response.insert((miss.worker, miss.token), key);
        let now = self.now_ms();
        let (landed, missed_at_ms) = (HashSet::new(), now);
        self.waiting.insert(key, Waiting { miss, content: None, next: 0, end: 0, landed, missed_at_ms });
        match self.meta.request(key, &id, now) {
            MetaAnswer::Ready(metadata) => self.on_metadata(key, metadata),
            MetaAnswer::Pending => {}
            MetaAnswer::Busy { retry_after_s } => self.finish(key, Filled::Busy { retry_after_s }),
        }
    }

    /// A response stopped waiting: its claims go (with `fill_whole` the fill goes on in the
    /// background), and it is answered no more.
    fn on_gone(&mut self, worker: usize, token: ResponseToken) {
        let Some(key) = self.by_response.remove(&(worker, token)) else { return };
        self.waiting.remove(&key);
        let now = self.now_ms();
        self.engine.handle_cancel(key, now);
    }

    /// The metadata of a waiter's content is known: catalog it, then want its pieces.
    fn on_metadata(&mut self, key: WaiterKey, metadata: Metadata) {
        let Some(metadata) = self.answer_asked(key, metadata) else { return };
        let content = match metadata {
            Metadata::Simple(simple) => return self.on_simple(key, &simple),
            Metadata::P2p(content) => content,
        };
        if let Err(error) = self.catalog_version(&content) {
            return self.finish(key, Filled::Failed { reason: error });
        }
        let Some(waiting) = self.waiting.get_mut(&key) else { return };
        let count = content.piece_count();
        let (first, end) = match &waiting.miss.need {
            Need::Metadata | Need::ContentHead { .. } => (0, 0),
            Need::Piece(index) => (*index, (*index + 1).min(count)),
            Need::Content { range } => {
                let piece_bytes = u64::from(content.hashes.piece_size().bytes());
                range_pieces(range.as_deref(), content.manifest.content_length, piece_bytes, count, self.ranges_max)
            }
        };
        if first >= end {
            return self.finish(key, Filled::Ready);
        }
        waiting.content = Some(content.clone());
        waiting.next = first;
        waiting.end = end;
        let missed_at_ms = waiting.missed_at_ms;
        let sources = if self.origin {
            let origins = content.manifest.sources.iter().filter(|url| url.starts_with("http://"));
            let (engine, names) = (&mut self.engine, &self.names);
            origins
                .filter_map(|url| {
                    let id = engine.add_source(SourceKind::Origin, url)?;
                    names.set(id, url);
                    Some(id)
                })
                .collect()
        } else {
            Vec::new()
        };
        let now = self.now_ms();
        let want = Want { waiter: key, content, first_piece: first, end_piece: end, sources, missed_at_ms };
        self.engine.handle_want(want, now);
    }

    /// Simple mode (rule 5): nothing of the content is fetched as pieces, stored or announced; a
    /// request for the content (GET or HEAD, ranges too) is handed to the pass-through thread,
    /// which streams it from the manifest's HTTP source and answers it from then on.
    fn on_simple(&mut self, key: WaiterKey, simple: &SimpleContent) {
        let reason = simple.reason.to_string();
        tracing::warn!(id = %simple.id, %reason, "content in Simple mode: not stored, not served as pieces");
        let content = self
            .waiting
            .get(&key)
            .is_some_and(|w| matches!(w.miss.need, Need::Content { .. } | Need::ContentHead { .. }));
        let source = simple.sources.iter().find(|url| url.starts_with("http://")).filter(|_| self.origin);
        let (true, Some(url)) = (content, source) else {
            let why = if self.origin { "no http:// source of it is known" } else { "[upstream] origin is off" };
            self.simple.count(&simple.reason, false);
            return self.finish(key, Filled::Simple { reason: format!("{reason}; {why}") });
        };
        let Some(waiting) = self.waiting.remove(&key) else { return };
        self.simple.count(&simple.reason, true);
        let (worker, token) = (waiting.miss.worker, waiting.miss.token);
        self.by_response.remove(&(worker, token));
        let now = self.now_ms();
        self.engine.handle_cancel(key, now);
        if !self.link.send_pass(ToPassThrough::Start { miss: waiting.miss, url: url.clone(), reason }) {
            self.link.send_done(worker, Done { token, filled: Filled::Busy { retry_after_s: 1 } });
        }
    }

    /// Writes a content version's manifest and hash file to the catalog once.
    fn catalog_version(&mut self, content: &ContentVersion) -> Result<(), String> {
        if self.cataloged.get(&content.id) == Some(&content.version) {
            return Ok(());
        }
        let hashfile = content.hashes.to_bytes();
        self.catalog
            .write(&content.id, &hashfile, &content.manifest)
            .map_err(|error| format!("cannot write the catalog entry: {error}"))?;
        tracing::info!(id = %content.id, version = content.version, pieces = content.piece_count(), "metadata verified and cataloged");
        self.cataloged.insert(content.id.clone(), content.version);
        self.link.catalog_changed(&content.id);
        Ok(())
    }

    fn on_result(&mut self, result: JobResult) {
        let now = self.now_ms();
        let failure = match &result {
            JobResult::Manifest(_, Err(MetadataFailure::Fetch(why))) => Some(why),
            JobResult::HashFile(_, Err(MetadataFailure::Fetch(why))) => Some(why),
            _ => None,
        };
        let health = &mut self.service_health;
        match failure {
            Some(why) => (health.last_failure_unix_s, health.last_failure) = (Some(unix_now_s()), Some(why.clone())),
            None => health.last_answer_unix_s = Some(unix_now_s()),
        }
        match result {
            JobResult::Manifest(fetch, manifest) => self.meta.handle_manifest(fetch, manifest, now),
            JobResult::HashFile(fetch, hashfile) => self.meta.handle_hashfile(fetch, hashfile, now),
        }
    }

    /// Moves every output of the two state machines on: metadata answers, fetches, notifications.
    fn pump(&mut self) {
        loop {
            let mut progress = false;
            while let Some(MetaReady { waiter, metadata }) = self.meta.poll_ready() {
                progress = true;
                self.on_metadata(waiter, metadata);
            }
            while let Some(version) = self.meta.poll_version() {
                progress = true;
                self.on_version(&version);
            }
            while let Some(action) = self.meta.poll_action() {
                progress = true;
                if let MetaAction::Fetch(fetch) = action {
                    self.queue(Job::Meta(fetch));
                }
            }
            while let Some(action) = self.engine.poll_fetch() {
                progress = true;
                match action {
                    FetchAction::Start(fetch) if self.store.contains(&fetch.digest) => {
                        let now = self.now_ms();
                        self.engine.handle_already_stored(fetch.fetch, now);
                    }
                    FetchAction::Start(fetch) => {
                        let (kind, name) = self.engine.source(fetch.source);
                        let name = name.to_string();
                        self.fetches.start(kind, &name, fetch);
                    }
                    FetchAction::Cancel { fetch } => self.fetches.cancel(fetch),
                }
            }
            progress |= self.take_outcomes();
            while let Some(notification) = self.engine.poll_notification() {
                progress = true;
                for token in notification.tokens {
                    let key = WaiterKey { worker: notification.worker, token };
                    self.on_event(key, &notification.event);
                }
            }
            if !progress {
                return;
            }
        }
    }

    fn queue(&mut self, job: Job) {
        if let Err(error) = self.jobs.try_send(job) {
            // Cannot happen within the metadata cache's bounds; the step then ends by its timeout.
            tracing::error!(%error, "helper queue full");
        }
    }

    fn on_event(&mut self, key: WaiterKey, event: &WaiterEvent) {
        match event {
            WaiterEvent::Landed { digest } => {
                let Some(waiting) = self.waiting.get_mut(&key) else { return };
                let Some(content) = waiting.content.clone() else { return };
                for index in waiting.next..waiting.end {
                    if content.digest(index) == *digest {
                        waiting.landed.insert(index);
                    }
                }
                let before = waiting.next;
                while waiting.next < waiting.end && waiting.landed.remove(&waiting.next) {
                    waiting.next += 1;
                }
                let (next, end) = (waiting.next, waiting.end);
                let (worker, token) = (waiting.miss.worker, waiting.miss.token);
                if next == end {
                    self.finish(key, Filled::Ready);
                } else if next > before {
                    let now = self.now_ms();
                    self.engine.handle_progress(key, next, now);
                    self.link.send_done(worker, Done { token, filled: Filled::Landed { end_piece: next } });
                }
            }
            WaiterEvent::Failed { reason, .. } => {
                let reason = match reason {
                    FailReason::NoSource => "no upstream source can serve a piece".to_string(),
                    FailReason::TooManyFailures { attempts } => format!("a piece failed {attempts} times"),
                    FailReason::StoreFailed(why) => format!("the store refused a piece: {why}"),
                };
                self.finish(key, Filled::Failed { reason });
            }
            WaiterEvent::Busy { retry_after_s } => self.finish(key, Filled::Busy { retry_after_s: *retry_after_s }),
        }
    }

    /// Answers a waiter once and forgets it (its claims go with it).
    fn finish(&mut self, key: WaiterKey, filled: Filled) {
        let Some(waiting) = self.waiting.remove(&key) else { return };
        let now = self.now_ms();
        self.engine.handle_cancel(key, now);
        let Miss { worker, token, .. } = waiting.miss;
        self.by_response.remove(&(worker, token));
        self.link.send_done(worker, Done { token, filled });
    }
}

/// Pieces `first..end` under a `Range:` header: all without one, none when unsatisfiable, the
/// span of all ranges for a multi-range request.
fn range_pieces(range: Option<&str>, length: u64, piece_bytes: u64, count: u64, ranges_max: usize) -> (u64, u64) {
    let (start, last) = match parse_range(range, length, ranges_max) {
        RangeOutcome::Full => return (0, count),
        RangeOutcome::Unsatisfiable => return (0, 0),
        RangeOutcome::Partial { start, end } => (start, end),
        RangeOutcome::Multiple(ranges) => {
            let start = ranges.iter().map(|r| r.start).min().unwrap_or(0);
            (start, ranges.iter().map(|r| r.end).max().unwrap_or(start))
        }
    };
    (start / piece_bytes, (last / piece_bytes + 1).min(count))
}

#[cfg(test)]
mod tests {
    use super::range_pieces;

    #[test]
    fn a_range_wants_only_its_pieces() {
        // 10 pieces of 100 bytes, the last one 50.
        assert_eq!(range_pieces(None, 950, 100, 10, 8), (0, 10));
        assert_eq!(range_pieces(Some("bytes=150-249"), 950, 100, 10, 8), (1, 3));
        assert_eq!(range_pieces(Some("bytes=-10"), 950, 100, 10, 8), (9, 10));
        assert_eq!(range_pieces(Some("bytes=0-0,500-510"), 950, 100, 10, 8), (0, 6));
        assert_eq!(range_pieces(Some("bytes=5000-"), 950, 100, 10, 8), (0, 0));
    }
}
