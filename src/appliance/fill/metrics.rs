//! The fill thread's part of `/metrics`: its counters, gauges, latency histograms, per-source
//! lines and Simple-mode answers in Prometheus text, appended to the data plane's by
//! `UpstreamLink::metrics_text`; and its part of the status page ([`FillStatus`]).

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::content::SimpleReason;
use crate::dataplane::status::{FillStatus, SourceStatus, SOURCES_SHOWN_MAX};
use crate::download::ban::BanPolicy;
use crate::fill::{FillEngine, SourceId, SourceKind};
use crate::http::url::HttpUrl;

use super::FillThread;

/// Sources with a `source` label of their own; the rest are summed under `source="other"`, so
/// a box that meets many origins keeps its `/metrics` bounded.
pub const LABELLED_SOURCES_MAX: usize = 64;

/// Reason classes of Simple mode, as labels.
const REASON_CLASSES: [&str; 4] = ["no_manifest", "metadata_unreachable", "no_hashfile", "unverified"];

/// The class of a Simple-mode reason, an index into [`REASON_CLASSES`].
fn reason_class(reason: &SimpleReason) -> usize {
    match reason {
        SimpleReason::NoManifest => 0,
        SimpleReason::ManifestFetch(_) | SimpleReason::HashFileFetch(_) => 1,
        SimpleReason::NoHashFile => 2,
        SimpleReason::ManifestInvalid(_)
        | SimpleReason::HashFileDigestMismatch { .. }
        | SimpleReason::HashFileParse(_)
        | SimpleReason::LengthMismatch { .. }
        | SimpleReason::PieceSizeMismatch { .. } => 3,
    }
}

/// Simple-mode answers: passed through from an HTTP source, or refused (502, or 404 on the
/// piece API), by reason class.
#[derive(Debug, Default)]
pub(super) struct SimpleCounts {
    passed_through: [u64; REASON_CLASSES.len()],
    refused: [u64; REASON_CLASSES.len()],
}

impl SimpleCounts {
    /// Counts one request answered in Simple mode.
    pub(super) fn count(&mut self, reason: &SimpleReason, passed_through: bool) {
        let counts = if passed_through { &mut self.passed_through } else { &mut self.refused };
        counts[reason_class(reason)] += 1;
    }

    fn render(&self, out: &mut String) {
        let name = "tessera_fill_simple_mode_total";
        let _ = writeln!(
            out,
            "# HELP {name} Requests answered in Simple mode: passed through from an HTTP source, or refused.\n# TYPE {name} counter"
        );
        for (outcome, counts) in [("pass_through", &self.passed_through), ("refused", &self.refused)] {
            for (reason, count) in REASON_CLASSES.iter().zip(counts) {
                let _ = writeln!(out, "{name}{{outcome=\"{outcome}\",reason=\"{reason}\"}} {count}");
            }
        }
    }
}

/// One `source` label's numbers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct SourceRow {
    bytes: u64,
    bad_pieces: u64,
    banned: u64,
    bans: u64,
}

