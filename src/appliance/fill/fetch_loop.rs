//! The fill's piece fetches on the ring layer's client loop (`io::client::ClientLoop`: io_uring,
//! or epoll): persistent keep-alive connections per source, at most `connections_per_source_max`,
//! each with up to `pipeline_depth` requests pipelined. Parents and peers are asked through the
//! piece API, origin URLs by `Range:`. A connection's one timer is its connect timeout, then its
//! request timeout (reset whenever bytes arrive; the shorter stall timeout while a response body
//! is under way, so a source that hangs mid-piece is left quickly); an idle connection whose
//! timer fires is closed.
//! A connection that closes, breaks or times out fails the fetches it still carried, and the next
//! fetch for that source opens a new one.
//!
//! Responses are framed into piece buffers by the same code as `get`'s
//! (`download::piece_response`); the bytes go on to the verifier unhashed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use crate::config::BackendChoice;
use crate::download::piece_response::{BufferPool, End, Expect, PieceReceiver, Response, Taken};
use crate::download::transport::Transport;
use crate::fill::{Fetch, FetchFailure, FetchId, SourceId, SourceKind};
use crate::http::client::{ClientLimits, RequestSpec};
use crate::http::url::HttpUrl;
use crate::io::client::{self as io_client, ClientError, ClientLoop, ConnId, Waker};

/// Bytes received from a connection at a time.
const RECV_BUFFER_BYTES: usize = 256 * 1024;
/// Client connections open at once at most (sources × connections per source stay far below).
const CONNECTIONS_MAX: usize = 1024;
/// Piece buffers kept for reuse.
const PIECE_BUFFERS_KEPT_MAX: usize = 64;
/// Buffers of this size are pooled (the default piece size); others are allocated to measure.
const POOLED_PIECE_BYTES: usize = 1 << 20;

/// How the fill's connections are bounded (from `[upstream]`).
#[derive(Debug, Clone, Copy)]
pub struct FetchLimits {
    pub connections_per_source_max: u32,
    pub pipeline_depth: u32,
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
    pub stall_timeout_ms: u64,
}

/// How a fetch ended on the wire.
pub enum FetchOutcome {
    /// The piece's bytes are in: the first `length` of `buffer`, not verified yet.
    Received { fetch: Fetch, buffer: Vec<u8>, length: usize },
    /// The source answered other bytes than asked for (wrong length, range or Content-Range).
    Bad { fetch: Fetch },
    /// No bytes: refused, missing, closed, broken or timed out.
    Failed { fetch: FetchId, failure: FetchFailure },
}

/// Where a source is reached and how it is asked.
#[derive(Clone)]
struct Target {
    address: SocketAddr,
    /// An origin URL (asked by Range); `None` for the piece API of a parent or peer.
    url: Option<HttpUrl>,
    /// `HOST:PORT` for the piece API's `Host:`.
    host: String,
}

/// A fetch on the wire.
struct Asked {
    fetch: Fetch,
    expect: Expect,
    /// The engine dropped it: its answer is read and thrown away.
    cancelled: bool,
}

struct Conn {
    source: SourceId,
    transport: Transport,
    rx: PieceReceiver<FetchId>,
}

/// The fill's client connections and the fetches on them.
pub struct Fetches {
    client: ClientLoop,
    limits: FetchLimits,
    conns: BTreeMap<ConnId, Conn>,
    asked: HashMap<FetchId, Asked>,
    targets: HashMap<SourceId, Target>,
    pool: BufferPool,
    outcomes: VecDeque<FetchOutcome>,
    events: Vec<io_client::Event>,
}

impl Fetches {
    /// A client loop on `backend` for connections under `limits`.
    pub fn new(backend: BackendChoice, limits: FetchLimits) -> Result<Fetches, ClientError> {
        let config = io_client::ClientConfig {
            connections_max: CONNECTIONS_MAX,
            recv_buffer_bytes: RECV_BUFFER_BYTES,
            ..io_client::ClientConfig::default()
        };
        Ok(Fetches {
            client: ClientLoop::new(backend, config)?,
            limits,
            conns: BTreeMap::new(),
            asked: HashMap::new(),
            targets: HashMap::new(),
            pool: BufferPool::new(POOLED_PIECE_BYTES, PIECE_BUFFERS_KEPT_MAX),
            outcomes: VecDeque::new(),
            events: Vec::new(),
        })
    }

