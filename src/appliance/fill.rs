//! A cache box's fill thread: it owns the sans-I/O [`FillEngine`] and [`MetadataCache`], takes
//! the workers' misses, runs their actions on a small bounded pool of fetch threads (blocking
//! `http::client::blocking` exchanges: a fetch thread may block, a worker never does), and
//! answers each miss once through the worker's own wake-up.
//!
//! A piece reaches the store only after its SHA-256 matched the verified hash file; a source
//! that sends a bad piece is counted in the node-wide [`NodeBans`] and, once banned, is not
//! picked for any content until the ban expires.

mod fetcher;
mod policy;
pub mod service_asks;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::appliance::announcer::AnnounceTrigger;
use crate::catalog::Catalog;
use crate::config::{Config, UpstreamConfig};
use crate::content::ContentId;
use crate::control::client::{ClientError, MetadataClient};
use crate::dataplane::connection::ResponseToken;
use crate::dataplane::upstream::{Done, Filled, FromWorker, Miss, Need, UpstreamLink};
use crate::download::ban::{BanLimits, NodeBans};
use crate::fill::{ContentVersion, FailReason};
use crate::fill::{
    FetchAction, FillEngine, FillLimits, MetaAction, MetaAnswer, MetaReady, Metadata, MetadataCache, MetadataLimits,
    SourceKind, WaiterEvent, WaiterKey, WaiterToken, Want, WorkerId,
};
use crate::http::{parse_range, RangeOutcome};
use crate::store::Store;
use crate::tls::TlsClientOptions;
use fetcher::{Job, JobResult, PieceOutcome};

/// Fetch threads at most.
const FETCH_THREADS_MAX: u32 = 16;
/// Jobs queued to the fetch threads at most (the engine bounds what it starts far below this).
const JOBS_QUEUED_MAX: usize = 4096;
/// Largest Simple-mode body passed through (held in memory while it is sent).
const PASS_THROUGH_BYTES_MAX: u64 = 64 << 20;
/// The fill thread looks for a stop request at least this often.
const STOP_POLL_MS: u64 = 50;

