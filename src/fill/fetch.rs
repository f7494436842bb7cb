//! The fetch lifecycle of one piece, by digest: queued → in flight from a source → received →
//! verified (storing) → stored, when its waiters are told. Bad, missing, failed and timed-out
//! fetches are asked again elsewhere up to a bound, then the waiters get a failure.

use std::sync::Arc;

use crate::content::Digest;

use super::engine::{Claim, Claimant, FailReason, FillEngine, FillId, Notification, WaiterEvent};
use super::metadata::ContentVersion;
use super::source::{Candidate, Outcome, Pick, SourceId, SourceKind};
use super::{WaiterKey, WaiterToken, WorkerId};

/// One upstream fetch, unique in the engine's lifetime; inputs about a fetch the engine
/// forgot (cancelled, timed out) are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FetchId(pub u64);

/// Ask `source` for one piece.
#[derive(Debug, Clone)]
pub struct Fetch {
    /// Its id, for the inputs that report on it.
    pub fetch: FetchId,
    /// Where to ask.
    pub source: SourceId,
    /// What the source is (piece API or HTTP Range).
    pub kind: SourceKind,
    /// The content the piece is asked as (origin URLs need its byte offset).
    pub content: Arc<ContentVersion>,
    /// The piece's index in `content`.
    pub piece: u64,
    /// What the bytes must hash to.
    pub digest: Digest,
    /// Offset of the piece in the content.
    pub offset_bytes: u64,
    /// Length of the piece.
    pub length_bytes: u32,
}

/// What the fetcher should do.
#[derive(Debug, Clone)]
pub enum FetchAction {
    /// Check the store for the digest first ([`FillEngine::handle_already_stored`]); otherwise
    /// fetch, verify and store the piece.
    Start(Fetch),
    /// Nobody needs this fetch any more, or it timed out: drop it (close or ignore its answer).
    Cancel {
        /// The fetch.
        fetch: FetchId,
    },
}

/// How a fetch failed before its bytes could be verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchFailure {
    /// The source has no such piece (404, 416): never asked for it again, not blamed.
    Missing,
    /// Connection refused, reset, closed early, or an unparseable answer.
    Failed,
    /// No answer within the request timeout.
    TimedOut,
}

/// A started fetch's books.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Started {
    pub(super) fetch: FetchId,
    pub(super) source: SourceId,
    pub(super) fill: FillId,
    pub(super) started_ms: u64,
    pub(super) deadline_ms: u64,
}

/// Where a piece is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PieceState {
    /// Wanted, waiting for a source slot or memory.
    Queued,
    /// Asked of a source; the request timeout runs.
    InFlight(Started),
    /// Bytes received, being hashed.
    Verifying(Started),
    /// Verified; the store writer has it.
    Storing(Started),
}

/// One piece wanted by digest: its state and who claims it.
#[derive(Debug)]
pub(super) struct PieceEntry {
    pub(super) state: PieceState,
    pub(super) claims: Vec<Claim>,
    pub(super) length: u32,
    pub(super) failures: u32,
    /// Sources that sent a bad copy or have none: never asked for this piece again.
    pub(super) excluded: Vec<SourceId>,
    /// Sources whose fetches of this piece failed, and how often.
    pub(super) failed: Vec<(SourceId, u32)>,
}

impl PieceEntry {
    pub(super) fn new(length: u32) -> PieceEntry {
        PieceEntry {
            state: PieceState::Queued,
            claims: Vec::new(),
            length,
            failures: 0,
            excluded: Vec::new(),
            failed: Vec::new(),
        }
    }

    pub(super) fn waiter_claims(&self) -> usize {
        self.claims.iter().filter(|c| matches!(c.claimant, Claimant::Waiter(_))).count()
    }

    /// Waiters claim it (it is fetched before background pieces).
    pub(super) fn is_high(&self) -> bool {
        self.claims.iter().any(|c| matches!(c.claimant, Claimant::Waiter(_)))
    }

    /// Its bytes are reserved in the piece memory budget.
    pub(super) fn holds_memory(&self) -> bool {
        !matches!(self.state, PieceState::Queued)
    }
}

impl PieceState {
    fn started(&self) -> Option<Started> {
        match *self {
            PieceState::Queued => None,
            PieceState::InFlight(s) | PieceState::Verifying(s) | PieceState::Storing(s) => Some(s),
        }
    }
}

