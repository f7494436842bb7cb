//! The cache box against a real nginx origin, checked the way a user would: with `curl`,
//! `aria2c`, `tessera get`, nginx's access log, the box's `/metrics`, its peer list and its store.
//!
//! The upstream metadata service is a `tessera serve` whose catalog holds manifests (HTTP source:
//! the nginx URL) and hash files, and whose store holds no piece: a box filling from it gets the
//! metadata over TLS and every byte from nginx by Range.

mod harness;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use harness::nginx::Nginx;
use harness::{get, get_with_service, metric, metric_settled, summary_source, tessera, Serve};
use tessera::config::StoreConfig;
use tessera::content::{ContentId, Digest};
use tessera::control::MetadataClient;
use tessera::hash::sha256;
use tessera::http::{parse_range, RangeOutcome};
use tessera::store::Store;
use tessera::tls::TlsClientOptions;

const WAIT: Duration = Duration::from_secs(20);
/// Bound of one `curl` or `aria2c` run.
const CLIENT_TIME_S: u64 = 60;

/// A content: pseudo-random bytes cut in `piece_size` pieces, published as `ID.bin` on nginx.
struct Blob {
    id: String,
    bytes: Vec<u8>,
    piece_size: usize,
}

impl Blob {
    fn new(id: &str, length: usize, piece_size: usize) -> Blob {
        let mut state =
            id.bytes().fold(0x9e37_79b9_7f4a_7c15u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        let mut bytes = Vec::with_capacity(length + 8);
        while bytes.len() < length {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            bytes.extend_from_slice(&state.to_le_bytes());
        }
        bytes.truncate(length);
        Blob { id: id.to_string(), bytes, piece_size }
    }

    fn file_name(&self) -> String {
        format!("{}.bin", self.id)
    }

    fn length(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn piece_count(&self) -> usize {
        self.bytes.len().div_ceil(self.piece_size)
    }

    /// Each piece's SHA-256, the store's key for it.
    fn digests(&self) -> Vec<Digest> {
        self.bytes.chunks(self.piece_size).map(sha256).collect()
    }

    /// The bytes `bytes=RANGE` names (one range, as curl's `-r` sends).
    fn range(&self, range: &str) -> &[u8] {
        match parse_range(Some(&format!("bytes={range}")), self.length(), 1) {
            RangeOutcome::Partial { start, end } => &self.bytes[start as usize..=end as usize],
            other => panic!("{range} is not one satisfiable range: {other:?}"),
        }
    }
}

/// A metadata-only upstream service and the nginx origin behind its manifests.
struct Upstream {
    origin: Nginx,
    service: Serve,
    ca: PathBuf,
}

impl Upstream {
    /// nginx serving `blobs`, and a `serve` whose catalog holds their metadata (nginx as the
    /// HTTP source) and whose store is empty; the hash files of `tampered` ids are altered so that
    /// they no longer match their manifests.
    fn start(dir: &Path, blobs: &[&Blob], tampered: &[&str]) -> Upstream {
        let files: Vec<(String, &[u8])> = blobs.iter().map(|b| (b.file_name(), b.bytes.as_slice())).collect();
        let files: Vec<(&str, &[u8])> = files.iter().map(|(name, bytes)| (name.as_str(), *bytes)).collect();
        let origin = Nginx::start(&dir.join("nginx"), &files);
        let data = dir.join("upstream");
        for blob in blobs {
            publish_metadata(&data, blob, &origin.url(&blob.file_name()));
        }
        for id in tampered {
            let hashfile = data.join(format!("catalog/{id}.hashfile"));
            let mut bytes = std::fs::read(&hashfile).unwrap();
            *bytes.last_mut().unwrap() ^= 1;
            std::fs::write(&hashfile, bytes).unwrap();
        }
        let service = Serve::start(&data, 1, &[]);
        Upstream { origin, service, ca: data.join("tls/ca.pem") }
    }

    /// A box on the data dir `dir/name` (new, or left by an earlier box) filling from this
    /// upstream, with `config` (TOML).
    fn cache_box(&self, dir: &Path, name: &str, config: &str) -> Serve {
        box_of(dir, name, &self.service, &self.ca, config, &[])
    }
}

/// Writes `blob`'s manifest (with `source` as its HTTP source) and hash file to `data`'s catalog,
/// no piece to its store.
fn publish_metadata(data: &Path, blob: &Blob, source: &str) {
    let file = data.with_file_name(blob.file_name());
    std::fs::write(&file, &blob.bytes).unwrap();
    let output = tessera()
        .args(["publish", file.to_str().unwrap(), "--id", &blob.id, "--no-store", "--source", source])
        .args(["--piece-size", &format!("{}K", blob.piece_size >> 10), "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

/// A box in `dir/name` whose upstream service is `upstream` (CA `ca`), with `config` (TOML).
fn box_of(dir: &Path, name: &str, upstream: &Serve, ca: &Path, config: &str, extra: &[String]) -> Serve {
    let config_file = dir.join(format!("{name}.toml"));
    std::fs::write(&config_file, config).unwrap();
    let mut flags: Vec<String> = vec!["--upstream".into(), upstream.service_url.clone(), "--upstream-ca".into()];
    flags.extend([ca.to_str().unwrap().to_string(), "--config".into(), config_file.to_str().unwrap().into()]);
    flags.extend_from_slice(extra);
    Serve::start(&dir.join(name), 2, &flags)
}

/// `curl` with a time bound, failing the test if it cannot run.
fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-s", "-S", "--max-time", &CLIENT_TIME_S.to_string()])
        .args(args)
        .output()
        .expect("curl runs (scripts/test installs it)")
}

/// `curl` of `id` through `server` (with `-r range` if given) into `out`: (status, headers, body).
fn curl_content(server: &str, id: &str, range: Option<&str>, out: &Path) -> (u16, String, Vec<u8>) {
    let headers = out.with_extension("headers");
    let url = format!("http://{server}/v1/content/{id}");
    let (out_text, headers_text) = (out.to_str().unwrap(), headers.to_str().unwrap());
    let mut args = vec!["-o", out_text, "-D", headers_text, "-w", "%{http_code}", url.as_str()];
    if let Some(range) = range {
        args.extend(["-r", range]);
    }
    let output = curl(&args);
    assert!(output.status.success(), "curl {url}: {}", String::from_utf8_lossy(&output.stderr));
    let status = String::from_utf8_lossy(&output.stdout).trim().parse().unwrap();
    let body = std::fs::read(out).unwrap_or_default();
    (status, std::fs::read_to_string(&headers).unwrap(), body)
}

/// The byte intervals `[start, end)` nginx sent of `file` (by its access log), sorted.
fn origin_intervals(origin: &Nginx, file: &str, length: u64) -> Vec<(u64, u64)> {
    let path = format!(" /{file} ");
    let mut intervals: Vec<(u64, u64)> = origin
        .requests()
        .iter()
        .filter(|access| access.request.contains(&path) && access.body_bytes > 0)
        .map(|access| {
            let start = match parse_range(access.range.as_deref(), length, 1) {
                RangeOutcome::Partial { start, .. } => start,
                RangeOutcome::Full => 0,
                other => panic!("the box asked nginx for {other:?} ({access:?})"),
            };
            (start, start + access.body_bytes)
        })
        .collect();
    intervals.sort_unstable();
    intervals
}

/// Asserts nginx sent no byte of `blob` twice; returns how many bytes of it it sent, once the
/// count reaches `expected` or after [`WAIT`] (nginx logs a request just after its last byte).
fn origin_bytes_once(origin: &Nginx, blob: &Blob, expected: u64) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let intervals = origin_intervals(origin, &blob.file_name(), blob.length());
        for pair in intervals.windows(2) {
            assert!(pair[0].1 <= pair[1].0, "nginx sent bytes {:?} and {:?}: overlapping", pair[0], pair[1]);
        }
        let sent: u64 = intervals.iter().map(|(start, end)| end - start).sum();
        if sent >= expected || Instant::now() >= deadline {
            return sent;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The peers `service` (a serve's embedded one) lists for `id`.
fn peers(service: &Serve, ca: &Path, id: &str) -> Vec<String> {
    let client =
        MetadataClient::new(TlsClientOptions { ca_file: Some(ca.to_path_buf()), ..Default::default() }).unwrap();
    let id = ContentId::parse(id).unwrap();
    client.peers(&service.service_url, &id, "default", None).unwrap().into_iter().map(|p| p.address).collect()
}

/// Waits until `service` lists `peer` for `id`.
fn wait_listed(service: &Serve, ca: &Path, id: &str, peer: &str) {
    let deadline = Instant::now() + WAIT;
    while !peers(service, ca, id).iter().any(|p| p == peer) {
        assert!(Instant::now() < deadline, "{peer} was never listed for {id}:\n{}", service.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The first line of `serve`'s log containing `needle`, waited for.
fn wait_log(serve: &Serve, needle: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(line) = serve.log().lines().find(|line| line.contains(needle)) {
            return line.to_string();
        }
        assert!(Instant::now() < deadline, "no {needle:?} in the log:\n{}", serve.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Set in the child that [`held_after_scrub`] runs: the store directory it scrubs.
const SCRUB_CHILD_ENV: &str = "TESSERA_BOX_ORIGIN_SCRUB_STORE";
/// The test whose run in a child process with [`SCRUB_CHILD_ENV`] set is the scrub.
const SCRUB_CHILD_TEST: &str = "kill_9_during_fills_twenty_times_loses_no_committed_piece_and_serves_no_bad_one";

/// Which pieces of `blob` the store at `store_dir` holds (the box that owned it is gone), after a
/// scrub that must find no bad piece. The store is opened in a child process: opened here, its
/// lock would be inherited by whatever another test thread forks meanwhile, until that child
/// execs, and a box restarted at that moment would find its store locked.
fn held_after_scrub(store_dir: &Path, blob: &Blob) -> BTreeSet<u64> {
    let digests: Vec<String> = blob.digests().iter().map(hex::encode).collect();
    std::fs::write(store_dir.with_extension("digests"), digests.join("\n")).unwrap();
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", SCRUB_CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env(SCRUB_CHILD_ENV, store_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    // After libtest's `test NAME ... ` on the same line.
    let line = stdout.lines().find_map(|line| line.split_once("scrubbed ").map(|(_, result)| result));
    let line = line
        .unwrap_or_else(|| panic!("the scrub did not finish:\n{stdout}{}", String::from_utf8_lossy(&output.stderr)));
    let mut fields = line.split_whitespace();
    let bad: u64 = fields.next().unwrap().parse().unwrap();
    assert_eq!(bad, 0, "the scrub found pieces whose bytes do not match their digest");
    fields.map(|index| index.parse().unwrap()).collect()
}

/// The child side of [`held_after_scrub`]: prints `scrubbed BAD HELD...` and exits.
fn scrub_child(store_dir: &Path) -> ! {
    let digests = std::fs::read_to_string(store_dir.with_extension("digests")).unwrap();
    let digests: Vec<Digest> = digests.lines().map(|hex| hex::decode(hex).unwrap().try_into().unwrap()).collect();
    let store = Store::open(store_dir, &StoreConfig::default()).unwrap();
    let (_, bad) = store.scrub();
    let held: Vec<String> = store.indexes_held(&digests).iter().map(u64::to_string).collect();
    println!("scrubbed {bad} {}", held.join(" "));
    std::process::exit(0)
}

fn assert_bytes(what: &str, got: &[u8], expected: &[u8]) {
    assert!(got == expected, "{what}: other bytes ({} of {})", got.len(), expected.len());
}

#[test]
fn three_tiers_origin_seed_branch_serve_exact_bytes_and_the_branch_is_a_peer() {
    let dir = tempfile::tempdir().unwrap();
    let blob = Blob::new("tiers", (6 << 20) + 12_345, 256 << 10);
    let mut upstream = Upstream::start(dir.path(), &[&blob], &[]);
    // The seed has never seen the content: the branch's first ask for its manifest goes to the
    // seed's embedded service, which fetches it from its own upstream.
    let seed = upstream.cache_box(dir.path(), "seed", "");
    assert!(!dir.path().join(format!("seed/catalog/{}.manifest.json", blob.id)).exists());

    // The branch fills only through the seed: no origin of its own.
    let seed_ca = dir.path().join("seed/tls/ca.pem");
    let peer = ["--upstream-peer".to_string(), seed.data_plane.clone()];
    let branch = box_of(dir.path(), "branch", &seed, &seed_ca, "[upstream]\norigin = false\n", &peer);
    let (status, head, body) = curl_content(&branch.data_plane, &blob.id, None, &dir.path().join("curl.bin"));
    assert_eq!(status, 200, "{head}\n{}\n{}", branch.log(), seed.log());
    assert_bytes("curl through the branch", &body, &blob.bytes);
    let length = blob.length();
    assert_eq!(origin_bytes_once(&upstream.origin, &blob, length), length, "nginx sent every byte once");
    let parent_bytes = "tessera_fill_upstream_bytes_total{kind=\"parent\"}";
    assert_eq!(metric_settled(&branch.data_plane, parent_bytes, length), length, "the branch filled from the seed");
    let origin_bytes = "tessera_fill_upstream_bytes_total{kind=\"origin\"}";
    assert_eq!(metric_settled(&seed.data_plane, origin_bytes, length), length, "the seed filled from nginx");

    // A device asking the branch's service is sent to the branch, in P2P mode. nginx is stopped
    // first: the manifest's HTTP source would otherwise race the branch for the last pieces
    // (the download's end game asks a second source).
    upstream.origin.stop();
    let branch_ca = dir.path().join("branch/tls/ca.pem");
    wait_listed(&branch, &branch_ca, &blob.id, &branch.data_plane);
    let out = dir.path().join("got.bin");
    let summary = get_with_service(&blob.id, &branch.service_url, &branch_ca, &out);
    assert_eq!(summary["mode"], "p2p", "{summary}");
    let from_branch = summary_source(&summary, &branch.data_plane);
    assert_eq!(from_branch["kind"], "peer", "{summary}");
    assert_eq!(from_branch["bytes"], length, "every byte came from the branch: {summary}");
    assert_bytes("tessera get from the branch", &std::fs::read(&out).unwrap(), &blob.bytes);
}

/// 32 `curl`s at once of one cold content on a box on `backend`.
fn thirty_two_cold_curls_get_exact_bytes_and_nginx_sends_each_byte_once(backend: &str) {
    const CLIENTS: usize = 32;
    let dir = tempfile::tempdir().unwrap();
    let blob = Blob::new("coalesced", (8 << 20) + 4321, 256 << 10);
    let upstream = Upstream::start(dir.path(), &[&blob], &[]);
    let cache = upstream.cache_box(dir.path(), "box", &format!("[serve]\nbackend = \"{backend}\"\n"));
    let url = format!("http://{}/v1/content/{}", cache.data_plane, blob.id);
    let outs: Vec<PathBuf> = (0..CLIENTS).map(|i| dir.path().join(format!("curl{i}.bin"))).collect();
    let curls: Vec<_> = outs
        .iter()
        .map(|out| {
            Command::new("curl")
                .args(["-s", "-S", "-f", "--max-time", &CLIENT_TIME_S.to_string(), "-o", out.to_str().unwrap(), &url])
                .spawn()
                .expect("curl runs (scripts/test installs it)")
        })
        .collect();
    for (mut curl, out) in curls.into_iter().zip(&outs) {
        assert!(curl.wait().unwrap().success(), "{}", cache.log());
        assert_bytes(&format!("{}", out.display()), &std::fs::read(out).unwrap(), &blob.bytes);
    }
    let length = blob.length();
    assert_eq!(origin_bytes_once(&upstream.origin, &blob, length), length, "nginx sent every byte exactly once");
    let coalesced = metric(&cache.data_plane, "tessera_fill_coalesced_waiters_total", "");
    assert!(coalesced > 0, "the box reports the waiters that shared a fetch");
}

#[test]
fn thirty_two_cold_curls_on_the_default_backend_get_exact_bytes_and_nginx_sends_each_byte_once() {
    thirty_two_cold_curls_get_exact_bytes_and_nginx_sends_each_byte_once("auto");
}

#[test]
fn thirty_two_cold_curls_on_epoll_get_exact_bytes_and_nginx_sends_each_byte_once() {
    thirty_two_cold_curls_get_exact_bytes_and_nginx_sends_each_byte_once("epoll");
}

#[test]
fn a_tampered_upstream_hash_file_is_passed_through_never_stored_nor_announced() {
    let dir = tempfile::tempdir().unwrap();
    let good = Blob::new("good", (2 << 20) + 99, 256 << 10);
    let tampered = Blob::new("tampered", (3 << 20) + 17, 256 << 10);
    // The tampered hash file no longer matches the manifest's digest of it: Simple mode.
    let upstream = Upstream::start(dir.path(), &[&good, &tampered], &[&tampered.id]);
    // The box announces what it holds to its upstream service, as a branch box does to its datacenter.
    // Announces to a service other than the box's own carry that service's site token.
    let (service, ca) = (&upstream.service.service_url, upstream.ca.display());
    let token = upstream.ca.parent().unwrap().parent().unwrap().join("announce.token");
    let token = token.display();
    let announce = format!("[announce]\nservice_url = \"{service}\"\nca_file = \"{ca}\"\ntoken_file = \"{token}\"\n");
    let cache = upstream.cache_box(dir.path(), "box", &announce);

    // A verified content, filled and announced, next to the tampered one.
    let (status, _, body) = curl_content(&cache.data_plane, &good.id, None, &dir.path().join("good.bin"));
    assert_eq!(status, 200, "{}", cache.log());
    assert_bytes("the verified content", &body, &good.bytes);
    let (status, headers, body) = curl_content(&cache.data_plane, &tampered.id, None, &dir.path().join("t.bin"));
    assert_eq!(status, 200, "{headers}\n{}", cache.log());
    assert!(headers.to_ascii_lowercase().contains("x-tessera-mode: simple; reason="), "{headers}");
    assert_bytes("the pass-through", &body, &tampered.bytes);
    let (status, _, _) =
        curl_content(&cache.data_plane, &format!("{}/piece/0", tampered.id), None, &dir.path().join("p"));
    assert_eq!(status, 404, "a Simple-mode content is not on the piece API");

    wait_listed(&upstream.service, &upstream.ca, &good.id, &cache.data_plane);
    let listed = peers(&upstream.service, &upstream.ca, &tampered.id);
    assert!(listed.is_empty(), "the tampered content is announced: {listed:?}");
    let stored = metric_settled(&cache.data_plane, "tessera_store_pieces ", good.piece_count() as u64);
    assert_eq!(stored, good.piece_count() as u64, "the store holds the verified content's pieces only");
    drop(cache);
    let held = held_after_scrub(&dir.path().join("box/store"), &tampered);
    assert!(held.is_empty(), "pieces {held:?} of the tampered content are in the store");
}

#[test]
fn with_the_upstream_down_hits_are_served_and_misses_get_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let filled = Blob::new("filled", (3 << 20) + 5, 256 << 10);
    let known = Blob::new("known", (1 << 20) + 3, 256 << 10);
    let other = Blob::new("other", 1 << 20, 256 << 10);
    let mut upstream = Upstream::start(dir.path(), &[&filled, &known, &other], &[]);
    let cache = upstream.cache_box(dir.path(), "box", "");
    let (status, _, body) = curl_content(&cache.data_plane, &filled.id, None, &dir.path().join("fill.bin"));
    assert_eq!(status, 200, "{}", cache.log());
    assert_bytes("the fill", &body, &filled.bytes);
    // `known`'s metadata only (a HEAD), then the origin and the upstream service go away.
    let output = curl(&["-I", &format!("http://{}/v1/content/{}", cache.data_plane, known.id)]);
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("HTTP/1.1 200"), "{}", cache.log());
    let length = filled.length();
    assert_eq!(origin_bytes_once(&upstream.origin, &filled, length), length);
    upstream.origin.stop();
    drop(upstream.service);

    let (status, _, body) = curl_content(&cache.data_plane, &filled.id, None, &dir.path().join("hit.bin"));
    assert_eq!(status, 200, "{}", cache.log());
    assert_bytes("a whole hit", &body, &filled.bytes);
    for range in ["0-0", "262000-300000", "-1000", "3145000-"] {
        let (status, _, body) = curl_content(&cache.data_plane, &filled.id, Some(range), &dir.path().join("r.bin"));
        assert_eq!(status, 206, "{range}");
        assert_bytes(range, &body, filled.range(range));
    }
    // A miss, with its metadata known (pieces fail) or not (no manifest): an error, not a hang.
    for blob in [&known, &other] {
        let (status, head, body) = curl_content(&cache.data_plane, &blob.id, None, &dir.path().join("miss.bin"));
        let body = String::from_utf8_lossy(&body);
        let clear = ["HTTP/1.1 502 Bad Gateway\r\n", "HTTP/1.1 503 Service Unavailable\r\n"];
        assert!(
            clear.iter().any(|line| head.starts_with(line)),
            "a miss on {} with the upstream down: {head}{body}",
            blob.id
        );
        assert!(body.contains(&blob.id), "the {status} names what failed: {body}");
    }
    let errors = metric(&cache.data_plane, "tessera_http_requests_total{", "code=\"502\"")
        + metric(&cache.data_plane, "tessera_http_requests_total{", "code=\"503\"");
    assert_eq!(errors, 2, "/metrics counts the two misses by their status");
}

#[test]
fn cold_ranges_and_a_segmented_aria2_download_are_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let blob = Blob::new("ranges", (5 << 20) + 777, 256 << 10);
    let upstream = Upstream::start(dir.path(), &[&blob], &[]);
    let length = blob.length();
    // The start, across a piece boundary, across several pieces, the last bytes, a suffix: each
    // on a box of its own, so each is cold.
    let boundary = format!("{}-{}", 3 * blob.piece_size - 100, 3 * blob.piece_size + 99);
    let last = format!("{}-{}", length - 10, length - 1);
    for (index, range) in ["0-99", &boundary, "1000000-2600000", &last, "-70000"].into_iter().enumerate() {
        let cache = upstream.cache_box(dir.path(), &format!("box{index}"), "");
        let (status, headers, body) = curl_content(&cache.data_plane, &blob.id, Some(range), &dir.path().join("r"));
        assert_eq!(status, 206, "{range}: {headers}\n{}", cache.log());
        assert_bytes(range, &body, blob.range(range));
    }

    let cache = upstream.cache_box(dir.path(), "aria2", "");
    let output = Command::new("aria2c")
        .args(["-x4", "-s4", "--min-split-size=1M", "--file-allocation=none", "--allow-overwrite=true"])
        .args(["--auto-file-renaming=false", "--max-tries=1", "--timeout=20", "--summary-interval=0"])
        .args(["--console-log-level=warn", &format!("--stop={CLIENT_TIME_S}"), "-d"])
        .arg(dir.path())
        .args(["-o", "aria2.bin", &format!("http://{}/v1/content/{}", cache.data_plane, blob.id)])
        .output()
        .expect("aria2c runs (scripts/test installs it)");
    assert!(output.status.success(), "{}\n{}", String::from_utf8_lossy(&output.stdout), cache.log());
    assert_bytes("aria2c -x4 -s4", &std::fs::read(dir.path().join("aria2.bin")).unwrap(), &blob.bytes);
    let partial = metric(&cache.data_plane, "tessera_http_requests_total{", "code=\"206\"");
    assert!(partial >= 2, "aria2c fetched segments by Range ({partial} partial responses)");
}

/// A `GET` of bytes `range` of `id` that reads `want` body bytes at most (fewer if the box dies
/// first) and returns them.
fn read_prefix(address: &str, id: &str, range: &str, want: usize) -> Vec<u8> {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(stream, "GET /v1/content/{id} HTTP/1.1\r\nHost: box\r\nRange: bytes={range}\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut wire = Vec::new();
    let mut buffer = vec![0u8; 1 << 16];
    let mut body_start = None;
    while body_start.is_none_or(|start| wire.len() - start < want) {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(count) => wire.extend_from_slice(&buffer[..count]),
        }
        if body_start.is_none() {
            body_start = wire.windows(4).position(|w| w == b"\r\n\r\n").map(|at| at + 4);
        }
    }
    let Some(start) = body_start else { return Vec::new() };
    assert!(wire.starts_with(b"HTTP/1.1 206"), "{}", String::from_utf8_lossy(&wire[..start]));
    wire.truncate((start + want).min(wire.len()));
    wire.split_off(start)
}

#[test]
fn kill_9_during_fills_twenty_times_loses_no_committed_piece_and_serves_no_bad_one() {
    if let Some(store_dir) = std::env::var_os(SCRUB_CHILD_ENV) {
        scrub_child(Path::new(&store_dir));
    }
    const ROUNDS: usize = 20;
    const PIECES_PER_ROUND: usize = 3;
    // Only the pieces a request covers are filled, so every round is killed with the content unfinished.
    const NO_BACKGROUND_FILL: &str = "[upstream]\nfill_whole = false\n";
    let dir = tempfile::tempdir().unwrap();
    let blob = Blob::new("crash", 64 << 20, 1 << 20);
    let upstream = Upstream::start(dir.path(), &[&blob], &[]);
    let (store_dir, piece_size) = (dir.path().join("box/store"), blob.piece_size);
    let mut held_before = BTreeSet::new();
    for round in 0..ROUNDS {
        let cache = upstream.cache_box(dir.path(), "box", NO_BACKGROUND_FILL);
        // A few pieces from the first one the store lacks; the kill comes after a varied part of
        // them reached the client: none, half a piece, one, one and a half.
        let first = (0..).find(|index| !held_before.contains(index)).unwrap() as usize;
        let range = format!("{}-{}", first * piece_size, (first + PIECES_PER_ROUND) * piece_size - 1);
        let want = round % 4 * piece_size / 2 + round * 1013;
        let received = read_prefix(&cache.data_plane, &blob.id, &range, want);
        let at = first * piece_size;
        assert_bytes(&format!("round {round}: what the box sent"), &received, &blob.bytes[at..at + received.len()]);
        let stored = metric(&cache.data_plane, "tessera_store_pieces ", "");
        drop(cache); // SIGKILL, then reaped

        let held = held_after_scrub(&store_dir, &blob);
        assert!(held.len() as u64 >= stored, "round {round}: {stored} pieces stored before the kill, {held:?} after");
        let lost: Vec<_> = held_before.difference(&held).collect();
        assert!(lost.is_empty(), "round {round}: committed pieces {lost:?} were lost");
        let sent_whole = (first + received.len() / piece_size) as u64;
        assert!((0..sent_whole).all(|index| held.contains(&index)), "round {round}: a piece sent is not stored");
        held_before = held;
    }
    // The fill resumes where it stopped: the rest comes from nginx once, the whole is exact.
    let cache = upstream.cache_box(dir.path(), "box", "");
    let (status, _, body) = get(&cache.data_plane, &format!("/v1/content/{}", blob.id), None);
    assert_eq!(status, 200, "{}", cache.log());
    assert_bytes("after 20 kills", &body, &blob.bytes);
    let check = wait_log(&cache, "store check: ");
    assert!(check.contains("every stored piece matches its hash"), "{check}");
    let fetched_again = blob.length() - held_before.len() as u64 * piece_size as u64;
    assert!(fetched_again > 0, "the content was whole before the last restart: no fill to resume");
    let upstream_bytes = "tessera_fill_upstream_bytes_total{kind=\"origin\"}";
    let filled = metric_settled(&cache.data_plane, upstream_bytes, fetched_again);
    assert_eq!(filled, fetched_again, "the last box fetched only the pieces the store lacked");
}
