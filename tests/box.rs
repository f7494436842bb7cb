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
use harness::{get, get_with_service, metric, metric_settled, summary_source, tessera, Serve};

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

/// `tessera_http_requests_total` with status 200, over the server's workers.
fn ok_responses(address: &str) -> u64 {
    metric(address, "tessera_http_requests_total{", "code=\"200\"")
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
    // Pieces go to the devices by `sendfile` at any load (by default only with many connections).
    flags.extend(config_flags(dir.path(), "box.toml", "[serve]\nsend_file_connections_min = 0\n"));
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
    assert!(metric(&cache.data_plane, "tessera_file_sends_total", "") > 0, "pieces went by sendfile");
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

/// A box given several upstream services asks them in rendezvous order per content: the one
/// ranked first is down, the next one answers, and the fill goes on.
#[test]
fn a_box_whose_first_ranked_upstream_service_is_down_fills_from_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let content = Content::new("two-services", 4 * 65536 + 9);
    let (seed, seed_flags) = seed(dir.path(), &content);
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let services = [format!("https://{down}"), seed.service_url.clone()];
    let mut flags = vec!["--upstream".to_string(), services[1].clone(), "--upstream".to_string(), services[0].clone()];
    flags.extend(seed_flags[2..].iter().cloned());
    flags.extend(["--upstream-peer".to_string(), seed.data_plane.clone()]);
    flags.extend(config_flags(dir.path(), "box.toml", &first_ranked(content.id.as_str(), &services)));
    let cache = Serve::start(&dir.path().join("box"), 2, &flags);
    let (status, head, body) = get(&cache.data_plane, &format!("/v1/content/{}", content.id.as_str()), None);
    assert_eq!(status, 200, "{head}\n{}", cache.log());
    assert!(body == *content.bytes, "other bytes ({} of {})", body.len(), content.bytes.len());
    let log = cache.log();
    assert!(log.contains("metadata service failed; asking the next") && log.contains(&services[0]), "{log}");
}

