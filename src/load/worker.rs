//! One load thread: its connections on a client loop of the ring layer (io_uring or epoll), its
//! share of the schedule, its own recorder. The hot path allocates nothing and sends on no
//! channel: request bytes are shared `Rc`s written once (ranges: rewritten in place), receive
//! buffers go back to the loop (`ClientLoop::recycle`), responses are framed by the one HTTP
//! client connection and body bytes are counted, not copied.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rustls::ClientConnection;

use crate::config::BackendChoice;
use crate::content::HashFile;
use crate::http::client::{self as http_client, ClientLimits};
use crate::io::client::{ClientConfig, ClientLoop, ConnId, Event};
use crate::load::record::Recorder;
use crate::load::schedule::{Due, Pace, Schedule, Stop};
use crate::load::target::Plan;
use crate::load::LoadError;
use crate::tls::client::{client_connection, records_to_send, PLAINTEXT_CHUNK_BYTES};

/// Wait before reconnecting after a failed connect (a refused server is not hammered).
const RECONNECT_BACKOFF_NS: u64 = 50_000_000;
/// Live counters are handed to the main thread this often.
/// How often a thread reports its totals to the live line (ten times per printed line, so the
/// line's rate is never read from a stale report).
const TICK_NS: u64 = 100_000_000;
/// Timeouts and reconnects are checked this often (a scan of the thread's connections).
const CHECK_NS: u64 = 5_000_000;
/// Request buffers per connection in range mode (one may still be held by the last send).
const RANGE_BUFFERS: usize = 2;

/// What a load thread is given.
pub struct Setup {
    pub thread_index: usize,
    pub thread_count: usize,
    pub connections: usize,
    pub plan: Arc<Plan>,
    pub pace: Pace,
    pub stop: Stop,
    pub timeout: Duration,
    pub backend: BackendChoice,
    /// CPU to pin the thread to.
    pub cpu: Option<usize>,
    pub ticks: Sender<Tick>,
    /// Said once the thread's connections are open (or it failed to start).
    pub ready: Sender<()>,
    /// Ends (disconnects) when every thread is ready: the start.
    pub go: Receiver<()>,
    /// Set when the run is called off before the start.
    pub abort: Arc<AtomicBool>,
    /// Set to end the run early (Ctrl-C): no new sends.
    pub interrupt: Arc<AtomicBool>,
}

/// A thread's running totals, ten times a second.
#[derive(Debug, Clone, Copy)]
pub struct Tick {
    pub thread_index: usize,
    /// When the totals were taken, ns from the thread's start.
    pub at_ns: u64,
    pub responses: u64,
    pub errors: u64,
    /// p99 of the corrected latency so far, µs.
    pub p99_us: u64,
}

/// What a thread measured, and when (ns from its start) it ended.
pub struct Finished {
    pub recorder: Recorder,
    pub end_ns: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting {
        since_ns: u64,
    },
    Idle,
    Busy {
        intended_ns: u64,
        sent_ns: u64,
        status: u16,
    },
    /// No connection; another is opened at `until_ns`.
    Down {
        until_ns: u64,
    },
}

struct Slot {
    conn: Option<ConnId>,
    address_index: usize,
    /// The targets at this slot's address, asked round-robin.
    targets: Vec<usize>,
    cursor: usize,
    http: http_client::Connection<()>,
    state: State,
    range_requests: Vec<Rc<Vec<u8>>>,
    /// The piece asked by the request in flight (`--content`).
    piece: Option<u64>,
    /// Its body so far, when pieces are verified (at most one byte past the piece's length is
    /// kept: more means bad anyway).
    body: Vec<u8>,
    /// The connection's TLS state, for an https URL (connecting lasts until its handshake is done).
    tls: Option<Box<ClientConnection>>,
}

/// One thread's loop.
struct Worker {
    client: ClientLoop,
    plan: Arc<Plan>,
    slots: Vec<Slot>,
    by_conn: HashMap<ConnId, usize>,
    idle: Vec<usize>,
    busy_count: usize,
    requests: Vec<Rc<Vec<u8>>>,
    schedule: Schedule,
    stop: Stop,
    recorder: Recorder,
    rng: StdRng,
    timeout_ns: u64,
    start: Instant,
    /// Whether the run has started (connects before it use up no sends).
    started: bool,
    /// Plaintext out of TLS records, reused.
    plaintext: Vec<u8>,
}

