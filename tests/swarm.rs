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

#[test]
fn against_a_box_every_liar_is_banned_and_every_device_gets_exact_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("box");
    let bytes = content();
    publish(&data, ID, &bytes, &[]);
    let server = Serve::start(&data, 1, &[]);
    let ca = data.join("tls/ca.pem");
    wait_for_peer(&server.service_url, &ca, ID, &server.data_plane);
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let (ca, token, work) = (ca.to_str().unwrap(), data.join("announce.token"), work.to_str().unwrap());
    let (status, summary, stderr) = swarm(&[
        "--service",
        &server.service_url,
        "--ca",
        ca,
        "--content",
        ID,
        "--devices",
        "4",
        "--concurrency",
        "2",
        "--liars",
        "2",
        "--liar-kinds",
        "bit-flip,good-then-bad",
        "--token-file",
        token.to_str().unwrap(),
        "--work-dir",
        work,
        "--keep-outputs",
    ]);
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
    for device in 0..4 {
        let got = std::fs::read(kept.join(format!("device-{device}.bin"))).unwrap();
        assert!(got == bytes, "device {device} has other bytes");
    }
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
