//! `[store]`: where pieces live and how much of them.

use serde::{Deserialize, Serialize};

/// Limits of the piece store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Most bytes of slab files the store may hold; least recently used pieces are evicted past it.
    pub size_bytes_max: u64,
    /// Pieces older than this are evicted (Delivery Optimization's default: 3 days).
    pub age_s_max: u64,
    /// Size of one slab file; slabs are added one at a time as the store grows.
    pub slab_size_bytes: u64,
    /// After this many bytes read, page-table entries of the mappings are dropped so resident
    /// memory does not grow with the store (the page cache keeps the data).
    pub resident_trim_bytes: u64,
    /// When `serve` starts, check every stored piece against its hash in a background thread, so
    /// the first requests after a restart do not pay for verify-on-first-read on a worker.
    pub verify_at_start: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            size_bytes_max: 16 << 30,
            age_s_max: 259_200,
            slab_size_bytes: 64 << 20,
            resident_trim_bytes: 256 << 20,
            verify_at_start: true,
        }
    }
}
