//! [`FillEngine`]: waiters, fills (one per content version being filled), claims on pieces by
//! digest, read-ahead windows and background fills. The fetch lifecycle is in `fetch.rs`.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use crate::content::{ContentId, Digest};

use super::counters::FillCounters;
use super::fetch::{FetchAction, FetchId, PieceEntry, PieceState};
use super::limits::FillLimits;
use super::metadata::ContentVersion;
use super::source::{SourceId, SourceKind, SourcePolicy};
use super::{WaiterKey, WaiterToken, WorkerId};

/// Sources known to the engine at most (parents, matched peers, origin URLs).
pub const SOURCES_MAX: usize = 4096;
/// Sources one fill may use at most (besides the parents).
pub const SOURCES_PER_FILL_MAX: usize = 64;

/// A worker's request for pieces `first_piece..end_piece` of one content version, streamed in order.
#[derive(Debug, Clone)]
pub struct Want {
    /// Who waits.
    pub waiter: WaiterKey,
    /// The content version the response is streaming (kept alive while it waits).
    pub content: Arc<ContentVersion>,
    /// First piece the worker lacks.
    pub first_piece: u64,
    /// One past the last piece the response needs.
    pub end_piece: u64,
    /// Sources of this content besides the parents (matched peers, origin URLs).
    pub sources: Vec<SourceId>,
    /// When the worker's request missed, on the engine's clock (metadata time included): the
    /// first-byte latency is measured from it.
    pub missed_at_ms: u64,
}

/// Why a piece could not be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailReason {
    /// No source can serve it (none configured, or every one sent a bad copy or has none).
    NoSource,
    /// Its fetches failed this many times.
    TooManyFailures {
        /// Failed fetches.
        attempts: u32,
    },
    /// The store could not take it.
    StoreFailed(String),
}

/// What a worker is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaiterEvent {
    /// The piece is verified and stored: serve it from the store.
    Landed {
        /// The piece.
        digest: Digest,
    },
    /// The piece cannot be had: answer 502 (or cut a response already streaming).
    Failed {
        /// The piece.
        digest: Digest,
        /// Why.
        reason: FailReason,
    },
    /// A limit was hit: answer 503 with `Retry-After`; the waiter is not registered.
    Busy {
        /// Seconds for `Retry-After`.
        retry_after_s: u32,
    },
}

/// One output to one worker, for one or more of its waiters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The worker to wake.
    pub worker: WorkerId,
    /// Its waiters concerned, each once.
    pub tokens: Vec<WaiterToken>,
    /// What happened.
    pub event: WaiterEvent,
}

/// A fill's number, stable while it lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct FillId(pub(super) u64);

/// Who holds a claim on a piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Claimant {
    Waiter(WaiterKey),
    Background,
}

/// A reason for a piece to be fetched: a waiter's window or a fill's background cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Claim {
    pub(super) claimant: Claimant,
    pub(super) fill: FillId,
    pub(super) index: u64,
}

/// One content version being filled.
#[derive(Debug)]
pub(super) struct Fill {
    pub(super) content: Arc<ContentVersion>,
    pub(super) sources: Vec<SourceId>,
    pub(super) waiters: u32,
    /// Piece fetches in flight counted against this fill.
    pub(super) in_flight: u32,
    /// Next piece of the background cursor; `None` when there is no background fill.
    pub(super) background_next: Option<u64>,
    pub(super) background_claims: u32,
}

/// A streaming waiter: it has claimed pieces `next_piece..claimed_end`.
#[derive(Debug)]
pub(super) struct Waiter {
    pub(super) fill: FillId,
    pub(super) next_piece: u64,
    pub(super) claimed_end: u64,
    pub(super) end_piece: u64,
    pub(super) missed_at_ms: u64,
    /// Its first piece has landed (its first-byte latency is recorded).
    pub(super) first_landed: bool,
}

#[derive(Debug)]
pub(super) struct SourceState {
    pub(super) kind: SourceKind,
    pub(super) name: String,
    pub(super) in_flight: u32,
    /// When a fetch from it last failed (timeout, refused, reset), until one verifies again.
    pub(super) failed_at_ms: Option<u64>,
}

