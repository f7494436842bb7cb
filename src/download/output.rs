//! The output file: pieces land in `FILE.tessera-partial`, a sidecar `FILE.tessera-progress`
//! records which pieces were verified, and the file is renamed to `FILE` only when complete and
//! checked. On resume every piece the sidecar lists is hashed again from the partial file (cheap,
//! and it means neither file has to be trusted).
//!
//! Off the event loop: verified pieces are written through a [`PieceWriter`] (by the verifier
//! threads), and a background thread hashes the whole file as its verified prefix grows (read back
//! from the page cache, in order, resumed pieces included) and saves the sidecar (`fdatasync`, then
//! the list). The whole-file SHA-256 so covers every byte of the file, and no end-of-download pass
//! is left but the tail.
//!
//! Only regular files are ever truncated or renamed over. Standard output (`-`), a FIFO or a
//! device is a *stream*: it is opened as it is (no create, no truncate), and the verified prefix is
//! written to it in order by the same background thread, as the prefix grows. Pieces that land
//! ahead of the prefix wait in an unlinked scratch file in `$TMPDIR`; a stream has no partial
//! file beside it and no resume. A directory or a socket is refused.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};

use crate::content::{Digest, HashFile};
use crate::hash::{hash_batch, Hasher};

/// Suffix of the file being written.
pub const PARTIAL_SUFFIX: &str = ".tessera-partial";
/// Suffix of the resume sidecar.
pub const PROGRESS_SUFFIX: &str = ".tessera-progress";
/// Pieces re-verified per batch on resume.
const RESUME_BATCH_PIECES: usize = 16;
/// Bytes read back at a time by the whole-file hasher.
const WHOLE_READ_BYTES: usize = 1 << 20;

/// Output failures.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("output {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("SHA-256 of the downloaded file is {actual}, expected {expected}; the file was removed")]
    Mismatch { expected: String, actual: String },
    #[error("output {path}: {why}")]
    Unusable { path: PathBuf, why: &'static str },
}

/// The name `-o -` gives standard output.
pub const STDOUT_PATH: &str = "-";

/// Where the verified bytes are written in order, when the output is not a regular file.
struct Stream(Box<dyn Write + Send>);

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stream")
    }
}

/// Opens `path` as a stream if it is stdout, a FIFO or a device; `None` for a regular file or a
/// name not taken yet; an error for anything else.
fn open_stream(path: &Path) -> Result<Option<Stream>, OutputError> {
    if path.as_os_str() == STDOUT_PATH {
        return Ok(Some(Stream(Box::new(std::io::stdout()))));
    }
    let unusable = |why| Err(OutputError::Unusable { path: path.to_path_buf(), why });
    // Follows symlinks: `-o /dev/stdout` is a link to whatever fd 1 is.
    let kind = match std::fs::metadata(path) {
        Ok(metadata) => metadata.file_type(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(OutputError::Io { path: path.to_path_buf(), source }),
    };
    if kind.is_file() {
        Ok(None)
    } else if kind.is_dir() {
        unusable("is a directory; give a file name inside it")
    } else if kind.is_fifo() || kind.is_char_device() || kind.is_block_device() {
        // Opened as is: never created, never truncated; a FIFO waits here for its reader.
        let file = OpenOptions::new().write(true).open(path).map_err(io(path))?;
        Ok(Some(Stream(Box::new(file))))
    } else {
        unusable("is a socket or other special file; give a file, a FIFO, a device or - (stdout)")
    }
}

/// Refuses `path` if something other than a regular file is there (a partial file that is a
/// symlink or a device would be truncated through).
fn ensure_regular_or_absent(path: &Path) -> Result<(), OutputError> {
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if !metadata.file_type().is_file() => {
            Err(OutputError::Unusable { path: path.to_path_buf(), why: "exists and is not a regular file" })
        }
        _ => Ok(()),
    }
}

/// What identifies a download in its sidecar: a resume only reuses pieces of the same content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub content_id: String,
    pub content_length: u64,
    pub piece_size: u32,
    pub hashfile_sha256: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Sidecar {
    version: u32,
    identity: Identity,
    verified: Vec<u64>,
}

/// How an output is laid out and how its background work is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub content_length: u64,
    /// Piece size (P2P) or range-request chunk size (Simple): the unit of `write_piece`.
    pub piece_size: u64,
    /// Verified pieces between two saves of the sidecar.
    pub save_every: u32,
    /// Tasks (prefix growths, saves) queued to the background thread at most.
    pub queue_tasks: u32,
    /// Whether the whole-file SHA-256 is computed (a digest will be checked at the end).
    pub whole_sha256: bool,
}