#[test]
fn a_lying_parent_is_banned_and_the_bytes_stay_exact() {
    let dir = tempfile::tempdir().unwrap();
    let content = Content::new("lied", 10 * 65536);
    let (seed, mut flags) = seed(dir.path(), &content);
    let liar = Fake::start(&content, Behavior::BitFlip);
    let parents = [liar.address.to_string(), seed.data_plane.clone()];
    for parent in &parents {
        flags.extend(["--upstream-peer".to_string(), parent.clone()]);
    }
    flags.extend(config_flags(dir.path(), "box.toml", &first_ranked(content.id.as_str(), &parents)));
    let cache = Serve::start(&dir.path().join("box"), 2, &flags);

    let (status, head, body) = get(&cache.data_plane, &format!("/v1/content/{}", content.id.as_str()), None);
    assert_eq!(status, 200, "{head}\n{}", cache.log());
    assert!(body == *content.bytes, "other bytes ({} of {})", body.len(), content.bytes.len());
    assert!(liar.bad_sent() >= 1, "the liar was asked");
    let log = cache.log();
    assert!(log.contains("upstream source banned") && log.contains(&liar.address.to_string()), "{log}");
    assert_eq!(metric_settled(&cache.data_plane, "tessera_fill_bans_total ", 1), 1);
    assert!(metric(&cache.data_plane, "tessera_fill_bad_pieces_total ", "") >= 2);
    // The status page shows the ban, the healthy service and what the box now holds.
    let (_, _, body) = get(&cache.data_plane, "/status.json", None);
    let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((&status["role"], &status["bans_in_force"]), (&"cache box".into(), &1.into()), "{status}");
    let liar_row = status["fill"]["sources"].as_array().unwrap().iter().find(|s| s["name"] == liar.address.to_string());
    assert_eq!(liar_row.map(|row| &row["banned"]), Some(&true.into()), "{status}");
    assert!(status["fill"]["service"]["last_answer_unix_s"].is_u64(), "{status}");
    assert_eq!(status["contents"][0]["pieces_held"], content.piece_count(), "{status}");
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
    // Streamed pieces go by `sendfile` at any load (by default only with many connections).
    let text = "[serve]\npending_timeout_ms = 1000\nsend_file_connections_min = 0\n\
                [upstream]\nconnections_per_source_max = 1\npipeline_depth = 1\n";
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
    let summary = get_with_service("announced", &cache.service_url, &ca, &out);
    assert_eq!(summary["mode"], "p2p", "{summary}");
    let from_box = summary_source(&summary, &cache.data_plane);
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

/// What a user checks on a box's `/metrics` after a cold fill and a hit: one miss then one hit
/// with the content's bytes each, the fill latency histograms, upstream bytes by kind, and a
/// lying parent's bad pieces and ban under its own address.
#[test]
fn metrics_show_the_miss_the_hit_the_fill_latency_and_the_liar() {
    let dir = tempfile::tempdir().unwrap();
    let content = Content::new("watched", 9 * 65536 + 4321);
    let (seed, mut flags) = seed(dir.path(), &content);
    let liar = Fake::start(&content, Behavior::BitFlip);
    let liar_address = liar.address.to_string();
    let parents = [liar_address.clone(), seed.data_plane.clone()];
    for parent in &parents {
        flags.extend(["--upstream-peer".to_string(), parent.clone()]);
    }
    flags.extend(config_flags(dir.path(), "box.toml", &first_ranked("watched", &parents)));
    let cache = Serve::start(&dir.path().join("box"), 2, &flags);
    let address = cache.data_plane.as_str();
    let length = content.bytes.len() as u64;
    let target = "/v1/content/watched";

    let (status, head, body) = get(address, target, None);
    assert_eq!(status, 200, "{head}\n{}", cache.log());
    assert!(body == *content.bytes, "other bytes ({} of {})", body.len(), content.bytes.len());
    assert_eq!(metric(address, "tessera_cache_requests_total{", "result=\"miss\""), 1);
    assert_eq!(metric(address, "tessera_cache_requests_total{", "result=\"hit\""), 0);
    assert_eq!(metric(address, "tessera_cache_bytes_total{", "result=\"miss\""), length);
    let (status, _, body) = get(address, target, None);
    assert!(status == 200 && body == *content.bytes, "the hit has the bytes");
    assert_eq!(metric(address, "tessera_cache_requests_total{", "result=\"hit\""), 1);
    assert_eq!(metric(address, "tessera_cache_requests_total{", "result=\"miss\""), 1, "the hit is no miss");
    assert_eq!(metric(address, "tessera_cache_bytes_total{", "result=\"hit\""), length);

    let upstream = metric_settled(address, "tessera_fill_upstream_bytes_total{kind=\"parent\"}", length);
    assert_eq!(upstream, length, "each verified byte came from a parent once");
    assert_eq!(metric(address, "tessera_fill_first_byte_seconds_count", ""), 1, "one miss, one first byte");
    let buckets = metric(address, "tessera_fill_first_byte_seconds_bucket{le=\"+Inf\"}", "");
    assert_eq!(buckets, 1, "the +Inf bucket holds every sample");
    assert!(metric(address, "tessera_fill_piece_fetch_seconds_count", "") >= content.piece_count());
    let seed_label = format!("source=\"{}\"", seed.data_plane);
    assert_eq!(metric(address, "tessera_fill_source_bytes_total{", &seed_label), length);

    let liar_label = format!("source=\"{liar_address}\"");
    assert!(liar.bad_sent() >= 1, "the liar was asked");
    assert!(metric(address, "tessera_fill_source_bad_pieces_total{", &liar_label) >= 1);
    assert_eq!(metric(address, "tessera_fill_source_bytes_total{", &liar_label), 0, "no byte of a liar counts");
    assert_eq!(metric(address, "tessera_fill_source_banned{", &liar_label), 1, "{}", cache.log());
    assert_eq!(metric(address, "tessera_fill_source_banned{", &seed_label), 0);
    let log = cache.log();
    let ban = log.lines().find(|line| line.contains("upstream source banned")).unwrap_or_else(|| panic!("{log}"));
    assert!(ban.contains(&liar_address) && ban.contains("bad_pieces="), "{ban}");
}

/// Republishes `content` on a running seed's catalog (catalog only: the seed holds its store),
/// with `origin` as its HTTP source.
fn republish(data: &Path, content: &Content, origin: &Fake) {
    publish(data, content, &["--source".to_string(), origin.url(), "--no-store".to_string()]);
}

/// Metadata expires: after `metadata_expiry_ms` the box refetches it, and once the id's hash
/// file has changed upstream the box serves the new version (whole and on the piece API), never
/// a mix of the two.
#[test]
fn after_the_metadata_expiry_a_republished_id_is_served_in_its_new_version() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (Content::new("renewed", 5 * 65536 + 10), Content::new("renewed", 4 * 65536 + 77));
    let (old_origin, new_origin) = (Fake::start(&old, Behavior::Origin), Fake::start(&new, Behavior::Origin));
    let data = dir.path().join("seed");
    republish(&data, &old, &old_origin);
    let seed_config = dir.path().join("seed.toml");
    std::fs::write(&seed_config, "[service]\ncatalog_rescan_ms = 100\n").unwrap();
    let seed = Serve::start(&data, 1, &["--config".to_string(), seed_config.to_str().unwrap().to_string()]);
    let box_config = dir.path().join("box.toml");
    std::fs::write(&box_config, "[upstream]\nmetadata_expiry_ms = 300\n").unwrap();
    let ca = data.join("tls/ca.pem");
    let flags = ["--upstream", &seed.service_url, "--upstream-ca", ca.to_str().unwrap(), "--config"].map(String::from);
    let mut flags = flags.to_vec();
    flags.push(box_config.to_str().unwrap().to_string());
    let cache = Serve::start(&dir.path().join("box"), 2, &flags);

    let (status, head, body) = get(&cache.data_plane, "/v1/content/renewed", None);
    assert_eq!(status, 200, "{head}\n{}", cache.log());
    assert!(body == *old.bytes, "the first version ({} of {} bytes)", body.len(), old.bytes.len());
    republish(&data, &new, &new_origin);

    let deadline = Instant::now() + WAIT;
    loop {
        let (status, head, body) = get(&cache.data_plane, "/v1/content/renewed", None);
        assert_eq!(status, 200, "{head}\n{}", cache.log());
        if body == *new.bytes {
            break;
        }
        assert!(body == *old.bytes, "neither version: a mix of the two ({} bytes)", body.len());
        assert!(Instant::now() < deadline, "the new version was never served:\n{}", cache.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, _, body) = get(&cache.data_plane, "/v1/content/renewed/hashfile", None);
    assert_eq!((status, body), (200, new.hashfile.clone()), "every worker serves the new hash file");
    let (status, _, body) = get(&cache.data_plane, "/v1/content/renewed/piece/4", None);
    assert_eq!((status, body.as_slice()), (200, new.piece(4)));
    assert!(cache.log().contains("serving the new version"), "{}", cache.log());
}

/// At a fill limit a device gets 503 with `Retry-After` at once, never a hang, and the fill
/// already running still completes byte-exact.
#[test]
fn at_the_fill_limit_another_content_gets_503_with_retry_after_and_the_running_fill_completes() {
    const PIECE_DELAY_MS: u64 = 400;
    let dir = tempfile::tempdir().unwrap();
    let (running, refused) = (Content::new("running", 8 * 65536 + 5), Content::new("refused", 2 * 65536));
    let data = dir.path().join("seed");
    publish(&data, &refused, &[]);
    let (seed, mut flags) = seed(dir.path(), &running);
    // The only parent is slow: the first fill lasts several seconds.
    let parent = Fake::start(&running, Behavior::Slow(PIECE_DELAY_MS));
    let config = dir.path().join("box.toml");
    let text = "[upstream]\nfills_in_flight_max = 1\nconnections_per_source_max = 1\npipeline_depth = 1\n";
    std::fs::write(&config, text).unwrap();
    flags.extend(["--upstream-peer".to_string(), parent.address.to_string()]);
    flags.extend(["--config".to_string(), config.to_str().unwrap().to_string()]);
    let cache = Serve::start(&dir.path().join("box"), 2, &flags);

    let mut first = TcpStream::connect(&cache.data_plane).unwrap();
    first.set_read_timeout(Some(WAIT)).unwrap();
    write!(first, "GET /v1/content/running HTTP/1.1\r\nHost: box\r\nConnection: close\r\n\r\n").unwrap();
    // Its head comes with its first piece: the fill is running, with a waiter.
    let mut wire = Vec::new();
    let mut buffer = [0u8; 4096];
    while !wire.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = first.read(&mut buffer).unwrap();
        assert!(read > 0, "closed before its head:\n{}", cache.log());
        wire.extend_from_slice(&buffer[..read]);
    }
    assert!(wire.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&wire));

    let (status, head, body) = get(&cache.data_plane, "/v1/content/refused", None);
    assert_eq!(status, 503, "{head}\n{}\n{}", String::from_utf8_lossy(&body), cache.log());
    assert!(head.contains("Retry-After: 1\r\n"), "{head}");
    // The fill thread publishes its counters after it answered: wait for the refusal to show.
    assert!(metric_settled(&cache.data_plane, "tessera_fill_busy_total ", 1) >= 1);

    first.read_to_end(&mut wire).unwrap();
    let split = wire.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(wire[split..] == *running.bytes, "other bytes ({} of {})", wire.len() - split, running.bytes.len());
    assert_eq!(parent.good_sent(), running.piece_count(), "each piece was fetched once");
    drop(seed);
}