/// How the parents are ranked per content (see [`FillEngine::rank_parents`]).
#[derive(Debug, Clone)]
pub(super) struct ParentRanking {
    /// This box's name in the rendezvous weights.
    pub(super) box_id: String,
    /// A parent whose fetch failed is passed over this long.
    pub(super) retry_ms: u64,
}

/// The fill state machine; see the module docs of [`crate::fill`].
pub struct FillEngine {
    pub(super) limits: FillLimits,
    pub(super) policy: Box<dyn SourcePolicy + Send>,
    pub(super) sources: Vec<SourceState>,
    pub(super) parents: Vec<SourceId>,
    pub(super) parent_ranking: Option<ParentRanking>,
    pub(super) fills: HashMap<FillId, Fill>,
    pub(super) fill_ids: HashMap<(ContentId, u64), FillId>,
    pub(super) next_fill: u64,
    pub(super) waiters: HashMap<WaiterKey, Waiter>,
    pub(super) pieces: HashMap<Digest, PieceEntry>,
    /// Queued digests by priority: waiters' pieces first, background pieces after.
    pub(super) queue_high: VecDeque<Digest>,
    pub(super) queue_low: VecDeque<Digest>,
    pub(super) fetches: HashMap<FetchId, Digest>,
    pub(super) deadlines: BTreeSet<(u64, FetchId)>,
    pub(super) next_fetch: u64,
    pub(super) memory_bytes: u64,
    pub(super) fetch_actions: VecDeque<FetchAction>,
    pub(super) notifications: VecDeque<Notification>,
    pub(super) counters: FillCounters,
}

impl FillEngine {
    /// Replaces the limits on a reload. Only budgets and timing may change: the bounds that
    /// size what the engine holds (fills, windows, waiters, requests per source) stay, since
    /// what is held now was admitted under them.
    pub fn set_limits(&mut self, limits: FillLimits) {
        let sizes = |l: &FillLimits| {
            (l.fills_in_flight_max, l.pieces_in_flight_per_fill_max, l.read_ahead_pieces, l.waiters_per_piece_max)
        };
        assert_eq!(sizes(&limits), sizes(&self.limits), "a reload changed a bound of what the engine holds");
        assert!(
            limits.piece_memory_bytes_max >= 1 && limits.requests_per_source_max == self.limits.requests_per_source_max
        );
        self.limits = limits;
    }

    /// An engine with `limits`, choosing sources with `policy`.
    pub fn new(limits: FillLimits, policy: Box<dyn SourcePolicy + Send>) -> FillEngine {
        assert!(limits.read_ahead_pieces >= 1 && limits.waiters_per_piece_max >= 1, "limits must be at least 1");
        assert!(limits.fills_in_flight_max >= 1 && limits.pieces_in_flight_per_fill_max >= 1);
        assert!(limits.requests_per_source_max >= 1 && limits.piece_memory_bytes_max >= 1);
        FillEngine {
            limits,
            policy,
            sources: Vec::new(),
            parents: Vec::new(),
            parent_ranking: None,
            fills: HashMap::new(),
            fill_ids: HashMap::new(),
            next_fill: 0,
            waiters: HashMap::new(),
            pieces: HashMap::new(),
            queue_high: VecDeque::new(),
            queue_low: VecDeque::new(),
            fetches: HashMap::new(),
            deadlines: BTreeSet::new(),
            next_fetch: 0,
            memory_bytes: 0,
            fetch_actions: VecDeque::new(),
            notifications: VecDeque::new(),
            counters: FillCounters::default(),
        }
    }

    /// Registers a source (the same kind and name give the same id); `None` past [`SOURCES_MAX`].
    pub fn add_source(&mut self, kind: SourceKind, name: &str) -> Option<SourceId> {
        if let Some(at) = self.sources.iter().position(|s| s.kind == kind && s.name == name) {
            return Some(SourceId(at as u32));
        }
        if self.sources.len() >= SOURCES_MAX {
            return None;
        }
        self.sources.push(SourceState { kind, name: name.to_string(), in_flight: 0, failed_at_ms: None });
        Some(SourceId((self.sources.len() - 1) as u32))
    }

