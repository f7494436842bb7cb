//! The data plane end to end: a real server on loopback, for each backend this machine runs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera::appliance::Appliance;
use tessera::catalog::Catalog;
use tessera::config::{BackendChoice, Config};
use tessera::content::{ContentId, PieceSize};
use tessera::dataplane::{Server, ServerHandle};
use tessera::publish::{publish, PublishRequest};
use tessera::store::Store;

const SMALL_PIECE: usize = 64 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The backends to test: epoll always, io_uring where the kernel allows it.
fn backends() -> Vec<BackendChoice> {
    let mut backends = vec![BackendChoice::Epoll];
    match tessera::dataplane::choose_backend(BackendChoice::Uring) {
        Ok(_) => backends.push(BackendChoice::Uring),
        Err(error) => eprintln!("io_uring backend not tested on this machine: {error}"),
    }
    backends
}

struct Published {
    dir: tempfile::TempDir,
    /// `small`: 3.5 pieces of 64 KiB. `big`: 2.5 pieces of 1 MiB.
    small: Vec<u8>,
    big: Vec<u8>,
}

fn pattern(length: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    (0..length)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 56) as u8
        })
        .collect()
}

fn publish_file(dir: &Path, id: &str, bytes: &[u8], piece_size: usize, store: Option<&Store>) {
    let file = dir.join(format!("{id}.src"));
    std::fs::write(&file, bytes).unwrap();
    let request = PublishRequest {
        file,
        id: ContentId::parse(id).unwrap(),
        piece_size: PieceSize::new(piece_size as u32).unwrap(),
        sources: vec![],
        hashfile_urls: vec![],
        whole_sha256: false,
    };
    publish(&request, &Catalog::new(dir.join("data/catalog")), store, &mut |_| {}).unwrap();
}

fn published() -> Published {
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(dir.path(), BackendChoice::Epoll);
    let store = Store::open(&config.store_dir(), &config.store).unwrap();
    let small = pattern(SMALL_PIECE * 7 / 2, 1);
    let big = pattern((1 << 20) * 5 / 2, 2);
    publish_file(dir.path(), "small", &small, SMALL_PIECE, Some(&store));
    publish_file(dir.path(), "big", &big, 1 << 20, Some(&store));
    // Bytes of its own: the store is content-addressed, so small's pieces would serve a copy of small.
    publish_file(dir.path(), "meta-only", &pattern(SMALL_PIECE * 7 / 2, 3), SMALL_PIECE, None);
    Published { dir, small, big }
}

fn config_for(root: &Path, backend: BackendChoice) -> Config {
    let mut config = Config { data_dir: root.join("data"), ..Config::default() };
    config.serve.listen = "127.0.0.1:0".into();
    config.serve.workers = 2;
    config.serve.backend = backend;
    config.serve.header_timeout_ms = 400;
    config
}

/// Runs `test` against a fresh server on each backend, then checks the server stops cleanly.
fn each_backend(published: &Published, test: impl Fn(BackendChoice, &ServerHandle)) {
    let store = open_store(published);
    for backend in backends() {
        let server = Server::start_with_store(&config_for(published.dir.path(), backend), store.clone()).unwrap();
        test(backend, &server);
        server.shutdown().unwrap();
    }
}

#[derive(Debug)]
struct Response {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(address: SocketAddr) -> Client {
        let stream = TcpStream::connect(address).unwrap();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        Client { reader: BufReader::new(stream) }
    }

    fn send(&mut self, text: &str) {
        self.reader.get_mut().write_all(text.as_bytes()).unwrap();
    }

    /// Reads one response; `head_request` when it answers a HEAD (no body follows).
    fn read(&mut self, head_request: bool) -> Response {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            let read = self.reader.read_line(&mut line).unwrap();
            assert!(read > 0, "connection closed mid-head: {head:?}");
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        let mut response = Response { status, head, body: Vec::new() };
        let length: usize = response.header("content-length").unwrap().parse().unwrap();
        if !head_request {
            response.body = vec![0; length];
            self.reader.read_exact(&mut response.body).unwrap();
        }
        response
    }

    fn get(&mut self, path: &str, headers: &str) -> Response {
        self.send(&format!("GET {path} HTTP/1.1\r\nHost: t\r\n{headers}\r\n"));
        self.read(false)
    }

