//! `serve` as an operator runs it: SIGHUP reloads the config file without dropping connections
//! (and keeps the running config when the file is broken), the access log writes nginx's
//! combined format, and `--log-format json` logs one JSON object per line.

mod harness;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::{tessera, Serve};

/// How long a test waits for anything it polls.
const WAIT: Duration = Duration::from_secs(20);

/// A kept-alive client connection.
struct Client {
    stream: BufReader<TcpStream>,
}

impl Client {
    fn connect(address: &str) -> Client {
        let stream = TcpStream::connect(address).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        Client { stream: BufReader::new(stream) }
    }

    /// One GET on this connection: its status (the body is read and dropped).
    fn get(&mut self, target: &str) -> u16 {
        write!(self.stream.get_mut(), "GET {target} HTTP/1.1\r\nHost: box\r\n\r\n").unwrap();
        let mut status_line = String::new();
        self.stream.read_line(&mut status_line).unwrap();
        let status = status_line.split(' ').nth(1).unwrap_or_else(|| panic!("{status_line:?}")).parse().unwrap();
        let mut length = 0;
        loop {
            let mut line = String::new();
            self.stream.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).unwrap();
        status
    }
}

fn sighup(serve: &Serve) {
    let status = Command::new("sh").arg("-c").arg(format!("kill -HUP {}", serve.pid())).status().unwrap();
    assert!(status.success());
}

