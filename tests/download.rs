//! End to end: `tessera::download::get` against in-process fake peers, an HTTP origin and a fake
//! metadata source on loopback; exit statuses through the real binary.

mod fakes;

use std::path::Path;
use std::process::Command;

use fakes::{Behavior, Content, Fake, FakeMetadata, ServiceData, TestCert};
use tessera::config::{BackendChoice, DownloadConfig};
use tessera::content::MetadataFailure;
use tessera::download::{get, GetError, GetRequest, MetadataSource, Status, Summary};
use tessera::hash::sha256;
use tessera::tls::ca_client_config as client_config;

/// Limits small enough that every test is quick and every count exact.
fn config() -> DownloadConfig {
    DownloadConfig {
        connections_per_source_max: 1,
        pipeline_depth: 1,
        request_timeout_ms: 300,
        connect_timeout_ms: 1000,
        endgame_pieces: 0,
        metadata_timeout_ms: 2000,
        ..DownloadConfig::default()
    }
}

/// The backends `get` is tested on: epoll always, io_uring where this machine has it.
fn backends() -> Vec<BackendChoice> {
    let mut backends = vec![BackendChoice::Epoll];
    match tessera::io::choose_backend(BackendChoice::Uring) {
        Ok(_) => backends.push(BackendChoice::Uring),
        Err(error) => eprintln!("io_uring backend not tested on this machine: {error}"),
    }
    backends
}

/// [`config`] on `backend`.
fn on(backend: BackendChoice) -> DownloadConfig {
    DownloadConfig { backend, ..config() }
}

/// `--backend`'s value for `backend`.
fn backend_arg(backend: BackendChoice) -> &'static str {
    match backend {
        BackendChoice::Auto => "auto",
        BackendChoice::Uring => "uring",
        BackendChoice::Epoll => "epoll",
    }
}

fn request(content: &Content, dir: &Path, peers: &[&Fake], sources: Vec<String>, config: DownloadConfig) -> GetRequest {
    GetRequest {
        id: content.id.clone(),
        group: "default".into(),
        peers: peers.iter().map(|p| p.address).collect(),
        sources,
        output: dir.join("out.bin"),
        sha256: None,
        config,
        tls: client_config(None).unwrap(),
    }
}

fn run(request: &GetRequest, metadata: &dyn MetadataSource) -> Result<Summary, GetError> {
    get(request, metadata, &mut |_: &Status| {})
}

fn assert_output(request: &GetRequest, content: &Content) {
    let written = std::fs::read(&request.output).unwrap();
    assert!(written == *content.bytes, "output differs from the source");
}

fn stats<'a>(summary: &'a Summary, fake: &Fake) -> &'a tessera::download::SourceStats {
    let label = fake.address.to_string();
    summary.sources.iter().find(|s| s.source == label).unwrap_or_else(|| panic!("no stats for {label}"))
}

#[test]
fn honest_peers_deliver_byte_identical_output() {
    for backend in backends() {
        eprintln!("backend {backend:?}");
        let content = Content::new("honest", 40 * 65536 + 123);
        let peers = [Fake::start(&content, Behavior::Honest), Fake::start(&content, Behavior::Honest)];
        let dir = tempfile::tempdir().unwrap();
        let config = DownloadConfig { pipeline_depth: 4, connections_per_source_max: 2, ..on(backend) };
        let request = request(&content, dir.path(), &[], vec![], config);
        let metadata = FakeMetadata::new(&content, vec![], peers.iter().map(|p| p.address).collect());
        let summary = run(&request, &metadata).unwrap();
        assert_output(&request, &content);
        assert_eq!(summary.mode, "p2p");
        assert_eq!(summary.sha256.as_deref(), Some(hex::encode(sha256(&content.bytes)).as_str()));
        let delivered: u64 = summary.sources.iter().map(|s| s.bytes).sum();
        assert_eq!(delivered, content.bytes.len() as u64);
        assert!(peers.iter().all(|p| p.good_sent() > 0), "both peers were used");
        assert!(!dir.path().join("out.bin.tessera-partial").exists());
        assert!(!dir.path().join("out.bin.tessera-progress").exists());
    }
}