    /// Whether the server closed the connection (EOF or reset) within the read timeout.
    fn closed_by_server(&mut self) -> bool {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => true,
            Err(error) => error.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

#[test]
fn every_piece_is_the_published_bytes() {
    let published = published();
    each_backend(&published, |backend, server| {
        let mut client = Client::connect(server.local_addr());
        for (id, bytes, piece) in [("small", &published.small, SMALL_PIECE), ("big", &published.big, 1 << 20)] {
            for (index, expected) in bytes.chunks(piece).enumerate() {
                let response = client.get(&format!("/v1/content/{id}/piece/{index}"), "");
                assert_eq!(response.status, 200, "{backend:?} {id} {index}");
                assert!(response.body == expected, "{backend:?}: piece {index} of {id} differs");
            }
        }
        let whole = client.get("/v1/content/big", "");
        assert_eq!(whole.status, 200);
        assert!(whole.body == published.big, "{backend:?}: whole content differs");
    });
}

#[test]
fn ranges_at_piece_boundaries_and_across_pieces() {
    let published = published();
    let length = published.small.len();
    let p = SMALL_PIECE;
    let ranges = [(0, p - 1), (p - 1, p), (p, 2 * p - 1), (p - 10, 3 * p + 10), (0, length - 1), (3 * p, length - 1)];
    each_backend(&published, |backend, server| {
        let mut client = Client::connect(server.local_addr());
        for (start, end) in ranges {
            let response = client.get("/v1/content/small", &format!("Range: bytes={start}-{end}\r\n"));
            assert_eq!(response.status, 206, "{backend:?} {start}-{end}");
            assert!(response.body == published.small[start..=end], "{backend:?}: bytes {start}-{end} differ");
            assert_eq!(response.header("content-range"), Some(format!("bytes {start}-{end}/{length}").as_str()));
        }
        let suffix = client.get("/v1/content/big", "Range: bytes=-1000\r\n");
        assert!(suffix.status == 206 && suffix.body == published.big[published.big.len() - 1000..]);
        let beyond = client.get("/v1/content/small", &format!("Range: bytes={length}-\r\n"));
        assert_eq!(beyond.status, 416);
        assert_eq!(beyond.header("content-range"), Some(format!("bytes */{length}").as_str()));
        let missing = client.get("/v1/content/meta-only", "Range: bytes=0-99\r\n");
        assert_eq!(missing.status, 503, "{backend:?}: catalog entry without stored pieces");
    });
}

#[test]
fn head_answers_lengths_without_bodies() {
    let published = published();
    each_backend(&published, |backend, server| {
        let mut client = Client::connect(server.local_addr());
        client.send("HEAD /v1/content/big HTTP/1.1\r\n\r\n");
        let head = client.read(true);
        assert_eq!(head.status, 200);
        assert_eq!(head.header("content-length"), Some(published.big.len().to_string().as_str()));
        client.send("HEAD /v1/content/small HTTP/1.1\r\nRange: bytes=10-19\r\n\r\n");
        let head = client.read(true);
        assert_eq!((head.status, head.header("content-length")), (206, Some("10")));
        // Had a body followed either HEAD, this would read its bytes instead of a status line.
        let after = client.get("/healthz", "");
        assert_eq!((after.status, after.body.as_slice()), (200, b"ok\n".as_slice()), "{backend:?}");
    });
}

#[test]
fn unknown_content_and_piece_past_the_end_are_404() {
    let published = published();
    each_backend(&published, |backend, server| {
        let mut client = Client::connect(server.local_addr());
        assert_eq!(client.get("/v1/content/nope", "").status, 404);
        assert_eq!(client.get("/v1/content/nope/piece/0", "").status, 404);
        assert_eq!(client.get("/v1/content/small/piece/4", "").status, 404);
        assert_eq!(client.get("/v1/content/big/piece/3", "").status, 404);
        let hashfile = client.get("/v1/content/big/hashfile", "");
        assert_eq!(hashfile.status, 200, "{backend:?}");
        assert!(hashfile.body.starts_with(b"TSRHASH\0"), "{backend:?}");
    });
}

#[test]
fn bad_ids_are_400_and_the_connection_keeps_working() {
    let published = published();
    let overlong = "x".repeat(200);
    each_backend(&published, |backend, server| {
        let mut client = Client::connect(server.local_addr());
        for id in ["..", "%2e%2e", "%2E%2E", &overlong, "a%2fb"] {
            let response = client.get(&format!("/v1/content/{id}/piece/0"), "");
            assert_eq!(response.status, 400, "{backend:?} {id}");
        }
        assert_eq!(client.get("/v1/content/../piece/0", "").status, 400);
        let mut other = Client::connect(server.local_addr());
        other.send("DELETE /v1/content/small HTTP/1.1\r\n\r\n");
        assert_eq!(other.read(false).status, 405);
        assert_eq!(client.get("/v1/content/small/piece/0", "").status, 200);
    });
}

#[test]
fn slowloris_is_closed_after_the_header_timeout_while_others_are_served() {
    let published = published();
    each_backend(&published, |backend, server| {
        let mut slow = Client::connect(server.local_addr());
        let mut silent = Client::connect(server.local_addr());
        let mut normal = Client::connect(server.local_addr());
        slow.send("GET /v1/content/small/piece/0 HTTP/1.1\r\n");
        let started = Instant::now();
        let mut slow_closed = false;
        // Trickle a header byte every 50 ms and keep a normal client busy meanwhile.
        while started.elapsed() < Duration::from_secs(5) {
            assert_eq!(normal.get("/v1/content/small/piece/1", "").status, 200);
            if let Err(error) = slow.reader.get_mut().write_all(b"X") {
                eprintln!("{backend:?}: slow client write failed after {:?}: {error}", started.elapsed());
                slow_closed = true;
                break;
            }
            slow.reader.get_mut().set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            let mut byte = [0u8; 512];
            match slow.reader.get_mut().read(&mut byte) {
                Ok(read) => {
                    eprintln!(
                        "{backend:?}: slow client read {:?} after {:?}",
                        String::from_utf8_lossy(&byte[..read]),
                        started.elapsed()
                    );
                    // A 408 or EOF: the server gave up on the head.
                    slow_closed = true;
                    break;
                }
                // EINTR: the io_uring probe's ring teardown may interrupt this thread's read.
                Err(error)
                    if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted) => {}
                Err(error) => {
                    eprintln!("{backend:?}: slow client read failed after {:?}: {error}", started.elapsed());
                    slow_closed = true;
                    break;
                }
            }
        }
        assert!(slow_closed, "{backend:?}: slowloris connection still open after 5 s");
        assert!(started.elapsed() >= Duration::from_millis(300), "{backend:?}: closed before the header timeout");
        assert!(silent.closed_by_server(), "{backend:?}: a connection that sends nothing is closed too");
        assert_eq!(normal.get("/healthz", "").status, 200);
    });
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let published = published();
    each_backend(&published, |backend, server| {
        let mut client = Client::connect(server.local_addr());
        let order = [3usize, 0, 2, 1, 0, 3, 1];
        let mut batch = String::new();
        for index in order {
            batch.push_str(&format!("GET /v1/content/small/piece/{index} HTTP/1.1\r\n\r\n"));
        }
        batch.push_str("GET /v1/content/nope HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n");
        client.send(&batch);
        for index in order {
            let response = client.read(false);
            let start = index * SMALL_PIECE;
            let end = (start + SMALL_PIECE).min(published.small.len());
            assert!(response.status == 200 && response.body == published.small[start..end], "{backend:?} {index}");
        }
        assert_eq!(client.read(false).status, 404);
        let last = client.read(false);
        assert_eq!((last.status, last.header("connection")), (200, Some("close")));
        assert!(client.closed_by_server(), "{backend:?}: Connection: close is honoured");
    });
}

#[test]
fn http10_closes_unless_kept_alive() {
    let published = published();
    each_backend(&published, |backend, server| {
        let mut client = Client::connect(server.local_addr());
        client.send("GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert_eq!(client.read(false).header("connection"), Some("keep-alive"));
        client.send("GET /v1/content/small/piece/3 HTTP/1.0\r\n\r\n");
        let response = client.read(false);
        assert!(response.status == 200 && response.body == published.small[3 * SMALL_PIECE..]);
        assert!(client.closed_by_server(), "{backend:?}");
    });
}

#[test]
fn metrics_count_requests_and_bytes() {
    let published = published();
    each_backend(&published, |backend, server| {
        let mut client = Client::connect(server.local_addr());
        client.get("/v1/content/big/piece/0", "");
        client.get("/v1/content/nope", "");
        let metrics = String::from_utf8(client.get("/metrics", "").body).unwrap();
        let total = |prefix: &str| -> u64 {
            metrics
                .lines()
                .filter(|l| l.starts_with(prefix))
                .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
                .sum()
        };
        assert!(total("tessera_http_sent_bytes_total") >= 1 << 20, "{metrics}");
        assert_eq!(total("tessera_connections_open"), 1, "{metrics}");
        assert!(metrics.contains("code=\"404\"} 1"), "{metrics}");
        assert_eq!(server.metrics().requests_with_status(200), 2, "{backend:?}: the piece and this scrape");
    });
}

#[test]
fn starts_on_an_empty_missing_data_dir() {
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config_for(dir.path(), backend);
        config.data_dir = dir.path().join("not/yet/there");
        let server = Server::start(&config).unwrap();
        assert!(config.data_dir.join("store").is_dir());
        assert_eq!(Client::connect(server.local_addr()).get("/healthz", "").status, 200);
        server.shutdown().unwrap();
    }
}

#[test]
fn shutdown_finishes_the_response_in_flight() {
    let published = published();
    for backend in backends() {
        let server = Server::start(&config_for(published.dir.path(), backend)).unwrap();
        let mut client = Client::connect(server.local_addr());
        client.send("GET /v1/content/big HTTP/1.1\r\n\r\n");
        // Read only the head, so most of the body is still in flight when shutdown starts.
        let mut first = [0u8; 64];
        client.reader.read_exact(&mut first).unwrap();
        let stopper = std::thread::spawn(move || server.shutdown());
        std::thread::sleep(Duration::from_millis(100));
        let mut rest = Vec::new();
        client.reader.read_to_end(&mut rest).unwrap();
        let wire = [&first[..], &rest].concat();
        let split = wire.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(wire[split..] == published.big, "{backend:?}: body cut short by shutdown");
        stopper.join().unwrap().unwrap();
    }
}

/// Starts `tessera serve` on `listen` with one worker; its log lines arrive on the receiver.
fn spawn_serve(
    listen: &str,
    backend: &str,
    data_dir: &Path,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["serve", "--listen", listen, "--service-listen", "127.0.0.1:0", "--workers", "1"])
        .args(["--backend", backend, "--data-dir"])
        .arg(data_dir)
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// Reads log lines until the data plane's listening line; returns its address and the log so far.
fn wait_listening(child: &mut std::process::Child, lines: &std::sync::mpsc::Receiver<String>) -> (SocketAddr, String) {
    let mut log = String::new();
    while let Ok(line) = lines.recv_timeout(IO_TIMEOUT) {
        log.push_str(&line);
        log.push('\n');
        if line.contains("data plane listening") {
            let address = line.split_whitespace().find_map(|w| w.strip_prefix("address=")).map(|a| a.parse().unwrap());
            return (address.unwrap(), log);
        }
    }
    let _ = child.kill();
    panic!("no listening line from tessera serve:\n{log}");
}

/// Waits (at most `IO_TIMEOUT`) for `child` to exit.
fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        if let Some(exit) = child.try_wait().unwrap() {
            return exit;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tessera serve still running after {IO_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_second_serve_on_a_served_address_fails_and_the_first_keeps_every_request() {
    let published = published();
    for backend in backends() {
        let name = if backend == BackendChoice::Uring { "uring" } else { "epoll" };
        let (mut first, first_lines) = spawn_serve("127.0.0.1:0", name, &published.dir.path().join("data"));
        let (address, _) = wait_listening(&mut first, &first_lines);
        let other_data = tempfile::tempdir().unwrap();
        let (mut second, second_lines) = spawn_serve(&address.to_string(), name, other_data.path());
        let exit = wait_exit(&mut second);
        let log: Vec<String> = second_lines.iter().collect(); // ends at the exited child's EOF
        assert!(!exit.success(), "{backend:?}: the second serve started on {address}: {log:?}");
        assert!(log.iter().any(|l| l.contains(&address.to_string())), "{backend:?}: error names no address: {log:?}");
        // Every connection reaches the first process (a shared group would send some elsewhere).
        for _ in 0..20 {
            assert_eq!(Client::connect(address).get("/v1/content/small/piece/0", "").status, 200, "{backend:?}");
        }
        let status = std::process::Command::new("kill").args(["-TERM", &first.id().to_string()]).status().unwrap();
        assert!(status.success());
        assert!(wait_exit(&mut first).success(), "{backend:?}");
    }
}

#[test]
fn sigterm_exits_cleanly() {
    let published = published();
    for backend in backends() {
        let name = if backend == BackendChoice::Uring { "uring" } else { "epoll" };
        let (mut child, lines) = spawn_serve("127.0.0.1:0", name, &published.dir.path().join("data"));
        let (address, log) = wait_listening(&mut child, &lines);
        assert!(log.contains(&format!("backend=\"{name}\"")) || log.contains(&format!("backend={name}")), "{log}");
        assert_eq!(Client::connect(address).get("/v1/content/small/piece/0", "").status, 200);
        let status = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let exit = wait_exit(&mut child);
        assert!(exit.success(), "{backend:?}: exit status {exit:?}");
    }
}

#[test]
fn zero_copy_sends_deliver_the_same_bytes() {
    let published = published();
    for backend in backends() {
        let mut config = config_for(published.dir.path(), backend);
        config.serve.send_zc_bytes_min = 1;
        // A tiny pending limit exercises the pause-until-notified path too.
        config.serve.send_zc_pending_max = 1;
        let server = Server::start(&config).unwrap();
        let mut client = Client::connect(server.local_addr());
        let mut batch = String::new();
        for index in 0..3 {
            batch.push_str(&format!("GET /v1/content/big/piece/{index} HTTP/1.1\r\n\r\n"));
        }
        batch.push_str("GET /v1/content/big HTTP/1.1\r\nRange: bytes=1000-2100000\r\n\r\n");
        client.send(&batch);
        for index in 0..3 {
            let response = client.read(false);
            let start = index << 20;
            let end = (start + (1 << 20)).min(published.big.len());
            assert!(response.status == 200 && response.body == published.big[start..end], "{backend:?} {index}");
        }
        let range = client.read(false);
        assert!(range.status == 206 && range.body == published.big[1000..=2_100_000], "{backend:?} range");
        if backend == BackendChoice::Uring && tessera::io::uring::zero_copy_supported() {
            assert!(server.metrics().zero_copy_sends() > 0, "zero-copy sends were used");
        }
        server.shutdown().unwrap();
    }
}

/// Stored slices at or above `send_file_bytes_min` go by `sendfile` (with at least
/// `send_file_connections_min` connections open), smaller ones by copy, and a client reading
/// behind (socket buffers full) gets every byte in order either way.
#[test]
fn file_sends_deliver_the_same_bytes_and_copies_stay_below_the_thresholds() {
    let published = published();
    let store = open_store(&published);
    // (send_file_bytes_min, send_file_connections_min, whether sendfile is used with one client)
    for (file_bytes_min, connections_min, file_sends_expected) in
        [(SMALL_PIECE as u64 + 1, 0, true), (0, 0, false), (16384, 2, false)]
    {
        for backend in backends() {
            let mut config = config_for(published.dir.path(), backend);
            config.serve.send_file_bytes_min = file_bytes_min;
            config.serve.send_file_connections_min = connections_min;
            let server = Server::start_with_store(&config, store.clone()).unwrap();
            let mut client = Client::connect(server.local_addr());
            let mut batch = String::new();
            for index in 0..3 {
                batch.push_str(&format!("GET /v1/content/big/piece/{index} HTTP/1.1\r\n\r\n"));
                batch.push_str(&format!("GET /v1/content/small/piece/{index} HTTP/1.1\r\n\r\n"));
            }
            batch.push_str("GET /v1/content/big HTTP/1.1\r\nRange: bytes=1000-2100000\r\n\r\n");
            batch.push_str("GET /v1/content/big HTTP/1.1\r\nRange: bytes=0-9,100-1048675\r\n\r\n");
            batch.push_str("HEAD /v1/content/big/piece/1 HTTP/1.1\r\n\r\n");
            client.send(&batch);
            let case = format!("{backend:?}, send_file_bytes_min {file_bytes_min}, connections_min {connections_min}");
            for index in 0..3 {
                let response = client.read(false);
                let start = index << 20;
                let end = (start + (1 << 20)).min(published.big.len());
                assert!(response.status == 200 && response.body == published.big[start..end], "{case}: big {index}");
                let response = client.read(false);
                let start = index * SMALL_PIECE;
                let end = (start + SMALL_PIECE).min(published.small.len());
                assert!(
                    response.status == 200 && response.body == published.small[start..end],
                    "{case}: small {index}"
                );
            }
            let range = client.read(false);
            assert!(range.status == 206 && range.body == published.big[1000..=2_100_000], "{case}: range");
            let multipart = client.read(false);
            assert_eq!(multipart.status, 206, "{case}");
            let parts = multipart_parts(field(&multipart.head, "content-type").unwrap(), &multipart.body);
            assert!(parts.len() == 2 && parts[0].1 == published.big[..10], "{case}: first part");
            assert!(parts[1].1 == published.big[100..=1_048_675], "{case}: second part");
            let head = client.read(true);
            assert!(head.status == 200 && head.body.is_empty(), "{case}: HEAD");
            assert_eq!(server.metrics().file_sends() > 0, file_sends_expected, "{case}: sendfile used");
            server.shutdown().unwrap();
        }
    }
}

/// While slices go by `sendfile`, a connection hands the kernel at most
/// `send_file_bytes_per_turn_max` per turn: with a 4 KiB share, a 1 MiB piece takes at least
/// 256 calls, and pieces arrive whole.
#[test]
fn file_sends_hand_the_kernel_one_share_per_turn() {
    let published = published();
    let store = open_store(&published);
    for backend in backends() {
        let mut config = config_for(published.dir.path(), backend);
        config.serve.send_file_bytes_min = 16384;
        config.serve.send_file_connections_min = 0;
        config.serve.send_file_bytes_per_turn_max = 4096;
        let server = Server::start_with_store(&config, store.clone()).unwrap();
        let mut client = Client::connect(server.local_addr());
        // The worker counts a call after it returns, so the client can hold the last bytes of
        // piece 0 before they are counted; once piece 1 arrives, every call of piece 0 has been.
        for index in 0..2 {
            client.send(&format!("GET /v1/content/big/piece/{index} HTTP/1.1\r\n\r\n"));
            let response = client.read(false);
            let piece = &published.big[index << 20..(index + 1) << 20];
            assert!(response.status == 200 && response.body == piece, "{backend:?}: piece {index}");
        }
        let calls = server.metrics().file_sends();
        // Piece 0 alone took 256; handed whole, both pieces take a few calls.
        assert!(calls >= (1 << 20) / 4096, "{backend:?}: {calls} sendfile calls for two 1 MiB pieces in 4 KiB shares");
        server.shutdown().unwrap();
    }
}

/// After a restart, `serve` checks the store in the background: a piece corrupted on disk is
/// discarded before anyone asks for it, and is never served.
#[test]
fn background_check_discards_a_corrupted_piece_before_it_is_requested() {
    let published = published();
    let store_dir = published.dir.path().join("data/store");
    let slot = {
        let store = Store::open(&store_dir, &tessera::config::StoreConfig::default()).unwrap();
        let (fd_offset, length) = {
            let guard = store.get(&tessera::hash::sha256(&published.small[SMALL_PIECE..2 * SMALL_PIECE])).unwrap();
            (guard.file_range().expect("the test store's file system punches holes").1, guard.length())
        };
        assert_eq!(length as usize, SMALL_PIECE);
        fd_offset
    };
    let slab = std::fs::read_dir(&store_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name().unwrap().to_string_lossy().starts_with(&format!("slab-{:02}", SMALL_PIECE.trailing_zeros()))
        })
        .unwrap();
    let mut bytes = std::fs::read(&slab).unwrap();
    bytes[slot as usize + 7] ^= 0x40;
    std::fs::write(&slab, bytes).unwrap();

    // The check is part of what `serve` runs: the appliance, here without the metadata service.
    let mut config = config_for(published.dir.path(), BackendChoice::Epoll);
    config.service.enabled = false;
    let appliance = Appliance::start(&config).unwrap();
    let pieces_before = 4 + 3; // small: 4 pieces of 64 KiB, big: 3 pieces of 1 MiB
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut client = Client::connect(appliance.server().local_addr());
    loop {
        let metrics = String::from_utf8(client.get("/metrics", "").body).unwrap();
        let pieces: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("tessera_store_pieces "))
            .expect("tessera_store_pieces in /metrics")
            .parse()
            .unwrap();
        if pieces == pieces_before - 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the background check did not discard the corrupt piece: {pieces} pieces");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(client.get("/v1/content/small/piece/1", "").status, 503, "a corrupt piece is never served");
    let good = client.get("/v1/content/small/piece/0", "");
    assert_eq!((good.status, &good.body[..]), (200, &published.small[..SMALL_PIECE]));
    appliance.shutdown().unwrap();
}

/// Runs the real `curl` with `args` against `url`, keeping the head and body in `dir`;
/// returns (status, head, body).
fn curl(dir: &Path, url: &str, args: &[&str]) -> (u16, String, Vec<u8>) {
    let (head_file, body_file) = (dir.join("curl.head"), dir.join("curl.body"));
    let _ = std::fs::remove_file(&body_file);
    let output = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "%{http_code}", "-D"])
        .arg(&head_file)
        .arg("-o")
        .arg(&body_file)
        .args(args)
        .arg(url)
        .output()
        .expect("curl is installed (scripts/test installs it)");
    assert!(output.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    let status = String::from_utf8(output.stdout).unwrap().trim().parse().unwrap();
    let body = std::fs::read(&body_file).unwrap_or_default();
    (status, std::fs::read_to_string(head_file).unwrap(), body)
}

fn field<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines()
        .find_map(|line| line.split_once(':').filter(|(key, _)| key.eq_ignore_ascii_case(name)))
        .map(|(_, value)| value.trim())
}

