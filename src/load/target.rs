//! What the run asks for: the URLs (round-robin), their addresses, and each request's bytes,
//! written once with the one request builder (`http::client::RequestSpec`) and sent again and
//! again; or random byte ranges of one URL whose length a HEAD request told.

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::content::{decide, ContentId, HashFile, Mode};
use crate::download::MetadataSource;
use crate::http::client::blocking::exchange;
use crate::http::client::{ClientLimits, RequestSpec};
use crate::http::url::HttpUrl;
use crate::load::LoadError;

/// Requests a run prepares at most (URLs, or URLs × pieces with `--content`).
pub const TARGETS_MAX: usize = 65_536;

/// `--content`: the pieces of one content, asked over the piece API.
#[derive(Debug, Clone)]
pub struct Pieces {
    pub id: ContentId,
    /// The content's verified hash file (its SHA-256 came with the manifest over TLS).
    pub hashes: HashFile,
    /// Check every piece body against the hash file and count the mismatches.
    pub verify: bool,
}

/// The hash file of `id` under rules 1 and 2 (manifest over TLS, hash file checked against it),
/// as `tessera get` has it; or why the content would be Simple mode.
pub fn verified_hashes(metadata: &dyn MetadataSource, id: &ContentId) -> Result<HashFile, String> {
    let manifest = metadata.manifest(id);
    let hashfile = metadata.hashfile(id);
    match decide(manifest.as_ref().map_err(Clone::clone), hashfile.as_deref().map_err(Clone::clone)) {
        Mode::P2p { hashes } => Ok(hashes),
        Mode::Simple { reason } => Err(reason.to_string()),
    }
}

/// One URL of the run.
#[derive(Debug, Clone)]
pub struct Target {
    /// Index into [`Plan::addresses`].
    pub address_index: usize,
    /// The whole GET request, ready to send.
    pub request: Vec<u8>,
    /// The piece it asks for (`--content`).
    pub piece: Option<u64>,
}

/// Random ranges of the first URL.
#[derive(Debug, Clone, Copy)]
pub struct Ranges {
    /// The URL's length (from its HEAD response).
    pub length_bytes: u64,
    /// Bytes per range (the last range of a shorter URL is what there is).
    pub range_bytes: u64,
}

/// Everything the workers need to build requests; shared read-only by every thread.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Distinct server addresses, in the order their URLs came.
    pub addresses: Vec<SocketAddr>,
    /// For each address, the name its certificate is checked against when its URLs are https.
    pub server_names: Vec<Option<String>>,
    /// The TLS client setup of https URLs (their `--ca`, else the system's roots).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub targets: Vec<Target>,
    pub ranges: Option<Ranges>,
    /// With `--content --verify`: the hash file piece bodies are checked against.
    pub verify: Option<HashFile>,
}