#[test]
fn every_lying_peer_is_banned_after_two_bad_pieces_and_asked_nothing_more() {
    for backend in backends() {
        eprintln!("backend {backend:?}");
        let content = Content::new("liars", 96 * 65536);
        let honest = Fake::start(&content, Behavior::Honest);
        let liars = [
            Fake::start(&content, Behavior::BitFlip),
            Fake::start(&content, Behavior::WrongPiece),
            Fake::start(&content, Behavior::Truncate),
            Fake::start(&content, Behavior::LieAfter(3)),
        ];
        let dir = tempfile::tempdir().unwrap();
        let mut all: Vec<&Fake> = liars.iter().collect();
        all.push(&honest);
        // Matched peers are used side by side (hand-given ones are boxes, used one at a time).
        let request = request(&content, dir.path(), &[], vec![], on(backend));
        let metadata = FakeMetadata::new(&content, vec![], all.iter().map(|p| p.address).collect());
        let summary = run(&request, &metadata).unwrap();
        assert_output(&request, &content);
        for liar in &liars {
            assert_eq!(liar.bad_sent(), 2, "{}: exactly two bad pieces before the ban", liar.address);
            assert_eq!(liar.requests(), liar.good_sent() + 2, "{}: no request after the ban", liar.address);
            let stats = stats(&summary, liar);
            assert!(stats.banned && stats.bad_pieces == 2, "{stats:?}");
            assert!(summary.banned.contains(&liar.address.to_string()));
        }
        assert_eq!(liars[3].good_sent(), 3, "the late liar served three good pieces first");
        assert!(!stats(&summary, &honest).banned);
        assert_eq!(summary.banned.len(), 4);
    }
}