impl Layout {
    fn piece_count(&self) -> u64 {
        self.content_length.div_ceil(self.piece_size.max(1))
    }
}

/// The partial output of one download.
#[derive(Debug)]
pub struct Output {
    final_path: PathBuf,
    partial_path: PathBuf,
    progress_path: PathBuf,
    file: Arc<File>,
    layout: Layout,
    identity: Option<Identity>,
    verified: Vec<bool>,
    /// Pieces `[0, prefix)` are verified and handed to the whole-file hasher.
    prefix: u64,
    unsaved: u32,
    background: Option<Background>,
    /// The stream the verified prefix goes to, until the background thread takes it.
    stream: Option<Stream>,
    /// Whether the output is a stream (no rename, no sidecar).
    streaming: bool,
}

/// Writes verified pieces into the partial file from any thread.
#[derive(Debug, Clone)]
pub struct PieceWriter {
    file: Arc<File>,
    path: Arc<Path>,
}

impl PieceWriter {
    /// Writes a verified piece's bytes at `offset`.
    pub fn write(&self, offset: u64, bytes: &[u8]) -> Result<(), OutputError> {
        self.file.write_all_at(bytes, offset).map_err(io(&self.path))
    }
}

/// Work for the background thread, done in order.
enum Task {
    /// The verified prefix now ends at this byte: hash up to it.
    Hash { end: u64 },
    /// Make the data durable, then write this sidecar; `done` hears when it is on disk.
    Save { sidecar: Vec<u8>, done: Option<Sender<()>> },
}

#[derive(Debug)]
struct Background {
    tasks: Option<Sender<Task>>,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<Option<Digest>, OutputError>>>,
}

