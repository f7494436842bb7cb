//! The store as the verifier's sink: verified pieces of a batch go into the store in one
//! [`Store::ingest`] per piece size (so they share one fsync), and each is reported stored or
//! refused. Only pieces whose SHA-256 matched reach it (the verifier's rule), so no byte of a bad
//! piece is ever written.

use std::sync::Arc;

use crate::content::PieceSize;
use crate::download::verify::{PieceSink, Verified};
use crate::fill::{FetchId, SourceId};
use crate::store::{NewPiece, Store};

/// What the fill loop tags a piece for the store with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorePiece {
    pub fetch: FetchId,
    /// Who sent it, and which piece of its content it is (for the log).
    pub source: SourceId,
    pub piece: u64,
    /// The slot size class it goes in (its content's piece size).
    pub piece_size: PieceSize,
}

/// Lands verified pieces in the store, batched.
#[derive(Clone)]
pub struct StoreSink {
    pub store: Arc<Store>,
}

impl PieceSink for StoreSink {
    type Tag = StorePiece;
    /// The store's refusal, for the waiters' failure.
    type Error = String;

    fn land(&mut self, pieces: &[Verified<'_, StorePiece>]) -> Vec<Result<(), String>> {
        let mut results: Vec<Result<(), String>> = vec![Ok(()); pieces.len()];
        let mut sizes: Vec<PieceSize> = pieces.iter().map(|piece| piece.tag.piece_size).collect();
        sizes.sort_unstable_by_key(|size| size.bytes());
        sizes.dedup();
        // Nearly always one size: a batch is one ingest, one fsync.
        for size in sizes {
            let members: Vec<usize> = (0..pieces.len()).filter(|&at| pieces[at].tag.piece_size == size).collect();
            let batch: Vec<NewPiece<'_>> = members
                .iter()
                .map(|&at| NewPiece {
                    bytes: pieces[at].bytes,
                    digest: pieces[at].digest.expect("the store takes only pieces with a digest"),
                })
                .collect();
            if let Err(error) = self.store.ingest(size, &batch) {
                tracing::warn!(%error, pieces = batch.len(), "the store refused verified pieces");
                for &at in &members {
                    results[at] = Err(error.to_string());
                }
            }
        }
        results
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreConfig;
    use crate::hash::sha256;

    #[test]
    fn a_batch_lands_per_piece_size_and_a_refused_group_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig { size_bytes_max: 4 << 20, slab_size_bytes: 1 << 20, ..StoreConfig::default() };
        let store = Arc::new(Store::open(dir.path(), &config).unwrap());
        let mut sink = StoreSink { store: store.clone() };
        let small = PieceSize::new(64 * 1024).unwrap();
        let large = PieceSize::new(128 * 1024).unwrap();
        let bytes: Vec<Vec<u8>> = vec![vec![1; 1000], vec![2; 64 * 1024], vec![3; 100 * 1024], vec![4; 70 * 1024]];
        // The last one is larger than its class: the store refuses it (and only it).
        let sizes = [small, small, large, small];
        let tags: Vec<StorePiece> = (0..4)
            .map(|at| StorePiece { fetch: FetchId(at), source: SourceId(0), piece: at, piece_size: sizes[at as usize] })
            .collect();
        let pieces: Vec<Verified<'_, StorePiece>> =
            (0..4).map(|at| Verified { tag: &tags[at], digest: Some(sha256(&bytes[at])), bytes: &bytes[at] }).collect();
        let results = sink.land(&pieces[..3]);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        for piece in &bytes[..3] {
            let guard = store.get(&sha256(piece)).expect("stored");
            assert_eq!(guard.bytes(), piece.as_slice());
        }
        let results = sink.land(&pieces[2..]);
        assert!(results[0].is_ok() && results[1].is_err(), "{results:?}");
        assert!(!store.contains(&sha256(&bytes[3])));
    }
}