/// Why the fill thread did not start.
#[derive(Debug, thiserror::Error)]
pub enum FillStartError {
    #[error("upstream: {0}")]
    Client(#[from] ClientError),
    #[error("cannot start a fill thread: {0}")]
    Thread(std::io::Error),
}

/// The running fill thread and its fetch threads; dropping it stops them.
pub struct FillHandle {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for FillHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
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
    let client = MetadataClient::new(options)?;
    let stop = Arc::new(AtomicBool::new(false));
    let (jobs_tx, jobs_rx) = crossbeam_channel::bounded::<Job>(JOBS_QUEUED_MAX);
    let (results_tx, results_rx) = crossbeam_channel::bounded::<JobResult>(JOBS_QUEUED_MAX);
    let mut handle = FillHandle { stop: stop.clone(), threads: Vec::new() };
    let fetchers = (upstream.connections_per_source_max * upstream.pipeline_depth).clamp(1, FETCH_THREADS_MAX);
    for index in 0..fetchers {
        let context = fetcher::Context {
            client: client.clone(),
            service_url: upstream.service_url.clone(),
            store: store.clone(),
            connect_timeout_ms: upstream.connect_timeout_ms,
            request_timeout_ms: upstream.request_timeout_ms,
        };
        let (jobs, results) = (jobs_rx.clone(), results_tx.clone());
        let thread = std::thread::Builder::new()
            .name(format!("tessera-fetch{index}"))
            .spawn(move || fetcher::run(&context, &jobs, &results))
            .map_err(FillStartError::Thread)?;
        handle.threads.push(thread);
    }
    let bans = NodeBans::new(BanLimits {
        bad_pieces_max: config.download.ban_after_bad_pieces.max(1),
        duration_ms: config.download.ban_duration_s.saturating_mul(1000),
    });
    let mut fill = FillThread::new(config, upstream, Catalog::new(config.catalog_dir()), link, bans, jobs_tx);
    fill.announce = announce;
    fill.asked = asked;
    let thread = std::thread::Builder::new()
        .name("tessera-fill".into())
        .spawn(move || fill.run(&misses, &results_rx, &stop))
        .map_err(FillStartError::Thread)?;
    handle.threads.push(thread);
    Ok(handle)
}

/// One miss being served.
struct Waiting {
    miss: Miss,
    content: Option<Arc<ContentVersion>>,
    /// Pieces `next..end` are still wanted; `landed` holds those that came out of order.
    next: u64,
    end: u64,
    landed: HashSet<u64>,
    /// Set while the content is passed through in Simple mode: why.
    simple_reason: Option<String>,
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
    /// The embedded service's asks for metadata of ids its catalog lacks.
    asked: Option<service_asks::ServiceAsks>,
}

impl FillThread {
    fn new(
        config: &Config,
        upstream: &UpstreamConfig,
        catalog: Catalog,
        link: Arc<UpstreamLink>,
        bans: NodeBans,
        jobs: Sender<Job>,
    ) -> FillThread {
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
        FillThread {
            engine,
            names,
            bans,
            meta: MetadataCache::new(MetadataLimits::from_config(upstream)),
            catalog,
            link,
            jobs,
            origin: upstream.origin,
            ranges_max: config.serve.ranges_per_request_max,
            waiting: HashMap::new(),
            by_response: HashMap::new(),
            next_token: 0,
            cataloged: HashMap::new(),
            started: Instant::now(),
            announce: AnnounceTrigger::default(),
            asked: None,
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn run(mut self, misses: &Receiver<FromWorker>, results: &Receiver<JobResult>, stop: &AtomicBool) {
        let mut asks = self.asked.as_ref().map_or_else(crossbeam_channel::never, |asked| asked.receiver());
        while !stop.load(Ordering::Acquire) {
            let now = self.now_ms();
            let due = [self.engine.poll_timeout(), self.meta.poll_timeout()].into_iter().flatten().min();
            let wait_ms = due.map_or(STOP_POLL_MS, |at| at.saturating_sub(now)).min(STOP_POLL_MS);
            crossbeam_channel::select! {
                recv(misses) -> message => match message {
                    Ok(FromWorker::Miss(miss)) => self.on_miss(miss),
                    Ok(FromWorker::Gone { worker, token }) => self.on_gone(worker, token),
                    Err(_) => return,
                },
                recv(results) -> result => if let Ok(result) = result { self.on_result(result) },
                recv(asks) -> id => match id {
                    Ok(id) => self.on_asked(id),
                    Err(_) => asks = crossbeam_channel::never(),
                },
                default(Duration::from_millis(wait_ms)) => {}
            }
            self.take_asks();
            let now = self.now_ms();
            self.engine.handle_timeout(now);
            self.meta.handle_timeout(now);
            self.pump();
            let text = self.render_metrics();
            self.link.set_metrics_text(text);
        }
    }

    /// The fill's counters and gauges in Prometheus text.
    fn render_metrics(&mut self) -> String {
        use std::fmt::Write as _;
        let now = self.now_ms();
        let (bans, banned) = {
            let bans = self.bans.lock();
            (bans.counts(), bans.banned_count(now))
        };
        let gauges = [
            ("tessera_fill_fills_in_flight", "Contents being filled.", self.engine.fills_in_flight() as u64),
            ("tessera_fill_pieces_in_flight", "Piece fetches in flight.", self.engine.pieces_in_flight() as u64),
            ("tessera_fill_piece_memory_bytes", "Bytes fetched, not yet stored.", self.engine.piece_memory_bytes()),
            ("tessera_fill_waiters", "Requests waiting for pieces.", self.engine.waiters() as u64),
            ("tessera_fill_sources_banned", "Upstream sources banned now.", banned as u64),
        ];
        let c = self.engine.counters();
        let counters = [
            ("tessera_fill_fetches_started_total", "Upstream piece fetches started.", c.fetches_started_total),
            (
                "tessera_fill_coalesced_waiters_total",
                "Waiters that joined a fetch in flight.",
                c.coalesced_waiters_total,
            ),
            ("tessera_fill_bad_pieces_total", "Pieces that failed verification.", c.bad_pieces_total),
            ("tessera_fill_retries_total", "Fetches asked again after a failure.", c.retries_total),
            ("tessera_fill_failed_pieces_total", "Pieces given up.", c.failed_pieces_total),
            ("tessera_fill_busy_total", "Busy answers (a fill limit was hit).", c.busy_total),
            ("tessera_fill_pieces_stored_total", "Pieces verified and stored.", c.pieces_stored_total),
            ("tessera_fill_bans_total", "Upstream sources banned.", bans.bans_total),
        ];
        let mut out = String::with_capacity(2048);
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        }
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        }
        let name = "tessera_fill_upstream_bytes_total";
        let _ = writeln!(out, "# HELP {name} Verified bytes received, by source kind.\n# TYPE {name} counter");
        for kind in [SourceKind::Parent, SourceKind::Peer, SourceKind::Origin] {
            let _ = writeln!(out, "{name}{{kind=\"{}\"}} {}", kind.name(), c.bytes_from(kind));
        }
        out
    }