    /// Sources asked for every content (the configured parents).
    pub fn set_parents(&mut self, parents: Vec<SourceId>) {
        assert!(parents.iter().all(|s| (s.0 as usize) < self.sources.len()), "parents must be added first");
        self.parents = parents;
    }

    /// Ranks the parents per content by rendezvous hashing of (`box_id`, content id, parent
    /// name): a piece goes to the best-ranked parent that has not failed it and has not failed a
    /// fetch in the last `retry_ms` (waiting for it when it is busy), the next parent when it
    /// fails; other sources only when no parent is left. Without it parents take turns.
    pub fn rank_parents(&mut self, box_id: &str, retry_ms: u64) {
        self.parent_ranking = Some(ParentRanking { box_id: box_id.to_string(), retry_ms });
    }

    /// Sources registered (their ids are `0..source_count`).
    pub fn source_count(&self) -> usize {
        self.sources.len()
    }

    /// The kind and name of a source.
    pub fn source(&self, source: SourceId) -> (SourceKind, &str) {
        let state = &self.sources[source.0 as usize];
        (state.kind, &state.name)
    }

    /// A worker needs pieces `first_piece..end_piece`: claims a read-ahead window of them, or
    /// answers busy at once when a limit is hit.
    pub fn handle_want(&mut self, want: Want, now_ms: u64) {
        let pieces = want.content.piece_count();
        assert!(want.first_piece < want.end_piece && want.end_piece <= pieces, "want outside the content");
        if self.waiters.contains_key(&want.waiter) {
            debug_assert!(false, "waiter {:?} registered twice", want.waiter);
            self.remove_waiter(want.waiter, now_ms);
        }
        let digest = want.content.digest(want.first_piece);
        let waiters_max = self.limits.fills_in_flight_max as usize * self.limits.waiters_per_piece_max as usize;
        let memory_full = !self.pieces.contains_key(&digest) && self.memory_bytes >= self.limits.piece_memory_bytes_max;
        if self.waiters.len() >= waiters_max || self.waiter_claims(&digest) >= self.waiters_per_piece() || memory_full {
            return self.busy(want.waiter);
        }
        let Some(fill) = self.fill_for(&want.content, now_ms) else { return self.busy(want.waiter) };
        let state = self.fills.get_mut(&fill).expect("fill just found");
        state.waiters += 1;
        for source in want.sources {
            if !state.sources.contains(&source) && state.sources.len() < SOURCES_PER_FILL_MAX {
                state.sources.push(source);
            }
        }
        let first = want.first_piece;
        let missed_at_ms = want.missed_at_ms.min(now_ms);
        let (claimed_end, end_piece, first_landed) = (first, want.end_piece, false);
        let waiter = Waiter { fill, next_piece: first, claimed_end, end_piece, missed_at_ms, first_landed };
        self.waiters.insert(want.waiter, waiter);
        self.extend_window(want.waiter, now_ms);
        // A new fill's background cursor starts once its first waiter holds it alive.
        self.advance_background(fill, now_ms);
        self.dispatch(now_ms);
        self.check_invariants();
    }

    /// The worker has sent every piece before `next_piece`: the window moves on. At the end of
    /// its range the waiter is done.
    pub fn handle_progress(&mut self, waiter: WaiterKey, next_piece: u64, now_ms: u64) {
        let Some(state) = self.waiters.get_mut(&waiter) else { return };
        if next_piece >= state.end_piece {
            self.handle_cancel(waiter, now_ms);
            return;
        }
        if next_piece <= state.next_piece {
            return;
        }
        let (fill, old_next, claimed_end) = (state.fill, state.next_piece, state.claimed_end);
        state.next_piece = next_piece;
        state.claimed_end = claimed_end.max(next_piece);
        for index in old_next..claimed_end.min(next_piece) {
            self.release_claim(Claim { claimant: Claimant::Waiter(waiter), fill, index }, now_ms);
        }
        self.extend_window(waiter, now_ms);
        self.dispatch(now_ms);
        self.check_invariants();
    }

