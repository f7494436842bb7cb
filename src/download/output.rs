//! The output file: pieces land in `FILE.tessera-partial`, a sidecar `FILE.tessera-progress`
//! records which pieces were verified, and the file is renamed to `FILE` only when complete and
//! checked. On resume every piece the sidecar lists is hashed again from the partial file (cheap,
//! and it means neither file has to be trusted).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::content::{Digest, HashFile};
use crate::hash::hash_batch;

/// Suffix of the file being written.
pub const PARTIAL_SUFFIX: &str = ".tessera-partial";
/// Suffix of the resume sidecar.
pub const PROGRESS_SUFFIX: &str = ".tessera-progress";
/// Pieces re-verified per batch on resume.
const RESUME_BATCH_PIECES: usize = 16;

/// Output failures.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("output {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("SHA-256 of the downloaded file is {actual}, expected {expected}; the file was removed")]
    Mismatch { expected: String, actual: String },
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

/// The partial output of one download.
#[derive(Debug)]
pub struct Output {
    final_path: PathBuf,
    partial_path: PathBuf,
    progress_path: PathBuf,
    file: File,
    identity: Option<Identity>,
    verified: Vec<bool>,
    unsaved: u32,
    save_every: u32,
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
    /// Opens the partial file for `piece_count` pieces of `content_length` bytes.
    ///
    /// With `resume` (identity and hashes), verified pieces of an earlier run are kept when they
    /// still hash right; without it any earlier partial file is started over.
    pub fn open(
        final_path: &Path,
        content_length: u64,
        piece_count: u64,
        resume: Option<(Identity, &HashFile)>,
        save_every: u32,
    ) -> Result<Output, OutputError> {
        let partial_path = with_suffix(final_path, PARTIAL_SUFFIX);
        let progress_path = with_suffix(final_path, PROGRESS_SUFFIX);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&partial_path)
            .map_err(io(&partial_path))?;
        let mut output = Output {
            final_path: final_path.to_path_buf(),
            partial_path,
            progress_path,
            file,
            identity: None,
            verified: vec![false; piece_count as usize],
            unsaved: 0,
            save_every: save_every.max(1),
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
        output.file.set_len(content_length).map_err(io(&output.partial_path))?;
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

    /// Writes a verified piece's bytes at `offset`.
    pub fn write_piece(&mut self, piece: u64, offset: u64, bytes: &[u8]) -> Result<(), OutputError> {
        self.file.write_all_at(bytes, offset).map_err(io(&self.partial_path))?;
        self.verified[piece as usize] = true;
        self.unsaved += 1;
        if self.unsaved >= self.save_every {
            self.save()?;
        }
        Ok(())
    }

    /// Records progress in the sidecar (resumable downloads only): data first, then the list.
    pub fn save(&mut self) -> Result<(), OutputError> {
        self.unsaved = 0;
        let Some(identity) = &self.identity else { return Ok(()) };
        self.file.sync_data().map_err(io(&self.partial_path))?;
        let sidecar = Sidecar { version: 1, identity: identity.clone(), verified: self.verified_pieces().collect() };
        let temporary = with_suffix(&self.progress_path, ".tmp");
        let mut file = File::create(&temporary).map_err(io(&temporary))?;
        file.write_all(&serde_json::to_vec(&sidecar).expect("sidecar serializes")).map_err(io(&temporary))?;
        std::fs::rename(&temporary, &self.progress_path).map_err(io(&self.progress_path))
    }

    /// Checks the whole file against `expected` (if any) and renames it into place; on mismatch
    /// the partial file and sidecar are removed and nothing appears under the final name.
    pub fn finish(self, expected: Option<Digest>) -> Result<Option<Digest>, OutputError> {
        self.file.sync_all().map_err(io(&self.partial_path))?;
        let mut actual = None;
        if let Some(expected) = expected {
            let digest = whole_file_sha256(&self.partial_path).map_err(io(&self.partial_path))?;
            if digest != expected {
                let _ = std::fs::remove_file(&self.partial_path);
                let _ = std::fs::remove_file(&self.progress_path);
                return Err(OutputError::Mismatch { expected: hex::encode(expected), actual: hex::encode(digest) });
            }
            actual = Some(digest);
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

/// SHA-256 of a whole file, streamed.
pub fn whole_file_sha256(path: &Path) -> std::io::Result<Digest> {
    let mut file = File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let count = file.read(&mut buffer)?;
        if count == 0 {
            return Ok(hasher.finalize().into());
        }
        hasher.update(&buffer[..count]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::PieceSize;
    use crate::hash::hash_piece;

    fn content() -> (Vec<u8>, HashFile) {
        let bytes: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
        let size = PieceSize::new(65536).unwrap();
        let digests = bytes.chunks(65536).map(hash_piece).collect();
        (bytes.clone(), HashFile::new(size, bytes.len() as u64, digests).unwrap())
    }

    fn identity() -> Identity {
        Identity { content_id: "c".into(), content_length: 150_000, piece_size: 65536, hashfile_sha256: "h".into() }
    }

    #[test]
    fn resume_keeps_only_pieces_that_still_hash_right_then_renames() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.bin");
        let (bytes, hashes) = content();
        let mut output = Output::open(&target, 150_000, 3, Some((identity(), &hashes)), 1).unwrap();
        output.write_piece(0, 0, &bytes[..65536]).unwrap();
        output.write_piece(2, 131072, &bytes[131072..]).unwrap();
        drop(output);
        // Corrupt piece 2 behind the sidecar's back.
        let partial = with_suffix(&target, PARTIAL_SUFFIX);
        File::options().write(true).open(&partial).unwrap().write_all_at(b"X", 131072).unwrap();
        let mut output = Output::open(&target, 150_000, 3, Some((identity(), &hashes)), 1).unwrap();
        assert_eq!(output.verified_pieces().collect::<Vec<_>>(), vec![0]);
        output.write_piece(1, 65536, &bytes[65536..131072]).unwrap();
        output.write_piece(2, 131072, &bytes[131072..]).unwrap();
        assert!(!target.exists());
        let digest = output.finish(Some(crate::content::manifest::sha256(&bytes))).unwrap();
        assert!(digest.is_some());
        assert_eq!(std::fs::read(&target).unwrap(), bytes);
        assert!(!partial.exists() && !with_suffix(&target, PROGRESS_SUFFIX).exists());
    }

    #[test]
    fn another_content_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.bin");
        let (bytes, hashes) = content();
        let mut output = Output::open(&target, 150_000, 3, Some((identity(), &hashes)), 1).unwrap();
        output.write_piece(0, 0, &bytes[..65536]).unwrap();
        drop(output);
        let other = Identity { content_id: "d".into(), ..identity() };
        let output = Output::open(&target, 150_000, 3, Some((other, &hashes)), 1).unwrap();
        assert_eq!(output.verified_pieces().count(), 0);
    }

    #[test]
    fn mismatch_removes_everything() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.bin");
        let mut output = Output::open(&target, 3, 1, None, 1).unwrap();
        output.write_piece(0, 0, b"abc").unwrap();
        let error = output.finish(Some([0; 32])).unwrap_err();
        assert!(matches!(error, OutputError::Mismatch { .. }), "{error}");
        assert!(!target.exists() && !with_suffix(&target, PARTIAL_SUFFIX).exists());
    }
}