impl Plan {
    /// Resolves `urls` (`http://`, or `https://` checked with `tls`); with `range_bytes` asks the
    /// first one's length; with `pieces` every URL is a piece server asked for every piece of the
    /// content.
    pub fn new(
        urls: &[String],
        range_bytes: Option<u64>,
        pieces: Option<&Pieces>,
        timeout: Duration,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Plan, LoadError> {
        if urls.is_empty() {
            return Err(LoadError::Usage("at least one URL is needed".into()));
        }
        if range_bytes.is_some() && pieces.is_some() {
            return Err(LoadError::Usage("--range-bytes and --content cannot be used together".into()));
        }
        let verify = pieces.filter(|p| p.verify).map(|p| p.hashes.clone());
        let mut plan = Plan {
            addresses: Vec::new(),
            server_names: Vec::new(),
            tls: None,
            targets: Vec::new(),
            ranges: None,
            verify,
        };
        for text in urls {
            let url = HttpUrl::parse(text)?;
            if url.is_tls() && range_bytes.is_some() {
                return Err(LoadError::Usage(format!("{text}: --range-bytes is for http:// URLs")));
            }
            let server_name = url.is_tls().then(|| url.host());
            if server_name.is_some() {
                plan.tls =
                    Some(tls.clone().ok_or_else(|| LoadError::Usage(format!("{text}: https needs a TLS setup")))?);
            }
            let address = url.resolve()?;
            let address_index = match plan.addresses.iter().position(|known| *known == address) {
                Some(index) if plan.server_names[index] != server_name => {
                    return Err(LoadError::Usage(format!("{text}: {address} is asked both over http and https")));
                }
                Some(index) => index,
                None => {
                    plan.addresses.push(address);
                    plan.server_names.push(server_name);
                    plan.addresses.len() - 1
                }
            };
            let specs: Vec<(RequestSpec, Option<u64>)> = match pieces {
                None => vec![(RequestSpec::new("GET", &url), None)],
                Some(pieces) => piece_requests(&url, pieces, urls.len())?,
            };
            for (spec, piece) in specs {
                let mut request = Vec::new();
                spec.write_head(&mut request)
                    .map_err(|source| LoadError::Request { url: text.clone(), reason: source.to_string() })?;
                plan.targets.push(Target { address_index, request, piece });
            }
        }
        if let Some(range_bytes) = range_bytes {
            if range_bytes == 0 {
                return Err(LoadError::Usage("--range-bytes must be at least 1".into()));
            }
            let length_bytes = content_length(&urls[0], plan.addresses[0], timeout)?;
            plan.ranges = Some(Ranges { length_bytes, range_bytes });
        }
        Ok(plan)
    }

    /// The request for a range of the first URL starting at `start`, written into `out`
    /// (cleared first; no allocation once `out` has grown to size).
    pub fn write_range_request(&self, start: u64, out: &mut Vec<u8>) {
        use std::io::Write as _;
        let ranges = self.ranges.expect("a range plan");
        let last = (start + ranges.range_bytes).min(ranges.length_bytes) - 1;
        let head = &self.targets[0].request;
        out.clear();
        // The head without its final empty line, then the Range field and the empty line.
        out.extend_from_slice(&head[..head.len() - 2]);
        let _ = write!(out, "Range: bytes={start}-{last}\r\n\r\n");
    }

    /// The highest start of a range (uniformly drawn in `0..=start_max`).
    pub fn range_start_max(&self) -> u64 {
        let ranges = self.ranges.expect("a range plan");
        ranges.length_bytes.saturating_sub(ranges.range_bytes)
    }
}

/// The piece API requests for every piece of `pieces` on the server of `url`.
fn piece_requests(
    url: &HttpUrl,
    pieces: &Pieces,
    url_count: usize,
) -> Result<Vec<(RequestSpec, Option<u64>)>, LoadError> {
    let count = pieces.hashes.piece_count();
    if count.saturating_mul(url_count as u64) > TARGETS_MAX as u64 {
        return Err(LoadError::Usage(format!(
            "--content {}: {count} pieces on {url_count} servers is more than {TARGETS_MAX} requests to prepare",
            pieces.id
        )));
    }
    Ok((0..count)
        .map(|piece| {
            let target = format!("/v1/content/{}/piece/{piece}", pieces.id);
            (RequestSpec::to_host("GET", url.authority(), target), Some(piece))
        })
        .collect())
}

/// The length of `url` from a HEAD request.
fn content_length(url: &str, address: SocketAddr, timeout: Duration) -> Result<u64, LoadError> {
    let failed = |reason: String| LoadError::Head { url: url.to_string(), reason };
    let parsed = HttpUrl::parse(url)?;
    let mut stream = TcpStream::connect_timeout(&address, timeout).map_err(|e| failed(e.to_string()))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| failed(e.to_string()))?;
    let deadline = Some(Instant::now() + timeout);
    let response = exchange(&mut stream, &RequestSpec::new("HEAD", &parsed), ClientLimits::default(), deadline)
        .map_err(|e| failed(e.to_string()))?;
    if !(200..300).contains(&response.head.status) {
        return Err(failed(format!("status {}", response.head.status)));
    }
    match response.head.content_length {
        Some(0) | None => Err(failed("no Content-Length (or 0): cannot draw ranges".into())),
        Some(length) => Ok(length),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_on_one_server_share_an_address_and_ranges_end_at_the_length() {
        let urls = vec!["http://127.0.0.1:9/a".to_string(), "http://127.0.0.1:9/b?x=1".to_string()];
        let mut plan = Plan::new(&urls, None, None, Duration::from_secs(1), None).unwrap();
        assert_eq!(plan.addresses.len(), 1);
        let request = String::from_utf8(plan.targets[1].request.clone()).unwrap();
        assert!(request.starts_with("GET /b?x=1 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n"), "{request}");
        plan.ranges = Some(Ranges { length_bytes: 1000, range_bytes: 300 });
        assert_eq!(plan.range_start_max(), 700);
        let mut out = Vec::new();
        plan.write_range_request(800, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("GET /a HTTP/1.1\r\n") && text.ends_with("\r\nRange: bytes=800-999\r\n\r\n"),
            "{text}"
        );
    }

    #[test]
    fn https_without_tls_ranges_over_https_and_missing_urls_are_refused_naming_the_problem() {
        let url = "https://127.0.0.1:9/".to_string();
        let error = Plan::new(std::slice::from_ref(&url), None, None, Duration::from_secs(1), None).unwrap_err();
        assert!(error.to_string().contains("https"), "{error}");
        let tls = crate::tls::client::ca_client_config(None).ok();
        let error = Plan::new(&[url], Some(10), None, Duration::from_secs(1), tls).unwrap_err();
        assert!(error.to_string().contains("--range-bytes"), "{error}");
        assert!(Plan::new(&[], None, None, Duration::from_secs(1), None).is_err());
    }
}
