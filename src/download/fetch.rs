//! A small blocking HTTP(S) GET or HEAD for metadata-sized documents: hash-file URLs, a peer's
//! hash file, and the Simple-mode length probe. Redirects are followed (curl `-L` rules, at most
//! `REDIRECTS_MAX` hops). Pieces never go through here; they go through the event-loop driver.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::ClientConfig;

use crate::http::client::blocking::{exchange, ExchangeError};
use crate::http::client::redirect::{next_hop, RedirectError};
use crate::http::client::{ClientLimits, ReceivedHead, RequestSpec};
use crate::http::url::{HttpUrl, UrlError};

/// Limits of one blocking fetch.
#[derive(Debug, Clone, Copy)]
pub struct FetchLimits {
    /// Whole exchange (connect, handshake, request, response), in milliseconds, per hop.
    pub timeout_ms: u64,
    /// Largest body accepted.
    pub body_bytes_max: u64,
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error(transparent)]
    Redirect(#[from] RedirectError),
    #[error("{url}: cannot connect: {source}")]
    Connect { url: String, source: std::io::Error },
    #[error("{url}: TLS: {reason}")]
    Tls { url: String, reason: String },
    #[error("{url}: {source}")]
    Io { url: String, source: std::io::Error },
    #[error("{url}: timed out after {timeout_ms} ms")]
    Timeout { url: String, timeout_ms: u64 },
    #[error("{url}: bad response: {source}")]
    Response { url: String, source: ExchangeError },
}

/// A whole response.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// Where the response came from, after redirects.
    pub url: HttpUrl,
    pub head: ReceivedHead,
    pub body: Vec<u8>,
}

/// `method` (GET or HEAD) of `url`, blocking, under `limits`, following redirects.
pub fn fetch(
    url: &HttpUrl,
    method: &'static str,
    tls: &Arc<ClientConfig>,
    limits: FetchLimits,
) -> Result<Fetched, FetchError> {
    let (mut url, mut method) = (url.clone(), method);
    // Bounded: next_hop refuses more than REDIRECTS_MAX hops.
    for hops in 0.. {
        let (head, body) = fetch_once(&url, method, tls, limits)?;
        match next_hop(&url, method, &head, hops)? {
            Some((next_method, next_url)) => {
                tracing::debug!(from = %url, to = %next_url, status = head.status, "redirect");
                (method, url) = (next_method, next_url);
            }
            None => return Ok(Fetched { url, head, body }),
        }
    }
    unreachable!("the hop limit ends the loop")
}

fn fetch_once(
    url: &HttpUrl,
    method: &'static str,
    tls: &Arc<ClientConfig>,
    limits: FetchLimits,
) -> Result<(ReceivedHead, Vec<u8>), FetchError> {
    let text = || url.to_string();
    let deadline = Instant::now() + Duration::from_millis(limits.timeout_ms);
    let address = url.resolve()?;
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
    let mut stream: Box<dyn ReadWrite> = if url.is_tls() {
        let name =
            ServerName::try_from(url.host()).map_err(|e| FetchError::Tls { url: text(), reason: e.to_string() })?;
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
    let spec = RequestSpec { close: true, ..RequestSpec::new(method, url) };
    let limits = ClientLimits { body_bytes_max: limits.body_bytes_max, ..ClientLimits::default() };
    match exchange(&mut *stream, &spec, limits, Some(deadline)) {
        Ok(response) => Ok((response.head, response.body)),
        Err(ExchangeError::Io(source)) => Err(classify(source)),
        Err(source) => Err(FetchError::Response { url: text(), source }),
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}
