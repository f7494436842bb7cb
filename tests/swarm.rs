//! `tessera load swarm` against a real box: devices download a content as `tessera get` does
//! while lying peers, announced to the box's service with its announce token, serve bad pieces.
//! What is checked is what an operator reads in the summary: every liar banned, no bad byte
//! accepted, and every device's file the content, byte for byte.

mod harness;

use std::path::Path;

use harness::{publish, tessera, wait_for_peer, Serve};

const ID: &str = "swarmed";

fn content() -> Vec<u8> {
    // 40 pieces of 64 KiB and a short last one.
    (0..40 * 65536 + 777u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect()
}

/// Runs `tessera load swarm` with `args` and `--json`: exit status, JSON summary (or error).
fn swarm(args: &[&str]) -> (std::process::ExitStatus, serde_json::Value, String) {
    let output = tessera().args(["load", "swarm"]).args(args).arg("--json").output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let json = serde_json::from_slice(&output.stdout).unwrap_or_else(|_| panic!("no JSON summary:\n{stderr}"));
    (output.status, json, stderr)
}

/// Runs a swarm of 4 devices and 2 liars against `service` (`--ca ca`, announce token `token`,
/// `extra` flags) and checks what the issue promises: every download complete and byte-exact,
/// every liar banned, no bad byte accepted.
fn swarm_bans_every_liar(service: &str, ca: &Path, token: &Path, work: &Path, extra: &[&str]) {
    std::fs::create_dir(work).unwrap();
    let (ca, token, work) = (ca.to_str().unwrap(), token.to_str().unwrap(), work.to_str().unwrap());
    let mut args = vec!["--service", service, "--ca", ca, "--content", ID, "--token-file", token, "--work-dir", work];
    args.extend(["--devices", "4", "--concurrency", "2", "--liars", "2", "--liar-kinds", "bit-flip,good-then-bad"]);
    args.push("--keep-outputs");
    args.extend(extra);
    let (status, summary, stderr) = swarm(&args);
    assert!(status.success(), "{summary}\n{stderr}");
    assert_eq!((summary["completed"].as_u64(), summary["failed"].as_u64()), (Some(4), Some(0)), "{summary}");
    assert_eq!(summary["bad_bytes_accepted"].as_u64(), Some(0), "{summary}");
    let liars = summary["liars"].as_array().unwrap();
    assert_eq!(liars.len(), 2, "{summary}");
    for liar in liars {
        assert!(liar["lies"].as_u64().unwrap() > 0, "a liar that never lied tests nothing: {summary}");
        assert!(liar["banned_by"].as_u64().unwrap() > 0, "liar not banned: {summary}");
    }
    assert_eq!(summary["liars_banned"].as_u64(), Some(2), "{summary}");
    let kept = Path::new(summary["outputs_dir"].as_str().unwrap());
    let bytes = content();
    for device in 0..4 {
        let got = std::fs::read(kept.join(format!("device-{device}.bin"))).unwrap();
        assert!(got == bytes, "device {device} has other bytes");
    }
}

#[test]
fn against_a_seed_found_by_peer_matching_every_liar_is_banned_and_bytes_are_exact() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("seed");
    publish(&data, ID, &content(), &[]);
    let seed = Serve::start(&data, 1, &[]);
    let ca = data.join("tls/ca.pem");
    wait_for_peer(&seed.service_url, &ca, ID, &seed.data_plane);
    swarm_bans_every_liar(&seed.service_url, &ca, &data.join("announce.token"), &dir.path().join("work"), &[]);
}

#[test]
fn against_a_cold_cache_box_every_liar_is_banned_and_bytes_are_exact() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("seed");
    publish(&data, ID, &content(), &[]);
    let seed = Serve::start(&data, 1, &[]);
    let upstream = ["--upstream", &seed.service_url, "--upstream-peer", &seed.data_plane, "--upstream-ca"];
    let mut flags: Vec<String> = upstream.iter().map(|flag| flag.to_string()).collect();
    flags.push(data.join("tls/ca.pem").to_str().unwrap().to_string());
    let box_data = dir.path().join("box");
    let cache = Serve::start(&box_data, 1, &flags);
    // The devices find the box with --peer, as `get --peer` does: a cold box announces nothing.
    let (ca, token) = (box_data.join("tls/ca.pem"), box_data.join("announce.token"));
    let work = dir.path().join("work");
    swarm_bans_every_liar(&cache.service_url, &ca, &token, &work, &["--peer", &cache.data_plane]);
}

#[test]
fn bad_input_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (&["--content", ID, "--liar-kinds", "bit-flip,bit-flop"], "\"bit-flop\""),
        (&["--content", ID, "--token-file", "missing.token"], "missing.token"),
        (&["--content", ID, "--devices", "0"], "--devices 0"),
        (&["--content", ID, "--liar-ip", "0.0.0.0"], "--liar-ip 0.0.0.0"),
        (&["--content", "../x"], "--content: "),
    ];
    for (extra, named) in cases {
        let output = tessera()
            .args(["load", "swarm", "--service", "https://127.0.0.1:9"])
            .args(extra)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(stderr.contains(named), "{extra:?} should name {named}: {stderr}");
    }
}
