//! A throwaway `redis-server` for the fleet test and the registry bench: 127.0.0.1 on a free
//! port, nothing saved, its working dir the caller's temp dir; killed on drop.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's `redis-server` package puts the server (scripts/test installs it).
pub const REDIS_SERVER: &str = "/usr/bin/redis-server";
/// How long a server gets to answer after start.
const READY_WAIT: Duration = Duration::from_secs(10);

/// A running `redis-server`.
pub struct Redis {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Redis {
    /// Starts on a free port, its working dir `dir`.
    pub fn start(dir: &Path) -> Redis {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Redis::start_on(dir, port)
    }

    /// Starts on `port` (again, after [`Redis::stop`]: empty, as after a restart).
    pub fn start_on(dir: &Path, port: u16) -> Redis {
        assert!(Path::new(REDIS_SERVER).exists(), "{REDIS_SERVER} is missing: scripts/test installs redis-server");
        let dir = dir.to_path_buf();
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new(REDIS_SERVER)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let redis = Redis { child, port, dir };
        let deadline = Instant::now() + READY_WAIT;
        while redis.connection().is_none() {
            assert!(Instant::now() < deadline, "redis-server did not answer on port {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut redis.connection().unwrap()).unwrap();
        assert!(keys.is_empty(), "a new redis-server holds {keys:?}");
        redis
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// A connection that answered PING, or `None`.
    pub fn connection(&self) -> Option<redis::Connection> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut connection = client.get_connection_with_timeout(Duration::from_millis(200)).ok()?;
        redis::cmd("PING").query::<String>(&mut connection).ok()?;
        Some(connection)
    }

    /// Members of a content's peer set under key prefix `prefix`.
    pub fn holders(&self, prefix: &str, group: &str, id: &str) -> Vec<String> {
        let key = format!("{prefix}{{{group}}}:content:{id}");
        redis::cmd("ZRANGE").arg(key).arg(0).arg(-1).query(&mut self.connection().unwrap()).unwrap()
    }

    /// Kills the server; its dir and port, to start it again.
    pub fn stop(mut self) -> (PathBuf, u16) {
        self.kill();
        (self.dir.clone(), self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
