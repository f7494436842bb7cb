//! Several boxes as one cache: their services share a peer registry on a real `redis-server`
//! (started here on a free loopback port, nothing written outside the test's temp dir), so a
//! device asking any box's service is told about content another box holds. Redis restarts
//! empty, goes down, peers expire, announces are authenticated.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod harness;
#[path = "harness/redis.rs"]
mod redis_server;

use harness::{publish, tessera, Serve};
use redis_server::Redis;
use tessera::config::{Config, RegistryBackend};
use tessera::content::ContentId;
use tessera::control::api::{AnnounceRequest, AnnouncedContent};
use tessera::control::{ClientError, MetadataClient, Service};
use tessera::tls::TlsClientOptions;

/// Bound of every wait for something the boxes do on their own.
const WAIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

/// Polls `check` until it holds, at most [`WAIT`].
fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(POLL);
    }
}

/// A box's config: the shared Redis, the site's token file, fast announces and reconnects.
fn box_config(dir: &Path, name: &str, redis_url: &str, token_file: &Path) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        "[service]\nannounce_token_file = {token:?}\nannounces_per_peer_per_minute_max = 1000\n\
         [announce]\npeer_id = \"{name}\"\ninterval_ms = 300\nretry_ms = 200\n\
         [registry]\nbackend = \"redis\"\nurl = \"{redis_url}\"\nkey_prefix = \"fleet:\"\n\
         reconnect_backoff_ms = 50\nreconnect_backoff_ms_max = 200\n",
        token = token_file.to_str().unwrap(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn start_box(dir: &Path, name: &str, redis_url: &str) -> Serve {
    let config = box_config(dir, name, redis_url, &dir.join("site.token"));
    Serve::start(&dir.join(name), 1, &["--config".to_string(), config.to_str().unwrap().to_string()])
}

fn client(ca: &Path) -> MetadataClient {
    MetadataClient::new(TlsClientOptions { ca_file: Some(ca.to_path_buf()), ..Default::default() }).unwrap()
}

fn addresses(client: &MetadataClient, service_url: &str, id: &str) -> Vec<String> {
    let id = ContentId::parse(id).unwrap();
    client.peers(service_url, &id, "default", None).unwrap().into_iter().map(|p| p.address).collect()
}

/// The value of an unlabelled metric line of the service's `/metrics`.
fn metric(client: &MetadataClient, service_url: &str, name: &str) -> u64 {
    let text = client.metrics(service_url).unwrap();
    let line = text.lines().find(|line| line.split_whitespace().next() == Some(name));
    line.and_then(|line| line.split_whitespace().nth(1)?.parse().ok()).unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[test]
fn two_boxes_share_redis_and_survive_its_restart_and_its_absence() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(&dir.path().join("redis"));
    let content: Vec<u8> = (0..4 * 65536 + 99u32).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
    publish(&dir.path().join("a"), "pkg", &content, &[]);
    // Box B knows the content's metadata (so devices may ask it) but holds no piece of it.
    publish(&dir.path().join("b"), "pkg", &content, &["--no-store"]);
    let box_a = start_box(dir.path(), "a", &redis.url());
    let box_b = start_box(dir.path(), "b", &redis.url());
    let ca_b = dir.path().join("b/tls/ca.pem");
    let device = client(&ca_b);

    // B's service was never told about A: it finds A through Redis.
    wait_until("box B's service names box A", || {
        addresses(&device, &box_b.service_url, "pkg") == [box_a.data_plane.as_str()]
    });
    assert_eq!(redis.holders("fleet:", "default", "pkg"), ["a"]);
    assert_eq!(metric(&device, &box_b.service_url, "tessera_registry_fallback"), 0);

    let out = dir.path().join("got.bin");
    let output = tessera()
        .args(["get", "pkg", "--service", &box_b.service_url, "--json", "--ca"])
        .arg(&ca_b)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["mode"], "p2p", "{summary}");
    let from_a = summary["sources"].as_array().unwrap().iter().find(|s| s["source"] == box_a.data_plane.as_str());
    let from_a = from_a.unwrap_or_else(|| panic!("box A was not used: {summary}"));
    assert_eq!((from_a["kind"].as_str(), from_a["pieces"].as_u64()), (Some("peer"), Some(5)), "{summary}");
    assert_eq!(std::fs::read(&out).unwrap(), content);

    // Redis goes away: manifests are still served, and each service matches from what it heard.
    let (redis_dir, port) = redis.stop();
    let device_a = client(&dir.path().join("a/tls/ca.pem"));
    wait_until("box A's service says it falls back", || {
        metric(&device_a, &box_a.service_url, "tessera_registry_fallback") == 1
    });
    let manifest = device.fetch_manifest(&box_b.service_url, &ContentId::parse("pkg").unwrap()).unwrap();
    assert_eq!(manifest.content_length, content.len() as u64);
    assert_eq!(addresses(&device_a, &box_a.service_url, "pkg"), [box_a.data_plane.as_str()]);
    assert!(metric(&device_a, &box_a.service_url, "tessera_registry_backend_errors_total") >= 1);
    assert!(box_a.log().contains("matching peers from this service's own announces"), "{}", box_a.log());

    // Redis comes back empty: the boxes fill it again, and B finds A through it once more.
    let redis = Redis::start_on(&redis_dir, port);
    wait_until("box A is in the restarted Redis", || redis.holders("fleet:", "default", "pkg") == ["a"]);
    wait_until("box B's service names box A again", || {
        addresses(&device, &box_b.service_url, "pkg") == [box_a.data_plane.as_str()]
    });
    wait_until("box A's service left fallback", || {
        metric(&device_a, &box_a.service_url, "tessera_registry_fallback") == 0
    });
    assert!(metric(&device_a, &box_a.service_url, "tessera_registry_reconnects_total") >= 1);
}

