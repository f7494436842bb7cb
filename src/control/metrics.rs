//! The service's own counters, shown on its `GET /metrics` (Prometheus text): the build,
//! responses by status code, peer registry operations and their latency, the registry backend's
//! state, refused announces.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use crate::control::registry::RegistryStatus;

/// Upper bounds of the latency buckets, in seconds (from an in-memory lookup to a slow Redis).
const BUCKETS_S: [f64; 12] =
    [0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25];

/// A registry operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistryOp {
    /// An announce written.
    Announce,
    /// A peers query answered.
    Peers,
}

impl RegistryOp {
    const ALL: [RegistryOp; 2] = [RegistryOp::Announce, RegistryOp::Peers];

    fn name(self) -> &'static str {
        match self {
            RegistryOp::Announce => "announce",
            RegistryOp::Peers => "peers",
        }
    }
}

/// Why an announce was refused before it reached the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No bearer token (401).
    NoToken,
    /// A wrong bearer token (403).
    BadToken,
    /// An address that is not the caller's own (403).
    Address,
}

impl Refusal {
    const ALL: [Refusal; 3] = [Refusal::NoToken, Refusal::BadToken, Refusal::Address];

    fn name(self) -> &'static str {
        match self {
            Refusal::NoToken => "no_token",
            Refusal::BadToken => "bad_token",
            Refusal::Address => "address",
        }
    }
}

/// A Prometheus histogram with fixed buckets.
#[derive(Debug, Clone, Default)]
struct Histogram {
    /// Observations at or under each bound (not cumulative; summed on render).
    buckets: [u64; BUCKETS_S.len()],
    count: u64,
    sum_s: f64,
}

impl Histogram {
    fn record(&mut self, latency: Duration) {
        let seconds = latency.as_secs_f64();
        if let Some(at) = BUCKETS_S.iter().position(|bound| seconds <= *bound) {
            self.buckets[at] += 1;
        }
        self.count += 1;
        self.sum_s += seconds;
    }
}

/// The service's counters; owned by the handler, on the control thread.
#[derive(Debug, Clone, Default)]
pub struct ServiceMetrics {
    latency: [Histogram; RegistryOp::ALL.len()],
    refused: [u64; Refusal::ALL.len()],
    /// Responses by status code (the handler answers with a few fixed codes, so it stays small).
    responses: BTreeMap<u16, u64>,
}

impl ServiceMetrics {
    /// One registry operation took `latency`.
    pub fn record(&mut self, op: RegistryOp, latency: Duration) {
        self.latency[op as usize].record(latency);
    }

    /// One response with `status` was given.
    pub fn response(&mut self, status: u16) {
        *self.responses.entry(status).or_default() += 1;
    }

    /// One announce was refused.
    pub fn refused(&mut self, why: Refusal) {
        self.refused[why as usize] += 1;
    }

    /// Prometheus text of every counter, with the registry backend's `status`.
    pub fn render(&self, status: &RegistryStatus, entries: u64) -> String {
        let mut out = String::with_capacity(4096);
        crate::build_info::write_prometheus(&mut out);
        let name = "tessera_service_requests_total";
        let _ = writeln!(out, "# HELP {name} Service responses by status code.\n# TYPE {name} counter");
        for (code, count) in &self.responses {
            let _ = writeln!(out, "{name}{{code=\"{code}\"}} {count}");
        }
        let name = "tessera_registry_operation_seconds";
        let _ = writeln!(out, "# HELP {name} Peer registry operations and their latency, by operation.");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for op in RegistryOp::ALL {
            let histogram = &self.latency[op as usize];
            let mut cumulative = 0;
            for (bound, count) in BUCKETS_S.iter().zip(histogram.buckets) {
                cumulative += count;
                let _ = writeln!(out, "{name}_bucket{{op=\"{}\",le=\"{bound}\"}} {cumulative}", op.name());
            }
            let _ = writeln!(out, "{name}_bucket{{op=\"{}\",le=\"+Inf\"}} {}", op.name(), histogram.count);
            let _ = writeln!(out, "{name}_sum{{op=\"{}\"}} {}", op.name(), histogram.sum_s);
            let _ = writeln!(out, "{name}_count{{op=\"{}\"}} {}", op.name(), histogram.count);
        }
        let name = "tessera_announces_refused_total";
        let _ = writeln!(out, "# HELP {name} Announces refused before the registry, by reason.\n# TYPE {name} counter");
        for why in Refusal::ALL {
            let _ = writeln!(out, "{name}{{reason=\"{}\"}} {}", why.name(), self.refused[why as usize]);
        }
        let gauges = [
            (
                "tessera_registry_fallback",
                "1 while peer matching answers from this service's own announces (Redis unreachable).",
                u64::from(status.fallback),
            ),
            ("tessera_registry_local_entries", "Peer-content entries this service heard itself.", entries),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        }
        let counters = [
            (
                "tessera_registry_backend_errors_total",
                "Failed calls to the shared registry (Redis).",
                status.backend_errors,
            ),
            (
                "tessera_registry_reconnects_total",
                "Reconnections to the shared registry after a failure.",
                status.reconnects,
            ),
            (
                "tessera_registry_written_back_total",
                "Announces written back to a shared registry that came back empty.",
                status.replayed,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        }
        let name = "tessera_registry_backend";
        let _ = writeln!(out, "# HELP {name} The peer registry backend in use.\n# TYPE {name} gauge");
        let _ = writeln!(out, "{name}{{backend=\"{}\"}} 1", status.backend);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_counters_named() {
        let mut metrics = ServiceMetrics::default();
        metrics.record(RegistryOp::Peers, Duration::from_micros(30));
        metrics.record(RegistryOp::Peers, Duration::from_millis(3));
        metrics.record(RegistryOp::Peers, Duration::from_secs(2));
        metrics.refused(Refusal::NoToken);
        metrics.response(200);
        metrics.response(404);
        metrics.response(200);
        let status = RegistryStatus { backend: "redis", fallback: true, backend_errors: 4, ..Default::default() };
        let text = metrics.render(&status, 7);
        let build = format!("tessera_build_info{{version=\"{}\"}} 1", crate::build_info::VERSION);
        for line in [
            "tessera_registry_operation_seconds_bucket{op=\"peers\",le=\"0.00005\"} 1",
            "tessera_registry_operation_seconds_bucket{op=\"peers\",le=\"0.005\"} 2",
            "tessera_registry_operation_seconds_bucket{op=\"peers\",le=\"0.25\"} 2",
            "tessera_registry_operation_seconds_bucket{op=\"peers\",le=\"+Inf\"} 3",
            "tessera_registry_operation_seconds_count{op=\"announce\"} 0",
            "tessera_announces_refused_total{reason=\"no_token\"} 1",
            "tessera_registry_fallback 1",
            "tessera_registry_backend_errors_total 4",
            "tessera_registry_local_entries 7",
            "tessera_registry_backend{backend=\"redis\"} 1",
            build.as_str(),
            "tessera_service_requests_total{code=\"200\"} 2",
            "tessera_service_requests_total{code=\"404\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }
}
