//! The cache box end to end: a seed `tessera serve` holds published content; a box `tessera
//! serve --upstream` with an empty store fills what devices ask for from it (metadata over TLS
//! from the seed's service, pieces from the seed's piece API), verified, and serves it.

mod fakes;
mod harness;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use fakes::{Behavior, Content, Fake};
use harness::{tessera, Serve};

const WAIT: Duration = Duration::from_secs(20);

/// Publishes `content` on the seed's data dir, 64 KiB pieces (the fakes' piece size), with
/// `extra` flags.
fn publish(data: &Path, content: &Content, extra: &[String]) {
    let file = data.with_extension("bin");
    std::fs::write(&file, &*content.bytes).unwrap();
    let output = tessera()
        .args(["publish", file.to_str().unwrap(), "--id", content.id.as_str(), "--piece-size", "64K", "--data-dir"])
        .arg(data)
        .args(extra)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

/// One `GET` with `Connection: close`: (status, head, body).
fn get(address: &str, target: &str, range: Option<&str>) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let range = range.map(|r| format!("Range: {r}\r\n")).unwrap_or_default();
    write!(stream, "GET {target} HTTP/1.1\r\nHost: box\r\n{range}Connection: close\r\n\r\n").unwrap();
    let mut wire = Vec::new();
    stream.read_to_end(&mut wire).unwrap();
    let split = wire.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head") + 4;
    let head = String::from_utf8_lossy(&wire[..split]).to_string();
    let status = head[9..12].parse().unwrap();
    (status, head, wire[split..].to_vec())
}

/// The sum of the `/metrics` samples whose line starts with `prefix` and contains `label`.
fn metric(address: &str, prefix: &str, label: &str) -> u64 {
    let (_, _, body) = get(address, "/metrics", None);
    String::from_utf8(body)
        .unwrap()
        .lines()
        .filter(|line| line.starts_with(prefix) && line.contains(label))
        .map(|line| line.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// [`metric`] once it reaches `expected`, or its last value after [`WAIT`] (the fill thread
/// publishes its counters just after it answers).
fn metric_settled(address: &str, prefix: &str, expected: u64) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let value = metric(address, prefix, "");
        if value == expected || Instant::now() >= deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `tessera_http_requests_total` with status 200, over the server's workers.
fn ok_responses(address: &str) -> u64 {
    metric(address, "tessera_http_requests_total{", "status=\"200\"")
}

/// A seed holding `content` (published with `extra`), and the flags that make a box fill from it.
fn seed_with(dir: &Path, content: &Content, extra: &[String]) -> (Serve, Vec<String>) {
    let data = dir.join("seed");
    publish(&data, content, extra);
    let seed = Serve::start(&data, 2, &[]);
    let flags = vec![
        "--upstream".to_string(),
        seed.service_url.clone(),
        "--upstream-ca".to_string(),
        data.join("tls/ca.pem").to_str().unwrap().to_string(),
    ];
    (seed, flags)
}

/// A seed holding `content`, and the flags that make a box fill from it.
fn seed(dir: &Path, content: &Content) -> (Serve, Vec<String>) {
    seed_with(dir, content, &[])
}

/// A box on `backend` with an empty store: 16 cold devices at once, then a piece and a range.
fn cold_box_fills_once_and_serves_exact_bytes(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let content = Content::new("cold", 12 * 65536 + 1234);
    let (seed, mut flags) = seed(dir.path(), &content);
    flags.extend(["--upstream-peer".to_string(), seed.data_plane.clone(), "--backend".to_string(), backend.into()]);
    let cache = Serve::start(&dir.path().join("box"), 2, &flags);
    let id = content.id.as_str();

    // 16 devices at once on the cold content: one upstream fetch per piece.
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let address = cache.data_plane.clone();
            let target = format!("/v1/content/{id}");
            std::thread::spawn(move || get(&address, &target, None))
        })
        .collect();
    for client in clients {
        let (status, head, body) = client.join().unwrap();
        assert_eq!(status, 200, "{head}\n{}", cache.log());
        assert!(body == *content.bytes, "a client got other bytes ({} of {})", body.len(), content.bytes.len());
    }
    assert_eq!(ok_responses(&seed.data_plane), content.piece_count(), "the seed served each piece once");
    let length = content.bytes.len() as u64;
    let upstream = metric_settled(&cache.data_plane, "tessera_fill_upstream_bytes_total{kind=\"parent\"}", length);
    assert_eq!(upstream, length, "the box's /metrics counts each verified byte from its parent once");

    let (status, head, body) = get(&cache.data_plane, &format!("/v1/content/{id}/piece/3"), None);
    assert_eq!(status, 200, "{head}");
    assert_eq!(body, content.piece(3));
    let (status, _, body) = get(&cache.data_plane, &format!("/v1/content/{id}"), Some("bytes=200000-330000"));
    assert_eq!(status, 206);
    assert_eq!(body, content.bytes[200_000..=330_000]);
    assert!(!cache.log().contains("banned"), "{}", cache.log());
}

