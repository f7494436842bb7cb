//! The store is content-addressed: a republished id serves its new bytes, pieces two contents
//! share are stored once, and a store in a format this tessera does not write is migrated or
//! refused with what to do.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tessera::config::{BackendChoice, Config};
use tessera::dataplane::Server;

const PIECE: usize = 64 * 1024;

fn tessera(args: &[&str], cwd: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tessera")).args(args).current_dir(cwd).output().expect("run tessera")
}

/// Reproducible pseudo-random bytes (xorshift).
fn random_bytes(length: usize, mut state: u64) -> Vec<u8> {
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Publishes `bytes` under `id` with `tessera publish --json`; returns (stored, already present).
fn publish(dir: &Path, id: &str, bytes: &[u8]) -> (u64, u64) {
    std::fs::write(dir.join("source.bin"), bytes).unwrap();
    let output =
        tessera(&["publish", "source.bin", "--id", id, "--piece-size", "64K", "--data-dir", "d", "--json"], dir);
    assert!(output.status.success(), "publish {id}: {}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    (report["pieces_stored"].as_u64().unwrap(), report["pieces_already_present"].as_u64().unwrap())
}

/// One `GET` on a fresh connection: (status, body).
fn get(address: SocketAddr, path: &str) -> (u16, Vec<u8>) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let mut wire = Vec::new();
    stream.read_to_end(&mut wire).unwrap();
    let split = wire.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head") + 4;
    let status = std::str::from_utf8(&wire[9..12]).unwrap().parse().unwrap();
    (status, wire[split..].to_vec())
}

fn serve(dir: &Path) -> tessera::dataplane::ServerHandle {
    let mut config = Config { data_dir: dir.join("d"), ..Config::default() };
    config.serve.listen = "127.0.0.1:0".into();
    config.serve.workers = 1;
    config.serve.backend = BackendChoice::Epoll;
    Server::start(&config).unwrap()
}

#[test]
fn a_republished_id_serves_the_new_bytes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let first = random_bytes(PIECE * 7 / 2, 1);
    // The second version changes piece 1 and the short last piece; pieces 0 and 2 stay.
    let mut second = first.clone();
    second[PIECE + 5] ^= 0xff;
    second.truncate(PIECE * 3 + 100);
    second.extend_from_slice(&random_bytes(PIECE / 4, 2));
    assert_eq!(publish(dir.path(), "x", &first), (4, 0));
    assert_eq!(publish(dir.path(), "x", &second), (2, 2), "new pieces stored, shared ones not");

    let server = serve(dir.path());
    let (status, body) = get(server.local_addr(), "/v1/content/x");
    assert_eq!(status, 200);
    assert!(body == second, "the whole content is not the second version ({} bytes)", body.len());
    for index in 0..4 {
        let (status, body) = get(server.local_addr(), &format!("/v1/content/x/piece/{index}"));
        let end = (PIECE * (index + 1)).min(second.len());
        assert_eq!(status, 200, "piece {index}");
        assert!(body == second[PIECE * index..end], "piece {index} is not the second version's");
    }
    server.shutdown().unwrap();
}

#[test]
fn pieces_two_contents_share_are_stored_once_and_serve_both() {
    let dir = tempfile::tempdir().unwrap();
    let a = random_bytes(PIECE * 3, 3);
    let mut b = a[..PIECE * 2].to_vec();
    b.extend_from_slice(&random_bytes(PIECE + 10, 4));
    assert_eq!(publish(dir.path(), "a", &a), (3, 0));
    assert_eq!(publish(dir.path(), "b", &b), (2, 2));

    let server = serve(dir.path());
    let metrics = String::from_utf8(get(server.local_addr(), "/metrics").1).unwrap();
    assert!(metrics.lines().any(|l| l == "tessera_store_pieces 5"), "3 + 2 distinct pieces: {metrics}");
    assert!(get(server.local_addr(), "/v1/content/a").1 == a, "a's bytes");
    assert!(get(server.local_addr(), "/v1/content/b").1 == b, "b's bytes");
    server.shutdown().unwrap();
}

#[test]
fn a_store_of_a_newer_format_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    publish(dir.path(), "a", &random_bytes(PIECE, 5));
    // Pretend a later tessera rewrote the store: its header names format 99.
    let log = dir.path().join("d/store").join(tessera::store::INDEX_LOG_NAME);
    let mut header = std::fs::read(&log).unwrap();
    header.truncate(tessera::store::RECORD_SIZE);
    header[4..8].copy_from_slice(&99u32.to_le_bytes());
    let checksum = tessera::hash::sha256(&header[..64]);
    header[64..72].copy_from_slice(&checksum[..8]);
    std::fs::write(&log, &header).unwrap();

    std::fs::write(dir.path().join("source.bin"), b"bytes").unwrap();
    let output = tessera(&["publish", "source.bin", "--id", "b", "--data-dir", "d"], dir.path());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "publish into a format-99 store succeeded");
    assert!(stderr.contains("format 99") && stderr.contains("d/store") && stderr.contains("move"), "{stderr}");
}