#[test]
fn liars_on_probation_get_at_most_one_request_past_the_ban_threshold_with_full_pipelines() {
    let content = Content::new("probation", 64 * 65536);
    let honest = Fake::start(&content, Behavior::Honest);
    let liars = [
        Fake::start(&content, Behavior::BitFlip),
        Fake::start(&content, Behavior::WrongPiece),
        Fake::start(&content, Behavior::Truncate),
        Fake::start(&content, Behavior::Overlong),
        Fake::start(&content, Behavior::Zeros),
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut all: Vec<&Fake> = liars.iter().collect();
    all.push(&honest);
    // The shipped pipelining (2 connections x depth 4): before probation each liar got 8 or 9.
    let defaults = DownloadConfig::default();
    let config = DownloadConfig {
        connections_per_source_max: defaults.connections_per_source_max,
        pipeline_depth: defaults.pipeline_depth,
        // No fake here stalls: a short timeout would only let a loaded machine turn answers into
        // timeouts, which are not lies.
        request_timeout_ms: defaults.request_timeout_ms,
        ..config()
    };
    assert!(config.connections_per_source_max * config.pipeline_depth > config.ban_after_bad_pieces + 1);
    let request = request(&content, dir.path(), &[], vec![], config.clone());
    let metadata = FakeMetadata::new(&content, vec![], all.iter().map(|p| p.address).collect());
    let summary = run(&request, &metadata).unwrap();
    assert_output(&request, &content);
    let allowed = u64::from(config.ban_after_bad_pieces) + 1;
    for liar in &liars {
        assert!(stats(&summary, liar).banned, "{}: banned", liar.address);
        assert!(liar.requests() <= allowed, "{}: asked {} times, at most {allowed}", liar.address, liar.requests());
    }
    assert!(!stats(&summary, &honest).banned);
    assert!(honest.good_sent() >= content.piece_count(), "no liar delivered a piece: the seed served all");
}

#[test]
fn a_stalling_peer_does_not_stall_the_download() {
    for backend in backends() {
        eprintln!("backend {backend:?}");
        let content = Content::new("stall", 24 * 65536);
        let stall = Fake::start(&content, Behavior::Stall);
        let honest = Fake::start(&content, Behavior::Honest);
        let dir = tempfile::tempdir().unwrap();
        let request = request(&content, dir.path(), &[], vec![], on(backend));
        let summary = run(&request, &FakeMetadata::new(&content, vec![], vec![stall.address, honest.address])).unwrap();
        assert_output(&request, &content);
        let stats = stats(&summary, &stall);
        assert!(stats.timeouts >= 1 && stats.bytes == 0, "{stats:?}");
        assert!(stall.requests() <= u64::from(on(backend).source_failures_max), "dropped after its failure budget");
    }
}

/// A device id for which `boxes` rank in the order of their indexes `order` (searched among a
/// bounded number of names).
fn device_ranking(content: &Content, boxes: &[&Fake], order: &[usize]) -> String {
    let names: Vec<String> = boxes.iter().map(|b| b.address.to_string()).collect();
    (0..1000)
        .map(|n| format!("device-{n}"))
        .find(|device| tessera::rendezvous::rank(device, content.id.as_str(), &names) == order)
        .expect("one name in 1000 ranks three boxes as asked")
}

#[test]
fn boxes_serve_one_at_a_time_in_rendezvous_order_and_a_hung_one_hands_over() {
    // Silent from the start: the request timeout (300 ms here) hands over. Hung mid-piece: the
    // stall timeout does, long before the request timeout (a minute here).
    let cases = [(Behavior::Stall, config().request_timeout_ms), (Behavior::HangMidBody, 60_000)];
    for (backend, (behavior, request_timeout_ms)) in backends().into_iter().flat_map(|b| cases.map(|c| (b, c))) {
        eprintln!("backend {backend:?}, {behavior:?}");
        let content = Content::new("boxes", 24 * 65536);
        let hung = Fake::start(&content, behavior);
        let next = Fake::start(&content, Behavior::Honest);
        let last = Fake::start(&content, Behavior::Honest);
        let boxes = [&hung, &next, &last];
        let dir = tempfile::tempdir().unwrap();
        let device_id = device_ranking(&content, &boxes, &[0, 1, 2]);
        let config = DownloadConfig { device_id, pipeline_depth: 4, request_timeout_ms, ..on(backend) };
        // Listed out of rank order: the ranking, not the listing, decides.
        let request = request(&content, dir.path(), &[&last, &hung, &next], vec![], config);
        let summary = run(&request, &FakeMetadata::new(&content, vec![], vec![])).unwrap();
        assert_output(&request, &content);
        let (first, second) = (stats(&summary, &hung), stats(&summary, &next));
        assert_eq!((first.kind, first.rank, second.rank), ("box", Some(0), Some(1)), "{summary:?}");
        assert!(first.timeouts == 1 && first.dropped && first.bytes == 0, "one stall hands over: {first:?}");
        assert_eq!(second.pieces, content.piece_count(), "the next box served every piece: {second:?}");
        assert_eq!(last.connections(), 0, "the third box is never asked while the second serves");
        assert!(next.requests() >= content.piece_count());
        if behavior == Behavior::HangMidBody {
            let took_over_ms = second.first_piece_ms.unwrap();
            assert!(
                took_over_ms < request_timeout_ms,
                "the stall timeout did not hand over: began at {took_over_ms} ms"
            );
        }
    }
}

#[test]
fn pieces_fall_back_to_http_when_every_peer_is_banned() {
    let content = Content::new("fallback", 20 * 65536 + 7);
    let liar = Fake::start(&content, Behavior::BitFlip);
    let origin = Fake::start(&content, Behavior::Origin);
    let dir = tempfile::tempdir().unwrap();
    let request = request(&content, dir.path(), &[&liar], vec![], config());
    let metadata = FakeMetadata::new(&content, vec![origin.url()], vec![]);
    let summary = run(&request, &metadata).unwrap();
    assert_output(&request, &content);
    assert_eq!(summary.banned, vec![liar.address.to_string()]);
    assert_eq!(liar.requests(), 2);
    assert_eq!(fakes::Counters::get(&origin.counters.range_requests), content.piece_count());
}

#[test]
fn http_source_takes_pieces_no_peer_has() {
    let content = Content::new("partial-peer", 16 * 65536);
    let peer = Fake::start(&content, Behavior::HasBelow(8));
    let origin = Fake::start(&content, Behavior::Origin);
    let dir = tempfile::tempdir().unwrap();
    let request = request(&content, dir.path(), &[&peer], vec![origin.url()], config());
    let summary = run(&request, &FakeMetadata::new(&content, vec![], vec![])).unwrap();
    assert_output(&request, &content);
    assert_eq!(stats(&summary, &peer).pieces, 8);
    assert!(summary.banned.is_empty());
}

/// Runs a Simple-mode case: peers known by hand and by matching must see no connection at all.
fn assert_simple_mode_from_origin(metadata: FakeMetadata, content: &Content, reason_has: &str) {
    let peer = Fake::start(content, Behavior::Honest);
    let matched = Fake::start(content, Behavior::Honest);
    let origin = Fake::start(content, Behavior::Origin);
    let metadata = FakeMetadata { peers: vec![matched.address], ..metadata };
    let dir = tempfile::tempdir().unwrap();
    let request = request(content, dir.path(), &[&peer], vec![origin.url()], config());
    let summary = run(&request, &metadata).unwrap();
    assert_output(&request, content);
    assert_eq!(summary.mode, "simple");
    let reason = summary.mode_reason.clone().unwrap();
    assert!(reason.contains(reason_has), "{reason}");
    assert_eq!(peer.connections(), 0, "no connection to a hand-given peer in Simple mode");
    assert_eq!(matched.connections(), 0, "no connection to a matched peer in Simple mode");
    assert_eq!(metadata.peer_lookups.load(std::sync::atomic::Ordering::SeqCst), 0, "no peer lookup either");
    assert!(origin.requests() > 0);
}

#[test]
fn tampered_hash_file_gives_simple_mode_without_peers() {
    let content = Content::new("tampered", 10 * 65536);
    let mut metadata = FakeMetadata::new(&content, vec![], vec![]);
    let mut tampered = content.hashfile.clone();
    *tampered.last_mut().unwrap() ^= 1;
    metadata.hashfile = Ok(tampered);
    assert_simple_mode_from_origin(metadata, &content, "does not match");
}

#[test]
fn tls_failure_gives_simple_mode_without_peers() {
    let content = Content::new("wrong-ca", 10 * 65536);
    let mut metadata = FakeMetadata::new(&content, vec![], vec![]);
    metadata.manifest = Err(MetadataFailure::Fetch("invalid peer certificate: UnknownIssuer".into()));
    assert_simple_mode_from_origin(metadata, &content, "UnknownIssuer");
}

#[test]
fn service_down_gives_simple_mode_without_peers() {
    let content = Content::new("down", 10 * 65536);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let options = tessera::tls::TlsClientOptions { timeout_ms: 2000, ..Default::default() };
    let service = tessera::download::ServiceMetadata::new(&format!("https://{closed}"), options).unwrap();
    let mut metadata = FakeMetadata::new(&content, vec![], vec![]);
    metadata.manifest = service.manifest(&content.id);
    assert!(metadata.manifest.is_err());
    assert_simple_mode_from_origin(metadata, &content, "connect");
}

#[test]
fn simple_mode_without_any_http_source_says_so() {
    let content = Content::new("nosource", 65536);
    let mut metadata = FakeMetadata::new(&content, vec![], vec![]);
    metadata.hashfile = Err(MetadataFailure::Fetch("refused".into()));
    let dir = tempfile::tempdir().unwrap();
    let request = request(&content, dir.path(), &[], vec![], config());
    let error = run(&request, &metadata).unwrap_err();
    assert!(matches!(error, GetError::NoHttpSource { .. }), "{error}");
    assert!(error.to_string().contains("no HTTP source"), "{error}");
}

#[test]
fn no_peer_and_no_http_source_says_so_and_makes_no_file() {
    let content = Content::new("unannounced", 65536);
    let metadata = FakeMetadata::new(&content, vec![], vec![]);
    let dir = tempfile::tempdir().unwrap();
    let request = request(&content, dir.path(), &[], vec![], config());
    let error = run(&request, &metadata).unwrap_err();
    assert!(matches!(error, GetError::NotFound { .. }), "{error}");
    let text = error.to_string();
    assert!(text.contains("matched no peer") && text.contains("no HTTP source") && text.contains("--peer"), "{text}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing is written");
}

#[test]
fn a_rerun_skips_pieces_already_verified() {
    let content = Content::new("resume", 12 * 65536);
    let dir = tempfile::tempdir().unwrap();
    let half = Fake::start(&content, Behavior::HasBelow(5));
    let first = request(&content, dir.path(), &[&half], vec![], config());
    let metadata = FakeMetadata::new(&content, vec![], vec![]);
    let error = run(&first, &metadata).unwrap_err();
    assert!(matches!(error, GetError::Exhausted { .. }), "{error}");
    assert!(!first.output.exists());
    assert!(dir.path().join("out.bin.tessera-progress").exists());
    let honest = Fake::start(&content, Behavior::Honest);
    let second = request(&content, dir.path(), &[&honest], vec![], config());
    let summary = run(&second, &metadata).unwrap();
    assert_output(&second, &content);
    assert_eq!(summary.pieces_resumed, 5);
    assert_eq!(honest.requests(), content.piece_count() - 5, "verified pieces are not asked again");
}

fn tessera() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
}