    /// The waiter went away (client closed) or is done: its claims are released; a fill nobody
    /// waits for any more is dropped unless `fill_whole`.
    pub fn handle_cancel(&mut self, waiter: WaiterKey, now_ms: u64) {
        self.remove_waiter(waiter, now_ms);
        self.dispatch(now_ms);
        self.check_invariants();
    }

    /// Forgets a waiter and releases its claims (no dispatch: callers do it once at the end).
    pub(super) fn remove_waiter(&mut self, waiter: WaiterKey, now_ms: u64) {
        let Some(state) = self.waiters.remove(&waiter) else { return };
        for index in state.next_piece..state.claimed_end {
            self.release_claim(Claim { claimant: Claimant::Waiter(waiter), fill: state.fill, index }, now_ms);
        }
        let fill = self.fills.get_mut(&state.fill).expect("a waiter's fill lives as long as the waiter");
        fill.waiters -= 1;
        self.maybe_drop_fill(state.fill, now_ms);
    }

    /// Next fetch to start or cancel.
    pub fn poll_fetch(&mut self) -> Option<FetchAction> {
        self.fetch_actions.pop_front()
    }

    /// Next message for a worker.
    pub fn poll_notification(&mut self) -> Option<Notification> {
        self.notifications.pop_front()
    }