/// What became of a queued digest when the dispatcher looked at it.
enum Start {
    /// Started, failed, or no longer queued at this priority.
    Done,
    /// No source slot or fill budget now: look again later.
    Later,
    /// The memory budget is spent: nothing else can start either.
    Blocked,
}

impl FillEngine {
    /// The fetch's bytes have arrived whole (they go to the verifier): the source's request slot
    /// is free and the timeout stops.
    pub fn handle_received(&mut self, fetch: FetchId, now_ms: u64) {
        let Some((digest, PieceState::InFlight(started))) = self.state_of(fetch) else { return };
        self.free_slot(started);
        self.entry_mut(digest).state = PieceState::Verifying(started);
        self.dispatch(now_ms);
        self.check_invariants();
    }

    /// The fetch's bytes matched their digest; the store writer has them now.
    pub fn handle_verified(&mut self, fetch: FetchId, now_ms: u64) {
        let Some((digest, started)) = self.answered(fetch) else { return };
        let entry = self.entry_mut(digest);
        entry.state = PieceState::Storing(started);
        let length = entry.length;
        let kind = self.sources[started.source.0 as usize].kind;
        self.counters.bytes_by_source_kind[kind.index()] += u64::from(length);
        self.counters.source_mut(started.source).bytes += u64::from(length);
        self.counters.piece_fetch_ms.record(now_ms.saturating_sub(started.started_ms));
        self.policy.record(started.source, Outcome::Good { bytes: length }, now_ms);
        self.sources[started.source.0 as usize].failed_at_ms = None;
        self.dispatch(now_ms);
        self.check_invariants();
    }

    /// The fetch's bytes did not match their digest: the source is blamed and never asked for this
    /// piece again; the piece is asked elsewhere.
    pub fn handle_bad(&mut self, fetch: FetchId, now_ms: u64) {
        let Some((digest, started)) = self.answered(fetch) else { return };
        self.counters.bad_pieces_total += 1;
        self.counters.source_mut(started.source).bad_pieces += 1;
        self.policy.record(started.source, Outcome::Bad, now_ms);
        self.entry_mut(digest).excluded.push(started.source);
        self.end_fetch(digest, started);
        self.retry_or_fail(digest, now_ms);
        self.dispatch(now_ms);
        self.check_invariants();
    }

    /// The fetch failed before any bytes could be verified.
    pub fn handle_fetch_failed(&mut self, fetch: FetchId, failure: FetchFailure, now_ms: u64) {
        let Some((digest, PieceState::InFlight(started))) = self.state_of(fetch) else { return };
        self.fail_fetch(digest, started, failure, now_ms);
        self.dispatch(now_ms);
        self.check_invariants();
    }

    /// Fails every fetch whose deadline has passed (and asks the fetcher to drop it).
    pub fn handle_timeout(&mut self, now_ms: u64) {
        while let Some(&(deadline_ms, fetch)) = self.deadlines.first() {
            if deadline_ms > now_ms {
                break;
            }
            let Some((digest, PieceState::InFlight(started))) = self.state_of(fetch) else {
                unreachable!("a deadline belongs to a fetch in flight");
            };
            self.fetch_actions.push_back(super::FetchAction::Cancel { fetch });
            self.fail_fetch(digest, started, FetchFailure::TimedOut, now_ms);
        }
        self.dispatch(now_ms);
        self.check_invariants();
    }

    /// The store writer committed the verified piece: every waiter of its digest is told.
    pub fn handle_stored(&mut self, fetch: FetchId, now_ms: u64) {
        let Some((digest, state)) = self.state_of(fetch) else { return };
        assert!(matches!(state, PieceState::Storing(_)), "piece stored before it was verified: {state:?}");
        self.land(digest, now_ms);
        self.dispatch(now_ms);
        self.check_invariants();
    }

    /// The fetcher found the digest already in the store before asking anyone.
    pub fn handle_already_stored(&mut self, fetch: FetchId, now_ms: u64) {
        let Some((digest, PieceState::InFlight(started))) = self.state_of(fetch) else { return };
        self.free_slot(started);
        self.land(digest, now_ms);
        self.dispatch(now_ms);
        self.check_invariants();
    }

