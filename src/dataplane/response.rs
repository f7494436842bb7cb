//! Responses as the drivers send them: a head, then body slices that borrow pinned store pieces.
//!
//! Nothing here is copied into a send buffer: the head is a small owned buffer and every body
//! slice points into the memory-mapped store, kept in place by its [`PieceGuard`] for as long as
//! the [`Outgoing`] lives (or, for a Simple-mode pass-through, is a chunk of bytes from the
//! origin the response owns). Drivers drop an `Outgoing` only once the kernel is done with its
//! bytes.

use std::ops::Range;
use std::os::fd::BorrowedFd;
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

    /// The slab file and the offset of the slice's first byte in it, when the store lets its
    /// pages go to sockets.
    pub fn file_start(&self) -> Option<(BorrowedFd<'_>, u64)> {
        self.guard.file_range().map(|(file, offset)| (file, offset + u64::from(self.start)))
    }
}

/// Bytes of a file to hand a socket with `sendfile`: the rest of one segment of a response.
#[derive(Debug, Clone, Copy)]
pub struct FileRange<'a> {
    pub file: BorrowedFd<'a>,
    pub offset: u64,
    pub length: u64,
}

/// One part of a body made of parts: a slice of a pinned piece, or owned bytes (a chunk a
/// Simple-mode pass-through relays from its origin).
#[derive(Debug)]
pub enum BodyPart {
    Piece(PieceSlice),
    Bytes(Vec<u8>),
}

impl BodyPart {
    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            BodyPart::Piece(slice) => slice.bytes(),
            BodyPart::Bytes(bytes) => bytes,
        }
    }
}

impl From<PieceSlice> for BodyPart {
    fn from(slice: PieceSlice) -> BodyPart {
        BodyPart::Piece(slice)
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
    /// Parts (slices of pinned pieces, or relayed bytes), in order.
    Parts(Vec<BodyPart>),
    /// A `multipart/byteranges` body: spans of one small framing buffer (part heads, closing
    /// delimiter) between slices of pinned pieces.
    Multipart { framing: Vec<u8>, segments: Vec<Segment> },
}

/// One segment of a multipart body.
#[derive(Debug)]
pub enum Segment {
    /// Bytes `start..end` of the framing buffer.
    Framing(Range<usize>),
    /// Bytes of a pinned piece.
    Piece(PieceSlice),
}

impl Body {
    fn segment_count(&self) -> usize {
        match self {
            Body::Empty => 0,
            Body::Shared(_) => 1,
            Body::Parts(parts) => parts.len(),
            Body::Multipart { segments, .. } => segments.len(),
        }
    }

    fn segment(&self, at: usize) -> &[u8] {
        match self {
            Body::Empty => &[],
            Body::Shared(bytes) => bytes,
            Body::Parts(parts) => parts[at].bytes(),
            Body::Multipart { framing, segments } => match &segments[at] {
                Segment::Framing(span) => &framing[span.clone()],
                Segment::Piece(slice) => slice.bytes(),
            },
        }
    }

    fn segment_file(&self, at: usize) -> Option<(BorrowedFd<'_>, u64)> {
        match self {
            Body::Parts(parts) => match &parts[at] {
                BodyPart::Piece(slice) => slice.file_start(),
                BodyPart::Bytes(_) => None,
            },
            Body::Multipart { segments, .. } => match &segments[at] {
                Segment::Piece(slice) => slice.file_start(),
                Segment::Framing(_) => None,
            },
            Body::Empty | Body::Shared(_) => None,
        }
    }
}

/// The handler's reply to one request.
#[derive(Debug)]
pub enum Reply {
    /// The response to send now: complete, or streaming (built with [`Outgoing::streaming`]), in
    /// which case the parts still missing are appended later through the connection.
    Ready(Outgoing),
    /// Nothing to send yet: the response keeps its place in the pipeline (later responses wait)
    /// until the connection is given it for this request's token.
    Pending,
}

/// One response, queued on a connection until every byte of it has been sent and released.
///
/// A streaming response has its head (and maybe its first body parts) now and the rest of the
/// body later: its length on the wire is the one its head declares, reached by appending parts.
#[derive(Debug)]
pub struct Outgoing {
    /// Status code (for logs, metrics and tests).
    pub status: u16,
    head: Vec<u8>,
    body: Body,
    /// Wire bytes present so far (head and body, including parts already trimmed).
    length: u64,
    /// Wire bytes the head promises; above `length` while parts are still to come.
    length_declared: u64,
    body_bytes: u64,
    /// Body bytes of leading parts dropped once sent and released (see [`Outgoing::trim_sent`]).
    trimmed_bytes: u64,
    /// Body bytes a streaming response holds at most (below the connection's own bound).
    held_bytes_max: u64,
}

impl Outgoing {
    /// A response from a serialised head and a body.
    pub fn new(status: u16, head: Vec<u8>, body: Body) -> Outgoing {
        let body_bytes = (0..body.segment_count()).map(|at| body.segment(at).len() as u64).sum();
        let length = head.len() as u64 + body_bytes;
        Outgoing {
            status,
            length,
            length_declared: length,
            head,
            body,
            body_bytes,
            trimmed_bytes: 0,
            held_bytes_max: u64::MAX,
        }
    }

