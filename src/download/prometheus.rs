//! The end of a download as Prometheus text, for node_exporter's textfile collector
//! (`tessera get --metrics-file`): a batch job's way of exporting metrics, bans included.

use std::fmt::Write as _;

use crate::download::get::Summary;
use crate::download::SourceStats;

/// One per-source gauge: name, help text, and how to read it from a source's stats.
type SourceGauge = (&'static str, &'static str, fn(&SourceStats) -> u64);

/// Renders the outcome of downloading `content_id`; `summary` is absent when the download
/// stopped before any source was tried (bad metadata, no source, I/O error).
pub fn render(content_id: &str, summary: Option<&Summary>, success: bool) -> String {
    let mut out = String::new();
    let content = escape(content_id);
    gauge(&mut out, "tessera_download_success", "1 when the content was downloaded and checked, else 0.");
    let _ = writeln!(out, "tessera_download_success{{content=\"{content}\"}} {}", u8::from(success));
    let Some(summary) = summary else { return out };
    gauge(
        &mut out,
        "tessera_download_mode",
        "The mode the download ran in (p2p or simple), with Simple mode's reason.",
    );
    let reason = escape(summary.mode_reason.as_deref().unwrap_or(""));
    let _ =
        writeln!(out, "tessera_download_mode{{content=\"{content}\",mode=\"{}\",reason=\"{reason}\"}} 1", summary.mode);
    gauge(&mut out, "tessera_download_duration_seconds", "Wall time of the download.");
    let _ = writeln!(
        out,
        "tessera_download_duration_seconds{{content=\"{content}\"}} {:.3}",
        summary.duration_ms as f64 / 1e3
    );
    gauge(&mut out, "tessera_download_bans", "Peers banned for sending bad pieces.");
    let _ = writeln!(out, "tessera_download_bans{{content=\"{content}\"}} {}", summary.banned.len());
    let per_source: [SourceGauge; 5] = [
        ("tessera_download_source_bytes", "Bytes of verified pieces written from each source.", |s| s.bytes),
        ("tessera_download_source_pieces", "Verified pieces from each source.", |s| s.pieces),
        ("tessera_download_source_bad_pieces", "Pieces from each source that failed verification.", |s| s.bad_pieces),
        ("tessera_download_source_timeouts", "Requests to each source that timed out.", |s| s.timeouts),
        ("tessera_download_source_banned", "1 when the source was banned.", |s| u64::from(s.banned)),
    ];
    for (name, help, value) in per_source {
        gauge(&mut out, name, help);
        for source in &summary.sources {
            let _ = writeln!(
                out,
                "{name}{{content=\"{content}\",source=\"{}\",kind=\"{}\"}} {}",
                escape(&source.source),
                source.kind,
                value(source)
            );
        }
    }
    out
}

fn gauge(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
}

/// Escapes a label value (backslash, double quote, newline).
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(name: &str, kind: &'static str, bad: u64, banned: bool) -> SourceStats {
        SourceStats {
            source: name.into(),
            kind,
            bytes: 100,
            pieces: 2,
            bad_pieces: bad,
            requests: 4,
            timeouts: 0,
            failures: 0,
            banned,
            ..SourceStats::default()
        }
    }

    #[test]
    fn renders_bans_and_bad_pieces_per_source() {
        let summary = Summary {
            content_id: "pkg".into(),
            output: "out".into(),
            mode: "p2p",
            mode_reason: None,
            hashfile_origin: Some("service".into()),
            content_length: 200,
            piece_size: 65536,
            pieces: 4,
            pieces_resumed: 0,
            sha256: None,
            duration_ms: 1500,
            sources: vec![source("127.0.0.1:1", "peer", 2, true), source("http://o/\"x\"", "http", 0, false)],
            banned: vec!["127.0.0.1:1".into()],
        };
        let text = render("pkg", Some(&summary), true);
        assert!(text.contains("tessera_download_success{content=\"pkg\"} 1\n"), "{text}");
        assert!(text.contains("tessera_download_bans{content=\"pkg\"} 1\n"), "{text}");
        assert!(text.contains("tessera_download_duration_seconds{content=\"pkg\"} 1.500\n"), "{text}");
        assert!(
            text.contains(
                "tessera_download_source_bad_pieces{content=\"pkg\",source=\"127.0.0.1:1\",kind=\"peer\"} 2\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("tessera_download_source_banned{content=\"pkg\",source=\"127.0.0.1:1\",kind=\"peer\"} 1\n")
        );
        assert!(text.contains("source=\"http://o/\\\"x\\\"\""), "label not escaped: {text}");
        // Every sample line is `name{labels} value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }

    #[test]
    fn failure_without_summary_still_reports() {
        assert_eq!(
            render("a", None, false),
            "# HELP tessera_download_success 1 when the content was downloaded and checked, else 0.\n\
             # TYPE tessera_download_success gauge\ntessera_download_success{content=\"a\"} 0\n"
        );
    }
}