    /// The store could not take the verified piece: its waiters get a failure.
    pub fn handle_store_failed(&mut self, fetch: FetchId, reason: String, now_ms: u64) {
        let Some((digest, PieceState::Storing(started))) = self.state_of(fetch) else { return };
        self.end_fetch(digest, started);
        self.fail_piece(digest, FailReason::StoreFailed(reason), now_ms);
        self.dispatch(now_ms);
        self.check_invariants();
    }

    fn state_of(&self, fetch: FetchId) -> Option<(Digest, PieceState)> {
        let digest = *self.fetches.get(&fetch)?;
        let state = self.pieces[&digest].state;
        debug_assert_eq!(state.started().map(|s| s.fetch), Some(fetch), "fetch map and piece agree");
        Some((digest, state))
    }

    /// A fetch whose bytes are in (the verifier may answer without `handle_received` first):
    /// its request slot is freed; `None` for a stale fetch or one already verified.
    fn answered(&mut self, fetch: FetchId) -> Option<(Digest, Started)> {
        match self.state_of(fetch)? {
            (digest, PieceState::InFlight(started)) => {
                self.free_slot(started);
                Some((digest, started))
            }
            (digest, PieceState::Verifying(started)) => Some((digest, started)),
            (_, PieceState::Queued | PieceState::Storing(_)) => None,
        }
    }

    fn entry_mut(&mut self, digest: Digest) -> &mut super::fetch::PieceEntry {
        self.pieces.get_mut(&digest).expect("piece of a live fetch")
    }

    fn fail_fetch(&mut self, digest: Digest, started: Started, failure: FetchFailure, now_ms: u64) {
        self.free_slot(started);
        let entry = self.entry_mut(digest);
        let outcome = if failure == FetchFailure::Missing {
            entry.excluded.push(started.source);
            Outcome::Missing
        } else {
            match entry.failed.iter_mut().find(|(source, _)| *source == started.source) {
                Some((_, count)) => *count += 1,
                None => entry.failed.push((started.source, 1)),
            }
            self.sources[started.source.0 as usize].failed_at_ms = Some(now_ms);
            Outcome::Failed
        };
        self.policy.record(started.source, outcome, now_ms);
        self.end_fetch(digest, started);
        self.retry_or_fail(digest, now_ms);
    }

    /// The source's request slot is free and the fetch's timeout stops.
    fn free_slot(&mut self, started: Started) {
        let source = &mut self.sources[started.source.0 as usize];
        assert!(source.in_flight > 0, "source slot books balance");
        source.in_flight -= 1;
        let removed = self.deadlines.remove(&(started.deadline_ms, started.fetch));
        debug_assert!(removed, "a fetch in flight has a deadline");
    }

    /// The fetch is over: its memory and its fill's budget are returned; the piece is queued again.
    fn end_fetch(&mut self, digest: Digest, started: Started) {
        let entry = self.entry_mut(digest);
        entry.state = PieceState::Queued;
        let length = u64::from(entry.length);
        assert!(self.memory_bytes >= length, "piece memory books balance");
        self.memory_bytes -= length;
        if let Some(fill) = self.fills.get_mut(&started.fill) {
            fill.in_flight -= 1;
        }
        self.fetches.remove(&started.fetch);
    }

    fn retry_or_fail(&mut self, digest: Digest, now_ms: u64) {
        let entry = self.entry_mut(digest);
        entry.failures += 1;
        let (failures, high, nobody) = (entry.failures, entry.is_high(), entry.claims.is_empty());
        if nobody {
            self.pieces.remove(&digest);
        } else if failures > self.limits.retries_per_piece_max {
            self.fail_piece(digest, FailReason::TooManyFailures { attempts: failures }, now_ms);
        } else {
            self.counters.retries_total += 1;
            self.enqueue(digest, high, true);
        }
    }

    /// A piece nobody claims: a queued one is forgotten, one in flight cancelled; one being
    /// verified or stored finishes (its bytes are paid for) and lands for nobody.
    pub(super) fn drop_piece(&mut self, digest: Digest, _now_ms: u64) {
        let entry = &self.pieces[&digest];
        debug_assert!(entry.claims.is_empty());
        match entry.state {
            PieceState::Queued => {
                self.pieces.remove(&digest);
            }
            PieceState::InFlight(started) => {
                self.free_slot(started);
                self.end_fetch(digest, started);
                self.pieces.remove(&digest);
                self.counters.cancelled_fetches_total += 1;
                self.fetch_actions.push_back(super::FetchAction::Cancel { fetch: started.fetch });
            }
            PieceState::Verifying(_) | PieceState::Storing(_) => {}
        }
    }

