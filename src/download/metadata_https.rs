//! Adapter: the metadata service over HTTPS with the small blocking client in `fetch`.
//!
//! Stand-in for the control plane's `MetadataClient` (branch `control`); at merge this file
//! becomes a `MetadataSource` impl over that client and the rest of the download is unchanged.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::ClientConfig;
use serde::Deserialize;

use crate::content::{ContentId, Manifest, MetadataFailure};
use crate::download::fetch::FetchLimits;
use crate::download::metadata::{fetch_document, MetadataSource};
use crate::download::url::{HttpUrl, UrlError};

/// The metadata service at an `https://` URL.
#[derive(Debug, Clone)]
pub struct HttpsMetadata {
    base: HttpUrl,
    tls: Arc<ClientConfig>,
    limits: FetchLimits,
}

#[derive(Deserialize)]
struct PeersBody {
    peers: Vec<PeerBody>,
}

#[derive(Deserialize)]
struct PeerBody {
    address: String,
}

impl HttpsMetadata {
    /// A client of the service at `url` (must be https: rule 1 wants metadata over TLS).
    pub fn new(url: &str, tls: Arc<ClientConfig>, limits: FetchLimits) -> Result<HttpsMetadata, UrlError> {
        let base = HttpUrl::parse(url)?;
        if !base.tls {
            return Err(UrlError::Scheme(format!("{url} (the metadata service is reached over https only)")));
        }
        Ok(HttpsMetadata { base, tls, limits })
    }

    fn get(&self, path: &str) -> Result<Vec<u8>, MetadataFailure> {
        fetch_document(&self.base.join(path).text, &self.tls, self.limits)
    }
}

impl MetadataSource for HttpsMetadata {
    fn manifest(&self, id: &ContentId) -> Result<Manifest, MetadataFailure> {
        let bytes = self.get(&format!("/v1/content/{id}/manifest"))?;
        Manifest::parse(&bytes).map_err(|e| MetadataFailure::Fetch(format!("manifest of {id}: {e}")))
    }

    fn hashfile(&self, id: &ContentId) -> Result<Vec<u8>, MetadataFailure> {
        self.get(&format!("/v1/content/{id}/hashfile"))
    }

    fn peers(&self, id: &ContentId, group: &str) -> Result<Vec<SocketAddr>, MetadataFailure> {
        let bytes = self.get(&format!("/v1/content/{id}/peers?group={group}"))?;
        let body: PeersBody =
            serde_json::from_slice(&bytes).map_err(|e| MetadataFailure::Fetch(format!("peer list of {id}: {e}")))?;
        Ok(body.peers.iter().filter_map(|peer| peer.address.parse().ok()).collect())
    }
}
