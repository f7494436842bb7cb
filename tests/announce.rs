//! Peer matching end to end: `tessera serve` announces the verified content it holds to its
//! embedded metadata service, and `tessera get` with no `--peer` finds the seed through it.
//! Content that would be Simple mode (tampered hash file) or that the store lacks is not announced.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tessera::content::ContentId;
use tessera::control::MetadataClient;
use tessera::tls::TlsClientOptions;

const WAIT: Duration = Duration::from_secs(10);

fn tessera() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
}

fn publish(dir: &Path, id: &str, bytes: &[u8], extra: &[&str]) {
    let file = dir.join(format!("{id}.bin"));
    std::fs::write(&file, bytes).unwrap();
    let output = tessera()
        .args(["publish", file.to_str().unwrap(), "--id", id, "--piece-size", "64K", "--data-dir"])
        .arg(dir.join("data"))
        .args(extra)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

/// A running `tessera serve`, killed on drop if a test fails first.
struct Serve {
    child: Child,
    data_plane: String,
    service_url: String,
}

impl Serve {
    fn start(data: &Path) -> Serve {
        let mut child = tessera()
            .args(["serve", "--listen", "127.0.0.1:0", "--service-listen", "127.0.0.1:0", "--workers", "1"])
            .arg("--data-dir")
            .arg(data)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        let (mut data_plane, mut service_url, mut log) = (None, None, String::new());
        let deadline = Instant::now() + WAIT;
        while data_plane.is_none() || service_url.is_none() {
            let line = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).unwrap_or_else(|_| {
                let _ = child.kill();
                panic!("serve did not report its addresses:\n{log}")
            });
            log.push_str(&line);
            log.push('\n');
            if line.contains("data plane listening") {
                data_plane = line.split_whitespace().find_map(|w| w.strip_prefix("address=")).map(str::to_string);
            }
            if let Some(url) = line.strip_prefix("tessera service: listening on ") {
                service_url = Some(url.trim().to_string());
            }
        }
        Serve { child, data_plane: data_plane.unwrap(), service_url: service_url.unwrap() }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn peers(client: &MetadataClient, serve: &Serve, id: &str) -> Vec<String> {
    let id = ContentId::parse(id).unwrap();
    client.peers(&serve.service_url, &id, "default", None).unwrap().into_iter().map(|p| p.address).collect()
}

#[test]
fn serve_announces_what_it_holds_and_get_finds_it_by_peer_matching() {
    let dir = tempfile::tempdir().unwrap();
    let content: Vec<u8> = (0..5 * 65536 + 77u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    publish(dir.path(), "held", &content, &[]);
    // Bytes of its own: the store is content-addressed, so held's pieces would make a copy held.
    let other: Vec<u8> = content.iter().map(|b| b ^ 0x5a).collect();
    publish(dir.path(), "meta-only", &other, &["--no-store"]);
    publish(dir.path(), "tampered", &content, &[]);
    let hashfile = dir.path().join("data/catalog/tampered.hashfile");
    let mut bytes = std::fs::read(&hashfile).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(&hashfile, bytes).unwrap();

    let serve = Serve::start(&dir.path().join("data"));
    let ca = dir.path().join("data/tls/ca.pem");
    let client = MetadataClient::new(TlsClientOptions { ca_file: Some(ca.clone()), ..Default::default() }).unwrap();
    let deadline = Instant::now() + WAIT;
    while peers(&client, &serve, "held") != vec![serve.data_plane.clone()] {
        assert!(Instant::now() < deadline, "serve never announced `held`");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(peers(&client, &serve, "meta-only").is_empty(), "content without pieces is not announced");
    assert!(peers(&client, &serve, "tampered").is_empty(), "Simple-mode content is never offered to peers");

    let out = dir.path().join("got.bin");
    let output = tessera()
        .args(["get", "held", "--service", &serve.service_url, "--json", "--ca"])
        .arg(&ca)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["mode"], "p2p", "{summary}");
    let seed = summary["sources"].as_array().unwrap().iter().find(|s| s["source"] == serve.data_plane.as_str());
    let seed = seed.unwrap_or_else(|| panic!("the matched seed was not used: {summary}"));
    assert_eq!((seed["kind"].as_str(), seed["pieces"].as_u64()), (Some("peer"), Some(6)), "{summary}");
    assert_eq!(std::fs::read(&out).unwrap(), content);
}