/// A client connection as load uses it: one request in flight (like wrk), bodies counted and
/// never kept, heads parsed without allocating.
fn http_connection() -> http_client::Connection<()> {
    let limits = ClientLimits { pipeline_depth_max: 1, body_bytes_max: 1 << 40, ..ClientLimits::default() };
    let mut connection = http_client::Connection::new(limits);
    connection.keep_header_fields(false);
    connection
}

/// Runs one load thread to its end. Says ready whatever happens, so a thread that cannot start
/// never leaves the caller waiting.
pub fn run(setup: Setup) -> Result<Finished, LoadError> {
    if let Some(cpu) = setup.cpu {
        if let Err(error) = crate::io::sys::pin_current_thread(cpu) {
            tracing::debug!(cpu, %error, "load thread not pinned");
        }
    }
    let prepared = Worker::new(&setup).and_then(|mut worker| {
        worker.open_all(Instant::now() + setup.timeout)?;
        Ok(worker)
    });
    let _ = setup.ready.send(());
    let _ = setup.go.recv();
    let mut worker = prepared?;
    if setup.abort.load(Ordering::SeqCst) {
        return Ok(Finished { recorder: Recorder::default(), end_ns: 0 });
    }
    worker.start = Instant::now();
    worker.started = true;
    worker.run_loop(&setup)?;
    worker.recorder.behind_schedule = worker.schedule.late_count();
    Ok(Finished { end_ns: worker.now_ns(), recorder: worker.recorder })
}

impl Worker {
    fn new(setup: &Setup) -> Result<Worker, LoadError> {
        let connections = setup.connections;
        let config = ClientConfig {
            // Closed connections keep their slot until the kernel hands their buffers back.
            connections_max: connections * 2 + 16,
            ring_entries: (connections * 3 + 16).next_power_of_two().clamp(64, 4096) as u32,
            ..ClientConfig::default()
        };
        let client = ClientLoop::new(setup.backend, config)?;
        let plan = setup.plan.clone();
        let address_count = plan.addresses.len();
        let slots = (0..connections)
            .map(|index| {
                // Spread each thread's connections over the addresses, starting at a different one.
                let address_index = (index + setup.thread_index) % address_count;
                let targets = (0..plan.targets.len()).filter(|&t| plan.targets[t].address_index == address_index);
                Slot {
                    conn: None,
                    address_index,
                    targets: targets.collect(),
                    cursor: 0,
                    http: http_connection(),
                    state: State::Down { until_ns: 0 },
                    range_requests: (0..RANGE_BUFFERS).map(|_| Rc::new(Vec::with_capacity(512))).collect(),
                    piece: None,
                    body: Vec::new(),
                    tls: None,
                }
            })
            .collect();
        Ok(Worker {
            client,
            requests: plan.targets.iter().map(|target| Rc::new(target.request.clone())).collect(),
            plan,
            slots,
            by_conn: HashMap::with_capacity(connections * 2),
            idle: Vec::with_capacity(connections),
            busy_count: 0,
            schedule: Schedule::new(setup.pace, setup.stop, setup.thread_index as u64, setup.thread_count as u64),
            stop: setup.stop,
            recorder: Recorder::default(),
            rng: StdRng::seed_from_u64(0x7e55_e7a0 ^ setup.thread_index as u64),
            timeout_ns: setup.timeout.as_nanos().min(u64::MAX as u128) as u64,
            start: Instant::now(),
            started: false,
            plaintext: Vec::new(),
        })
    }

    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Opens every connection before the start (as wrk does), waiting at most until `deadline`;
    /// failures count as connect errors and are retried in the run.
    fn open_all(&mut self, deadline: Instant) -> Result<(), LoadError> {
        for index in 0..self.slots.len() {
            self.reconnect(index, 0);
        }
        let mut events = Vec::new();
        while self.slots.iter().any(|s| matches!(s.state, State::Connecting { .. })) && Instant::now() < deadline {
            self.client.poll(&mut events, Some(Duration::from_millis(10)))?;
            for event in events.drain(..) {
                self.on_event(event);
            }
        }
        for index in 0..self.slots.len() {
            match self.slots[index].state {
                State::Connecting { .. } => {
                    self.recorder.errors.connect += 1;
                    self.drop_connection(index);
                    self.slots[index].state = State::Down { until_ns: 0 };
                }
                State::Down { .. } => self.slots[index].state = State::Down { until_ns: 0 },
                _ => {}
            }
        }
        Ok(())
    }

