//! What the data plane may serve, as one worker sees it: catalog entries whose hash file matches
//! its manifest (rule 5 of `docs/rules.md`: no verified metadata, never offered), and where their pieces are.
//!
//! Each worker owns its [`Library`] outright (no lock, no shared reference counts on the hot
//! path); it starts from the catalog snapshot taken at startup and looks ids it does not know up
//! on disk again, at most once per `catalog_recheck_ms`.
//!
//! Pieces are found by the digests of the content's own hash file, and a response pins every
//! piece through one [`Content`]: it is built from one hash file, never from two versions.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use crate::catalog::{Catalog, CatalogError};
use crate::content::{decide, ContentId, Digest, Mode, PieceSize, SimpleReason};
use crate::http::conditional::format_date;
use crate::http::DigestTag;
use crate::store::{PieceGuard, PieceRef, Store};

/// Why a catalog entry is not served.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("{id}: manifest has no hash file beside it")]
    NoHashFile { id: ContentId },
    /// The same check a download makes (rule 2): anything a download would take to Simple mode.
    #[error("{id}: {reason}")]
    Unverified { id: ContentId, reason: SimpleReason },
}

/// A servable content: verified metadata from the catalog.
#[derive(Debug, Clone)]
pub struct Content {
    pub id: ContentId,
    /// Length of the content in bytes.
    pub length: u64,
    pub piece_size: PieceSize,
    /// The raw hash file, served on `/hashfile`.
    pub hashfile: Arc<[u8]>,
    /// The SHA-256 of each piece, from the hash file (a piece's `ETag`).
    pub digests: Arc<[Digest]>,
    /// The content's (and its hash file's) `ETag`: the hash file's SHA-256, so a republished id
    /// with other bytes gets another tag.
    pub etag: DigestTag,
    /// `Last-Modified`: the manifest file's modification time in whole seconds (written once per
    /// publish, so stable across restarts).
    pub last_modified_s: u64,
    /// `last_modified_s` as an IMF-fixdate.
    pub last_modified: [u8; 29],
}

impl Content {
    /// Loads `id` from the catalog; `Ok(None)` when it has no manifest.
    pub fn load(catalog: &Catalog, id: &ContentId) -> Result<Option<Content>, ContentError> {
        let Some(manifest) = catalog.read_manifest(id)? else { return Ok(None) };
        let hashfile = catalog.read_hashfile(id)?.ok_or_else(|| ContentError::NoHashFile { id: id.clone() })?;
        let hashes = match decide(Ok(&manifest), Ok(&hashfile)) {
            Mode::P2p { hashes } => hashes,
            Mode::Simple { reason } => return Err(ContentError::Unverified { id: id.clone(), reason }),
        };
        let etag = DigestTag::new(&crate::hash::sha256(&hashfile));
        let manifest_path = catalog.manifest_path(id);
        let modified = std::fs::metadata(&manifest_path)
            .and_then(|metadata| metadata.modified())
            .map_err(|source| CatalogError::Io { path: manifest_path, source })?;
        let last_modified_s = modified.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs());
        Ok(Some(Content {
            id: id.clone(),
            length: hashes.content_length(),
            piece_size: hashes.piece_size(),
            hashfile: hashfile.into(),
            digests: hashes.digests().into(),
            etag,
            last_modified_s,
            last_modified: format_date(UNIX_EPOCH + Duration::from_secs(last_modified_s)),
        }))
    }

    /// Every servable content of the catalog; entries that fail verification are returned apart.
    pub fn load_all(catalog: &Catalog) -> Result<(Vec<Content>, Vec<ContentError>), CatalogError> {
        let mut contents = Vec::new();
        let mut refused = Vec::new();
        for id in catalog.list()? {
            match Content::load(catalog, &id) {
                Ok(Some(content)) => contents.push(content),
                Ok(None) => {}
                Err(error) => refused.push(error),
            }
        }
        Ok((contents, refused))
    }

    /// Number of pieces.
    pub fn piece_count(&self) -> u64 {
        self.piece_size.piece_count(self.length)
    }
}

struct Cached {
    content: Option<Rc<Content>>,
    checked: Instant,
    /// When this worker last asked for the content's metadata to be refreshed (a cache box).
    refreshed: Option<Instant>,
}

/// One worker's view of the catalog and the store.
pub struct Library {
    catalog: Catalog,
    store: Arc<Store>,
    entries: HashMap<ContentId, Cached>,
    entries_max: usize,
    /// Where pieces were found, by digest: valid for every content and version that names them.
    pieces: HashMap<Digest, PieceRef>,
    pieces_max: usize,
    recheck: Duration,
}

impl Library {
    /// A library seeded with the contents loaded at startup.
    pub fn new(
        catalog: Catalog,
        store: Arc<Store>,
        seed: &[Content],
        entries_max: usize,
        recheck: Duration,
        now: Instant,
    ) -> Library {
        let mut library = Library {
            catalog,
            store,
            entries: HashMap::with_capacity(seed.len().min(entries_max)),
            entries_max: entries_max.max(1),
            pieces: HashMap::new(),
            pieces_max: 1 << 16,
            recheck,
        };
        for content in seed.iter().take(library.entries_max) {
            library.entries.insert(
                content.id.clone(),
                Cached { content: Some(Rc::new(content.clone())), checked: now, refreshed: None },
            );
        }
        library
    }