    fn on_miss(&mut self, miss: Miss) {
        self.next_token += 1;
        let key = WaiterKey { worker: WorkerId(miss.worker as u16), token: WaiterToken(self.next_token) };
        let id = miss.id.clone();
        self.by_response.insert((miss.worker, miss.token), key);
        self.waiting
            .insert(key, Waiting { miss, content: None, next: 0, end: 0, landed: HashSet::new(), simple_reason: None });
        let now = self.now_ms();
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
            Metadata::Simple(simple) => {
                let reason = simple.reason.to_string();
                tracing::warn!(id = %simple.id, %reason, "content in Simple mode: not stored, not served as pieces");
                let whole = self.waiting.get(&key).is_some_and(|w| w.miss.need == Need::Content { range: None });
                let source = simple.sources.iter().find(|url| url.starts_with("http://"));
                let Some(url) = source.filter(|_| whole && self.origin) else {
                    return self.finish(key, Filled::Simple { reason });
                };
                if let Some(waiting) = self.waiting.get_mut(&key) {
                    waiting.simple_reason = Some(reason);
                }
                let job = Job::Whole { waiter: key, url: url.clone(), body_bytes_max: PASS_THROUGH_BYTES_MAX };
                return self.queue(job);
            }
            Metadata::P2p(content) => content,
        };
        if let Err(error) = self.catalog_version(&content) {
            return self.finish(key, Filled::Failed { reason: error });
        }
        let Some(waiting) = self.waiting.get_mut(&key) else { return };
        let count = content.piece_count();
        let (first, end) = match &waiting.miss.need {
            Need::Metadata => (0, 0),
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
        self.engine.handle_want(Want { waiter: key, content, first_piece: first, end_piece: end, sources }, now);
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
        Ok(())
    }

    fn on_result(&mut self, result: JobResult) {
        let now = self.now_ms();
        match result {
            JobResult::Manifest(fetch, manifest) => self.meta.handle_manifest(fetch, manifest, now),
            JobResult::HashFile(fetch, hashfile) => self.meta.handle_hashfile(fetch, hashfile, now),
            JobResult::Whole(key, body) => {
                let Some(reason) = self.waiting.get_mut(&key).and_then(|w| w.simple_reason.take()) else { return };
                let filled = match body {
                    Ok(bytes) => Filled::PassThrough { reason, bytes: bytes.into() },
                    Err(error) => Filled::Simple { reason: format!("{reason}; its HTTP source failed: {error}") },
                };
                self.finish(key, filled);
            }
            JobResult::Piece(fetch, outcome) => {
                let engine = &mut self.engine;
                match outcome {
                    PieceOutcome::AlreadyStored => engine.handle_already_stored(fetch, now),
                    PieceOutcome::Stored => {
                        engine.handle_received(fetch, now);
                        engine.handle_verified(fetch, now);
                        engine.handle_stored(fetch, now);
                        self.announce.announce_soon();
                    }
                    PieceOutcome::Bad => {
                        engine.handle_received(fetch, now);
                        engine.handle_bad(fetch, now);
                    }
                    PieceOutcome::Failed(failure) => engine.handle_fetch_failed(fetch, failure, now),
                    PieceOutcome::StoreFailed(reason) => {
                        engine.handle_received(fetch, now);
                        engine.handle_verified(fetch, now);
                        engine.handle_store_failed(fetch, reason, now);
                    }
                }
            }
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
            while let Some(action) = self.meta.poll_action() {
                progress = true;
                if let MetaAction::Fetch(fetch) = action {
                    self.queue(Job::Meta(fetch));
                }
            }
            while let Some(action) = self.engine.poll_fetch() {
                progress = true;
                if let FetchAction::Start(fetch) = action {
                    let (kind, name) = self.engine.source(fetch.source);
                    let job = Job::Piece { kind, name: name.to_string(), fetch };
                    self.queue(job);
                }
            }
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
            // Cannot happen within the engine's bounds; the fetch then ends by its timeout.
            tracing::error!(%error, "fetch queue full");
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