/// Maps an I/O error on `path` to [`OutputError::Io`].
fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OutputError {
    let path = path.to_path_buf();
    move |source| OutputError::Io { path, source }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

impl Output {
    /// Opens the partial file laid out by `layout`.
    ///
    /// With `resume` (identity and hashes), verified pieces of an earlier run are kept when they
    /// still hash right; without it any earlier partial file is started over.
    pub fn open(
        final_path: &Path,
        layout: Layout,
        resume: Option<(Identity, &HashFile)>,
    ) -> Result<Output, OutputError> {
        let stream = open_stream(final_path)?;
        let (partial_path, progress_path, file) = match &stream {
            Some(_) => {
                let scratch = std::env::temp_dir();
                let file = tempfile::tempfile_in(&scratch).map_err(io(&scratch))?;
                (scratch.join("(unlinked scratch file)"), PathBuf::new(), file)
            }
            None => {
                let partial_path = with_suffix(final_path, PARTIAL_SUFFIX);
                let progress_path = with_suffix(final_path, PROGRESS_SUFFIX);
                ensure_regular_or_absent(&partial_path)?;
                ensure_regular_or_absent(&progress_path)?;
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&partial_path)
                    .map_err(io(&partial_path))?;
                (partial_path, progress_path, file)
            }
        };
        let resume = if stream.is_some() { None } else { resume };
        let layout = Layout { save_every: layout.save_every.max(1), queue_tasks: layout.queue_tasks.max(1), ..layout };
        let mut output = Output {
            final_path: final_path.to_path_buf(),
            partial_path,
            progress_path,
            file: Arc::new(file),
            layout,
            identity: None,
            verified: vec![false; layout.piece_count() as usize],
            prefix: 0,
            unsaved: 0,
            background: None,
            streaming: stream.is_some(),
            stream,
        };
        let mut kept = false;
        if let Some((identity, hashes)) = resume {
            let earlier = output.read_sidecar();
            if let Some(sidecar) = earlier.filter(|s| s.identity == identity && s.version == 1) {
                output.reverify(&sidecar.verified, hashes)?;
                kept = true;
            }
            output.identity = Some(identity);
        }
        if !kept {
            output.file.set_len(0).map_err(io(&output.partial_path))?;
        }
        output.file.set_len(layout.content_length).map_err(io(&output.partial_path))?;
        output.background = Some(output.spawn_background()?);
        output.advance_prefix()?;
        output.save()?;
        Ok(output)
    }

    /// Pieces verified so far (after a resume: the ones that still hash right).
    pub fn verified_pieces(&self) -> impl Iterator<Item = u64> + '_ {
        self.verified.iter().enumerate().filter(|(_, done)| **done).map(|(index, _)| index as u64)
    }

    /// Path of the partial file.
    pub fn partial_path(&self) -> &Path {
        &self.partial_path
    }

    /// A handle that writes verified pieces from other threads; [`Output::mark_written`] records them.
    pub fn writer(&self) -> PieceWriter {
        PieceWriter { file: self.file.clone(), path: Arc::from(self.partial_path.as_path()) }
    }

    fn read_sidecar(&self) -> Option<Sidecar> {
        let bytes = std::fs::read(&self.progress_path).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn reverify(&mut self, listed: &[u64], hashes: &HashFile) -> Result<(), OutputError> {
        let listed: Vec<u64> = listed.iter().copied().filter(|&p| p < hashes.piece_count()).collect();
        for chunk in listed.chunks(RESUME_BATCH_PIECES) {
            let mut pieces = Vec::with_capacity(chunk.len());
            for &piece in chunk {
                let length = hashes.piece_length(piece).expect("index checked") as usize;
                let mut bytes = vec![0u8; length];
                let offset = piece * u64::from(hashes.piece_size().bytes());
                if self.file.read_exact_at(&mut bytes, offset).is_err() {
                    bytes.clear();
                }
                pieces.push(bytes);
            }
            let refs: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
            for ((&piece, digest), bytes) in chunk.iter().zip(hash_batch(&refs)).zip(&pieces) {
                if !bytes.is_empty() && hashes.digest(piece) == Some(&digest) {
                    self.verified[piece as usize] = true;
                }
            }
        }
        Ok(())
    }

    /// Writes a verified piece's bytes at `offset` and records it.
    pub fn write_piece(&mut self, piece: u64, offset: u64, bytes: &[u8]) -> Result<(), OutputError> {
        self.writer().write(offset, bytes)?;
        self.mark_written(piece)
    }

    /// Records a verified piece whose bytes a [`PieceWriter`] has written.
    pub fn mark_written(&mut self, piece: u64) -> Result<(), OutputError> {
        self.verified[piece as usize] = true;
        self.advance_prefix()?;
        self.unsaved += 1;
        if self.unsaved >= self.layout.save_every {
            self.save()?;
        }
        Ok(())
    }

    /// Hands the newly contiguous verified pieces to the whole-file hasher.
    fn advance_prefix(&mut self) -> Result<(), OutputError> {
        let start = self.prefix;
        while self.verified.get(self.prefix as usize).copied().unwrap_or(false) {
            self.prefix += 1;
        }
        if self.prefix > start && (self.layout.whole_sha256 || self.streaming) {
            let end = (self.prefix * self.layout.piece_size).min(self.layout.content_length);
            self.send(Task::Hash { end })?;
        }
        Ok(())
    }

    /// Records progress in the sidecar (resumable downloads only), in the background: data first,
    /// then the list.
    pub fn save(&mut self) -> Result<(), OutputError> {
        if let Some(sidecar) = self.sidecar() {
            self.send(Task::Save { sidecar, done: None })?;
        }
        Ok(())
    }

    /// Like [`Output::save`], and waits until the sidecar is on disk.
    pub fn persist(&mut self) -> Result<(), OutputError> {
        let Some(sidecar) = self.sidecar() else { return Ok(()) };
        let (done, saved) = crossbeam_channel::bounded(1);
        self.send(Task::Save { sidecar, done: Some(done) })?;
        if saved.recv().is_err() {
            return Err(self.background_failure());
        }
        Ok(())
    }

    fn sidecar(&mut self) -> Option<Vec<u8>> {
        self.unsaved = 0;
        let identity = self.identity.as_ref()?;
        let sidecar = Sidecar { version: 1, identity: identity.clone(), verified: self.verified_pieces().collect() };
        Some(serde_json::to_vec(&sidecar).expect("sidecar serializes"))
    }

    fn send(&mut self, task: Task) -> Result<(), OutputError> {
        let sent = self.background.as_ref().and_then(|b| b.tasks.as_ref()).map(|tasks| tasks.send(task).is_ok());
        match sent {
            Some(true) => Ok(()),
            _ => Err(self.background_failure()),
        }
    }

    /// The background thread stopped early: its error.
    fn background_failure(&mut self) -> OutputError {
        let path = self.partial_path.clone();
        match self.background.as_mut().map(Background::join) {
            Some(Err(error)) => error,
            _ => OutputError::Io { path, source: std::io::Error::other("the output's background thread stopped") },
        }
    }

    fn spawn_background(&mut self) -> Result<Background, OutputError> {
        let (tasks, queue) = crossbeam_channel::bounded(self.layout.queue_tasks as usize);
        let stopping = Arc::new(AtomicBool::new(false));
        let work = BackgroundWork {
            file: self.file.clone(),
            partial_path: self.partial_path.clone(),
            progress_path: self.progress_path.clone(),
            whole: self.layout.whole_sha256.then(Hasher::new),
            hashed_to: 0,
            stopping: stopping.clone(),
            stream: self.stream.take(),
        };
        let thread = std::thread::Builder::new()
            .name("tessera-output".into())
            .spawn(move || work.run(queue))
            .map_err(io(&self.partial_path))?;
        Ok(Background { tasks: Some(tasks), stopping, thread: Some(thread) })
    }

    /// Checks the whole file against `expected` (if any) and renames it into place; on mismatch
    /// the partial file and sidecar are removed and nothing appears under the final name.
    pub fn finish(mut self, expected: Option<Digest>) -> Result<Option<Digest>, OutputError> {
        if (self.streaming || (expected.is_some() && self.layout.whole_sha256))
            && self.prefix * self.layout.piece_size < self.layout.content_length
        {
            // Not every piece is recorded (only a caller that wrote the file some other way):
            // the hash still covers every byte of the file.
            self.send(Task::Hash { end: self.layout.content_length })?;
        }
        let mut background = self.background.take().expect("background thread runs until finish");
        let digest = background.join()?;
        self.file.sync_all().map_err(io(&self.partial_path))?;
        let mut actual = None;
        if let Some(expected) = expected {
            let digest = match digest {
                Some(digest) => digest,
                None => whole_file_sha256(&self.partial_path).map_err(io(&self.partial_path))?,
            };
            if digest != expected {
                if !self.streaming {
                    let _ = std::fs::remove_file(&self.partial_path);
                    let _ = std::fs::remove_file(&self.progress_path);
                }
                return Err(OutputError::Mismatch { expected: hex::encode(expected), actual: hex::encode(digest) });
            }
            actual = Some(digest);
        }
        if self.streaming {
            // Every byte already went to the stream, in order, as the prefix grew.
            return Ok(actual);
        }
        // Something may have taken the name since `open`: a device is never renamed over.
        match std::fs::symlink_metadata(&self.final_path) {
            Ok(metadata) if !(metadata.is_file() || metadata.file_type().is_symlink()) => {
                return Err(OutputError::Unusable {
                    path: self.final_path.clone(),
                    why: "is no longer a regular file; the download is kept as the partial file",
                });
            }
            _ => {}
        }
        std::fs::rename(&self.partial_path, &self.final_path).map_err(io(&self.final_path))?;
        let _ = std::fs::remove_file(&self.progress_path);
        if let Some(parent) = self.final_path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if let Ok(dir) = File::open(parent) {
                let _ = dir.sync_all();
            }
        }
        Ok(actual)
    }
}

