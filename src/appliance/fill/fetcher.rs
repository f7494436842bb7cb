//! The fill's fetch threads: one job at a time, blocking on the network (never a worker's
//! thread), each bounded by connect and request timeouts. A piece is hashed here and ingested
//! only when its SHA-256 is the one the verified hash file names.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::content::{Manifest, MetadataFailure};
use crate::control::client::MetadataClient;
use crate::fill::{Fetch, FetchFailure, FetchId, MetaFetch, MetaFetchId, MetaStep, SourceKind};
use crate::hash::sha256;
use crate::http::client::blocking::{exchange, ExchangeError};
use crate::http::client::{ClientLimits, RequestSpec};
use crate::http::url::HttpUrl;
use crate::store::{NewPiece, Store};

/// What a fetch thread is asked to do.
pub enum Job {
    /// A manifest or hash file, from the upstream service over TLS.
    Meta(MetaFetch),
    /// A piece, from a parent or peer (piece API) or an origin URL (Range).
    Piece { kind: SourceKind, name: String, fetch: Fetch },
}

/// How a job ended.
pub enum JobResult {
    Manifest(MetaFetchId, Result<Manifest, MetadataFailure>),
    HashFile(MetaFetchId, Result<Vec<u8>, MetadataFailure>),
    Piece(FetchId, PieceOutcome),
}

/// How a piece fetch ended.
pub enum PieceOutcome {
    /// The store already held the digest.
    AlreadyStored,
    /// Fetched, verified, stored.
    Stored,
    /// The bytes did not hash to the digest: nothing was stored.
    Bad,
    Failed(FetchFailure),
    /// Verified, but the store refused it.
    StoreFailed(String),
}

/// What every fetch thread shares.
pub struct Context {
    pub client: MetadataClient,
    pub service_url: String,
    pub store: Arc<Store>,
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
}

/// Runs jobs until the fill thread goes away.
pub fn run(context: &Context, jobs: &Receiver<Job>, results: &Sender<JobResult>) {
    while let Ok(job) = jobs.recv() {
        let result = match job {
            Job::Meta(fetch) => meta(context, fetch),
            Job::Piece { kind, name, fetch } => JobResult::Piece(fetch.fetch, piece(context, kind, &name, &fetch)),
        };
        if results.send(result).is_err() {
            return;
        }
    }
}

fn meta(context: &Context, fetch: MetaFetch) -> JobResult {
    let url = &context.service_url;
    match fetch.step {
        MetaStep::Manifest => JobResult::Manifest(
            fetch.fetch,
            context.client.fetch_manifest(url, &fetch.id).map_err(|error| MetadataFailure::from(&error)),
        ),
        MetaStep::HashFile(_) => JobResult::HashFile(
            fetch.fetch,
            context.client.fetch_hashfile(url, &fetch.id).map_err(|error| MetadataFailure::from(&error)),
        ),
    }
}

fn piece(context: &Context, kind: SourceKind, name: &str, fetch: &Fetch) -> PieceOutcome {
    if context.store.contains(&fetch.digest) {
        return PieceOutcome::AlreadyStored;
    }
    let bytes = match download(context, kind, name, fetch) {
        Ok(bytes) => bytes,
        Err(failure) => {
            tracing::debug!(source = name, piece = fetch.piece, ?failure, "piece fetch failed");
            return PieceOutcome::Failed(failure);
        }
    };
    if bytes.len() != fetch.length_bytes as usize || sha256(&bytes) != fetch.digest {
        tracing::warn!(source = name, id = %fetch.content.id, piece = fetch.piece, "bad piece: its SHA-256 is not the hash file's; dropped");
        return PieceOutcome::Bad;
    }
    let piece_size = fetch.content.hashes.piece_size();
    match context.store.ingest(piece_size, &[NewPiece { bytes: &bytes, digest: fetch.digest }]) {
        Ok(_) => PieceOutcome::Stored,
        Err(error) => PieceOutcome::StoreFailed(error.to_string()),
    }
}

/// Asks one source for one piece: the piece API of a parent or peer, or a Range of an origin URL.
fn download(context: &Context, kind: SourceKind, name: &str, fetch: &Fetch) -> Result<Vec<u8>, FetchFailure> {
    let (address, spec) = match kind {
        SourceKind::Origin => {
            let url = HttpUrl::parse(name).map_err(|_| FetchFailure::Failed)?;
            let address = url.resolve().map_err(|_| FetchFailure::Failed)?;
            let mut spec = RequestSpec::new("GET", &url);
            let last = fetch.offset_bytes + u64::from(fetch.length_bytes).max(1) - 1;
            spec.range = Some((fetch.offset_bytes, last));
            (address, spec)
        }
        _ => {
            let address = resolve(name)?;
            let target = format!("/v1/content/{}/piece/{}", fetch.content.id, fetch.piece);
            (address, RequestSpec::to_host("GET", name.to_string(), target))
        }
    };
    let mut spec = spec;
    spec.close = true;
    let connect = Duration::from_millis(context.connect_timeout_ms.max(1));
    let request = Duration::from_millis(context.request_timeout_ms.max(1));
    let mut stream = TcpStream::connect_timeout(&address, connect).map_err(io_failure)?;
    stream.set_read_timeout(Some(request)).map_err(io_failure)?;
    stream.set_write_timeout(Some(request)).map_err(io_failure)?;
    let limits = ClientLimits { body_bytes_max: u64::from(fetch.length_bytes), ..ClientLimits::default() };
    let response = match exchange(&mut stream, &spec, limits, Some(Instant::now() + request)) {
        Ok(response) => response,
        Err(ExchangeError::Io(error)) => return Err(io_failure(error)),
        Err(_) => return Err(FetchFailure::Failed),
    };
    match (kind, response.head.status) {
        (_, 404 | 416) => Err(FetchFailure::Missing),
        (SourceKind::Origin, 206)
            if response.head.content_range.is_some_and(|(start, ..)| start == fetch.offset_bytes) =>
        {
            Ok(response.body)
        }
        (SourceKind::Origin, _) => Err(FetchFailure::Failed),
        (_, 200) => Ok(response.body),
        _ => Err(FetchFailure::Failed),
    }
}

fn resolve(name: &str) -> Result<SocketAddr, FetchFailure> {
    name.to_socket_addrs().ok().and_then(|mut addresses| addresses.next()).ok_or(FetchFailure::Failed)
}

fn io_failure(error: std::io::Error) -> FetchFailure {
    match error.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => FetchFailure::TimedOut,
        _ => FetchFailure::Failed,
    }
}
