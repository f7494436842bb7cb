//! The liars' server: every lying peer of a swarm on its own port, all on one mio thread (as the
//! control plane: a test tool at a device's request rate needs no ring per core). Each liar
//! holds at most `connections_max` connections, a connection at most one response at a time and
//! `INPUT_BYTES_MAX` of unparsed requests, and idle connections are closed.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use crate::content::{ContentId, HashFile};
use crate::dataplane::route::{route, Route};
use crate::http::{parse_request, text_response, Parsed, RequestLimits};
use crate::load::swarm::liar::{answer, not_found, Answer, LieKind};

/// Liars of one swarm at most (their listeners' tokens come first).
pub const LIARS_MAX: usize = 256;
const WAKER: Token = Token(LIARS_MAX);
const FIRST_CONNECTION: usize = LIARS_MAX + 1;
/// How often idle connections are looked for.
const TICK: Duration = Duration::from_millis(100);
/// Unparsed request bytes one connection may hold.
const INPUT_BYTES_MAX: usize = 16 * 1024;
/// Reads, parses and writes of one connection per readiness event; a client that keeps it busy
/// longer is cut off rather than starving the other liars.
const STEPS_MAX: usize = 4096;
const EVENTS_CAPACITY: usize = 256;

/// The true content the liars lie about: its id, hash file and a verified copy on disk.
pub struct Reference {
    pub id: ContentId,
    pub hashes: HashFile,
    file: File,
}

impl Reference {
    /// The verified copy of `id` at `path`.
    pub fn open(id: ContentId, hashes: HashFile, path: &Path) -> std::io::Result<Reference> {
        Ok(Reference { id, hashes, file: File::open(path)? })
    }

    fn piece(&self, index: u64) -> std::io::Result<Vec<u8>> {
        let size = u64::from(self.hashes.piece_size().bytes());
        let length = self.hashes.piece_length(index).unwrap_or(0) as usize;
        let mut bytes = vec![0; length];
        self.file.read_exact_at(&mut bytes, index * size)?;
        Ok(bytes)
    }
}

/// How the liars run.
#[derive(Debug, Clone)]
pub struct LiarsConfig {
    /// The address every liar listens on (port chosen by the kernel).
    pub bind: IpAddr,
    /// One entry per liar: how it lies.
    pub kinds: Vec<LieKind>,
    /// Pieces a good-then-bad liar answers honestly on each connection.
    pub honest_pieces: u64,
    /// Connections one liar holds at most; more are accepted and closed.
    pub connections_max: usize,
    /// A connection with no byte in or out for this long is closed.
    pub idle_timeout: Duration,
}

/// What one liar saw and did.
#[derive(Debug, Default)]
pub struct LiarCounters {
    pub connections: AtomicU64,
    /// Connections closed at once because the liar held `connections_max`.
    pub refused: AtomicU64,
    /// Piece requests received.
    pub requests: AtomicU64,
    /// Responses with bad bytes.
    pub lies: AtomicU64,
    /// Responses with the true piece (a good-then-bad liar earning trust).
    pub honest: AtomicU64,
    /// Requests never answered (a stalling liar).
    pub held: AtomicU64,
}

/// One running liar.
#[derive(Debug, Clone)]
pub struct Liar {
    pub address: SocketAddr,
    pub kind: LieKind,
    pub counters: Arc<LiarCounters>,
}