impl Drop for Output {
    /// Pending saves still land (the sidecar stays true for a resume); hashing stops.
    fn drop(&mut self) {
        if let Some(background) = self.background.as_mut() {
            background.stopping.store(true, Ordering::Relaxed);
            if let Err(error) = background.join() {
                tracing::warn!(%error, "saving download progress failed");
            }
        }
    }
}

impl Background {
    /// Closes the queue and waits for the thread: the whole-file digest, if one was computed.
    fn join(&mut self) -> Result<Option<Digest>, OutputError> {
        self.tasks = None;
        match self.thread.take() {
            Some(thread) => thread.join().unwrap_or_else(|_| {
                Err(OutputError::Io {
                    path: PathBuf::from("output background thread"),
                    source: std::io::Error::other("panicked"),
                })
            }),
            None => Ok(None),
        }
    }
}

/// What the background thread owns.
struct BackgroundWork {
    file: Arc<File>,
    partial_path: PathBuf,
    progress_path: PathBuf,
    whole: Option<Hasher>,
    hashed_to: u64,
    stopping: Arc<AtomicBool>,
    /// Where the verified prefix is copied in order, for a stream output.
    stream: Option<Stream>,
}

impl BackgroundWork {
    /// Does the tasks in order until the queue closes; the whole-file digest at the end.
    fn run(mut self, queue: Receiver<Task>) -> Result<Option<Digest>, OutputError> {
        let reads = self.whole.is_some() || self.stream.is_some();
        let mut buffer = vec![0u8; if reads { WHOLE_READ_BYTES } else { 0 }];
        for task in queue {
            match task {
                Task::Hash { end } => self.hash_to(end, &mut buffer)?,
                Task::Save { sidecar, done } => {
                    self.save(&sidecar)?;
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                }
            }
        }
        if let Some(stream) = self.stream.as_mut() {
            stream.0.flush().map_err(io(&self.partial_path))?;
        }
        Ok(self.whole.map(Hasher::finish))
    }