    fn run_loop(&mut self, setup: &Setup) -> Result<(), LoadError> {
        let mut events = Vec::with_capacity(1024);
        let mut next_tick_ns = TICK_NS;
        let mut next_check_ns = 0;
        // Bounded: the schedule ends (duration or count: failed connects use up sends too), and
        // every request in flight is answered or times out.
        loop {
            let now_ns = self.now_ns();
            // One relaxed load a turn: the only cross-thread read of the loop.
            let interrupted = setup.interrupt.load(Ordering::Relaxed);
            if now_ns >= next_check_ns {
                // Scans of every connection, on a tick rather than every turn.
                self.expire(now_ns);
                if !interrupted {
                    self.reopen_due(now_ns);
                }
                next_check_ns = now_ns + CHECK_NS;
            }
            if !interrupted {
                self.send_due();
            }
            if self.busy_count == 0 && (interrupted || self.schedule.is_over(self.now_ns())) {
                return Ok(());
            }
            let wait_ns = self.wait_ns(self.now_ns(), next_tick_ns.min(next_check_ns));
            self.client.poll(&mut events, Some(Duration::from_nanos(wait_ns)))?;
            for event in events.drain(..) {
                self.on_event(event);
            }
            if self.now_ns() >= next_tick_ns {
                next_tick_ns += TICK_NS;
                let _ = setup.ticks.try_send(Tick {
                    thread_index: setup.thread_index,
                    at_ns: self.now_ns(),
                    responses: self.recorder.responses,
                    errors: self.recorder.errors.total(),
                    p99_us: self.recorder.corrected.value_at_quantile(0.99),
                });
            }
        }
    }

    /// How long the loop may sleep: until the next intended send (when a connection is free),
    /// the next check or tick (`next_ns`), or the end of a timed run.
    fn wait_ns(&self, now_ns: u64, next_ns: u64) -> u64 {
        let mut until_ns = next_ns;
        if !self.idle.is_empty() {
            match self.schedule.due(now_ns) {
                Due::Now { .. } => return 0,
                Due::At { intended_ns } => until_ns = until_ns.min(intended_ns),
                Due::Over => {}
            }
        }
        if let Stop::After { duration_ns } = self.stop {
            if now_ns < duration_ns {
                until_ns = until_ns.min(duration_ns);
            }
        }
        until_ns.saturating_sub(now_ns)
    }

    /// Sends every due request on a free connection.
    fn send_due(&mut self) {
        while let Some(&index) = self.idle.last() {
            let now_ns = self.now_ns();
            let Some(intended_ns) = self.schedule.take(now_ns) else { return };
            self.idle.pop();
            self.send(index, intended_ns, now_ns);
        }
    }

    fn send(&mut self, index: usize, intended_ns: u64, now_ns: u64) {
        let request = self.next_request(index);
        let slot = &mut self.slots[index];
        let conn = slot.conn.expect("an idle slot has a connection");
        let sent = match slot.tls.as_mut() {
            None => self.client.send_shared(conn, request).is_ok(),
            Some(tls) => tls.writer().write_all(&request).is_ok() && flush_tls(&mut self.client, conn, tls).is_ok(),
        } && slot.http.send_prepared((), false).is_ok();
        if !sent {
            // The connection went away under us: the request failed like a broken read.
            self.recorder.errors.read += 1;
            self.drop_connection(index);
            self.reconnect(index, now_ns);
            return;
        }
        slot.state = State::Busy { intended_ns, sent_ns: now_ns, status: 0 };
        self.busy_count += 1;
    }

