//! The fill engine driven by hand: every input is an event, every output is checked.

use std::sync::{Arc, Mutex};

use crate::content::{ContentId, Digest, HashFile, Manifest, PieceSize};

use super::*;

const PIECE: u32 = 65536;

fn limits() -> FillLimits {
    FillLimits {
        fills_in_flight_max: 4,
        pieces_in_flight_per_fill_max: 8,
        read_ahead_pieces: 2,
        requests_per_source_max: 8,
        request_timeout_ms: 1_000,
        piece_memory_bytes_max: 64 * u64::from(PIECE),
        waiters_per_piece_max: 8,
        retries_per_piece_max: 2,
        fill_whole: false,
        busy_retry_after_s: 3,
    }
}

/// A content whose piece `i` has digest `[digests[i]; 32]`.
fn content(id: &str, digests: &[u8]) -> Arc<ContentVersion> {
    let length = digests.len() as u64 * u64::from(PIECE);
    let hashes =
        HashFile::new(PieceSize::new(PIECE).unwrap(), length, digests.iter().map(|d| [*d; 32]).collect()).unwrap();
    let manifest = Manifest {
        version: 1,
        content_id: id.into(),
        content_length: length,
        piece_size: PIECE,
        hashfile_sha256: String::new(),
        hashfile_urls: vec![],
        sources: vec![],
        sha256: None,
    };
    Arc::new(ContentVersion { id: ContentId::parse(id).unwrap(), version: 1, manifest, hashes })
}

fn key(worker: u16, token: u64) -> WaiterKey {
    WaiterKey { worker: WorkerId(worker), token: WaiterToken(token) }
}

/// What a policy was told, shared with the test.
type Record = Arc<Mutex<Vec<(SourceId, Outcome)>>>;

/// Round robin that remembers every outcome it is told (the ban policy's view).
struct Recording {
    inner: RoundRobin,
    record: Record,
}

impl SourcePolicy for Recording {
    fn pick(&mut self, digest: &Digest, candidates: &[Candidate], now_ms: u64) -> Pick {
        self.inner.pick(digest, candidates, now_ms)
    }
    fn record(&mut self, source: SourceId, outcome: Outcome, _now_ms: u64) {
        self.record.lock().unwrap().push((source, outcome));
    }
}

struct Box_ {
    engine: FillEngine,
    sources: Vec<SourceId>,
    record: Record,
}

/// An engine with `source_count` origin sources given with every want.
fn engine_with(limits: FillLimits, source_count: u32) -> Box_ {
    let record = Record::default();
    let policy = Recording { inner: RoundRobin::default(), record: record.clone() };
    let mut engine = FillEngine::new(limits, Box::new(policy));
    let sources =
        (0..source_count).map(|n| engine.add_source(SourceKind::Origin, &format!("http://o{n}/c")).unwrap()).collect();
    Box_ { engine, sources, record }
}

impl Box_ {
    fn want(&mut self, waiter: WaiterKey, content: &Arc<ContentVersion>, first: u64, end: u64, now_ms: u64) {
        let want = Want {
            waiter,
            content: content.clone(),
            first_piece: first,
            end_piece: end,
            sources: self.sources.clone(),
            missed_at_ms: now_ms,
        };
        self.engine.handle_want(want, now_ms);
    }

    fn starts(&mut self) -> Vec<Fetch> {
        self.actions().0
    }

    /// Started fetches and cancelled fetch ids since the last call.
    fn actions(&mut self) -> (Vec<Fetch>, Vec<FetchId>) {
        let (mut starts, mut cancels) = (Vec::new(), Vec::new());
        while let Some(action) = self.engine.poll_fetch() {
            match action {
                FetchAction::Start(fetch) => starts.push(fetch),
                FetchAction::Cancel { fetch } => cancels.push(fetch),
            }
        }
        (starts, cancels)
    }

    fn notes(&mut self) -> Vec<Notification> {
        std::iter::from_fn(|| self.engine.poll_notification()).collect()
    }

