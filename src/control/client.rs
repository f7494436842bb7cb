//! The blocking metadata client: one TLS connection per call, every step under a timeout, and a
//! typed error for each way a fetch fails, so a download can say why it fell back to Simple mode.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{CertificateError, ClientConnection};

use crate::content::{ContentId, Manifest, MetadataFailure};
use crate::control::api::{validate_name, AnnounceRequest, ErrorBody, PeerInfo, PeersResponse, PublishBody};
use crate::http::response_reader::{read_response, ReadResponseError};
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

/// A parsed `https://HOST[:PORT][/PREFIX]` service URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceUrl {
    /// Host name or IP address (no brackets), checked against the certificate.
    pub host: String,
    /// TCP port (443 when not given).
    pub port: u16,
    /// `HOST[:PORT]` as written, for the `Host:` header.
    pub authority: String,
    /// Path prefix before `/v1/...`, without a trailing slash.
    pub prefix: String,
}

impl ServiceUrl {
    /// Parses a service URL; only `https` is accepted.
    pub fn parse(url: &str) -> Result<ServiceUrl, ClientError> {
        let bad = |reason: &str| ClientError::BadUrl { url: url.to_string(), reason: reason.to_string() };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("expected https://HOST[:PORT]"))?;
        if !scheme.eq_ignore_ascii_case("https") {
            return Err(bad("only https is accepted: metadata must come over TLS"));
        }
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.is_empty() || authority.contains('@') {
            return Err(bad("the host is missing or has user info"));
        }
        let (host, port_text) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed.split_once(']').ok_or_else(|| bad("unclosed [ in the host"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        let port = match port_text {
            None => 443,
            Some(text) => text.parse().map_err(|_| bad("the port is not a number from 0 to 65535"))?,
        };
        if host.is_empty() {
            return Err(bad("the host is empty"));
        }
        if path.contains(['?', '#']) {
            return Err(bad("query and fragment are not allowed"));
        }
        Ok(ServiceUrl {
            host: host.to_string(),
            port,
            authority: authority.to_string(),
            prefix: path.trim_end_matches('/').to_string(),
        })
    }
}

/// A blocking client of the metadata service.
#[derive(Debug, Clone)]
pub struct MetadataClient {
    options: TlsClientOptions,
    tls: Arc<rustls::ClientConfig>,
}

/// A whole response: status and body.
struct Reply {
    status: u16,
    body: Vec<u8>,
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

    /// `POST /v1/announce`.
    pub fn announce(&self, service_url: &str, announce: &AnnounceRequest) -> Result<(), ClientError> {
        let url = ServiceUrl::parse(service_url)?;
        let body = serde_json::to_vec(announce).expect("announce serializes");
        let reply = self.exchange(&url, "POST", "/v1/announce", None, &body)?;
        expect_ok(service_url, "/v1/announce", reply).map(|_| ())
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
        service_url: &str,
        token: &str,
        manifest: &Manifest,
        hashfile: &[u8],
    ) -> Result<(), ClientError> {
        let id = ContentId::parse(&manifest.content_id).map_err(|e| ClientError::BadArgument(e.to_string()))?;
        let url = ServiceUrl::parse(service_url)?;
        let body = PublishBody {
            manifest: serde_json::to_value(manifest).expect("manifest serializes"),
            hashfile_hex: hex::encode(hashfile),
        };
        let body = serde_json::to_vec(&body).expect("publish body serializes");
        let path = format!("/v1/content/{id}");
        let reply = self.exchange(&url, "PUT", &path, Some(token), &body)?;
        expect_ok(service_url, &path, reply).map(|_| ())
    }

    /// `DELETE /v1/content/{id}` with the admin token.
    pub fn remove(&self, service_url: &str, token: &str, id: &ContentId) -> Result<(), ClientError> {
        let url = ServiceUrl::parse(service_url)?;
        let path = format!("/v1/content/{id}");
        let reply = self.exchange(&url, "DELETE", &path, Some(token), b"")?;
        expect_ok(service_url, &path, reply).map(|_| ())
    }