/// Flags for a box on `backend` whose only parent is `parent`, with `config` as its config file.
/// Config lines naming the box so that, of two or more parents (ranked per content by rendezvous
/// hashing of the box's id), `parents[0]` ranks first for content `id`: the faulty parent a
/// test is about is the one the box asks.
fn first_ranked(id: &str, parents: &[String]) -> String {
    let name = (0..1000)
        .map(|n| format!("box-{n}"))
        .find(|name| tessera::rendezvous::rank(name, id, parents)[0] == 0)
        .expect("one name in 1000 ranks the parent first");
    format!("[announce]\npeer_id = \"{name}\"\n")
}

/// `--config` with `text` in `dir/NAME`.
fn config_flags(dir: &Path, name: &str, text: &str) -> Vec<String> {
    let file = dir.join(name);
    std::fs::write(&file, text).unwrap();
    vec!["--config".to_string(), file.to_str().unwrap().to_string()]
}

fn box_flags(dir: &Path, seed_flags: Vec<String>, parents: &[String], backend: &str, config: &str) -> Vec<String> {
    let file = dir.join("box.toml");
    std::fs::write(&file, config).unwrap();
    let mut flags = seed_flags;
    for parent in parents {
        flags.extend(["--upstream-peer".to_string(), parent.clone()]);
    }
    flags.extend(["--backend".to_string(), backend.into(), "--config".into(), file.to_str().unwrap().into()]);
    flags
}