    /// The next request of slot `index`: its next URL, or a fresh random range.
    fn next_request(&mut self, index: usize) -> Rc<Vec<u8>> {
        let slot = &mut self.slots[index];
        if self.plan.ranges.is_none() {
            let target = slot.targets[slot.cursor % slot.targets.len()];
            slot.cursor += 1;
            slot.piece = self.plan.targets[target].piece;
            slot.body.clear();
            return self.requests[target].clone();
        }
        let start = self.rng.gen_range(0..=self.plan.range_start_max());
        // A buffer the loop no longer holds is rewritten in place; a new one only if none is.
        let free = slot.range_requests.iter_mut().position(|buffer| Rc::get_mut(buffer).is_some());
        let position = free.unwrap_or_else(|| {
            slot.range_requests[0] = Rc::new(Vec::with_capacity(512));
            0
        });
        let buffer = Rc::get_mut(&mut slot.range_requests[position]).expect("only owner");
        self.plan.write_range_request(start, buffer);
        slot.range_requests[position].clone()
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Connected { conn } => {
                let Some(&index) = self.by_conn.get(&conn) else { return };
                match self.slots[index].tls.as_mut() {
                    // The client's hello; the slot is idle once the handshake is done.
                    Some(tls) => {
                        if flush_tls(&mut self.client, conn, tls).is_err() {
                            self.tls_failed(index);
                        }
                    }
                    None => {
                        self.slots[index].state = State::Idle;
                        self.idle.push(index);
                    }
                }
            }
            Event::Received { conn, bytes } => {
                if let Some(&index) = self.by_conn.get(&conn) {
                    if self.slots[index].tls.is_some() {
                        self.receive_tls(index, conn, &bytes);
                    } else {
                        self.recorder.bytes += bytes.len() as u64;
                        self.receive(index, &bytes);
                    }
                }
                self.client.recycle(bytes);
            }
            Event::Closed { conn, error: _ } => {
                if let Some(index) = self.by_conn.remove(&conn) {
                    self.slots[index].conn = None;
                    self.closed(index);
                }
            }
            // (No buffer is lent here, so nothing is filled.)
            Event::Sent { .. } | Event::Timer { .. } | Event::Filled { .. } | Event::Woken => {}
        }
    }

    /// Received TLS records of slot `index`: through rustls, the plaintext on to
    /// [`Worker::receive`]; the handshake's end makes a connecting slot idle.
    fn receive_tls(&mut self, index: usize, conn: ConnId, mut records: &[u8]) {
        let mut plaintext = std::mem::take(&mut self.plaintext);
        plaintext.resize(PLAINTEXT_CHUNK_BYTES, 0);
        // Bounded by the input: each pass consumes records, or stops.
        while !records.is_empty() {
            let Some(tls) = self.slots[index].tls.as_mut() else { break };
            let fed = tls.read_tls(&mut records).is_ok() && tls.process_new_packets().is_ok();
            if !fed {
                self.tls_failed(index);
                break;
            }
            let handshaken = !tls.is_handshaking();
            if handshaken && matches!(self.slots[index].state, State::Connecting { .. }) {
                self.slots[index].state = State::Idle;
                self.idle.push(index);
            }
            // Bounded: the plaintext of the records just processed runs dry with WouldBlock (or
            // 0 at the server's close_notify).
            while let Some(count) =
                self.slots[index].tls.as_mut().and_then(|tls| tls.reader().read(&mut plaintext).ok())
            {
                if count == 0 {
                    break;
                }
                self.recorder.bytes += count as u64;
                self.receive(index, &plaintext[..count]);
                if self.slots[index].conn != Some(conn) {
                    // The response ended the connection: the rest of its bytes are moot.
                    self.plaintext = plaintext;
                    return;
                }
            }
        }
        let slot = &mut self.slots[index];
        if let (Some(tls), true) = (slot.tls.as_mut(), slot.conn == Some(conn)) {
            if flush_tls(&mut self.client, conn, tls).is_err() {
                self.tls_failed(index);
            }
        }
        self.plaintext = plaintext;
    }

    /// A TLS error on slot `index`: during the handshake a failed connect (it uses up a send and
    /// the slot waits, so a run against an untrusted server ends); later a read error and a new
    /// connection.
    fn tls_failed(&mut self, index: usize) {
        let now_ns = self.now_ns();
        let handshaking = matches!(self.slots[index].state, State::Connecting { .. });
        self.slots[index].tls = None;
        self.end_busy(index);
        self.drop_connection(index);
        if handshaking {
            self.recorder.errors.connect += 1;
            self.connect_failed(index, now_ns);
        } else {
            self.recorder.errors.read += 1;
            self.reconnect(index, now_ns);
        }
    }

    /// Feeds received bytes to the slot's HTTP connection; body bytes of a known length are
    /// counted straight from the buffer, not copied through the connection.
    fn receive(&mut self, index: usize, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let http = &mut self.slots[index].http;
            // Verified pieces go through the connection (their bytes are kept); others are
            // only counted.
            let direct = if self.plan.verify.is_some() { 0 } else { http.body_direct_bytes().min(bytes.len() as u64) };
            if direct > 0 {
                http.handle_body_direct(direct);
                bytes = &bytes[direct as usize..];
            } else {
                http.handle_input(bytes);
                bytes = &[];
            }
            if !self.drain(index) {
                return;
            }
        }
    }

    /// Handles what the slot's HTTP connection says; `false` once the connection is over.
    fn drain(&mut self, index: usize) -> bool {
        enum Step {
            Status(u16),
            Done,
            Closed { failed: bool },
        }
        let keep_bytes = self.kept_body_bytes(index);
        // Bounded: each event consumes input or ends the connection.
        loop {
            let slot = &mut self.slots[index];
            let step = match slot.http.poll_event() {
                None => return true,
                Some(http_client::Event::Head { head, .. }) => Step::Status(head.status),
                Some(http_client::Event::BodyData { data, .. }) => {
                    let room = keep_bytes.saturating_sub(slot.body.len());
                    slot.body.extend_from_slice(&data[..room.min(data.len())]);
                    continue;
                }
                Some(http_client::Event::Done { .. }) => Step::Done,
                Some(http_client::Event::Closed { unanswered, error }) => {
                    Step::Closed { failed: !unanswered.is_empty() || error.is_some() }
                }
            };
            let now_ns = self.now_ns();
            let slot = &mut self.slots[index];
            match (step, slot.state) {
                (Step::Status(code), State::Busy { intended_ns, sent_ns, .. }) => {
                    slot.state = State::Busy { intended_ns, sent_ns, status: code };
                }
                (Step::Done, State::Busy { intended_ns, sent_ns, status }) => {
                    self.recorder.response(status, intended_ns, sent_ns, now_ns);
                    if status == 200 && !piece_is_good(self.plan.verify.as_ref(), slot.piece, &slot.body) {
                        self.recorder.bad_pieces += 1;
                    }
                    self.busy_count -= 1;
                    if slot.http.can_send() {
                        slot.state = State::Idle;
                        self.idle.push(index);
                    } else {
                        // The server closes after this response: a new connection, no error.
                        self.drop_connection(index);
                        self.reconnect(index, now_ns);
                        return false;
                    }
                }
                (Step::Closed { failed }, state) => {
                    if failed || matches!(state, State::Busy { .. }) {
                        self.recorder.errors.read += 1;
                    }
                    self.end_busy(index);
                    self.drop_connection(index);
                    self.reconnect(index, now_ns);
                    return false;
                }
                // Anything else is not ours (the HTTP connection refuses unsolicited bytes).
                _ => {}
            }
        }
    }

    /// Body bytes of slot `index`'s response worth keeping: none unless its piece is verified,
    /// then the piece's length and one more (which makes it bad).
    fn kept_body_bytes(&self, index: usize) -> usize {
        match (&self.plan.verify, self.slots[index].piece) {
            (Some(hashes), Some(piece)) => hashes.piece_length(piece).map_or(0, |length| length as usize + 1),
            _ => 0,
        }
    }

    /// The client loop says the connection ended.
    fn closed(&mut self, index: usize) {
        let now_ns = self.now_ns();
        match self.slots[index].state {
            State::Connecting { .. } => {
                self.recorder.errors.connect += 1;
                self.connect_failed(index, now_ns);
            }
            State::Busy { .. } => {
                // A body delimited by the close may complete with it.
                self.slots[index].http.handle_eof();
                if self.drain(index) && matches!(self.slots[index].state, State::Busy { .. }) {
                    self.recorder.errors.read += 1;
                    self.end_busy(index);
                }
                if self.slots[index].conn.is_none() {
                    self.reconnect(index, now_ns);
                }
            }
            State::Idle => {
                self.idle.retain(|&i| i != index);
                self.reconnect(index, now_ns);
            }
            State::Down { .. } => {}
        }
    }

    fn end_busy(&mut self, index: usize) {
        if matches!(self.slots[index].state, State::Busy { .. }) {
            self.busy_count -= 1;
            self.slots[index].state = State::Down { until_ns: 0 };
        }
    }

    /// Closes the slot's connection (if any) without an event.
    fn drop_connection(&mut self, index: usize) {
        if self.slots[index].state == State::Idle {
            self.idle.retain(|&i| i != index);
        }
        if let Some(conn) = self.slots[index].conn.take() {
            self.by_conn.remove(&conn);
            self.client.close(conn);
        }
    }

    /// A connect failed: it uses up the send due now (so a run of N requests against a dead
    /// server ends), and the slot waits before trying again.
    fn connect_failed(&mut self, index: usize, now_ns: u64) {
        if self.started {
            let _ = self.schedule.take(now_ns);
        }
        self.slots[index].state = State::Down { until_ns: now_ns + RECONNECT_BACKOFF_NS };
    }

    /// Opens a new connection for slot `index`.
    fn reconnect(&mut self, index: usize, now_ns: u64) {
        if self.slots[index].state == State::Idle {
            self.idle.retain(|&i| i != index);
        }
        let address_index = self.slots[index].address_index;
        let address = self.plan.addresses[address_index];
        let slot = &mut self.slots[index];
        slot.http = http_connection();
        slot.tls = match (&self.plan.tls, &self.plan.server_names[address_index]) {
            (Some(config), Some(name)) => match client_connection(config.clone(), name) {
                Ok(tls) => Some(Box::new(tls)),
                Err(reason) => {
                    tracing::debug!(%address, %reason, "load TLS setup failed");
                    self.recorder.errors.connect += 1;
                    self.connect_failed(index, now_ns);
                    return;
                }
            },
            _ => None,
        };
        match self.client.connect(address) {
            Ok(conn) => {
                slot.conn = Some(conn);
                slot.state = State::Connecting { since_ns: now_ns };
                self.by_conn.insert(conn, index);
            }
            Err(error) => {
                tracing::debug!(%address, %error, "load connect failed");
                self.recorder.errors.connect += 1;
                self.connect_failed(index, now_ns);
            }
        }
    }

    fn reopen_due(&mut self, now_ns: u64) {
        for index in 0..self.slots.len() {
            if matches!(self.slots[index].state, State::Down { until_ns } if until_ns <= now_ns) {
                self.reconnect(index, now_ns);
            }
        }
    }

    /// Requests unanswered and connects not done within the timeout fail.
    fn expire(&mut self, now_ns: u64) {
        for index in 0..self.slots.len() {
            match self.slots[index].state {
                State::Busy { sent_ns, .. } if now_ns.saturating_sub(sent_ns) >= self.timeout_ns => {
                    self.recorder.errors.timeout += 1;
                    self.end_busy(index);
                    self.drop_connection(index);
                    self.reconnect(index, now_ns);
                }
                State::Connecting { since_ns } if now_ns.saturating_sub(since_ns) >= self.timeout_ns => {
                    self.recorder.errors.connect += 1;
                    self.drop_connection(index);
                    self.connect_failed(index, now_ns);
                }
                _ => {}
            }
        }
    }
}

/// Whether `body` is piece `piece` as the hash file says (always, when nothing is verified).
/// Sends what rustls has to send on `conn` (records, handshake messages).
fn flush_tls(client: &mut ClientLoop, conn: ConnId, tls: &mut ClientConnection) -> Result<(), String> {
    let records = records_to_send(tls)?;
    if records.is_empty() {
        return Ok(());
    }
    client.send(conn, records).map_err(|error| error.to_string())
}

fn piece_is_good(verify: Option<&HashFile>, piece: Option<u64>, body: &[u8]) -> bool {
    let (Some(hashes), Some(piece)) = (verify, piece) else { return true };
    hashes.digest(piece) == Some(&crate::hash::sha256(body))
}
