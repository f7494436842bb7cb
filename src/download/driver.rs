//! The I/O driver: one client loop of the ring layer (io_uring, or epoll), per-connection state,
//! timers.
//!
//! Thin by design: the [`Scheduler`] decides what to ask whom, the HTTP client connection
//! (`http::client`, keyed by piece index) writes requests and frames responses, the [`Verifier`]
//! threads hash and write pieces; this file only turns what happened on connections and in the
//! verifier into scheduler events. Plain body bytes are copied from each receive straight into
//! reused piece buffers (not through the HTTP connection's input), which travel to a verifier
//! thread and back. The verifier threads wake the loop through its [`Waker`](crate::io::client::Waker).
//! Sending and receiving (and TLS) are in `download/transport.rs`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;

use crate::config::DownloadConfig;
use crate::content::{ContentId, HashFile};
use crate::download::ban::BanLimits;
use crate::download::output::PieceWriter;
use crate::download::output::{Output, OutputError};
use crate::download::piece_response::{self, BufferPool, Expect, PieceReceiver, Response, Taken};
use crate::download::scheduler::{Action, Event, Exhaustion, Scheduler, SchedulerLimits, SourceId, SourceKind};
use crate::download::transport::Transport;
use crate::download::verify::{Check, Checked, FilePiece, Verifier};
use crate::http::client::redirect::next_hop;
use crate::http::client::{ClientLimits, ReceivedHead, RequestSpec};
use crate::http::url::HttpUrl;
use crate::io::client::{self as io_client, ClientLoop, ConnId};

/// Bytes received from a connection at a time.
const RECV_BUFFER_BYTES: usize = 256 * 1024;
/// Longest sleep in `poll`, so timers are checked at least this often.
const POLL_INTERVAL_MS: u64 = 50;

/// A source to download from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// A peer speaking the piece API.
    Peer(SocketAddr),
    /// One of the site's boxes (a peer speaking the piece API), in rendezvous order: boxes are
    /// used one at a time, the next when the one before fails.
    Box(SocketAddr),
    /// An HTTP(S) URL of the whole content, asked for byte ranges.
    Http(HttpUrl),
}

impl SourceSpec {
    /// How the source is named in logs and summaries.
    pub fn label(&self) -> String {
        match self {
            SourceSpec::Peer(address) | SourceSpec::Box(address) => address.to_string(),
            SourceSpec::Http(url) => url.to_string(),
        }
    }

    /// The peer address, for a peer or a box.
    fn address(&self) -> Option<SocketAddr> {
        match self {
            SourceSpec::Peer(address) | SourceSpec::Box(address) => Some(*address),
            SourceSpec::Http(_) => None,
        }
    }
}

/// One download for the driver.
pub struct Job<'a> {
    pub id: &'a ContentId,
    pub content_length: u64,
    /// Piece size (P2P) or range-request chunk size (Simple).
    pub piece_size: u64,
    /// Piece hashes in P2P mode; `None` in Simple mode, where only lengths are checked.
    pub hashes: Option<&'a HashFile>,
    pub sources: Vec<SourceSpec>,
    pub config: &'a DownloadConfig,
    pub tls: Arc<ClientConfig>,
}

/// What one source did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SourceStats {
    pub source: String,
    pub kind: &'static str,
    /// Bytes of verified pieces written from this source.
    pub bytes: u64,
    pub pieces: u64,
    pub bad_pieces: u64,
    pub requests: u64,
    pub timeouts: u64,
    pub failures: u64,
    pub banned: bool,
    pub dropped: bool,
    /// A box's rendezvous rank (0: the primary); absent for other sources.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rank: Option<u32>,
    /// When its first and its last verified piece landed, in milliseconds since the download
    /// started: how long a failover took is the next box's first minus the failed box's last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_piece_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_piece_ms: Option<u64>,
}

/// How the download loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Exhausted { piece: u64, why: Exhaustion },
}

/// The loop's result.
#[derive(Debug, Clone)]
pub struct DriverReport {
    pub outcome: Outcome,
    pub sources: Vec<SourceStats>,
}

