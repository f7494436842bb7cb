//! `tessera serve --check`, as an operator runs it before a start: exit 0 with "configuration ok"
//! for a config that would start, exit 2 naming every problem otherwise, and nothing started or
//! created.

mod harness;

use std::path::Path;
use std::process::{Command, Output};

fn tessera(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tessera")).args(args).current_dir(cwd).output().expect("run tessera")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `serve --check` with `extra` flags; by default on free loopback ports and the data dir `data`.
fn check(dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["serve", "--check"];
    for (flag, value) in [("--data-dir", "data"), ("--listen", "127.0.0.1:0"), ("--service-listen", "127.0.0.1:0")] {
        if !extra.contains(&flag) {
            args.extend([flag, value]);
        }
    }
    args.extend(extra);
    tessera(&args, dir)
}

#[test]
fn a_good_config_with_a_dev_ca_passes_and_says_what_auto_picks() {
    let dir = tempfile::tempdir().unwrap();
    let init = tessera(&["cert", "init", "data/tls"], dir.path());
    assert!(init.status.success(), "cert init: {}", stderr(&init));
    let output = check(dir.path(), &[]);
    assert_eq!(output.status.code(), Some(0), "{}{}", stdout(&output), stderr(&output));
    let out = stdout(&output);
    assert!(out.starts_with("configuration ok"), "{out}");
    assert!(out.contains("server.pem: ok"), "the dev certificate is checked: {out}");
    assert!(out.contains("backend auto picks"), "{out}");
    assert!(!dir.path().join("data/store").exists(), "a check creates no store");
}

#[test]
fn a_missing_data_dir_is_named_and_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let output = check(dir.path(), &[]);
    assert_eq!(output.status.code(), Some(2), "{}", stdout(&output));
    assert!(stderr(&output).contains("data_dir data: does not exist"), "{}", stderr(&output));
    assert!(!dir.path().join("data").exists());
}

#[test]
fn a_port_in_use_and_a_bad_value_are_both_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    std::fs::write(dir.path().join("box.toml"), "[service]\nheader_timeout_ms = 0\n").unwrap();
    let output = check(dir.path(), &["--listen", &addr, "--config", "box.toml"]);
    assert_eq!(output.status.code(), Some(2), "{}", stdout(&output));
    let err = stderr(&output);
    assert!(err.contains(&format!("serve.listen = {addr}: cannot bind")), "{err}");
    assert!(err.contains("service.header_timeout_ms = 0"), "{err}");
    assert!(err.contains("2 problems"), "{err}");
}

#[test]
fn a_listen_value_that_is_no_address_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    let output = check(dir.path(), &["--listen", "nope"]);
    assert_eq!(output.status.code(), Some(2), "{}", stdout(&output));
    assert!(stderr(&output).contains("serve.listen = \"nope\""), "{}", stderr(&output));
}

/// A config serving `cert_file` with `key_file` (both relative to `dir`).
fn with_service_cert(dir: &Path, cert_file: &str, key_file: &str) -> Output {
    let config = format!("[service]\ncert_file = \"{cert_file}\"\nkey_file = \"{key_file}\"\n");
    std::fs::write(dir.join("box.toml"), config).unwrap();
    check(dir, &["--config", "box.toml"])
}

#[test]
fn a_garbage_certificate_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let init = tessera(&["cert", "init", "data/tls"], dir.path());
    assert!(init.status.success(), "cert init: {}", stderr(&init));
    // PEM framing around bytes that are no certificate.
    let garbage = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n";
    std::fs::write(dir.path().join("bad.pem"), garbage).unwrap();
    let output = with_service_cert(dir.path(), "bad.pem", "data/tls/server.key.pem");
    assert_eq!(output.status.code(), Some(2), "{}", stdout(&output));
    assert!(stderr(&output).contains("service certificate bad.pem: does not parse"), "{}", stderr(&output));

    std::fs::write(dir.path().join("bad.key.pem"), "not a key\n").unwrap();
    let output = with_service_cert(dir.path(), "bad.pem", "bad.key.pem");
    assert_eq!(output.status.code(), Some(2), "{}", stdout(&output));
    let err = stderr(&output);
    assert!(err.contains("service certificate bad.pem") && err.contains("service key bad.key.pem"), "{err}");
}

#[test]
fn an_expired_certificate_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    let ca = tessera::tls::DevCa::generate().unwrap();
    let now = std::time::SystemTime::now();
    let day = std::time::Duration::from_secs(86_400);
    let old = ca.issue_server(&["localhost".into()], now - 30 * day, now - day).unwrap();
    std::fs::write(dir.path().join("old.pem"), format!("{}{}", old.cert_pem, ca.cert_pem())).unwrap();
    std::fs::write(dir.path().join("old.key.pem"), &old.key_pem).unwrap();
    let output = with_service_cert(dir.path(), "old.pem", "old.key.pem");
    assert_eq!(output.status.code(), Some(2), "{}", stdout(&output));
    assert!(stderr(&output).contains("service certificate old.pem: not currently valid"), "{}", stderr(&output));
}

#[test]
fn a_running_serve_is_seen_and_its_service_is_a_reachable_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let up_data = dir.path().join("up");
    let up = harness::Serve::start(&up_data, 1, &[]);
    // Its own addresses and store, checked while it runs: both ports taken, the store in use.
    let service_addr = up.service_url.trim_start_matches("https://").replace("localhost", "127.0.0.1");
    let args = ["--data-dir", "up", "--listen", &up.data_plane, "--service-listen", &service_addr];
    let output = tessera(&[&["serve", "--check"][..], &args].concat(), dir.path());
    assert_eq!(output.status.code(), Some(2), "{}", stdout(&output));
    let err = stderr(&output);
    assert!(err.contains(&format!("serve.listen = {}: cannot bind", up.data_plane)), "{err}");
    assert!(err.contains(&format!("service.listen = {service_addr}: cannot bind")), "{err}");
    assert!(stdout(&output).contains("in use by pid "), "{}", stdout(&output));

    std::fs::create_dir(dir.path().join("data")).unwrap();
    let ca = up_data.join("tls/ca.pem");
    let output = check(dir.path(), &["--upstream", &up.service_url, "--upstream-ca", ca.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}{}", stdout(&output), stderr(&output));
    assert!(stdout(&output).contains(&format!("upstream {}: reachable", up.service_url)), "{}", stdout(&output));

    // Stopped, its store opens for the check.
    drop(up);
    let output = check(dir.path(), &["--data-dir", "up"]);
    assert_eq!(output.status.code(), Some(0), "{}{}", stdout(&output), stderr(&output));
    assert!(stdout(&output).contains("store up/store: 0 pieces"), "{}", stdout(&output));
}

#[test]
fn an_upstream_nobody_listens_on_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("https://127.0.0.1:{port}");
    let output = check(dir.path(), &["--upstream", &url]);
    assert_eq!(output.status.code(), Some(2), "{}", stdout(&output));
    assert!(stderr(&output).contains(&format!("upstream.service_url = {url}: ")), "{}", stderr(&output));
}