#[test]
fn binary_exit_statuses_and_json_summary() {
    let content = Content::new("binary", 5 * 65536 + 9);
    let origin = Fake::start(&content, Behavior::Origin);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("file");
    let good = hex::encode(sha256(&content.bytes));

    let ok = tessera()
        .args(["get", "binary", "--source", &origin.url(), "--sha256", &good, "--json", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(summary["mode"], "simple");
    assert!(summary["mode_reason"].as_str().unwrap().contains("no metadata service"));
    assert_eq!(std::fs::read(&out).unwrap(), *content.bytes);

    let wrong = "0".repeat(64);
    let mismatch = dir.path().join("mismatch");
    let status = tessera()
        .args(["get", "binary", "--source", &origin.url(), "--sha256", &wrong, "-o"])
        .arg(&mismatch)
        .output()
        .unwrap();
    assert_eq!(status.status.code(), Some(4), "{}", String::from_utf8_lossy(&status.stderr));
    assert!(!mismatch.exists(), "no file under the name after a failed check");

    let missing = format!("http://{}/nothing-here", origin.address);
    let status =
        tessera().args(["get", "binary", "--source", &missing, "-o"]).arg(dir.path().join("x")).output().unwrap();
    assert_eq!(status.status.code(), Some(3), "{}", String::from_utf8_lossy(&status.stderr));

    let status = tessera().args(["get", "binary", "-o"]).arg(dir.path().join("y")).output().unwrap();
    assert_eq!(status.status.code(), Some(5), "{}", String::from_utf8_lossy(&status.stderr));
    assert!(String::from_utf8_lossy(&status.stderr).contains("no HTTP source"));

    let status = tessera().args(["get", "bad/id", "-o", "z"]).output().unwrap();
    assert_eq!(status.status.code(), Some(2));

    let status = tessera().args(["get", "binary", "--backend", "kqueue", "-o", "z"]).output().unwrap();
    assert_eq!(status.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&status.stderr).contains("--backend \"kqueue\""));
}

#[test]
fn a_302_from_an_http_source_is_followed_and_the_file_arrives_byte_exact() {
    for backend in backends() {
        eprintln!("backend {backend:?}");
        let content = Content::new("moved", 6 * 65536 + 7);
        let origin = Fake::start(&content, Behavior::Origin);
        let moved = format!("http://{}/moved", origin.address);
        // Range requests in the event loop (P2P mode, no peer): the first answer is the redirect.
        let dir = tempfile::tempdir().unwrap();
        let request = request(&content, dir.path(), &[], vec![moved.clone()], on(backend));
        let summary = run(&request, &FakeMetadata::new(&content, vec![], vec![])).unwrap();
        assert_output(&request, &content);
        assert_eq!(summary.sources[0].failures, 0, "a redirect is no failure");
        let ranges = fakes::Counters::get(&origin.counters.range_requests);
        assert_eq!(ranges, content.piece_count(), "every piece asked once, at the final URL");
        // Simple mode without metadata: the length probe (HEAD) follows it, and so do the ranges.
        let out = dir.path().join("simple");
        let good = hex::encode(sha256(&content.bytes));
        let status = tessera()
            .args(["get", "moved", "--backend", backend_arg(backend), "--source", &moved, "--sha256", &good, "-o"])
            .arg(&out)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&status.stderr);
        assert!(status.status.success(), "{stderr}");
        let said = format!("backend=\"{}\"", backend_arg(backend));
        assert_eq!(stderr.matches(&said).count(), 1, "the backend is said once in the log: {stderr}");
        assert_eq!(std::fs::read(&out).unwrap(), *content.bytes);
        // A redirect loop ends after the hop limit with "sources exhausted".
        let looping = format!("http://{}/loop", origin.address);
        let status = tessera()
            .args(["get", "moved", "--backend", backend_arg(backend), "--source", &looping, "-o"])
            .arg(dir.path().join("l"))
            .output()
            .unwrap();
        assert_eq!(status.status.code(), Some(5), "{}", String::from_utf8_lossy(&status.stderr));
        assert!(String::from_utf8_lossy(&status.stderr).contains("more than 5 redirects"));
    }
}