/// The parts of a `multipart/byteranges` body as (Content-Range value, bytes), checked for framing.
fn multipart_parts(content_type: &str, body: &[u8]) -> Vec<(String, Vec<u8>)> {
    let boundary = content_type.strip_prefix("multipart/byteranges; boundary=").expect(content_type);
    let delimiter = format!("\r\n--{boundary}").into_bytes();
    let starts: Vec<usize> = (0..body.len()).filter(|&at| body[at..].starts_with(&delimiter)).collect();
    assert_eq!(starts.first(), Some(&0), "the body opens with a delimiter");
    let last = *starts.last().unwrap();
    assert_eq!(&body[last + delimiter.len()..], b"--\r\n", "the body ends with the closing delimiter");
    starts
        .windows(2)
        .map(|pair| {
            let part = &body[pair[0] + delimiter.len() + 2..pair[1]];
            let split = part.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
            let head = String::from_utf8(part[..split].to_vec()).unwrap();
            assert_eq!(field(&head, "content-type"), Some("application/octet-stream"), "{head}");
            (field(&head, "content-range").unwrap().to_string(), part[split + 4..].to_vec())
        })
        .collect()
}

#[test]
fn curl_sees_validators_and_gets_304_for_what_it_holds() {
    let published = published();
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    each_backend(&published, |backend, server| {
        let url = format!("http://{}/v1/content/small", server.local_addr());
        let (status, head, body) = curl(dir, &url, &[]);
        assert!(status == 200 && body == published.small, "{backend:?}");
        let etag = field(&head, "etag").expect("ETag").to_string();
        let modified = field(&head, "last-modified").expect("Last-Modified").to_string();
        assert!(etag.starts_with('"') && etag.len() == 66, "{backend:?}: strong SHA-256 tag {etag}");
        assert!(field(&head, "date").is_some_and(|date| date.ends_with("GMT")), "{backend:?}: {head}");
        assert_eq!(field(&head, "cache-control"), Some("public, no-cache"));
        let (status, head, body) = curl(dir, &url, &["-H", &format!("If-None-Match: {etag}")]);
        assert_eq!((status, body.len()), (304, 0), "{backend:?}: {head}");
        assert_eq!(field(&head, "etag"), Some(etag.as_str()));
        assert_eq!(curl(dir, &url, &["-H", "If-None-Match: \"stale\""]).0, 200);
        // `curl -z DATE` sends If-Modified-Since.
        assert_eq!(curl(dir, &url, &["-z", &modified]).0, 304, "{backend:?}");
        let (status, _, body) = curl(dir, &url, &["-z", "Sun, 06 Nov 1994 08:49:37 GMT"]);
        assert!(status == 200 && body == published.small, "{backend:?}");
        let piece = format!("http://{}/v1/content/small/piece/2", server.local_addr());
        let piece_tag = field(&curl(dir, &piece, &[]).1, "etag").unwrap().to_string();
        assert_eq!(curl(dir, &piece, &["-H", &format!("If-None-Match: {piece_tag}")]).0, 304, "{backend:?}");
    });
}

