//! What the whole-system tests share: the `tessera` binary, a running `tessera serve`, plain
//! HTTP requests and `/metrics` samples, and a real nginx ([`nginx`]).
#![allow(dead_code)]

pub mod nginx;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a `serve` gets to report its addresses.
const WAIT: Duration = Duration::from_secs(20);

/// The binary under test.
pub fn tessera() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
}

/// A running `tessera serve`, killed on drop; its log lines are kept.
pub struct Serve {
    child: Child,
    /// The data plane's address (HOST:PORT).
    pub data_plane: String,
    /// The embedded metadata service's URL.
    pub service_url: String,
    log: Arc<Mutex<String>>,
}

impl Serve {
    /// Starts `serve` on `data` with `workers` workers and `extra` flags, on free loopback ports,
    /// and waits until it reports both addresses.
    pub fn start(data: &Path, workers: usize, extra: &[String]) -> Serve {
        Serve::start_with_rust_log(data, workers, extra, Some("info"))
    }

    /// [`Serve::start`] with `RUST_LOG` set to `rust_log`, or unset (the config's `[log] level`).
    pub fn start_with_rust_log(data: &Path, workers: usize, extra: &[String], rust_log: Option<&str>) -> Serve {
        let mut command = tessera();
        // A test binary killed mid-run (a timeout, ^C) takes its servers with it, so that none
        // lingers to take CPU from the next run. The signal comes when the spawning thread ends:
        // the test's own, which outlives its `Serve` (dropped, and so killed, first).
        // SAFETY: the closure runs in the child between fork and exec and only calls `prctl`,
        // which is async-signal-safe and touches no memory shared with the parent.
        unsafe {
            command.pre_exec(|| match libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) {
                -1 => Err(std::io::Error::last_os_error()),
                _ => Ok(()),
            });
        }
        match rust_log {
            Some(level) => command.env("RUST_LOG", level),
            None => command.env_remove("RUST_LOG"),
        };
        let mut child = command
            .args(["serve", "--listen", "127.0.0.1:0", "--service-listen", "127.0.0.1:0", "--workers"])
            .arg(workers.to_string())
            .arg("--data-dir")
            .arg(data)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        let log = Arc::new(Mutex::new(String::new()));
        for stream in
            [Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>, Box::new(child.stderr.take().unwrap())]
        {
            let (tx, log) = (tx.clone(), log.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    log.lock().unwrap().push_str(&format!("{line}\n"));
                    let _ = tx.send(line);
                }
            });
        }
        let (mut data_plane, mut service_url) = (None, None);
        let deadline = Instant::now() + WAIT;
        while data_plane.is_none() || service_url.is_none() {
            let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
                let _ = child.kill();
                panic!("serve did not report its addresses:\n{}", log.lock().unwrap());
            };
            if line.contains("data plane listening") {
                data_plane = line.split_whitespace().find_map(|w| w.strip_prefix("address=")).map(str::to_string);
            }
            if let Some(url) = line.strip_prefix("tessera service: listening on ") {
                service_url = Some(url.trim().to_string());
            }
        }
        Serve { child, data_plane: data_plane.unwrap(), service_url: service_url.unwrap(), log }
    }

    /// Everything it has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Its process id (to signal it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits (bounded) until its log contains `text`; the log then.
    pub fn wait_log(&self, text: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let log = self.log();
            if log.contains(text) || Instant::now() >= deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it with SIGKILL (as `kill -9`: no shutdown, its sockets closed by the kernel) and
    /// reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `GET` with `Connection: close`: (status, head, body).
pub fn get(address: &str, target: &str, range: Option<&str>) -> (u16, String, Vec<u8>) {
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
pub fn metric(address: &str, prefix: &str, label: &str) -> u64 {
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
pub fn metric_settled(address: &str, prefix: &str, expected: u64) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let value = metric(address, prefix, "");
        if value == expected || Instant::now() >= deadline {
            return value;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `tessera publish` of `bytes` as `id` into the data dir `data`, 64 KiB pieces, with `extra`
/// flags; it must succeed.
pub fn publish(data: &Path, id: &str, bytes: &[u8], extra: &[&str]) {
    let file = data.with_extension("bin");
    std::fs::write(&file, bytes).unwrap();
    let output = tessera()
        .args(["publish", file.to_str().unwrap(), "--id", id, "--piece-size", "64K", "--data-dir"])
        .arg(data)
        .args(extra)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

/// Waits (bounded) until the service at `service_url` (trusting `ca`) matches `peer` (HOST:PORT)
/// as holding `id`: a `serve` announces what it holds just after it starts.
pub fn wait_for_peer(service_url: &str, ca: &Path, id: &str, peer: &str) {
    use tessera::control::client::MetadataClient;
    use tessera::tls::TlsClientOptions;
    let client =
        MetadataClient::new(TlsClientOptions { ca_file: Some(ca.to_path_buf()), ..Default::default() }).unwrap();
    let id = tessera::content::ContentId::parse(id).unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let peers = client.peers(service_url, &id, "default", None).unwrap();
        if peers.iter().any(|found| found.address == peer) {
            return;
        }
        assert!(Instant::now() < deadline, "{service_url} never matched {peer} for {id}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `tessera get ID --service URL --ca CA -o OUT --json`, which must succeed: its JSON summary.
pub fn get_with_service(id: &str, service_url: &str, ca: &Path, out: &Path) -> serde_json::Value {
    let output = tessera()
        .args(["get", id, "--service", service_url, "--json", "--ca"])
        .arg(ca)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The entry of a `get` summary's `sources` for `source` (HOST:PORT), which must be there.
pub fn summary_source<'a>(summary: &'a serde_json::Value, source: &str) -> &'a serde_json::Value {
    let sources = summary["sources"].as_array().unwrap();
    sources.iter().find(|s| s["source"] == source).unwrap_or_else(|| panic!("{source} was not used: {summary}"))
}

/// The event-loop backends to run a test on: epoll always, io_uring where the kernel allows it.
pub fn backends() -> Vec<tessera::config::BackendChoice> {
    use tessera::config::BackendChoice;
    let mut backends = vec![BackendChoice::Epoll];
    match tessera::io::choose_backend(BackendChoice::Uring) {
        Ok(_) => backends.push(BackendChoice::Uring),
        Err(error) => eprintln!("io_uring backend not tested on this machine: {error}"),
    }
    backends
}
