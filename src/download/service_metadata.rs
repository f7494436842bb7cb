//! The metadata service as a [`MetadataSource`]: the control plane's TLS client, with its typed
//! errors turned into the mode decision's `MetadataFailure`. Several services (one per box of a
//! site) are ranked per content by rendezvous hashing; the first that answers serves.

use std::cell::Cell;
use std::net::SocketAddr;

use crate::content::{ContentId, Manifest, MetadataFailure};
use crate::control::{service_url, ClientError, MetadataClient};
use crate::download::metadata::MetadataSource;
use crate::rendezvous;
use crate::tls::TlsClientOptions;

/// The metadata service at one or more `https://` URLs.
#[derive(Debug, Clone)]
pub struct ServiceMetadata {
    client: MetadataClient,
    urls: Vec<String>,
    /// Names this device in the ranking.
    device_id: String,
    /// The URL that answered last: asked first next time, so a dead primary costs one failure.
    answered: Cell<Option<usize>>,
}

impl ServiceMetadata {
    /// A client of the service at `url` (https only: rule 1 wants metadata over TLS).
    pub fn new(url: &str, options: TlsClientOptions) -> Result<ServiceMetadata, ClientError> {
        ServiceMetadata::ranked(&[url.to_string()], "", options)
    }

    /// A client of several services of one fleet, asked in rendezvous order of (`device_id`,
    /// content id): the next one when a service fails or lacks the content.
    pub fn ranked(urls: &[String], device_id: &str, options: TlsClientOptions) -> Result<ServiceMetadata, ClientError> {
        assert!(!urls.is_empty(), "at least one service URL");
        for url in urls {
            service_url(url)?;
        }
        Ok(ServiceMetadata {
            client: MetadataClient::new(options)?,
            urls: urls.to_vec(),
            device_id: device_id.to_string(),
            answered: Cell::new(None),
        })
    }

    /// The first answer of the services in order for `id`; when none answers, `NotFound` if one
    /// said so, else the first failure.
    fn first_answer<T>(
        &self,
        id: &ContentId,
        ask: impl Fn(&str) -> Result<T, ClientError>,
    ) -> Result<T, MetadataFailure> {
        let mut order = rendezvous::rank(&self.device_id, id.as_str(), &self.urls);
        if let Some(at) = self.answered.get().and_then(|last| order.iter().position(|&i| i == last)) {
            let last = order.remove(at);
            order.insert(0, last);
        }
        let mut failure: Option<MetadataFailure> = None;
        for index in order {
            match ask(&self.urls[index]) {
                Ok(answer) => {
                    self.answered.set(Some(index));
                    return Ok(answer);
                }
                Err(error) => {
                    let error = MetadataFailure::from(&error);
                    if self.urls.len() > 1 {
                        tracing::warn!(service = %self.urls[index], %error, "metadata service failed; asking the next");
                    }
                    if failure.is_none() || error == MetadataFailure::NotFound {
                        failure = Some(error);
                    }
                }
            }
        }
        Err(failure.expect("at least one service was asked"))
    }
}

impl MetadataSource for ServiceMetadata {
    fn manifest(&self, id: &ContentId) -> Result<Manifest, MetadataFailure> {
        self.first_answer(id, |url| self.client.fetch_manifest(url, id))
    }

    fn hashfile(&self, id: &ContentId) -> Result<Vec<u8>, MetadataFailure> {
        self.first_answer(id, |url| self.client.fetch_hashfile(url, id))
    }

    fn peers(&self, id: &ContentId, group: &str) -> Result<Vec<SocketAddr>, MetadataFailure> {
        let peers = self.first_answer(id, |url| self.client.peers(url, id, group, None))?;
        Ok(peers.iter().filter_map(|peer| peer.address.parse().ok()).collect())
    }
}
