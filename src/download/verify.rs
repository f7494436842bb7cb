//! Piece verification off the event loop: verifier threads hash each received piece, compare it
//! with its expected digest, write good ones into the partial file, and hand the buffer back. A
//! thread takes the pieces already queued (up to `hash::BATCH_LANES`) as one `hash_batch`, so
//! several arriving together are hashed side by side; it never waits for more.
//!
//! The event loop keeps receiving while pieces are hashed (rule 3 is unchanged: only a piece whose
//! digest matches is written, and the scheduler hears `Verified` only after the write). Bounded:
//! at most `limit` pieces are out at once; both queues hold that many, so neither side ever blocks
//! on a full queue while the other waits on it.

use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use crate::content::Digest;
use crate::download::output::{OutputError, PieceWriter};
use crate::download::scheduler::SourceId;
use crate::hash::{hash_batch, BATCH_LANES};
use crate::io::client::Waker;

/// One received piece to check.
pub struct Check {
    pub source: SourceId,
    pub piece: u64,
    /// Where the piece starts in the file.
    pub offset: u64,
    /// The buffer; its first `length` bytes are the piece.
    pub buffer: Vec<u8>,
    pub length: usize,
    /// The piece's SHA-256 (P2P); `None` in Simple mode, where the length was all there is to check.
    pub expected: Option<Digest>,
    /// Whether a good piece is written (not when the piece was already in the file).
    pub write: bool,
}

/// What a verifier thread found.
pub struct Checked {
    pub source: SourceId,
    pub piece: u64,
    /// The digest matched (and, if asked, the bytes are in the file).
    pub good: bool,
    /// The write of a good piece failed.
    pub error: Option<OutputError>,
    /// The buffer, for reuse.
    pub buffer: Vec<u8>,
}

/// The verifier threads and their two queues.
pub struct Verifier {
    checks: Option<Sender<Check>>,
    results: Receiver<Checked>,
    threads: Vec<JoinHandle<()>>,
    outstanding: usize,
    limit: usize,
}

impl Verifier {
    /// Starts `threads` verifier threads writing through `writer`; `waker` wakes the event loop
    /// when a result is ready.
    pub fn start(threads: u32, limit: u32, writer: PieceWriter, waker: Waker) -> std::io::Result<Verifier> {
        let limit = limit.max(1) as usize;
        let (checks, queue) = crossbeam_channel::bounded::<Check>(limit);
        let (answer, results) = crossbeam_channel::bounded::<Checked>(limit);
        let mut verifier = Verifier { checks: Some(checks), results, threads: Vec::new(), outstanding: 0, limit };
        for index in 0..threads.max(1) {
            let (queue, answer, writer, waker) = (queue.clone(), answer.clone(), writer.clone(), waker.clone());
            let thread = std::thread::Builder::new()
                .name(format!("tessera-verify-{index}"))
                .spawn(move || verify_loop(&queue, &answer, &writer, &waker))?;
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
    pub fn submit(&mut self, check: Check) {
        assert!(self.has_room(), "verifier queue bounded by its limit");
        let sent = self.checks.as_ref().is_some_and(|checks| checks.send(check).is_ok());
        assert!(sent, "verifier threads run until shutdown");
        self.outstanding += 1;
    }

    /// A result if one is ready.
    pub fn try_result(&mut self) -> Option<Checked> {
        match self.results.try_recv() {
            Ok(checked) => {
                self.outstanding -= 1;
                Some(checked)
            }
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => None,
        }
    }

    /// Waits for the next result; `None` when nothing is outstanding.
    pub fn wait(&mut self) -> Option<Checked> {
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

impl Drop for Verifier {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn verify_loop(queue: &Receiver<Check>, answer: &Sender<Checked>, writer: &PieceWriter, waker: &Waker) {
    while let Ok(first) = queue.recv() {
        // Pieces already queued join the first one so that `hash_batch` can fill its lanes; none
        // is waited for, so a lone piece is not delayed.
        let mut checks = vec![first];
        checks.extend(queue.try_iter().take(BATCH_LANES - 1));
        let hashed: Vec<&[u8]> =
            checks.iter().filter(|check| check.expected.is_some()).map(|check| &check.buffer[..check.length]).collect();
        let mut digests = hash_batch(&hashed).into_iter();
        for check in checks {
            let bytes = &check.buffer[..check.length];
            let good = check.expected.is_none_or(|expected| digests.next() == Some(expected));
            let error = if good && check.write { writer.write(check.offset, bytes).err() } else { None };
            let checked = Checked { source: check.source, piece: check.piece, good, error, buffer: check.buffer };
            // The queue holds `limit` results and at most `limit` are out: this never blocks for long.
            if answer.send(checked).is_err() {
                return;
            }
            let _ = waker.wake();
        }
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
        let mut verifier = Verifier::start(2, 2, output.writer(), client.waker()).unwrap();
        let check = |piece: u64, bytes: &[u8], expected: &[u8]| Check {
            source: SourceId(0),
            piece,
            offset: piece * 4,
            buffer: bytes.to_vec(),
            length: 4,
            expected: Some(sha256(expected)),
            write: true,
        };
        verifier.submit(check(0, b"abcd", b"abcd"));
        verifier.submit(check(1, b"evil", b"efgh"));
        assert!(!verifier.has_room());
        let mut verdicts: Vec<(u64, bool)> =
            (0..2).map(|_| verifier.wait().map(|c| (c.piece, c.good)).unwrap()).collect();
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
        let mut verifier = Verifier::start(1, count as u32, output.writer(), client.waker()).unwrap();
        let bytes = |piece: u64| vec![piece as u8 + 1; size];
        // Every third piece arrives corrupt; every fifth has no digest (Simple mode).
        for piece in 0..count {
            let mut buffer = bytes(piece);
            if piece % 3 == 0 {
                buffer[size / 2] ^= 1;
            }
            let expected = (piece % 5 != 0).then(|| sha256(&bytes(piece)));
            let offset = piece * size as u64;
            verifier.submit(Check { source: SourceId(0), piece, offset, buffer, length: size, expected, write: true });
        }
        let mut verdicts: Vec<(u64, bool)> =
            (0..count).map(|_| verifier.wait().map(|c| (c.piece, c.good)).unwrap()).collect();
        verdicts.sort();
        let expected: Vec<(u64, bool)> = (0..count).map(|p| (p, p % 5 == 0 || p % 3 != 0)).collect();
        assert_eq!(verdicts, expected);
        verifier.shutdown();
        let written = std::fs::read(output.partial_path()).unwrap();
        assert_eq!(&written[size..2 * size], bytes(1).as_slice());
        assert!(written[3 * size..4 * size].iter().all(|&b| b == 0), "a corrupt piece is not written");
    }
}