#[test]
fn a_cold_box_on_the_default_backend_fills_once_and_serves_exact_bytes() {
    cold_box_fills_once_and_serves_exact_bytes("auto");
}

#[test]
fn a_cold_box_on_epoll_fills_once_and_serves_exact_bytes() {
    cold_box_fills_once_and_serves_exact_bytes("epoll");
}

#[test]
fn a_cold_range_through_the_box_is_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let content = Content::new("ranged", 8 * 65536);
    let (seed, mut flags) = seed(dir.path(), &content);
    flags.extend(["--upstream-peer".to_string(), seed.data_plane.clone()]);
    let cache = Serve::start(&dir.path().join("box"), 2, &flags);
    let (status, head, body) = get(&cache.data_plane, "/v1/content/ranged", Some("bytes=300000-400000"));
    assert_eq!(status, 206, "{head}\n{}", cache.log());
    assert_eq!(body, content.bytes[300_000..=400_000]);
    let (status, _, body) = get(&cache.data_plane, "/v1/content/ranged/piece/7", None);
    assert_eq!((status, body.as_slice()), (200, content.piece(7)));
}

#[test]
fn a_lying_parent_is_banned_and_the_bytes_stay_exact() {
    let dir = tempfile::tempdir().unwrap();
    let content = Content::new("lied", 10 * 65536);
    let (seed, mut flags) = seed(dir.path(), &content);
    let liar = Fake::start(&content, Behavior::BitFlip);
    for parent in [liar.address.to_string(), seed.data_plane.clone()] {
        flags.extend(["--upstream-peer".to_string(), parent]);
    }
    let cache = Serve::start(&dir.path().join("box"), 2, &flags);

    let (status, head, body) = get(&cache.data_plane, &format!("/v1/content/{}", content.id.as_str()), None);
    assert_eq!(status, 200, "{head}\n{}", cache.log());
    assert!(body == *content.bytes, "other bytes ({} of {})", body.len(), content.bytes.len());
    assert!(liar.bad_sent() >= 1, "the liar was asked");
    let log = cache.log();
    assert!(log.contains("upstream source banned") && log.contains(&liar.address.to_string()), "{log}");
    assert_eq!(metric_settled(&cache.data_plane, "tessera_fill_bans_total ", 1), 1);
    assert!(metric(&cache.data_plane, "tessera_fill_bad_pieces_total ", "") >= 2);
    // A piece it lied about is whole in the box's store: asked again, the box answers it itself.
    let (status, _, body) = get(&cache.data_plane, &format!("/v1/content/{}/piece/0", content.id.as_str()), None);
    assert_eq!((status, body.as_slice()), (200, content.piece(0)));
}

#[test]
fn without_metadata_the_piece_api_is_404_and_whole_content_502() {
    let dir = tempfile::tempdir().unwrap();
    let content = Content::new("known", 65536);
    let (_seed, flags) = seed(dir.path(), &content);
    let cache = Serve::start(&dir.path().join("box"), 2, &flags);
    let (status, _, body) = get(&cache.data_plane, "/v1/content/unknown/piece/0", None);
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    let (status, _, body) = get(&cache.data_plane, "/v1/content/unknown", None);
    assert_eq!(status, 502);
    assert!(String::from_utf8_lossy(&body).contains("Simple mode"), "{}", String::from_utf8_lossy(&body));
}