/// Pieces asked of a parent one after another go over one kept-alive connection.
fn pieces_from_a_parent_share_one_connection(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let content = Content::new("kept", 6 * 65536 + 5);
    let (_seed, flags) = seed(dir.path(), &content);
    let parent = Fake::start(&content, Behavior::Honest);
    let config = "[upstream]\nfill_whole = false\n";
    let flags = box_flags(dir.path(), flags, &[parent.address.to_string()], backend, config);
    let cache = Serve::start(&dir.path().join("box"), 2, &flags);
    for index in 0..content.piece_count() {
        let (status, head, body) = get(&cache.data_plane, &format!("/v1/content/kept/piece/{index}"), None);
        assert_eq!(status, 200, "{head}\n{}", cache.log());
        assert_eq!(body, content.piece(index));
    }
    assert_eq!(parent.good_sent(), content.piece_count(), "each piece was fetched once");
    assert_eq!(parent.connections(), 1, "the box opened one connection to its parent for all pieces");
}

#[test]
fn pieces_from_a_parent_share_one_connection_on_the_default_backend() {
    pieces_from_a_parent_share_one_connection("auto");
}

#[test]
fn pieces_from_a_parent_share_one_connection_on_epoll() {
    pieces_from_a_parent_share_one_connection("epoll");
}

/// With one connection per source, a slow parent gets the read-ahead's requests pipelined.
fn requests_to_a_parent_are_pipelined(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let content = Content::new("piped", 8 * 65536);
    let (_seed, flags) = seed(dir.path(), &content);
    let parent = Fake::start(&content, Behavior::Slow(40));
    let config = "[upstream]\nconnections_per_source_max = 1\npipeline_depth = 4\n";
    let flags = box_flags(dir.path(), flags, &[parent.address.to_string()], backend, config);
    let cache = Serve::start(&dir.path().join("box"), 2, &flags);
    let (status, head, body) = get(&cache.data_plane, "/v1/content/piped", None);
    assert_eq!(status, 200, "{head}\n{}", cache.log());
    assert!(body == *content.bytes, "other bytes ({} of {})", body.len(), content.bytes.len());
    assert_eq!(parent.connections(), 1, "one connection (connections_per_source_max = 1)");
    assert_eq!(parent.good_sent(), content.piece_count(), "each piece was fetched once");
    assert!(parent.pipelined() >= 1, "requests were sent before earlier answers were in");
}

#[test]
fn requests_to_a_parent_are_pipelined_on_the_default_backend() {
    requests_to_a_parent_are_pipelined("auto");
}

#[test]
fn requests_to_a_parent_are_pipelined_on_epoll() {
    requests_to_a_parent_are_pipelined("epoll");
}

