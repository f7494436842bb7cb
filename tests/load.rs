//! `tessera load` against in-process loopback servers whose latency the test sets: a fixed
//! delay, a one-second stall, errors. What is checked is what the issue promises a user (the
//! percentiles land where the server put them, the open loop keeps its rate, the output files
//! parse), never how fast this machine is.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tessera::config::BackendChoice;
use tessera::load::schedule::{Pace, Stop};
use tessera::load::{run, LoadOptions, Report};

mod harness;

/// Connections a test server serves at most (a thread each: test code).
const SERVER_CONNECTIONS_MAX: u64 = 64;
/// Longest a test server lives, whatever the test does.
const SERVER_LIFETIME: Duration = Duration::from_secs(60);
const BODY: &[u8] = &[b'x'; 1024];

/// How a test server answers.
#[derive(Clone, Default)]
struct Behaviour {
    /// Every response waits this long.
    delay: Duration,
    /// Once, `after` the first request, every response is held for `length`.
    stall: Option<(Duration, Duration)>,
    /// Every `n`-th response gets `status` instead of 200.
    status_every: Option<(u64, u16)>,
    /// Never answer.
    silent: bool,
}

struct TestServer {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    /// The `Range:` values asked, in order.
    ranges: Arc<Mutex<Vec<(u64, u64)>>>,
    responses: Arc<AtomicU64>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl TestServer {
    fn start(behaviour: Behaviour) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let server = TestServer {
            address: listener.local_addr().unwrap(),
            stop: Arc::new(AtomicBool::new(false)),
            ranges: Arc::default(),
            responses: Arc::default(),
        };
        let (stop, ranges, responses) = (server.stop.clone(), server.ranges.clone(), server.responses.clone());
        std::thread::spawn(move || {
            let shared = Arc::new(Shared { behaviour, first: OnceLock::new(), responses, ranges });
            let deadline = Instant::now() + SERVER_LIFETIME;
            let mut connections = 0;
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) if connections < SERVER_CONNECTIONS_MAX => {
                        connections += 1;
                        let (shared, stop) = (shared.clone(), stop.clone());
                        std::thread::spawn(move || serve_connection(stream, &shared, &stop));
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        server
    }

    fn responses(&self) -> u64 {
        self.responses.load(Ordering::SeqCst)
    }

    fn url(&self) -> String {
        format!("http://{}/file", self.address)
    }
}

struct Shared {
    behaviour: Behaviour,
    first: OnceLock<Instant>,
    responses: Arc<AtomicU64>,
    ranges: Arc<Mutex<Vec<(u64, u64)>>>,
}

fn serve_connection(mut stream: TcpStream, shared: &Shared, stop: &AtomicBool) {
    stream.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let deadline = Instant::now() + SERVER_LIFETIME;
    let mut input = Vec::new();
    let mut buffer = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        while let Some(end) = input.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&input[..end]).to_string();
            input.drain(..end + 4);
            if shared.behaviour.silent {
                continue;
            }
            if stream.write_all(&respond(&head, shared)).is_err() {
                return;
            }
        }
        match stream.read(&mut buffer) {
            Ok(0) => return,
            Ok(count) => input.extend_from_slice(&buffer[..count]),
            Err(error) if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// The response to the request `head`, after the behaviour's delay or stall.
fn respond(head: &str, shared: &Shared) -> Vec<u8> {
    let behaviour = &shared.behaviour;
    let first = *shared.first.get_or_init(Instant::now);
    if let Some((after, length)) = behaviour.stall {
        let (from, to) = (first + after, first + after + length);
        let now = Instant::now();
        if now >= from && now < to {
            std::thread::sleep(to - now);
        }
    }
    std::thread::sleep(behaviour.delay);
    let number = shared.responses.fetch_add(1, Ordering::SeqCst) + 1;
    let status = match behaviour.status_every {
        Some((every, status)) if number.is_multiple_of(every) => status,
        _ => 200,
    };
    let range = head.lines().find_map(|line| line.strip_prefix("Range: bytes=")).map(|spec| {
        let (first, last) = spec.split_once('-').unwrap();
        (first.parse::<u64>().unwrap(), last.parse::<u64>().unwrap())
    });
    let body = match range {
        Some((first, last)) => {
            shared.ranges.lock().unwrap().push((first, last));
            &BODY[first as usize..=last as usize]
        }
        None => BODY,
    };
    let mut out = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    if !head.starts_with("HEAD ") {
        out.extend_from_slice(body);
    }
    out
}

fn options(url: String) -> LoadOptions {
    LoadOptions {
        urls: vec![url],
        pace: Pace::Closed,
        stop: Stop::After { duration_ns: 1_000_000_000 },
        connections: 4,
        threads: 1,
        range_bytes: None,
        pieces: None,
        timeout: Duration::from_secs(10),
        backend: BackendChoice::Auto,
        ca_file: None,
        interrupt: Arc::default(),
    }
}

fn load(options: &LoadOptions) -> Report {
    run(options, &mut |_| {}).expect("the run completes")
}

#[test]
fn with_every_response_delayed_20_ms_the_median_is_20_to_25_ms() {
    let server = TestServer::start(Behaviour { delay: Duration::from_millis(20), ..Behaviour::default() });
    let report = load(&options(server.url()));
    let summary = &report.summary;
    assert!(summary.requests >= 40, "{summary:?}");
    assert!((20.0..=25.0).contains(&summary.latency_ms.p50), "p50 {} ms", summary.latency_ms.p50);
    // A closed loop has no schedule to fall behind: both measures are the same.
    assert_eq!(summary.latency_ms, summary.service_time_ms);
    assert_eq!(summary.errors.total(), 0);
}

#[test]
fn a_one_second_stall_shows_in_corrected_latency_but_not_in_service_time() {
    let stall = Some((Duration::from_secs(2), Duration::from_secs(1)));
    let server = TestServer::start(Behaviour { stall, ..Behaviour::default() });
    let report = load(&LoadOptions {
        pace: Pace::Open { rate_per_s: 1000.0 },
        stop: Stop::After { duration_ns: 5_000_000_000 },
        connections: 10,
        ..options(server.url())
    });
    let summary = &report.summary;
    assert!(summary.latency_ms.p99 >= 500.0, "corrected p99 {} ms", summary.latency_ms.p99);
    // Only the requests in flight when the server froze (one per connection) waited on it.
    assert!(summary.service_time_ms.p99 < 100.0, "service p99 {} ms", summary.service_time_ms.p99);
    assert!(summary.service_time_ms.max >= 900.0, "the stalled requests are there: {summary:?}");
    assert!(summary.behind_schedule > 500, "the sends meant for the stall left late: {summary:?}");
    assert_eq!(summary.errors.total(), 0);
}

#[test]
fn the_open_loop_keeps_its_rate_even_below_one_request_per_second_per_thread() {
    let server = TestServer::start(Behaviour::default());
    for (rate_per_s, threads) in [(400.0, 2), (3.0, 4)] {
        let report = load(&LoadOptions {
            pace: Pace::Open { rate_per_s },
            stop: Stop::After { duration_ns: 5_000_000_000 },
            threads,
            connections: 4,
            ..options(server.url())
        });
        let achieved = report.summary.achieved_rate_per_s;
        assert!((achieved / rate_per_s - 1.0).abs() <= 0.01, "rate {rate_per_s} with {threads} threads: {achieved}");
    }
}

#[test]
fn errors_are_counted_by_kind_and_a_run_against_nothing_ends() {
    for backend in harness::backends() {
        errors_are_counted_by_kind_on(backend);
    }
}

fn errors_are_counted_by_kind_on(backend: BackendChoice) {
    let options = |url| LoadOptions { backend, ..options(url) };
    let server = TestServer::start(Behaviour { status_every: Some((4, 503)), ..Behaviour::default() });
    let report = load(&LoadOptions { stop: Stop::Requests { count: 100 }, ..options(server.url()) });
    assert_eq!(report.summary.requests, 100);
    assert_eq!(report.summary.errors.status, BTreeMap::from([(503, 25)]));

    let silent = TestServer::start(Behaviour { silent: true, ..Behaviour::default() });
    let report = load(&LoadOptions {
        stop: Stop::Requests { count: 2 },
        connections: 1,
        timeout: Duration::from_millis(200),
        ..options(silent.url())
    });
    assert_eq!((report.summary.requests, report.summary.errors.timeout), (0, 2));

    // A port nobody listens on: each failed connect uses up a request, so the run ends.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let report = load(&LoadOptions { stop: Stop::Requests { count: 3 }, ..options(format!("http://{closed}/")) });
    assert_eq!(report.summary.requests, 0);
    assert!(report.summary.errors.connect >= 3, "{:?}", report.summary.errors);
}

#[test]
fn random_ranges_stay_inside_the_length_a_head_request_gave() {
    let server = TestServer::start(Behaviour::default());
    let report = load(&LoadOptions {
        stop: Stop::Requests { count: 50 },
        range_bytes: Some(100),
        backend: BackendChoice::Epoll,
        ..options(server.url())
    });
    assert_eq!(report.summary.requests, 50);
    let ranges = server.ranges.lock().unwrap().clone();
    assert_eq!(ranges.len(), 50);
    assert!(ranges.iter().all(|&(first, last)| last - first + 1 == 100 && last < BODY.len() as u64), "{ranges:?}");
    assert!(ranges.iter().any(|r| *r != ranges[0]), "ranges are drawn at random");
}

#[test]
fn json_hgrm_and_svg_are_written_and_parse() {
    let server = TestServer::start(Behaviour::default());
    let dir = tempfile::tempdir().unwrap();
    let (hgrm, svg) = (dir.path().join("latency.hgrm"), dir.path().join("latency.svg"));
    let output = harness::tessera()
        .args(["load", &server.url(), "--rate", "500", "--requests", "300", "--connections", "2", "--threads", "1"])
        .args(["--json", "--hgrm", hgrm.to_str().unwrap(), "--svg", svg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!((json["mode"].as_str(), json["requests"].as_u64()), (Some("open"), Some(300)));
    assert_eq!(json["target_rate_per_s"].as_f64(), Some(500.0));
    for field in ["p50", "p90", "p99", "p99_9", "p99_99", "max"] {
        assert!(json["latency_ms"][field].as_f64().is_some() && json["service_time_ms"][field].as_f64().is_some());
    }

    let text = std::fs::read_to_string(&hgrm).unwrap();
    let rows: Vec<Vec<f64>> = text
        .lines()
        .skip(1)
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .map(|line| line.split_whitespace().map(|field| field.parse().expect(line)).collect())
        .collect();
    assert!(rows.iter().all(|row| row.len() == 4 || row.len() == 3), "{text}");
    let last = rows.last().unwrap();
    assert_eq!((last[1], last[2]), (1.0, 300.0), "{text}");
    assert!(text.contains("#[Max     ="), "{text}");

    let svg = std::fs::read_to_string(&svg).unwrap();
    let document = roxmltree::Document::parse(&svg).expect("the SVG is XML");
    assert_eq!(document.root_element().tag_name().name(), "svg");
    let curves: Vec<_> = document.descendants().filter(|n| n.has_tag_name("polyline")).collect();
    assert_eq!(curves.len(), 2);
    for curve in curves {
        assert!(curve.attribute("points").unwrap().split_whitespace().count() > 5);
    }
}

#[test]
fn ctrl_c_ends_the_run_early_with_its_summary() {
    let server = TestServer::start(Behaviour { delay: Duration::from_millis(5), ..Behaviour::default() });
    let child = harness::tessera()
        .args(["load", &server.url(), "--duration", "60s", "--connections", "2", "--threads", "1", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait (bounded) until the server has answered, so the run has started.
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.responses() < 20 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{:?}", output.status);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(json["requests"].as_u64().unwrap() >= 20, "{json}");
    assert!(json["duration_s"].as_f64().unwrap() < 60.0, "ended before its duration: {json}");
}

/// Runs the `tessera load` binary with `args` and its JSON summary.
fn load_json(args: &[&str]) -> serde_json::Value {
    let output = harness::tessera().arg("load").args(args).arg("--json").output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn content_pieces_are_asked_over_the_piece_api_and_bad_ones_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("seed");
    let file = dir.path().join("content.bin");
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(&file, &bytes).unwrap();
    let published = harness::tessera()
        .args(["publish", file.to_str().unwrap(), "--id", "demo", "--piece-size", "64K", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(published.status.success(), "{}", String::from_utf8_lossy(&published.stderr));
    let seed = harness::Serve::start(&data, 1, &[]);
    let ca = data.join("tls/ca.pem");
    let content = ["--content", "demo", "--service", &seed.service_url, "--ca", ca.to_str().unwrap(), "--verify"];
    let requests = ["--requests", "40", "--connections", "2", "--threads", "1"];

    let honest = format!("http://{}/", seed.data_plane);
    let json = load_json(&[&[honest.as_str()][..], &content, &requests].concat());
    assert_eq!((json["requests"].as_u64(), json["bad_pieces"].as_u64()), (Some(40), Some(0)), "{json}");
    // Five 64 KiB pieces (the last one short), each asked 8 times, plus heads.
    assert!(json["bytes"].as_u64().unwrap() > 8 * bytes.len() as u64, "{json}");

    // A server that answers every piece with the same 1 KiB: every body is bad.
    let liar = TestServer::start(Behaviour::default());
    let lying = format!("http://{}/", liar.address);
    let json = load_json(&[&[lying.as_str()][..], &content, &requests].concat());
    assert_eq!((json["requests"].as_u64(), json["bad_pieces"].as_u64()), (Some(40), Some(40)), "{json}");
}

#[test]
fn https_urls_are_loaded_over_tls_checked_against_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let serve = harness::Serve::start(&dir.path().join("data"), 1, &[]);
    let ca = dir.path().join("data/tls/ca.pem");
    let url = format!("{}/healthz", serve.service_url);
    for backend in harness::backends() {
        let report = load(&LoadOptions {
            backend,
            stop: Stop::Requests { count: 200 },
            ca_file: Some(ca.clone()),
            ..options(url.clone())
        });
        assert_eq!(report.summary.requests, 200, "{backend:?}: {:?}", report.summary.errors);
        assert!(report.summary.errors.status.is_empty(), "{:?}", report.summary.errors);
        assert!(report.summary.bytes > 0);
    }
    // Without the CA the certificate is not trusted: every connection fails, none is answered.
    let report = load(&LoadOptions { stop: Stop::Requests { count: 3 }, connections: 1, ..options(url) });
    assert_eq!(report.summary.requests, 0);
    assert!(report.summary.errors.read + report.summary.errors.connect >= 1, "{:?}", report.summary.errors);
}