/// The running liars; dropping them stops their thread.
pub struct Liars {
    liars: Vec<Liar>,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl Liars {
    /// Binds one listener per entry of `config.kinds` and starts serving them.
    pub fn start(config: &LiarsConfig, reference: Arc<Reference>) -> std::io::Result<Liars> {
        assert!(config.kinds.len() <= LIARS_MAX, "at most {LIARS_MAX} liars");
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut listeners = Vec::with_capacity(config.kinds.len());
        let mut liars = Vec::with_capacity(config.kinds.len());
        for (index, kind) in config.kinds.iter().enumerate() {
            let mut listener = TcpListener::bind(SocketAddr::new(config.bind, 0))?;
            poll.registry().register(&mut listener, Token(index), Interest::READABLE)?;
            liars.push(Liar { address: listener.local_addr()?, kind: *kind, counters: Arc::default() });
            listeners.push(listener);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let event_loop = EventLoop {
            poll,
            open: vec![0; listeners.len()],
            listeners,
            liars: liars.clone(),
            conns: HashMap::new(),
            next_token: FIRST_CONNECTION,
            reference,
            config: config.clone(),
            stop: stop.clone(),
        };
        let thread = std::thread::Builder::new().name("tessera-liars".into()).spawn(move || event_loop.run())?;
        Ok(Liars { liars, stop, waker, thread: Some(thread) })
    }

    /// The liars, in the order of `config.kinds`.
    pub fn liars(&self) -> &[Liar] {
        &self.liars
    }
}

impl Drop for Liars {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Conn {
    liar: usize,
    socket: TcpStream,
    input: Vec<u8>,
    output: Vec<u8>,
    sent: usize,
    /// Pieces answered on this connection (a good-then-bad liar's trust).
    answered: u64,
    /// A stalling liar took a request: nothing is ever sent on this connection.
    holding: bool,
    writable: bool,
    active_at: Instant,
}

enum Step {
    Close,
    Wait { writable: bool },
}

struct EventLoop {
    poll: Poll,
    listeners: Vec<TcpListener>,
    /// Connections open per liar.
    open: Vec<usize>,
    liars: Vec<Liar>,
    conns: HashMap<Token, Conn>,
    next_token: usize,
    reference: Arc<Reference>,
    config: LiarsConfig,
    stop: Arc<AtomicBool>,
}

impl EventLoop {
    fn run(mut self) {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        let mut last_tick = Instant::now();
        while !self.stop.load(Ordering::SeqCst) {
            if let Err(error) = self.poll.poll(&mut events, Some(TICK)) {
                if error.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(%error, "liars' poll failed; stopping them");
                return;
            }
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    Token(index) if index < self.listeners.len() => self.accept(index),
                    token => self.drive(token),
                }
            }
            let now = Instant::now();
            if now.duration_since(last_tick) >= TICK {
                last_tick = now;
                let idle: Vec<Token> = self
                    .conns
                    .iter()
                    .filter(|(_, conn)| now.duration_since(conn.active_at) >= self.config.idle_timeout)
                    .map(|(token, _)| *token)
                    .collect();
                idle.into_iter().for_each(|token| self.close(token));
            }
        }
    }

    fn accept(&mut self, liar: usize) {
        // Bounded by the kernel's backlog: each pass takes one pending connection.
        loop {
            let (mut socket, _) = match self.listeners[liar].accept() {
                Ok(accepted) => accepted,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    tracing::warn!(%error, liar = %self.liars[liar].address, "liar accept failed");
                    return;
                }
            };
            let counters = &self.liars[liar].counters;
            if self.open[liar] >= self.config.connections_max {
                counters.refused.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let token = Token(self.next_token);
            self.next_token = self.next_token.checked_add(1).unwrap_or(FIRST_CONNECTION);
            if self.poll.registry().register(&mut socket, token, Interest::READABLE).is_err() {
                continue;
            }
            counters.connections.fetch_add(1, Ordering::Relaxed);
            self.open[liar] += 1;
            let conn = Conn {
                liar,
                socket,
                input: Vec::new(),
                output: Vec::new(),
                sent: 0,
                answered: 0,
                holding: false,
                writable: false,
                active_at: Instant::now(),
            };
            self.conns.insert(token, conn);
        }
    }

    fn drive(&mut self, token: Token) {
        let Some(conn) = self.conns.get_mut(&token) else { return };
        let liar = &self.liars[conn.liar];
        match conn.step(liar, &self.reference, self.config.honest_pieces) {
            Step::Close => self.close(token),
            Step::Wait { writable } if writable != conn.writable => {
                conn.writable = writable;
                let interest = if writable { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
                if self.poll.registry().reregister(&mut conn.socket, token, interest).is_err() {
                    self.close(token);
                }
            }
            Step::Wait { .. } => {}
        }
    }

    fn close(&mut self, token: Token) {
        if let Some(mut conn) = self.conns.remove(&token) {
            let _ = self.poll.registry().deregister(&mut conn.socket);
            self.open[conn.liar] -= 1;
        }
    }
}

impl Conn {
    /// Writes what is queued, answers the next whole request, reads more: until the socket
    /// would block (mio's readiness is edge-triggered, so every pass ends there).
    fn step(&mut self, liar: &Liar, reference: &Reference, honest_pieces: u64) -> Step {
        let mut buffer = [0u8; 16 * 1024];
        for _ in 0..STEPS_MAX {
            if self.sent < self.output.len() {
                match self.socket.write(&self.output[self.sent..]) {
                    Ok(0) => return Step::Close,
                    Ok(count) => {
                        self.sent += count;
                        self.active_at = Instant::now();
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                        return Step::Wait { writable: true }
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => return Step::Close,
                }
                continue;
            }
            self.output.clear();
            self.sent = 0;
            match parse_request(&self.input, &RequestLimits::default()) {
                Ok(Parsed::Complete { request, head_length }) => {
                    self.input.drain(..head_length);
                    self.output = self.respond(&request, liar, reference, honest_pieces);
                    continue;
                }
                Ok(Parsed::Partial) if self.input.len() < INPUT_BYTES_MAX => {}
                Ok(Parsed::Partial) | Err(_) => return Step::Close,
            }
            match self.socket.read(&mut buffer) {
                Ok(0) => return Step::Close,
                Ok(count) => {
                    self.input.extend_from_slice(&buffer[..count]);
                    self.active_at = Instant::now();
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return Step::Wait { writable: false },
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Step::Close,
            }
        }
        Step::Close
    }

    /// The bytes to send for `request` (none while holding).
    fn respond(&mut self, request: &crate::http::Request, liar: &Liar, reference: &Reference, honest: u64) -> Vec<u8> {
        let counters = &liar.counters;
        let count = reference.hashes.piece_count();
        let index = match route(request.method, request.path()) {
            Ok(Route::Piece { id, index }) if id == reference.id && index < count => index,
            _ => return if self.holding { Vec::new() } else { not_found() },
        };
        counters.requests.fetch_add(1, Ordering::Relaxed);
        if self.holding || liar.kind == LieKind::Stall {
            self.holding = true;
            counters.held.fetch_add(1, Ordering::Relaxed);
            return Vec::new();
        }
        let pieces = reference.piece(index).and_then(|piece| Ok((piece, reference.piece((index + 1) % count)?)));
        let (piece, next) = match pieces {
            Ok(pieces) => pieces,
            Err(error) => return text_response(500, &format!("cannot read the reference copy: {error}\n"), true),
        };
        match answer(liar.kind, &piece, &next, self.answered, honest) {
            Answer::Send { bytes, lie } => {
                self.answered += 1;
                let counter = if lie { &counters.lies } else { &counters.honest };
                counter.fetch_add(1, Ordering::Relaxed);
                bytes
            }
            Answer::Hold => {
                self.holding = true;
                counters.held.fetch_add(1, Ordering::Relaxed);
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::PieceSize;
    use crate::hash::sha256;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    const PIECE: usize = 65536;
    const WAIT: Duration = Duration::from_secs(10);

    fn reference(dir: &Path) -> (Arc<Reference>, Vec<u8>) {
        let bytes: Vec<u8> = (0..3 * PIECE - 100).map(|i| (i * 31 % 253) as u8).collect();
        let digests = bytes.chunks(PIECE).map(sha256).collect();
        let hashes = HashFile::new(PieceSize::new(PIECE as u32).unwrap(), bytes.len() as u64, digests).unwrap();
        let path = dir.join("reference.bin");
        std::fs::write(&path, &bytes).unwrap();
        let id = ContentId::parse("lied-about").unwrap();
        (Arc::new(Reference::open(id, hashes, &path).unwrap()), bytes)
    }

    fn start(dir: &Path, kinds: Vec<LieKind>) -> (Liars, Vec<u8>) {
        let (reference, bytes) = reference(dir);
        let config = LiarsConfig {
            bind: "127.0.0.1".parse().unwrap(),
            kinds,
            honest_pieces: 0,
            connections_max: 1,
            idle_timeout: WAIT,
        };
        (Liars::start(&config, reference).unwrap(), bytes)
    }

    /// Sends a GET of `target` and reads one response with a Content-Length: (status, body).
    fn ask(stream: &mut TcpStream, target: &str) -> (u16, Vec<u8>) {
        stream.set_read_timeout(Some(WAIT)).unwrap();
        write!(stream, "GET {target} HTTP/1.1\r\nHost: liar\r\n\r\n").unwrap();
        let mut wire = Vec::new();
        let mut buffer = [0u8; 8192];
        loop {
            if let Some(end) = wire.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&wire[..end]).to_lowercase();
                let length: usize =
                    head.split("content-length: ").nth(1).unwrap().lines().next().unwrap().parse().unwrap();
                if wire.len() >= end + 4 + length {
                    return (head[9..12].parse().unwrap(), wire[end + 4..end + 4 + length].to_vec());
                }
            }
            let count = stream.read(&mut buffer).unwrap();
            assert!(count > 0, "closed before a whole response");
            wire.extend_from_slice(&buffer[..count]);
        }
    }

    #[test]
    fn a_liar_answers_pieces_with_bad_bytes_and_other_paths_with_404_on_one_connection() {
        let dir = tempfile::tempdir().unwrap();
        let (liars, bytes) = start(dir.path(), vec![LieKind::WrongPiece]);
        let liar = &liars.liars()[0];
        let mut stream = TcpStream::connect(liar.address).unwrap();
        let (status, body) = ask(&mut stream, "/v1/content/lied-about/piece/0");
        assert_eq!((status, body.as_slice()), (200, &bytes[PIECE..2 * PIECE]), "piece 1's bytes for piece 0");
        assert_eq!(ask(&mut stream, "/v1/content/other/piece/0").0, 404);
        assert_eq!(ask(&mut stream, "/v1/content/lied-about/piece/3").0, 404, "past the last piece");
        let (status, body) = ask(&mut stream, "/v1/content/lied-about/piece/2");
        assert_eq!((status, body.as_slice()), (200, &bytes[..PIECE]), "the last piece's successor is piece 0");
        assert_eq!((liar.counters.requests.load(Ordering::SeqCst), liar.counters.lies.load(Ordering::SeqCst)), (2, 2));
    }

    #[test]
    fn a_stalling_liar_holds_requests_and_a_liar_at_its_limit_closes_newcomers() {
        let dir = tempfile::tempdir().unwrap();
        let (liars, _) = start(dir.path(), vec![LieKind::Stall]);
        let liar = &liars.liars()[0];
        let mut stream = TcpStream::connect(liar.address).unwrap();
        write!(stream, "GET /v1/content/lied-about/piece/1 HTTP/1.1\r\nHost: liar\r\n\r\n").unwrap();
        let deadline = Instant::now() + WAIT;
        while liar.counters.held.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "the request never arrived");
            std::thread::sleep(Duration::from_millis(5));
        }
        stream.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        let read = stream.read(&mut byte);
        assert!(matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock), "answered: {read:?}");
        // connections_max is 1: a second connection is accepted and closed at once.
        let mut second = TcpStream::connect(liar.address).unwrap();
        second.set_read_timeout(Some(WAIT)).unwrap();
        assert_eq!(second.read(&mut byte).unwrap(), 0, "the second connection was kept");
        assert_eq!(liar.counters.refused.load(Ordering::SeqCst), 1);
    }
}
