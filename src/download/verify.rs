//! Piece verification off the event loop, wherever the pieces land: verifier threads hash each
//! received piece, compare it with its expected digest, hand the good ones to a [`PieceSink`], and
//! give the buffer back. Two sinks: `get`'s output file ([`PieceWriter`], one `pwrite` per piece)
//! and a cache box's store (`appliance::fill`, batched: several pieces per ingest share one fsync).
//!
//! The event loop keeps receiving while pieces are hashed (rule 3 is unchanged: only a piece whose
//! digest matches reaches the sink, and the loop hears that it is good only after the sink took
//! it). Bounded: at most `limit` pieces are out at once; both queues hold that many, so neither side
//! ever blocks on a full queue while the other waits on it. A thread takes what is queued, up to
//! `batch_pieces_max` pieces (a short batch waits up to 2 ms for a few more, so that pieces are
//! hashed side by side), and lands the good ones of that batch in one sink call.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use crate::content::Digest;
use crate::download::output::{OutputError, PieceWriter};
use crate::download::scheduler::SourceId;
use crate::hash::hash_batch;
use crate::io::client::Waker;

/// Where verified pieces go.
pub trait PieceSink: Clone + Send + 'static {
    /// What the caller tags each piece with (where it goes, whom to tell).
    type Tag: Send + 'static;
    /// Why a piece could not be landed.
    type Error: Send + 'static;
    /// Lands verified pieces, all in one call (a store commits them with one fsync); one result
    /// per piece, in order.
    fn land(&mut self, pieces: &[Verified<'_, Self::Tag>]) -> Vec<Result<(), Self::Error>>;
}

/// A piece whose bytes matched its digest.
pub struct Verified<'a, T> {
    pub tag: &'a T,
    /// Its SHA-256 (`None` in `get`'s Simple mode, where only the length is checked).
    pub digest: Option<Digest>,
    pub bytes: &'a [u8],
}

/// One received piece to check.
pub struct Check<T> {
    pub tag: T,
    /// The buffer; its first `length` bytes are the piece.
    pub buffer: Vec<u8>,
    pub length: usize,
    /// The piece's SHA-256 (P2P); `None` in Simple mode, where the length was all there is to check.
    pub expected: Option<Digest>,
    /// Whether a good piece goes to the sink (not when it already holds it).
    pub write: bool,
}

/// What a verifier thread found.
pub struct Checked<T, E> {
    pub tag: T,
    /// The digest matched (and, if asked, the sink took the bytes).
    pub good: bool,
    /// The sink refused a good piece.
    pub error: Option<E>,
    /// The buffer, for reuse.
    pub buffer: Vec<u8>,
}

/// Where a piece of `get`'s output file goes, and whom it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilePiece {
    pub source: SourceId,
    pub piece: u64,
    /// Where the piece starts in the file.
    pub offset: u64,
}

impl PieceSink for PieceWriter {
    type Tag = FilePiece;
    type Error = OutputError;

    fn land(&mut self, pieces: &[Verified<'_, FilePiece>]) -> Vec<Result<(), OutputError>> {
        pieces.iter().map(|piece| self.write(piece.tag.offset, piece.bytes)).collect()
    }
}

type Verdict<S> = Checked<<S as PieceSink>::Tag, <S as PieceSink>::Error>;

/// The verifier threads and their two queues.
pub struct Verifier<S: PieceSink> {
    checks: Option<Sender<Check<S::Tag>>>,
    results: Receiver<Verdict<S>>,
    threads: Vec<JoinHandle<()>>,
    outstanding: usize,
    limit: usize,
}

impl<S: PieceSink> Verifier<S> {
    /// Starts `threads` verifier threads landing good pieces in `sink`, at most `batch_pieces_max`
    /// per call; `waker` wakes the event loop when results are ready.
    pub fn start(threads: u32, limit: u32, batch_pieces_max: u32, sink: S, waker: Waker) -> std::io::Result<Self> {
        let limit = limit.max(1) as usize;
        let (checks, queue) = crossbeam_channel::bounded::<Check<S::Tag>>(limit);
        let (answer, results) = crossbeam_channel::bounded::<Verdict<S>>(limit);
        let mut verifier = Verifier { checks: Some(checks), results, threads: Vec::new(), outstanding: 0, limit };
        let batch_pieces_max = batch_pieces_max.max(1) as usize;
        let gathering = Arc::new(Mutex::new(()));
        for index in 0..threads.max(1) {
            let (queue, answer, mut sink, waker) = (queue.clone(), answer.clone(), sink.clone(), waker.clone());
            let gathering = gathering.clone();
            let thread = std::thread::Builder::new()
                .name(format!("tessera-verify-{index}"))
                .spawn(move || verify_loop(&queue, &gathering, &answer, &mut sink, batch_pieces_max, &waker))?;
            verifier.threads.push(thread);
        }
        Ok(verifier)
    }

    /// Whether another check may be handed over now; when not, [`Verifier::wait`] first.
    pub fn has_room(&self) -> bool {
        self.outstanding < self.limit
    }