    /// A head built from `head` followed by `body`.
    pub fn with_head(head: &ResponseHead<'_>, body: Body) -> Outgoing {
        // `write_to` reserves what the head needs: one allocation.
        let mut bytes = Vec::new();
        head.write_to(&mut bytes);
        Outgoing::new(head.status, bytes, body)
    }

    /// A streaming response: `head` (whose `content_length` the body will reach) and its first
    /// body parts; the others are appended later.
    pub fn streaming(head: &ResponseHead<'_>, first: Vec<BodyPart>) -> Outgoing {
        let mut outgoing = Outgoing::with_head(head, Body::Parts(first));
        outgoing.length_declared = outgoing.head.len() as u64 + head.content_length;
        assert!(outgoing.length <= outgoing.length_declared, "first parts run past the declared length");
        outgoing
    }

    /// Holds at most `bytes` body bytes appended and not yet sent (a relay that must stay small
    /// per response); the connection's own bound applies too.
    pub fn with_held_bytes_max(mut self, bytes: u64) -> Outgoing {
        self.held_bytes_max = bytes.max(1);
        self
    }

    /// Body bytes this response holds at most (see [`Outgoing::with_held_bytes_max`]).
    pub fn held_bytes_max(&self) -> u64 {
        self.held_bytes_max
    }

    /// A short text response (errors, health, metrics); `head_only` for HEAD requests.
    pub fn text(status: u16, text: &str, keep_alive: bool, head_only: bool) -> Outgoing {
        let mut bytes = text_response(status, text, keep_alive);
        if head_only {
            bytes.truncate(bytes.len() - text.len());
        }
        Outgoing::new(status, bytes, Body::Empty)
    }

    /// Bytes on the wire present so far: head and body.
    pub fn length(&self) -> u64 {
        self.length
    }

    /// Bytes on the wire once complete, as the head declares.
    pub fn length_declared(&self) -> u64 {
        self.length_declared
    }

    /// Whether every byte the head declares is present.
    pub fn is_complete(&self) -> bool {
        self.length == self.length_declared
    }

    /// Bytes of the body that come from the store or shared buffers (not the head buffer).
    pub fn body_bytes(&self) -> u64 {
        self.body_bytes
    }

    /// Body bytes this response puts on the wire in all (a streaming one: as declared; a text
    /// answer carries its body in the head buffer), as an access log counts them.
    pub fn body_bytes_declared(&self) -> u64 {
        let head_end = self.head.windows(4).position(|w| w == b"\r\n\r\n").map_or(self.head.len(), |at| at + 4);
        self.length_declared - head_end as u64
    }

    /// Whether the body is slices of stored pieces (a cache hit, or a miss answered once filled).
    pub fn is_from_store(&self) -> bool {
        match &self.body {
            Body::Parts(parts) => parts.iter().all(|part| matches!(part, BodyPart::Piece(_))),
            Body::Multipart { .. } => true,
            Body::Empty | Body::Shared(_) => false,
        }
    }

    /// Body parts held (pinned) now, and their bytes.
    pub fn parts_held(&self) -> (usize, u64) {
        (self.body.segment_count(), self.body_bytes - self.trimmed_bytes)
    }