    /// The piece is verified and stored: every claim is answered, background cursors move on.
    fn land(&mut self, digest: Digest, now_ms: u64) {
        let started = self.pieces[&digest].state.started().expect("a landing piece was started");
        self.end_fetch(digest, started);
        let entry = self.pieces.remove(&digest).expect("landing piece");
        self.counters.pieces_stored_total += 1;
        self.record_first_bytes(&entry.claims, now_ms);
        self.notify(&entry.claims, WaiterEvent::Landed { digest });
        let mut background_fills: Vec<FillId> = Vec::new();
        for claim in entry.claims.iter().filter(|c| c.claimant == Claimant::Background) {
            let fill = self.fills.get_mut(&claim.fill).expect("a background claim's fill lives");
            fill.background_claims -= 1;
            background_fills.push(claim.fill);
        }
        background_fills.dedup();
        for fill in background_fills {
            self.advance_background(fill, now_ms);
        }
    }

    /// Waiters whose first piece this is can answer now: their first-byte latency is recorded.
    fn record_first_bytes(&mut self, claims: &[Claim], now_ms: u64) {
        for claim in claims {
            let Claimant::Waiter(key) = claim.claimant else { continue };
            let Some(waiter) = self.waiters.get_mut(&key) else { continue };
            if !waiter.first_landed && claim.index == waiter.next_piece {
                waiter.first_landed = true;
                self.counters.first_byte_ms.record(now_ms.saturating_sub(waiter.missed_at_ms));
            }
        }
    }

    /// The piece cannot be had: its waiters get a failure and are forgotten; a background fill
    /// that needed it stops.
    pub(super) fn fail_piece(&mut self, digest: Digest, reason: FailReason, now_ms: u64) {
        let entry = self.pieces.remove(&digest).expect("failing piece");
        debug_assert!(!entry.holds_memory(), "a failing piece's fetch has ended");
        self.counters.failed_pieces_total += 1;
        self.notify(&entry.claims, WaiterEvent::Failed { digest, reason });
        for claim in &entry.claims {
            match claim.claimant {
                Claimant::Waiter(waiter) => self.remove_waiter(waiter, now_ms),
                Claimant::Background => {
                    let fill = self.fills.get_mut(&claim.fill).expect("a background claim's fill lives");
                    fill.background_claims -= 1;
                    self.stop_background(claim.fill, now_ms);
                }
            }
        }
    }

    /// One notification per worker, naming each of its waiters once.
    fn notify(&mut self, claims: &[Claim], event: WaiterEvent) {
        let mut waiters: Vec<WaiterKey> = claims
            .iter()
            .filter_map(|c| match c.claimant {
                Claimant::Waiter(waiter) => Some(waiter),
                Claimant::Background => None,
            })
            .collect();
        waiters.sort_unstable();
        waiters.dedup();
        for group in waiters.chunk_by(|a, b| a.worker == b.worker) {
            let worker: WorkerId = group[0].worker;
            let tokens: Vec<WaiterToken> = group.iter().map(|w| w.token).collect();
            self.notifications.push_back(Notification { worker, tokens, event: event.clone() });
        }
    }

    /// Starts what can start: waiters' pieces first, then background pieces.
    pub(super) fn dispatch(&mut self, now_ms: u64) {
        for high in [true, false] {
            let rounds = if high { self.queue_high.len() } else { self.queue_low.len() };
            for _ in 0..rounds {
                let queue = if high { &mut self.queue_high } else { &mut self.queue_low };
                let Some(digest) = queue.pop_front() else { break };
                match self.try_start(digest, high, now_ms) {
                    Start::Done => {}
                    Start::Later => self.queue(high).push_back(digest),
                    Start::Blocked => {
                        self.queue(high).push_front(digest);
                        break;
                    }
                }
            }
        }
    }

    fn queue(&mut self, high: bool) -> &mut std::collections::VecDeque<Digest> {
        if high {
            &mut self.queue_high
        } else {
            &mut self.queue_low
        }
    }

