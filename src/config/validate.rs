//! The value checks of a whole config: what TOML typing alone lets through. `config --check`,
//! `serve` and every other command run this one function, so a file one accepts the others do too.

use std::fmt;
use std::net::SocketAddr;

use crate::config::{Config, RegistryConfigError, UpstreamConfigError};

/// Most entries of io_uring's provided-buffer ring (`recv_buffers_per_worker`).
const RECV_BUFFERS_PER_WORKER_MAX: usize = 32_768;
/// Bounds of `ring_entries` the kernel accepts for a submission queue.
const RING_ENTRIES_MIN: u32 = 8;
const RING_ENTRIES_MAX: u32 = 32_768;
/// Bounds of `send_iovecs_max` (the kernel's `UIO_MAXIOV` is 1024).
const SEND_IOVECS_MAX: usize = 1024;
/// Smallest useful receive buffer.
const RECV_BUFFER_BYTES_MIN: usize = 512;
/// Bounds of a worker's access-log buffer: room for a few lines, at most 16 MiB per worker.
const ACCESS_LOG_BUFFER_BYTES_MIN: u64 = 4096;
const ACCESS_LOG_BUFFER_BYTES_MAX: u64 = 16 << 20;
/// Connection slots are indexed with 24 bits.
const CONNECTIONS_PER_WORKER_MAX: usize = (1 << 24) - 1;