#[test]
fn without_parents_the_box_fills_from_the_manifests_http_source_by_range() {
    let dir = tempfile::tempdir().unwrap();
    let content = Content::new("origin", 6 * 65536 + 99);
    let origin = Fake::start(&content, Behavior::Origin);
    // The seed only serves the metadata here: the box is given no parent.
    let (_seed, flags) = seed_with(dir.path(), &content, &["--source".to_string(), origin.url()]);
    let cache = Serve::start(&dir.path().join("box"), 2, &flags);
    let (status, head, body) = get(&cache.data_plane, "/v1/content/origin", None);
    assert_eq!(status, 200, "{head}\n{}", cache.log());
    assert!(body == *content.bytes, "other bytes ({} of {})", body.len(), content.bytes.len());
    let ranges = fakes::Counters::get(&origin.counters.range_requests);
    assert_eq!(ranges, content.piece_count(), "one Range request per piece");
    let length = content.bytes.len() as u64;
    assert_eq!(metric_settled(&cache.data_plane, "tessera_fill_upstream_bytes_total{kind=\"origin\"}", length), length);
}

/// A box whose only parent takes `PIECE_DELAY_MS` per piece, one piece at a time, so the whole
/// fill takes several times the box's `pending_timeout_ms` while each piece takes less.
fn a_slow_fill_streams_past_the_pending_timeout(backend: &str) {
    const PIECE_DELAY_MS: u64 = 250;
    let dir = tempfile::tempdir().unwrap();
    let content = Content::new("slow", 8 * 65536 + 777);
    let (_seed, mut flags) = seed(dir.path(), &content);
    let parent = Fake::start(&content, Behavior::Slow(PIECE_DELAY_MS));
    let config = dir.path().join("box.toml");
    let text = "[serve]\npending_timeout_ms = 1000\n[upstream]\nconnections_per_source_max = 1\npipeline_depth = 1\n";
    std::fs::write(&config, text).unwrap();
    flags.extend(["--upstream-peer".to_string(), parent.address.to_string(), "--backend".into(), backend.into()]);
    flags.extend(["--config".to_string(), config.to_str().unwrap().to_string()]);
    let cache = Serve::start(&dir.path().join("box"), 2, &flags);

    let (status, head, body) = get(&cache.data_plane, "/v1/content/slow", None);
    assert_eq!(status, 200, "{head}\n{}", cache.log());
    assert!(head.contains(&format!("Content-Length: {}\r\n", content.bytes.len())), "{head}");
    assert!(head.contains("ETag: "), "the streamed head carries the validators: {head}");
    assert!(body == *content.bytes, "other bytes ({} of {})", body.len(), content.bytes.len());
    assert_eq!(parent.good_sent(), content.piece_count(), "each piece was fetched once");
    // A cold range over several pieces streams the same way.
    let content = Content::new("slow2", 6 * 65536);
    let parent = Fake::start(&content, Behavior::Slow(PIECE_DELAY_MS));
    drop(cache);
    std::fs::create_dir_all(dir.path().join("second")).unwrap();
    let (_seed2, mut flags) = seed(&dir.path().join("second"), &content);
    flags.extend(["--upstream-peer".to_string(), parent.address.to_string(), "--backend".into(), backend.into()]);
    flags.extend(["--config".to_string(), config.to_str().unwrap().to_string()]);
    let cache = Serve::start(&dir.path().join("box2"), 2, &flags);
    let (status, head, body) = get(&cache.data_plane, "/v1/content/slow2", Some("bytes=1000-300000"));
    assert_eq!(status, 206, "{head}\n{}", cache.log());
    assert!(body == content.bytes[1000..=300_000], "other bytes ({} of {})", body.len(), 300_000 - 999);
}

