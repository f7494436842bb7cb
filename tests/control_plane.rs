//! The control plane end to end on loopback: the service with a test CA, the typed client errors and
//! what `content::decide` makes of them, announces and peer matching, auth, bad input, and the
//! out-of-the-box development certificate with the real `curl`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tessera::catalog::Catalog;
use tessera::config::Config;
use tessera::content::{decide, ContentId, HashFile, Manifest, MetadataFailure, Mode, PieceSize, SimpleReason};
use tessera::control::{AnnounceRequest, AnnouncedContent, ClientError, MetadataClient, Service, ServiceHandle};
use tessera::hash::sha256;
use tessera::tls::{DevCa, TlsClientOptions};

const TOKEN: &str = "test-admin-token-0123456789";
const DAY: Duration = Duration::from_secs(86_400);

/// A service on an ephemeral loopback port with a certificate from a test CA.
struct Fixture {
    dir: tempfile::TempDir,
    ca_file: PathBuf,
    handle: ServiceHandle,
}

impl Fixture {
    fn url(&self) -> String {
        format!("https://localhost:{}", self.handle.local_addr().port())
    }

    fn catalog(&self) -> Catalog {
        Catalog::new(self.dir.path().join("data/catalog"))
    }

    fn client(&self) -> MetadataClient {
        client_trusting(&self.ca_file, None)
    }
}

/// Server certificate validity and names for a fixture.
struct CertSpec {
    names: Vec<String>,
    valid_from: SystemTime,
    valid_until: SystemTime,
}

impl Default for CertSpec {
    fn default() -> Self {
        let now = SystemTime::now();
        CertSpec { names: vec!["localhost".into(), "127.0.0.1".into()], valid_from: now - DAY, valid_until: now + DAY }
    }
}

fn start(spec: CertSpec, configure: impl FnOnce(&mut Config)) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::generate().unwrap();
    let server = ca.issue_server(&spec.names, spec.valid_from, spec.valid_until).unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    std::fs::write(dir.path().join("server.pem"), format!("{}{}", server.cert_pem, ca.cert_pem())).unwrap();
    std::fs::write(dir.path().join("server.key.pem"), &server.key_pem).unwrap();
    let mut config = Config { data_dir: dir.path().join("data"), ..Config::default() };
    config.service.listen = "127.0.0.1:0".into();
    config.service.cert_file = Some(dir.path().join("server.pem"));
    config.service.key_file = Some(dir.path().join("server.key.pem"));
    config.service.admin_token = Some(TOKEN.into());
    configure(&mut config);
    let handle = Service::start(&config).unwrap();
    Fixture { dir, ca_file, handle }
}

fn client_trusting(ca_file: &Path, pin: Option<String>) -> MetadataClient {
    MetadataClient::new(TlsClientOptions {
        ca_file: Some(ca_file.to_path_buf()),
        pin_spki_sha256: pin,
        timeout_ms: 2_000,
        ..TlsClientOptions::default()
    })
    .unwrap()
}

fn id(text: &str) -> ContentId {
    ContentId::parse(text).unwrap()
}

/// A consistent manifest and hash file for `content_id`.
fn sample_content(content_id: &str) -> (Manifest, Vec<u8>) {
    let hashfile = HashFile::new(PieceSize::new(65536).unwrap(), 70_000, vec![[3; 32], [4; 32]]).unwrap().to_bytes();
    let manifest = Manifest {
        version: 1,
        content_id: content_id.into(),
        content_length: 70_000,
        piece_size: 65536,
        hashfile_sha256: hex::encode(sha256(&hashfile)),
        hashfile_urls: vec![],
        sources: vec!["http://127.0.0.1:1/origin".into()],
        sha256: None,
    };
    (manifest, hashfile)
}

/// A CA file for clients that never get as far as checking a certificate.
fn some_ca_file() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, DevCa::generate().unwrap().cert_pem()).unwrap();
    (dir, ca_file)
}