/// A box with two parents, the first (ranked first for the content) failing as `behavior` does,
/// fills content `id` whole with exact bytes; the failing parent was asked and pieces were asked
/// again. Returns the test's dir, the box and the failing parent.
fn fill_past_a_failing_parent(
    id: &str,
    behavior: Behavior,
    backend: &str,
    config: &str,
) -> (tempfile::TempDir, Serve, Fake) {
    let dir = tempfile::tempdir().unwrap();
    let content = Content::new(id, 8 * 65536 + 17);
    let (seed, flags) = seed(dir.path(), &content);
    let failing = Fake::start(&content, behavior);
    let parents = [failing.address.to_string(), seed.data_plane.clone()];
    let config = format!("{config}\n{}", first_ranked(id, &parents));
    let flags = box_flags(dir.path(), flags, &parents, backend, &config);
    let cache = Serve::start(&dir.path().join("box"), 2, &flags);
    let (status, head, body) = get(&cache.data_plane, &format!("/v1/content/{id}"), None);
    assert_eq!(status, 200, "{head}\n{}", cache.log());
    assert!(body == *content.bytes, "other bytes ({} of {})", body.len(), content.bytes.len());
    assert!(failing.requests() >= 1, "the failing parent was asked");
    assert!(metric(&cache.data_plane, "tessera_fill_retries_total ", "") >= 1, "{}", cache.log());
    let (status, _, body) = get(&cache.data_plane, &format!("/v1/content/{id}/piece/0"), None);
    assert_eq!((status, body.as_slice()), (200, content.piece(0)));
    drop(seed);
    (dir, cache, failing)
}

/// A parent that closes its connection in the middle of a body: the piece comes from the other
/// parent, nothing of the cut body is kept, and nobody is blamed for a lie.
fn a_parent_closing_mid_body_is_asked_elsewhere(backend: &str) {
    let (_dir, cache, cutter) = fill_past_a_failing_parent("cut", Behavior::CutMidBody, backend, "");
    assert!(cutter.bad_sent() >= 1, "a body was cut");
    assert_eq!(metric(&cache.data_plane, "tessera_fill_bad_pieces_total ", ""), 0, "a cut is not a bad piece");
}

/// A parent that hangs in the middle of a body, with the request timeout far beyond the test's
/// wait: the stall timeout leaves it, and the next parent fills the content.
#[test]
fn a_parent_hanging_mid_body_is_left_after_the_stall_timeout() {
    let config = "[upstream]\nrequest_timeout_ms = 120000\nstall_timeout_ms = 500\n";
    let (_dir, cache, hung) = fill_past_a_failing_parent("hung", Behavior::HangMidBody, "auto", config);
    assert!(hung.bad_sent() >= 1, "a body was begun and left hanging");
    assert_eq!(metric(&cache.data_plane, "tessera_fill_bad_pieces_total ", ""), 0, "a stall is not a bad piece");
}

#[test]
fn a_parent_closing_mid_body_is_asked_elsewhere_on_the_default_backend() {
    a_parent_closing_mid_body_is_asked_elsewhere("auto");
}

#[test]
fn a_parent_closing_mid_body_is_asked_elsewhere_on_epoll() {
    a_parent_closing_mid_body_is_asked_elsewhere("epoll");
}

/// A parent that never answers: its requests time out and the pieces come from the other one.
fn a_stalled_parent_times_out_and_is_asked_elsewhere(backend: &str) {
    let config = "[upstream]\nconnect_timeout_ms = 300\nrequest_timeout_ms = 300\n";
    let (_dir, cache, _) = fill_past_a_failing_parent("stalled", Behavior::Stall, backend, config);
    assert!(!cache.log().contains("banned"), "a stall is not a lie: {}", cache.log());
}

#[test]
fn a_stalled_parent_times_out_and_is_asked_elsewhere_on_the_default_backend() {
    a_stalled_parent_times_out_and_is_asked_elsewhere("auto");
}

