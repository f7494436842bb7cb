//! Metadata expiry on a box: a worker that served an id past its expiry asks for a background
//! refresh; a new version (a changed hash file upstream) replaces the catalog entry, and the
//! workers, told through the link, serve it from then on.

use std::sync::Arc;

use crate::content::ContentId;
use crate::fill::ContentVersion;

use super::FillThread;

impl FillThread {
    /// A worker served `id` from the catalog past its expiry: refetch its metadata (nobody waits).
    pub(super) fn on_refresh(&mut self, id: &ContentId) {
        let now = self.now_ms();
        if self.meta.refresh(id, now) {
            tracing::debug!(%id, "metadata expired: fetching it again");
        }
    }

    /// A new version of an id came out of the metadata cache: it goes to the catalog unless the
    /// catalog holds these very documents (an entry from before a restart, found unchanged).
    pub(super) fn on_version(&mut self, version: &Arc<ContentVersion>) {
        let known = self.cataloged.get(&version.id).copied();
        if known.is_none() && self.catalog_holds(version) {
            self.cataloged.insert(version.id.clone(), version.version);
            return;
        }
        if known.is_some_and(|old| old != version.version) {
            tracing::info!(id = %version.id, version = version.version, "the upstream hash file changed: serving the new version");
        }
        if let Err(reason) = self.catalog_version(version) {
            tracing::warn!(id = %version.id, %reason, "a new version could not be cataloged; the old one is served");
        }
    }

    fn catalog_holds(&self, version: &ContentVersion) -> bool {
        let id = &version.id;
        let same_hashfile =
            self.catalog.read_hashfile(id).ok().flatten().is_some_and(|bytes| bytes == version.hashes.to_bytes());
        same_hashfile && self.catalog.read_manifest(id).ok().flatten().is_some_and(|m| m == version.manifest)
    }
}