/// What a download decides when the manifest fetch failed with `error`.
fn simple_reason_for(error: &ClientError) -> SimpleReason {
    match decide(Err(MetadataFailure::from(error)), Err(MetadataFailure::from(error))) {
        Mode::Simple { reason } => reason,
        Mode::P2p { .. } => panic!("a failed fetch must not give p2p"),
    }
}

#[test]
fn manifest_fetch_with_the_right_ca_gives_p2p_and_sees_new_content() {
    let fixture = start(CertSpec::default(), |_| {});
    let client = fixture.client();
    let missing = client.fetch_manifest(&fixture.url(), &id("pkg")).unwrap_err();
    assert!(matches!(missing, ClientError::NotFound { .. }), "{missing}");
    assert_eq!(simple_reason_for(&missing), SimpleReason::NoManifest);

    // Published while the service runs: served without a restart.
    let (manifest, hashfile) = sample_content("pkg");
    fixture.catalog().write(&id("pkg"), &hashfile, &manifest).unwrap();
    let fetched = client.fetch_manifest(&fixture.url(), &id("pkg")).unwrap();
    assert_eq!(fetched, manifest);
    let by_ip = format!("https://127.0.0.1:{}", fixture.handle.local_addr().port());
    let fetched_hashfile = client.fetch_hashfile(&by_ip, &id("pkg")).unwrap();
    assert_eq!(fetched_hashfile, hashfile);
    assert_eq!(decide(Ok(&fetched), Ok(&fetched_hashfile)).name(), "p2p");
}

/// Asserts the fetch failed as `matches` says and that Simple mode explains it with `words`.
#[test]
fn content_republished_or_removed_behind_the_service_is_seen_after_a_rescan() {
    let fixture = start(CertSpec::default(), |config| config.service.catalog_rescan_ms = 20);
    let client = fixture.client();
    let (manifest, hashfile) = sample_content("pkg");
    fixture.catalog().write(&id("pkg"), &hashfile, &manifest).unwrap();
    assert_eq!(client.fetch_manifest(&fixture.url(), &id("pkg")).unwrap(), manifest);
    // Another process republishes, then removes: the service answers from memory, so it sees
    // each change once a rescan has run. Poll with a bound instead of one long sleep.
    let republished = Manifest { sources: vec!["http://origin.example/pkg".into()], ..manifest.clone() };
    fixture.catalog().write(&id("pkg"), &hashfile, &republished).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.fetch_manifest(&fixture.url(), &id("pkg")).unwrap() != republished {
        assert!(Instant::now() < deadline, "the republished manifest was never served");
        std::thread::sleep(Duration::from_millis(20));
    }
    fixture.catalog().remove(&id("pkg")).unwrap();
    loop {
        match client.fetch_manifest(&fixture.url(), &id("pkg")) {
            Err(ClientError::NotFound { .. }) => break,
            Ok(served) => assert_eq!(served, republished),
            Err(error) => panic!("unexpected error: {error}"),
        }
        assert!(Instant::now() < deadline, "the removed manifest was still served");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_fails(result: Result<Manifest, ClientError>, matches: fn(&ClientError) -> bool, words: &str) {
    let error = result.expect_err("fetch must fail");
    assert!(matches(&error), "unexpected error variant: {error:?}");
    let reason = simple_reason_for(&error);
    assert!(matches!(reason, SimpleReason::ManifestFetch(_)), "{reason:?}");
    let text = reason.to_string();
    assert!(text.starts_with("manifest could not be fetched") && text.contains(words), "{text}");
}

#[test]
fn wrong_ca_is_unknown_ca() {
    let fixture = start(CertSpec::default(), |_| {});
    let other_ca = fixture.dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, DevCa::generate().unwrap().cert_pem()).unwrap();
    let result = client_trusting(&other_ca, None).fetch_manifest(&fixture.url(), &id("pkg"));
    assert_fails(result, |e| matches!(e, ClientError::UnknownCa { .. }), "not signed by a trusted CA");
}

#[test]
fn expired_certificate_is_expired() {
    let now = SystemTime::now();
    let spec = CertSpec { valid_from: now - 3 * DAY, valid_until: now - DAY, ..CertSpec::default() };
    let fixture = start(spec, |_| {});
    let result = fixture.client().fetch_manifest(&fixture.url(), &id("pkg"));
    assert_fails(result, |e| matches!(e, ClientError::Expired { .. }), "expired");
}

#[test]
fn wrong_hostname_is_hostname_mismatch() {
    let spec = CertSpec { names: vec!["metadata.example".into()], ..CertSpec::default() };
    let fixture = start(spec, |_| {});
    let result = fixture.client().fetch_manifest(&fixture.url(), &id("pkg"));
    assert_fails(result, |e| matches!(e, ClientError::HostnameMismatch { .. }), "not valid for that name");
}

#[test]
fn plain_http_server_is_not_tls() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        // Like any HTTP/1.1 server given a TLS ClientHello: read it, answer 400, close.
        let (mut socket, _) = listener.accept().unwrap();
        let mut buffer = [0u8; 1024];
        let _ = socket.read(&mut buffer);
        let _ = socket.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    });
    let (_dir, ca_file) = some_ca_file();
    let result = client_trusting(&ca_file, None).fetch_manifest(&format!("https://localhost:{port}"), &id("pkg"));
    assert_fails(result, |e| matches!(e, ClientError::NotTls { .. }), "does not speak TLS");
    server.join().unwrap();
}

