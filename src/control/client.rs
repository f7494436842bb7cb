//! The blocking metadata client: one TLS connection per call, every step under a timeout, and a
//! typed error for each way a fetch fails, so a download can say why it fell back to Simple mode.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{CertificateError, ClientConnection};

use crate::content::{ContentId, Manifest, MetadataFailure};
use crate::control::api::{validate_name, AnnounceRequest, ErrorBody, PeerInfo, PeersResponse, PublishBody};
use crate::http::client::blocking::{exchange, ExchangeError, Response};
use crate::http::client::redirect::{next_hop, RedirectError};
use crate::http::client::{ClientLimits, RequestSpec};
use crate::http::url::{HttpUrl, UrlError};
use crate::tls::client::PinMismatch;
use crate::tls::{client_config, TlsClientOptions, TlsError};

/// Largest error message kept from a response body.
const MESSAGE_BYTES_MAX: usize = 512;

/// Why a call to the metadata service failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("TLS client setup: {0}")]
    Setup(#[from] TlsError),
    #[error("service URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error(transparent)]
    Redirect(#[from] RedirectError),
    #[error("bad argument: {0}")]
    BadArgument(String),
    #[error("cannot resolve {host}: {source}")]
    Resolve { host: String, source: std::io::Error },
    #[error("connection to {addr} refused: is the metadata service running?")]
    Refused { addr: String },
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("certificate of {host} is not signed by a trusted CA ({detail})")]
    UnknownCa { host: String, detail: String },
    #[error("certificate of {host} has expired or is not yet valid ({detail})")]
    Expired { host: String, detail: String },
    #[error("certificate presented by {host} is not valid for that name ({detail})")]
    HostnameMismatch { host: String, detail: String },
    #[error("certificate of {host} was rejected ({detail})")]
    BadCertificate { host: String, detail: String },
    #[error("{host}: {mismatch}")]
    PinMismatch { host: String, mismatch: PinMismatch },
    #[error("{addr} does not speak TLS; is it a plain HTTP server? ({detail})")]
    NotTls { addr: String, detail: String },
    #[error("TLS with {host} failed: {detail}")]
    Tls { host: String, detail: String },
    #[error("{what} with {addr} timed out after {timeout_ms} ms")]
    Timeout { addr: String, what: &'static str, timeout_ms: u64 },
    #[error("{what} with {addr} failed: {source}")]
    Io { addr: String, what: &'static str, source: std::io::Error },
    #[error("{url}: not found")]
    NotFound { url: String },
    #[error("{url}: HTTP {status}: {message}")]
    Status { url: String, status: u16, message: String },
    #[error("{url}: bad response: {reason}")]
    BadBody { url: String, reason: String },
}

impl From<&ClientError> for MetadataFailure {
    fn from(error: &ClientError) -> MetadataFailure {
        match error {
            ClientError::NotFound { .. } => MetadataFailure::NotFound,
            other => MetadataFailure::Fetch(other.to_string()),
        }
    }
}

/// Parses a service URL: `https://HOST[:PORT][/PREFIX]`, https only, no query.
pub fn service_url(text: &str) -> Result<HttpUrl, ClientError> {
    let url = HttpUrl::parse(text)?;
    let bad = |reason: &str| ClientError::BadUrl { url: text.to_string(), reason: reason.to_string() };
    if !url.is_tls() {
        return Err(bad("only https is accepted: metadata must come over TLS"));
    }
    if url.has_query() {
        return Err(bad("a query is not allowed"));
    }
    Ok(url)
}

/// A blocking client of the metadata service.
#[derive(Debug, Clone)]
pub struct MetadataClient {
    options: TlsClientOptions,
    tls: Arc<rustls::ClientConfig>,
}

impl MetadataClient {
    /// A client trusting what `options` says (CA file or web roots, optional pin).
    pub fn new(options: TlsClientOptions) -> Result<MetadataClient, ClientError> {
        let tls = client_config(&options)?;
        Ok(MetadataClient { options, tls })
    }

    /// `GET /v1/content/{id}/manifest`, parsed and validated.
    pub fn fetch_manifest(&self, service_url: &str, id: &ContentId) -> Result<Manifest, ClientError> {
        let (url, body) = self.get_ok(service_url, &format!("/v1/content/{id}/manifest"))?;
        let manifest = Manifest::parse(&body).map_err(|e| ClientError::BadBody { url, reason: e.to_string() })?;
        if manifest.content_id != id.as_str() {
            return Err(ClientError::BadBody {
                url: format!("{service_url}/v1/content/{id}/manifest"),
                reason: format!("manifest is for {:?}, not {id}", manifest.content_id),
            });
        }
        Ok(manifest)
    }

    /// `GET /v1/content/{id}/hashfile`: the raw bytes, to be checked with `content::decide`.
    pub fn fetch_hashfile(&self, service_url: &str, id: &ContentId) -> Result<Vec<u8>, ClientError> {
        Ok(self.get_ok(service_url, &format!("/v1/content/{id}/hashfile"))?.1)
    }

    /// `GET /healthz`: the service answers over TLS (what `serve --check` asks an upstream).
    pub fn health(&self, service_url: &str) -> Result<(), ClientError> {
        self.get_ok(service_url, "/healthz").map(|_| ())
    }

    /// `GET /metrics`: the service's own counters (Prometheus text).
    pub fn metrics(&self, service_url: &str) -> Result<String, ClientError> {
        let (url, body) = self.get_ok(service_url, "/metrics")?;
        String::from_utf8(body).map_err(|e| ClientError::BadBody { url, reason: e.to_string() })
    }

    /// `POST /v1/announce`, with the site's announce token when the service wants one.
    pub fn announce(
        &self,
        service_url_text: &str,
        token: Option<&str>,
        announce: &AnnounceRequest,
    ) -> Result<(), ClientError> {
        let url = service_url(service_url_text)?.join("/v1/announce")?;
        let body = serde_json::to_vec(announce).expect("announce serializes");
        let reply = self.exchange(&url, "POST", token, body)?;
        expect_ok(service_url_text, "/v1/announce", reply).map(|_| ())
    }

    /// `GET /v1/content/{id}/peers?group=G[&peer=ME]`: peers of `group` holding `id`, never `asker`.
    pub fn peers(
        &self,
        service_url: &str,
        id: &ContentId,
        group: &str,
        asker: Option<&str>,
    ) -> Result<Vec<PeerInfo>, ClientError> {
        validate_name("group", group).map_err(ClientError::BadArgument)?;
        let mut path = format!("/v1/content/{id}/peers?group={group}");
        if let Some(peer) = asker {
            validate_name("peer", peer).map_err(ClientError::BadArgument)?;
            path.push_str("&peer=");
            path.push_str(peer);
        }
        let (url, body) = self.get_ok(service_url, &path)?;
        let response: PeersResponse =
            serde_json::from_slice(&body).map_err(|e| ClientError::BadBody { url, reason: e.to_string() })?;
        Ok(response.peers)
    }

    /// `PUT /v1/content/{id}`: publishes a manifest and its hash file with the admin token.
    pub fn publish(
        &self,
        service_url_text: &str,
        token: &str,
        manifest: &Manifest,
        hashfile: &[u8],
    ) -> Result<(), ClientError> {
        let id = ContentId::parse(&manifest.content_id).map_err(|e| ClientError::BadArgument(e.to_string()))?;
        let body = PublishBody {
            manifest: serde_json::to_value(manifest).expect("manifest serializes"),
            hashfile_hex: hex::encode(hashfile),
        };
        let body = serde_json::to_vec(&body).expect("publish body serializes");
        let path = format!("/v1/content/{id}");
        let url = service_url(service_url_text)?.join(&path)?;
        let reply = self.exchange(&url, "PUT", Some(token), body)?;
        expect_ok(service_url_text, &path, reply).map(|_| ())
    }

    /// `DELETE /v1/content/{id}` with the admin token.
    pub fn remove(&self, service_url_text: &str, token: &str, id: &ContentId) -> Result<(), ClientError> {
        let path = format!("/v1/content/{id}");
        let url = service_url(service_url_text)?.join(&path)?;
        let reply = self.exchange(&url, "DELETE", Some(token), Vec::new())?;
        expect_ok(service_url_text, &path, reply).map(|_| ())
    }

    /// A GET of a metadata document, following redirects (curl `-L` rules).
    fn get_ok(&self, service_url_text: &str, path: &str) -> Result<(String, Vec<u8>), ClientError> {
        let mut url = service_url(service_url_text)?.join(path)?;
        let mut method = "GET";
        // Bounded: next_hop refuses more than REDIRECTS_MAX hops.
        for hops in 0.. {
            let reply = self.exchange(&url, method, None, Vec::new())?;
            match next_hop(&url, method, &reply.head, hops)? {
                Some((next_method, next_url)) => (method, url) = (next_method, next_url),
                None => {
                    let body = expect_ok(service_url_text, path, reply)?;
                    return Ok((url.to_string(), body));
                }
            }
        }
        unreachable!("the hop limit ends the loop")
    }

    /// One request on a fresh TLS connection (`Connection: close`), read to the end of its body.
    fn exchange(
        &self,
        url: &HttpUrl,
        method: &'static str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> Result<Response, ClientError> {
        let mut socket = self.connect(url)?;
        let server_name = ServerName::try_from(url.host())
            .map_err(|e| ClientError::BadUrl { url: url.to_string(), reason: e.to_string() })?;
        let mut tls = ClientConnection::new(self.tls.clone(), server_name).map_err(TlsError::from)?;
        // Each pass moves handshake bytes or fails (socket timeouts bound the waits).
        while tls.is_handshaking() {
            tls.complete_io(&mut socket).map_err(|e| self.classify(e, url, "TLS handshake"))?;
        }
        let mut spec = RequestSpec { close: true, bearer: token.map(str::to_string), ..RequestSpec::new(method, url) };
        if !body.is_empty() {
            spec.body = Some(("application/json", body));
        }
        let limits = ClientLimits { body_bytes_max: self.options.response_bytes_max, ..ClientLimits::default() };
        let mut stream = rustls::Stream::new(&mut tls, &mut socket);
        match exchange(&mut stream, &spec, limits, None) {
            Ok(response) => Ok(response),
            Err(ExchangeError::Io(error)) => Err(self.classify(error, url, "the exchange")),
            Err(error) => Err(ClientError::BadBody { url: url.to_string(), reason: error.to_string() }),
        }
    }

    fn connect(&self, url: &HttpUrl) -> Result<TcpStream, ClientError> {
        let addr_text = &format!("{}:{}", url.host(), url.port());
        let timeout = Duration::from_millis(self.options.timeout_ms.max(1));
        let addrs: Vec<SocketAddr> = (url.host().as_str(), url.port())
            .to_socket_addrs()
            .map_err(|source| ClientError::Resolve { host: url.host(), source })?
            .collect();
        let mut last_error = None;
        for addr in &addrs {
            match TcpStream::connect_timeout(addr, timeout) {
                Ok(socket) => {
                    let io = |source| ClientError::Io { addr: addr_text.to_string(), what: "socket setup", source };
                    socket.set_read_timeout(Some(timeout)).map_err(io)?;
                    socket.set_write_timeout(Some(timeout)).map_err(io)?;
                    socket.set_nodelay(true).map_err(io)?;
                    return Ok(socket);
                }
                Err(error) => last_error = Some(error),
            }
        }
        let addr = addr_text.to_string();
        Err(match last_error {
            None => ClientError::Resolve { host: url.host(), source: ErrorKind::NotFound.into() },
            Some(error) if error.kind() == ErrorKind::ConnectionRefused => ClientError::Refused { addr },
            Some(error) if matches!(error.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {
                ClientError::Timeout { addr, what: "connecting", timeout_ms: self.options.timeout_ms }
            }
            Some(source) => ClientError::Connect { addr, source },
        })
    }

    /// Maps an I/O error (which may carry a rustls error) to the variant that says what went wrong.
    fn classify(&self, error: std::io::Error, url: &HttpUrl, what: &'static str) -> ClientError {
        let host = url.host();
        let addr = format!("{}:{}", host, url.port());
        if let Some(tls_error) = error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
            let detail = tls_error.to_string();
            return match tls_error {
                rustls::Error::InvalidCertificate(certificate) => match certificate {
                    CertificateError::UnknownIssuer => ClientError::UnknownCa { host, detail },
                    CertificateError::Expired
                    | CertificateError::ExpiredContext { .. }
                    | CertificateError::NotValidYet
                    | CertificateError::NotValidYetContext { .. } => ClientError::Expired { host, detail },
                    CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                        ClientError::HostnameMismatch { host, detail }
                    }
                    CertificateError::Other(other) => match other.0.downcast_ref::<PinMismatch>() {
                        Some(mismatch) => ClientError::PinMismatch { host, mismatch: mismatch.clone() },
                        None => ClientError::BadCertificate { host, detail },
                    },
                    _ => ClientError::BadCertificate { host, detail },
                },
                // Bytes that are not TLS records during the handshake: something else is listening.
                rustls::Error::InvalidMessage(_) => ClientError::NotTls { addr, detail },
                _ => ClientError::Tls { host, detail },
            };
        }
        match error.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => {
                ClientError::Timeout { addr, what, timeout_ms: self.options.timeout_ms }
            }
            ErrorKind::ConnectionRefused => ClientError::Refused { addr },
            _ => ClientError::Io { addr, what, source: error },
        }
    }
}