    /// Wakes [`Fetches::poll`] from another thread.
    pub fn waker(&self) -> Waker {
        self.client.waker()
    }

    /// Asks source `name` for the fetch's piece: on an open connection to it with room in its
    /// pipeline (the least loaded), else on a new one.
    pub fn start(&mut self, kind: SourceKind, name: &str, fetch: Fetch) {
        let target = match self.target(kind, name, fetch.source) {
            Ok(target) => target,
            Err(reason) => return self.fail_now(fetch.fetch, name, &reason),
        };
        let conn = match self.connection_for(fetch.source, &target) {
            Ok(conn) => conn,
            Err(reason) => return self.fail_now(fetch.fetch, name, &reason),
        };
        let spec = match &target.url {
            Some(url) => {
                let last = fetch.offset_bytes + u64::from(fetch.length_bytes).max(1) - 1;
                RequestSpec { range: Some((fetch.offset_bytes, last)), ..RequestSpec::new("GET", url) }
            }
            None => {
                let path = format!("/v1/content/{}/piece/{}", fetch.content.id, fetch.piece);
                RequestSpec::to_host("GET", target.host.clone(), path)
            }
        };
        let expect =
            Expect { start: fetch.offset_bytes, length: u64::from(fetch.length_bytes), ranged: target.url.is_some() };
        let id = fetch.fetch;
        let state = self.conns.get_mut(&conn).expect("connection just chosen");
        let idle = state.rx.http.in_flight() == 0 && state.transport.is_connected();
        if let Err(error) = state.rx.http.send_request(id, &spec) {
            return self.fail_now(id, name, &format!("request: {error}"));
        }
        self.asked.insert(id, Asked { fetch, expect, cancelled: false });
        if idle {
            // The request timeout runs from the first request on an idle connection.
            let _ = self.client.set_timer(conn, Duration::from_millis(self.limits.request_timeout_ms));
        }
        if state.transport.is_connected() {
            let end = flush(&mut self.client, state);
            self.settle(conn, end, FetchFailure::Failed);
        }
    }

    /// The engine dropped the fetch: its answer, if it comes, is thrown away.
    pub fn cancel(&mut self, fetch: FetchId) {
        if let Some(asked) = self.asked.get_mut(&fetch) {
            asked.cancelled = true;
        }
    }

    /// Waits up to `timeout` for the connections (or a wake-up) and takes in what happened.
    pub fn poll(&mut self, timeout: Duration) -> Result<(), ClientError> {
        let mut events = std::mem::take(&mut self.events);
        self.client.poll(&mut events, Some(timeout))?;
        for event in events.drain(..) {
            self.on_event(event);
        }
        self.events = events;
        // With every event handled, plain connections lend a buffer for their next receive:
        // piece bytes go from the socket straight into the piece buffer.
        for (conn, state) in self.conns.iter_mut().filter(|(_, state)| !state.transport.is_tls()) {
            state.rx.lend_to(&mut self.client, *conn);
        }
        Ok(())
    }

    /// The next fetch that ended.
    pub fn poll_outcome(&mut self) -> Option<FetchOutcome> {
        self.outcomes.pop_front()
    }

    /// Hands a piece buffer back once its bytes are verified (and stored or dropped).
    pub fn give(&mut self, buffer: Vec<u8>) {
        self.pool.give(buffer);
    }

    fn fail_now(&mut self, fetch: FetchId, name: &str, reason: &str) {
        tracing::debug!(source = name, %reason, "piece fetch failed to start");
        self.outcomes.push_back(FetchOutcome::Failed { fetch, failure: FetchFailure::Failed });
    }