/// The status of `target` on a new connection, once it is `expected` (polled: workers take a
/// reload at their next tick), or the last one seen.
fn status_settled(address: &str, target: &str, expected: u16) -> u16 {
    let deadline = Instant::now() + WAIT;
    loop {
        let status = Client::connect(address).get(target);
        if status == expected || Instant::now() >= deadline {
            return status;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_with_config(dir: &Path, config: &str) -> Serve {
    let file = dir.join("tessera.toml");
    std::fs::write(&file, config).unwrap();
    Serve::start(&dir.join("data"), 1, &["--config".into(), file.display().to_string()])
}

#[test]
fn sighup_changes_the_log_level_from_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tessera.toml");
    std::fs::write(&file, "[log]\nlevel = \"info\"\n").unwrap();
    let extra = ["--config".into(), file.display().to_string()];
    let mut serve = Serve::start_with_rust_log(&dir.path().join("data"), 1, &extra, None);
    let long = format!("/healthz?pad={}", "a".repeat(300));
    // Quiet: info events (the reload's own report among them) are no longer logged.
    std::fs::write(&file, "[log]\nlevel = \"warn\"\n[serve]\ntarget_bytes_max = 256\n").unwrap();
    sighup(&serve);
    assert_eq!(status_settled(&serve.data_plane, &long, 414), 414, "the reload is in force");
    let log = serve.wait_log("SIGHUP: reloading");
    assert!(log.contains("SIGHUP: reloading") && !log.contains("config reloaded"), "{log}");
    // Back to info, with a change that needs a restart: its warning and the report are logged.
    std::fs::write(&file, "[log]\nlevel = \"info\"\n[store]\nage_s_max = 60\n").unwrap();
    sighup(&serve);
    let log = serve.wait_log("config reloaded");
    assert!(log.contains("config reloaded") && log.contains("setting=log.level"), "{log}");
    assert!(serve.running());
}

#[test]
fn sighup_applies_a_new_limit_keeps_connections_and_refuses_a_broken_config() {
    let dir = tempfile::tempdir().unwrap();
    let mut serve = start_with_config(dir.path(), "[serve]\ntarget_bytes_max = 2048\n");
    let long = format!("/healthz?pad={}", "a".repeat(300));
    let medium = format!("/healthz?pad={}", "a".repeat(200));
    let mut kept = Client::connect(&serve.data_plane);
    assert_eq!(kept.get(&long), 200, "a 300-byte target is within 2048");

    std::fs::write(dir.path().join("tessera.toml"), "[serve]\ntarget_bytes_max = 256\n[store]\nage_s_max = 60\n")
        .unwrap();
    sighup(&serve);
    assert_eq!(status_settled(&serve.data_plane, &long, 414), 414, "the new limit is in force");
    let log = serve.wait_log("config reloaded");
    assert!(log.contains("serve.target_bytes_max") && log.contains("reloaded"), "{log}");
    assert!(log.contains("needs restart") && log.contains("store.age_s_max"), "{log}");
    assert!(serve.running(), "SIGHUP must not end serve");
    assert_eq!(kept.get("/healthz"), 200, "the connection opened before the reload still works");
    assert_eq!(kept.get(&medium), 200);

    std::fs::write(dir.path().join("tessera.toml"), "[serve]\ntarget_bytes_max = 0\n").unwrap();
    sighup(&serve);
    let log = serve.wait_log("reload refused");
    assert!(log.contains("reload refused") && log.contains("serve.target_bytes_max = 0"), "{log}");
    assert!(serve.running(), "a broken config must not end serve");
    assert_eq!(kept.get(&medium), 200, "the kept connection still works under the running config");
    assert_eq!(Client::connect(&serve.data_plane).get(&long), 414, "the running limit stays");
    assert_eq!(kept.get(&long), 414, "open connections took the reloaded limit too");
}

/// One access-log line split into its combined-format fields and the request time.
#[derive(Debug)]
struct AccessLine {
    remote: String,
    request: String,
    status: u16,
    bytes: u64,
    referer: String,
    agent: String,
    seconds: f64,
}

fn bad(line: &str) -> ! {
    panic!("not in combined format: {line:?}")
}

fn parse_access_line(line: &str) -> AccessLine {
    let (remote, rest) = line.split_once(" - - [").unwrap_or_else(|| bad(line));
    let (time, rest) = rest.split_once("] \"").unwrap_or_else(|| bad(line));
    assert_eq!(time.len(), "28/Nov/2026:13:15:39 +0000".len(), "{line}");
    let (request, rest) = rest.split_once("\" ").unwrap_or_else(|| bad(line));
    let (status, rest) = rest.split_once(' ').unwrap_or_else(|| bad(line));
    let (bytes, rest) = rest.split_once(" \"").unwrap_or_else(|| bad(line));
    let (referer, rest) = rest.split_once("\" \"").unwrap_or_else(|| bad(line));
    let (agent, seconds) = rest.rsplit_once("\" ").unwrap_or_else(|| bad(line));
    AccessLine {
        remote: remote.into(),
        request: request.into(),
        status: status.parse().unwrap_or_else(|_| bad(line)),
        bytes: bytes.parse().unwrap_or_else(|_| bad(line)),
        referer: referer.into(),
        agent: agent.into(),
        seconds: seconds.parse().unwrap_or_else(|_| bad(line)),
    }
}

/// `curl` of `url`: (status, body bytes).
fn curl(url: &str, referer: &str) -> (u16, u64) {
    let output = Command::new("curl")
        .args(["--silent", "--max-time", "10", "--output", "/dev/null", "--referer", referer])
        .args(["--write-out", "%{http_code} %{size_download}", url])
        .output()
        .expect("curl is installed (scripts/test installs it)");
    let text = String::from_utf8(output.stdout).unwrap();
    let (status, bytes) = text.split_once(' ').unwrap();
    (status.parse().unwrap(), bytes.parse().unwrap())
}

#[test]
fn access_log_lines_are_in_the_combined_format_with_status_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let mut serve = start_with_config(dir.path(), &format!("[log]\naccess_log = {:?}\n", path.display().to_string()));
    let targets = ["/healthz", "/metrics", "/v1/content/nope", "/v1/content/bad$id"];
    let answers: Vec<(u16, u64)> =
        targets.iter().map(|t| curl(&format!("http://{}{t}", serve.data_plane), "http://ref.example/")).collect();
    let deadline = Instant::now() + WAIT;
    let mut text = String::new();
    while text.lines().count() < targets.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        text = std::fs::read_to_string(&path).unwrap_or_default();
    }
    let lines: Vec<AccessLine> = text.lines().map(parse_access_line).collect();
    assert_eq!(lines.len(), targets.len(), "{text}");
    for ((line, target), (status, bytes)) in lines.iter().zip(targets).zip(&answers) {
        assert_eq!(line.remote, "127.0.0.1", "{line:?}");
        assert_eq!(line.request, format!("GET {target} HTTP/1.1"));
        assert_eq!((line.status, line.bytes), (*status, *bytes), "{line:?}: curl saw {status} and {bytes} bytes");
        assert_eq!(line.referer, "http://ref.example/");
        assert!(line.agent.starts_with("curl/"), "{line:?}");
        assert!(line.seconds >= 0.0);
    }
    assert_eq!(answers.iter().map(|a| a.0).collect::<Vec<_>>(), [200, 200, 404, 400]);
    // Rotation: the file moved away, SIGHUP reopens the configured path.
    std::fs::rename(&path, dir.path().join("access.log.1")).unwrap();
    sighup(&serve);
    serve.wait_log("config reloaded");
    let deadline = Instant::now() + WAIT;
    while !path.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let deadline = Instant::now() + WAIT;
    loop {
        curl(&format!("http://{}/healthz", serve.data_plane), "-");
        let reopened = std::fs::read_to_string(&path).unwrap_or_default();
        if reopened.contains("GET /healthz") || Instant::now() >= deadline {
            assert!(reopened.lines().map(parse_access_line).all(|l| l.status == 200), "{reopened}");
            assert!(!reopened.is_empty(), "nothing written to the reopened access log");
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(serve.running());
}

#[test]
fn log_format_json_writes_one_object_per_event() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = tessera()
        .args(["serve", "--log-format", "json", "--no-service", "--listen", "127.0.0.1:0", "--workers", "1"])
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    let mut listening = None;
    for line in BufReader::new(child.stderr.take().unwrap()).lines().map_while(Result::ok).take(50) {
        let event: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\nafter {seen:#?}"));
        seen.push(line);
        if event["fields"]["message"] == "data plane listening" {
            listening = Some(event);
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let event = listening.unwrap_or_else(|| panic!("no listening event in {seen:#?}"));
    assert_eq!(event["level"], "INFO");
    assert!(event["fields"]["address"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")), "{event}");
}