/// A snapshot for the progress bar.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub peers_in_use: u32,
    pub peers_banned: u32,
}

/// A finished response, from the connection it came on.
struct Landed {
    source: SourceId,
    /// Which of the source's URLs (it changes on redirects) the connection was opened for.
    generation: u32,
    piece: u64,
    response: Response,
}

struct Conn {
    source: SourceId,
    /// Which of the source's URLs (it changes on redirects) this connection was opened for.
    generation: u32,
    transport: Transport,
    /// The HTTP state and the body being received; each request is tagged with its piece index.
    rx: PieceReceiver<u64>,
    deadline: Instant,
}

type End = piece_response::End<u64>;

struct Driver<'a> {
    job: &'a Job<'a>,
    client: ClientLoop,
    scheduler: Scheduler,
    conns: BTreeMap<ConnId, Conn>,
    addresses: Vec<Option<SocketAddr>>,
    /// Each HTTP source's current URL (where its redirects led), its number and hops so far.
    urls: Vec<Option<HttpUrl>>,
    generations: Vec<u32>,
    hops: Vec<u32>,
    stats: Vec<SourceStats>,
    landed: Vec<Landed>,
    pool: BufferPool,
    verifier: Verifier<PieceWriter>,
    start: Instant,
    bytes_done: u64,
}

/// Runs the download loop until every piece is in `output` or no source can deliver.
pub fn run(job: &Job, output: &mut Output, observe: &mut dyn FnMut(&Progress)) -> Result<DriverReport, OutputError> {
    let config = job.config;
    let piece_count = job.content_length.div_ceil(job.piece_size.max(1));
    let limits = SchedulerLimits {
        slots_per_source: (config.connections_per_source_max.max(1)) * config.pipeline_depth.max(1),
        retries_per_piece_max: config.retries_per_piece_max,
        source_failures_max: config.source_failures_max.max(1),
        endgame_pieces: config.endgame_pieces,
        sources_max: config.sources_max,
        ban: BanLimits {
            bad_pieces_max: config.ban_after_bad_pieces.max(1),
            duration_ms: config.ban_duration_s.saturating_mul(1000),
        },
    };
    let mut scheduler = Scheduler::new(piece_count, limits);
    let mut bytes_done = 0;
    for piece in output.verified_pieces().collect::<Vec<_>>() {
        scheduler.mark_verified(piece);
        bytes_done += piece_length(job, piece);
    }
    let client = ClientLoop::new(config.backend, client_config(job)).map_err(client_error)?;
    // Pieces that arrived together are hashed side by side (`hash_batch`); none waits for more.
    let (threads, queue, batch) = (config.verify_threads, config.verify_queue_pieces, crate::hash::BATCH_LANES as u32);
    let verifier = Verifier::start(threads, queue, batch, output.writer(), client.waker())
        .map_err(|source| OutputError::Io { path: "verifier threads".into(), source })?;
    let mut driver = Driver {
        job,
        client,
        scheduler,
        conns: BTreeMap::new(),
        addresses: Vec::new(),
        urls: Vec::new(),
        generations: Vec::new(),
        hops: Vec::new(),
        stats: Vec::new(),
        landed: Vec::new(),
        pool: BufferPool::new(
            job.piece_size.min(job.content_length).max(1) as usize,
            config.piece_buffers_max as usize,
        ),
        verifier,
        start: Instant::now(),
        bytes_done,
    };
    driver.add_sources();
    let outcome = driver.run_loop(output, observe)?;
    Ok(DriverReport { outcome, sources: driver.stats })
}

/// Slots of the client loop beyond the connections open at once: a closed io_uring connection
/// keeps its slot until the kernel hands its buffers back.
const CLOSING_CONNECTIONS_MAX: usize = 16;

