//! `[download]`: limits of `tessera get` and of every other consumer of pieces.

use serde::{Deserialize, Serialize};

use crate::config::BackendChoice;

/// Limits of the download engine; every queue, retry and timer has one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DownloadConfig {
    /// Event-loop backend of `get`'s connections: `auto`, `uring` or `epoll`.
    pub backend: BackendChoice,
    /// Bad pieces a peer may send before it is banned (Delivery Optimization's rule: 2).
    pub ban_after_bad_pieces: u32,
    /// How long a ban lasts, in seconds.
    pub ban_duration_s: u64,
    /// Connections opened to one source at most.
    pub connections_per_source_max: u32,
    /// Requests in flight on one connection at most (HTTP/1.1 pipelining).
    pub pipeline_depth: u32,
    /// A request with no response byte for this long is abandoned and the connection closed.
    pub request_timeout_ms: u64,
    /// A connection not established after this long is abandoned.
    pub connect_timeout_ms: u64,
    /// A response whose body has begun and then gets no byte for this long is abandoned and its
    /// source counted as failed: a box that hangs mid-piece hands over to the next this fast.
    pub stall_timeout_ms: u64,
    /// Failures of a piece (bad, timed out, connection lost) before the download gives up.
    pub retries_per_piece_max: u32,
    /// Failures of a source (connection refused or lost, timeouts) before it is no longer used.
    pub source_failures_max: u32,
    /// When this many pieces or fewer are missing, each is also requested from a second source.
    pub endgame_pieces: u32,
    /// Sources (peers and HTTP) used at most; further ones are ignored.
    pub sources_max: u32,
    /// Peers asked for the hash file at most, when the service and the manifest's URLs have none.
    pub hashfile_peers_max: u32,
    /// Largest response head accepted from a source, in bytes.
    pub response_head_bytes_max: u32,
    /// Chunk size of Simple-mode range requests, in bytes (there are no pieces without a hash file).
    pub simple_chunk_bytes: u32,
    /// Largest metadata document (manifest, hash file, peer list) accepted, in bytes.
    pub metadata_bytes_max: u64,
    /// Timeout of one metadata request (connect, TLS handshake, response), in milliseconds.
    pub metadata_timeout_ms: u64,
    /// Verified pieces between two saves of the resume sidecar.
    pub progress_save_pieces: u32,
    /// Threads that hash and write received pieces, off the event loop.
    pub verify_threads: u32,
    /// Pieces handed to the verifier threads and not yet answered, at most; also the queue of the
    /// output's background thread (whole-file hash, sidecar saves). The event loop waits when full.
    pub verify_queue_pieces: u32,
    /// Piece buffers kept for reuse at most (each one piece long).
    pub piece_buffers_max: u32,
    /// Names this device when it ranks the site's boxes (rendezvous hashing of device id and
    /// content id); empty means the host name.
    pub device_id: String,
    /// Average download rate at most, in bytes per second (requests are paced); 0: no limit.
    pub rate_bytes_per_s_max: u64,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        DownloadConfig {
            backend: BackendChoice::Auto,
            ban_after_bad_pieces: 2,
            ban_duration_s: 3600,
            connections_per_source_max: 2,
            pipeline_depth: 4,
            request_timeout_ms: 10_000,
            connect_timeout_ms: 5_000,
            stall_timeout_ms: 1_000,
            retries_per_piece_max: 8,
            source_failures_max: 3,
            endgame_pieces: 8,
            sources_max: 64,
            hashfile_peers_max: 4,
            response_head_bytes_max: 16_384,
            simple_chunk_bytes: 1 << 20,
            metadata_bytes_max: 64 << 20,
            metadata_timeout_ms: 10_000,
            progress_save_pieces: 16,
            verify_threads: 1,
            verify_queue_pieces: 16,
            piece_buffers_max: 32,
            device_id: String::new(),
            rate_bytes_per_s_max: 0,
        }
    }
}