    fn hash_to(&mut self, end: u64, buffer: &mut [u8]) -> Result<(), OutputError> {
        if self.whole.is_none() && self.stream.is_none() {
            return Ok(());
        }
        // Bounded: each pass moves `hashed_to` forward by at least one byte up to `end`.
        while self.hashed_to < end {
            if self.stopping.load(Ordering::Relaxed) {
                self.whole = None;
                self.stream = None;
                return Ok(());
            }
            let count = (end - self.hashed_to).min(buffer.len() as u64) as usize;
            self.file.read_exact_at(&mut buffer[..count], self.hashed_to).map_err(io(&self.partial_path))?;
            if let Some(whole) = self.whole.as_mut() {
                whole.update(&buffer[..count]);
            }
            if let Some(stream) = self.stream.as_mut() {
                stream.0.write_all(&buffer[..count]).map_err(io(&self.partial_path))?;
            }
            self.hashed_to += count as u64;
        }
        Ok(())
    }

    fn save(&self, sidecar: &[u8]) -> Result<(), OutputError> {
        self.file.sync_data().map_err(io(&self.partial_path))?;
        let temporary = with_suffix(&self.progress_path, ".tmp");
        let mut file = File::create(&temporary).map_err(io(&temporary))?;
        file.write_all(sidecar).map_err(io(&temporary))?;
        std::fs::rename(&temporary, &self.progress_path).map_err(io(&self.progress_path))
    }
}