#[test]
fn service_down_is_refused() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (_dir, ca_file) = some_ca_file();
    let result = client_trusting(&ca_file, None).fetch_manifest(&format!("https://127.0.0.1:{port}"), &id("pkg"));
    assert_fails(result, |e| matches!(e, ClientError::Refused { .. }), "refused");
}

#[test]
fn pin_mismatch_is_refused_and_the_right_pin_works() {
    let fixture = start(CertSpec::default(), |_| {});
    let (manifest, hashfile) = sample_content("pkg");
    fixture.catalog().write(&id("pkg"), &hashfile, &manifest).unwrap();
    let wrong_pin = Some(hex::encode([0x55u8; 32]));
    let result = client_trusting(&fixture.ca_file, wrong_pin).fetch_manifest(&fixture.url(), &id("pkg"));
    assert_fails(result, |e| matches!(e, ClientError::PinMismatch { .. }), "does not match the pinned");

    let chain = tessera::tls::load_certs(&fixture.dir.path().join("server.pem")).unwrap();
    let right_pin = Some(hex::encode(tessera::tls::spki_sha256(&chain[0]).unwrap()));
    assert_eq!(
        client_trusting(&fixture.ca_file, right_pin).fetch_manifest(&fixture.url(), &id("pkg")).unwrap(),
        manifest
    );
}

#[test]
fn silent_server_is_a_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (_dir, ca_file) = some_ca_file();
    let client = MetadataClient::new(TlsClientOptions {
        ca_file: Some(ca_file),
        timeout_ms: 300,
        ..TlsClientOptions::default()
    })
    .unwrap();
    // The listener's backlog accepts the connection; nobody ever answers the handshake.
    let started = Instant::now();
    let result = client.fetch_manifest(&format!("https://127.0.0.1:{port}"), &id("pkg"));
    assert_fails(result, |e| matches!(e, ClientError::Timeout { .. }), "timed out");
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(listener);
}

fn announce(peer: &str, group: &str, contents: &[&str]) -> AnnounceRequest {
    AnnounceRequest {
        peer_id: peer.into(),
        group: group.into(),
        address: "10.1.2.3:7680".into(),
        contents: contents.iter().map(|c| AnnouncedContent { id: (*c).into(), bitfield: None }).collect(),
    }
}