    /// Where source `name` is reached; resolved once (a name that does not resolve is tried
    /// again on its next fetch).
    fn target(&mut self, kind: SourceKind, name: &str, source: SourceId) -> Result<Target, String> {
        if let Some(target) = self.targets.get(&source) {
            return Ok(target.clone());
        }
        let target = match kind {
            SourceKind::Origin => {
                let url = HttpUrl::parse(name).map_err(|error| error.to_string())?;
                let address = url.resolve().map_err(|error| error.to_string())?;
                Target { address, host: url.authority(), url: Some(url) }
            }
            SourceKind::Parent | SourceKind::Peer => {
                let mut addresses = name.to_socket_addrs().map_err(|error| format!("{name}: {error}"))?;
                let address = addresses.next().ok_or_else(|| format!("{name}: no address"))?;
                Target { address, url: None, host: name.to_string() }
            }
        };
        self.targets.insert(source, target.clone());
        Ok(target)
    }

    /// An open connection to `source` with room for a request, or a new one if the source has
    /// fewer than `connections_per_source_max` that are not closing.
    fn connection_for(&mut self, source: SourceId, target: &Target) -> Result<ConnId, String> {
        let depth = self.limits.pipeline_depth.max(1) as usize;
        let mine = || self.conns.iter().filter(move |(_, c)| c.source == source);
        if let Some((id, _)) = mine().filter(|(_, c)| c.rx.http.can_send()).min_by_key(|(_, c)| c.rx.http.in_flight()) {
            return Ok(*id);
        }
        // Connections that are full count; closing ones (the server said `close`) do not.
        let open = mine().filter(|(_, c)| c.rx.http.in_flight() >= depth).count();
        if open >= self.limits.connections_per_source_max.max(1) as usize {
            return Err("every connection to the source is full".into());
        }
        let transport = Transport::connect(&mut self.client, target.address, None)?;
        let id = transport.id();
        let limits = ClientLimits { pipeline_depth_max: depth, ..ClientLimits::default() };
        self.conns.insert(id, Conn { source, transport, rx: PieceReceiver::new(limits) });
        let _ = self.client.set_timer(id, Duration::from_millis(self.limits.connect_timeout_ms));
        Ok(id)
    }

    fn on_event(&mut self, event: io_client::Event) {
        match event {
            io_client::Event::Connected { conn } => {
                let Some(state) = self.conns.get_mut(&conn) else { return };
                state.transport.set_connected();
                let _ = self.client.set_timer(conn, Duration::from_millis(self.limits.request_timeout_ms));
                let end = flush(&mut self.client, state);
                self.settle(conn, end, FetchFailure::Failed);
            }
            io_client::Event::Received { conn, bytes } => {
                let end = self.receive(conn, Taken::Copy(&bytes));
                self.client.recycle(bytes);
                self.settle(conn, end, FetchFailure::Failed);
            }
            io_client::Event::Filled { conn, buffer, start, bytes } => {
                let end = self.receive(conn, Taken::Lent { buffer, start, bytes });
                self.settle(conn, end, FetchFailure::Failed);
            }
            io_client::Event::Closed { conn, error } => {
                let Some(state) = self.conns.get_mut(&conn) else { return };
                state.rx.http.handle_eof();
                let end = match (self.frame(conn), error) {
                    (Some(end), _) => end,
                    (None, None) => End::Closed(Vec::new()),
                    (None, Some(error)) => End::Failed(Vec::new(), format!("connection: {error}")),
                };
                // Whatever it ended with, the connection is gone.
                let end = match end {
                    End::Open => End::Closed(Vec::new()),
                    end => end,
                };
                self.settle(conn, end, FetchFailure::Failed);
            }
            io_client::Event::Timer { conn } => self.on_timer(conn),
            io_client::Event::Sent { .. } | io_client::Event::Woken => {}
        }
    }

