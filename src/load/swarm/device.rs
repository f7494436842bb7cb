//! One simulated device: the whole download workflow of `tessera get` (manifest over TLS, hash
//! file, peer matching, verified pieces), then its output checked piece by piece against the hash
//! file, then removed.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::config::DownloadConfig;
use crate::content::{ContentId, HashFile};
use crate::download::{get, GetError, GetRequest, ServiceMetadata, SourceStats};
use crate::hash::{hash_batch, BATCH_LANES};
use crate::tls::TlsClientOptions;

/// What a device is given.
pub struct DeviceSetup<'a> {
    pub service_url: &'a str,
    pub tls_options: &'a TlsClientOptions,
    pub tls: Arc<rustls::ClientConfig>,
    pub id: &'a ContentId,
    pub group: &'a str,
    /// Peers used besides the matched ones.
    pub peers: &'a [std::net::SocketAddr],
    pub hashes: &'a HashFile,
    pub config: &'a DownloadConfig,
    pub work_dir: &'a Path,
    /// Keep each completed output (`device-N.bin`) instead of removing it once checked.
    pub keep_outputs: bool,
}

/// How one device's download went.
#[derive(Debug, Clone)]
pub struct DeviceOutcome {
    pub index: u64,
    pub duration_us: u64,
    /// `p2p` or `simple` (empty when the download failed before the mode was known).
    pub mode: &'static str,
    /// Bytes of the content written (0 on failure).
    pub bytes: u64,
    /// Bytes of the output that do not match the hash file: pieces accepted although bad.
    pub bad_bytes: u64,
    /// What each source did (also on a failure the download could report).
    pub sources: Vec<SourceStats>,
    /// Why the download failed.
    pub error: Option<String>,
}

/// Runs device `index`'s download to a file of its own in the work dir and checks it.
pub fn run(setup: &DeviceSetup<'_>, index: u64) -> DeviceOutcome {
    let output = setup.work_dir.join(format!("device-{index}.bin"));
    let started = Instant::now();
    let mut outcome =
        DeviceOutcome { index, duration_us: 0, mode: "", bytes: 0, bad_bytes: 0, sources: Vec::new(), error: None };
    let metadata = match ServiceMetadata::new(setup.service_url, setup.tls_options.clone()) {
        Ok(metadata) => metadata,
        Err(error) => {
            outcome.error = Some(error.to_string());
            return outcome;
        }
    };
    let request = GetRequest {
        id: setup.id.clone(),
        group: setup.group.to_string(),
        peers: setup.peers.to_vec(),
        sources: Vec::new(),
        output: output.clone(),
        sha256: None,
        config: setup.config.clone(),
        tls: setup.tls.clone(),
    };
    let result = get(&request, &metadata, &mut |_| {});
    outcome.duration_us = started.elapsed().as_micros() as u64;
    match result {
        Ok(summary) => {
            outcome.mode = summary.mode;
            outcome.sources = summary.sources;
            outcome.bytes = summary.content_length;
            match bad_bytes(&output, setup.hashes) {
                Ok(bad) => outcome.bad_bytes = bad,
                Err(error) => outcome.error = Some(format!("cannot read the output {}: {error}", output.display())),
            }
        }
        Err(error) => {
            if let GetError::Exhausted { summary, .. } = &error {
                outcome.sources = summary.sources.clone();
            }
            outcome.error = Some(error.to_string());
        }
    }
    if outcome.error.is_some() || !setup.keep_outputs {
        remove_outputs(&output);
    }
    outcome
}

/// Bytes of the file at `path` that the hash file does not vouch for: every piece whose SHA-256
/// differs, and any length beyond or short of the content's.
pub fn bad_bytes(path: &Path, hashes: &HashFile) -> std::io::Result<u64> {
    let mut file = std::fs::File::open(path)?;
    let file_length = file.metadata()?.len();
    let content_length = hashes.content_length();
    let mut bad = file_length.abs_diff(content_length);
    let mut buffer = Vec::new();
    let mut first = 0;
    // A batch of pieces at a time: bounded memory, and `hash_batch` hashes them side by side.
    while first < hashes.piece_count() {
        let count = (hashes.piece_count() - first).min(BATCH_LANES as u64);
        let lengths: Vec<u64> =
            (first..first + count).map(|i| u64::from(hashes.piece_length(i).unwrap_or(0))).collect();
        buffer.resize(lengths.iter().sum::<u64>() as usize, 0);
        let read = read_full(&mut file, &mut buffer)?;
        let mut pieces = Vec::with_capacity(lengths.len());
        let mut at = 0usize;
        for length in &lengths {
            let end = at + *length as usize;
            pieces.push(&buffer[at.min(read)..end.min(read)]);
            at = end;
        }
        let digests = hash_batch(&pieces);
        for (offset, digest) in digests.iter().enumerate() {
            let index = first + offset as u64;
            if hashes.digest(index) != Some(digest) {
                // Bytes missing from a short file are counted once, in `bad` above.
                bad += pieces[offset].len() as u64;
            }
        }
        first += count;
    }
    Ok(bad)
}

/// Reads until `buffer` is full or the file ends; the count read.
fn read_full(file: &mut std::fs::File, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..])? {
            0 => break,
            count => filled += count,
        }
    }
    Ok(filled)
}

/// Removes a device's output and what a failed download leaves beside it.
fn remove_outputs(output: &Path) {
    for suffix in ["", ".tessera-partial", ".tessera-progress"] {
        let mut path = PathBuf::from(output);
        path.as_mut_os_string().push(suffix);
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::PieceSize;
    use crate::hash::sha256;

    const PIECE: usize = 65536;

    fn hashes_of(bytes: &[u8]) -> HashFile {
        let digests = bytes.chunks(PIECE).map(sha256).collect();
        HashFile::new(PieceSize::new(PIECE as u32).unwrap(), bytes.len() as u64, digests).unwrap()
    }

    #[test]
    fn an_exact_copy_has_no_bad_bytes_and_a_flipped_piece_counts_its_length() {
        let dir = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = (0..20 * PIECE + 100).map(|i| (i * 7 % 251) as u8).collect();
        let hashes = hashes_of(&bytes);
        let path = dir.path().join("out");
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(bad_bytes(&path, &hashes).unwrap(), 0);
        let mut flipped = bytes.clone();
        flipped[17 * PIECE + 5] ^= 1;
        flipped[20 * PIECE + 1] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert_eq!(bad_bytes(&path, &hashes).unwrap(), PIECE as u64 + 100);
    }

    #[test]
    fn a_short_file_counts_what_is_missing_and_the_cut_piece() {
        let dir = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = (0..3 * PIECE).map(|i| (i % 13) as u8).collect();
        let hashes = hashes_of(&bytes);
        let path = dir.path().join("out");
        std::fs::write(&path, &bytes[..2 * PIECE + 10]).unwrap();
        // PIECE - 10 bytes missing, and the 10 bytes of the cut third piece are not the piece.
        assert_eq!(bad_bytes(&path, &hashes).unwrap(), PIECE as u64 - 10 + 10);
    }
}