    /// Received, verified, stored.
    fn land(&mut self, fetch: FetchId, now_ms: u64) {
        self.engine.handle_received(fetch, now_ms);
        self.engine.handle_verified(fetch, now_ms);
        self.engine.handle_stored(fetch, now_ms);
    }
}

fn landed(worker: u16, tokens: &[u64], digest: u8) -> Notification {
    let tokens = tokens.iter().map(|t| WaiterToken(*t)).collect();
    Notification { worker: WorkerId(worker), tokens, event: WaiterEvent::Landed { digest: [digest; 32] } }
}

fn busy(worker: u16, token: u64) -> Notification {
    Notification {
        worker: WorkerId(worker),
        tokens: vec![WaiterToken(token)],
        event: WaiterEvent::Busy { retry_after_s: 3 },
    }
}

fn pieces(starts: &[Fetch]) -> Vec<u64> {
    starts.iter().map(|f| f.piece).collect()
}

#[test]
fn waiters_on_two_workers_share_one_fetch_and_each_worker_is_told_once() {
    let mut b = engine_with(limits(), 2);
    let c = content("c", &[1, 2]);
    for token in 0..3 {
        b.want(key(0, token), &c, 0, 1, 0);
        b.want(key(1, token), &c, 0, 1, 0);
    }
    let starts = b.starts();
    assert_eq!(pieces(&starts), [0], "six waiters, one fetch");
    assert_eq!((starts[0].offset_bytes, starts[0].length_bytes, starts[0].digest), (0, PIECE, [1; 32]));
    assert_eq!(b.engine.counters().coalesced_waiters_total, 5);
    b.land(starts[0].fetch, 10);
    assert_eq!(b.notes(), [landed(0, &[0, 1, 2], 1), landed(1, &[0, 1, 2], 1)]);
    let counters = b.engine.counters();
    assert_eq!(
        (counters.first_byte_ms.count(), counters.first_byte_ms.sum_ms()),
        (6, 60),
        "each waiter could answer at 10 ms"
    );
    assert_eq!((counters.piece_fetch_ms.count(), counters.piece_fetch_ms.sum_ms()), (1, 10), "one fetch, 10 ms");
    assert_eq!((b.engine.pieces_in_flight(), b.engine.piece_memory_bytes()), (0, 0));
}

#[test]
fn two_contents_sharing_a_digest_share_its_fill() {
    let mut b = engine_with(limits(), 1);
    let (first, second) = (content("a", &[7, 2]), content("b", &[3, 7]));
    b.want(key(0, 1), &first, 0, 1, 0);
    b.want(key(1, 2), &second, 1, 2, 0);
    let starts = b.starts();
    assert_eq!(starts.len(), 1, "one fetch for digest 7 although two contents want it");
    b.land(starts[0].fetch, 5);
    assert_eq!(b.notes(), [landed(0, &[1], 7), landed(1, &[2], 7)]);
}

#[test]
fn no_waiter_is_told_before_the_piece_is_stored() {
    let mut b = engine_with(limits(), 1);
    let c = content("c", &[1]);
    b.want(key(0, 1), &c, 0, 1, 0);
    let fetch = b.starts()[0].fetch;
    b.engine.handle_received(fetch, 1);
    b.engine.handle_verified(fetch, 2);
    assert_eq!(b.notes(), [], "verified is not yet stored");
    b.engine.handle_stored(fetch, 3);
    assert_eq!(b.notes(), [landed(0, &[1], 1)]);
}

#[test]
#[should_panic(expected = "stored before it was verified")]
fn a_piece_stored_before_verification_is_refused() {
    let mut b = engine_with(limits(), 1);
    b.want(key(0, 1), &content("c", &[1]), 0, 1, 0);
    let fetch = b.starts()[0].fetch;
    b.engine.handle_stored(fetch, 1);
}