    /// A connection's timer: a connect or a request took too long (its fetches fail as timed
    /// out), or an idle connection is closed.
    fn on_timer(&mut self, conn: ConnId) {
        let Some(state) = self.conns.get(&conn) else { return };
        let busy = state.rx.http.in_flight() > 0 || !state.transport.is_connected();
        if busy {
            tracing::debug!(
                source = state.source.0,
                connected = state.transport.is_connected(),
                "upstream request timed out"
            );
            self.settle(conn, End::Failed(Vec::new(), "timed out".into()), FetchFailure::TimedOut);
        } else {
            self.settle(conn, End::Closed(Vec::new()), FetchFailure::Failed);
        }
    }

    /// Takes in received bytes: whole responses become outcomes.
    fn receive(&mut self, conn: ConnId, taken: Taken) -> End<FetchId> {
        let Some(state) = self.conns.get_mut(&conn) else { return End::Open };
        let mut landed = Vec::new();
        let end = state.rx.take_in(taken, &expect_in(&self.asked), &mut self.pool, &mut landed);
        // Progress: the timer starts again; a body under way should keep coming.
        let timeout_ms = if state.rx.mid_body() {
            self.limits.stall_timeout_ms.min(self.limits.request_timeout_ms)
        } else {
            self.limits.request_timeout_ms
        };
        let _ = self.client.set_timer(conn, Duration::from_millis(timeout_ms));
        self.landed(landed);
        end
    }

    /// Frames what the connection's HTTP state has; `Some` when the connection ends.
    fn frame(&mut self, conn: ConnId) -> Option<End<FetchId>> {
        let state = self.conns.get_mut(&conn)?;
        let mut landed = Vec::new();
        let end = state.rx.frame(&expect_in(&self.asked), &mut self.pool, &mut landed);
        self.landed(landed);
        end
    }

    /// Finished responses become outcomes (those of cancelled fetches are dropped).
    fn landed(&mut self, landed: Vec<(FetchId, Response)>) {
        for (id, response) in landed {
            let Some(asked) = self.asked.remove(&id) else { continue };
            if asked.cancelled {
                if let Response::Bytes { buffer, .. } = response {
                    self.pool.give(buffer);
                }
                continue;
            }
            let fetch = asked.fetch;
            let outcome = match response {
                Response::Bytes { buffer, length } => FetchOutcome::Received { fetch, buffer, length },
                Response::Bad => FetchOutcome::Bad { fetch },
                Response::Missing => FetchOutcome::Failed { fetch: id, failure: FetchFailure::Missing },
                // Redirects of piece requests are not followed.
                Response::Failed | Response::Redirect(_) => {
                    FetchOutcome::Failed { fetch: id, failure: FetchFailure::Failed }
                }
            };
            self.outcomes.push_back(outcome);
        }
    }

    /// Removes a connection that ended; the fetches it still carried fail with `failure` (or as
    /// failed, when the connection broke).
    fn settle(&mut self, conn: ConnId, end: End<FetchId>, failure: FetchFailure) {
        let Some((mut unanswered, reason)) = end.ended() else { return };
        let Some(mut state) = self.conns.remove(&conn) else { return };
        // A no-op when the loop reported the close itself.
        self.client.close(conn);
        unanswered.extend(state.rx.abandon(&mut self.pool));
        if let Some(reason) = &reason {
            tracing::debug!(source = state.source.0, %reason, lost = unanswered.len(), "upstream connection failed");
        }
        for id in unanswered {
            let Some(asked) = self.asked.remove(&id) else { continue };
            if !asked.cancelled {
                self.outcomes.push_back(FetchOutcome::Failed { fetch: id, failure });
            }
        }
    }
}

/// What each fetch on the wire asked for (nothing, for one the loop no longer knows).
fn expect_in(asked: &HashMap<FetchId, Asked>) -> impl Fn(&FetchId) -> Expect + '_ {
    |id: &FetchId| asked.get(id).map_or(Expect { start: 0, length: 0, ranged: false }, |asked| asked.expect)
}

/// Queues what the HTTP connection has to send; `Open` unless that failed.
fn flush(client: &mut ClientLoop, conn: &mut Conn) -> End<FetchId> {
    match conn.transport.send(client, &mut conn.rx.http) {
        Ok(()) => End::Open,
        Err(reason) => End::Failed(Vec::new(), reason),
    }
}
