//! In-process loopback fakes for the download tests: peers that are honest or lie in each way a
//! peer can, an HTTP origin with Range support, and a metadata source. Test code only: a thread
//! per connection is fine here. Every fake counts what it receives.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tessera::content::{ContentId, HashFile, Manifest, MetadataFailure, PieceSize};
use tessera::download::MetadataSource;
use tessera::hash::sha256;
use tessera::http::{parse_range, parse_request, Method, Parsed, RangeOutcome, RequestLimits};
use tessera::load::swarm::liar::{lie_body, LieKind};

/// Longest a fake lives, whatever the test does.
const FAKE_LIFETIME: Duration = Duration::from_secs(60);

/// Test content: bytes, hash file, manifest.
#[derive(Clone)]
pub struct Content {
    pub id: ContentId,
    pub bytes: Arc<Vec<u8>>,
    pub hashes: HashFile,
    pub hashfile: Vec<u8>,
    pub piece_size: u32,
}

impl Content {
    /// `length` pseudo-random bytes in pieces of 64 KiB.
    pub fn new(id: &str, length: usize) -> Content {
        let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ length as u64;
        let bytes: Vec<u8> = (0..length)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let piece_size = 65536u32;
        let digests = bytes.chunks(piece_size as usize).map(sha256).collect();
        let hashes = HashFile::new(PieceSize::new(piece_size).unwrap(), length as u64, digests).unwrap();
        let hashfile = hashes.to_bytes();
        Content { id: ContentId::parse(id).unwrap(), bytes: Arc::new(bytes), hashes, hashfile, piece_size }
    }

    pub fn piece_count(&self) -> u64 {
        self.hashes.piece_count()
    }

    pub fn piece(&self, index: u64) -> &[u8] {
        let start = index as usize * self.piece_size as usize;
        let end = (start + self.piece_size as usize).min(self.bytes.len());
        &self.bytes[start..end]
    }

    pub fn manifest(&self, sources: Vec<String>) -> Manifest {
        Manifest {
            version: 1,
            content_id: self.id.to_string(),
            content_length: self.bytes.len() as u64,
            piece_size: self.piece_size,
            hashfile_sha256: hex::encode(sha256(&self.hashfile)),
            hashfile_urls: vec![],
            sources,
            sha256: Some(hex::encode(sha256(&self.bytes))),
        }
    }
}

/// How a fake peer answers piece requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behavior {
    Honest,
    /// One bit of every piece flipped.
    BitFlip,
    /// The next piece's bytes instead of the one asked for.
    WrongPiece,
    /// Half the piece, with a matching Content-Length.
    Truncate,
    /// The piece and as many bytes again, with a matching Content-Length.
    Overlong,
    /// Zeros of the piece's length.
    Zeros,
    /// Reads requests, never answers.
    Stall,
    /// Sends a piece's head and half its body, then closes the connection.
    CutMidBody,
    /// Sends a piece's head and half its body, then hangs: the connection stays open, silent.
    HangMidBody,
    /// Honest, but waits this many milliseconds before answering each piece.
    Slow(u64),
    /// Honest for this many pieces, then flips bits.
    LieAfter(u64),
    /// Honest for pieces below this index, 404 for the rest.
    HasBelow(u64),
    /// HTTP origin: the content at `/content.bin`, with Range.
    Origin,
    /// The same origin, sending every body chunked (with a trailer), as many CDNs do.
    ChunkedOrigin,
    /// Metadata service: manifest, hash file and peer list at the control plane's paths.
    Service,
}

/// What a fake metadata service answers.
#[derive(Debug, Clone)]
pub struct ServiceData {
    pub manifest: Manifest,
    pub peers: Vec<SocketAddr>,
}

/// A self-signed certificate for 127.0.0.1 and its PEM, for TLS fakes and `--ca`.
pub struct TestCert {
    pub pem: String,
    pub config: Arc<rustls::ServerConfig>,
}

impl TestCert {
    pub fn new() -> TestCert {
        let certified =
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.key_pair.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key)
            .unwrap();
        TestCert { pem: certified.cert.pem(), config: Arc::new(config) }
    }

    /// Writes the PEM to `path` and returns it.
    pub fn write(&self, path: &std::path::Path) -> std::path::PathBuf {
        std::fs::write(path, &self.pem).unwrap();
        path.to_path_buf()
    }
}

