//! `tessera publish` end to end: the hash file agrees with an independent SHA-256 of every
//! piece, the pieces land in the store, and bad input gets a clear error.

use std::path::Path;
use std::process::Command;

use tessera::catalog::Catalog;
use tessera::config::StoreConfig;
use tessera::content::{ContentId, HashFile, Manifest};
use tessera::store::Store;

fn tessera(args: &[&str], cwd: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tessera")).args(args).current_dir(cwd).output().expect("run tessera")
}

/// Reproducible pseudo-random bytes (xorshift), so failures can be replayed.
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

/// SHA-256 by ring: a second implementation, not the code under test.
fn independent_sha256(bytes: &[u8]) -> [u8; 32] {
    ring::digest::digest(&ring::digest::SHA256, bytes).as_ref().try_into().unwrap()
}

#[test]
fn hash_file_matches_an_independent_sha256_of_every_piece() {
    let dir = tempfile::tempdir().unwrap();
    let piece_size = 64 * 1024;
    let content = random_bytes(piece_size * 37 + 1234, 0x9e3779b97f4a7c15);
    std::fs::write(dir.path().join("blob.bin"), &content).unwrap();
    let output = tessera(
        &[
            "publish",
            "blob.bin",
            "--id",
            "blob-1",
            "--piece-size",
            "64K",
            "--source",
            "http://127.0.0.1:9/blob",
            "--with-sha256",
            "--data-dir",
            "data",
        ],
        dir.path(),
    );
    assert!(output.status.success(), "publish failed: {}", String::from_utf8_lossy(&output.stderr));

    let catalog = Catalog::new(dir.path().join("data/catalog"));
    let id = ContentId::parse("blob-1").unwrap();
    let hashfile_bytes = catalog.read_hashfile(&id).unwrap().expect("hash file written");
    let hashes = HashFile::parse(&hashfile_bytes).unwrap();
    assert_eq!(hashes.content_length(), content.len() as u64);
    assert_eq!(hashes.piece_count(), 38);
    for (index, piece) in content.chunks(piece_size).enumerate() {
        assert_eq!(hashes.digests()[index], independent_sha256(piece), "piece {index}");
    }

    let manifest: Manifest = catalog.read_manifest(&id).unwrap().expect("manifest written");
    assert_eq!(manifest.hashfile_sha256, hex::encode(independent_sha256(&hashfile_bytes)));
    assert_eq!(manifest.sha256.as_deref(), Some(hex::encode(independent_sha256(&content)).as_str()));
    assert_eq!(manifest.sources, vec!["http://127.0.0.1:9/blob".to_string()]);
    assert_eq!(manifest.piece_size, piece_size as u32);

    let store = Store::open(&dir.path().join("data/store"), &StoreConfig::default()).unwrap();
    for (index, piece) in content.chunks(piece_size).enumerate() {
        assert_eq!(store.get(&hashes.digests()[index]).expect("piece stored").bytes(), piece, "piece {index}");
    }
}

#[test]
fn same_content_gives_the_same_hash_file_and_republishing_stores_nothing_new() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), random_bytes(300_000, 7)).unwrap();
    let first = tessera(&["publish", "f", "--id", "a", "--piece-size", "64K", "--data-dir", "d", "--json"], dir.path());
    assert!(first.status.success());
    let again = tessera(&["publish", "f", "--id", "a", "--piece-size", "64K", "--data-dir", "d", "--json"], dir.path());
    let first: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(first["hashfile_sha256"], again["hashfile_sha256"]);
    assert_eq!(first["pieces_stored"], 5);
    assert_eq!(again["pieces_stored"], 0);
    assert_eq!(again["pieces_already_present"], 5);
}

#[test]
fn empty_file_publishes_zero_pieces_and_no_store_skips_the_store() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("empty"), b"").unwrap();
    let output = tessera(&["publish", "empty", "--id", "e", "--data-dir", "d", "--no-store"], dir.path());
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let hashfile = std::fs::read(dir.path().join("d/catalog/e.hashfile")).unwrap();
    assert_eq!(HashFile::parse(&hashfile).unwrap().piece_count(), 0);
    assert!(!dir.path().join("d/store").exists(), "--no-store created a store");
}

#[test]
fn bad_input_gets_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"x").unwrap();
    let cases: [(&[&str], &str); 5] = [
        (&["publish", "missing.bin", "--id", "a", "--data-dir", "d"], "missing.bin"),
        (&["publish", "f", "--id", "../etc", "--data-dir", "d"], "../etc"),
        (&["publish", "f", "--id", "a", "--piece-size", "100K", "--data-dir", "d"], "--piece-size"),
        (&["publish", "f", "--id", "a", "--piece-size", "32M", "--data-dir", "d"], "outside 64 KiB"),
        (&["publish", ".", "--id", "a", "--data-dir", "d"], "not a regular file"),
    ];
    for (args, expected) in cases {
        let output = tessera(args, dir.path());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: bad input is exit status 2: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert!(!dir.path().join("d/catalog/a.manifest.json").exists());
}

#[test]
fn urls_no_client_can_fetch_are_refused_with_exit_2_and_no_manifest() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"x").unwrap();
    for (flag, url) in [
        ("--source", "notaurl"),
        ("--source", "ftp://h/f"),
        ("--hashfile-url", "http://[::1"),
        ("--source", "http://h/a\r\nX-Injected: 1"),
        ("--source", "http://user:pw@h/f"),
    ] {
        let output = tessera(&["publish", "f", "--id", "a", flag, url, "--data-dir", "d"], dir.path());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{flag} {url:?}: {stderr}");
        assert!(stderr.contains(flag) && stderr.contains(&format!("{url:?}")), "{flag} {url:?}: {stderr}");
    }
    assert!(!dir.path().join("d/catalog/a.manifest.json").exists());
    let output =
        tessera(&["publish", "f", "--id", "a", "--source", "HTTP://[::1]:8080/f#x", "--data-dir", "d"], dir.path());
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn help_lists_the_subcommands_and_config_prints_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let help = String::from_utf8(tessera(&["--help"], dir.path()).stdout).unwrap();
    for command in ["publish", "serve", "config", "info"] {
        assert!(help.contains(command), "--help misses {command}: {help}");
    }
    let printed = tessera(&["config", "--print-default"], dir.path());
    let config = tessera::config::Config::parse(std::str::from_utf8(&printed.stdout).unwrap(), Path::new("-")).unwrap();
    assert_eq!(config, tessera::config::Config::default());
    let info = String::from_utf8(tessera(&["info"], dir.path()).stdout).unwrap();
    assert!(info.contains("sha256 backend: "), "{info}");
    assert!(info.contains("sha256 batch backend ("), "{info}");
}
