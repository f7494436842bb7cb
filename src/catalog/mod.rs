//! The catalog: `DIR/catalog/ID.hashfile` and `DIR/catalog/ID.manifest.json` for every published content.
//!
//! Files are replaced atomically (written beside, synced, renamed), the hash file before the
//! manifest, so a reader that finds a manifest also finds the hash file it names.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::content::{ContentId, Manifest, ManifestError};

/// Catalog failures.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog I/O on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("catalog manifest {path} is invalid: {source}")]
    BadManifest { path: PathBuf, source: ManifestError },
}

/// A catalog directory.
#[derive(Debug, Clone)]
pub struct Catalog {
    dir: PathBuf,
}

impl Catalog {
    /// The catalog in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Catalog {
        Catalog { dir: dir.into() }
    }

    /// The catalog directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of a content's hash file.
    pub fn hashfile_path(&self, id: &ContentId) -> PathBuf {
        self.dir.join(format!("{id}.hashfile"))
    }

    /// Path of a content's manifest.
    pub fn manifest_path(&self, id: &ContentId) -> PathBuf {
        self.dir.join(format!("{id}.manifest.json"))
    }

    /// Publishes a content's metadata: hash file first, manifest last.
    pub fn write(&self, id: &ContentId, hashfile: &[u8], manifest: &Manifest) -> Result<(), CatalogError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| CatalogError::Io { path: self.dir.clone(), source })?;
        write_atomically(&self.hashfile_path(id), hashfile)?;
        write_atomically(&self.manifest_path(id), manifest.to_json().as_bytes())
    }

    /// The raw hash file of `id`, if published.
    pub fn read_hashfile(&self, id: &ContentId) -> Result<Option<Vec<u8>>, CatalogError> {
        read_optional(&self.hashfile_path(id))
    }

    /// The manifest of `id`, if published.
    pub fn read_manifest(&self, id: &ContentId) -> Result<Option<Manifest>, CatalogError> {
        let path = self.manifest_path(id);
        match read_optional(&path)? {
            None => Ok(None),
            Some(bytes) => {
                Manifest::parse(&bytes).map(Some).map_err(|source| CatalogError::BadManifest { path, source })
            }
        }
    }

    /// Ids with a manifest, sorted.
    pub fn list(&self) -> Result<Vec<ContentId>, CatalogError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(CatalogError::Io { path: self.dir.clone(), source }),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| CatalogError::Io { path: self.dir.clone(), source })?;
            let name = entry.file_name();
            if let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".manifest.json")) {
                if let Ok(id) = ContentId::parse(id) {
                    ids.push(id);
                }
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Removes a content's metadata (manifest first, so readers never see a manifest without its hash file).
    pub fn remove(&self, id: &ContentId) -> Result<bool, CatalogError> {
        let mut removed = false;
        for path in [self.manifest_path(id), self.hashfile_path(id)] {
            match std::fs::remove_file(&path) {
                Ok(()) => removed = true,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(CatalogError::Io { path, source }),
            }
        }
        Ok(removed)
    }
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, CatalogError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CatalogError::Io { path: path.to_path_buf(), source }),
    }
}

/// Writes `bytes` to `path` so that readers see the old file or the new one, never a part.
///
/// The new file is a `tempfile` beside `path` (in `.` for a bare name), synced, then persisted
/// (renamed) over it. A FIFO or device at `path` is written to as it is, never replaced.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), CatalogError> {
    let io = |source| CatalogError::Io { path: path.to_path_buf(), source };
    if let Ok(metadata) = std::fs::metadata(path) {
        if !metadata.is_file() && !metadata.is_dir() {
            return std::fs::OpenOptions::new().write(true).open(path).and_then(|mut f| f.write_all(bytes)).map_err(io);
        }
    }
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut file = tempfile::Builder::new().prefix(".tessera-tmp").tempfile_in(dir).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.as_file().sync_all().map_err(io)?;
    file.persist(path).map_err(|error| io(error.error))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::new(dir.path().join("catalog"));
        let id = ContentId::parse("a").unwrap();
        assert_eq!(catalog.read_manifest(&id).unwrap(), None);
        assert!(catalog.list().unwrap().is_empty());
        let manifest = Manifest {
            version: 1,
            content_id: "a".into(),
            content_length: 0,
            piece_size: 1 << 20,
            hashfile_sha256: "00".repeat(32),
            hashfile_urls: vec![],
            sources: vec![],
            sha256: None,
        };
        catalog.write(&id, b"hf", &manifest).unwrap();
        assert_eq!(catalog.read_manifest(&id).unwrap(), Some(manifest));
        assert_eq!(catalog.read_hashfile(&id).unwrap().unwrap(), b"hf");
        assert_eq!(catalog.list().unwrap(), vec![id.clone()]);
        assert!(catalog.remove(&id).unwrap());
        assert!(catalog.list().unwrap().is_empty());
    }
}
