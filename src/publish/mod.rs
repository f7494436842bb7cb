//! Publishing: hash a file into pieces, write its hash file and manifest, import its pieces.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::catalog::{Catalog, CatalogError};
use crate::content::{ContentId, HashFile, Manifest, PieceSize};
use crate::hash::{self, sha256};
use crate::store::{NewPiece, Store, StoreError};

/// Pieces read, hashed and stored per batch (bounds publish's memory to batch × piece size).
pub const PUBLISH_BATCH_PIECES: usize = 32;

/// What to publish and how.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    pub file: PathBuf,
    pub id: ContentId,
    pub piece_size: PieceSize,
    pub sources: Vec<String>,
    pub hashfile_urls: Vec<String>,
    /// Also compute the whole-file SHA-256 and put it in the manifest.
    pub whole_sha256: bool,
}

/// What publishing did.
#[derive(Debug, Clone)]
pub struct PublishReport {
    pub manifest: Manifest,
    pub piece_count: u64,
    pub pieces_stored: usize,
    pub pieces_already_present: usize,
}

/// Publish failures, each naming the file or id at fault.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} changed size while being published ({expected} bytes expected, {found} read)")]
    Changed { path: PathBuf, expected: u64, found: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// Hashes `request.file`, imports its pieces into `store` (when given) and writes the catalog.
/// `progress` is called with the bytes done so far.
pub fn publish(
    request: &PublishRequest,
    catalog: &Catalog,
    store: Option<&Store>,
    progress: &mut dyn FnMut(u64),
) -> Result<PublishReport, PublishError> {
    let path = &request.file;
    let mut file = File::open(path).map_err(|source| PublishError::Open { path: path.clone(), source })?;
    let metadata = file.metadata().map_err(|source| PublishError::Open { path: path.clone(), source })?;
    if !metadata.is_file() {
        return Err(PublishError::NotAFile { path: path.clone() });
    }
    let content_length = metadata.len();
    let piece_bytes = request.piece_size.bytes() as usize;
    let mut buffer = vec![0u8; piece_bytes * PUBLISH_BATCH_PIECES];
    let mut digests = Vec::with_capacity(request.piece_size.piece_count(content_length) as usize);
    let mut whole = request.whole_sha256.then(hash::Hasher::new);
    let threads = hash::bulk_threads();
    let (mut done, mut stored, mut already) = (0u64, 0usize, 0usize);
    loop {
        let filled =
            read_full(&mut file, &mut buffer).map_err(|source| PublishError::Read { path: path.clone(), source })?;
        if filled == 0 {
            break;
        }
        let pieces: Vec<&[u8]> = buffer[..filled].chunks(piece_bytes).collect();
        let batch = hash::hash_batch_parallel(&pieces, threads);
        if let Some(whole) = whole.as_mut() {
            whole.update(&buffer[..filled]);
        }
        if let Some(store) = store {
            let new: Vec<NewPiece<'_>> =
                pieces.iter().zip(&batch).map(|(bytes, digest)| NewPiece { bytes, digest: *digest }).collect();
            let report = store.ingest(request.piece_size, &new)?;
            stored += report.stored;
            already += report.already_present;
        }
        digests.extend(batch);
        done += filled as u64;
        progress(done);
        if filled < buffer.len() {
            break;
        }
    }
    if done != content_length {
        return Err(PublishError::Changed { path: path.clone(), expected: content_length, found: done });
    }
    let hashes = HashFile::new(request.piece_size, content_length, digests)
        .expect("digest count follows from the bytes read, which equal the length");
    let hashfile = hashes.to_bytes();
    let manifest = Manifest {
        version: crate::content::manifest::MANIFEST_VERSION,
        content_id: request.id.to_string(),
        content_length,
        piece_size: request.piece_size.bytes(),
        hashfile_sha256: hex::encode(sha256(&hashfile)),
        hashfile_urls: request.hashfile_urls.clone(),
        sources: request.sources.clone(),
        sha256: whole.map(|w| hex::encode(w.finish())),
    };
    catalog.write(&request.id, &hashfile, &manifest)?;
    Ok(PublishReport {
        manifest,
        piece_count: hashes.piece_count(),
        pieces_stored: stored,
        pieces_already_present: already,
    })
}

/// Reads until `buffer` is full or the file ends; returns the bytes read.
fn read_full(file: &mut File, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

/// Default data directory, relative to where tessera runs.
pub fn default_data_dir() -> &'static Path {
    Path::new("tessera-data")
}