    /// Pieces handed over and not answered yet.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Hands a piece to the threads. Call only when [`Verifier::has_room`].
    pub fn submit(&mut self, check: Check<S::Tag>) {
        assert!(self.has_room(), "verifier queue bounded by its limit");
        let sent = self.checks.as_ref().is_some_and(|checks| checks.send(check).is_ok());
        assert!(sent, "verifier threads run until shutdown");
        self.outstanding += 1;
    }

    /// A result if one is ready.
    pub fn try_result(&mut self) -> Option<Verdict<S>> {
        match self.results.try_recv() {
            Ok(checked) => {
                self.outstanding -= 1;
                Some(checked)
            }
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => None,
        }
    }

    /// Waits for the next result; `None` when nothing is outstanding.
    pub fn wait(&mut self) -> Option<Verdict<S>> {
        if self.outstanding == 0 {
            return None;
        }
        let checked = self.results.recv().ok()?;
        self.outstanding -= 1;
        Some(checked)
    }

    /// Lets the threads finish what they were given (results are dropped) and joins them.
    pub fn shutdown(&mut self) {
        self.checks = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        while self.results.try_recv().is_ok() {}
        self.outstanding = 0;
    }
}

impl<S: PieceSink> Drop for Verifier<S> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A batch of fewer pieces than this waits up to [`GATHER_WAIT`] for more: four is what the
/// interleaved SHA-NI path hashes side by side (one piece alone hashes at half its rate).
const GATHER_PIECES: usize = 4;
/// How long a short batch waits for more pieces at most: what a trickle of pieces pays in latency.
const GATHER_WAIT: Duration = Duration::from_millis(2);

/// Takes the next batch into `batch` (empty on entry): what is queued, and while fewer than
/// [`GATHER_PIECES`], what arrives within [`GATHER_WAIT`]. One thread gathers at a time
/// (`gathering`), so that threads do not split the arrivals into batches of one while the others
/// hash. `false` when the queue is closed and empty.
fn gather<T>(queue: &Receiver<Check<T>>, gathering: &Mutex<()>, pieces_max: usize, batch: &mut Vec<Check<T>>) -> bool {
    let _turn = gathering.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let Ok(first) = queue.recv() else { return false };
    batch.push(first);
    batch.extend(queue.try_iter().take(pieces_max - 1));
    let deadline = Instant::now() + GATHER_WAIT;
    // Bounded by the deadline and by `pieces_max`.
    while batch.len() < GATHER_PIECES.min(pieces_max) {
        let Ok(next) = queue.recv_deadline(deadline) else { break };
        batch.push(next);
        batch.extend(queue.try_iter().take(pieces_max - batch.len()));
    }
    true
}

fn verify_loop<S: PieceSink>(
    queue: &Receiver<Check<S::Tag>>,
    gathering: &Mutex<()>,
    answer: &Sender<Verdict<S>>,
    sink: &mut S,
    batch_pieces_max: usize,
    waker: &Waker,
) {
    let mut batch: Vec<Check<S::Tag>> = Vec::with_capacity(batch_pieces_max);
    // Bounded: each pass takes at least one check; the loop ends when the queue is closed.
    while gather(queue, gathering, batch_pieces_max, &mut batch) {
        // One `hash_batch` for the batch: pieces that arrived together are hashed side by side.
        let hashed: Vec<&[u8]> =
            batch.iter().filter(|check| check.expected.is_some()).map(|check| &check.buffer[..check.length]).collect();
        let mut digests = hash_batch(&hashed).into_iter();
        let good: Vec<bool> =
            batch.iter().map(|check| check.expected.is_none_or(|expected| digests.next() == Some(expected))).collect();
        let landing: Vec<usize> = (0..batch.len()).filter(|&at| good[at] && batch[at].write).collect();
        let verified: Vec<Verified<'_, S::Tag>> = landing
            .iter()
            .map(|&at| Verified {
                tag: &batch[at].tag,
                digest: batch[at].expected,
                bytes: &batch[at].buffer[..batch[at].length],
            })
            .collect();
        let mut errors: Vec<Option<S::Error>> = (0..batch.len()).map(|_| None).collect();
        if !verified.is_empty() {
            let results = sink.land(&verified);
            debug_assert_eq!(results.len(), landing.len(), "one result per piece landed");
            for (&at, result) in landing.iter().zip(results) {
                errors[at] = result.err();
            }
        }
        for ((check, good), error) in batch.drain(..).zip(good).zip(errors) {
            let checked = Checked { tag: check.tag, good, error, buffer: check.buffer };
            // The queue holds `limit` results and at most `limit` are out: this never blocks for long.
            if answer.send(checked).is_err() {
                return;
            }
        }
        let _ = waker.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendChoice;
    use crate::download::output::{Layout, Output};
    use crate::hash::sha256;
    use crate::io::client::{ClientConfig, ClientLoop};

    #[test]
    fn good_pieces_are_written_bad_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout { content_length: 8, piece_size: 4, save_every: 1, queue_tasks: 4, whole_sha256: false };
        let output = Output::open(&dir.path().join("out"), layout, None).unwrap();
        let client = ClientLoop::new(BackendChoice::Epoll, ClientConfig::default()).unwrap();
        let mut verifier = Verifier::start(2, 2, 4, output.writer(), client.waker()).unwrap();
        let check = |piece: u64, bytes: &[u8], expected: &[u8]| Check {
            tag: FilePiece { source: SourceId(0), piece, offset: piece * 4 },
            buffer: bytes.to_vec(),
            length: 4,
            expected: Some(sha256(expected)),
            write: true,
        };
        verifier.submit(check(0, b"abcd", b"abcd"));
        verifier.submit(check(1, b"evil", b"efgh"));
        assert!(!verifier.has_room());
        let mut verdicts: Vec<(u64, bool)> =
            (0..2).map(|_| verifier.wait().map(|c| (c.tag.piece, c.good)).unwrap()).collect();
        verdicts.sort();
        assert_eq!(verdicts, vec![(0, true), (1, false)]);
        assert!(verifier.wait().is_none());
        verifier.shutdown();
        assert_eq!(std::fs::read(output.partial_path()).unwrap(), b"abcd\0\0\0\0");
    }

    #[test]
    fn a_queue_of_mixed_pieces_gets_every_verdict_right() {
        let dir = tempfile::tempdir().unwrap();
        let (count, size) = (33u64, 1000usize);
        let layout = Layout {
            content_length: count * size as u64,
            piece_size: size as u64,
            save_every: 1,
            queue_tasks: 4,
            whole_sha256: false,
        };
        let output = Output::open(&dir.path().join("out"), layout, None).unwrap();
        let client = ClientLoop::new(BackendChoice::Epoll, ClientConfig::default()).unwrap();
        let mut verifier = Verifier::start(1, count as u32, 16, output.writer(), client.waker()).unwrap();
        let bytes = |piece: u64| vec![piece as u8 + 1; size];
        // Every third piece arrives corrupt; every fifth has no digest (Simple mode).
        for piece in 0..count {
            let mut buffer = bytes(piece);
            if piece % 3 == 0 {
                buffer[size / 2] ^= 1;
            }
            let expected = (piece % 5 != 0).then(|| sha256(&bytes(piece)));
            let tag = FilePiece { source: SourceId(0), piece, offset: piece * size as u64 };
            verifier.submit(Check { tag, buffer, length: size, expected, write: true });
        }
        let mut verdicts: Vec<(u64, bool)> =
            (0..count).map(|_| verifier.wait().map(|c| (c.tag.piece, c.good)).unwrap()).collect();
        verdicts.sort();
        let expected: Vec<(u64, bool)> = (0..count).map(|p| (p, p % 5 == 0 || p % 3 != 0)).collect();
        assert_eq!(verdicts, expected);
        verifier.shutdown();
        let written = std::fs::read(output.partial_path()).unwrap();
        assert_eq!(&written[size..2 * size], bytes(1).as_slice());
        assert!(written[3 * size..4 * size].iter().all(|&b| b == 0), "a corrupt piece is not written");
    }

    /// A sink that records each call's tags.
    #[derive(Clone)]
    struct Recording(std::sync::Arc<std::sync::Mutex<Vec<Vec<u32>>>>);

    impl PieceSink for Recording {
        type Tag = u32;
        type Error = String;
        fn land(&mut self, pieces: &[Verified<'_, u32>]) -> Vec<Result<(), String>> {
            self.0.lock().unwrap().push(pieces.iter().map(|p| *p.tag).collect());
            pieces.iter().map(|p| if *p.tag == 3 { Err("full".to_string()) } else { Ok(()) }).collect()
        }
    }

    #[test]
    fn queued_pieces_land_in_batches_and_a_bad_one_never_reaches_the_sink() {
        let client = ClientLoop::new(BackendChoice::Epoll, ClientConfig::default()).unwrap();
        let calls = Recording(Default::default());
        let (tx, rx) = crossbeam_channel::bounded(8);
        let (answer, results) = crossbeam_channel::bounded(8);
        for tag in 0..5u32 {
            let bytes = vec![tag as u8; 16];
            let expected = if tag == 1 { sha256(b"other") } else { sha256(&bytes) };
            tx.send(Check { tag, buffer: bytes, length: 16, expected: Some(expected), write: true }).unwrap();
        }
        drop(tx);
        // One thread, queue filled before it runs: deterministic batches of at most 4.
        verify_loop::<Recording>(&rx, &Mutex::new(()), &answer, &mut calls.clone(), 4, &client.waker());
        let verdicts: Vec<(u32, bool, Option<String>)> = results.try_iter().map(|c| (c.tag, c.good, c.error)).collect();
        assert_eq!(
            verdicts,
            vec![(0, true, None), (1, false, None), (2, true, None), (3, true, Some("full".into())), (4, true, None)]
        );
        assert_eq!(*calls.0.lock().unwrap(), vec![vec![0, 2, 3], vec![4]], "good pieces only, several per call");
    }
}