#[test]
fn a_bad_piece_is_fetched_again_elsewhere_and_its_source_blamed() {
    let mut b = engine_with(limits(), 2);
    let c = content("c", &[1]);
    b.want(key(0, 1), &c, 0, 1, 0);
    let first = b.starts().remove(0);
    b.engine.handle_received(first.fetch, 1);
    b.engine.handle_bad(first.fetch, 2);
    let second = b.starts().remove(0);
    assert_ne!(second.source, first.source, "asked of the other source");
    assert_eq!(b.record.lock().unwrap().as_slice(), [(first.source, Outcome::Bad)]);
    assert_eq!((b.engine.counters().bad_pieces_total, b.engine.counters().retries_total), (1, 1));
    assert_eq!(b.notes(), []);
    b.land(second.fetch, 3);
    assert_eq!(b.notes(), [landed(0, &[1], 1)]);
    assert_eq!(b.engine.counters().bytes_from(SourceKind::Origin), u64::from(PIECE), "only good bytes count");
    let (liar, honest) = (b.engine.counters().source(first.source), b.engine.counters().source(second.source));
    assert_eq!((liar.bytes, liar.bad_pieces), (0, 1), "the liar is blamed per source");
    assert_eq!((honest.bytes, honest.bad_pieces), (u64::from(PIECE), 0));
}

/// First-byte latency runs from the miss (metadata time included) to the waiter's first piece
/// stored, once per waiter; a piece's fetch time from its request to its bytes verified.
#[test]
fn latencies_are_measured_on_the_engine_clock_from_the_miss_and_from_the_request() {
    let mut b = engine_with(limits(), 1);
    let c = content("c", &[1, 2]);
    let want = Want {
        waiter: key(0, 1),
        content: c.clone(),
        first_piece: 0,
        end_piece: 2,
        sources: b.sources.clone(),
        missed_at_ms: 0,
    };
    // The metadata took 40 ms: the want comes then.
    b.engine.handle_want(want, 40);
    let starts = b.starts();
    assert_eq!(pieces(&starts), [0, 1], "a window of two");
    b.engine.handle_received(starts[1].fetch, 60);
    b.engine.handle_verified(starts[1].fetch, 70);
    b.engine.handle_stored(starts[1].fetch, 75);
    assert_eq!(b.engine.counters().first_byte_ms.count(), 0, "piece 1 is not the first byte");
    b.engine.handle_received(starts[0].fetch, 90);
    b.engine.handle_verified(starts[0].fetch, 100);
    b.engine.handle_stored(starts[0].fetch, 130);
    let counters = b.engine.counters();
    assert_eq!((counters.first_byte_ms.count(), counters.first_byte_ms.sum_ms()), (1, 130));
    assert_eq!((counters.piece_fetch_ms.count(), counters.piece_fetch_ms.sum_ms()), (2, 30 + 60));
    assert_eq!(counters.piece_fetch_ms.count_at_most(29), 0);
    assert_eq!(counters.piece_fetch_ms.count_at_most(30), 1);
}

#[test]
fn a_piece_every_source_lied_about_fails_its_waiters() {
    let mut b = engine_with(limits(), 2);
    b.want(key(0, 1), &content("c", &[1, 2]), 0, 2, 0);
    b.want(key(1, 1), &content("c", &[1, 2]), 0, 1, 0);
    for _ in 0..2 {
        let fetch = b.starts().into_iter().find(|f| f.piece == 0).unwrap().fetch;
        b.engine.handle_bad(fetch, 1);
    }
    let failed = |worker| Notification {
        worker: WorkerId(worker),
        tokens: vec![WaiterToken(1)],
        event: WaiterEvent::Failed { digest: [1; 32], reason: FailReason::NoSource },
    };
    assert_eq!(b.notes(), [failed(0), failed(1)]);
    assert_eq!(b.engine.waiters(), 0, "failed waiters are forgotten");
    let (_, cancels) = b.actions();
    assert_eq!(cancels.len(), 1, "piece 1 of the failed stream is no longer fetched");
    assert_eq!((b.engine.fills_in_flight(), b.engine.pieces_in_flight()), (0, 0));
}

