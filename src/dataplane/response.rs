//! Responses as the drivers send them: a head, then body slices that borrow pinned store pieces.
//!
//! Nothing here is copied into a send buffer: the head is a small owned buffer and every body
//! slice points into the memory-mapped store, kept in place by its [`PieceGuard`] for as long as
//! the [`Outgoing`] lives. Drivers drop an `Outgoing` only once the kernel is done with its bytes.

use std::sync::Arc;

use crate::http::{text_response, ResponseHead};
use crate::io::uring::send::Segments;
use crate::store::PieceGuard;

/// `start..end` of a pinned piece.
#[derive(Debug)]
pub struct PieceSlice {
    guard: PieceGuard,
    start: u32,
    end: u32,
}

impl PieceSlice {
    /// Bytes `start..end` of the pinned piece (`end` at most its length).
    pub fn new(guard: PieceGuard, start: u32, end: u32) -> PieceSlice {
        assert!(start <= end && end <= guard.length(), "slice {start}..{end} outside piece of {}", guard.length());
        PieceSlice { guard, start, end }
    }

    /// The bytes, straight from the mapping.
    pub fn bytes(&self) -> &[u8] {
        &self.guard.bytes()[self.start as usize..self.end as usize]
    }
}

/// A response body.
#[derive(Debug, Default)]
pub enum Body {
    /// No body (HEAD, or the body is already inside the head buffer).
    #[default]
    Empty,
    /// Shared immutable bytes (a hash file).
    Shared(Arc<[u8]>),
    /// Slices of pinned pieces, in order.
    Pieces(Vec<PieceSlice>),
}

impl Body {
    fn segment_count(&self) -> usize {
        match self {
            Body::Empty => 0,
            Body::Shared(_) => 1,
            Body::Pieces(slices) => slices.len(),
        }
    }

    fn segment(&self, at: usize) -> &[u8] {
        match self {
            Body::Empty => &[],
            Body::Shared(bytes) => bytes,
            Body::Pieces(slices) => slices[at].bytes(),
        }
    }
}

/// One response, queued on a connection until every byte of it has been sent and released.
#[derive(Debug)]
pub struct Outgoing {
    /// Status code (for logs, metrics and tests).
    pub status: u16,
    head: Vec<u8>,
    body: Body,
    length: u64,
    body_bytes: u64,
}

impl Outgoing {
    /// A response from a serialised head and a body.
    pub fn new(status: u16, head: Vec<u8>, body: Body) -> Outgoing {
        let body_bytes = (0..body.segment_count()).map(|at| body.segment(at).len() as u64).sum();
        Outgoing { status, length: head.len() as u64 + body_bytes, head, body, body_bytes }
    }

    /// A head built from `head` followed by `body`.
    pub fn with_head(head: &ResponseHead<'_>, body: Body) -> Outgoing {
        // `write_to` reserves what the head needs: one allocation.
        let mut bytes = Vec::new();
        head.write_to(&mut bytes);
        Outgoing::new(head.status, bytes, body)
    }

    /// A short text response (errors, health, metrics); `head_only` for HEAD requests.
    pub fn text(status: u16, text: &str, keep_alive: bool, head_only: bool) -> Outgoing {
        let mut bytes = text_response(status, text, keep_alive);
        if head_only {
            bytes.truncate(bytes.len() - text.len());
        }
        Outgoing::new(status, bytes, Body::Empty)
    }

    /// Bytes on the wire: head and body.
    pub fn length(&self) -> u64 {
        self.length
    }

    /// Bytes of the body that come from the store or shared buffers (not the head buffer).
    pub fn body_bytes(&self) -> u64 {
        self.body_bytes
    }

    /// Number of slices: the head, then each body segment.
    pub fn segment_count(&self) -> usize {
        1 + self.body.segment_count()
    }

    /// Slice `at` (0 is the head).
    pub fn segment(&self, at: usize) -> &[u8] {
        if at == 0 {
            &self.head
        } else {
            self.body.segment(at - 1)
        }
    }

    /// The whole response copied out (tests only need this; drivers never copy).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.length as usize);
        for at in 0..self.segment_count() {
            out.extend_from_slice(self.segment(at));
        }
        out
    }
}

impl Segments for Outgoing {
    fn segment_count(&self) -> usize {
        Outgoing::segment_count(self)
    }

    fn segment(&self, at: usize) -> &[u8] {
        Outgoing::segment(self, at)
    }
}
