//! A small blocking HTTP(S) GET for metadata-sized documents: the metadata adapter, hash-file
//! URLs, a peer's hash file, and the Simple-mode length probe. Pieces never go through here;
//! they go through the event-loop driver.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::ClientConfig;

use crate::download::url::HttpUrl;
use crate::http::response_reader::{read_response, ReadResponseError, ResponseHead};

/// Limits of one blocking fetch.
#[derive(Debug, Clone, Copy)]
pub struct FetchLimits {
    /// Whole exchange (connect, handshake, request, response), in milliseconds.
    pub timeout_ms: u64,
    /// Largest body accepted.
    pub body_bytes_max: u64,
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: {source}")]
    Url { url: String, source: crate::download::url::UrlError },
    #[error("{url}: cannot connect: {source}")]
    Connect { url: String, source: std::io::Error },
    #[error("{url}: TLS: {reason}")]
    Tls { url: String, reason: String },
    #[error("{url}: {source}")]
    Io { url: String, source: std::io::Error },
    #[error("{url}: timed out after {timeout_ms} ms")]
    Timeout { url: String, timeout_ms: u64 },
    #[error("{url}: bad response: {reason}")]
    Response { url: String, reason: String },
    #[error("{url}: body larger than {limit} bytes")]
    TooLarge { url: String, limit: u64 },
}

/// A whole response.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub head: ResponseHead,
    pub body: Vec<u8>,
}

/// `method` (GET or HEAD) of `url`, blocking, under `limits`.
pub fn fetch(url: &HttpUrl, method: &str, tls: &Arc<ClientConfig>, limits: FetchLimits) -> Result<Fetched, FetchError> {
    let text = || url.text.clone();
    let deadline = Instant::now() + Duration::from_millis(limits.timeout_ms);
    let address = url.resolve().map_err(|source| FetchError::Url { url: text(), source })?;
    let timeout = Duration::from_millis(limits.timeout_ms.max(1));
    let tcp =
        TcpStream::connect_timeout(&address, timeout).map_err(|source| FetchError::Connect { url: text(), source })?;
    let io = |source: std::io::Error| {
        if matches!(source.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) {
            FetchError::Timeout { url: text(), timeout_ms: limits.timeout_ms }
        } else {
            FetchError::Io { url: text(), source }
        }
    };
    tcp.set_read_timeout(Some(timeout)).map_err(io)?;
    tcp.set_write_timeout(Some(timeout)).map_err(io)?;
    let _ = tcp.set_nodelay(true);
    let request = format!(
        "{method} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: tessera/{}\r\nConnection: close\r\n\r\n",
        url.path,
        url.authority,
        env!("CARGO_PKG_VERSION")
    );
    let mut stream: Box<dyn ReadWrite> = if url.tls {
        let name = ServerName::try_from(url.host.clone())
            .map_err(|e| FetchError::Tls { url: text(), reason: e.to_string() })?;
        let connection = rustls::ClientConnection::new(tls.clone(), name)
            .map_err(|e| FetchError::Tls { url: text(), reason: e.to_string() })?;
        Box::new(rustls::StreamOwned::new(connection, tcp))
    } else {
        Box::new(tcp)
    };
    // TLS errors surface as io::Error with a rustls::Error inside: name them as TLS failures.
    let classify = |source: std::io::Error| match source.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        Some(tls_error) => FetchError::Tls { url: text(), reason: tls_error.to_string() },
        None => io(source),
    };
    stream.write_all(request.as_bytes()).map_err(classify)?;
    stream.flush().map_err(classify)?;
    match read_response(&mut *stream, method == "HEAD", limits.body_bytes_max, Some(deadline)) {
        Ok((head, body)) => Ok(Fetched { head, body }),
        Err(ReadResponseError::Io(source)) => Err(classify(source)),
        Err(ReadResponseError::TooLarge(limit)) => Err(FetchError::TooLarge { url: text(), limit }),
        Err(ReadResponseError::Response(error)) => Err(FetchError::Response { url: text(), reason: error.to_string() }),
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}
