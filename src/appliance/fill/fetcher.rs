//! The fill's blocking helper threads for metadata: the manifest and hash file over TLS from the
//! upstream service (rare and small). One job at a time, blocking on the network (never a
//! worker's or the fill loop's thread), bounded by the metadata client's timeout; each result
//! wakes the fill loop. Pieces go through the fill loop's connections (`fetch_loop.rs`), Simple-mode
//! pass-throughs through the pass-through loop (`passthrough.rs`).

use crossbeam_channel::{Receiver, Sender};

use crate::content::{Manifest, MetadataFailure};
use crate::download::{MetadataSource, ServiceMetadata};
use crate::fill::{MetaFetch, MetaFetchId, MetaStep};
use crate::io::client::Waker;

/// What a helper thread is asked to do.
pub enum Job {
    /// A manifest or hash file, from the upstream service over TLS.
    Meta(MetaFetch),
}

/// How a job ended.
pub enum JobResult {
    Manifest(MetaFetchId, Result<Manifest, MetadataFailure>),
    HashFile(MetaFetchId, Result<Vec<u8>, MetadataFailure>),
}

/// What every helper thread shares.
pub struct Context {
    /// The upstream services, ranked per content (the next asked when one fails).
    pub services: ServiceMetadata,
    /// Wakes the fill loop when a result is ready.
    pub waker: Waker,
}

/// Runs jobs until the fill thread goes away.
pub fn run(context: &Context, jobs: &Receiver<Job>, results: &Sender<JobResult>) {
    while let Ok(job) = jobs.recv() {
        let result = match job {
            Job::Meta(fetch) => meta(context, fetch),
        };
        if results.send(result).is_err() {
            return;
        }
        let _ = context.waker.wake();
    }
}

fn meta(context: &Context, fetch: MetaFetch) -> JobResult {
    match fetch.step {
        MetaStep::Manifest => JobResult::Manifest(fetch.fetch, context.services.manifest(&fetch.id)),
        MetaStep::HashFile(_) => JobResult::HashFile(fetch.fetch, context.services.hashfile(&fetch.id)),
    }
}