#[test]
fn curl_if_range_and_multiple_ranges() {
    let published = published();
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let length = published.big.len();
    each_backend(&published, |backend, server| {
        let url = format!("http://{}/v1/content/big", server.local_addr());
        let (_, head, _) = curl(dir, &url, &["-I"]);
        let etag = field(&head, "etag").unwrap().to_string();
        let modified = field(&head, "last-modified").unwrap().to_string();
        for validator in [&etag, &modified] {
            let (status, _, body) = curl(dir, &url, &["-r", "10-19", "-H", &format!("If-Range: {validator}")]);
            assert!(status == 206 && body == published.big[10..20], "{backend:?}: If-Range {validator}");
        }
        let (status, _, body) = curl(dir, &url, &["-r", "10-19", "-H", "If-Range: \"another-version\""]);
        assert!(status == 200 && body == published.big, "{backend:?}: a mismatched If-Range gets the whole content");

        let (status, head, body) = curl(dir, &url, &["-r", "0-9,100-199,1048570-1048600"]);
        assert_eq!(status, 206, "{backend:?}");
        assert_eq!(field(&head, "content-length"), Some(body.len().to_string().as_str()));
        let parts = multipart_parts(field(&head, "content-type").unwrap(), &body);
        let expected = [(0, 9), (100, 199), (1_048_570, 1_048_600)];
        assert_eq!(parts.len(), expected.len(), "{backend:?}");
        for ((range, bytes), (start, end)) in parts.iter().zip(expected) {
            assert_eq!(range, &format!("bytes {start}-{end}/{length}"), "{backend:?}");
            assert!(bytes[..] == published.big[start..=end], "{backend:?}: part {start}-{end} differs");
        }
        let (status, _, body) = curl(dir, &url, &["-r", "0-99,50-149"]);
        assert!(status == 206 && body == published.big[..150], "{backend:?}: overlapping ranges are coalesced");
        let (status, head, _) = curl(dir, &url, &["-r", &format!("{length}-,{}-", length + 10)]);
        assert_eq!(status, 416, "{backend:?}");
        assert_eq!(field(&head, "content-range"), Some(format!("bytes */{length}").as_str()));
    });
}