/// A service on `redis` with announces lasting `ttl_ms`, in this process.
fn service(dir: &Path, redis: &Redis, ttl_ms: u64) -> tessera::control::ServiceHandle {
    let mut config = Config { data_dir: dir.join("data"), ..Config::default() };
    config.service.listen = "127.0.0.1:0".into();
    config.service.peer_ttl_ms = ttl_ms;
    config.registry.backend = RegistryBackend::Redis;
    config.registry.url = redis.url();
    config.registry.key_prefix = "fleet:".into();
    Service::start(&config).unwrap()
}

fn announce_of(peer: &str, address: &str) -> AnnounceRequest {
    AnnounceRequest {
        peer_id: peer.into(),
        group: "default".into(),
        address: address.into(),
        contents: vec![AnnouncedContent { id: "pkg".into(), bitfield: Some("c0".into()) }],
    }
}

fn status_of(result: Result<(), ClientError>) -> u16 {
    match result {
        Err(ClientError::Status { status, .. }) => status,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn announces_need_the_site_token_and_peers_expire_after_their_ttl() {
    const TTL_MS: u64 = 1_000;
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(&dir.path().join("redis"));
    let service = service(dir.path(), &redis, TTL_MS);
    let url = format!("https://{}", service.local_addr());
    let client = client(service.dev_ca_file().unwrap());
    let token_file = service.announce_token_file().unwrap().to_path_buf();
    let token = std::fs::read_to_string(&token_file).unwrap();
    let token = token.trim();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&token_file).unwrap().permissions()) & 0o777,
        0o600
    );

    let announce = announce_of("peer-x", "127.0.0.1:9");
    assert_eq!(status_of(client.announce(&url, None, &announce)), 401);
    assert_eq!(status_of(client.announce(&url, Some("not-the-site-token-000"), &announce)), 403);
    assert!(redis.holders("fleet:", "default", "pkg").is_empty(), "a refused announce reached Redis");
    let metrics = client.metrics(&url).unwrap();
    assert!(metrics.contains("tessera_announces_refused_total{reason=\"no_token\"} 1"), "{metrics}");
    assert!(metrics.contains("tessera_announces_refused_total{reason=\"bad_token\"} 1"), "{metrics}");

    let announced_at = Instant::now();
    client.announce(&url, Some(token), &announce).unwrap();
    assert_eq!(redis.holders("fleet:", "default", "pkg"), ["peer-x"]);
    let peers = client.peers(&url, &ContentId::parse("pkg").unwrap(), "default", Some("other")).unwrap();
    assert_eq!(peers.len(), 1);
    assert_eq!((peers[0].address.as_str(), peers[0].bitfield.as_deref()), ("127.0.0.1:9", Some("c0")));
    assert!(client.peers(&url, &ContentId::parse("pkg").unwrap(), "default", Some("peer-x")).unwrap().is_empty());

    // Gone after the TTL, from the answers and (pruned on read) from Redis.
    wait_until("the peer expired", || addresses(&client, &url, "pkg").is_empty());
    assert!(announced_at.elapsed() >= Duration::from_millis(TTL_MS), "expired before its TTL");
    assert!(redis.holders("fleet:", "default", "pkg").is_empty());
}

/// Bound of the whole download in the failover test (it is paced to take about 4 s).
const DOWNLOAD_WAIT: Duration = Duration::from_secs(60);

/// A `tessera get` child, killed if the test ends before it does.
struct Device(std::process::Child);

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sum of `prefix` samples with `label` on a box's data-plane `/metrics`.
fn data_plane_metric(serve: &Serve, prefix: &str, label: &str) -> u64 {
    harness::metric(&serve.data_plane, prefix, label)
}