    fn get_ok(&self, service_url: &str, path: &str) -> Result<(String, Vec<u8>), ClientError> {
        let url = ServiceUrl::parse(service_url)?;
        let reply = self.exchange(&url, "GET", path, None, b"")?;
        let body = expect_ok(service_url, path, reply)?;
        Ok((format!("{}{path}", service_url.trim_end_matches('/')), body))
    }

    /// One request on a fresh connection (`Connection: close`), read to the end of its body.
    fn exchange(
        &self,
        url: &ServiceUrl,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> Result<Reply, ClientError> {
        let addr_text = format!("{}:{}", url.host, url.port);
        let mut socket = self.connect(url, &addr_text)?;
        let server_name = ServerName::try_from(url.host.clone())
            .map_err(|e| ClientError::BadUrl { url: url.authority.clone(), reason: e.to_string() })?;
        let mut tls = ClientConnection::new(self.tls.clone(), server_name).map_err(TlsError::from)?;
        // Each pass moves handshake bytes or fails (socket timeouts bound the waits).
        while tls.is_handshaking() {
            tls.complete_io(&mut socket).map_err(|e| self.classify(e, url, "TLS handshake"))?;
        }
        let mut head = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: tessera/{}\r\nAccept: */*\r\nConnection: close\r\n",
            url.prefix,
            url.authority,
            env!("CARGO_PKG_VERSION")
        );
        if let Some(token) = token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        if !body.is_empty() || method != "GET" {
            head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut stream = rustls::Stream::new(&mut tls, &mut socket);
        stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.write_all(body))
            .and_then(|()| stream.flush())
            .map_err(|e| self.classify(e, url, "sending the request"))?;
        self.read_reply(&mut stream, url)
    }

    fn connect(&self, url: &ServiceUrl, addr_text: &str) -> Result<TcpStream, ClientError> {
        let timeout = Duration::from_millis(self.options.timeout_ms.max(1));
        let addrs: Vec<SocketAddr> = (url.host.as_str(), url.port)
            .to_socket_addrs()
            .map_err(|source| ClientError::Resolve { host: url.host.clone(), source })?
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
            None => ClientError::Resolve { host: url.host.clone(), source: ErrorKind::NotFound.into() },
            Some(error) if error.kind() == ErrorKind::ConnectionRefused => ClientError::Refused { addr },
            Some(error) if matches!(error.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {
                ClientError::Timeout { addr, what: "connecting", timeout_ms: self.options.timeout_ms }
            }
            Some(source) => ClientError::Connect { addr, source },
        })
    }

    fn read_reply(&self, stream: &mut impl Read, url: &ServiceUrl) -> Result<Reply, ClientError> {
        match read_response(stream, false, self.options.response_bytes_max, None) {
            Ok((head, body)) => Ok(Reply { status: head.status, body }),
            Err(ReadResponseError::Io(error)) => Err(self.classify(error, url, "reading the response")),
            Err(error) => Err(ClientError::BadBody { url: url.authority.clone(), reason: error.to_string() }),
        }
    }

    /// Maps an I/O error (which may carry a rustls error) to the variant that says what went wrong.
    fn classify(&self, error: std::io::Error, url: &ServiceUrl, what: &'static str) -> ClientError {
        let host = url.host.clone();
        let addr = format!("{}:{}", url.host, url.port);
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
fn expect_ok(service_url: &str, path: &str, reply: Reply) -> Result<Vec<u8>, ClientError> {
    let url = format!("{}{path}", service_url.trim_end_matches('/'));
    match reply.status {
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
        let url = ServiceUrl::parse("https://localhost:7443").unwrap();
        assert_eq!((url.host.as_str(), url.port, url.prefix.as_str()), ("localhost", 7443, ""));
        let url = ServiceUrl::parse("https://[::1]:8443/meta/").unwrap();
        assert_eq!((url.host.as_str(), url.port, url.prefix.as_str()), ("::1", 8443, "/meta"));
        assert_eq!(url.authority, "[::1]:8443");
        assert_eq!(ServiceUrl::parse("https://example.org").unwrap().port, 443);
        for bad in ["http://x", "x", "https://", "https://u@x", "https://x:99999", "https://x/?a"] {
            assert!(matches!(ServiceUrl::parse(bad), Err(ClientError::BadUrl { .. })), "{bad}");
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