    /// The servable content `id`, if any.
    pub fn content(&mut self, id: &ContentId, now: Instant) -> Option<Rc<Content>> {
        if let Some(cached) = self.entries.get(id) {
            if cached.content.is_some() || now.saturating_duration_since(cached.checked) < self.recheck {
                return cached.content.clone();
            }
        }
        let content = match Content::load(&self.catalog, id) {
            Ok(content) => content.map(Rc::new),
            Err(error) => {
                tracing::warn!(%error, "catalog entry is not served");
                None
            }
        };
        if self.entries.len() >= self.entries_max && !self.entries.contains_key(id) {
            // Rebuilt lazily from disk; a bounded cache beats an unbounded one under id scans.
            self.entries.clear();
        }
        self.entries.insert(id.clone(), Cached { content: content.clone(), checked: now, refreshed: None });
        content
    }

    /// Drops what is cached of `id`, so the next lookup reads the catalog (a fill just wrote it).
    pub fn forget(&mut self, id: &ContentId) {
        self.entries.remove(id);
    }

    /// Drops every cached entry (the catalog changed in ways this worker did not follow).
    pub fn forget_all(&mut self) {
        self.entries.clear();
    }

    /// Whether a cache box should ask for `id`'s metadata again: its catalog entry is at least
    /// `every` old (by the manifest's mtime, `wall_s` being now), and this worker has not asked
    /// within `every`. When due, the ask is counted as made.
    pub fn refresh_due(&mut self, id: &ContentId, now: Instant, wall_s: u64, every: Duration) -> bool {
        let Some(cached) = self.entries.get_mut(id) else { return false };
        let Some(content) = &cached.content else { return false };
        let due = match cached.refreshed {
            Some(asked) => now.saturating_duration_since(asked) >= every,
            None => Duration::from_secs(wall_s.saturating_sub(content.last_modified_s)) >= every,
        };
        if due {
            cached.refreshed = Some(now);
        }
        due
    }

    /// Pins piece `index` of `content` if the store holds the digest its hash file names.
    pub fn pin(&mut self, content: &Content, index: u64) -> Option<PieceGuard> {
        let (digest, expected) = piece_of(content, index)?;
        if let Some(piece) = self.pieces.get(digest) {
            if let Some(guard) = self.store.pin(piece) {
                return (guard.length() == expected).then_some(guard);
            }
        }
        let piece = self.lookup(digest, expected)?;
        self.store.pin(&piece)
    }

    /// Whether the store holds piece `index` of `content` (without pinning it).
    pub fn has_piece(&mut self, content: &Content, index: u64) -> bool {
        let Some((digest, expected)) = piece_of(content, index) else { return false };
        self.pieces.contains_key(digest) || self.lookup(digest, expected).is_some()
    }

    fn lookup(&mut self, digest: &Digest, expected: u32) -> Option<PieceRef> {
        let piece = self.store.lookup(digest).filter(|p| p.length() == expected);
        match &piece {
            Some(piece) => {
                if self.pieces.len() >= self.pieces_max {
                    // Rebuilt lazily from the store: a bounded cache beats an unbounded one.
                    self.pieces.clear();
                }
                self.pieces.insert(*digest, piece.clone());
            }
            None => {
                self.pieces.remove(digest);
            }
        }
        piece
    }
}

/// The digest and length of piece `index` of `content`; `None` past its end.
fn piece_of(content: &Content, index: u64) -> Option<(&Digest, u32)> {
    let expected = content.piece_size.piece_length(content.length, index)?;
    Some((content.digests.get(usize::try_from(index).ok()?)?, expected))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreConfig;
    use crate::publish::{publish, PublishRequest};

    const PIECE: usize = 64 * 1024;

    fn publish_version(dir: &std::path::Path, catalog: &Catalog, store: &Store, bytes: &[u8]) {
        let file = dir.join("x.bin");
        std::fs::write(&file, bytes).unwrap();
        let request = PublishRequest {
            file,
            id: ContentId::parse("x").unwrap(),
            piece_size: PieceSize::new(PIECE as u32).unwrap(),
            sources: vec![],
            hashfile_urls: vec![],
            whole_sha256: false,
        };
        publish(&request, catalog, Some(store), &mut |_| {}).unwrap();
    }

    /// A response holds one `Content`: every piece it pins is its own hash file's, even when the
    /// id is republished meanwhile; a reload sees only the new version.
    #[test]
    fn pieces_are_pinned_by_the_digests_of_the_hash_file_a_content_was_loaded_from() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::new(dir.path().join("catalog"));
        let store = Arc::new(Store::open(&dir.path().join("store"), &StoreConfig::default()).unwrap());
        let first: Vec<u8> = (0..PIECE * 2).map(|i| (i % 251) as u8).collect();
        let second: Vec<u8> = first.iter().map(|b| b ^ 1).collect();
        publish_version(dir.path(), &catalog, &store, &first);
        let id = ContentId::parse("x").unwrap();
        let now = Instant::now();
        let old = Rc::new(Content::load(&catalog, &id).unwrap().unwrap());
        let mut library = Library::new(catalog.clone(), store.clone(), &[], 8, Duration::ZERO, now);
        assert_eq!(library.pin(&old, 0).unwrap().bytes(), &first[..PIECE]);
        publish_version(dir.path(), &catalog, &store, &second);
        assert_eq!(library.pin(&old, 1).unwrap().bytes(), &first[PIECE..], "an old response got new bytes");
        let new = Content::load(&catalog, &id).unwrap().unwrap();
        for index in 0..2 {
            let at = index as usize * PIECE;
            assert_eq!(library.pin(&new, index).unwrap().bytes(), &second[at..at + PIECE], "piece {index}");
        }
        assert!(library.pin(&new, 2).is_none(), "past the end");
    }
}