/// The body of a 2xx reply, or the typed error of any other status.
fn expect_ok(service_url: &str, path: &str, reply: Response) -> Result<Vec<u8>, ClientError> {
    let url = format!("{}{path}", service_url.trim_end_matches('/'));
    match reply.head.status {
        200..=299 => Ok(reply.body),
        404 => Err(ClientError::NotFound { url }),
        status => {
            let message = match serde_json::from_slice::<ErrorBody>(&reply.body) {
                Ok(error) => error.error,
                Err(_) => String::from_utf8_lossy(&reply.body[..reply.body.len().min(MESSAGE_BYTES_MAX)]).into_owned(),
            };
            Err(ClientError::Status { url, status, message })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_urls_parse() {
        let url = service_url("https://localhost:7443").unwrap();
        assert_eq!((url.host().as_str(), url.port()), ("localhost", 7443));
        let url = service_url("https://[::1]:8443/meta/").unwrap();
        assert_eq!((url.host().as_str(), url.port()), ("::1", 8443));
        assert_eq!(url.join("/v1/x").unwrap().target(), "/meta/v1/x");
        assert_eq!(url.authority(), "[::1]:8443");
        assert_eq!(service_url("HTTPS://example.org").unwrap().port(), 443);
        for bad in ["http://x", "x", "https://", "https://u@x", "https://x:99999", "https://x/?a"] {
            let error = service_url(bad).unwrap_err();
            assert!(matches!(error, ClientError::BadUrl { .. } | ClientError::Url(_)), "{bad}");
            assert!(error.to_string().contains(bad), "{error}");
        }
    }

    #[test]
    fn not_found_maps_to_metadata_not_found() {
        let error = ClientError::NotFound { url: "u".into() };
        assert_eq!(MetadataFailure::from(&error), MetadataFailure::NotFound);
        let error = ClientError::Refused { addr: "127.0.0.1:1".into() };
        assert!(matches!(MetadataFailure::from(&error), MetadataFailure::Fetch(text) if text.contains("refused")));
    }
}
