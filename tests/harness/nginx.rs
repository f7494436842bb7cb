//! A real nginx as an HTTP origin, confined to a directory of the test's own: its config, pid,
//! logs, temp paths and content root all live there; it listens on 127.0.0.1 only. It runs as one
//! process (`master_process off`) so that stopping it (kill on drop) leaves no worker behind. Its
//! access log records every request's `Range` header and the body bytes it sent.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long nginx gets to listen, per attempt.
const START_WAIT: Duration = Duration::from_secs(10);
/// Attempts at a free port (another process may take the one picked before nginx binds it).
const START_ATTEMPTS: u32 = 5;

/// One access-log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// The request line, e.g. `GET /content.bin HTTP/1.1`.
    pub request: String,
    /// The `Range` header, if the request had one.
    pub range: Option<String>,
    pub status: u16,
    /// Body bytes nginx sent (fewer than asked if the client went away).
    pub body_bytes: u64,
}

/// A running nginx serving files from `PREFIX/www`, killed on drop.
pub struct Nginx {
    child: Option<Child>,
    prefix: PathBuf,
    /// `127.0.0.1:PORT`.
    pub address: String,
}

impl Nginx {
    /// Writes `files` (name, bytes) under `prefix/www` and starts nginx on a free loopback port.
    pub fn start(prefix: &Path, files: &[(&str, &[u8])]) -> Nginx {
        std::fs::create_dir_all(prefix.join("www")).unwrap();
        std::fs::create_dir_all(prefix.join("temp")).unwrap();
        for (name, bytes) in files {
            std::fs::write(prefix.join("www").join(name), bytes).unwrap();
        }
        for _ in 0..START_ATTEMPTS {
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let address = format!("127.0.0.1:{port}");
            std::fs::write(prefix.join("nginx.conf"), config(prefix, &address)).unwrap();
            let child = Command::new(binary())
                .arg("-p")
                .arg(prefix)
                .arg("-c")
                .arg(prefix.join("nginx.conf"))
                .arg("-e")
                .arg(prefix.join("error.log"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nginx runs (scripts/test installs it)");
            let mut nginx = Nginx { child: Some(child), prefix: prefix.to_path_buf(), address };
            if nginx.wait_listening() {
                return nginx;
            }
            nginx.stop();
        }
        panic!("nginx did not start:\n{}", std::fs::read_to_string(prefix.join("error.log")).unwrap_or_default());
    }

    /// The URL of a file under its root.
    pub fn url(&self, name: &str) -> String {
        format!("http://{}/{name}", self.address)
    }

    /// Every request logged so far, in order.
    pub fn requests(&self) -> Vec<Access> {
        let log = std::fs::read_to_string(self.prefix.join("access.log")).unwrap_or_default();
        log.lines().map(|line| parse_access(line).unwrap_or_else(|| panic!("access log line {line:?}"))).collect()
    }

    /// Stops it now (also done on drop).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// True once it accepts connections; false if it exited first (its port was taken) or took
    /// longer than [`START_WAIT`].
    fn wait_listening(&mut self) -> bool {
        let deadline = Instant::now() + START_WAIT;
        while Instant::now() < deadline {
            if matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(Some(_)))) {
                return false;
            }
            if TcpStream::connect(&self.address).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The packaged binary (Debian puts it in /usr/sbin, which a test's PATH may lack).
fn binary() -> PathBuf {
    let packaged = Path::new("/usr/sbin/nginx");
    if packaged.exists() {
        packaged.to_path_buf()
    } else {
        PathBuf::from("nginx")
    }
}

/// Every path nginx writes is under `prefix` (its compiled-in temp paths are under /var).
fn config(prefix: &Path, address: &str) -> String {
    let p = prefix.display();
    format!(
        "daemon off;
master_process off;
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {p}/temp/body;
    proxy_temp_path {p}/temp/proxy;
    fastcgi_temp_path {p}/temp/fastcgi;
    uwsgi_temp_path {p}/temp/uwsgi;
    scgi_temp_path {p}/temp/scgi;
    log_format ranges '$request|$http_range|$status|$body_bytes_sent';
    access_log {p}/access.log ranges;
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests 100000;
    server {{ listen {address}; root {p}/www; }}
}}
"
    )
}

/// `REQUEST|RANGE|STATUS|BYTES`, the `ranges` log format (`-` for no Range header).
fn parse_access(line: &str) -> Option<Access> {
    let mut fields = line.rsplitn(4, '|');
    let body_bytes = fields.next()?.parse().ok()?;
    let status = fields.next()?.parse().ok()?;
    let range = fields.next()?;
    let request = fields.next()?.to_string();
    let range = (range != "-").then(|| range.to_string());
    Some(Access { request, range, status, body_bytes })
}