/// What a fake saw and did.
#[derive(Debug, Default)]
pub struct Counters {
    pub connections: AtomicU64,
    pub requests: AtomicU64,
    pub good_sent: AtomicU64,
    pub bad_sent: AtomicU64,
    pub range_requests: AtomicU64,
    /// Requests that arrived while an earlier one on the same connection was not yet answered.
    pub pipelined: AtomicU64,
}

impl Counters {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::SeqCst)
    }
}

/// A running fake server.
pub struct Fake {
    pub address: SocketAddr,
    pub counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Fake {
    pub fn start(content: &Content, behavior: Behavior) -> Fake {
        Fake::start_with(content, behavior, None, None)
    }

    /// A fake behind TLS (`tls`) and/or answering as a metadata service (`service`).
    pub fn start_with(
        content: &Content,
        behavior: Behavior,
        tls: Option<Arc<rustls::ServerConfig>>,
        service: Option<ServiceData>,
    ) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let content = content.clone();
        let thread = {
            let (counters, stop) = (counters.clone(), stop.clone());
            let setup = Setup { content, behavior, tls, service: service.map(Arc::new) };
            std::thread::spawn(move || accept_loop(listener, setup, counters, stop))
        };
        Fake { address, counters, stop, thread: Some(thread) }
    }

    pub fn url(&self) -> String {
        format!("http://{}/content.bin", self.address)
    }

    pub fn https_url(&self) -> String {
        format!("https://{}/content.bin", self.address)
    }

    pub fn connections(&self) -> u64 {
        Counters::get(&self.counters.connections)
    }

    pub fn requests(&self) -> u64 {
        Counters::get(&self.counters.requests)
    }

    pub fn bad_sent(&self) -> u64 {
        Counters::get(&self.counters.bad_sent)
    }

    pub fn good_sent(&self) -> u64 {
        Counters::get(&self.counters.good_sent)
    }