/// The client loop's limits: every connection `get` may open at once, twice, plus a margin
/// (connections closed on a ban, timeout or redirect are replaced at once).
fn client_config(job: &Job) -> io_client::ClientConfig {
    let per_source = job.config.connections_per_source_max.max(1) as usize;
    let sources = job.sources.len().min(job.config.sources_max as usize).max(1);
    io_client::ClientConfig {
        connections_max: per_source.saturating_mul(sources).saturating_mul(2) + CLOSING_CONNECTIONS_MAX,
        recv_buffer_bytes: RECV_BUFFER_BYTES,
        ..io_client::ClientConfig::default()
    }
}

/// The client loop failed to start or to wait: the download cannot go on.
fn client_error(error: io_client::ClientError) -> OutputError {
    OutputError::Io { path: "client loop".into(), source: std::io::Error::other(error) }
}

fn piece_length(job: &Job, piece: u64) -> u64 {
    let start = piece * job.piece_size;
    job.piece_size.min(job.content_length.saturating_sub(start))
}

impl Driver<'_> {
    /// Registers the job's sources with the scheduler (boxes in their rank order) and the pace.
    fn add_sources(&mut self) {
        if self.job.config.rate_bytes_per_s_max > 0 {
            self.scheduler.set_pace(
                self.job.config.rate_bytes_per_s_max,
                self.job.piece_size.min(self.job.content_length).max(1),
                0,
            );
        }
        let mut boxes = 0;
        for spec in &self.job.sources {
            let (added, kind, rank) = match spec {
                SourceSpec::Peer(_) => (self.scheduler.add_source(SourceKind::Peer, &spec.label()), "peer", None),
                SourceSpec::Box(_) => (self.scheduler.add_box(&spec.label()), "box", Some(boxes)),
                SourceSpec::Http(_) => (self.scheduler.add_source(SourceKind::Http, &spec.label()), "http", None),
            };
            if added.is_none() {
                tracing::warn!(source = %spec.label(), "source ignored: sources_max reached");
                continue;
            }
            boxes += u32::from(rank.is_some());
            let address = match spec {
                SourceSpec::Http(url) => {
                    url.resolve().map_err(|error| tracing::warn!(source = %url, %error, "source unusable")).ok()
                }
                peer => peer.address(),
            };
            self.addresses.push(address);
            self.urls.push(match spec {
                SourceSpec::Http(url) => Some(url.clone()),
                _ => None,
            });
            self.generations.push(0);
            self.hops.push(0);
            self.stats.push(SourceStats { source: spec.label(), kind, rank, ..SourceStats::default() });
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn run_loop(&mut self, output: &mut Output, observe: &mut dyn FnMut(&Progress)) -> Result<Outcome, OutputError> {
        let mut events = Vec::new();
        // Bounded: every request has a timeout, every piece and source a failure budget, so the
        // scheduler reaches Done or Exhausted.
        loop {
            while let Some(action) = self.scheduler.poll(self.now_ms()) {
                match action {
                    Action::Request { source, piece } => self.dispatch(source, piece),
                    Action::Ban { source } => {
                        let stats = &mut self.stats[source.0 as usize];
                        stats.banned = true;
                        tracing::warn!(source = %stats.source, bad_pieces = stats.bad_pieces, "peer banned");
                        self.close_source(source);
                    }
                    Action::Drop { source } => {
                        let stats = &mut self.stats[source.0 as usize];
                        stats.dropped = true;
                        if stats.rank.is_some() {
                            let at_ms = self.start.elapsed().as_millis() as u64;
                            tracing::warn!(source = %stats.source, failures = stats.failures, at_ms, "box failed: the next-ranked box takes over");
                        } else {
                            tracing::warn!(source = %stats.source, failures = stats.failures, "source dropped");
                        }
                        self.close_source(source);
                    }
                    Action::Done => {
                        // Duplicates (end game) may still be in the verifier: no write after this.
                        self.verifier.shutdown();
                        output.save()?;
                        return Ok(Outcome::Done);
                    }
                    Action::Exhausted { piece, why } => {
                        self.verifier.shutdown();
                        output.persist()?;
                        return Ok(Outcome::Exhausted { piece, why });
                    }
                }
            }
            let timeout = self.next_timeout();
            self.client.poll(&mut events, Some(timeout)).map_err(client_error)?;
            for event in events.drain(..) {
                self.on_event(event);
            }
            // With every event handled, plain connections lend a buffer for their next receive:
            // piece bytes go from the socket straight into the piece buffer.
            for (token, conn) in self.conns.iter_mut().filter(|(_, conn)| !conn.transport.is_tls()) {
                conn.rx.lend_to(&mut self.client, *token);
            }
            self.verify(output)?;
            self.expire();
            observe(&self.progress());
        }
    }

    fn progress(&mut self) -> Progress {
        let now = self.now_ms();
        let mut progress =
            Progress { bytes_done: self.bytes_done, bytes_total: self.job.content_length, ..Progress::default() };
        for (index, stats) in self.stats.iter().enumerate() {
            if stats.kind == "http" {
                continue;
            }
            let id = SourceId(index as u32);
            if self.scheduler.is_banned(id, now) {
                progress.peers_banned += 1;
            } else if self.scheduler.in_flight(id) > 0 {
                progress.peers_in_use += 1;
            }
        }
        progress
    }

    fn next_timeout(&self) -> Duration {
        let now = Instant::now();
        let soonest = self
            .conns
            .values()
            .filter(|c| c.rx.http.in_flight() > 0 || !c.transport.is_connected())
            .map(|c| c.deadline.saturating_duration_since(now))
            .min()
            .unwrap_or(Duration::MAX);
        soonest.min(Duration::from_millis(POLL_INTERVAL_MS))
    }

    fn request_spec(&self, source: SourceId, piece: u64) -> RequestSpec {
        let index = source.0 as usize;
        if let Some(url) = &self.urls[index] {
            let start = piece * self.job.piece_size;
            let end = start + piece_length(self.job, piece) - 1;
            return RequestSpec { range: Some((start, end)), ..RequestSpec::new("GET", url) };
        }
        let host = match &self.job.sources[index] {
            SourceSpec::Http(url) => url.authority(),
            peer => peer.label(),
        };
        RequestSpec::to_host("GET", host, format!("/v1/content/{}/piece/{piece}", self.job.id))
    }

    /// Sends the request on the least-loaded connection to `source`, opening one if allowed.
    fn dispatch(&mut self, source: SourceId, piece: u64) {
        let now_ms = self.now_ms();
        self.stats[source.0 as usize].requests += 1;
        let chosen = self
            .conns
            .iter()
            .filter(|(_, c)| c.source == source && c.rx.http.can_send())
            .min_by_key(|(_, c)| c.rx.http.in_flight())
            .map(|(token, _)| *token);
        let open = self.conns.values().filter(|c| c.source == source).count();
        let token = match chosen {
            Some(token) => token,
            None if open < self.job.config.connections_per_source_max.max(1) as usize => match self.connect(source) {
                Ok(token) => token,
                Err(reason) => {
                    tracing::debug!(source = %self.stats[source.0 as usize].source, %reason, "connect failed");
                    self.stats[source.0 as usize].failures += 1;
                    self.scheduler.handle(Event::Failed { source, pieces: vec![piece] }, now_ms);
                    return;
                }
            },
            None => {
                self.scheduler.handle(Event::Lost { source, pieces: vec![piece] }, now_ms);
                return;
            }
        };
        let spec = self.request_spec(source, piece);
        let timeout = Duration::from_millis(self.job.config.request_timeout_ms);
        let conn = self.conns.get_mut(&token).expect("chosen connection exists");
        if conn.rx.http.in_flight() == 0 && conn.transport.is_connected() {
            conn.deadline = Instant::now() + timeout;
        }
        let end = match conn.rx.http.send_request(piece, &spec) {
            Err(error) => End::Failed(vec![piece], format!("request: {error}")),
            Ok(()) if conn.transport.is_connected() => flush(&mut self.client, conn),
            Ok(()) => End::Open,
        };
        self.settle_end(token, end);
    }

    fn connect(&mut self, source: SourceId) -> Result<ConnId, String> {
        let address = self.addresses[source.0 as usize].ok_or("address unknown")?;
        let tls = match &self.urls[source.0 as usize] {
            Some(url) if url.is_tls() => Some((self.job.tls.clone(), url.host())),
            _ => None,
        };
        let transport = Transport::connect(&mut self.client, address, tls)?;
        let limits = ClientLimits {
            head_bytes_max: self.job.config.response_head_bytes_max as usize,
            // A body longer than its piece is refused at its head; chunked ones are cut there too.
            body_bytes_max: self.job.piece_size.saturating_mul(2),
            pipeline_depth_max: self.job.config.pipeline_depth.max(1) as usize,
            ..ClientLimits::default()
        };
        let token = transport.id();
        let conn = Conn {
            source,
            generation: self.generations[source.0 as usize],
            transport,
            rx: PieceReceiver::new(limits),
            deadline: Instant::now() + Duration::from_millis(self.job.config.connect_timeout_ms),
        };
        self.conns.insert(token, conn);
        Ok(token)
    }

    /// Turns what the client loop reported into HTTP input and output.
    fn on_event(&mut self, event: io_client::Event) {
        let (token, end) = match event {
            io_client::Event::Connected { conn: token } => {
                let Some(conn) = self.conns.get_mut(&token) else { return };
                conn.transport.set_connected();
                conn.deadline = Instant::now() + Duration::from_millis(self.job.config.request_timeout_ms);
                (token, flush(&mut self.client, conn))
            }
            io_client::Event::Received { conn: token, bytes } => {
                let end = self.receive(token, Taken::Copy(&bytes));
                self.client.recycle(bytes);
                (token, end)
            }
            io_client::Event::Filled { conn: token, buffer, start, bytes } => {
                (token, self.receive(token, Taken::Lent { buffer, start, bytes }))
            }
            io_client::Event::Closed { conn: token, error } => {
                let Some(conn) = self.conns.get_mut(&token) else { return };
                conn.rx.http.handle_eof();
                let end = match (self.frame(token), error) {
                    (Some(end), _) => end,
                    (None, None) => End::Closed(Vec::new()),
                    (None, Some(error)) => End::Failed(Vec::new(), format!("connection: {error}")),
                };
                (token, end)
            }
            io_client::Event::Sent { .. } | io_client::Event::Timer { .. } | io_client::Event::Woken => return,
        };
        self.settle_end(token, end);
    }

    /// Takes in received bytes, framing responses as they come. Plain body bytes the framing
    /// allows are copied straight into the piece buffer, the rest goes through the HTTP input.
    fn receive(&mut self, token: ConnId, taken: Taken) -> End {
        let timeout = Duration::from_millis(self.job.config.request_timeout_ms);
        let Some(conn) = self.conns.get_mut(&token) else { return End::Open };
        conn.deadline = Instant::now() + timeout;
        if let (true, Taken::Copy(bytes)) = (conn.transport.is_tls(), &taken) {
            let ended = match conn.transport.receive_tls(&mut self.client, &mut conn.rx.http, bytes) {
                Ok(ended) => ended,
                Err(reason) => return End::Failed(Vec::new(), reason),
            };
            if ended {
                conn.rx.http.handle_eof();
            }
            let end = self.frame(token);
            return end.unwrap_or(if ended { End::Closed(Vec::new()) } else { End::Open });
        }
        let expect = expect_of(self.job, conn.source);
        let mut landed = Vec::new();
        let end = conn.rx.take_in(taken, &expect, &mut self.pool, &mut landed);
        if conn.rx.mid_body() {
            // A body that has begun should keep coming: a source that stops mid-piece is hung.
            let stall = Duration::from_millis(self.job.config.stall_timeout_ms).min(timeout);
            conn.deadline = Instant::now() + stall;
        }
        keep_landed(&mut self.landed, conn, landed);
        end
    }

    /// Frames what the connection's HTTP state has; `Some` when the connection ends.
    fn frame(&mut self, token: ConnId) -> Option<End> {
        let conn = self.conns.get_mut(&token)?;
        let expect = expect_of(self.job, conn.source);
        let mut landed = Vec::new();
        let end = conn.rx.frame(&expect, &mut self.pool, &mut landed);
        keep_landed(&mut self.landed, conn, landed);
        end
    }

    /// Removes a connection that ended and tells the scheduler about its unanswered requests.
    fn settle_end(&mut self, token: ConnId, end: End) {
        let now_ms = self.now_ms();
        let Some((mut pieces, reason)) = end.ended() else { return };
        let Some(mut conn) = self.conns.remove(&token) else { return };
        // A no-op when the loop reported the close itself.
        self.client.close(token);
        pieces.extend(conn.rx.abandon(&mut self.pool));
        let source = conn.source;
        match reason {
            None => {
                if !pieces.is_empty() {
                    self.scheduler.handle(Event::Lost { source, pieces }, now_ms);
                }
            }
            Some(reason) => {
                tracing::debug!(source = %self.stats[source.0 as usize].source, %reason, "connection failed");
                self.stats[source.0 as usize].failures += 1;
                self.scheduler.handle(Event::Failed { source, pieces }, now_ms);
            }
        }
    }

    /// The connections to `source`.
    fn tokens_of(&self, source: SourceId) -> Vec<ConnId> {
        self.conns.iter().filter(|(_, c)| c.source == source).map(|(token, _)| *token).collect()
    }

    fn close_source(&mut self, source: SourceId) {
        for token in self.tokens_of(source) {
            self.conns.remove(&token);
            self.client.close(token);
        }
    }

    /// Closes connections whose request or connect deadline passed.
    fn expire(&mut self) {
        let now = Instant::now();
        let now_ms = self.now_ms();
        let expired: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| (c.rx.http.in_flight() > 0 || !c.transport.is_connected()) && now >= c.deadline)
            .map(|(token, _)| *token)
            .collect();
        for token in expired {
            let mut conn = self.conns.remove(&token).expect("listed just now");
            self.client.close(token);
            let source = conn.source;
            let pieces = conn.rx.abandon(&mut self.pool);
            let stats = &mut self.stats[source.0 as usize];
            stats.timeouts += 1;
            tracing::debug!(source = %stats.source, connected = conn.transport.is_connected(), "request timed out");
            self.scheduler.handle(Event::TimedOut { source, pieces }, now_ms);
        }
    }
    /// Hands landed pieces to the verifier threads, reports the other outcomes to the scheduler,
    /// and takes in the verdicts that are ready.
    fn verify(&mut self, output: &mut Output) -> Result<(), OutputError> {
        let now_ms = self.now_ms();
        for Landed { source, generation, piece, response } in std::mem::take(&mut self.landed) {
            let event = match response {
                Response::Bytes { buffer, length } => {
                    let expected = match self.job.hashes.map(|hashes| hashes.digest(piece)) {
                        Some(Some(digest)) => Some(*digest),
                        Some(None) => {
                            self.pool.give(buffer);
                            let event = self.bad(source, piece);
                            self.scheduler.handle(event, now_ms);
                            continue;
                        }
                        None => None,
                    };
                    // Bounded: waits only while `verify_queue_pieces` pieces are out, for one of them.
                    while !self.verifier.has_room() {
                        let checked = self.verifier.wait().expect("a full verifier has pieces out");
                        self.settle(checked, output)?;
                    }
                    let offset = piece * self.job.piece_size;
                    let write = !self.scheduler.is_verified(piece);
                    self.verifier.submit(Check {
                        tag: FilePiece { source, piece, offset },
                        buffer,
                        length,
                        expected,
                        write,
                    });
                    continue;
                }
                Response::Bad => self.bad(source, piece),
                Response::Missing => Event::Missing { source, piece },
                Response::Failed => {
                    self.stats[source.0 as usize].failures += 1;
                    Event::Failed { source, pieces: vec![piece] }
                }
                Response::Redirect(head) => self.redirect(source, piece, &head, generation),
            };
            self.scheduler.handle(event, now_ms);
        }
        while let Some(checked) = self.verifier.try_result() {
            self.settle(checked, output)?;
        }
        Ok(())
    }

    /// A verdict: a good piece (written by the verifier) is recorded, a bad one counted against
    /// its source.
    fn settle(&mut self, checked: Checked<FilePiece, OutputError>, output: &mut Output) -> Result<(), OutputError> {
        let Checked { tag: FilePiece { source, piece, .. }, good, error, buffer } = checked;
        self.pool.give(buffer);
        if let Some(error) = error {
            return Err(error);
        }
        let event = if good {
            if !self.scheduler.is_verified(piece) {
                output.mark_written(piece)?;
                let length = piece_length(self.job, piece);
                self.bytes_done += length;
                let now_ms = self.now_ms();
                let stats = &mut self.stats[source.0 as usize];
                stats.bytes += length;
                stats.pieces += 1;
                stats.first_piece_ms.get_or_insert(now_ms);
                stats.last_piece_ms = Some(now_ms);
            }
            Event::Verified { source, piece }
        } else {
            self.bad(source, piece)
        };
        let now_ms = self.now_ms();
        self.scheduler.handle(event, now_ms);
        Ok(())
    }

    /// An HTTP source redirected a range request: its later requests go to the new URL (curl
    /// `-L` rules, at most `REDIRECTS_MAX` hops per source) and the piece is asked again there.
    fn redirect(&mut self, source: SourceId, piece: u64, head: &ReceivedHead, generation: u32) -> Event {
        let index = source.0 as usize;
        if generation != self.generations[index] {
            // Asked of an older URL before the source moved: ask again at the new one.
            return Event::Lost { source, pieces: vec![piece] };
        }
        let url = self.urls[index].as_ref().expect("only HTTP sources redirect");
        let next = match next_hop(url, "GET", head, self.hops[index]) {
            Ok(Some((_, next))) => next,
            Ok(None) => return Event::Failed { source, pieces: vec![piece] },
            Err(error) => {
                tracing::warn!(source = %self.stats[index].source, %error, "redirect not followed");
                self.stats[index].failures += 1;
                return Event::Failed { source, pieces: vec![piece] };
            }
        };
        tracing::info!(source = %self.stats[index].source, to = %next, status = head.status, "source redirected");
        self.hops[index] += 1;
        self.generations[index] += 1;
        self.addresses[index] =
            next.resolve().map_err(|error| tracing::warn!(source = %next, %error, "redirect target unusable")).ok();
        self.urls[index] = Some(next);
        // Connections to the old URL are closed; what they still had in flight is asked again.
        for token in self.tokens_of(source) {
            self.settle_end(token, End::Closed(Vec::new()));
        }
        Event::Lost { source, pieces: vec![piece] }
    }

    fn bad(&mut self, source: SourceId, piece: u64) -> Event {
        let stats = &mut self.stats[source.0 as usize];
        stats.bad_pieces += 1;
        tracing::warn!(source = %stats.source, piece, "bad piece discarded");
        Event::Bad { source, piece }
    }
}

/// Where each piece asked of `source` starts and how long it is.
fn expect_of<'a>(job: &'a Job<'a>, source: SourceId) -> impl Fn(&u64) -> Expect + 'a {
    let ranged = matches!(job.sources[source.0 as usize], SourceSpec::Http(_));
    move |piece: &u64| {
        let start = piece * job.piece_size;
        Expect { start, length: piece_length(job, *piece), ranged }
    }
}

/// Files the responses `conn` finished under its source.
fn keep_landed(out: &mut Vec<Landed>, conn: &Conn, landed: Vec<(u64, Response)>) {
    let (source, generation) = (conn.source, conn.generation);
    out.extend(landed.into_iter().map(|(piece, response)| Landed { source, generation, piece, response }));
}

/// Queues what the HTTP connection has to send; `Open` unless that failed.
fn flush(client: &mut ClientLoop, conn: &mut Conn) -> End {
    match conn.transport.send(client, &mut conn.rx.http) {
        Ok(()) => End::Open,
        Err(reason) => End::Failed(Vec::new(), reason),
    }
}