#[test]
fn a_device_continues_from_the_next_ranked_box_within_a_second_of_its_box_being_killed() {
    const PIECE_BYTES: u64 = 65536;
    const PIECES: u64 = 128;
    // 32 pieces a second: the download takes about 4 s, and the test kills the primary box once
    // it has served a quarter, with seconds to spare whatever the machine's speed.
    const RATE_BYTES_PER_S: u64 = 32 * PIECE_BYTES;
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(&dir.path().join("redis"));
    let content: Vec<u8> = (0..PIECES * PIECE_BYTES).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    publish(&dir.path().join("a"), "pkg", &content, &[]);
    publish(&dir.path().join("b"), "pkg", &content, &[]);
    let boxes = [start_box(dir.path(), "a", &redis.url()), start_box(dir.path(), "b", &redis.url())];

    // A third service that is down, and a device for which it ranks first: metadata comes from
    // the next service. Which box is primary is the ranking's, computed as `get` does.
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let down_url = format!("https://{down}");
    let services = [down_url.clone(), boxes[0].service_url.clone(), boxes[1].service_url.clone()];
    let device_id = (0..1000)
        .map(|n| format!("device-{n}"))
        .find(|device| tessera::rendezvous::rank(device, "pkg", &services)[0] == 0)
        .expect("one name in 1000 ranks the down service first");
    let device_id = device_id.as_str();
    let names: Vec<String> = boxes.iter().map(|b| b.data_plane.clone()).collect();
    let order = tessera::rendezvous::rank(device_id, "pkg", &names);
    let [primary, second] = boxes;
    let (mut primary, second) = if order[0] == 0 { (primary, second) } else { (second, primary) };

    let cas = dir.path().join("cas.pem");
    let pem = [
        std::fs::read(dir.path().join("a/tls/ca.pem")).unwrap(),
        std::fs::read(dir.path().join("b/tls/ca.pem")).unwrap(),
    ];
    std::fs::write(&cas, pem.concat()).unwrap();
    let device_config = dir.path().join("device.toml");
    let text = format!("[download]\ndevice_id = \"{device_id}\"\nrate_bytes_per_s_max = {RATE_BYTES_PER_S}\n");
    std::fs::write(&device_config, text).unwrap();
    let out = dir.path().join("got.bin");
    let mut device = Device(
        tessera()
            .args(["get", "pkg", "--json", "--config", device_config.to_str().unwrap(), "--ca", cas.to_str().unwrap()])
            .args(["--service", &second.service_url, "--service", &down_url, "--service", &primary.service_url])
            .args(["--peer", &second.data_plane, "--peer", &primary.data_plane])
            .arg("-o")
            .arg(&out)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );

    let hit_bytes = "tessera_cache_bytes_total{";
    let served_before_kill = 32 * PIECE_BYTES;
    wait_until("the primary box served a quarter of the content", || {
        assert!(device.0.try_wait().unwrap().is_none(), "the download ended before the primary box was killed");
        data_plane_metric(&primary, hit_bytes, "result=\"hit\"") >= served_before_kill
    });
    assert_eq!(
        data_plane_metric(&second, hit_bytes, "result=\"hit\""),
        0,
        "the second box was used before the first failed"
    );
    primary.kill();

    let deadline = Instant::now() + DOWNLOAD_WAIT;
    while device.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the download did not finish within {DOWNLOAD_WAIT:?}");
        std::thread::sleep(POLL);
    }
    let mut stdout = Vec::new();
    device.0.stdout.take().unwrap().read_to_end(&mut stdout).unwrap();
    let mut stderr = Vec::new();
    device.0.stderr.take().unwrap().read_to_end(&mut stderr).unwrap();
    let output = std::process::Output { status: device.0.wait().unwrap(), stdout, stderr };
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(std::fs::read(&out).unwrap() == content, "the file differs from the content");
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["mode"], "p2p", "the metadata came from a service that was up: {summary}");
    let from = |serve: &Serve| harness::summary_source(&summary, &serve.data_plane).clone();
    let (first, next) = (from(&primary), from(&second));
    assert_eq!(
        (first["kind"].as_str(), first["rank"].as_u64(), next["rank"].as_u64()),
        (Some("box"), Some(0), Some(1))
    );
    assert_eq!(first["dropped"], true, "{summary}");
    let (first_pieces, next_pieces) = (first["pieces"].as_u64().unwrap(), next["pieces"].as_u64().unwrap());
    assert!((1..PIECES).contains(&first_pieces), "the kill came mid-download: {summary}");
    assert_eq!(first_pieces + next_pieces, PIECES, "what the first box delivered was kept: {summary}");
    // The download's own record: the last piece from the killed box, the first from the next one.
    let gap_ms = next["first_piece_ms"].as_u64().unwrap().saturating_sub(first["last_piece_ms"].as_u64().unwrap());
    assert!(gap_ms <= 1000, "the next box took over {gap_ms} ms after the last piece of the killed one: {summary}");
    eprintln!("failover gap: {gap_ms} ms");
}