/// A source's label: `HOST:PORT` for parents and peers, the origin's host (and port) for an
/// HTTP source, so one origin's URLs share a line.
fn source_label(kind: SourceKind, name: &str) -> String {
    let label = match kind {
        SourceKind::Origin => HttpUrl::parse(name).map_or_else(|_| name.to_string(), |url| url.authority()),
        SourceKind::Parent | SourceKind::Peer => name.to_string(),
    };
    // A label value escapes `\`, `"` and newlines.
    label.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Per-source rows by label, in the order sources were registered: the first
/// [`LABELLED_SOURCES_MAX`] labels, then `other` (if any source fell past them).
fn source_rows(engine: &mut FillEngine, bans: &BanPolicy<String>, now_ms: u64) -> Vec<(String, SourceRow)> {
    let mut rows: Vec<(String, SourceRow)> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    let mut other = None;
    for index in 0..engine.source_count() {
        let source = SourceId(index as u32);
        let (kind, name) = engine.source(source);
        let (label, name) = (source_label(kind, name), name.to_string());
        let slot = match at.get(&label) {
            Some(&slot) => slot,
            None if rows.len() < LABELLED_SOURCES_MAX => {
                rows.push((label.clone(), SourceRow::default()));
                at.insert(label, rows.len() - 1);
                rows.len() - 1
            }
            None => *other.get_or_insert_with(|| {
                rows.push(("other".to_string(), SourceRow::default()));
                rows.len() - 1
            }),
        };
        let counts = engine.counters().source(source);
        let row = &mut rows[slot].1;
        row.bytes += counts.bytes;
        row.bad_pieces += counts.bad_pieces;
        row.banned += u64::from(bans.banned_until_ms(&name).is_some_and(|until| now_ms < until));
        row.bans += u64::from(bans.bans(&name));
    }
    rows
}

/// Picks one number out of a [`SourceRow`].
type RowField = fn(&SourceRow) -> u64;

/// Writes the per-source families.
fn render_sources(out: &mut String, rows: &[(String, SourceRow)]) {
    let families: [(&str, &str, &str, RowField); 4] = [
        ("tessera_fill_source_bytes_total", "counter", "Verified bytes received, by source.", |r| r.bytes),
        ("tessera_fill_source_bad_pieces_total", "counter", "Pieces that failed verification, by source.", |r| {
            r.bad_pieces
        }),
        ("tessera_fill_source_banned", "gauge", "Sources banned now (1 per banned source).", |r| r.banned),
        ("tessera_fill_source_bans_total", "counter", "Times a source was banned.", |r| r.bans),
    ];
    for (name, kind, help, field) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (label, row) in rows {
            let _ = writeln!(out, "{name}{{source=\"{label}\"}} {}", field(row));
        }
    }
}