#[test]
fn a_stalled_parent_times_out_and_is_asked_elsewhere_on_epoll() {
    a_stalled_parent_times_out_and_is_asked_elsewhere("epoll");
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
    /// `/content.bin` is a 302 to `/moved/content.bin`, which answers as `Bytes`.
    Redirect,
    /// Every request is a 302 to itself.
    RedirectLoop,
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
    let redirect_to = match answer {
        OriginAnswer::Redirect if request.path() == "/content.bin" => Some("/moved/content.bin"),
        OriginAnswer::RedirectLoop => Some("/content.bin"),
        _ => None,
    };
    if let Some(location) = redirect_to {
        let head =
            format!("HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let _ = stream.write_all(head.as_bytes());
        return;
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
fn a_redirecting_origin_is_followed_and_a_redirect_loop_is_a_502_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let moved = Content::new("moved", 300_000);
    let looping = Content::new("looping", 1_000);
    let origin = Origin::start(moved.bytes.clone(), OriginAnswer::Redirect);
    let loop_origin = Origin::start(looping.bytes.clone(), OriginAnswer::RedirectLoop);
    let contents = [(&moved, origin.url()), (&looping, loop_origin.url())];
    let (_seed, cache) = simple_box(dir.path(), &contents, "auto", "");

    let (status, head, body) = ask(&cache.data_plane, "GET", "/v1/content/moved", None);
    assert_eq!(status, 200, "{head}\n{}", cache.log());
    assert!(body == *moved.bytes, "the redirect's target's bytes, whole");
    let (status, head, body) = ask(&cache.data_plane, "GET", "/v1/content/moved", Some("bytes=1000-1999"));
    assert_eq!(status, 206, "{head}");
    assert!(body == moved.bytes[1000..2000], "the range, asked again of the redirect's target");
    assert_eq!(origin.requests(), 4, "each device request: the 302, then its target");

    let (status, head, body) = ask(&cache.data_plane, "GET", "/v1/content/looping", None);
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 502, "{head}{text}");
    assert!(text.contains("more than 5 redirects"), "names the loop: {text}");
    assert_eq!(loop_origin.requests(), 6, "the first request and five redirects, no more");
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

/// `GET` of `path` on the service at `service_url` (trusting `ca`), with `curl`: (status, body).
fn service_get(service_url: &str, ca: &Path, path: &str) -> (u16, String) {
    let output = std::process::Command::new("curl")
        .args(["-s", "-S", "--max-time", "30", "-w", "\n%{http_code}", "--cacert"])
        .arg(ca)
        .arg(format!("{service_url}{path}"))
        .output()
        .expect("curl runs (scripts/test installs it)");
    assert!(output.status.success(), "curl {path}: {}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.parse().unwrap(), body.to_string())
}

#[test]
fn a_device_gets_an_id_the_box_never_saw_through_the_boxs_service() {
    let dir = tempfile::tempdir().unwrap();
    let content = Content::new("unseen", 7 * 65536 + 4321);
    // A second content on the seed whose hash file no longer verifies against its manifest.
    let tampered = Content::new("tampered", 65536);
    let data = dir.path().join("seed");
    publish(&data, &tampered, &[]);
    let hashfile = data.join("catalog/tampered.hashfile");
    let mut bytes = std::fs::read(&hashfile).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(&hashfile, bytes).unwrap();
    let (seed, mut flags) = seed(dir.path(), &content);
    flags.extend(["--upstream-peer".to_string(), seed.data_plane.clone()]);
    let box_dir = dir.path().join("box");
    let cache = Serve::start(&box_dir, 2, &flags);
    assert!(!box_dir.join("catalog/unseen.manifest.json").exists(), "the box has never seen it");

    // The device knows only the box: its service for the metadata, its data plane for pieces.
    let ca = box_dir.join("tls/ca.pem");
    let out = dir.path().join("got.bin");
    let output = tessera()
        .args(["get", "unseen", "--service", &cache.service_url, "--peer", &cache.data_plane, "--json", "--ca"])
        .arg(&ca)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}\n{}", String::from_utf8_lossy(&output.stderr), cache.log());
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["mode"], "p2p", "metadata verified through the box: {summary}");
    let length = content.bytes.len() as u64;
    assert_eq!(summary_source(&summary, &cache.data_plane)["bytes"], length, "every byte from the box: {summary}");
    assert!(std::fs::read(&out).unwrap() == *content.bytes, "other bytes");
    assert!(box_dir.join("catalog/unseen.manifest.json").exists(), "the box cataloged what it fetched");
    assert_eq!(ok_responses(&seed.data_plane), content.piece_count(), "the box fetched each piece once");

    // What upstream lacks, or what the box cannot vouch for, is a 404 that says why.
    let (status, body) = service_get(&cache.service_url, &ca, "/v1/content/nosuch/manifest");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no manifest for nosuch") && body.contains("no such content"), "{body}");
    let (status, body) = service_get(&cache.service_url, &ca, "/v1/content/tampered/hashfile");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no hash file for tampered") && body.contains("does not match"), "{body}");
    assert!(!box_dir.join("catalog/tampered.manifest.json").exists(), "nothing unverified is cataloged");
}