#[test]
fn a_fetch_past_its_deadline_is_cancelled_and_retried_then_failed_past_the_retry_bound() {
    let mut b = engine_with(limits(), 1);
    b.want(key(0, 1), &content("c", &[1]), 0, 1, 100);
    let first = b.starts().remove(0);
    assert_eq!(b.engine.poll_timeout(), Some(1_100));
    b.engine.handle_timeout(1_099);
    assert_eq!(b.actions().0.len(), 0, "nothing is due before the deadline");
    b.engine.handle_timeout(1_100);
    let (starts, cancels) = b.actions();
    assert_eq!(cancels, [first.fetch]);
    assert_eq!(starts[0].source, first.source, "a timeout does not exclude the only source");
    assert_eq!(b.engine.poll_timeout(), Some(2_100));
    b.engine.handle_timeout(2_100);
    let third = b.starts().remove(0);
    b.engine.handle_fetch_failed(third.fetch, FetchFailure::Failed, 2_200);
    let reason = FailReason::TooManyFailures { attempts: 3 };
    let failed = WaiterEvent::Failed { digest: [1; 32], reason };
    assert_eq!(b.notes(), [Notification { worker: WorkerId(0), tokens: vec![WaiterToken(1)], event: failed }]);
    assert_eq!(b.engine.poll_timeout(), None);
    assert_eq!(b.record.lock().unwrap().iter().filter(|(_, o)| *o == Outcome::Failed).count(), 3);
}

#[test]
fn late_answers_about_a_cancelled_fetch_are_ignored() {
    let mut b = engine_with(limits(), 1);
    let c = content("c", &[1]);
    b.want(key(0, 1), &c, 0, 1, 0);
    let fetch = b.starts()[0].fetch;
    b.engine.handle_cancel(key(0, 1), 1);
    assert_eq!(b.actions().1, [fetch]);
    b.engine.handle_verified(fetch, 2);
    b.engine.handle_stored(fetch, 3);
    assert_eq!(b.notes(), []);
    assert_eq!(b.engine.counters().pieces_stored_total, 0);
}

#[test]
fn a_waiter_that_goes_away_releases_its_claim_but_not_others() {
    let mut b = engine_with(limits(), 1);
    let c = content("c", &[1]);
    b.want(key(0, 1), &c, 0, 1, 0);
    b.want(key(1, 1), &c, 0, 1, 0);
    let fetch = b.starts()[0].fetch;
    b.engine.handle_cancel(key(0, 1), 1);
    assert_eq!(b.actions().1, [], "the other waiter still needs it");
    b.land(fetch, 2);
    assert_eq!(b.notes(), [landed(1, &[1], 1)]);
}

#[test]
fn a_fill_nobody_waits_for_is_dropped_without_fill_whole() {
    let mut b = engine_with(limits(), 1);
    b.want(key(0, 1), &content("c", &[1, 2, 3]), 0, 3, 0);
    let starts = b.starts();
    assert_eq!(pieces(&starts), [0, 1]);
    b.engine.handle_cancel(key(0, 1), 1);
    let mut cancels = b.actions().1;
    cancels.sort();
    assert_eq!(cancels, [starts[0].fetch, starts[1].fetch]);
    assert_eq!((b.engine.fills_in_flight(), b.engine.pieces_in_flight(), b.engine.piece_memory_bytes()), (0, 0, 0));
    assert_eq!(b.engine.counters().cancelled_fetches_total, 2);
}

