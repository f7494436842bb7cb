//! The index log: append-only commit/evict records, replayed on open, compacted when mostly dead.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::store::record::{Record, RECORD_SIZE};

/// File name of the index log inside the store directory.
pub const INDEX_LOG_NAME: &str = "index.log";

/// An open index log.
#[derive(Debug)]
pub struct IndexLog {
    path: PathBuf,
    file: File,
    record_count: u64,
}

impl IndexLog {
    /// Opens the log, returns it with every intact record; a torn or corrupt tail is cut off.
    pub fn open(dir: &Path) -> std::io::Result<(IndexLog, Vec<Record>)> {
        let path = dir.join(INDEX_LOG_NAME);
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let mut records = Vec::with_capacity(bytes.len() / RECORD_SIZE);
        for chunk in bytes.chunks(RECORD_SIZE) {
            match Record::decode(chunk) {
                Some(record) => records.push(record),
                None => break,
            }
        }
        let intact_bytes = (records.len() * RECORD_SIZE) as u64;
        if intact_bytes != bytes.len() as u64 {
            tracing::warn!(
                path = %path.display(),
                dropped_bytes = bytes.len() as u64 - intact_bytes,
                "index log has a torn or corrupt tail; cutting it off"
            );
            file.set_len(intact_bytes)?;
            file.sync_all()?;
        }
        let record_count = records.len() as u64;
        Ok((IndexLog { path, file, record_count }, records))
    }

    /// Appends records and makes them durable before returning.
    pub fn append(&mut self, records: &[Record]) -> std::io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut bytes = Vec::with_capacity(records.len() * RECORD_SIZE);
        for record in records {
            bytes.extend_from_slice(&record.encode());
        }
        self.file.write_all(&bytes)?;
        self.file.sync_data()?;
        self.record_count += records.len() as u64;
        Ok(())
    }

    /// Records in the log, live or dead.
    pub fn record_count(&self) -> u64 {
        self.record_count
    }

    /// Replaces the log with `live` records: written beside it, synced, then renamed over it.
    pub fn rewrite(&mut self, live: &[Record]) -> std::io::Result<()> {
        let temporary = self.path.with_extension("log.compact");
        {
            let mut out = File::create(&temporary)?;
            let mut bytes = Vec::with_capacity(live.len() * RECORD_SIZE);
            for record in live {
                bytes.extend_from_slice(&record.encode());
            }
            out.write_all(&bytes)?;
            out.sync_all()?;
        }
        std::fs::rename(&temporary, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        self.file = OpenOptions::new().read(true).append(true).open(&self.path)?;
        self.record_count = live.len() as u64;
        Ok(())
    }
}
