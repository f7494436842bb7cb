//! The I/O driver: one mio poll loop, non-blocking sockets, per-connection state, timers.
//!
//! Thin by design: the [`Scheduler`] decides what to ask whom, the [`ResponseReader`] frames
//! responses, the [`Verifier`] threads hash and write pieces; this file only moves bytes and turns
//! what happened on sockets and in the verifier into scheduler events. Bodies are received
//! straight into reused piece buffers, which travel to a verifier thread and back. It is written on mio now; the design wants it on the data
//! plane's per-core event-loop layer (io_uring with a mio fallback), which lives on another
//! branch: nothing here but this file touches a socket, so it moves as one piece.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

use crate::config::DownloadConfig;
use crate::content::{ContentId, HashFile};
use crate::download::ban::BanLimits;
use crate::download::output::{Output, OutputError};
use crate::download::scheduler::{Action, Event, Exhaustion, Scheduler, SchedulerLimits, SourceId, SourceKind};
use crate::download::url::HttpUrl;
use crate::download::verify::{Check, Checked, Verifier};
use crate::http::response_reader::{ResponseLimits, ResponseReader, Step};

/// Bytes read from a socket at a time.
const READ_CHUNK_BYTES: usize = 256 * 1024;
/// Longest sleep in `poll`, so timers are checked at least this often.
const POLL_INTERVAL_MS: u64 = 50;
/// The token of the waker the verifier threads use; connections use the tokens below it.
const WAKE_TOKEN: Token = Token(usize::MAX);

/// A source to download from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// A peer speaking the piece API.
    Peer(SocketAddr),
    /// An HTTP(S) URL of the whole content, asked for byte ranges.
    Http(HttpUrl),
}

