//! The check of every stored piece after a (re)start, on a thread of its own, so that the first
//! requests after a restart rarely pay for verification on a data-plane worker. The catalog's
//! pieces go first, piece 0 of every content, then piece 1 of every content, and so on:
//! downloads ask for pieces in order, so the check is usually ahead of them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::catalog::Catalog;
use crate::content::{Digest, HashFile};
use crate::store::Store;

/// A running store check; [`StoreCheck::stop`] ends it early.
pub struct StoreCheck {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StoreCheck {
    /// Starts checking every piece of `store` against its hash, `catalog`'s contents first; bad
    /// pieces are discarded.
    pub fn start(store: Arc<Store>, catalog: Catalog) -> std::io::Result<StoreCheck> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new().name("tessera-verify".into()).spawn(move || {
            let started = std::time::Instant::now();
            let first = interleaved(catalog_digests(&catalog));
            let (good, bad) = store.scrub_while(&first, &|| !stopping.load(Ordering::Acquire));
            let elapsed_ms = started.elapsed().as_millis() as u64;
            if bad > 0 {
                tracing::warn!(
                    good,
                    bad,
                    elapsed_ms,
                    "store check: pieces that did not match their hash were discarded"
                );
            } else {
                tracing::info!(good, elapsed_ms, "store check: every stored piece matches its hash");
            }
        })?;
        Ok(StoreCheck { stop, thread: Some(thread) })
    }

    /// Asks the check to stop and waits for its thread.
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The piece digests of every content in the catalog, each in piece order. Only an order: a hash
/// file that does not parse (or no longer verifies) just leaves its pieces to the end.
fn catalog_digests(catalog: &Catalog) -> Vec<Vec<Digest>> {
    let ids = catalog.list().unwrap_or_default();
    ids.iter()
        .filter_map(|id| catalog.read_hashfile(id).ok().flatten())
        .filter_map(|bytes| HashFile::parse(&bytes).ok())
        .map(|hashes| hashes.digests().to_vec())
        .collect()
}

/// Piece 0 of every list, then piece 1 of every list, and so on.
fn interleaved(lists: Vec<Vec<Digest>>) -> Vec<Digest> {
    let longest = lists.iter().map(Vec::len).max().unwrap_or(0);
    (0..longest).flat_map(|at| lists.iter().filter_map(move |list| list.get(at).copied())).collect()
}

impl Drop for StoreCheck {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contents_first_pieces_come_before_any_later_ones() {
        let d = |n: u8| [n; 32];
        let lists = vec![vec![d(1), d(2), d(3)], vec![], vec![d(10)], vec![d(20), d(21)]];
        assert_eq!(interleaved(lists), vec![d(1), d(10), d(20), d(2), d(21), d(3)]);
        assert!(interleaved(Vec::new()).is_empty());
    }
}