#[test]
fn a_chunked_origin_delivers_byte_exact_pieces() {
    for backend in backends() {
        eprintln!("backend {backend:?}");
        let content = Content::new("chunked", 7 * 65536 + 11);
        let origin = Fake::start(&content, Behavior::ChunkedOrigin);
        let dir = tempfile::tempdir().unwrap();
        let request =
            request(&content, dir.path(), &[], vec![origin.url()], DownloadConfig { pipeline_depth: 3, ..on(backend) });
        let summary = run(&request, &FakeMetadata::new(&content, vec![], vec![])).unwrap();
        assert_output(&request, &content);
        assert_eq!(summary.sources[0].bad_pieces + summary.sources[0].failures, 0);
        assert_eq!(fakes::Counters::get(&origin.counters.range_requests), content.piece_count());
    }
}

#[test]
fn a_source_url_with_cr_lf_is_refused_with_exit_2_and_nothing_is_sent() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let injected = format!("http://{}/a\r\nX-Injected: 1", listener.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let status =
        tessera().args(["get", "crlf", "--source", &injected, "-o"]).arg(dir.path().join("out")).output().unwrap();
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert_eq!(status.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("{injected:?}")) && stderr.contains("control character"), "{stderr}");
    // A connection the client made would wait in the backlog: count what it carried.
    listener.set_nonblocking(true).unwrap();
    let received = match listener.accept() {
        Ok((mut stream, _)) => {
            stream.set_nonblocking(false).unwrap();
            stream.set_read_timeout(Some(std::time::Duration::from_millis(200))).unwrap();
            let mut bytes = Vec::new();
            let _ = std::io::Read::read_to_end(&mut stream, &mut bytes);
            bytes.len()
        }
        Err(error) => {
            assert_eq!(error.kind(), std::io::ErrorKind::WouldBlock);
            0
        }
    };
    assert_eq!(received, 0, "bytes reached the listener");
}

