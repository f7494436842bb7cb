//! The index log: a format header, then append-only commit/evict records, replayed on open,
//! compacted when mostly dead. A format-1 log is read for migration and replaced on compaction.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::store::record::{self, Record, RECORD_SIZE, STORE_FORMAT, V1_MAGIC, V1_RECORD_SIZE};
use crate::store::{io_error, StoreError};

/// File name of the index log inside the store directory.
pub const INDEX_LOG_NAME: &str = "index.log";

/// The format an opened log was in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// [`STORE_FORMAT`]: appendable as is.
    Current,
    /// Format 1: its records were converted; the log must be rewritten before any append.
    V1,
}

/// An open index log.
#[derive(Debug)]
pub struct IndexLog {
    path: PathBuf,
    file: File,
    record_count: u64,
}

impl IndexLog {
    /// Opens the log (creating a current-format one in an empty store) and returns it with every
    /// intact record; a torn or corrupt tail is cut off. A log of another format is refused.
    pub fn open(dir: &Path) -> Result<(IndexLog, Vec<Record>, LogFormat), StoreError> {
        let path = dir.join(INDEX_LOG_NAME);
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(&path).map_err(io_error(&path))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io_error(&path))?;
        let mut log = IndexLog { path, file, record_count: 0 };
        if bytes.is_empty() {
            log.rewrite(&[]).map_err(io_error(&log.path))?;
            return Ok((log, Vec::new(), LogFormat::Current));
        }
        if bytes.starts_with(&V1_MAGIC) {
            // Left untouched (torn tail included) until the rewrite replaces it atomically.
            let records = bytes.chunks(V1_RECORD_SIZE).map_while(Record::decode_v1).collect();
            return Ok((log, records, LogFormat::V1));
        }
        match record::decode_header(&bytes) {
            Some(STORE_FORMAT) => {}
            Some(format) if format > STORE_FORMAT => {
                return Err(StoreError::NewerFormat { path: dir.to_path_buf(), format })
            }
            _ => return Err(StoreError::UnknownFormat { path: log.path }),
        }
        let records: Vec<Record> = bytes[RECORD_SIZE..].chunks(RECORD_SIZE).map_while(Record::decode).collect();
        let intact_bytes = ((records.len() + 1) * RECORD_SIZE) as u64;
        if intact_bytes != bytes.len() as u64 {
            tracing::warn!(
                path = %log.path.display(),
                dropped_bytes = bytes.len() as u64 - intact_bytes,
                "index log has a torn or corrupt tail; cutting it off"
            );
            log.file.set_len(intact_bytes).and_then(|()| log.file.sync_all()).map_err(io_error(&log.path))?;
        }
        log.record_count = records.len() as u64;
        Ok((log, records, LogFormat::Current))
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

    /// Replaces the log with a current-format header and `live` records: written beside it,
    /// synced, then renamed over it, so a crash leaves either the old log or the new one.
    pub fn rewrite(&mut self, live: &[Record]) -> std::io::Result<()> {
        let temporary = self.path.with_extension("log.compact");
        {
            let mut out = File::create(&temporary)?;
            let mut bytes = Vec::with_capacity((live.len() + 1) * RECORD_SIZE);
            bytes.extend_from_slice(&record::encode_header(STORE_FORMAT));
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