    pub fn pipelined(&self) -> u64 {
        Counters::get(&self.counters.pipelined)
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[derive(Clone)]
struct Setup {
    content: Content,
    behavior: Behavior,
    tls: Option<Arc<rustls::ServerConfig>>,
    service: Option<Arc<ServiceData>>,
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn accept_loop(listener: TcpListener, setup: Setup, counters: Arc<Counters>, stop: Arc<AtomicBool>) {
    let born = Instant::now();
    let served = Arc::new(Mutex::new(0u64));
    let mut handlers = Vec::new();
    while !stop.load(Ordering::SeqCst) && born.elapsed() < FAKE_LIFETIME {
        match listener.accept() {
            Ok((stream, _)) => {
                counters.connections.fetch_add(1, Ordering::SeqCst);
                let (setup, counters, stop, served) = (setup.clone(), counters.clone(), stop.clone(), served.clone());
                handlers.push(std::thread::spawn(move || serve(stream, setup, counters, stop, served)));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    stop.store(true, Ordering::SeqCst);
    for handler in handlers {
        let _ = handler.join();
    }
}

fn serve(tcp: TcpStream, setup: Setup, counters: Arc<Counters>, stop: Arc<AtomicBool>, served: Arc<Mutex<u64>>) {
    tcp.set_nonblocking(false).unwrap();
    tcp.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let _ = tcp.set_nodelay(true);
    let mut stream: Box<dyn ReadWrite> = match &setup.tls {
        Some(config) => Box::new(rustls::StreamOwned::new(rustls::ServerConnection::new(config.clone()).unwrap(), tcp)),
        None => Box::new(tcp),
    };
    let (content, behavior) = (&setup.content, setup.behavior);
    let born = Instant::now();
    let mut input = Vec::new();
    let mut buffer = vec![0u8; 65536];
    let mut hung = false;
    while !stop.load(Ordering::SeqCst) && born.elapsed() < FAKE_LIFETIME {
        match stream.read(&mut buffer) {
            Ok(0) => return,
            Ok(count) => input.extend_from_slice(&buffer[..count]),
            Err(error) if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                continue
            }
            Err(_) => return,
        }
        if hung {
            input.clear();
            continue;
        }
        // Answer every whole request received so far (pipelining).
        for answered in 0..1000 {
            let (request, head_length) = match parse_request(&input, &RequestLimits::default()) {
                Ok(Parsed::Complete { request, head_length }) => (request, head_length),
                Ok(Parsed::Partial) => break,
                Err(_) => return,
            };
            input.drain(..head_length);
            if answered > 0 {
                counters.pipelined.fetch_add(1, Ordering::SeqCst);
            }
            let response = match &setup.service {
                Some(service) => Some(answer_service(&request, content, service, &counters)),
                None => respond(&request, content, behavior, &counters, &served),
            };
            if let Some(response) = response {
                if stream.write_all(&response).is_err() || behavior == Behavior::CutMidBody {
                    return;
                }
                if behavior == Behavior::HangMidBody {
                    hung = true;
                    break;
                }
            }
        }
    }
}

fn head(status: u16, length: usize, extra: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status} X\r\nContent-Length: {length}\r\n{extra}\r\n").into_bytes()
}

/// A chunked response: chunks of uneven sizes, a chunk extension, a trailer.
fn chunked(status: u16, extra: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} X\r\nTransfer-Encoding: chunked\r\n{extra}\r\n").into_bytes();
    for (index, chunk) in body.chunks(7_001).enumerate() {
        out.extend_from_slice(format!("{:x};n={index}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\nX-Checksum: none\r\n\r\n");
    out
}

fn respond(
    request: &tessera::http::Request,
    content: &Content,
    behavior: Behavior,
    counters: &Counters,
    served: &Mutex<u64>,
) -> Option<Vec<u8>> {
    let path = request.path().to_string();
    if matches!(behavior, Behavior::Origin | Behavior::ChunkedOrigin) {
        counters.requests.fetch_add(1, Ordering::SeqCst);
        match path.as_str() {
            // A relative Location, as CDNs send.
            "/moved" => return Some(head(302, 0, "Location: content.bin\r\n")),
            "/loop" => return Some(head(307, 0, "Location: /loop\r\n")),
            "/content.bin" => {}
            _ => return Some(head(404, 0, "")),
        }
        let length = content.bytes.len() as u64;
        // One range at most: like many origins, the fake answers several with the whole content.
        let (status, start, end) = match parse_range(request.range.as_deref(), length, 1) {
            RangeOutcome::Full | RangeOutcome::Multiple(_) => (200, 0, length.saturating_sub(1)),
            RangeOutcome::Partial { start, end } => {
                counters.range_requests.fetch_add(1, Ordering::SeqCst);
                (206, start, end)
            }
            RangeOutcome::Unsatisfiable => return Some(head(416, 0, &format!("Content-Range: bytes */{length}\r\n"))),
        };
        let body = if length == 0 { &[][..] } else { &content.bytes[start as usize..=end as usize] };
        let extra =
            if status == 206 { format!("Content-Range: bytes {start}-{end}/{length}\r\n") } else { String::new() };
        if behavior == Behavior::ChunkedOrigin && request.method != Method::Head {
            counters.good_sent.fetch_add(1, Ordering::SeqCst);
            return Some(chunked(status, &extra, body));
        }
        let mut out = head(status, body.len(), &extra);
        if request.method != Method::Head {
            out.extend_from_slice(body);
        }
        counters.good_sent.fetch_add(1, Ordering::SeqCst);
        return Some(out);
    }
    let prefix = format!("/v1/content/{}/", content.id);
    let Some(rest) = path.strip_prefix(&prefix) else { return Some(head(404, 0, "")) };
    if rest == "hashfile" {
        let mut out = head(200, content.hashfile.len(), "");
        out.extend_from_slice(&content.hashfile);
        return Some(out);
    }
    let Some(index) = rest.strip_prefix("piece/").and_then(|i| i.parse::<u64>().ok()) else {
        return Some(head(404, 0, ""));
    };
    counters.requests.fetch_add(1, Ordering::SeqCst);
    if index >= content.piece_count() {
        return Some(head(404, 0, ""));
    }
    let served_before = {
        let mut served = served.lock().unwrap();
        *served += 1;
        *served - 1
    };
    let piece = content.piece(index).to_vec();
    let lie = match behavior {
        Behavior::Honest | Behavior::Origin | Behavior::ChunkedOrigin | Behavior::Service => false,
        Behavior::Stall => return None,
        Behavior::Slow(delay_ms) => {
            std::thread::sleep(Duration::from_millis(delay_ms));
            false
        }
        Behavior::HasBelow(limit) if index >= limit => return Some(head(404, 0, "")),
        Behavior::HasBelow(_) => false,
        Behavior::LieAfter(good) => served_before >= good,
        Behavior::CutMidBody | Behavior::HangMidBody => {
            counters.bad_sent.fetch_add(1, Ordering::SeqCst);
            let mut out = head(200, piece.len(), "");
            out.extend_from_slice(&piece[..piece.len() / 2]);
            return Some(out);
        }
        Behavior::BitFlip | Behavior::WrongPiece | Behavior::Truncate | Behavior::Overlong | Behavior::Zeros => true,
    };
    let body = if !lie {
        piece
    } else {
        // The lies `tessera load swarm`'s liars tell, from the one implementation.
        let next = content.piece((index + 1) % content.piece_count());
        match behavior {
            Behavior::WrongPiece => lie_body(LieKind::WrongPiece, &piece, next),
            Behavior::Truncate => lie_body(LieKind::ShortBody, &piece, next),
            Behavior::Overlong => [piece.as_slice(), piece.as_slice()].concat(),
            Behavior::Zeros => vec![0; piece.len()],
            _ => lie_body(LieKind::BitFlip, &piece, next),
        }
    };
    if lie {
        counters.bad_sent.fetch_add(1, Ordering::SeqCst);
    } else {
        counters.good_sent.fetch_add(1, Ordering::SeqCst);
    }
    let mut out = head(200, body.len(), "");
    out.extend_from_slice(&body);
    Some(out)
}

fn answer_service(
    request: &tessera::http::Request,
    content: &Content,
    service: &ServiceData,
    counters: &Counters,
) -> Vec<u8> {
    counters.requests.fetch_add(1, Ordering::SeqCst);
    let prefix = format!("/v1/content/{}/", content.id);
    let body = match request.path().strip_prefix(&prefix) {
        Some("manifest") => service.manifest.to_json().into_bytes(),
        Some("hashfile") => content.hashfile.clone(),
        Some("peers") => {
            let peers: Vec<serde_json::Value> = service
                .peers
                .iter()
                .enumerate()
                .map(|(index, address)| serde_json::json!({"peer_id": format!("p{index}"), "address": address.to_string()}))
                .collect();
            serde_json::json!({"content_id": content.id.as_str(), "group": "default", "peers": peers})
                .to_string()
                .into_bytes()
        }
        _ => return head(404, 0, ""),
    };
    let mut out = head(200, body.len(), "");
    out.extend_from_slice(&body);
    out
}

/// A metadata source with canned answers; counts calls.
pub struct FakeMetadata {
    pub manifest: Result<Manifest, MetadataFailure>,
    pub hashfile: Result<Vec<u8>, MetadataFailure>,
    pub peers: Vec<SocketAddr>,
    pub peer_lookups: AtomicU64,
}

impl FakeMetadata {
    pub fn new(content: &Content, sources: Vec<String>, peers: Vec<SocketAddr>) -> FakeMetadata {
        FakeMetadata {
            manifest: Ok(content.manifest(sources)),
            hashfile: Ok(content.hashfile.clone()),
            peers,
            peer_lookups: AtomicU64::new(0),
        }
    }
}

impl MetadataSource for FakeMetadata {
    fn manifest(&self, _: &ContentId) -> Result<Manifest, MetadataFailure> {
        self.manifest.clone()
    }
    fn hashfile(&self, _: &ContentId) -> Result<Vec<u8>, MetadataFailure> {
        self.hashfile.clone()
    }
    fn peers(&self, _: &ContentId, _: &str) -> Result<Vec<SocketAddr>, MetadataFailure> {
        self.peer_lookups.fetch_add(1, Ordering::SeqCst);
        Ok(self.peers.clone())
    }
}
