//! `[serve]`: the data plane's listener, workers, backend and every per-connection limit.

use serde::{Deserialize, Serialize};

/// Which event-loop backend the data-plane workers run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// io_uring when the kernel allows it, epoll otherwise (the log says which and why).
    #[default]
    Auto,
    /// io_uring or fail to start.
    Uring,
    /// mio/epoll, even where io_uring works.
    Epoll,
}

impl BackendChoice {
    /// Parses `auto`, `uring` or `epoll`.
    pub fn parse(text: &str) -> Option<BackendChoice> {
        match text {
            "auto" => Some(BackendChoice::Auto),
            "uring" | "io_uring" | "io-uring" => Some(BackendChoice::Uring),
            "epoll" | "mio" => Some(BackendChoice::Epoll),
            _ => None,
        }
    }
}

/// Limits and knobs of `tessera serve`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// Address the piece server listens on (every worker binds it with `SO_REUSEPORT`).
    pub listen: String,
    /// Worker threads, one pinned per core; 0 means one per available core.
    pub workers: usize,
    /// `auto`, `uring` or `epoll`.
    pub backend: BackendChoice,
    /// Open connections per worker. At the limit the longest-idle keep-alive connections (no
    /// request in progress, nothing queued) are closed to make room; when none is idle, further
    /// connections are accepted and closed at once.
    pub connections_per_worker_max: usize,
    /// Largest request head (request line, headers, blank line).
    pub header_bytes_max: usize,
    /// Most header fields in one request.
    pub header_count_max: usize,
    /// Longest request target.
    pub target_bytes_max: usize,
    /// A request head must arrive whole within this time of its first byte (and the first request
    /// within this time of the connection opening): slowloris connections are closed.
    pub header_timeout_ms: u64,
    /// A keep-alive connection with nothing to send and no request started is closed after this.
    pub idle_timeout_ms: u64,
    /// A connection whose peer accepts no response bytes for this long is closed.
    pub send_timeout_ms: u64,
    /// A response waiting on a fill is answered 504 if it is not ready within this time (or, once
    /// its head is out, its connection is closed if no further body part arrives within it).
    pub pending_timeout_ms: u64,
    /// Responses queued per connection (pipelined requests answered in order, pending ones
    /// included); reading pauses past it.
    pub pipeline_depth_max: usize,
    /// Unparsed request bytes buffered per connection; reading pauses past it.
    pub input_bytes_max: usize,
    /// Bytes one receive reads at most: the size of a worker's shared receive buffers (held
    /// only while bytes are being taken in, never by an idle connection).
    pub recv_buffer_bytes: usize,
    /// Receive buffers per worker in io_uring's provided-buffer ring (a power of two, at most
    /// 32768); a receive finding none free waits for one. epoll reads into one per-worker buffer.
    pub recv_buffers_per_worker: usize,
    /// Body parts one streaming response holds pinned (appended, not yet sent and released).
    pub stream_queued_parts_max: usize,
    /// Bytes of those parts.
    pub stream_queued_bytes_max: u64,
    /// Slices (iovecs) handed to one send call.
    pub send_iovecs_max: usize,
    /// Bytes one connection may hand the kernel per turn of the event loop (one io_uring send,
    /// or the `writev` calls of one epoll turn), so a fast reader cannot starve the others.
    pub send_bytes_per_turn_max: usize,
    /// Bodies of at least this many bytes are sent with io_uring `SendMsgZc` (zero-copy); smaller
    /// ones with plain `SendMsg`. 0 disables zero-copy sends. See docs/performance.md.
    pub send_zc_bytes_min: u64,
    /// Zero-copy sends per connection still waiting for their notification; sending pauses past it.
    pub send_zc_pending_max: usize,
    /// Stored slices of at least this many bytes go to the socket by `sendfile`, which hands it
    /// the store file's pages instead of copying them; smaller ones (and every slice of a store
    /// whose file system cannot punch holes) are copied. 0 disables it. See docs/performance.md.
    pub send_file_bytes_min: u64,
    /// ... and only while the worker has at least this many connections open (with few, the copy
    /// costs little and on loopback it was measured faster; with many, the worker's CPU is the
    /// limit). 0 or 1: whenever a slice is large enough.
    pub send_file_connections_min: usize,
    /// While slices go by `sendfile` (many connections), bytes one connection hands the kernel
    /// per turn: a loopback segment's worth, so hundreds of readers each get theirs every turn
    /// and the slowest response stays near the rest. See docs/performance.md.
    pub send_file_bytes_per_turn_max: usize,
    /// io_uring submission queue entries per worker (the completion queue is sized from the
    /// connection limit, at most 16,384; overflow is kept by the kernel, not lost).
    pub ring_entries: u32,
    /// Listen backlog per worker socket.
    pub listen_backlog: u32,
    /// On shutdown, in-flight responses get this long to finish before connections are cut.
    pub shutdown_grace_ms: u64,
    /// Catalog entries (and their piece locations) cached per worker.
    pub catalog_cache_entries_max: usize,
    /// An id unknown to the catalog is looked up on disk again after this long.
    pub catalog_recheck_ms: u64,
    /// Ranges honoured in one `Range:` header (answered as `multipart/byteranges`); a request
    /// with more gets the whole content (200).
    pub ranges_per_request_max: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: "127.0.0.1:7680".into(),
            workers: 0,
            backend: BackendChoice::Auto,
            connections_per_worker_max: 16384,
            header_bytes_max: 8192,
            header_count_max: 64,
            target_bytes_max: 2048,
            header_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            send_timeout_ms: 30_000,
            pending_timeout_ms: 30_000,
            pipeline_depth_max: 32,
            input_bytes_max: 16384,
            recv_buffer_bytes: 16384,
            recv_buffers_per_worker: 128,
            stream_queued_parts_max: 64,
            stream_queued_bytes_max: 64 << 20,
            send_iovecs_max: 64,
            send_bytes_per_turn_max: 2 * 1024 * 1024,
            send_zc_bytes_min: 0,
            send_zc_pending_max: 8,
            send_file_bytes_min: 16384,
            send_file_connections_min: 128,
            send_file_bytes_per_turn_max: 64 * 1024,
            ring_entries: 1024,
            listen_backlog: 1024,
            shutdown_grace_ms: 5_000,
            catalog_cache_entries_max: 4096,
            catalog_recheck_ms: 1_000,
            ranges_per_request_max: 64,
        }
    }
}