/// Runs the real `wget -c` in `dir` for `url` (saved as `name`) with `args`; returns its success.
fn wget_continue(dir: &Path, url: &str, args: &[&str]) -> bool {
    let output = std::process::Command::new("wget")
        .args(["-c", "-q", "--tries=1", "--timeout=10"])
        .args(args)
        .arg(url)
        .current_dir(dir)
        .output()
        .expect("wget is installed (scripts/test installs it)");
    eprintln!("wget {args:?}: {}{}", output.status, String::from_utf8_lossy(&output.stderr));
    output.status.success()
}

#[test]
fn wget_resumes_a_partial_download_byte_exact() {
    let published = published();
    each_backend(&published, |backend, server| {
        let scratch = tempfile::tempdir().unwrap();
        let url = format!("http://{}/v1/content/big", server.local_addr());
        std::fs::write(scratch.path().join("big"), &published.big[..1_500_000]).unwrap();
        assert!(wget_continue(scratch.path(), &url, &[]), "{backend:?}");
        let got = std::fs::read(scratch.path().join("big")).unwrap();
        assert!(got == published.big, "{backend:?}: resumed file differs ({} bytes)", got.len());
    });
}

/// A one-worker server on `store` holding at most `connections_max` connections. The store is
/// opened once per test: reopening it between backends could race its lock with a child process
/// another test forks (the lock's descriptor lives in the child until it execs).
fn start_limited(
    published: &Published,
    store: &Arc<Store>,
    backend: BackendChoice,
    connections_max: usize,
) -> ServerHandle {
    let mut config = config_for(published.dir.path(), backend);
    config.serve.workers = 1;
    config.serve.connections_per_worker_max = connections_max;
    // Half-read request heads must stay in progress for the whole test.
    config.serve.header_timeout_ms = 10_000;
    Server::start_with_store(&config, store.clone()).unwrap()
}