#[test]
fn announce_then_peers_by_group_never_the_asker_and_gone_after_the_ttl() {
    const TTL_MS: u64 = 800;
    let fixture = start(CertSpec::default(), |config| config.service.peer_ttl_ms = TTL_MS);
    let client = fixture.client();
    let url = fixture.url();
    // The service made the site's announce token on first run.
    let token = std::fs::read_to_string(fixture.handle.announce_token_file().unwrap()).unwrap();
    let token = Some(token.trim());
    let announced_at = Instant::now();
    client.announce(&url, token, &announce("peer-a", "site-1", &["pkg"])).unwrap();
    client.announce(&url, token, &announce("peer-b", "site-2", &["pkg"])).unwrap();
    let ids = |peers: Vec<tessera::control::PeerInfo>| peers.into_iter().map(|p| p.peer_id).collect::<Vec<_>>();
    assert_eq!(ids(client.peers(&url, &id("pkg"), "site-1", Some("peer-c")).unwrap()), ["peer-a"]);
    assert_eq!(ids(client.peers(&url, &id("pkg"), "site-2", Some("peer-c")).unwrap()), ["peer-b"]);
    assert!(client.peers(&url, &id("pkg"), "site-1", Some("peer-a")).unwrap().is_empty());
    assert!(client.peers(&url, &id("other"), "site-1", None).unwrap().is_empty());
    // Gone once the TTL has passed: poll with a bound instead of one long sleep.
    let deadline = announced_at + Duration::from_millis(TTL_MS * 5);
    loop {
        let peers = client.peers(&url, &id("pkg"), "site-1", Some("peer-c")).unwrap();
        if peers.is_empty() {
            assert!(announced_at.elapsed() >= Duration::from_millis(TTL_MS), "expired before the TTL");
            break;
        }
        assert!(Instant::now() < deadline, "peer still listed {TTL_MS} ms × 5 after its announce");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn publish_needs_the_admin_token_and_leaves_the_catalog_unchanged_without_it() {
    let fixture = start(CertSpec::default(), |_| {});
    let client = fixture.client();
    let url = fixture.url();
    let (manifest, hashfile) = sample_content("pkg");
    for token in ["", "wrong-token-0123456789"] {
        let error = client.publish(&url, token, &manifest, &hashfile).unwrap_err();
        assert!(matches!(error, ClientError::Status { status: 401, .. }), "{error}");
    }
    assert!(fixture.catalog().list().unwrap().is_empty());
    assert!(!fixture.catalog().hashfile_path(&id("pkg")).exists());

    client.publish(&url, TOKEN, &manifest, &hashfile).unwrap();
    assert_eq!(client.fetch_manifest(&url, &id("pkg")).unwrap(), manifest);
    let error = client.remove(&url, "nope-nope-nope-nope", &id("pkg")).unwrap_err();
    assert!(matches!(error, ClientError::Status { status: 401, .. }), "{error}");
    assert_eq!(fixture.catalog().list().unwrap(), vec![id("pkg")]);
    client.remove(&url, TOKEN, &id("pkg")).unwrap();
    assert!(matches!(client.fetch_manifest(&url, &id("pkg")), Err(ClientError::NotFound { .. })));
}

/// Sends raw bytes over TLS and returns the status and body.
fn raw_exchange(addr: SocketAddr, ca_file: &Path, request: &[u8]) -> (u16, String) {
    let options = TlsClientOptions { ca_file: Some(ca_file.to_path_buf()), ..TlsClientOptions::default() };
    let config: Arc<rustls::ClientConfig> = tessera::tls::client_config(&options).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let connection = rustls::ClientConnection::new(config, name).unwrap();
    let socket = TcpStream::connect(addr).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut stream = rustls::StreamOwned::new(connection, socket);
    stream.write_all(request).unwrap();
    let mut response = Vec::new();
    if let Err(error) = stream.read_to_end(&mut response) {
        assert_eq!(error.kind(), std::io::ErrorKind::UnexpectedEof, "{error}");
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status in {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default();
    (status, body)
}

fn post(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[test]
fn malformed_json_and_bad_requests_get_400_naming_the_problem() {
    // An open registry, so the announce bodies themselves are checked (no token needed).
    let fixture = start(CertSpec::default(), |config| {
        config.service.request_body_bytes_max = 4096;
        config.service.announce_open = true;
    });
    let addr = fixture.handle.local_addr();
    let cases = [
        (post("/v1/announce", r#"{"peer_id": "p", "group": "#), "not valid JSON"),
        (post("/v1/announce", r#"{"peer_id":"p","address":"10.0.0.1:1","contents":[]}"#), "group: missing field"),
        (
            post("/v1/announce", r#"{"peer_id":"p","group":"g","address":7,"contents":[]}"#),
            "address: expected a string",
        ),
        (
            post("/v1/announce", r#"{"peer_id":"p","group":"g","address":"10.0.0.1:1","contents":[{"id":"a/b"}]}"#),
            "contents[0].id",
        ),
        (
            b"GET /v1/content/..%2f..%2fetc/manifest HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
            "content id",
        ),
        (b"GET /v1/content/x/peers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(), "group"),
    ];
    for (request, words) in cases {
        let (status, body) = raw_exchange(addr, &fixture.ca_file, &request);
        assert_eq!(status, 400, "{body}");
        assert!(body.contains(words), "expected {words:?} in {body}");
    }
    let too_large = b"POST /v1/announce HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n";
    let (status, body) = raw_exchange(addr, &fixture.ca_file, too_large);
    assert_eq!(status, 413, "{body}");
    let (status, _) =
        raw_exchange(addr, &fixture.ca_file, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 200);
}

/// Kills the child on every exit path of the test.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn new_user_can_curl_healthz_with_the_generated_ca() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("tessera-data");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["service", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data_dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    let mut first_line = String::new();
    BufReader::new(child.0.stdout.take().unwrap()).read_line(&mut first_line).unwrap();
    let port: u16 = first_line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {first_line:?}"));
    let ca = data_dir.join("tls/ca.pem");
    assert!(ca.is_file(), "the service must write its development CA to DATA_DIR/tls/ca.pem");
    let output = std::process::Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10", "--output", "/dev/null", "--write-out", "%{http_code}"])
        .arg("--cacert")
        .arg(&ca)
        .arg(format!("https://localhost:{port}/healthz"))
        .output()
        .expect("curl is installed (scripts/test installs it)");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "200", "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn pipelined_keep_alive_requests_are_answered_in_order() {
    let fixture = start(CertSpec::default(), |_| {});
    let (manifest, hashfile) = sample_content("pkg");
    fixture.catalog().write(&id("pkg"), &hashfile, &manifest).unwrap();
    let mut requests = b"GET /v1/content/pkg/hashfile HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    requests.extend_from_slice(b"GET /v1/content/nope/manifest HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let (status, rest) = raw_exchange(fixture.handle.local_addr(), &fixture.ca_file, &requests);
    assert_eq!(status, 200);
    assert!(rest.contains("HTTP/1.1 404"), "second response missing: {rest:?}");
}

#[test]
fn a_client_that_sends_nothing_is_closed_after_the_header_timeout() {
    let fixture = start(CertSpec::default(), |config| config.service.header_timeout_ms = 300);
    let mut socket = TcpStream::connect(fixture.handle.local_addr()).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let mut buffer = [0u8; 64];
    // The server closes without a byte: read gives 0 (or a reset), well before the 5 s read timeout.
    let read = socket.read(&mut buffer);
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() >= Duration::from_millis(250) && started.elapsed() < Duration::from_secs(4));
}