#[test]
fn a_slow_fill_streams_past_the_pending_timeout_on_the_default_backend() {
    a_slow_fill_streams_past_the_pending_timeout("auto");
}

#[test]
fn a_slow_fill_streams_past_the_pending_timeout_on_epoll() {
    a_slow_fill_streams_past_the_pending_timeout("epoll");
}

#[test]
fn a_box_announces_what_it_filled_and_devices_get_it_from_the_box() {
    use tessera::control::client::MetadataClient;
    use tessera::tls::TlsClientOptions;
    let dir = tempfile::tempdir().unwrap();
    let content = Content::new("announced", 5 * 65536 + 321);
    let (seed, mut flags) = seed(dir.path(), &content);
    flags.extend(["--upstream-peer".to_string(), seed.data_plane.clone()]);
    let box_dir = dir.path().join("box");
    let cache = Serve::start(&box_dir, 2, &flags);
    let (status, head, _) = get(&cache.data_plane, "/v1/content/announced", None);
    assert_eq!(status, 200, "{head}\n{}", cache.log());

    // The box's startup announce held nothing; its next timed one is minutes away.
    let ca = box_dir.join("tls/ca.pem");
    let client = MetadataClient::new(TlsClientOptions { ca_file: Some(ca.clone()), ..Default::default() }).unwrap();
    let id = tessera::content::ContentId::parse("announced").unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let peers = client.peers(&cache.service_url, &id, "default", None).unwrap();
        if peers.iter().any(|peer| peer.address == cache.data_plane) {
            break;
        }
        assert!(Instant::now() < deadline, "the box never announced what it filled:\n{}", cache.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = dir.path().join("got.bin");
    let output = tessera()
        .args(["get", "announced", "--service", &cache.service_url, "--json", "--ca"])
        .arg(&ca)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["mode"], "p2p", "{summary}");
    let sources = summary["sources"].as_array().unwrap();
    let from_box = sources.iter().find(|s| s["source"] == cache.data_plane.as_str());
    let from_box = from_box.unwrap_or_else(|| panic!("the box was not used as a peer: {summary}"));
    assert_eq!(from_box["kind"].as_str(), Some("peer"), "{summary}");
    assert!(std::fs::read(&out).unwrap() == *content.bytes, "other bytes");
}

#[test]
fn a_simple_mode_content_is_passed_through_from_its_http_source() {
    let dir = tempfile::tempdir().unwrap();
    let content = Content::new("simple", 3 * 65536 + 10);
    let origin = Fake::start(&content, Behavior::Origin);
    let data = dir.path().join("seed");
    publish(&data, &content, &["--source".to_string(), origin.url(), "--no-store".to_string()]);
    // The hash file no longer verifies against the manifest: Simple mode.
    let hashfile = data.join("catalog/simple.hashfile");
    let mut bytes = std::fs::read(&hashfile).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(&hashfile, bytes).unwrap();
    let seed = Serve::start(&data, 2, &[]);
    let ca = data.join("tls/ca.pem");
    let flags = ["--upstream", &seed.service_url, "--upstream-ca", ca.to_str().unwrap()].map(String::from);
    let cache = Serve::start(&dir.path().join("box"), 2, &flags);

    let (status, head, body) = get(&cache.data_plane, "/v1/content/simple", None);
    assert_eq!(status, 200, "{head}\n{}\n{}", cache.log(), seed.log());
    assert!(head.contains("X-Tessera-Mode: simple; reason="), "{head}");
    assert!(body == *content.bytes, "other bytes ({} of {})", body.len(), content.bytes.len());
    let (status, _, _) = get(&cache.data_plane, "/v1/content/simple/piece/0", None);
    assert_eq!(status, 404, "Simple-mode content is never on the piece API");
    let (_, _, metrics) = get(&cache.data_plane, "/metrics", None);
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(metrics.contains("tessera_store_pieces 0"), "nothing was stored:\n{metrics}");
}