#[test]
fn with_fill_whole_a_range_keeps_filling_the_rest_in_the_background() {
    let mut b = engine_with(FillLimits { fill_whole: true, pieces_in_flight_per_fill_max: 2, ..limits() }, 1);
    b.want(key(0, 1), &content("c", &[1, 2, 3, 4]), 2, 3, 0);
    let first = b.starts();
    assert_eq!(first[0].piece, 2, "the waiter's piece goes first");
    assert_eq!(pieces(&first[1..]), [0], "then background, within the fill's budget");
    b.engine.handle_cancel(key(0, 1), 1);
    assert_eq!(b.actions().1, [], "the range's piece is kept for the background fill");
    // The fetcher as integration runs it: the store is checked before going upstream.
    let mut fetched_upstream = Vec::new();
    let mut pending = first;
    for round in 0..8 {
        for fetch in std::mem::take(&mut pending) {
            if fetched_upstream.contains(&fetch.piece) {
                b.engine.handle_already_stored(fetch.fetch, 10 + round);
            } else {
                fetched_upstream.push(fetch.piece);
                b.land(fetch.fetch, 10 + round);
            }
        }
        pending = b.starts();
    }
    fetched_upstream.sort();
    assert_eq!(fetched_upstream, [0, 1, 2, 3], "every piece was fetched upstream once");
    assert_eq!(b.engine.fills_in_flight(), 0, "the finished fill is gone");
}

#[test]
fn a_background_fill_gives_way_to_a_fill_somebody_waits_for() {
    let limits = FillLimits { fill_whole: true, fills_in_flight_max: 1, ..limits() };
    let mut b = engine_with(limits, 1);
    b.want(key(0, 1), &content("a", &[1, 2, 3]), 0, 1, 0);
    b.engine.handle_cancel(key(0, 1), 1);
    assert_eq!(b.engine.fills_in_flight(), 1, "a keeps filling in the background");
    b.want(key(0, 2), &content("b", &[4]), 0, 1, 2);
    assert_eq!(b.notes(), [], "b is not busy: a's background fill made room");
    assert!(b.starts().iter().any(|f| f.digest == [4; 32]));
    assert_eq!(b.engine.fills_in_flight(), 1);
}

#[test]
fn a_full_waiter_list_answers_busy() {
    let mut b = engine_with(FillLimits { waiters_per_piece_max: 2, ..limits() }, 1);
    let c = content("c", &[1]);
    for token in 0..3 {
        b.want(key(0, token), &c, 0, 1, 0);
    }
    assert_eq!(b.notes(), [busy(0, 2)]);
    assert_eq!((b.engine.waiters(), b.engine.counters().busy_total), (2, 1));
}

#[test]
fn a_stream_already_under_way_is_never_made_busy_by_a_full_waiter_list() {
    let mut b = engine_with(FillLimits { waiters_per_piece_max: 1, ..limits() }, 1);
    let c = content("c", &[1, 2, 3]);
    // a streams the whole content (a window of two); b waits for piece 2 alone and fills its list.
    b.want(key(0, 1), &c, 0, 3, 0);
    b.want(key(0, 2), &c, 2, 3, 0);
    let starts = b.starts();
    assert_eq!(pieces(&starts), [0, 1, 2]);
    for fetch in &starts[..2] {
        b.land(fetch.fetch, 1);
    }
    assert_eq!(b.notes(), [landed(0, &[1], 1), landed(0, &[1], 2)]);
    // a has sent pieces 0 and 1; its next piece's list is full, yet it must not be cut short.
    b.engine.handle_progress(key(0, 1), 2, 2);
    assert_eq!(b.notes(), [], "no busy answer in the middle of a stream");
    b.land(starts[2].fetch, 3);
    assert_eq!(b.notes(), [landed(0, &[1, 2], 3)], "both are told when piece 2 lands");
    assert_eq!(b.engine.counters().busy_total, 0);
}

#[test]
fn a_fill_past_the_fill_limit_answers_busy() {
    let mut b = engine_with(FillLimits { fills_in_flight_max: 1, ..limits() }, 1);
    b.want(key(0, 1), &content("a", &[1]), 0, 1, 0);
    b.want(key(0, 2), &content("b", &[2]), 0, 1, 0);
    assert_eq!(b.notes(), [busy(0, 2)]);
    assert_eq!(b.engine.fills_in_flight(), 1);
}