    /// Appends body parts to a streaming response; hands them back if they would run past the
    /// declared length (or the body is not made of parts).
    pub fn append(&mut self, parts: Vec<BodyPart>) -> Result<(), Vec<BodyPart>> {
        let bytes: u64 = parts.iter().map(|part| part.bytes().len() as u64).sum();
        if self.length + bytes > self.length_declared {
            return Err(parts);
        }
        match &mut self.body {
            Body::Parts(held) => held.extend(parts),
            Body::Empty => self.body = Body::Parts(parts),
            Body::Shared(_) | Body::Multipart { .. } => return Err(parts),
        }
        self.length += bytes;
        self.body_bytes += bytes;
        Ok(())
    }

    /// Gives up the parts still to come: the response ends with what is present, shorter than
    /// its head declares (the connection must close after it).
    pub fn end_short(&mut self) {
        self.length_declared = self.length;
    }

    /// Drops the leading body parts that lie wholly within the first `sent` wire bytes (the
    /// kernel is done with them), so a long streaming response does not keep every piece pinned.
    pub fn trim_sent(&mut self, sent: u64) {
        let Body::Parts(parts) = &mut self.body else { return };
        let mut end = self.head.len() as u64 + self.trimmed_bytes;
        let mut count = 0;
        for part in parts.iter() {
            end += part.bytes().len() as u64;
            if end > sent {
                break;
            }
            self.trimmed_bytes += part.bytes().len() as u64;
            count += 1;
        }
        parts.drain(..count);
    }

    /// The present bytes from wire offset `offset` on, as non-empty slices in order (`offset`
    /// never before the end of what [`Outgoing::trim_sent`] dropped).
    pub fn slices_from(&self, offset: u64) -> impl Iterator<Item = &[u8]> {
        self.slices_marked_from(offset, None).map(|(slice, _)| slice)
    }

    /// Like [`Outgoing::slices_from`], each slice with whether it is to go by `sendfile` (see
    /// [`Segments::file_for_send`]).
    pub fn slices_marked_from(&self, offset: u64, file_bytes_min: Option<u64>) -> impl Iterator<Item = (&[u8], bool)> {
        let mut skip = self.segment_skip(offset);
        (0..self.segment_count()).filter_map(move |at| {
            let segment = self.segment(at);
            let from = skip.min(segment.len() as u64);
            skip -= from;
            let slice = &segment[from as usize..];
            (!slice.is_empty()).then(|| (slice, self.file_for_send(at, file_bytes_min).is_some()))
        })
    }

    /// The file bytes from wire offset `offset` to the end of its segment, when that segment
    /// goes by `sendfile` (see [`Segments::file_for_send`]).
    pub fn file_from(&self, offset: u64, file_bytes_min: Option<u64>) -> Option<FileRange<'_>> {
        let mut skip = self.segment_skip(offset);
        for at in 0..self.segment_count() {
            let length = self.segment(at).len() as u64;
            if skip < length {
                let (file, start) = self.file_for_send(at, file_bytes_min)?;
                return Some(FileRange { file, offset: start + skip, length: length - skip });
            }
            skip -= length;
        }
        None
    }

    /// The whole response copied out (tests only need this; drivers never copy).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.length as usize);
        for slice in self.slices_from(0) {
            out.extend_from_slice(slice);
        }
        out
    }
}

impl Outgoing {
    /// Where wire offset `offset` falls in the [`Segments`] of the response (the head, then the
    /// body parts still held): sent parts that were trimmed are no longer among them.
    pub fn segment_skip(&self, offset: u64) -> u64 {
        assert!(self.trimmed_bytes == 0 || offset >= self.head.len() as u64 + self.trimmed_bytes);
        offset - self.trimmed_bytes
    }
}

impl Segments for Outgoing {
    fn segment_count(&self) -> usize {
        1 + self.body.segment_count()
    }

    fn segment(&self, at: usize) -> &[u8] {
        if at == 0 {
            &self.head
        } else {
            self.body.segment(at - 1)
        }
    }

    fn segment_file(&self, at: usize) -> Option<(BorrowedFd<'_>, u64)> {
        if at == 0 {
            None
        } else {
            self.body.segment_file(at - 1)
        }
    }
}
