//! The status page as an operator meets it: rendered by a real browser (headless Chromium, from
//! Debian's `chromium`, which `scripts/test` installs), as `/status.json`, and through
//! `tessera status` in a shell.

mod harness;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use harness::{get, tessera, Serve};

/// How long one Chromium run may take before it is killed.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(90);
/// How often a running Chromium is looked at.
const POLL: Duration = Duration::from_millis(50);

/// Publishes `length_bytes` of patterned bytes as `id` into `data`, in 64 KiB pieces.
fn publish(dir: &Path, data: &Path, id: &str, length_bytes: usize) {
    let file = dir.join(format!("{id}.bin"));
    // Bytes of their own per id: the store is content-addressed, a shared piece is stored once.
    let bytes: Vec<u8> = (0..length_bytes).map(|i| (i * 31 + i / 977) as u8 ^ id.len() as u8).collect();
    std::fs::write(&file, bytes).unwrap();
    let output = tessera()
        .args(["publish", "--id", id, "--piece-size", "64K", "--data-dir"])
        .arg(data)
        .arg(&file)
        .output()
        .unwrap();
    assert!(output.status.success(), "publish {id}: {}", String::from_utf8_lossy(&output.stderr));
}

/// A box holding two contents, with three hits and one 404 served.
fn serving(dir: &Path) -> Serve {
    let data = dir.join("data");
    publish(dir, &data, "pkg-alpha", 150_000);
    publish(dir, &data, "pkg-beta.2", 70_000);
    let serve = Serve::start(&data, 1, &[]);
    for _ in 0..3 {
        assert_eq!(get(&serve.data_plane, "/v1/content/pkg-alpha/piece/1", None).0, 200);
    }
    assert_eq!(get(&serve.data_plane, "/v1/content/nope", None).0, 404);
    serve
}

/// Runs headless Chromium with `args` on `url`, its home, profile and temporary files inside
/// `dir`; killed after [`CHROMIUM_TIMEOUT`].
fn chromium(dir: &Path, args: &[String], url: &str) -> Output {
    let home = dir.join("chromium-home");
    std::fs::create_dir_all(home.join("tmp")).unwrap();
    let mut child = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
        .arg(format!("--user-data-dir={}", home.join("profile").display()))
        .args(args)
        .arg(url)
        .env("HOME", &home)
        .env("TMPDIR", home.join("tmp"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_CACHE_HOME", home.join("cache"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium (Debian's `chromium`; scripts/test installs it)");
    // Read the pipes on their own threads so a chatty Chromium never blocks on a full pipe.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || std::io::read_to_string(&mut stdout).unwrap_or_default());
    let err = std::thread::spawn(move || std::io::read_to_string(&mut stderr).unwrap_or_default());
    let deadline = Instant::now() + CHROMIUM_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within {CHROMIUM_TIMEOUT:?}: {}", err.join().unwrap());
        }
        std::thread::sleep(POLL);
    };
    Output { status, stdout: out.join().unwrap().into_bytes(), stderr: err.join().unwrap().into_bytes() }
}

#[test]
fn chromium_renders_the_contents_and_numbers_and_takes_a_screenshot() {
    let dir = tempfile::tempdir().unwrap();
    let serve = serving(dir.path());
    let url = format!("http://{}/", serve.data_plane);
    let dumped = chromium(dir.path(), &["--dump-dom".to_string()], &url);
    let dom = String::from_utf8_lossy(&dumped.stdout);
    assert!(dumped.status.success() && dom.contains("</html>"), "{}\n{dom}", String::from_utf8_lossy(&dumped.stderr));
    for shown in [
        "<td>pkg-alpha</td>",
        "<td>pkg-beta.2</td>",
        "3 of 3",                 // pkg-alpha's pieces held
        "2 of 2",                 // pkg-beta.2's
        "title=\"150000 bytes\"", // pkg-alpha's length, exact
        "3 · 0 (100.0 % hits)",   // hits · misses
        "Contents (2)",
    ] {
        assert!(dom.contains(shown), "{shown:?} missing from the rendered page:\n{dom}");
    }
    assert!(dom.contains("uring · 1 workers") || dom.contains("epoll · 1 workers"), "backend missing:\n{dom}");
    assert!(dom.contains("<svg") && dom.contains("id=\"rate\""), "the rate chart is inline:\n{dom}");
    let shot = dir.path().join("status.png");
    let taken =
        chromium(dir.path(), &[format!("--screenshot={}", shot.display()), "--window-size=1000,900".to_string()], &url);
    assert!(taken.status.success(), "{}", String::from_utf8_lossy(&taken.stderr));
    let png = std::fs::read(&shot).expect("the screenshot was written");
    assert!(png.len() > 1000 && png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG of the page: {} bytes", png.len());
}

#[test]
fn status_json_and_tessera_status_show_the_same_box() {
    let dir = tempfile::tempdir().unwrap();
    let serve = serving(dir.path());
    let (code, head, body) = get(&serve.data_plane, "/status.json", None);
    assert_eq!(code, 200);
    assert!(head.contains("Content-Type: application/json"), "{head}");
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["role"], "seed");
    assert_eq!(json["cache"]["hits"], 3);
    assert_eq!(json["contents_total"], 2);
    assert_eq!(json["contents"][0]["id"], "pkg-alpha");
    assert_eq!(json["contents"][0]["bytes_held"], 150_000);
    assert_eq!(json["store"]["pieces"], 5);
    let url = format!("http://{}", serve.data_plane);
    let printed = tessera().args(["status", "--url", &url]).output().unwrap();
    let text = String::from_utf8_lossy(&printed.stdout);
    assert!(printed.status.success(), "{}", String::from_utf8_lossy(&printed.stderr));
    for shown in ["pkg-alpha", "pkg-beta.2", "hits: 3 · misses: 0", "contents: 2", "store: 5 pieces"] {
        assert!(text.contains(shown), "{shown:?} missing from tessera status:\n{text}");
    }
    // Or from the box's config file, as on an installed box.
    let config = dir.path().join("box.toml");
    std::fs::write(&config, format!("[serve]\nlisten = \"{}\"\n", serve.data_plane)).unwrap();
    let from_config = tessera().args(["status", "--config"]).arg(&config).output().unwrap();
    assert!(String::from_utf8_lossy(&from_config.stdout).contains("pkg-beta.2"), "{from_config:?}");
    let as_json = tessera().args(["status", "--json", "--url", &url]).output().unwrap();
    let again: serde_json::Value = serde_json::from_slice(&as_json.stdout).unwrap();
    assert_eq!((&again["contents"], &again["cache"]["hits"]), (&json["contents"], &json["cache"]["hits"]));
}

#[test]
fn tessera_status_names_the_url_it_cannot_reach() {
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let output = tessera().args(["status", "--url", &url]).output().unwrap();
    let message = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{message}");
    assert!(message.contains(&format!("{url}/status.json")) && message.contains("cannot reach"), "{message}");
    let bad = tessera().args(["status", "--url", "ftp://box"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2), "{}", String::from_utf8_lossy(&bad.stderr));
}
