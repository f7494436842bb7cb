//! The engine's limits, taken from `[upstream]`.

use crate::config::UpstreamConfig;

/// Limits of [`FillEngine`](super::FillEngine); every list and window it keeps has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FillLimits {
    /// Contents being filled at once.
    pub fills_in_flight_max: u32,
    /// Piece fetches in flight for one content.
    pub pieces_in_flight_per_fill_max: u32,
    /// Pieces claimed ahead of a streaming waiter's position (its position included).
    pub read_ahead_pieces: u32,
    /// Requests in flight to one source (connections × pipeline depth).
    pub requests_per_source_max: u32,
    /// A fetch with no answer after this long (connect included) is failed.
    pub request_timeout_ms: u64,
    /// Bytes of pieces fetched and not yet stored; background fills use at most half.
    pub piece_memory_bytes_max: u64,
    /// Waiters claiming one piece at most.
    pub waiters_per_piece_max: u32,
    /// Failed fetches of one piece before its waiters get [`FailReason::TooManyFailures`](super::FailReason).
    pub retries_per_piece_max: u32,
    /// Keep filling a content in the background when its waiters go away.
    pub fill_whole: bool,
    /// Retry-After of a busy answer, in seconds.
    pub busy_retry_after_s: u32,
}

impl FillLimits {
    /// The limits of `[upstream]`.
    pub fn from_config(config: &UpstreamConfig) -> FillLimits {
        FillLimits {
            fills_in_flight_max: config.fills_in_flight_max,
            pieces_in_flight_per_fill_max: config.pieces_in_flight_per_fill_max,
            read_ahead_pieces: config.read_ahead_pieces,
            requests_per_source_max: config.connections_per_source_max.saturating_mul(config.pipeline_depth),
            request_timeout_ms: config.connect_timeout_ms.saturating_add(config.request_timeout_ms),
            piece_memory_bytes_max: config.piece_memory_bytes_max,
            waiters_per_piece_max: config.waiters_per_piece_max,
            retries_per_piece_max: config.retries_per_piece_max,
            fill_whole: config.fill_whole,
            busy_retry_after_s: config.busy_retry_after_s,
        }
    }
}

/// Limits of [`MetadataCache`](super::MetadataCache).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetadataLimits {
    /// Fetched metadata is used this long, then fetched again.
    pub expiry_ms: u64,
    /// One step (manifest or hash file) is failed after this long.
    pub timeout_ms: u64,
    /// After a refetch failed for a network reason, the old version is kept this long.
    pub retry_ms: u64,
    /// Requests waiting for one id's metadata.
    pub waiters_per_id_max: u32,
    /// Ids cached.
    pub entries_max: u32,
    /// Ids being fetched at once.
    pub fetches_in_flight_max: u32,
    /// Retry-After of a busy answer, in seconds.
    pub busy_retry_after_s: u32,
}

impl MetadataLimits {
    /// The limits of `[upstream]`.
    pub fn from_config(config: &UpstreamConfig) -> MetadataLimits {
        MetadataLimits {
            expiry_ms: config.metadata_expiry_ms,
            timeout_ms: config.metadata_timeout_ms,
            // A failed refresh is retried soon, but never sooner than one fetch could take.
            retry_ms: config.metadata_timeout_ms.min(config.metadata_expiry_ms),
            waiters_per_id_max: config.waiters_per_piece_max,
            entries_max: config.metadata_entries_max,
            fetches_in_flight_max: config.fills_in_flight_max,
            busy_retry_after_s: config.busy_retry_after_s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_slots_and_fetch_deadline_combine_their_settings() {
        let config = UpstreamConfig {
            connections_per_source_max: 3,
            pipeline_depth: 5,
            connect_timeout_ms: 200,
            request_timeout_ms: 700,
            metadata_timeout_ms: 900,
            metadata_expiry_ms: 600,
            ..UpstreamConfig::default()
        };
        let fill = FillLimits::from_config(&config);
        assert_eq!((fill.requests_per_source_max, fill.request_timeout_ms), (15, 900));
        let metadata = MetadataLimits::from_config(&config);
        assert_eq!((metadata.timeout_ms, metadata.retry_ms, metadata.expiry_ms), (900, 600, 600));
    }
}
