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
