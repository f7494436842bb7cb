//! The embedded service's asks, on a cache box's fill thread. When a device (or a box a tier
//! below) asks this box's service for the manifest or hash file of an id the catalog lacks, the
//! service's catalog keeper asks the fill thread for it. The ask becomes one more waiter of the
//! same [`MetadataCache`] as the data plane's misses, so the id's metadata is fetched once
//! whoever asks; verified, it is written to the catalog and the keeper is told to load it from
//! disk. An id in Simple mode is answered unavailable (the service says 404): the box never
//! hands out metadata it cannot vouch for.
//!
//! The fill loop takes asks with `FillThread::take_asks` whenever it wakes; the keeper wakes its
//! client loop after each ask (the waker registered by `FillThread::set_asked`).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use super::FillThread;
use crate::content::{ContentId, SimpleReason};
use crate::control::snapshot::{Fetched, MetadataUpstream, UpstreamMiss};
use crate::fill::{MetaAnswer, Metadata, WaiterKey, WaiterToken, WorkerId};
use crate::io::client::Waker;

/// The waiter id of the service's asks in the metadata cache: no data-plane worker has it.
const SERVICE: WorkerId = WorkerId(u16::MAX);

/// The link between the keeper and the fill thread: `asks_max` asks queued and waiting at most
/// each; the keeper answers 504 to a request still waiting after `timeout`.
pub fn link(asks_max: usize, timeout: Duration) -> (MetadataUpstream, ServiceAsks) {
    let asks_max = asks_max.max(1);
    let (asks_tx, asks) = crossbeam_channel::bounded(asks_max);
    // One answer per ask taken, and at most `asks_max` taken and unanswered: never full in use.
    let (answers, answers_rx) = crossbeam_channel::bounded(asks_max);
    let waker: Arc<OnceLock<Waker>> = Arc::default();
    let wakes = waker.clone();
    let wake = Box::new(move || {
        if let Some(Err(error)) = wakes.get().map(Waker::wake) {
            tracing::warn!(%error, "cannot wake the fill thread");
        }
    });
    let upstream = MetadataUpstream { asks: asks_tx, wake, answers: answers_rx, timeout };
    let asked = ServiceAsks { asks, answers, waker, waiting: HashMap::new(), waiting_max: asks_max, next_token: 0 };
    (upstream, asked)
}

/// The fill thread's end of [`link`]: the asks, and who waits for which id.
pub struct ServiceAsks {
    asks: Receiver<ContentId>,
    answers: Sender<Fetched>,
    waker: Arc<OnceLock<Waker>>,
    waiting: HashMap<WaiterKey, ContentId>,
    waiting_max: usize,
    next_token: u64,
}

impl ServiceAsks {
    /// The fill loop registers its wake-up, so an ask ends its wait.
    pub fn set_waker(&self, waker: Waker) {
        let _ = self.waker.set(waker);
    }

    /// A waiter for `id`; `None` at the limit (answered busy).
    fn register(&mut self, id: &ContentId) -> Option<WaiterKey> {
        if self.waiting.len() >= self.waiting_max {
            return None;
        }
        self.next_token += 1;
        let key = WaiterKey { worker: SERVICE, token: WaiterToken(self.next_token) };
        self.waiting.insert(key, id.clone());
        Some(key)
    }

    /// Whether `key` is one of the service's asks.
    fn owns(&self, key: WaiterKey) -> bool {
        key.worker == SERVICE && self.waiting.contains_key(&key)
    }

    /// Answers the ask of `key` once.
    fn finish(&mut self, key: WaiterKey, result: Result<(), UpstreamMiss>) {
        if let Some(id) = self.waiting.remove(&key) {
            self.send(id, result);
        }
    }

    fn send(&self, id: ContentId, result: Result<(), UpstreamMiss>) {
        // Bounded by `waiting_max`, like the queue; a keeper gone has nobody to answer.
        if let Err(error) = self.answers.try_send(Fetched { id, result }) {
            tracing::warn!(%error, "the service's catalog keeper is not taking metadata answers");
        }
    }
}

/// What the service answers for an id whose metadata the fill found to be `simple`.
fn simple_miss(reason: &SimpleReason) -> UpstreamMiss {
    let reason_text = reason.to_string();
    match reason {
        SimpleReason::ManifestFetch(_) | SimpleReason::HashFileFetch(_) => {
            UpstreamMiss::Unreachable { reason: reason_text }
        }
        _ => UpstreamMiss::Unverified { reason: reason_text },
    }
}

