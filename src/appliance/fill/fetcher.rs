//! The fill's blocking helper threads, for what is rare and small or being rewritten: metadata
//! (manifest and hash file over TLS from the upstream service) and the Simple-mode pass-through.
//! One job at a time, blocking on the network (never a worker's or the fill loop's thread), each
//! bounded by its timeouts; each result wakes the fill loop. Pieces are not fetched here: they go
//! through the fill loop's connections (`fetch_loop.rs`).

use std::net::TcpStream;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::content::{Manifest, MetadataFailure};
use crate::control::client::MetadataClient;
use crate::fill::{MetaFetch, MetaFetchId, MetaStep, WaiterKey};
use crate::http::client::blocking::exchange;
use crate::http::client::{ClientLimits, RequestSpec};
use crate::http::url::HttpUrl;
use crate::io::client::Waker;

/// What a helper thread is asked to do.
pub enum Job {
    /// A manifest or hash file, from the upstream service over TLS.
    Meta(MetaFetch),
    /// A Simple-mode content's whole body from its HTTP source, for a waiter.
    Whole { waiter: WaiterKey, url: String, body_bytes_max: u64 },
}

/// How a job ended.
pub enum JobResult {
    Manifest(MetaFetchId, Result<Manifest, MetadataFailure>),
    HashFile(MetaFetchId, Result<Vec<u8>, MetadataFailure>),
    /// The body, or why it could not be had.
    Whole(WaiterKey, Result<Vec<u8>, String>),
}

/// What every helper thread shares.
pub struct Context {
    pub client: MetadataClient,
    pub service_url: String,
    /// Wakes the fill loop when a result is ready.
    pub waker: Waker,
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
}

/// Runs jobs until the fill thread goes away.
pub fn run(context: &Context, jobs: &Receiver<Job>, results: &Sender<JobResult>) {
    while let Ok(job) = jobs.recv() {
        let result = match job {
            Job::Meta(fetch) => meta(context, fetch),
            Job::Whole { waiter, url, body_bytes_max } => {
                JobResult::Whole(waiter, whole(context, &url, body_bytes_max))
            }
        };
        if results.send(result).is_err() {
            return;
        }
        let _ = context.waker.wake();
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

/// GETs a whole body from an `http://` URL (no redirects): 200 only, at most `body_bytes_max`.
fn whole(context: &Context, url: &str, body_bytes_max: u64) -> Result<Vec<u8>, String> {
    let parsed = HttpUrl::parse(url).map_err(|error| format!("{url}: {error}"))?;
    let address = parsed.resolve().map_err(|error| format!("{url}: {error}"))?;
    let mut spec = RequestSpec::new("GET", &parsed);
    spec.close = true;
    let connect = Duration::from_millis(context.connect_timeout_ms.max(1));
    let request = Duration::from_millis(context.request_timeout_ms.max(1));
    let failed = |error: std::io::Error| format!("{url}: {error}");
    let mut stream = TcpStream::connect_timeout(&address, connect).map_err(failed)?;
    stream.set_read_timeout(Some(request)).map_err(failed)?;
    stream.set_write_timeout(Some(request)).map_err(failed)?;
    let limits = ClientLimits { body_bytes_max, ..ClientLimits::default() };
    let response = exchange(&mut stream, &spec, limits, Some(Instant::now() + request))
        .map_err(|error| format!("{url}: {error}"))?;
    match response.head.status {
        200 => Ok(response.body),
        status => Err(format!("{url} answered {status}")),
    }
}