    fn try_start(&mut self, digest: Digest, high: bool, now_ms: u64) -> Start {
        let Some(entry) = self.pieces.get(&digest) else { return Start::Done };
        if entry.state != PieceState::Queued || entry.is_high() != high {
            return Start::Done;
        }
        // Background pieces leave half the memory to pieces somebody waits for.
        let budget = if high { self.limits.piece_memory_bytes_max } else { self.limits.piece_memory_bytes_max / 2 };
        if self.memory_bytes > 0 && self.memory_bytes + u64::from(entry.length) > budget {
            return Start::Blocked;
        }
        let per_fill_max = self.limits.pieces_in_flight_per_fill_max;
        let owner = entry.claims.iter().find(|c| self.fills[&c.fill].in_flight < per_fill_max).copied();
        let Some(owner) = owner else { return Start::Later };
        let candidates = self.candidates(entry, now_ms);
        match self.policy.pick(&digest, &candidates, now_ms) {
            Pick::Source(source) => {
                let chosen = candidates.iter().find(|c| c.source == source);
                assert!(chosen.is_some_and(|c| c.is_open()), "policy picked a source that is not open: {source:?}");
                self.start(digest, owner, source, now_ms);
                Start::Done
            }
            Pick::Wait => Start::Later,
            Pick::Nobody => {
                self.fail_piece(digest, FailReason::NoSource, now_ms);
                Start::Done
            }
        }
    }

    /// The parents' ranks for the content of the piece's first claim, when parents are ranked.
    fn parent_ranks(&self, entry: &PieceEntry) -> Vec<(SourceId, u32)> {
        let (Some(ranking), Some(claim)) = (&self.parent_ranking, entry.claims.first()) else { return Vec::new() };
        let content = &self.fills[&claim.fill].content.id;
        let names: Vec<&str> = self.parents.iter().map(|s| self.sources[s.0 as usize].name.as_str()).collect();
        let order = crate::rendezvous::rank(&ranking.box_id, content.as_str(), &names);
        order.into_iter().enumerate().map(|(rank, index)| (self.parents[index], rank as u32)).collect()
    }

    /// The parents and every source of the fills that claim the piece, each once.
    fn candidates(&self, entry: &PieceEntry, now_ms: u64) -> Vec<Candidate> {
        let ranks = self.parent_ranks(entry);
        let retry_ms = self.parent_ranking.as_ref().map_or(0, |r| r.retry_ms);
        let mut ids: Vec<SourceId> = self.parents.clone();
        for claim in &entry.claims {
            for source in &self.fills[&claim.fill].sources {
                if !ids.contains(source) {
                    ids.push(*source);
                }
            }
        }
        ids.iter()
            .map(|&source| {
                let state = &self.sources[source.0 as usize];
                Candidate {
                    source,
                    kind: state.kind,
                    in_flight: state.in_flight,
                    in_flight_max: self.limits.requests_per_source_max,
                    excluded: entry.excluded.contains(&source),
                    failures: entry.failed.iter().find(|(s, _)| *s == source).map_or(0, |(_, n)| *n),
                    rank: ranks.iter().find(|(s, _)| *s == source).map(|(_, rank)| *rank),
                    resting: state.failed_at_ms.is_some_and(|at| now_ms < at.saturating_add(retry_ms)),
                }
            })
            .collect()
    }

    fn start(&mut self, digest: Digest, owner: Claim, source: SourceId, now_ms: u64) {
        let fetch = FetchId(self.next_fetch);
        self.next_fetch += 1;
        let deadline_ms = now_ms + self.limits.request_timeout_ms;
        let started = Started { fetch, source, fill: owner.fill, started_ms: now_ms, deadline_ms };
        let entry = self.pieces.get_mut(&digest).expect("queued piece");
        assert_eq!(entry.state, PieceState::Queued, "one fetch per digest");
        entry.state = PieceState::InFlight(started);
        let length_bytes = entry.length;
        self.memory_bytes += u64::from(length_bytes);
        self.sources[source.0 as usize].in_flight += 1;
        let fill = self.fills.get_mut(&owner.fill).expect("owner fill");
        fill.in_flight += 1;
        let content = fill.content.clone();
        assert!(self.fetches.insert(fetch, digest).is_none());
        self.deadlines.insert((deadline_ms, fetch));
        self.counters.fetches_started_total += 1;
        let offset_bytes = owner.index * u64::from(content.hashes.piece_size().bytes());
        let kind = self.sources[source.0 as usize].kind;
        let action = Fetch { fetch, source, kind, content, piece: owner.index, digest, offset_bytes, length_bytes };
        self.fetch_actions.push_back(super::FetchAction::Start(action));
    }
}
