//! Peer matching end to end: `tessera serve` announces the verified content it holds to its
//! embedded metadata service, and `tessera get` with no `--peer` finds the seed through it.
//! Content that would be Simple mode (tampered hash file) or that the store lacks is not announced.

use std::path::Path;
use std::time::{Duration, Instant};

mod harness;

use harness::{get_with_service, summary_source, tessera, Serve};
use tessera::content::ContentId;
use tessera::control::MetadataClient;
use tessera::tls::TlsClientOptions;

const WAIT: Duration = Duration::from_secs(10);

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

    let serve = Serve::start(&dir.path().join("data"), 1, &[]);
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
    let summary = get_with_service("held", &serve.service_url, &ca, &out);
    assert_eq!(summary["mode"], "p2p", "{summary}");
    let seed = summary_source(&summary, &serve.data_plane);
    assert_eq!((seed["kind"].as_str(), seed["pieces"].as_u64()), (Some("peer"), Some(6)), "{summary}");
    assert_eq!(std::fs::read(&out).unwrap(), content);
}