#[test]
fn spent_piece_memory_answers_busy_for_a_new_piece_but_joins_one_in_flight() {
    let mut b = engine_with(FillLimits { piece_memory_bytes_max: u64::from(PIECE), ..limits() }, 1);
    let a = content("a", &[1]);
    b.want(key(0, 1), &a, 0, 1, 0);
    b.want(key(0, 2), &content("b", &[2]), 0, 1, 0);
    b.want(key(0, 3), &a, 0, 1, 0);
    assert_eq!(b.notes(), [busy(0, 2)]);
    assert_eq!(b.engine.piece_memory_bytes(), u64::from(PIECE));
}

#[test]
fn the_read_ahead_window_advances_as_the_stream_is_consumed() {
    let mut b = engine_with(limits(), 1);
    let c = content("c", &[10, 11, 12, 13, 14]);
    b.want(key(0, 1), &c, 0, 5, 0);
    let first = b.starts();
    assert_eq!(pieces(&first), [0, 1], "a window of two pieces");
    b.land(first[0].fetch, 1);
    assert_eq!(b.starts().len(), 0, "landing does not move the window; consuming does");
    b.engine.handle_progress(key(0, 1), 1, 2);
    assert_eq!(pieces(&b.starts()), [2]);
    b.engine.handle_progress(key(0, 1), 3, 3);
    assert_eq!(pieces(&b.starts()), [3, 4]);
    b.engine.handle_progress(key(0, 1), 5, 4);
    assert_eq!(b.engine.waiters(), 0, "a waiter past its end is done");
}

#[test]
fn pieces_in_flight_per_fill_and_per_source_are_bounded() {
    let limits =
        FillLimits { read_ahead_pieces: 8, pieces_in_flight_per_fill_max: 3, requests_per_source_max: 2, ..limits() };
    let mut b = engine_with(limits, 2);
    b.want(key(0, 1), &content("c", &[1, 2, 3, 4, 5, 6]), 0, 6, 0);
    let first = b.starts();
    assert_eq!(pieces(&first), [0, 1, 2], "three per fill");
    b.land(first[0].fetch, 1);
    let next = b.starts();
    assert_eq!(pieces(&next), [3], "a landed piece frees one place");

    let mut b = engine_with(FillLimits { read_ahead_pieces: 8, requests_per_source_max: 1, ..limits }, 1);
    b.want(key(0, 1), &content("c", &[1, 2, 3]), 0, 3, 0);
    let first = b.starts();
    assert_eq!(pieces(&first), [0], "one request slot on the only source");
    b.engine.handle_received(first[0].fetch, 1);
    assert_eq!(pieces(&b.starts()), [1], "the slot frees when the answer is in");
}

#[test]
fn a_content_without_sources_fails_at_once() {
    let mut b = engine_with(limits(), 0);
    b.want(key(0, 1), &content("c", &[1]), 0, 1, 0);
    let failed = WaiterEvent::Failed { digest: [1; 32], reason: FailReason::NoSource };
    assert_eq!(b.notes(), [Notification { worker: WorkerId(0), tokens: vec![WaiterToken(1)], event: failed }]);
}

#[test]
fn a_piece_found_in_the_store_lands_without_a_fetch() {
    let mut b = engine_with(limits(), 1);
    b.want(key(0, 1), &content("c", &[1]), 0, 1, 0);
    let fetch = b.starts()[0].fetch;
    b.engine.handle_already_stored(fetch, 1);
    assert_eq!(b.notes(), [landed(0, &[1], 1)]);
    assert_eq!(b.engine.counters().bytes_from(SourceKind::Origin), 0);
}

