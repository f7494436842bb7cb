//! The metadata service as a [`MetadataSource`]: the control plane's TLS client, with its typed
//! errors turned into the mode decision's `MetadataFailure`.

use std::net::SocketAddr;

use crate::content::{ContentId, Manifest, MetadataFailure};
use crate::control::{service_url, ClientError, MetadataClient};
use crate::download::metadata::MetadataSource;
use crate::tls::TlsClientOptions;

/// The metadata service at an `https://` URL.
#[derive(Debug, Clone)]
pub struct ServiceMetadata {
    client: MetadataClient,
    url: String,
}

impl ServiceMetadata {
    /// A client of the service at `url` (https only: rule 1 wants metadata over TLS).
    pub fn new(url: &str, options: TlsClientOptions) -> Result<ServiceMetadata, ClientError> {
        service_url(url)?;
        Ok(ServiceMetadata { client: MetadataClient::new(options)?, url: url.to_string() })
    }
}

impl MetadataSource for ServiceMetadata {
    fn manifest(&self, id: &ContentId) -> Result<Manifest, MetadataFailure> {
        self.client.fetch_manifest(&self.url, id).map_err(|e| MetadataFailure::from(&e))
    }

    fn hashfile(&self, id: &ContentId) -> Result<Vec<u8>, MetadataFailure> {
        self.client.fetch_hashfile(&self.url, id).map_err(|e| MetadataFailure::from(&e))
    }

    fn peers(&self, id: &ContentId, group: &str) -> Result<Vec<SocketAddr>, MetadataFailure> {
        let peers = self.client.peers(&self.url, id, group, None).map_err(|e| MetadataFailure::from(&e))?;
        Ok(peers.iter().filter_map(|peer| peer.address.parse().ok()).collect())
    }
}