impl SourceSpec {
    /// How the source is named in logs and summaries.
    pub fn label(&self) -> String {
        match self {
            SourceSpec::Peer(address) => address.to_string(),
            SourceSpec::Http(url) => url.text.clone(),
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

/// A response body being received for the piece at the head of a connection's queue.
struct Body {
    piece: u64,
    status: u16,
    /// A piece buffer (empty for a status whose body is not kept); `filled` bytes are received.
    buffer: Vec<u8>,
    filled: usize,
    /// The piece's length: bytes past it are not kept.
    expected: usize,
    overflow: bool,
}

/// Piece-sized buffers, reused so that receiving a piece neither allocates nor faults pages in.
struct BufferPool {
    free: Vec<Vec<u8>>,
    buffer_bytes: usize,
    kept_max: usize,
}

impl BufferPool {
    fn take(&mut self) -> Vec<u8> {
        self.free.pop().unwrap_or_else(|| vec![0; self.buffer_bytes])
    }

    fn give(&mut self, buffer: Vec<u8>) {
        if self.free.len() < self.kept_max && buffer.len() == self.buffer_bytes {
            self.free.push(buffer);
        }
    }
}

/// What a finished response means.
enum Landed {
    Bytes { source: SourceId, piece: u64, buffer: Vec<u8>, length: usize },
    Bad { source: SourceId, piece: u64 },
    Missing { source: SourceId, piece: u64 },
    Failed { source: SourceId, piece: u64 },
}

struct Conn {
    source: SourceId,
    stream: TcpStream,
    tls: Option<Box<ClientConnection>>,
    connected: bool,
    out: Vec<u8>,
    out_at: usize,
    input: Vec<u8>,
    reader: ResponseReader,
    pending: VecDeque<u64>,
    body: Option<Body>,
    deadline: Instant,
    server_closes: bool,
}

/// Why a connection ends.
enum End {
    /// Still open.
    Open,
    /// Closed by the server as HTTP allows; unanswered requests are lost without blame.
    Closed,
    /// Broken (reset, truncated, unparseable): unanswered requests failed.
    Failed(String),
}

struct Driver<'a> {
    job: &'a Job<'a>,
    poll: Poll,
    scheduler: Scheduler,
    conns: Vec<Option<Conn>>,
    addresses: Vec<Option<SocketAddr>>,
    stats: Vec<SourceStats>,
    landed: Vec<Landed>,
    scratch: Vec<u8>,
    pool: BufferPool,
    verifier: Verifier,
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
    let poll = Poll::new().map_err(|source| OutputError::Io { path: "mio poll".into(), source })?;
    let waker = Waker::new(poll.registry(), WAKE_TOKEN)
        .map_err(|source| OutputError::Io { path: "mio waker".into(), source })?;
    let verifier = Verifier::start(config.verify_threads, config.verify_queue_pieces, output.writer(), Arc::new(waker))
        .map_err(|source| OutputError::Io { path: "verifier threads".into(), source })?;
    let mut driver = Driver {
        job,
        poll,
        scheduler,
        conns: Vec::new(),
        addresses: Vec::new(),
        stats: Vec::new(),
        landed: Vec::new(),
        scratch: vec![0; READ_CHUNK_BYTES],
        pool: BufferPool {
            free: Vec::new(),
            buffer_bytes: job.piece_size.min(job.content_length).max(1) as usize,
            kept_max: config.piece_buffers_max as usize,
        },
        verifier,
        start: Instant::now(),
        bytes_done,
    };
    for spec in &job.sources {
        let kind = match spec {
            SourceSpec::Peer(_) => SourceKind::Peer,
            SourceSpec::Http(_) => SourceKind::Http,
        };
        let Some(_id) = driver.scheduler.add_source(kind, &spec.label()) else {
            tracing::warn!(source = %spec.label(), "source ignored: sources_max reached");
            continue;
        };
        let address = match spec {
            SourceSpec::Peer(address) => Some(*address),
            SourceSpec::Http(url) => {
                url.resolve().map_err(|error| tracing::warn!(source = %url.text, %error, "source unusable")).ok()
            }
        };
        driver.addresses.push(address);
        driver.stats.push(SourceStats {
            source: spec.label(),
            kind: if kind == SourceKind::Peer { "peer" } else { "http" },
            ..SourceStats::default()
        });
    }
    let outcome = driver.run_loop(output, observe)?;
    Ok(DriverReport { outcome, sources: driver.stats })
}

fn piece_length(job: &Job, piece: u64) -> u64 {
    let start = piece * job.piece_size;
    job.piece_size.min(job.content_length.saturating_sub(start))
}

impl Driver<'_> {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn run_loop(&mut self, output: &mut Output, observe: &mut dyn FnMut(&Progress)) -> Result<Outcome, OutputError> {
        let mut events = Events::with_capacity(256);
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
                        tracing::warn!(source = %stats.source, failures = stats.failures, "source dropped");
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
            if let Err(error) = self.poll.poll(&mut events, Some(timeout)) {
                if error.kind() != ErrorKind::Interrupted {
                    return Err(OutputError::Io { path: "mio poll".into(), source: error });
                }
            }
            for event in events.iter() {
                if event.token() != WAKE_TOKEN {
                    self.on_event(event.token().0, event.is_writable() || event.is_error());
                }
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
            if stats.kind != "peer" {
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
            .iter()
            .flatten()
            .filter(|c| !c.pending.is_empty() || !c.connected)
            .map(|c| c.deadline.saturating_duration_since(now))
            .min()
            .unwrap_or(Duration::MAX);
        soonest.min(Duration::from_millis(POLL_INTERVAL_MS))
    }

    fn request_bytes(&self, source: SourceId, piece: u64) -> Vec<u8> {
        match &self.job.sources[source.0 as usize] {
            SourceSpec::Peer(address) => {
                format!("GET /v1/content/{}/piece/{piece} HTTP/1.1\r\nHost: {address}\r\n\r\n", self.job.id)
                    .into_bytes()
            }
            SourceSpec::Http(url) => {
                let start = piece * self.job.piece_size;
                let end = start + piece_length(self.job, piece) - 1;
                format!(
                    "GET {} HTTP/1.1\r\nHost: {}\r\nRange: bytes={start}-{end}\r\nUser-Agent: tessera/{}\r\n\r\n",
                    url.path,
                    url.authority,
                    env!("CARGO_PKG_VERSION")
                )
                .into_bytes()
            }
        }
    }

    /// Sends the request on the least-loaded connection to `source`, opening one if allowed.
    fn dispatch(&mut self, source: SourceId, piece: u64) {
        let depth = self.job.config.pipeline_depth.max(1) as usize;
        let now_ms = self.now_ms();
        self.stats[source.0 as usize].requests += 1;
        let chosen = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(token, c)| c.as_ref().map(|c| (token, c)))
            .filter(|(_, c)| c.source == source && !c.server_closes && c.pending.len() < depth)
            .min_by_key(|(_, c)| c.pending.len())
            .map(|(token, _)| token);
        let open = self.conns.iter().flatten().filter(|c| c.source == source).count();
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
        let request = self.request_bytes(source, piece);
        let timeout = Duration::from_millis(self.job.config.request_timeout_ms);
        let conn = self.conns[token].as_mut().expect("chosen connection exists");
        if conn.pending.is_empty() && conn.connected {
            conn.deadline = Instant::now() + timeout;
        }
        conn.pending.push_back(piece);
        let queued = match &mut conn.tls {
            Some(tls) => tls.writer().write_all(&request),
            None => {
                conn.out.extend_from_slice(&request);
                Ok(())
            }
        };
        let end = match queued {
            Err(error) => End::Failed(format!("TLS write: {error}")),
            Ok(()) if conn.connected => flush(conn),
            Ok(()) => End::Open,
        };
        self.settle_end(token, end);
    }

    fn connect(&mut self, source: SourceId) -> Result<usize, String> {
        let address = self.addresses[source.0 as usize].ok_or("address unknown")?;
        let mut stream = TcpStream::connect(address).map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let tls = match &self.job.sources[source.0 as usize] {
            SourceSpec::Http(url) if url.tls => {
                let name = ServerName::try_from(url.host.clone()).map_err(|e| e.to_string())?;
                Some(Box::new(ClientConnection::new(self.job.tls.clone(), name).map_err(|e| e.to_string())?))
            }
            _ => None,
        };
        let token = self.conns.iter().position(Option::is_none).unwrap_or(self.conns.len());
        self.poll
            .registry()
            .register(&mut stream, Token(token), Interest::READABLE | Interest::WRITABLE)
            .map_err(|e| e.to_string())?;
        let limits = ResponseLimits {
            head_bytes_max: self.job.config.response_head_bytes_max as usize,
            ..ResponseLimits::default()
        };
        let conn = Conn {
            source,
            stream,
            tls,
            connected: false,
            out: Vec::new(),
            out_at: 0,
            input: Vec::new(),
            reader: ResponseReader::new(limits),
            pending: VecDeque::new(),
            body: None,
            deadline: Instant::now() + Duration::from_millis(self.job.config.connect_timeout_ms),
            server_closes: false,
        };
        if token == self.conns.len() {
            self.conns.push(Some(conn));
        } else {
            self.conns[token] = Some(conn);
        }
        Ok(token)
    }

    fn on_event(&mut self, token: usize, writable: bool) {
        let Some(conn) = self.conns.get_mut(token).and_then(Option::as_mut) else { return };
        if !conn.connected {
            if !writable {
                return;
            }
            if let Ok(Some(error)) | Err(error) = conn.stream.take_error() {
                self.settle_end(token, End::Failed(format!("connect: {error}")));
                return;
            }
            match conn.stream.peer_addr() {
                Ok(_) => {
                    conn.connected = true;
                    conn.deadline = Instant::now() + Duration::from_millis(self.job.config.request_timeout_ms);
                }
                Err(error) if error.kind() == ErrorKind::NotConnected => return,
                Err(error) => {
                    self.settle_end(token, End::Failed(format!("connect: {error}")));
                    return;
                }
            }
        }
        let end = flush(conn);
        if !matches!(end, End::Open) {
            self.settle_end(token, end);
            return;
        }
        let end = self.read(token);
        self.settle_end(token, end);
    }

    /// Reads everything available (edge-triggered readiness), framing responses as they come.
    fn read(&mut self, token: usize) -> End {
        let timeout = Duration::from_millis(self.job.config.request_timeout_ms);
        let content_length = self.job.content_length;
        let piece_size = self.job.piece_size;
        let conn = self.conns[token].as_mut().expect("live connection");
        let is_http = matches!(self.job.sources[conn.source.0 as usize], SourceSpec::Http(_));
        let expect = |piece: u64| {
            let start = piece * piece_size;
            (start, piece_size.min(content_length.saturating_sub(start)))
        };
        // Bounded by the socket: each pass consumes bytes the kernel had, until WouldBlock or EOF.
        loop {
            let read = match &mut conn.tls {
                None => match read_plain(conn, &mut self.scratch) {
                    Ok(0) => None,
                    Ok(count) => Some(count),
                    Err(error) if error.kind() == ErrorKind::WouldBlock => return End::Open,
                    Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                    Err(error) => return End::Failed(format!("read: {error}")),
                },
                Some(tls) => match tls.read_tls(&mut conn.stream) {
                    Ok(0) => None,
                    Ok(_) => {
                        if let Err(error) = tls.process_new_packets() {
                            return End::Failed(format!("TLS: {error}"));
                        }
                        let mut closed = false;
                        loop {
                            match tls.reader().read(&mut self.scratch) {
                                Ok(0) => {
                                    closed = true;
                                    break;
                                }
                                Ok(count) => conn.input.extend_from_slice(&self.scratch[..count]),
                                Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                                Err(error) if error.kind() == ErrorKind::UnexpectedEof => {
                                    closed = true;
                                    break;
                                }
                                Err(error) => return End::Failed(format!("TLS read: {error}")),
                            }
                        }
                        if let End::Failed(reason) = flush_tls(conn) {
                            return End::Failed(reason);
                        }
                        if closed {
                            None
                        } else {
                            Some(1)
                        }
                    }
                    Err(error) if error.kind() == ErrorKind::WouldBlock => return End::Open,
                    Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                    Err(error) => return End::Failed(format!("read: {error}")),
                },
            };
            if read.is_some() {
                conn.deadline = Instant::now() + timeout;
            }
            match frame(conn, is_http, &expect, &mut self.landed, &mut self.pool) {
                Ok(false) => {}
                Ok(true) => return End::Closed,
                Err(reason) => return End::Failed(reason),
            }
            if read.is_none() {
                return match conn.reader.eof() {
                    Ok(_) => {
                        if let Some(body) = conn.body.take() {
                            conn.pending.pop_front();
                            self.landed.push(land(conn.source, body, &expect, &mut self.pool));
                        }
                        End::Closed
                    }
                    Err(_) if conn.pending.is_empty() || conn.server_closes => End::Closed,
                    Err(error) => End::Failed(error.to_string()),
                };
            }
            if conn.server_closes && conn.pending.is_empty() {
                return End::Closed;
            }
        }
    }

    /// Removes a connection that ended and tells the scheduler about its unanswered requests.
    fn settle_end(&mut self, token: usize, end: End) {
        let now_ms = self.now_ms();
        let reason = match end {
            End::Open => return,
            End::Closed => None,
            End::Failed(reason) => Some(reason),
        };
        let Some(mut conn) = self.conns[token].take() else { return };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        let pieces: Vec<u64> = conn.pending.drain(..).collect();
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

    fn close_source(&mut self, source: SourceId) {
        for slot in self.conns.iter_mut() {
            if slot.as_ref().is_some_and(|c| c.source == source) {
                let mut conn = slot.take().expect("checked");
                let _ = self.poll.registry().deregister(&mut conn.stream);
            }
        }
    }

    /// Closes connections whose request or connect deadline passed.
    fn expire(&mut self) {
        let now = Instant::now();
        let now_ms = self.now_ms();
        for token in 0..self.conns.len() {
            let expired = self.conns[token]
                .as_ref()
                .is_some_and(|c| (!c.pending.is_empty() || !c.connected) && now >= c.deadline);
            if !expired {
                continue;
            }
            let mut conn = self.conns[token].take().expect("checked");
            let _ = self.poll.registry().deregister(&mut conn.stream);
            let source = conn.source;
            let pieces: Vec<u64> = conn.pending.drain(..).collect();
            let stats = &mut self.stats[source.0 as usize];
            stats.timeouts += 1;
            tracing::debug!(source = %stats.source, connected = conn.connected, "request timed out");
            self.scheduler.handle(Event::TimedOut { source, pieces }, now_ms);
        }
    }

    /// Hands landed pieces to the verifier threads, reports the other outcomes to the scheduler,
    /// and takes in the verdicts that are ready.
    fn verify(&mut self, output: &mut Output) -> Result<(), OutputError> {
        let now_ms = self.now_ms();
        for item in std::mem::take(&mut self.landed) {
            let event = match item {
                Landed::Bytes { source, piece, buffer, length } => {
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
                    self.verifier.submit(Check { source, piece, offset, buffer, length, expected, write });
                    continue;
                }
                Landed::Bad { source, piece } => self.bad(source, piece),
                Landed::Missing { source, piece } => Event::Missing { source, piece },
                Landed::Failed { source, piece } => {
                    self.stats[source.0 as usize].failures += 1;
                    Event::Failed { source, pieces: vec![piece] }
                }
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
    fn settle(&mut self, checked: Checked, output: &mut Output) -> Result<(), OutputError> {
        let Checked { source, piece, good, error, buffer } = checked;
        self.pool.give(buffer);
        if let Some(error) = error {
            return Err(error);
        }
        let event = if good {
            if !self.scheduler.is_verified(piece) {
                output.mark_written(piece)?;
                let length = piece_length(self.job, piece);
                self.bytes_done += length;
                let stats = &mut self.stats[source.0 as usize];
                stats.bytes += length;
                stats.pieces += 1;
            }
            Event::Verified { source, piece }
        } else {
            self.bad(source, piece)
        };
        let now_ms = self.now_ms();
        self.scheduler.handle(event, now_ms);
        Ok(())
    }

    fn bad(&mut self, source: SourceId, piece: u64) -> Event {
        let stats = &mut self.stats[source.0 as usize];
        stats.bad_pieces += 1;
        tracing::warn!(source = %stats.source, piece, "bad piece discarded");
        Event::Bad { source, piece }
    }
}

/// Frames responses out of `conn.input`, appending finished ones to `landed`; `Ok(true)` when
/// the connection must be closed now (a body too long to read).
fn frame(
    conn: &mut Conn,
    is_http: bool,
    expect: &dyn Fn(u64) -> (u64, u64),
    landed: &mut Vec<Landed>,
    pool: &mut BufferPool,
) -> Result<bool, String> {
    let mut at = 0;
    // Bounded: each step consumes input or completes a response; NeedMore ends it.
    loop {
        match conn.reader.step(&conn.input[at..], false).map_err(|e| e.to_string())? {
            Step::NeedMore => break,
            Step::Head { head, consumed } => {
                at += consumed;
                let piece = *conn.pending.front().ok_or("a response nobody asked for")?;
                let (start, length) = expect(piece);
                if !head.keep_alive {
                    conn.server_closes = true;
                }
                if matches!(head.status, 200 | 206) {
                    if head.content_length.is_some_and(|n| n > length) {
                        // Longer than the piece: a liar or a server ignoring Range; do not read it.
                        conn.pending.pop_front();
                        if is_http && head.status == 200 {
                            landed.push(Landed::Failed { source: conn.source, piece });
                        } else {
                            landed.push(Landed::Bad { source: conn.source, piece });
                        }
                        conn.input.clear();
                        return Ok(true);
                    }
                    let range_ok = match head.content_range {
                        Some((first, last, _)) => first == start && last + 1 == start + length,
                        None => head.status == 200 && (!is_http || start == 0),
                    };
                    let status = if range_ok { head.status } else { 0 };
                    let buffer = if status == 0 { Vec::new() } else { pool.take() };
                    conn.body =
                        Some(Body { piece, status, buffer, filled: 0, expected: length as usize, overflow: false });
                } else {
                    let status = head.status;
                    conn.body =
                        Some(Body { piece, status, buffer: Vec::new(), filled: 0, expected: 0, overflow: false });
                }
            }
            Step::Body { length } => {
                let body = conn.body.as_mut().ok_or("body without head")?;
                let kept = matches!(body.status, 200 | 206);
                let keep = if kept { body.expected.saturating_sub(body.filled).min(length) } else { 0 };
                body.buffer[body.filled..body.filled + keep].copy_from_slice(&conn.input[at..at + keep]);
                body.filled += keep;
                body.overflow |= kept && keep < length;
                at += length;
            }
            Step::Complete => {
                let body = conn.body.take().ok_or("completion without head")?;
                conn.pending.pop_front();
                landed.push(land(conn.source, body, expect, pool));
            }
        }
    }
    conn.input.drain(..at);
    Ok(false)
}

fn land(source: SourceId, body: Body, expect: &dyn Fn(u64) -> (u64, u64), pool: &mut BufferPool) -> Landed {
    let piece = body.piece;
    let (_, expected) = expect(piece);
    let landed = match body.status {
        200 | 206 if !body.overflow && body.filled as u64 == expected => {
            return Landed::Bytes { source, piece, buffer: body.buffer, length: body.filled };
        }
        // Wrong length, wrong range or wrong Content-Range: the source answered with wrong bytes.
        0 | 200 | 206 => Landed::Bad { source, piece },
        404 | 410 | 416 => Landed::Missing { source, piece },
        _ => Landed::Failed { source, piece },
    };
    pool.give(body.buffer);
    landed
}

/// Reads from a plain connection: straight into the piece buffer while a body is being received
/// and nothing else is buffered (the bulk of the bytes), else into `input` (heads, the start of a
/// body read with its head, bodies that are not kept).
fn read_plain(conn: &mut Conn, scratch: &mut [u8]) -> std::io::Result<usize> {
    if conn.input.is_empty() {
        if let (Some(body), Some(remaining)) = (conn.body.as_mut(), conn.reader.body_remaining()) {
            let room = body.expected.saturating_sub(body.filled);
            if matches!(body.status, 200 | 206) && remaining > 0 && remaining <= room as u64 {
                let span = body.filled..body.filled + remaining as usize;
                let count = conn.stream.read(&mut body.buffer[span])?;
                if count > 0 {
                    let received = &body.buffer[body.filled..body.filled + count];
                    if conn.reader.step(received, false) != Ok(Step::Body { length: count }) {
                        return Err(std::io::Error::other("response framing lost track of the body"));
                    }
                    body.filled += count;
                }
                return Ok(count);
            }
        }
    }
    let count = conn.stream.read(scratch)?;
    conn.input.extend_from_slice(&scratch[..count]);
    Ok(count)
}

/// Writes what is queued; `Open` when done or the socket is full.
fn flush(conn: &mut Conn) -> End {
    if conn.tls.is_some() {
        return flush_tls(conn);
    }
    while conn.out_at < conn.out.len() {
        match conn.stream.write(&conn.out[conn.out_at..]) {
            Ok(0) => return End::Failed("write returned 0".into()),
            Ok(count) => conn.out_at += count,
            Err(error) if error.kind() == ErrorKind::WouldBlock => return End::Open,
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return End::Failed(format!("write: {error}")),
        }
    }
    conn.out.clear();
    conn.out_at = 0;
    End::Open
}

fn flush_tls(conn: &mut Conn) -> End {
    let Some(tls) = conn.tls.as_mut() else { return End::Open };
    while tls.wants_write() {
        match tls.write_tls(&mut conn.stream) {
            Ok(0) => return End::Failed("write returned 0".into()),
            Ok(_) => {}
            Err(error) if error.kind() == ErrorKind::WouldBlock => return End::Open,
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return End::Failed(format!("TLS write: {error}")),
        }
    }
    End::Open
}