// Simple-mode pass-through: streamed from the origin, bounded, never stored.

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// How the test origin answers `GET|HEAD /content.bin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OriginAnswer {
    /// The content (or the one range asked for), with Content-Length; no Accept-Ranges.
    Bytes,
    /// A head promising the whole length, this many body bytes, then the connection closed.
    CutAt(usize),
    /// This status, empty body.
    Status(u16),
    /// Nothing until [`OriginSeen::release`] is set, then `Bytes`.
    Hold,
}

/// What a test origin's connections report.
#[derive(Default)]
struct OriginSeen {
    requests: AtomicU64,
    /// Bodies it could not finish because the reader left.
    cut_by_peer: AtomicU64,
    /// Lets `Hold` answers go.
    release: AtomicBool,
    /// The `If-Range:` of the last request that had one.
    if_range: std::sync::Mutex<Option<String>>,
}

/// A loopback HTTP origin writing the content straight from memory (a thread per connection:
/// test code).
struct Origin {
    address: std::net::SocketAddr,
    seen: Arc<OriginSeen>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Origin {
    fn start(bytes: Arc<Vec<u8>>, answer: OriginAnswer) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let (seen, stop) = (Arc::new(OriginSeen::default()), Arc::new(AtomicBool::new(false)));
        let (seen_all, stop_seen) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let born = Instant::now();
            let mut handlers = Vec::new();
            while !stop_seen.load(Ordering::SeqCst) && born.elapsed() < Duration::from_secs(120) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                let (bytes, seen) = (bytes.clone(), seen_all.clone());
                handlers.push(std::thread::spawn(move || origin_serve(stream, &bytes, answer, &seen)));
            }
            for handler in handlers {
                let _ = handler.join();
            }
        });
        Origin { address, seen, stop, thread: Some(thread) }
    }

    fn url(&self) -> String {
        format!("http://{}/content.bin", self.address)
    }

    fn requests(&self) -> u64 {
        self.seen.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.seen.release.store(true, Ordering::SeqCst);
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Answers one request on `stream` as `answer` says.
fn origin_serve(mut stream: TcpStream, bytes: &[u8], answer: OriginAnswer, seen: &OriginSeen) {
    use tessera::http::{parse_range, parse_request, Method, Parsed, RangeOutcome, RequestLimits};
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_write_timeout(Some(WAIT)).unwrap();
    let mut input = Vec::new();
    let mut buffer = [0u8; 4096];
    let request = loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(count) => input.extend_from_slice(&buffer[..count]),
        }
        match parse_request(&input, &RequestLimits::default()) {
            Ok(Parsed::Complete { request, .. }) => break request,
            Ok(Parsed::Partial) if input.len() < 16_384 => {}
            _ => return,
        }
    };
    if let Some(tag) = request.conditions().if_range {
        *seen.if_range.lock().unwrap() = Some(tag.to_string());
    }
    seen.requests.fetch_add(1, Ordering::SeqCst);
    let deadline = Instant::now() + WAIT;
    while answer == OriginAnswer::Hold && !seen.release.load(Ordering::SeqCst) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let length = bytes.len() as u64;
    let (status, start, end) = match answer {
        OriginAnswer::Status(status) => (status, 0, 0),
        _ => match parse_range(request.range.as_deref(), length, 1) {
            RangeOutcome::Partial { start, end } => (206, start, end + 1),
            RangeOutcome::Unsatisfiable => (416, 0, 0),
            _ => (200, 0, length),
        },
    };
    let content_range = match status {
        206 => format!("Content-Range: bytes {start}-{}/{length}\r\n", end - 1),
        416 => format!("Content-Range: bytes */{length}\r\n"),
        _ => String::new(),
    };
    let head = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nContent-Type: application/x-test\r\n{content_range}Connection: close\r\n\r\n",
        end - start
    );
    if stream.write_all(head.as_bytes()).is_err() || request.method == Method::Head {
        return;
    }
    let stop_at = match answer {
        OriginAnswer::CutAt(count) => (start + count as u64).min(end),
        _ => end,
    };
    for chunk in bytes[start as usize..stop_at as usize].chunks(64 * 1024) {
        if let Err(error) = stream.write_all(chunk) {
            if matches!(error.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset) {
                seen.cut_by_peer.fetch_add(1, Ordering::SeqCst);
            }
            return;
        }
    }
}

