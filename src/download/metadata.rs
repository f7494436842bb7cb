//! Metadata first (rules 1, 2 and 5): the manifest, then a hash file that matches it, then the mode.
//!
//! The service sits behind [`MetadataSource`] so tests use in-process fakes; in production it is
//! the control plane's TLS client (`service_metadata`).

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::ClientConfig;

use crate::config::DownloadConfig;
use crate::content::{decide, ContentId, Manifest, MetadataFailure, Mode};
use crate::download::fetch::{fetch, FetchLimits};
use crate::hash::sha256;
use crate::http::url::HttpUrl;

/// Where manifests, hash files and peer lists come from.
pub trait MetadataSource {
    /// The manifest of `id` (`NotFound` when the service has no such content).
    fn manifest(&self, id: &ContentId) -> Result<Manifest, MetadataFailure>;
    /// The raw hash file of `id`, unverified.
    fn hashfile(&self, id: &ContentId) -> Result<Vec<u8>, MetadataFailure>;
    /// Peers of `group` that hold `id`.
    fn peers(&self, id: &ContentId, group: &str) -> Result<Vec<SocketAddr>, MetadataFailure>;
}

/// No metadata service: every download runs in Simple mode.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoService;

impl MetadataSource for NoService {
    fn manifest(&self, _: &ContentId) -> Result<Manifest, MetadataFailure> {
        Err(MetadataFailure::Fetch("no metadata service given".into()))
    }
    fn hashfile(&self, _: &ContentId) -> Result<Vec<u8>, MetadataFailure> {
        Err(MetadataFailure::Fetch("no metadata service given".into()))
    }
    fn peers(&self, _: &ContentId, _: &str) -> Result<Vec<SocketAddr>, MetadataFailure> {
        Ok(Vec::new())
    }
}

/// What the metadata step found.
#[derive(Debug, Clone)]
pub struct Metadata {
    /// The manifest, when one was had and is for this content.
    pub manifest: Option<Manifest>,
    /// P2P with verified hashes, or Simple with the reason.
    pub mode: Mode,
    /// Where the verified hash file came from (`service`, a URL, or a peer address).
    pub hashfile_origin: Option<String>,
}

/// Gets the manifest, then a hash file, and decides the mode.
///
/// The hash file is taken from the service, then the manifest's hash-file URLs, until one matches
/// the manifest. Peers are asked only when none of those had any copy: a copy that fails
/// verification means the metadata cannot be trusted, and Simple mode asks nothing of peers.
pub fn gather(
    id: &ContentId,
    source: &dyn MetadataSource,
    peers: &[SocketAddr],
    tls: &Arc<ClientConfig>,
    config: &DownloadConfig,
) -> Metadata {
    let manifest = source.manifest(id).and_then(|manifest| {
        if manifest.content_id != id.as_str() {
            return Err(MetadataFailure::Fetch(format!(
                "the service sent the manifest of {:?} when asked for {id:?}",
                manifest.content_id
            )));
        }
        manifest.validate().map(|()| manifest).map_err(|e| MetadataFailure::Fetch(format!("invalid manifest: {e}")))
    });
    let manifest = match manifest {
        Ok(manifest) => manifest,
        Err(failure) => {
            let mode = decide(Err(failure), Err(MetadataFailure::NotFound));
            return Metadata { manifest: None, mode, hashfile_origin: None };
        }
    };
    let limits = FetchLimits { timeout_ms: config.metadata_timeout_ms, body_bytes_max: config.metadata_bytes_max };
    let expected = manifest.hashfile_digest().ok();
    let mut last: Result<Vec<u8>, MetadataFailure> = Err(MetadataFailure::NotFound);
    let mut origin = None;
    // The service first, then the manifest's URLs (`None` stands for the service).
    let candidates = std::iter::once(None).chain(manifest.hashfile_urls.iter().map(Some));
    let mut had_a_copy = false;
    for candidate in candidates {
        let result = match candidate {
            None => source.hashfile(id),
            Some(url) => fetch_document(url, tls, limits),
        };
        had_a_copy |= result.is_ok();
        let verified = result.as_ref().is_ok_and(|bytes| Some(sha256(bytes)) == expected);
        // Keep the first copy that failed verification: its reason is the one to report.
        if verified || last.is_err() {
            last = result;
            origin = Some(candidate.map_or_else(|| "service".to_string(), Clone::clone));
        }
        if verified {
            break;
        }
    }
    let verified = last.as_ref().is_ok_and(|bytes| Some(sha256(bytes)) == expected);
    if !verified && !had_a_copy {
        for peer in peers.iter().take(config.hashfile_peers_max as usize) {
            let url = format!("http://{peer}/v1/content/{id}/hashfile");
            let result = fetch_document(&url, tls, limits);
            if result.as_ref().is_ok_and(|bytes| Some(sha256(bytes)) == expected) {
                last = result;
                origin = Some(peer.to_string());
                break;
            }
        }
    }
    let mode = decide(Ok(&manifest), last.as_deref().map_err(Clone::clone));
    let hashfile_origin = matches!(mode, Mode::P2p { .. }).then_some(origin).flatten();
    Metadata { manifest: Some(manifest), mode, hashfile_origin }
}

/// GETs a small document; 404 is `NotFound`, anything else but 200 a fetch failure.
pub fn fetch_document(url: &str, tls: &Arc<ClientConfig>, limits: FetchLimits) -> Result<Vec<u8>, MetadataFailure> {
    let parsed = HttpUrl::parse(url).map_err(|e| MetadataFailure::Fetch(e.to_string()))?;
    let fetched = fetch(&parsed, "GET", tls, limits).map_err(|e| MetadataFailure::Fetch(e.to_string()))?;
    match fetched.head.status {
        200 => Ok(fetched.body),
        404 => Err(MetadataFailure::NotFound),
        status => Err(MetadataFailure::Fetch(format!("{url}: HTTP {status}"))),
    }
}