impl FillThread {
    /// Links the service's asks to this fill thread: an ask wakes its client loop.
    pub(super) fn set_asked(&mut self, asked: Option<ServiceAsks>) {
        if let Some(asked) = &asked {
            asked.set_waker(self.fetches.waker());
        }
        self.asked = asked;
    }

    /// Takes every queued ask of the embedded service (bounded by the queue's bound).
    pub(super) fn take_asks(&mut self) {
        while let Some(id) = self.asked.as_ref().and_then(|asked| asked.asks.try_recv().ok()) {
            self.on_asked(id);
        }
    }

    /// The service asks for `id`'s metadata: it waits on the one fetch of that id.
    pub(super) fn on_asked(&mut self, id: ContentId) {
        let now = self.now_ms();
        let Some(asked) = self.asked.as_mut() else { return };
        let Some(key) = asked.register(&id) else {
            return asked.send(id, Err(UpstreamMiss::Busy { retry_after_s: 1 }));
        };
        match self.meta.request(key, &id, now) {
            MetaAnswer::Ready(metadata) => {
                self.answer_asked(key, metadata);
            }
            MetaAnswer::Pending => {}
            MetaAnswer::Busy { retry_after_s } => asked.finish(key, Err(UpstreamMiss::Busy { retry_after_s })),
        }
    }