/// A seed whose manifests of `contents` name their `(content, origin URL)` but whose hash files
/// no longer verify (Simple mode), and a box on `backend` with `config` (TOML) over it.
fn simple_box(dir: &Path, contents: &[(&Content, String)], backend: &str, config: &str) -> (Serve, Serve) {
    let data = dir.join("seed");
    for (content, url) in contents {
        publish(&data, content, &["--source".to_string(), url.clone(), "--no-store".to_string()]);
        let hashfile = data.join(format!("catalog/{}.hashfile", content.id.as_str()));
        let mut bytes = std::fs::read(&hashfile).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&hashfile, bytes).unwrap();
    }
    let seed = Serve::start(&data, 1, &[]);
    let config_path = dir.join("box.toml");
    std::fs::write(&config_path, config).unwrap();
    let ca = data.join("tls/ca.pem");
    let flags = [
        "--upstream",
        &seed.service_url,
        "--upstream-ca",
        ca.to_str().unwrap(),
        "--backend",
        backend,
        "--config",
        config_path.to_str().unwrap(),
    ]
    .map(String::from);
    let cache = Serve::start(&dir.join("box"), 2, &flags);
    (seed, cache)
}

/// One request with `Connection: close`, reading the whole answer: (status, head, body).
fn ask(address: &str, method: &str, target: &str, range: Option<&str>) -> (u16, String, Vec<u8>) {
    let fields = range.map(|r| format!("Range: {r}\r\n")).unwrap_or_default();
    ask_with(address, method, target, &fields)
}

/// [`ask`] with header `fields` (each line ending in CRLF).
fn ask_with(address: &str, method: &str, target: &str, fields: &str) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(stream, "{method} {target} HTTP/1.1\r\nHost: box\r\n{fields}Connection: close\r\n\r\n").unwrap();
    let mut wire = Vec::new();
    stream.read_to_end(&mut wire).unwrap();
    let split = wire.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head") + 4;
    let head = String::from_utf8_lossy(&wire[..split]).to_string();
    (head[9..12].parse().unwrap(), head, wire[split..].to_vec())
}

/// Whether `head` has a field `name: value`.
fn has_field(head: &str, name: &str, value: &str) -> bool {
    head.lines().any(|line| line.split_once(": ").is_some_and(|(n, v)| n.eq_ignore_ascii_case(name) && v == value))
}