#[test]
fn a_stream_over_repeated_pieces_is_told_once_per_digest() {
    let mut b = engine_with(limits(), 1);
    b.want(key(0, 1), &content("c", &[9, 9]), 0, 2, 0);
    let starts = b.starts();
    assert_eq!(starts.len(), 1);
    b.land(starts[0].fetch, 1);
    assert_eq!(b.notes(), [landed(0, &[1], 9)]);
}

#[test]
fn parents_are_asked_for_every_content() {
    let mut b = engine_with(limits(), 0);
    let parent = b.engine.add_source(SourceKind::Parent, "10.0.0.1:7680").unwrap();
    assert_eq!(b.engine.add_source(SourceKind::Parent, "10.0.0.1:7680"), Some(parent), "same source, same id");
    b.engine.set_parents(vec![parent]);
    b.want(key(0, 1), &content("c", &[1]), 0, 1, 0);
    let start = b.starts().remove(0);
    assert_eq!((start.source, start.kind), (parent, SourceKind::Parent));
    b.land(start.fetch, 1);
    assert_eq!(b.engine.counters().bytes_from(SourceKind::Parent), u64::from(PIECE));
}

/// A waiter as the worker sees it: the content it streams and its position.
struct Stream {
    key: WaiterKey,
    content: Arc<ContentVersion>,
    next: u64,
    end: u64,
}

/// Drives the engine with seeded random inputs, the way workers and fetchers would, checking that
/// no waiter hears "landed" before the piece is in the store and that, once upstream answers,
/// every waiter ends (landed through its range, failed or busy): no hang, nothing left behind.
fn random_run(seed: u64, fill_whole: bool) {
    use rand::{rngs::StdRng, Rng, SeedableRng};
    let mut rng = StdRng::seed_from_u64(seed);
    let limits = FillLimits {
        fills_in_flight_max: 2,
        pieces_in_flight_per_fill_max: 3,
        requests_per_source_max: 2,
        piece_memory_bytes_max: 5 * u64::from(PIECE),
        waiters_per_piece_max: 3,
        fill_whole,
        ..limits()
    };
    let mut b = engine_with(limits, 2);
    let contents = [content("a", &[1, 2, 3, 4]), content("b", &[3, 5, 6]), content("c", &[7, 1, 8, 2, 2])];
    let (mut store, mut pending, mut streams) = (Vec::<Digest>::new(), Vec::<Fetch>::new(), Vec::<Stream>::new());
    let (mut now_ms, mut token) = (0, 0);
    for step in 0..600 {
        let draining = step >= 400;
        match rng.gen_range(0..6) {
            0 if !draining => {
                let content = contents[rng.gen_range(0..3)].clone();
                let first = rng.gen_range(0..content.piece_count());
                let end = rng.gen_range(first + 1..=content.piece_count());
                token += 1;
                let key = key(rng.gen_range(0..2), token);
                b.want(key, &content, first, end, now_ms);
                streams.push(Stream { key, content, next: first, end });
            }
            1 if !draining && !streams.is_empty() => {
                let stream = streams.swap_remove(rng.gen_range(0..streams.len()));
                b.engine.handle_cancel(stream.key, now_ms);
            }
            2 if !pending.is_empty() => {
                let fetch = pending.swap_remove(rng.gen_range(0..pending.len()));
                match rng.gen_range(0..4) {
                    _ if store.contains(&fetch.digest) => b.engine.handle_already_stored(fetch.fetch, now_ms),
                    0 if !draining => b.engine.handle_bad(fetch.fetch, now_ms),
                    1 if !draining => b.engine.handle_fetch_failed(fetch.fetch, FetchFailure::Failed, now_ms),
                    _ => {
                        b.engine.handle_received(fetch.fetch, now_ms);
                        b.engine.handle_verified(fetch.fetch, now_ms);
                        store.push(fetch.digest);
                        b.engine.handle_stored(fetch.fetch, now_ms);
                    }
                }
            }
            3 if !draining => {
                now_ms += rng.gen_range(0..400);
                if b.engine.poll_timeout().is_some_and(|due| due <= now_ms) {
                    b.engine.handle_timeout(now_ms);
                }
            }
            _ => {}
        }
        // Workers send what is stored and report progress.
        for stream in &mut streams {
            let start = stream.next;
            while stream.next < stream.end && store.contains(&stream.content.digest(stream.next)) {
                stream.next += 1;
            }
            if stream.next > start {
                b.engine.handle_progress(stream.key, stream.next, now_ms);
            }
        }
        streams.retain(|s| s.next < s.end);
        let (starts, cancels) = b.actions();
        pending.extend(starts);
        pending.retain(|f| !cancels.contains(&f.fetch));
        for note in b.notes() {
            match note.event {
                WaiterEvent::Landed { digest } => assert!(store.contains(&digest), "landed before stored"),
                WaiterEvent::Failed { .. } | WaiterEvent::Busy { .. } => {
                    streams.retain(|s| !(s.key.worker == note.worker && note.tokens.contains(&s.key.token)));
                }
            }
        }
        b.engine.check_invariants();
    }
    assert!(streams.is_empty(), "seed {seed}: {} waiters never finished", streams.len());
    assert_eq!(b.engine.waiters(), 0, "seed {seed}");
    let counters = b.engine.counters();
    assert!(counters.pieces_stored_total > 0 && counters.fetches_started_total > 0, "seed {seed}: nothing ran");
    if !fill_whole {
        assert_eq!((b.engine.fills_in_flight(), b.engine.piece_memory_bytes()), (0, 0), "seed {seed}");
    }
}