/// SHA-256 of a whole file, streamed.
pub fn whole_file_sha256(path: &Path) -> std::io::Result<Digest> {
    let mut file = File::open(path)?;
    let mut hasher = Hasher::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let count = file.read(&mut buffer)?;
        if count == 0 {
            return Ok(hasher.finish());
        }
        hasher.update(&buffer[..count]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::PieceSize;
    use crate::hash::sha256;

    fn content() -> (Vec<u8>, HashFile) {
        let bytes: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
        let size = PieceSize::new(65536).unwrap();
        let digests = bytes.chunks(65536).map(sha256).collect();
        (bytes.clone(), HashFile::new(size, bytes.len() as u64, digests).unwrap())
    }

    fn layout(content_length: u64, piece_size: u64) -> Layout {
        Layout { content_length, piece_size, save_every: 1, queue_tasks: 4, whole_sha256: true }
    }

    fn identity() -> Identity {
        Identity { content_id: "c".into(), content_length: 150_000, piece_size: 65536, hashfile_sha256: "h".into() }
    }

    #[test]
    fn resume_keeps_only_pieces_that_still_hash_right_then_renames() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.bin");
        let (bytes, hashes) = content();
        let mut output = Output::open(&target, layout(150_000, 65536), Some((identity(), &hashes))).unwrap();
        output.write_piece(0, 0, &bytes[..65536]).unwrap();
        output.write_piece(2, 131072, &bytes[131072..]).unwrap();
        drop(output);
        // Corrupt piece 2 behind the sidecar's back.
        let partial = with_suffix(&target, PARTIAL_SUFFIX);
        File::options().write(true).open(&partial).unwrap().write_all_at(b"X", 131072).unwrap();
        let mut output = Output::open(&target, layout(150_000, 65536), Some((identity(), &hashes))).unwrap();
        assert_eq!(output.verified_pieces().collect::<Vec<_>>(), vec![0]);
        output.write_piece(1, 65536, &bytes[65536..131072]).unwrap();
        output.write_piece(2, 131072, &bytes[131072..]).unwrap();
        assert!(!target.exists());
        let digest = output.finish(Some(crate::hash::sha256(&bytes))).unwrap();
        assert!(digest.is_some());
        assert_eq!(std::fs::read(&target).unwrap(), bytes);
        assert!(!partial.exists() && !with_suffix(&target, PROGRESS_SUFFIX).exists());
    }

    #[test]
    fn whole_file_hash_follows_out_of_order_pieces_and_still_catches_a_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, _) = content();
        let whole = crate::hash::sha256(&bytes);
        let target = dir.path().join("good.bin");
        let mut output = Output::open(&target, layout(150_000, 65536), None).unwrap();
        output.write_piece(2, 131072, &bytes[131072..]).unwrap();
        output.write_piece(0, 0, &bytes[..65536]).unwrap();
        output.write_piece(1, 65536, &bytes[65536..131072]).unwrap();
        assert_eq!(output.finish(Some(whole)).unwrap(), Some(whole));
        assert_eq!(std::fs::read(&target).unwrap(), bytes);

        // One wrong byte anywhere, hashed as the prefix grows: the file never appears.
        let target = dir.path().join("bad.bin");
        let mut output = Output::open(&target, layout(150_000, 65536), None).unwrap();
        let mut middle = bytes[65536..131072].to_vec();
        middle[7] ^= 1;
        output.write_piece(0, 0, &bytes[..65536]).unwrap();
        output.write_piece(2, 131072, &bytes[131072..]).unwrap();
        output.write_piece(1, 65536, &middle).unwrap();
        let error = output.finish(Some(whole)).unwrap_err();
        assert!(matches!(error, OutputError::Mismatch { .. }), "{error}");
        assert!(!target.exists() && !with_suffix(&target, PARTIAL_SUFFIX).exists());
    }

    #[test]
    fn whole_file_hash_covers_resumed_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.bin");
        let (bytes, hashes) = content();
        let whole = crate::hash::sha256(&bytes);
        let mut output = Output::open(&target, layout(150_000, 65536), Some((identity(), &hashes))).unwrap();
        output.write_piece(0, 0, &bytes[..65536]).unwrap();
        output.write_piece(2, 131072, &bytes[131072..]).unwrap();
        drop(output);
        // The rerun writes only piece 1; pieces 0 and 2 come from the first run.
        let mut output = Output::open(&target, layout(150_000, 65536), Some((identity(), &hashes))).unwrap();
        assert_eq!(output.verified_pieces().collect::<Vec<_>>(), vec![0, 2]);
        output.write_piece(1, 65536, &bytes[65536..131072]).unwrap();
        assert_eq!(output.finish(Some(whole)).unwrap(), Some(whole));
        assert_eq!(std::fs::read(&target).unwrap(), bytes);

        // The same resume checked against another digest fails and removes everything.
        let target = dir.path().join("other.bin");
        let mut output = Output::open(&target, layout(150_000, 65536), Some((identity(), &hashes))).unwrap();
        output.write_piece(0, 0, &bytes[..65536]).unwrap();
        drop(output);
        let mut output = Output::open(&target, layout(150_000, 65536), Some((identity(), &hashes))).unwrap();
        output.write_piece(1, 65536, &bytes[65536..131072]).unwrap();
        output.write_piece(2, 131072, &bytes[131072..]).unwrap();
        let error = output.finish(Some([7; 32])).unwrap_err();
        assert!(matches!(error, OutputError::Mismatch { .. }), "{error}");
        assert!(!target.exists() && !with_suffix(&target, PROGRESS_SUFFIX).exists());
    }

    #[test]
    fn another_content_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.bin");
        let (bytes, hashes) = content();
        let mut output = Output::open(&target, layout(150_000, 65536), Some((identity(), &hashes))).unwrap();
        output.write_piece(0, 0, &bytes[..65536]).unwrap();
        drop(output);
        let other = Identity { content_id: "d".into(), ..identity() };
        let output = Output::open(&target, layout(150_000, 65536), Some((other, &hashes))).unwrap();
        assert_eq!(output.verified_pieces().count(), 0);
    }

    #[test]
    fn mismatch_removes_everything() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.bin");
        let mut output = Output::open(&target, layout(3, 3), None).unwrap();
        output.write_piece(0, 0, b"abc").unwrap();
        let error = output.finish(Some([0; 32])).unwrap_err();
        assert!(matches!(error, OutputError::Mismatch { .. }), "{error}");
        assert!(!target.exists() && !with_suffix(&target, PARTIAL_SUFFIX).exists());
    }
}