#[test]
fn https_source_is_fetched_over_tls_in_the_event_loop() {
    for backend in backends() {
        eprintln!("backend {backend:?}");
        let content = Content::new("https-origin", 12 * 65536 + 5);
        let cert = TestCert::new();
        let dir = tempfile::tempdir().unwrap();
        let ca = cert.write(&dir.path().join("ca.pem"));
        let liar = Fake::start(&content, Behavior::BitFlip);
        let origin = Fake::start_with(&content, Behavior::Origin, Some(cert.config.clone()), None);
        let mut request = request(&content, dir.path(), &[&liar], vec![origin.https_url()], on(backend));
        request.tls = client_config(Some(&ca)).unwrap();
        let summary = run(&request, &FakeMetadata::new(&content, vec![], vec![])).unwrap();
        assert_output(&request, &content);
        assert_eq!(summary.banned, vec![liar.address.to_string()]);
        assert_eq!(fakes::Counters::get(&origin.counters.range_requests), content.piece_count());
    }
}

#[test]
fn binary_gets_metadata_over_tls_and_a_wrong_ca_gives_simple_mode_without_peers() {
    let content = Content::new("tls-service", 9 * 65536);
    let cert = TestCert::new();
    let other = TestCert::new();
    let dir = tempfile::tempdir().unwrap();
    let (ca, wrong_ca) = (cert.write(&dir.path().join("ca.pem")), other.write(&dir.path().join("other.pem")));
    let matched = Fake::start(&content, Behavior::Honest);
    let by_hand = Fake::start(&content, Behavior::Honest);
    let origin = Fake::start(&content, Behavior::Origin);
    let service_data = ServiceData { manifest: content.manifest(vec![]), peers: vec![matched.address] };
    let service = Fake::start_with(&content, Behavior::Service, Some(cert.config.clone()), Some(service_data));
    let service_url = format!("https://127.0.0.1:{}", service.address.port());
    let peer = by_hand.address.to_string();

    let wrong = tessera()
        .args(["get", "tls-service", "--service", &service_url, "--peer", &peer, "--source", &origin.url(), "--json"])
        .arg("--ca")
        .arg(&wrong_ca)
        .arg("-o")
        .arg(dir.path().join("simple.bin"))
        .output()
        .unwrap();
    assert!(wrong.status.success(), "{}", String::from_utf8_lossy(&wrong.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&wrong.stdout).unwrap();
    assert_eq!(summary["mode"], "simple");
    assert!(summary["mode_reason"].as_str().unwrap().contains("certificate"), "{summary}");
    assert_eq!(std::fs::read(dir.path().join("simple.bin")).unwrap(), *content.bytes);
    assert_eq!((matched.connections(), by_hand.connections()), (0, 0), "Simple mode touches no peer");

    let good = tessera()
        .args(["get", "tls-service", "--service", &service_url, "--peer", &peer, "--json"])
        .arg("--ca")
        .arg(&ca)
        .arg("-o")
        .arg(dir.path().join("p2p.bin"))
        .output()
        .unwrap();
    assert!(good.status.success(), "{}", String::from_utf8_lossy(&good.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&good.stdout).unwrap();
    assert_eq!(summary["mode"], "p2p", "{summary}");
    assert_eq!(std::fs::read(dir.path().join("p2p.bin")).unwrap(), *content.bytes);
    assert!(matched.good_sent() + by_hand.good_sent() >= content.piece_count(), "end game may ask twice");
    assert!(matched.good_sent() > 0, "the matched peer from the service was used");
}

#[test]
fn binary_writes_bans_and_bad_pieces_to_the_metrics_file() {
    // More pieces than the end game (8 by default): outside it, HTTP is only the fallback.
    let content = Content::new("metrics", 40 * 65536);
    let cert = TestCert::new();
    let dir = tempfile::tempdir().unwrap();
    let ca = cert.write(&dir.path().join("ca.pem"));
    // The liar is the only peer, so it is asked first and must be banned before the origin
    // (the fallback) takes over: the ban cannot race an honest peer finishing the download.
    let liar = Fake::start(&content, Behavior::BitFlip);
    let origin = Fake::start(&content, Behavior::Origin);
    let service_data = ServiceData { manifest: content.manifest(vec![]), peers: vec![liar.address] };
    let service = Fake::start_with(&content, Behavior::Service, Some(cert.config.clone()), Some(service_data));
    let service_url = format!("https://127.0.0.1:{}", service.address.port());
    let metrics = dir.path().join("tessera.prom");
    let output = tessera()
        .args(["get", "metrics", "--service", &service_url, "--source", &origin.url(), "--ban-after", "2", "--ca"])
        .arg(&ca)
        .arg("--metrics-file")
        .arg(&metrics)
        .arg("-o")
        .arg(dir.path().join("out.bin"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(std::fs::read(dir.path().join("out.bin")).unwrap(), *content.bytes);
    let text = std::fs::read_to_string(&metrics).unwrap();
    let liar_label = format!("source=\"{}\",kind=\"peer\"", liar.address);
    assert!(text.contains("tessera_download_success{content=\"metrics\"} 1\n"), "{text}");
    assert!(
        text.contains("tessera_download_bans{content=\"metrics\"} 1\n"),
        "{text}\nliar connections {}\nstderr: {}",
        liar.connections(),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        text.contains(&format!("tessera_download_source_banned{{content=\"metrics\",{liar_label}}} 1\n")),
        "{text}"
    );
    // Requests already in flight when the ban lands come back bad too; all are counted.
    let bad_line = format!("tessera_download_source_bad_pieces{{content=\"metrics\",{liar_label}}} ");
    let bad: u64 =
        text.lines().find_map(|l| l.strip_prefix(bad_line.as_str())).expect("liar's bad pieces").parse().unwrap();
    assert!(bad >= 2, "{text}");
}

/// Makes a special file with the system's own tool, inside the test's temp dir.
fn make_node(tool: &str, args: &[&str], path: &Path) {
    let status = Command::new(tool).arg(path).args(args).status().unwrap();
    assert!(status.success(), "{tool} {}", path.display());
}

#[test]
fn a_device_or_fifo_output_is_written_in_place_never_replaced() {
    use std::os::unix::fs::FileTypeExt;
    let content = Content::new("special", 3 * 1024 * 1024 + 7);
    let origin = Fake::start(&content, Behavior::Origin);
    let dir = tempfile::tempdir().unwrap();

    // A null device of our own (never /dev): the download goes into it and it stays a device.
    let device = dir.path().join("null");
    make_node("mknod", &["c", "1", "3"], &device);
    let output = tessera().args(["get", "special", "--source", &origin.url(), "-o"]).arg(&device).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(std::fs::metadata(&device).unwrap().file_type().is_char_device(), "the device node was replaced");
    assert!(!dir.path().join("null.tessera-partial").exists());

    // A FIFO: a reader gets every byte in order, and it stays a FIFO.
    let fifo = dir.path().join("pipe");
    make_node("mkfifo", &[], &fifo);
    let (sender, received) = std::sync::mpsc::channel();
    let reader_path = fifo.clone();
    std::thread::spawn(move || {
        let _ = sender.send(std::fs::read(&reader_path));
    });
    let output = tessera().args(["get", "special", "--source", &origin.url(), "-o"]).arg(&fifo).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let read = received.recv_timeout(std::time::Duration::from_secs(60)).expect("the FIFO's reader got an end");
    assert!(read.unwrap() == *content.bytes, "bytes read from the FIFO differ");
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo(), "the FIFO was replaced");
    assert!(!dir.path().join("pipe.tessera-partial").exists());
}

#[test]
fn output_to_stdout_a_directory_and_a_bare_metrics_file_name() {
    let content = Content::new("stdout", 3 * 1024 * 1024 + 11);
    let origin = Fake::start(&content, Behavior::Origin);
    let dir = tempfile::tempdir().unwrap();

    let output = tessera()
        .args(["get", "stdout", "--source", &origin.url(), "--metrics-file", "m.prom", "-o", "-"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(output.stdout == *content.bytes, "stdout carries exactly the verified bytes");
    assert!(stderr.contains("got stdout"), "the summary goes to stderr: {stderr}");
    assert!(!stderr.contains("m.prom"), "no complaint about a bare metrics file name: {stderr}");
    let metrics = std::fs::read_to_string(dir.path().join("m.prom")).unwrap();
    assert!(metrics.contains("tessera_download_success{content=\"stdout\"} 1"), "{metrics}");
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("m.prom")], "nothing else left behind");

    let target = dir.path().join("a-directory");
    std::fs::create_dir(&target).unwrap();
    let output = tessera().args(["get", "stdout", "--source", &origin.url(), "-o"]).arg(&target).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("a-directory") && stderr.contains("is a directory"), "{stderr}");
    assert!(target.is_dir() && std::fs::read_dir(&target).unwrap().next().is_none());

    let output = tessera()
        .args(["get", "stdout", "--source", &origin.url(), "--ca", "no-such-ca.pem", "-o"])
        .arg(dir.path().join("x"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "an unreadable --ca is bad input: {stderr}");
    assert!(stderr.contains("no-such-ca.pem"), "{stderr}");
}