fn open_store(published: &Published) -> Arc<Store> {
    let config = config_for(published.dir.path(), BackendChoice::Epoll);
    Arc::new(Store::open(&config.store_dir(), &config.store).unwrap())
}

/// Waits (at most 5 s) until the server holds `count` open connections.
fn wait_open(server: &ServerHandle, count: u64) {
    for _ in 0..500 {
        if server.metrics().worker(0).connections_open() == count {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the server never held {count} connections (holds {})", server.metrics().worker(0).connections_open());
}

#[test]
fn at_the_connection_limit_the_longest_idle_connection_makes_room() {
    let published = published();
    let piece = "/v1/content/small/piece/1";
    let store = open_store(&published);
    for backend in backends() {
        let server = start_limited(&published, &store, backend, 8);
        // Eight keep-alive connections, each served once, the first idle longest.
        let mut idle: Vec<Client> = (0..8).map(|_| Client::connect(server.local_addr())).collect();
        for client in &mut idle {
            assert_eq!(client.get(piece, "").status, 200);
        }
        wait_open(&server, 8);
        let mut newcomer = Client::connect(server.local_addr());
        let response = newcomer.get(piece, "");
        assert_eq!(response.status, 200, "{backend:?}: the new client is served");
        assert!(response.body == published.small[SMALL_PIECE..2 * SMALL_PIECE]);
        assert_eq!(server.metrics().idle_reclaimed(), 1, "{backend:?}");
        assert!(idle[0].closed_by_server(), "{backend:?}: the longest-idle connection was the one closed");
        for client in &mut idle[1..] {
            assert_eq!(client.get(piece, "").status, 200, "{backend:?}: the others are kept");
        }
        let metrics = String::from_utf8(idle[1].get("/metrics", "").body).unwrap();
        assert!(metrics.contains("tessera_idle_reclaimed_total{worker=\"0\"} 1"), "{metrics}");
        server.shutdown().unwrap();
    }
}

#[test]
fn a_request_in_progress_is_never_reclaimed() {
    let published = published();
    let piece = "/v1/content/small/piece/2";
    let store = open_store(&published);
    for backend in backends() {
        let server = start_limited(&published, &store, backend, 8);
        // Eight connections, each with a request head half sent.
        let mut busy: Vec<Client> = (0..8).map(|_| Client::connect(server.local_addr())).collect();
        for client in &mut busy {
            client.send(&format!("GET {piece} HTTP/1.1\r\n"));
        }
        wait_open(&server, 8);
        // No idle connection to reclaim: the newcomer is turned away.
        let mut refused = Client::connect(server.local_addr());
        let _ = refused.reader.get_mut().write_all(format!("GET {piece} HTTP/1.1\r\n\r\n").as_bytes());
        assert!(refused.closed_by_server(), "{backend:?}");
        assert_eq!(server.metrics().idle_reclaimed(), 0, "{backend:?}");
        // Every request in progress is answered.
        for client in &mut busy {
            client.send("Host: t\r\n\r\n");
            let response = client.read(false);
            assert_eq!(response.status, 200, "{backend:?}");
            assert!(response.body == published.small[2 * SMALL_PIECE..3 * SMALL_PIECE]);
        }
        server.shutdown().unwrap();
    }
}
