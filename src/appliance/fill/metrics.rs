//! The fill thread's part of `/metrics`: its counters and gauges in Prometheus text, appended to
//! the data plane's by `UpstreamLink::metrics_text`.

use crate::fill::SourceKind;

use super::FillThread;

impl FillThread {
    /// The fill's counters and gauges in Prometheus text.
    pub(super) fn render_metrics(&mut self) -> String {
        use std::fmt::Write as _;
        let now = self.now_ms();
        let (bans, banned) = {
            let bans = self.bans.lock();
            (bans.counts(), bans.banned_count(now))
        };
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
        let mut out = String::with_capacity(2048);
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
        out
    }
}