    /// When [`FillEngine::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.deadlines.first().map(|(deadline_ms, _)| *deadline_ms)
    }

    /// Totals for `/metrics`.
    pub fn counters(&mut self) -> &mut FillCounters {
        &mut self.counters
    }

    /// Contents being filled (gauge).
    pub fn fills_in_flight(&self) -> usize {
        self.fills.len()
    }

    /// Piece fetches started and not yet stored or failed (gauge).
    pub fn pieces_in_flight(&self) -> usize {
        self.fetches.len()
    }

    /// Bytes of pieces fetched or being fetched and not yet stored (gauge).
    pub fn piece_memory_bytes(&self) -> u64 {
        self.memory_bytes
    }

    /// Waiters registered (gauge).
    pub fn waiters(&self) -> usize {
        self.waiters.len()
    }

    fn waiters_per_piece(&self) -> usize {
        self.limits.waiters_per_piece_max as usize
    }

    /// Waiter claims on a digest.
    pub(super) fn waiter_claims(&self, digest: &Digest) -> usize {
        self.pieces.get(digest).map_or(0, |entry| entry.waiter_claims())
    }

    pub(super) fn busy(&mut self, waiter: WaiterKey) {
        self.counters.busy_total += 1;
        let event = WaiterEvent::Busy { retry_after_s: self.limits.busy_retry_after_s };
        self.notifications.push_back(Notification { worker: waiter.worker, tokens: vec![waiter.token], event });
    }

    /// The fill of a content version, made if needed; `None` when the fill limit is hit.
    fn fill_for(&mut self, content: &Arc<ContentVersion>, now_ms: u64) -> Option<FillId> {
        let key = (content.id.clone(), content.version);
        if let Some(fill) = self.fill_ids.get(&key) {
            return Some(*fill);
        }
        if self.fills.len() >= self.limits.fills_in_flight_max as usize && !self.preempt_background(now_ms) {
            return None;
        }
        let fill = FillId(self.next_fill);
        self.next_fill += 1;
        let background_next = self.limits.fill_whole.then_some(0);
        let state = Fill {
            content: content.clone(),
            sources: Vec::new(),
            waiters: 0,
            in_flight: 0,
            background_next,
            background_claims: 0,
        };
        self.fills.insert(fill, state);
        self.fill_ids.insert(key, fill);
        Some(fill)
    }

    /// Drops the oldest fill nobody waits for, to make room for one somebody waits for.
    fn preempt_background(&mut self, now_ms: u64) -> bool {
        let Some(victim) = self.fills.iter().filter(|(_, f)| f.waiters == 0).map(|(id, _)| *id).min() else {
            return false;
        };
        self.stop_background(victim, now_ms);
        debug_assert!(!self.fills.contains_key(&victim), "a stopped background-only fill is dropped");
        true
    }

    /// Claims the waiter's window up to `read_ahead_pieces`; a first piece that cannot be claimed
    /// makes the waiter busy, a later one is claimed on a later progress. A waiter whose stream
    /// has begun (its first piece landed: its head may be on the wire) is never made busy: its
    /// next piece joins the waiter list past `waiters_per_piece_max` (still bounded: it was
    /// admitted, and only its one next piece goes past), since a busy answer there would cut a
    /// response short.
    fn extend_window(&mut self, waiter: WaiterKey, now_ms: u64) {
        let state = &self.waiters[&waiter];
        let (fill, next, end) = (state.fill, state.next_piece, state.end_piece);
        let started = state.first_landed;
        let limit = end.min(next + u64::from(self.limits.read_ahead_pieces));
        let content = self.fills[&fill].content.clone();
        let mut index = state.claimed_end;
        while index < limit {
            let claim = Claim { claimant: Claimant::Waiter(waiter), fill, index };
            let past_bound = started && index == next;
            if !self.claim(claim, content.digest(index), past_bound, now_ms) {
                break;
            }
            index += 1;
        }
        let state = self.waiters.get_mut(&waiter).expect("waiter present");
        state.claimed_end = index;
        debug_assert!(state.claimed_end - state.next_piece <= u64::from(self.limits.read_ahead_pieces));
        if index == next {
            self.remove_waiter(waiter, now_ms);
            self.busy(waiter);
        }
    }

    /// Adds a claim on a digest, queueing a fetch if it is new; false when its waiter list is full
    /// (unless `past_bound`: an admitted stream's next piece).
    pub(super) fn claim(&mut self, claim: Claim, digest: Digest, past_bound: bool, _now_ms: u64) -> bool {
        let high = matches!(claim.claimant, Claimant::Waiter(_));
        let waiters_max = self.waiters_per_piece();
        let length = self.fills[&claim.fill].content.piece_length(claim.index);
        let entry = self.pieces.entry(digest).or_insert_with(|| PieceEntry::new(length));
        if high && !past_bound && entry.waiter_claims() >= waiters_max {
            return false;
        }
        if high && entry.waiter_claims() > 0 {
            self.counters.coalesced_waiters_total += 1;
        }
        let was_high = entry.is_high();
        let was_new = entry.claims.is_empty() && matches!(entry.state, PieceState::Queued);
        entry.claims.push(claim);
        debug_assert!(past_bound || entry.waiter_claims() <= waiters_max, "waiter list over its bound");
        if matches!(entry.state, PieceState::Queued) && (was_new || (high && !was_high)) {
            self.enqueue(digest, high, false);
        }
        true
    }

    /// Removes one claim; a piece nobody claims any more is dropped (its fetch cancelled).
    pub(super) fn release_claim(&mut self, claim: Claim, now_ms: u64) {
        let digest = self.fills[&claim.fill].content.digest(claim.index);
        let Some(entry) = self.pieces.get_mut(&digest) else { return };
        let Some(at) = entry.claims.iter().position(|c| *c == claim) else { return };
        let was_high = entry.is_high();
        entry.claims.swap_remove(at);
        let (empty, queued_low) =
            (entry.claims.is_empty(), !entry.is_high() && matches!(entry.state, PieceState::Queued));
        let in_flight = matches!(entry.state, PieceState::InFlight(_));
        let background = self.fills.get(&claim.fill).is_some_and(|f| f.background_next.is_some());
        if empty && in_flight && background {
            // Bytes already on their way are adopted by the background fill, not thrown away.
            let adopted = Claim { claimant: Claimant::Background, ..claim };
            self.pieces.get_mut(&digest).expect("entry present").claims.push(adopted);
            self.fills.get_mut(&claim.fill).expect("fill present").background_claims += 1;
        } else if empty {
            self.drop_piece(digest, now_ms);
        } else if was_high && queued_low {
            self.enqueue(digest, false, false);
        }
    }

    pub(super) fn enqueue(&mut self, digest: Digest, high: bool, front: bool) {
        let queue = if high { &mut self.queue_high } else { &mut self.queue_low };
        if front {
            queue.push_front(digest);
        } else {
            queue.push_back(digest);
        }
        // Stale items (pieces gone or started) are skipped when popped; compact if they pile up.
        let live = self.pieces.len();
        for queue in [&mut self.queue_high, &mut self.queue_low] {
            if queue.len() > 4 * live + 64 {
                let pieces = &self.pieces;
                queue.retain(|d| pieces.get(d).is_some_and(|e| matches!(e.state, PieceState::Queued)));
            }
        }
    }

    /// Drops a fill nobody waits for, unless its background fill still runs.
    pub(super) fn maybe_drop_fill(&mut self, fill: FillId, _now_ms: u64) {
        let Some(state) = self.fills.get(&fill) else { return };
        if state.waiters > 0 || state.background_next.is_some() || state.background_claims > 0 {
            return;
        }
        let state = self.fills.remove(&fill).expect("fill present");
        self.fill_ids.remove(&(state.content.id.clone(), state.content.version));
    }

    /// Claims background pieces of a fill, at most half its in-flight budget at a time.
    pub(super) fn advance_background(&mut self, fill: FillId, now_ms: u64) {
        let budget = (self.limits.pieces_in_flight_per_fill_max / 2).max(1);
        loop {
            let Some(state) = self.fills.get_mut(&fill) else { return };
            let Some(next) = state.background_next else { break };
            if next >= state.content.piece_count() {
                state.background_next = None;
                break;
            }
            if state.background_claims >= budget {
                return;
            }
            state.background_next = Some(next + 1);
            state.background_claims += 1;
            let digest = state.content.digest(next);
            let claimed =
                self.claim(Claim { claimant: Claimant::Background, fill, index: next }, digest, false, now_ms);
            debug_assert!(claimed, "background claims are not bounded by the waiter list");
        }
        self.maybe_drop_fill(fill, now_ms);
    }

    /// Ends a fill's background part and releases its background claims.
    pub(super) fn stop_background(&mut self, fill: FillId, now_ms: u64) {
        let Some(state) = self.fills.get_mut(&fill) else { return };
        state.background_next = None;
        let mut claims: Vec<(Digest, Claim)> = self
            .pieces
            .iter()
            .flat_map(|(digest, entry)| entry.claims.iter().map(move |claim| (*digest, *claim)))
            .filter(|(_, claim)| claim.fill == fill && claim.claimant == Claimant::Background)
            .collect();
        // Map order is arbitrary; releasing in piece order keeps the engine deterministic.
        claims.sort_unstable_by_key(|(_, claim)| claim.index);
        for (_, claim) in claims {
            self.release_claim(claim, now_ms);
            if let Some(state) = self.fills.get_mut(&fill) {
                state.background_claims -= 1;
            }
        }
        self.maybe_drop_fill(fill, now_ms);
    }

    /// Debug builds check the books after every input.
    pub(super) fn check_invariants(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        let started = self.pieces.values().filter(|e| !matches!(e.state, PieceState::Queued)).count();
        assert_eq!(started, self.fetches.len(), "one fetch per digest, and every fetch has its digest");
        let memory: u64 = self.pieces.values().filter(|e| e.holds_memory()).map(|e| u64::from(e.length)).sum();
        assert_eq!(memory, self.memory_bytes, "piece memory books balance");
        assert!(self.fills.len() <= self.limits.fills_in_flight_max as usize, "fills over their bound");
        for entry in self.pieces.values() {
            // Streams under way may join past the bound, each with its one next piece.
            let under_way = |claim: &Claim| match claim.claimant {
                Claimant::Waiter(key) => {
                    self.waiters.get(&key).is_some_and(|w| w.first_landed && claim.index == w.next_piece)
                }
                Claimant::Background => false,
            };
            let past = entry.claims.iter().filter(|claim| under_way(claim)).count();
            assert!(entry.waiter_claims() <= self.waiters_per_piece() + past, "waiter list over its bound");
        }
        let window = u64::from(self.limits.read_ahead_pieces);
        assert!(self.waiters.values().all(|w| w.claimed_end - w.next_piece <= window), "window over its bound");
    }
}