impl FillThread {
    /// Publishes the fill's counters and gauges (Prometheus text) and its status-page state.
    pub(super) fn publish_metrics(&mut self) {
        let now = self.now_ms();
        let (bans, banned, rows) = {
            let policy = self.bans.lock();
            (policy.counts(), policy.banned_count(now), source_rows(&mut self.engine, &policy, now))
        };
        let status = FillStatus {
            service_url: self.service_url.clone(),
            service: self.service_health.clone(),
            fills_in_flight: self.engine.fills_in_flight() as u64,
            pieces_in_flight: self.engine.pieces_in_flight() as u64,
            waiters: self.engine.waiters() as u64,
            bans_in_force: banned as u64,
            bans_total: bans.bans_total,
            sources: rows
                .iter()
                .take(SOURCES_SHOWN_MAX)
                .map(|(name, row)| SourceStatus {
                    name: name.clone(),
                    bytes: row.bytes,
                    bad_pieces: row.bad_pieces,
                    banned: row.banned > 0,
                })
                .collect(),
        };
        self.link.set_fill_status(status);
        let gauges = [
            ("tessera_fill_fills_in_flight", "Contents being filled.", self.engine.fills_in_flight() as u64),
            ("tessera_fill_pieces_in_flight", "Piece fetches in flight.", self.engine.pieces_in_flight() as u64),
            ("tessera_fill_piece_memory_bytes", "Bytes fetched, not yet stored.", self.engine.piece_memory_bytes()),
            ("tessera_fill_waiters", "Requests waiting for pieces.", self.engine.waiters() as u64),
            ("tessera_fill_sources_banned", "Upstream sources banned now.", banned as u64),
        ];
        let c = self.engine.counters();
        let counters = [
            ("tessera_fill_fetches_started_total", "Upstream piece fetches started.", c.fetches_started_total),
            (
                "tessera_fill_coalesced_waiters_total",
                "Waiters that joined a fetch in flight.",
                c.coalesced_waiters_total,
            ),
            ("tessera_fill_bad_pieces_total", "Pieces that failed verification.", c.bad_pieces_total),
            ("tessera_fill_retries_total", "Fetches asked again after a failure.", c.retries_total),
            ("tessera_fill_failed_pieces_total", "Pieces given up.", c.failed_pieces_total),
            ("tessera_fill_busy_total", "Busy answers (a fill limit was hit).", c.busy_total),
            ("tessera_fill_pieces_stored_total", "Pieces verified and stored.", c.pieces_stored_total),
            ("tessera_fill_bans_total", "Upstream sources banned.", bans.bans_total),
        ];
        let mut out = String::with_capacity(8192);
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        }
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        }
        let name = "tessera_fill_upstream_bytes_total";
        let _ = writeln!(out, "# HELP {name} Verified bytes received, by source kind.\n# TYPE {name} counter");
        for kind in [SourceKind::Parent, SourceKind::Peer, SourceKind::Origin] {
            let _ = writeln!(out, "{name}{{kind=\"{}\"}} {}", kind.name(), c.bytes_from(kind));
        }
        let help = "From a miss to its first piece verified and stored (metadata included).";
        c.first_byte_ms.render(&mut out, "tessera_fill_first_byte_seconds", help, "");
        let help = "From a piece's upstream request to its bytes verified.";
        c.piece_fetch_ms.render(&mut out, "tessera_fill_piece_fetch_seconds", help, "");
        render_sources(&mut out, &rows);
        self.simple.render(&mut out);
        self.link.set_metrics_text(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_origin_is_labelled_by_its_host_and_a_parent_by_its_address() {
        assert_eq!(source_label(SourceKind::Origin, "http://origin.example:8080/a/b.bin"), "origin.example:8080");
        assert_eq!(source_label(SourceKind::Parent, "10.0.0.1:7000"), "10.0.0.1:7000");
        assert_eq!(source_label(SourceKind::Origin, "not a \"url\""), "not a \\\"url\\\"");
    }

    #[test]
    fn sources_past_the_labelled_bound_are_summed_under_other() {
        use crate::download::ban::BanLimits;
        use crate::fill::{FillLimits, RoundRobin};
        let limits = FillLimits::from_config(&crate::config::UpstreamConfig::default());
        let mut engine = FillEngine::new(limits, Box::new(RoundRobin::default()));
        let parent = "127.0.0.1:7000";
        engine.add_source(SourceKind::Parent, parent).unwrap();
        // Two URLs of one origin share its label.
        for url in ["http://o0/a", "http://o0/b"] {
            engine.add_source(SourceKind::Origin, url).unwrap();
        }
        for n in 1..LABELLED_SOURCES_MAX + 5 {
            engine.add_source(SourceKind::Origin, &format!("http://o{n}:81/c")).unwrap();
        }
        let mut bans = BanPolicy::new(BanLimits { bad_pieces_max: 1, duration_ms: 1_000 });
        let (late, past) = (format!("http://o{}:81/c", LABELLED_SOURCES_MAX + 2), "http://o3:81/c");
        for name in [parent, late.as_str(), past] {
            bans.record_bad(&name.to_string(), 0);
        }
        let rows = source_rows(&mut engine, &bans, 10);
        assert_eq!(rows.len(), LABELLED_SOURCES_MAX + 1);
        assert_eq!(rows[0], (parent.to_string(), SourceRow { banned: 1, bans: 1, ..SourceRow::default() }));
        assert_eq!(rows[1].0, "o0", "the default port is not written");
        assert_eq!(rows[4], ("o3:81".to_string(), SourceRow { banned: 1, bans: 1, ..SourceRow::default() }));
        let (label, other) = rows.last().unwrap();
        assert_eq!((label.as_str(), other.banned, other.bans), ("other", 1, 1), "{rows:?}");
        let rows = source_rows(&mut engine, &bans, 1_000);
        assert_eq!(rows.iter().map(|(_, row)| row.banned).sum::<u64>(), 0, "bans expire");
        let mut text = String::new();
        render_sources(&mut text, &rows);
        assert!(text.contains("tessera_fill_source_bans_total{source=\"127.0.0.1:7000\"} 1\n"), "{text}");
    }

    #[test]
    fn simple_mode_answers_are_counted_by_outcome_and_reason_class() {
        let mut counts = SimpleCounts::default();
        counts.count(&SimpleReason::NoManifest, false);
        let mismatch = SimpleReason::HashFileDigestMismatch { expected: "a".into(), actual: "b".into() };
        counts.count(&mismatch, true);
        counts.count(&mismatch, true);
        let mut text = String::new();
        counts.render(&mut text);
        assert!(text.contains("tessera_fill_simple_mode_total{outcome=\"refused\",reason=\"no_manifest\"} 1\n"));
        assert!(text.contains("tessera_fill_simple_mode_total{outcome=\"pass_through\",reason=\"unverified\"} 2\n"));
        assert!(text.contains("tessera_fill_simple_mode_total{outcome=\"pass_through\",reason=\"no_manifest\"} 0\n"));
    }
}