#[test]
fn random_inputs_never_break_the_books_or_leave_a_waiter_hanging() {
    for seed in 0..40 {
        random_run(seed, seed % 2 == 0);
    }
}

#[test]
fn ranked_parents_serve_from_the_first_and_the_next_takes_over_until_the_retry_time() {
    let mut b = engine_with(FillLimits { fill_whole: true, ..limits() }, 1);
    let names = ["10.0.0.1:7680", "10.0.0.2:7680", "10.0.0.3:7680"];
    let parents: Vec<SourceId> = names.iter().map(|n| b.engine.add_source(SourceKind::Parent, n).unwrap()).collect();
    b.engine.set_parents(parents.clone());
    b.engine.rank_parents("box-a", 500);
    // The parents in rendezvous order for a content, as every box of the fleet computes it.
    let ranked = |id: &str| -> Vec<SourceId> {
        crate::rendezvous::rank("box-a", id, &names).into_iter().map(|i| parents[i]).collect()
    };
    let first = ranked("c");
    b.want(key(0, 1), &content("c", &[1, 2, 3, 4]), 0, 1, 0);
    let starts = b.starts();
    assert_eq!(starts.len(), 4, "the whole content is filled");
    assert!(starts.iter().all(|f| f.source == first[0]), "only the first parent is asked");
    b.engine.handle_fetch_failed(starts[0].fetch, FetchFailure::Failed, 10);
    let retried = b.starts();
    assert_eq!(retried.iter().map(|f| f.source).collect::<Vec<_>>(), [first[1]], "the next parent takes over");
    for fetch in starts[1..].iter().chain(&retried) {
        b.land(fetch.fetch, 20);
    }

    // Within the retry time the failed parent is passed over for every content; after it, it
    // serves again what it ranks first for.
    let (failed, later) = (first[0], 600);
    let second = ranked("d");
    b.want(key(0, 2), &content("d", &[5]), 0, 1, 100);
    let expected = if second[0] == failed { second[1] } else { second[0] };
    assert_eq!(b.starts()[0].source, expected);
    let third = (0..100).map(|n| format!("e{n}")).find(|id| ranked(id)[0] == failed).unwrap();
    b.want(key(0, 3), &content(&third, &[6]), 0, 1, later);
    assert_eq!(b.starts()[0].source, failed, "tried again after parent_retry_ms");
}