/// 100 MiB in Simple mode through a box on `backend`: whole, a range, a HEAD and an unsatisfiable
/// range, each the origin's answer, exact and marked Simple; nothing stored, the piece API 404,
/// the box never listed as a peer of it.
fn a_large_simple_mode_content_streams_through_the_box(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let content = Content::new("big", 100 << 20);
    let origin = Origin::start(content.bytes.clone(), OriginAnswer::Bytes);
    let (_seed, cache) = simple_box(dir.path(), &[(&content, origin.url())], backend, "");
    let length = content.bytes.len();

    let (status, head, body) = ask(&cache.data_plane, "GET", "/v1/content/big", None);
    assert_eq!(status, 200, "{head}\n{}", cache.log());
    assert!(head.contains("X-Tessera-Mode: simple; reason="), "{head}");
    assert!(has_field(&head, "Content-Length", &length.to_string()), "{head}");
    assert!(has_field(&head, "Content-Type", "application/x-test"), "the origin's type: {head}");
    assert!(!head.contains("Accept-Ranges"), "the origin did not say it takes ranges: {head}");
    assert!(body.len() == length && body == *content.bytes, "other bytes ({} of {length})", body.len());
    drop(body);

    let fields = "Range: bytes=70000000-70999999\r\nIf-Range: \"v1\"\r\n";
    let (status, head, body) = ask_with(&cache.data_plane, "GET", "/v1/content/big", fields);
    assert_eq!(status, 206, "{head}");
    let if_range = origin.seen.if_range.lock().unwrap().clone();
    assert_eq!(if_range.as_deref(), Some("\"v1\""), "If-Range goes with the range");
    assert!(has_field(&head, "Content-Range", &format!("bytes 70000000-70999999/{length}")), "{head}");
    assert!(head.contains("X-Tessera-Mode: simple"), "{head}");
    assert!(body == content.bytes[70_000_000..71_000_000], "other bytes ({} of 1000000)", body.len());

    let (status, head, body) = ask(&cache.data_plane, "HEAD", "/v1/content/big", None);
    assert_eq!(status, 200, "{head}");
    assert!(has_field(&head, "Content-Length", &length.to_string()) && head.contains("X-Tessera-Mode: simple"));
    assert!(body.is_empty(), "a HEAD has no body");
    let (status, head, _) = ask(&cache.data_plane, "GET", "/v1/content/big", Some("bytes=200000000-"));
    assert_eq!(status, 416, "the origin's answer: {head}");
    assert!(has_field(&head, "Content-Range", &format!("bytes */{length}")), "{head}");
    assert_eq!(origin.requests(), 4, "each request went to the origin once");

    let (status, _, _) = get(&cache.data_plane, "/v1/content/big/piece/0", None);
    assert_eq!(status, 404, "Simple-mode content is never on the piece API");
    assert_eq!(metric(&cache.data_plane, "tessera_store_pieces ", ""), 0, "nothing was stored");
    assert_eq!(metric_settled(&cache.data_plane, "tessera_fill_pass_throughs_total ", 4), 4);
    let passed = metric_settled(&cache.data_plane, "tessera_fill_pass_through_bytes_total ", length as u64 + 1_000_000);
    assert_eq!(passed, length as u64 + 1_000_000);
    use tessera::control::client::MetadataClient;
    use tessera::tls::TlsClientOptions;
    let ca = dir.path().join("box/tls/ca.pem");
    let client = MetadataClient::new(TlsClientOptions { ca_file: Some(ca), ..Default::default() }).unwrap();
    let peers = client.peers(&cache.service_url, &content.id, "default", None).unwrap_or_default();
    assert!(peers.iter().all(|peer| peer.address != cache.data_plane), "the box announced it: {peers:?}");
}

#[test]
fn a_large_simple_mode_content_streams_through_the_box_on_the_default_backend() {
    a_large_simple_mode_content_streams_through_the_box("auto");
}

#[test]
fn a_large_simple_mode_content_streams_through_the_box_on_epoll() {
    a_large_simple_mode_content_streams_through_the_box("epoll");
}

#[test]
fn an_origin_that_ends_the_body_early_leaves_the_device_an_incomplete_transfer() {
    let dir = tempfile::tempdir().unwrap();
    let content = Content::new("cut", 4 << 20);
    let origin = Origin::start(content.bytes.clone(), OriginAnswer::CutAt(1_500_000));
    let (_seed, cache) = simple_box(dir.path(), &[(&content, origin.url())], "auto", "");
    let out = dir.path().join("cut.bin");
    let url = format!("http://{}/v1/content/cut", cache.data_plane);
    let output = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "-o"])
        .arg(&out)
        .arg(&url)
        .output()
        .unwrap();
    // curl: 18 "transfer closed with outstanding read data remaining".
    assert_eq!(output.status.code(), Some(18), "{}\n{}", String::from_utf8_lossy(&output.stderr), cache.log());
    let got = std::fs::read(&out).unwrap();
    assert!(got.len() < content.bytes.len() && got == content.bytes[..got.len()], "{} bytes, not a prefix", got.len());
    assert_eq!(metric_settled(&cache.data_plane, "tessera_fill_pass_throughs_failed_total ", 1), 1);
}