    /// Answers the service's ask `key` with its metadata, once it is in the catalog; gives the
    /// metadata back when `key` is not the service's (a data-plane waiter).
    pub(super) fn answer_asked(&mut self, key: WaiterKey, metadata: Metadata) -> Option<Metadata> {
        if !self.asked.as_ref().is_some_and(|asked| asked.owns(key)) {
            return Some(metadata);
        }
        let result = match &metadata {
            Metadata::P2p(content) => self.catalog_version(content).map_err(|reason| UpstreamMiss::Local { reason }),
            Metadata::Simple(simple) => Err(simple_miss(&simple.reason)),
        };
        if let Some(asked) = self.asked.as_mut() {
            asked.finish(key, result);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::appliance::fill::fetcher::{Job, JobResult};
    use crate::catalog::Catalog;
    use crate::config::{Config, StoreConfig, UpstreamConfig};
    use crate::content::{HashFile, Manifest, MetadataFailure, PieceSize};
    use crate::dataplane::connection::ResponseToken;
    use crate::dataplane::upstream::{Filled, Miss, Need, UpstreamLink};
    use crate::fill::MetaStep;
    use crate::io::slots::SlotKey;
    use crate::store::Store;

    /// A fill thread over a data dir `dir`, with the service's asks linked; its helpers' queue.
    fn fill(
        dir: &std::path::Path,
        asks_max: usize,
    ) -> (FillThread, MetadataUpstream, Receiver<Job>, Arc<UpstreamLink>) {
        let config = Config { data_dir: dir.to_path_buf(), ..Config::default() };
        let upstream = UpstreamConfig { service_url: "https://upstream.test".into(), ..UpstreamConfig::default() };
        let store = Arc::new(Store::open(&dir.join("store"), &StoreConfig::default()).unwrap());
        let (link, _misses) = UpstreamLink::new(1);
        let link = Arc::new(link);
        let (jobs, fetches) = crossbeam_channel::bounded(16);
        let mut thread = FillThread::new(&config, &upstream, store, link.clone(), jobs).unwrap();
        let (service, asked) = super::link(asks_max, Duration::from_secs(1));
        thread.set_asked(Some(asked));
        (thread, service, fetches, link)
    }

    fn metadata(id: &str) -> (Manifest, Vec<u8>) {
        let hashfile = HashFile::new(PieceSize::new(65536).unwrap(), 10, vec![[7; 32]]).unwrap().to_bytes();
        let manifest = Manifest {
            version: 1,
            content_id: id.into(),
            content_length: 10,
            piece_size: 65536,
            hashfile_sha256: hex::encode(crate::hash::sha256(&hashfile)),
            hashfile_urls: vec![],
            sources: vec![],
            sha256: None,
        };
        (manifest, hashfile)
    }

    /// The next metadata fetch the fill thread queued.
    fn next_meta(fetches: &Receiver<Job>) -> crate::fill::MetaFetch {
        match fetches.try_recv() {
            Ok(Job::Meta(fetch)) => fetch,
            Err(error) => panic!("no fetch queued: {error}"),
        }
    }

    #[test]
    fn an_ask_shares_the_data_planes_fetch_and_is_answered_once_cataloged() {
        let dir = tempfile::tempdir().unwrap();
        let (mut thread, service, fetches, link) = fill(dir.path(), 4);
        let id = ContentId::parse("pkg").unwrap();
        let token = ResponseToken { connection: SlotKey { index: 0, generation: 0 }, seq: 1 };
        thread.on_miss(Miss { worker: 0, token, id: id.clone(), need: Need::Metadata, if_range: None });
        thread.pump();
        service.asks.send(id.clone()).unwrap();
        thread.take_asks();
        thread.pump();
        let manifest_fetch = next_meta(&fetches);
        assert!(fetches.is_empty(), "the ask joined the miss's fetch");
        let (manifest, hashfile) = metadata("pkg");
        thread.on_result(JobResult::Manifest(manifest_fetch.fetch, Ok(manifest.clone())));
        thread.pump();
        let hashfile_fetch = next_meta(&fetches);
        assert!(matches!(hashfile_fetch.step, MetaStep::HashFile(_)));
        assert!(service.answers.is_empty(), "no answer before the hash file is verified");
        thread.on_result(JobResult::HashFile(hashfile_fetch.fetch, Ok(hashfile.clone())));
        thread.pump();
        assert_eq!(service.answers.try_recv().unwrap(), Fetched { id: id.clone(), result: Ok(()) });
        assert!(service.answers.is_empty(), "one answer per ask");
        let catalog = Catalog::new(dir.path().join("catalog"));
        assert_eq!(catalog.read_manifest(&id).unwrap(), Some(manifest));
        assert_eq!(catalog.read_hashfile(&id).unwrap(), Some(hashfile));
        let filled: Vec<Filled> = link.take_done(0).map(|done| done.filled).collect();
        assert_eq!(filled, vec![Filled::Ready], "the data-plane miss got its answer too");
        // Known now: a second ask is answered from the cache, without a fetch.
        service.asks.send(id.clone()).unwrap();
        thread.take_asks();
        thread.pump();
        assert!(fetches.is_empty());
        assert_eq!(service.answers.try_recv().unwrap().result, Ok(()));
    }

    #[test]
    fn what_the_box_cannot_vouch_for_is_unverified_and_asks_past_the_limit_are_busy() {
        let dir = tempfile::tempdir().unwrap();
        let (mut thread, service, fetches, _link) = fill(dir.path(), 2);
        let ids: Vec<ContentId> = ["a", "b", "c"].iter().map(|id| ContentId::parse(id).unwrap()).collect();
        for id in &ids {
            thread.on_asked(id.clone());
        }
        thread.pump();
        let busy = service.answers.try_recv().unwrap();
        assert_eq!((busy.id.as_str(), busy.result), ("c", Err(UpstreamMiss::Busy { retry_after_s: 1 })));
        // `a`: upstream has no manifest; `b`: its hash file does not match the manifest.
        let (fetch_a, fetch_b) = (next_meta(&fetches), next_meta(&fetches));
        thread.on_result(JobResult::Manifest(fetch_a.fetch, Err(MetadataFailure::NotFound)));
        let (manifest, mut hashfile) = metadata("b");
        thread.on_result(JobResult::Manifest(fetch_b.fetch, Ok(manifest)));
        thread.pump();
        *hashfile.last_mut().unwrap() ^= 1;
        thread.on_result(JobResult::HashFile(next_meta(&fetches).fetch, Ok(hashfile)));
        thread.pump();
        let answers: HashMap<String, Result<(), UpstreamMiss>> =
            service.answers.try_iter().map(|fetched| (fetched.id.to_string(), fetched.result)).collect();
        assert_eq!(answers.len(), 2, "{answers:?}");
        for id in ["a", "b"] {
            let miss = answers[id].clone().unwrap_err();
            assert_eq!(miss.status(), 404, "{id}: {miss}");
        }
        assert!(answers["b"].clone().unwrap_err().to_string().contains("does not match"), "{answers:?}");
        assert_eq!(
            Catalog::new(dir.path().join("catalog")).list().unwrap(),
            Vec::<ContentId>::new(),
            "nothing cataloged"
        );
    }

    #[test]
    fn upstream_fetch_failures_are_502_and_verification_failures_404() {
        let fetch = simple_miss(&SimpleReason::ManifestFetch("timed out after 10 ms".into()));
        assert_eq!(fetch.status(), 502);
        assert_eq!(simple_miss(&SimpleReason::HashFileFetch("refused".into())).status(), 502);
        assert_eq!(simple_miss(&SimpleReason::NoManifest).status(), 404);
        assert_eq!(simple_miss(&SimpleReason::NoHashFile).status(), 404);
    }
}