/// One value of a config that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("{key} = {value}: {reason}")]
    Value { key: String, value: String, reason: String },
    #[error(transparent)]
    Upstream(#[from] UpstreamConfigError),
    #[error(transparent)]
    Registry(#[from] RegistryConfigError),
}

/// Every bad value of a config, in file order; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.0.len();
        write!(f, "{count} bad value{}:", if count == 1 { "" } else { "s" })?;
        for problem in &self.0 {
            write!(f, "\n  {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// Collects problems as the sections are checked.
#[derive(Default)]
struct Checker(Vec<Problem>);

impl Checker {
    fn bad(&mut self, key: &str, value: impl fmt::Debug, reason: impl Into<String>) {
        self.0.push(Problem::Value { key: key.into(), value: format!("{value:?}"), reason: reason.into() });
    }

    /// Limits where 0 would mean "nothing ever works" (or is silently raised): at least 1.
    fn positive(&mut self, section: &str, limits: &[(&str, u64)]) {
        for (key, value) in limits {
            if *value == 0 {
                self.bad(&format!("{section}.{key}"), value, "must be at least 1");
            }
        }
    }

    fn within(&mut self, key: &str, value: u64, min: u64, max: u64) {
        if !(min..=max).contains(&value) {
            self.bad(key, value, format!("must be {min} to {max}"));
        }
    }
}

impl Config {
    /// Checks every value; on failure names each bad key with its value and why.
    pub fn validate(&self) -> Result<(), Problems> {
        let mut check = Checker::default();
        if self.data_dir.as_os_str().is_empty() {
            check.bad("data_dir", &self.data_dir, "must name a directory");
        }
        self.check_store(&mut check);
        self.check_service(&mut check);
        self.check_download(&mut check);
        self.check_serve(&mut check);
        self.check_announce(&mut check);
        self.check_log(&mut check);
        if let Some(upstream) = &self.upstream {
            if let Err(error) = upstream.validate() {
                check.0.push(error.into());
            }
        }
        if let Err(error) = self.registry.validate() {
            check.0.push(error.into());
        }
        if check.0.is_empty() {
            Ok(())
        } else {
            Err(Problems(check.0))
        }
    }

    fn check_store(&self, check: &mut Checker) {
        let store = &self.store;
        let limits = [
            ("size_bytes_max", store.size_bytes_max),
            ("age_s_max", store.age_s_max),
            ("slab_size_bytes", store.slab_size_bytes),
            ("resident_trim_bytes", store.resident_trim_bytes),
        ];
        check.positive("store", &limits);
        if store.slab_size_bytes > store.size_bytes_max {
            check.bad("store.slab_size_bytes", store.slab_size_bytes, "is above store.size_bytes_max");
        }
    }

    fn check_service(&self, check: &mut Checker) {
        let service = &self.service;
        if service.listen.parse::<SocketAddr>().is_err() {
            check.bad("service.listen", &service.listen, "is not IP:PORT");
        }
        let limits = [
            ("request_body_bytes_max", service.request_body_bytes_max),
            ("request_head_bytes_max", service.request_head_bytes_max.into()),
            ("announces_per_peer_per_minute_max", service.announces_per_peer_per_minute_max.into()),
            ("announce_contents_max", service.announce_contents_max.into()),
            ("peers_returned_max", service.peers_returned_max.into()),
            ("registry_entries_max", service.registry_entries_max),
            ("peer_ttl_ms", service.peer_ttl_ms),
            ("connections_max", service.connections_max.into()),
            ("header_timeout_ms", service.header_timeout_ms),
            ("body_timeout_ms", service.body_timeout_ms),
            ("idle_timeout_ms", service.idle_timeout_ms),
            ("catalog_rescan_ms", service.catalog_rescan_ms),
            ("catalog_jobs_max", service.catalog_jobs_max.into()),
        ];
        check.positive("service", &limits);
    }

    fn check_download(&self, check: &mut Checker) {
        let download = &self.download;
        let limits = [
            ("ban_after_bad_pieces", download.ban_after_bad_pieces.into()),
            ("connections_per_source_max", download.connections_per_source_max.into()),
            ("pipeline_depth", download.pipeline_depth.into()),
            ("request_timeout_ms", download.request_timeout_ms),
            ("connect_timeout_ms", download.connect_timeout_ms),
            ("stall_timeout_ms", download.stall_timeout_ms),
            ("retries_per_piece_max", download.retries_per_piece_max.into()),
            ("source_failures_max", download.source_failures_max.into()),
            ("sources_max", download.sources_max.into()),
            ("response_head_bytes_max", download.response_head_bytes_max.into()),
            ("simple_chunk_bytes", download.simple_chunk_bytes.into()),
            ("metadata_bytes_max", download.metadata_bytes_max),
            ("metadata_timeout_ms", download.metadata_timeout_ms),
            ("progress_save_pieces", download.progress_save_pieces.into()),
            ("verify_threads", download.verify_threads.into()),
            ("verify_queue_pieces", download.verify_queue_pieces.into()),
            ("piece_buffers_max", download.piece_buffers_max.into()),
        ];
        check.positive("download", &limits);
        if !download.device_id.is_empty() && !is_name(&download.device_id) {
            check.bad(
                "download.device_id",
                &download.device_id,
                "must be 1 to 128 printable characters without spaces",
            );
        }
    }

    fn check_serve(&self, check: &mut Checker) {
        let serve = &self.serve;
        if !is_listen_address(&serve.listen) {
            check.bad("serve.listen", &serve.listen, "is not IP:PORT or HOST:PORT");
        }
        let as_u64 = |value: usize| value as u64;
        let limits = [
            ("header_bytes_max", as_u64(serve.header_bytes_max)),
            ("header_count_max", as_u64(serve.header_count_max)),
            ("target_bytes_max", as_u64(serve.target_bytes_max)),
            ("header_timeout_ms", serve.header_timeout_ms),
            ("idle_timeout_ms", serve.idle_timeout_ms),
            ("send_timeout_ms", serve.send_timeout_ms),
            ("pending_timeout_ms", serve.pending_timeout_ms),
            ("pipeline_depth_max", as_u64(serve.pipeline_depth_max)),
            ("input_bytes_max", as_u64(serve.input_bytes_max)),
            ("stream_queued_parts_max", as_u64(serve.stream_queued_parts_max)),
            ("stream_queued_bytes_max", serve.stream_queued_bytes_max),
            ("send_bytes_per_turn_max", as_u64(serve.send_bytes_per_turn_max)),
            ("send_file_bytes_per_turn_max", as_u64(serve.send_file_bytes_per_turn_max)),
            ("send_zc_pending_max", as_u64(serve.send_zc_pending_max)),
            ("listen_backlog", serve.listen_backlog.into()),
            ("catalog_cache_entries_max", as_u64(serve.catalog_cache_entries_max)),
            ("ranges_per_request_max", as_u64(serve.ranges_per_request_max)),
        ];
        check.positive("serve", &limits);
        let connections = as_u64(serve.connections_per_worker_max);
        check.within("serve.connections_per_worker_max", connections, 1, CONNECTIONS_PER_WORKER_MAX as u64);
        check.within(
            "serve.recv_buffer_bytes",
            as_u64(serve.recv_buffer_bytes),
            RECV_BUFFER_BYTES_MIN as u64,
            u32::MAX.into(),
        );
        check.within("serve.send_iovecs_max", as_u64(serve.send_iovecs_max), 1, SEND_IOVECS_MAX as u64);
        check.within("serve.ring_entries", serve.ring_entries.into(), RING_ENTRIES_MIN.into(), RING_ENTRIES_MAX.into());
        let buffers = serve.recv_buffers_per_worker;
        if buffers == 0 || !buffers.is_power_of_two() || buffers > RECV_BUFFERS_PER_WORKER_MAX {
            let reason = format!("must be a power of two from 1 to {RECV_BUFFERS_PER_WORKER_MAX}");
            check.bad("serve.recv_buffers_per_worker", buffers, reason);
        }
    }

    fn check_announce(&self, check: &mut Checker) {
        let announce = &self.announce;
        check.positive(
            "announce",
            &[
                ("interval_ms", announce.interval_ms),
                ("retry_ms", announce.retry_ms),
                ("contents_max", announce.contents_max.into()),
            ],
        );
        if !announce.address.is_empty() && announce.address.parse::<SocketAddr>().is_err() {
            check.bad("announce.address", &announce.address, "is not IP:PORT (or empty)");
        }
    }
}

impl Config {
    fn check_log(&self, check: &mut Checker) {
        let log = &self.log;
        if let Err(reason) = check_level_filter(&log.level) {
            check.bad("log.level", &log.level, reason);
        }
        if log.access_log.as_ref().is_some_and(|path| path.as_os_str().is_empty()) {
            check.bad("log.access_log", &log.access_log, "must name a file, or \"-\" for stdout");
        }
        let buffer = log.access_log_buffer_bytes as u64;
        check.within("log.access_log_buffer_bytes", buffer, ACCESS_LOG_BUFFER_BYTES_MIN, ACCESS_LOG_BUFFER_BYTES_MAX);
    }
}

/// A level filter in `RUST_LOG` syntax whose bare words are levels: `RUST_LOG` reads a bare word
/// as a module to trace, so a mistyped level (`inf`) would silently log nothing at info.
fn check_level_filter(text: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let mut bare = text.split(',').map(str::trim).filter(|d| !d.is_empty() && !d.contains(['=', '[']));
    if let Some(word) = bare.find(|word| !LEVELS.contains(&word.to_ascii_lowercase().as_str())) {
        return Err(format!(
            "{word:?} is not a level (trace, debug, info, warn, error, off); use MODULE=LEVEL for one module"
        ));
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(text)
        .map(drop)
        .map_err(|error| format!("is not a level filter (RUST_LOG syntax): {error}"))
}

/// 1 to 128 printable ASCII characters, no spaces.
fn is_name(text: &str) -> bool {
    (1..=128).contains(&text.len()) && text.chars().all(|c| c.is_ascii_graphic())
}

/// `IP:PORT`, `[V6]:PORT` or `HOST:PORT` with a DNS name; port 0 asks the kernel for one. Names are
/// not resolved here: that is the listener's job when it binds.
fn is_listen_address(text: &str) -> bool {
    if text.parse::<SocketAddr>().is_ok() {
        return true;
    }
    let Some((host, port)) = text.rsplit_once(':') else { return false };
    let label_ok = |label: &str| {
        !label.is_empty() && label.len() <= 63 && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    let host_ok =
        host.len() <= 253 && host.split('.').all(label_ok) && !host.chars().all(|c| c.is_ascii_digit() || c == '.');
    host_ok && port.parse::<u16>().is_ok()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn problems(text: &str) -> String {
        let config: Config = toml::from_str(text).unwrap();
        config.validate().unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Config::default().validate(), Ok(()));
        Config::parse(crate::config::DEFAULT_CONFIG_TOML, Path::new("x")).unwrap();
    }

    #[test]
    fn every_bad_value_is_named_with_its_value() {
        let message = problems(
            "[serve]\nlisten = \"not-an-addr\"\nheader_timeout_ms = 0\n[store]\nslab_size_bytes = 0\n\
             [registry]\ntimeout_ms = 0\n",
        );
        for expected in [
            "4 bad values",
            "serve.listen = \"not-an-addr\"",
            "serve.header_timeout_ms = 0",
            "store.slab_size_bytes = 0",
            "registry.timeout_ms",
        ] {
            assert!(message.contains(expected), "{message:?} should contain {expected:?}");
        }
    }

    #[test]
    fn silently_clamped_limits_are_refused() {
        for (text, key) in [
            ("[serve]\nrecv_buffers_per_worker = 100", "serve.recv_buffers_per_worker = 100"),
            ("[serve]\nring_entries = 4", "serve.ring_entries = 4"),
            ("[serve]\nsend_iovecs_max = 5000", "serve.send_iovecs_max = 5000"),
            ("[service]\nlisten = \"localhost:7443\"", "service.listen"),
            ("[announce]\ninterval_ms = 0", "announce.interval_ms = 0"),
            ("[download]\nverify_threads = 0", "download.verify_threads = 0"),
            ("[download]\ndevice_id = \"a b\"", "download.device_id = \"a b\""),
            ("[store]\nslab_size_bytes = 2048\nsize_bytes_max = 1024", "store.slab_size_bytes = 2048"),
            ("[log]\nlevel = \"loud\"", "log.level = \"loud\""),
            ("[log]\nlevel = \"info,tessera=loud\"", "log.level"),
            ("[log]\naccess_log_buffer_bytes = 1", "log.access_log_buffer_bytes = 1"),
            ("[log]\naccess_log = \"\"", "log.access_log"),
        ] {
            let message = problems(text);
            assert!(message.contains(key), "{message:?} should name {key:?}");
        }
    }

    #[test]
    fn listen_address_forms() {
        for good in ["127.0.0.1:0", "0.0.0.0:7680", "[::1]:7680", "localhost:7680", "box-1.example:80"] {
            assert!(is_listen_address(good), "{good}");
        }
        for bad in ["not-an-addr", "127.0.0.1", ":7680", "host:99999", "999.1.1.1:80", "a b:80", "h:-1"] {
            assert!(!is_listen_address(bad), "{bad}");
        }
    }
}
