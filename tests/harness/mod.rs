//! What the whole-system tests share: the `tessera` binary and a running `tessera serve`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
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
        let mut child = tessera()
            .args(["serve", "--listen", "127.0.0.1:0", "--service-listen", "127.0.0.1:0", "--workers"])
            .arg(workers.to_string())
            .arg("--data-dir")
            .arg(data)
            .args(extra)
            .env("RUST_LOG", "info")
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
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