#[test]
fn an_origin_error_or_an_unreachable_origin_is_a_502_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let failing = Content::new("failing", 100_000);
    let gone = Content::new("gone", 100_000);
    let origin = Origin::start(failing.bytes.clone(), OriginAnswer::Status(500));
    // A port nothing listens on (bound, then closed).
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let contents = [(&failing, origin.url()), (&gone, format!("http://{closed}/content.bin"))];
    let (_seed, cache) = simple_box(dir.path(), &contents, "auto", "");

    let (status, head, body) = ask(&cache.data_plane, "GET", "/v1/content/failing", None);
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 502, "{head}{text}");
    assert!(text.contains(&origin.url()) && text.contains("500"), "names the origin and its status: {text}");
    assert!(head.contains("X-Tessera-Mode: simple; reason="), "{head}");
    let (status, head, body) = ask(&cache.data_plane, "GET", "/v1/content/gone", Some("bytes=0-9"));
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 502, "{head}{text}");
    assert!(text.contains(&closed.to_string()), "names the origin: {text}");
    // A HEAD gets the same answer without its body.
    let (status, _, body) = ask(&cache.data_plane, "HEAD", "/v1/content/failing", None);
    assert_eq!((status, body.len()), (502, 0));
}

#[test]
fn a_pass_through_past_the_limit_gets_503_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let content = Content::new("held", 300_000);
    let origin = Origin::start(content.bytes.clone(), OriginAnswer::Hold);
    // The smallest buffer too: one chunk at a time, each taken before the next is read.
    let config = "[upstream]\npass_throughs_max = 1\nbusy_retry_after_s = 7\npass_through_buffer_bytes = 1\n";
    let (_seed, cache) = simple_box(dir.path(), &[(&content, origin.url())], "auto", config);
    let address = cache.data_plane.clone();
    let first = std::thread::spawn(move || ask(&address, "GET", "/v1/content/held", None));
    let deadline = Instant::now() + WAIT;
    while origin.requests() == 0 {
        assert!(Instant::now() < deadline, "the first pass-through never reached the origin:\n{}", cache.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    let (status, head, _) = ask(&cache.data_plane, "GET", "/v1/content/held", None);
    assert_eq!(status, 503, "{head}");
    assert!(has_field(&head, "Retry-After", "7"), "{head}");
    origin.seen.release.store(true, Ordering::SeqCst);
    let (status, head, body) = first.join().unwrap();
    assert_eq!(status, 200, "{head}");
    assert!(body == *content.bytes, "the first one is whole once the origin answers");
    assert_eq!(metric_settled(&cache.data_plane, "tessera_fill_pass_throughs_busy_total ", 1), 1);
}

/// A device that leaves in the middle of a 64 MiB pass-through: the box closes the origin's
/// connection (the origin cannot finish writing), frees the slot, and keeps serving others.
fn a_device_that_leaves_mid_stream_frees_its_pass_through(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let content = Content::new("left", 64 << 20);
    let origin = Origin::start(content.bytes.clone(), OriginAnswer::Bytes);
    let (_seed, cache) = simple_box(dir.path(), &[(&content, origin.url())], backend, "");
    let mut stream = TcpStream::connect(&cache.data_plane).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(stream, "GET /v1/content/left HTTP/1.1\r\nHost: box\r\n\r\n").unwrap();
    let mut taken = vec![0u8; 1 << 20];
    stream.read_exact(&mut taken).unwrap();
    assert!(taken.starts_with(b"HTTP/1.1 200 "), "{}", String::from_utf8_lossy(&taken[..200]));
    drop(stream);

    let deadline = Instant::now() + WAIT;
    while origin.seen.cut_by_peer.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the origin's connection stayed open:\n{}", cache.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(metric_settled(&cache.data_plane, "tessera_fill_pass_throughs ", 0), 0, "the slot is free");
    let (status, head, body) = ask(&cache.data_plane, "GET", "/v1/content/left", Some("bytes=-100000"));
    assert_eq!(status, 206, "{head}");
    assert!(body == content.bytes[content.bytes.len() - 100_000..], "other bytes");
}

#[test]
fn a_device_that_leaves_mid_stream_frees_its_pass_through_on_the_default_backend() {
    a_device_that_leaves_mid_stream_frees_its_pass_through("auto");
}

#[test]
fn a_device_that_leaves_mid_stream_frees_its_pass_through_on_epoll() {
    a_device_that_leaves_mid_stream_frees_its_pass_through("epoll");
}
