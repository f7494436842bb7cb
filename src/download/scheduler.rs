//! The download scheduler: which piece to ask of which source, as a plain state machine.
//!
//! Events in ([`Event`], plus [`Scheduler::add_source`]), actions out ([`Action`]), time as
//! milliseconds on the caller's clock. No sockets, no files: the driver feeds it, and the
//! tests below drive every rule (fallback, bans, retries, end game) by hand.
//!
//! Rules:
//! - Peers are preferred; HTTP sources are asked for a piece only when no usable peer is left for
//!   it (every peer banned, dropped, or known not to have it or to have failed it).
//! - A source has at most `slots_per_source` requests in flight (connections × pipeline depth),
//!   and fewer while it is on probation: one until it has a verified piece, doubling with each
//!   verified piece (the [`BanPolicy`](crate::download::ban::BanPolicy)'s window). So a liar is asked for at most
//!   `ban_after_bad_pieces` pieces before its ban falls, not a full pipeline's worth.
//! - A bad, missing or timed-out piece is re-queued and never asked of that source again.
//! - Bad pieces go to the ban policy; a banned source gets no further request and its
//!   outstanding requests are forgotten (the driver closes its connections). The policy is a
//!   [`NodeBans`] handle: by default the scheduler's own, or one shared by a whole node
//!   ([`Scheduler::with_bans`]), so bans and earned windows outlive one download.
//! - Each piece and each source has a failure budget; past it the download is exhausted or the
//!   source dropped.
//! - End game: when few pieces are missing and every one of them is in flight, each is also asked
//!   of a second source; the first good copy wins and the other is ignored when it lands.
//! - Boxes ([`Scheduler::add_box`]) are peers used one at a time, in the order they were added
//!   (their rendezvous rank): a piece goes only to the first box that is usable and has not
//!   failed it, never spills to the next box because the first is busy, and a box that fails
//!   while another is usable is dropped at once, so the next-ranked box takes over. The last
//!   usable box keeps the usual failure budget. Other peers are used side by side with it.
//! - An optional pace ([`Scheduler::set_pace`]) spends a byte budget per request, so a download
//!   can be held to a rate.

use std::collections::{BTreeSet, VecDeque};

use crate::download::ban::{BanLimits, NodeBans, Verdict};

/// Index of a source, in the order they were added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceId(pub u32);

/// What a source is: peers are preferred, HTTP sources are the fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// A peer speaking the piece API.
    Peer,
    /// An HTTP(S) URL of the whole content, asked for byte ranges.
    Http,
}

/// Scheduler limits (from `[download]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerLimits {
    /// Requests in flight to one source at most (connections × pipeline depth); at least 1.
    pub slots_per_source: u32,
    /// Failures of one piece before the download is exhausted.
    pub retries_per_piece_max: u32,
    /// Failures (timeouts, lost connections) of one source before it is dropped.
    pub source_failures_max: u32,
    /// End game starts when this many pieces or fewer are missing.
    pub endgame_pieces: u32,
    /// Sources accepted at most.
    pub sources_max: u32,
    /// Ban policy (used when the scheduler makes its own; see [`Scheduler::with_bans`]).
    pub ban: BanLimits,
}

/// Something that happened to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The piece arrived and matched its hash.
    Verified { source: SourceId, piece: u64 },
    /// The piece arrived and did not match (wrong bytes, wrong length, wrong piece).
    Bad { source: SourceId, piece: u64 },
    /// The source does not have the piece (404, 416).
    Missing { source: SourceId, piece: u64 },
    /// No response in time; the driver closed the connection and these requests with it.
    TimedOut { source: SourceId, pieces: Vec<u64> },
    /// The connection failed (refused, reset, closed early, unparseable response).
    Failed { source: SourceId, pieces: Vec<u64> },
    /// The server closed the connection as HTTP allows (after `Connection: close`) with these
    /// requests unanswered: asked again, without blame.
    Lost { source: SourceId, pieces: Vec<u64> },
}

/// Why the download cannot finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exhaustion {
    /// No usable source is left for the piece.
    NoSource,
    /// The piece failed more often than `retries_per_piece_max`.
    TooManyFailures,
}

/// What the driver should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Ask `source` for `piece`.
    Request { source: SourceId, piece: u64 },
    /// `source` is banned: close its connections, log it, count it.
    Ban { source: SourceId },
    /// `source` failed too often: close its connections.
    Drop { source: SourceId },
    /// Every piece is verified.
    Done,
    /// The download cannot finish: `piece` has no source left.
    Exhausted { piece: u64, why: Exhaustion },
}

#[derive(Debug, Clone)]
struct Source {
    kind: SourceKind,
    /// What names the source in the ban policy.
    key: String,
    in_flight: u32,
    failures: u32,
    dropped: bool,
    /// A box's rank (0: the primary); `None` for other sources.
    rank: Option<u32>,
}

/// A byte budget refilled at a fixed rate (a token bucket), kept in milli-bytes so that short
/// intervals are not rounded away.
#[derive(Debug, Clone, Copy)]
struct Pace {
    rate_bytes_per_s: u64,
    request_bytes: u64,
    credit_millibytes: u64,
    cap_millibytes: u64,
    last_ms: u64,
}

impl Pace {
    /// Refills to `now_ms`; true (and spent) when one request's bytes are affordable.
    fn spend(&mut self, now_ms: u64) -> bool {
        let elapsed_ms = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        let gained = self.rate_bytes_per_s.saturating_mul(elapsed_ms);
        self.credit_millibytes = self.credit_millibytes.saturating_add(gained).min(self.cap_millibytes);
        let cost = self.request_bytes.saturating_mul(1000);
        if self.credit_millibytes < cost {
            return false;
        }
        self.credit_millibytes -= cost;
        true
    }
}

#[derive(Debug, Clone, Default)]
struct Piece {
    done: bool,
    failures: u32,
    /// Sources asked right now (two in the end game).
    asked: Vec<SourceId>,
    /// Sources never to ask again for this piece.
    excluded: Vec<SourceId>,
}

enum Pick {
    Source(SourceId),
    Busy,
    Nobody,
}

/// The scheduler state machine.
#[derive(Debug)]
pub struct Scheduler {
    limits: SchedulerLimits,
    sources: Vec<Source>,
    pieces: Vec<Piece>,
    /// Pieces not done and not asked of anyone, in the order to ask for them.
    queue: VecDeque<u64>,
    /// Pieces not done.
    missing: BTreeSet<u64>,
    bans: NodeBans,
    /// Requests each source may have in flight now (0: dropped or banned); computed by `plan`.
    capacity: Vec<u32>,
    actions: VecDeque<Action>,
    finished: bool,
    /// Boxes added so far (the next box's rank).
    boxes: u32,
    pace: Option<Pace>,
}

impl Scheduler {
    /// A scheduler for `piece_count` pieces, none verified yet, with a ban policy of its own.
    pub fn new(piece_count: u64, limits: SchedulerLimits) -> Scheduler {
        Scheduler::with_bans(piece_count, limits, NodeBans::new(limits.ban))
    }

    /// A scheduler that keeps bans and probation in `bans`, a node-wide policy it shares.
    pub fn with_bans(piece_count: u64, limits: SchedulerLimits, bans: NodeBans) -> Scheduler {
        assert!(limits.slots_per_source >= 1, "a source needs at least one request slot");
        let count = usize::try_from(piece_count).expect("piece count fits in memory");
        Scheduler {
            limits,
            sources: Vec::new(),
            pieces: vec![Piece::default(); count],
            queue: (0..piece_count).collect(),
            missing: (0..piece_count).collect(),
            bans,
            capacity: Vec::new(),
            actions: VecDeque::new(),
            finished: false,
            boxes: 0,
            pace: None,
        }
    }

    /// Marks a piece verified before the download starts (resume).
    pub fn mark_verified(&mut self, piece: u64) {
        let slot = &mut self.pieces[piece as usize];
        assert!(slot.asked.is_empty(), "resume marks pieces before any request");
        slot.done = true;
        self.missing.remove(&piece);
        self.queue.retain(|&queued| queued != piece);
    }

    /// Adds a source named `key` in the ban policy (`HOST:PORT`, URL); `None` when `sources_max`
    /// is reached.
    pub fn add_source(&mut self, kind: SourceKind, key: &str) -> Option<SourceId> {
        if self.sources.len() >= self.limits.sources_max as usize {
            return None;
        }
        let id = SourceId(self.sources.len() as u32);
        self.sources.push(Source { kind, key: key.to_string(), in_flight: 0, failures: 0, dropped: false, rank: None });
        Some(id)
    }

    /// Adds a box (a peer used one at a time, see the module docs), ranked after the boxes added
    /// before it; `None` when `sources_max` is reached.
    pub fn add_box(&mut self, key: &str) -> Option<SourceId> {
        let id = self.add_source(SourceKind::Peer, key)?;
        self.sources[id.0 as usize].rank = Some(self.boxes);
        self.boxes += 1;
        Some(id)
    }

    /// Holds requests to `rate_bytes_per_s` on average, each counted as `request_bytes` (the
    /// piece size), with bursts of at most a tenth of a second's worth (one request at least).
    pub fn set_pace(&mut self, rate_bytes_per_s: u64, request_bytes: u64, now_ms: u64) {
        assert!(rate_bytes_per_s > 0 && request_bytes > 0, "a pace needs a rate and a request size");
        let cap_millibytes = request_bytes.max(rate_bytes_per_s / 10).saturating_mul(1000);
        let credit_millibytes = request_bytes.saturating_mul(1000);
        self.pace = Some(Pace { rate_bytes_per_s, request_bytes, credit_millibytes, cap_millibytes, last_ms: now_ms });
    }

    /// Applies one event at `now_ms`.
    pub fn handle(&mut self, event: Event, now_ms: u64) {
        if self.finished {
            return;
        }
        match event {
            Event::Verified { source, piece } => {
                if !self.settle(source, piece) {
                    return;
                }
                self.bans.lock().record_good(&self.sources[source.0 as usize].key);
                let slot = &mut self.pieces[piece as usize];
                if !slot.done {
                    slot.done = true;
                    self.missing.remove(&piece);
                }
            }
            Event::Bad { source, piece } => {
                if !self.settle(source, piece) {
                    return;
                }
                self.exclude(source, piece);
                self.piece_failed(piece);
                let verdict = self.bans.lock().record_bad(&self.sources[source.0 as usize].key, now_ms);
                match verdict {
                    Verdict::Banned => self.ban(source),
                    Verdict::Counted { .. } | Verdict::AlreadyBanned => {}
                }
            }
            Event::Missing { source, piece } => {
                if !self.settle(source, piece) {
                    return;
                }
                self.exclude(source, piece);
                self.requeue(piece);
            }
            Event::Lost { source, pieces } => {
                for piece in pieces {
                    if self.settle(source, piece) {
                        self.requeue(piece);
                    }
                }
            }
            Event::TimedOut { source, pieces } | Event::Failed { source, pieces } => {
                let mut any = false;
                for piece in pieces {
                    if self.settle(source, piece) {
                        any = true;
                        self.exclude(source, piece);
                        self.piece_failed(piece);
                    }
                }
                if any {
                    self.source_failed(source, now_ms);
                }
            }
        }
    }

    /// Plans requests for `now_ms` and returns the next action, if any.
    pub fn poll(&mut self, now_ms: u64) -> Option<Action> {
        if self.actions.is_empty() && !self.finished {
            self.plan(now_ms);
        }
        self.actions.pop_front()
    }

    /// Whether `piece` is verified.
    pub fn is_verified(&self, piece: u64) -> bool {
        self.pieces.get(piece as usize).is_some_and(|slot| slot.done)
    }

    /// Pieces not verified yet.
    pub fn missing_count(&self) -> u64 {
        self.missing.len() as u64
    }

    /// Requests in flight to `source`.
    pub fn in_flight(&self, source: SourceId) -> u32 {
        self.sources[source.0 as usize].in_flight
    }

    /// Whether `source` is banned at `now_ms`.
    pub fn is_banned(&mut self, source: SourceId, now_ms: u64) -> bool {
        self.bans.lock().is_banned(&self.sources[source.0 as usize].key, now_ms)
    }

    /// Times `source` was banned.
    pub fn bans(&self, source: SourceId) -> u32 {
        self.bans.lock().bans(&self.sources[source.0 as usize].key)
    }

    /// Requests `source` may have in flight at most right now: below `slots_per_source` while it
    /// is on probation.
    pub fn window(&self, source: SourceId) -> u32 {
        self.bans.lock().window(&self.sources[source.0 as usize].key, self.limits.slots_per_source)
    }

    /// The ban policy this scheduler records into.
    pub fn node_bans(&self) -> &NodeBans {
        &self.bans
    }

    /// Whether the scheduler gave `Done` or `Exhausted`.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Removes the (source, piece) request; false if it was not outstanding (stale or forgotten).
    fn settle(&mut self, source: SourceId, piece: u64) -> bool {
        let Some(slot) = self.pieces.get_mut(piece as usize) else { return false };
        let Some(position) = slot.asked.iter().position(|&asked| asked == source) else { return false };
        slot.asked.swap_remove(position);
        let record = &mut self.sources[source.0 as usize];
        record.in_flight -= 1;
        true
    }

    fn exclude(&mut self, source: SourceId, piece: u64) {
        let slot = &mut self.pieces[piece as usize];
        if !slot.excluded.contains(&source) {
            slot.excluded.push(source);
        }
    }

    fn requeue(&mut self, piece: u64) {
        let slot = &self.pieces[piece as usize];
        if !slot.done && slot.asked.is_empty() {
            // Retries go first: the end of the file should not wait behind them.
            self.queue.push_front(piece);
        }
    }

    fn piece_failed(&mut self, piece: u64) {
        let slot = &mut self.pieces[piece as usize];
        if slot.done {
            return;
        }
        slot.failures += 1;
        if slot.failures > self.limits.retries_per_piece_max {
            self.finish(Action::Exhausted { piece, why: Exhaustion::TooManyFailures });
            return;
        }
        self.requeue(piece);
    }

    fn source_failed(&mut self, source: SourceId, now_ms: u64) {
        let failover = self.sources[source.0 as usize].rank.is_some() && self.other_box_usable(source, now_ms);
        let record = &mut self.sources[source.0 as usize];
        record.failures += 1;
        if (failover || record.failures >= self.limits.source_failures_max) && !record.dropped {
            record.dropped = true;
            self.forget(source);
            self.actions.push_back(Action::Drop { source });
        }
    }

    /// Whether a box other than `source` is neither dropped nor banned.
    fn other_box_usable(&self, source: SourceId, now_ms: u64) -> bool {
        let mut bans = self.bans.lock();
        self.sources.iter().enumerate().any(|(index, other)| {
            index != source.0 as usize && other.rank.is_some() && !other.dropped && !bans.is_banned(&other.key, now_ms)
        })
    }

    fn ban(&mut self, source: SourceId) {
        self.forget(source);
        self.actions.push_back(Action::Ban { source });
    }

    /// Forgets every outstanding request of `source` and re-queues those pieces.
    fn forget(&mut self, source: SourceId) {
        let asked: Vec<u64> =
            self.missing.iter().copied().filter(|&p| self.pieces[p as usize].asked.contains(&source)).collect();
        for piece in asked {
            self.settle(source, piece);
            self.requeue(piece);
        }
    }

    fn finish(&mut self, action: Action) {
        if !self.finished {
            self.finished = true;
            self.actions.push_back(action);
        }
    }

    /// Fills `capacity`: each source's window, 0 for a dropped or banned one (one lock per plan).
    fn refresh_capacity(&mut self, now_ms: u64) {
        let mut bans = self.bans.lock();
        self.capacity.clear();
        for source in &self.sources {
            let usable = !source.dropped && !bans.is_banned(&source.key, now_ms);
            self.capacity.push(if usable { bans.window(&source.key, self.limits.slots_per_source) } else { 0 });
        }
    }

    fn usable(&self, source: SourceId) -> bool {
        self.capacity[source.0 as usize] > 0
    }

    /// The box `piece` may go to: the best-ranked one that is usable and has not failed it.
    fn box_for(&self, piece: u64) -> Option<SourceId> {
        let slot = &self.pieces[piece as usize];
        // Boxes are added in rank order, so index order is rank order.
        (0..self.sources.len())
            .map(|index| SourceId(index as u32))
            .find(|&id| self.sources[id.0 as usize].rank.is_some() && self.usable(id) && !slot.excluded.contains(&id))
    }

    /// The least-loaded usable source for `piece`: peers first, HTTP only when no peer is left.
    fn pick(&self, piece: u64) -> Pick {
        let active_box = self.box_for(piece);
        for kind in [SourceKind::Peer, SourceKind::Http] {
            let mut eligible = false;
            let mut best: Option<SourceId> = None;
            for index in 0..self.sources.len() {
                let id = SourceId(index as u32);
                let slot = &self.pieces[piece as usize];
                if self.sources[index].kind != kind || slot.excluded.contains(&id) || slot.asked.contains(&id) {
                    continue;
                }
                if self.sources[index].rank.is_some() && Some(id) != active_box {
                    continue;
                }
                if !self.usable(id) {
                    continue;
                }
                eligible = true;
                let load = self.sources[index].in_flight;
                if load < self.capacity[index] && best.is_none_or(|b| load < self.sources[b.0 as usize].in_flight) {
                    best = Some(id);
                }
            }
            if let Some(id) = best {
                return Pick::Source(id);
            }
            if eligible {
                return Pick::Busy;
            }
        }
        Pick::Nobody
    }

    fn ask(&mut self, source: SourceId, piece: u64) {
        self.pieces[piece as usize].asked.push(source);
        self.sources[source.0 as usize].in_flight += 1;
        self.actions.push_back(Action::Request { source, piece });
    }

    fn plan(&mut self, now_ms: u64) {
        if self.missing.is_empty() {
            self.finish(Action::Done);
            return;
        }
        self.refresh_capacity(now_ms);
        let mut busy = Vec::new();
        let mut paced = false;
        for _ in 0..self.queue.len() {
            let free = self.sources.iter().zip(&self.capacity).any(|(s, &capacity)| s.in_flight < capacity);
            if !free {
                break;
            }
            let Some(piece) = self.queue.pop_front() else { break };
            let slot = &self.pieces[piece as usize];
            if slot.done || !slot.asked.is_empty() {
                continue;
            }
            match self.pick(piece) {
                Pick::Source(_) if self.pace.as_mut().is_some_and(|pace| !pace.spend(now_ms)) => {
                    // Out of budget: the piece waits at the head of the queue for the next plan.
                    paced = true;
                    busy.push(piece);
                    break;
                }
                Pick::Source(source) => self.ask(source, piece),
                Pick::Busy => busy.push(piece),
                Pick::Nobody => {
                    self.finish(Action::Exhausted { piece, why: Exhaustion::NoSource });
                    return;
                }
            }
        }
        for piece in busy.into_iter().rev() {
            self.queue.push_front(piece);
        }
        if paced {
            return;
        }
        self.plan_endgame();
        if self.actions.is_empty() && self.sources.iter().all(|s| s.in_flight == 0) {
            // Nothing asked, nothing outstanding: no source can make progress.
            if let Some(&piece) = self.missing.iter().next() {
                self.finish(Action::Exhausted { piece, why: Exhaustion::NoSource });
            }
        }
    }

    fn plan_endgame(&mut self) {
        if self.missing.len() as u64 > u64::from(self.limits.endgame_pieces) || !self.queue.is_empty() {
            return;
        }
        let pieces: Vec<u64> =
            self.missing.iter().copied().filter(|&p| self.pieces[p as usize].asked.len() == 1).collect();
        for piece in pieces {
            if let Pick::Source(source) = self.pick(piece) {
                self.ask(source, piece);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> SchedulerLimits {
        SchedulerLimits {
            slots_per_source: 2,
            retries_per_piece_max: 3,
            source_failures_max: 2,
            endgame_pieces: 0,
            sources_max: 8,
            ban: BanLimits { bad_pieces_max: 2, duration_ms: 1_000_000 },
        }
    }

    /// Adds a source with a key of its own, past its probation (the rules below are not about
    /// probation; the tests at the end are).
    fn add(scheduler: &mut Scheduler, kind: SourceKind) -> Option<SourceId> {
        let id = add_new(scheduler, kind)?;
        for _ in 0..8 {
            scheduler.node_bans().lock().record_good(&scheduler.sources[id.0 as usize].key);
        }
        Some(id)
    }

    /// Adds a source never heard of: on probation.
    fn add_new(scheduler: &mut Scheduler, kind: SourceKind) -> Option<SourceId> {
        let key = format!("source-{}", scheduler.sources.len());
        scheduler.add_source(kind, &key)
    }

    fn drain(scheduler: &mut Scheduler) -> Vec<Action> {
        let mut out = Vec::new();
        for _ in 0..1000 {
            match scheduler.poll(0) {
                Some(action) => out.push(action),
                None => return out,
            }
        }
        panic!("scheduler kept producing actions");
    }

    fn requests(actions: &[Action]) -> Vec<(u32, u64)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Request { source, piece } => Some((source.0, *piece)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn spreads_pieces_over_peers_within_their_slots() {
        let mut s = Scheduler::new(10, limits());
        let a = add(&mut s, SourceKind::Peer).unwrap();
        let b = add(&mut s, SourceKind::Peer).unwrap();
        let asked = requests(&drain(&mut s));
        assert_eq!(asked, vec![(0, 0), (1, 1), (0, 2), (1, 3)]);
        assert_eq!((s.in_flight(a), s.in_flight(b)), (2, 2));
        s.handle(Event::Verified { source: a, piece: 0 }, 0);
        assert_eq!(requests(&drain(&mut s)), vec![(0, 4)]);
    }

    #[test]
    fn finishes_when_every_piece_is_verified() {
        let mut s = Scheduler::new(2, limits());
        let a = add(&mut s, SourceKind::Peer).unwrap();
        drain(&mut s);
        s.handle(Event::Verified { source: a, piece: 0 }, 0);
        s.handle(Event::Verified { source: a, piece: 1 }, 0);
        assert_eq!(drain(&mut s), vec![Action::Done]);
        assert!(s.is_finished());
        assert_eq!(drain(&mut s), vec![]);
    }

    #[test]
    fn bad_piece_goes_to_another_source_and_two_get_a_ban() {
        let mut s = Scheduler::new(4, limits());
        let liar = add(&mut s, SourceKind::Peer).unwrap();
        let honest = add(&mut s, SourceKind::Peer).unwrap();
        assert_eq!(requests(&drain(&mut s)), vec![(0, 0), (1, 1), (0, 2), (1, 3)]);
        s.handle(Event::Bad { source: liar, piece: 0 }, 0);
        // Piece 0 may not go back to the liar; the honest peer is full, so nothing yet.
        assert_eq!(requests(&drain(&mut s)), vec![]);
        s.handle(Event::Verified { source: honest, piece: 1 }, 0);
        assert_eq!(requests(&drain(&mut s)), vec![(1, 0)]);
        s.handle(Event::Bad { source: liar, piece: 2 }, 0);
        assert_eq!(drain(&mut s), vec![Action::Ban { source: liar }]);
        assert!(s.is_banned(liar, 0));
        assert_eq!(s.in_flight(liar), 0);
        for piece in [0, 3] {
            s.handle(Event::Verified { source: honest, piece }, 0);
        }
        assert_eq!(requests(&drain(&mut s)), vec![(1, 2)]);
        s.handle(Event::Verified { source: honest, piece: 2 }, 0);
        assert_eq!(drain(&mut s), vec![Action::Done]);
    }

    #[test]
    fn banned_source_outstanding_requests_are_forgotten_and_reassigned() {
        let mut s = Scheduler::new(3, SchedulerLimits { slots_per_source: 3, ..limits() });
        let liar = add(&mut s, SourceKind::Peer).unwrap();
        assert_eq!(requests(&drain(&mut s)), vec![(0, 0), (0, 1), (0, 2)]);
        s.handle(Event::Bad { source: liar, piece: 0 }, 0);
        s.handle(Event::Bad { source: liar, piece: 1 }, 0);
        let honest = add(&mut s, SourceKind::Peer).unwrap();
        let actions = drain(&mut s);
        assert_eq!(actions[0], Action::Ban { source: liar });
        let mut asked = requests(&actions);
        asked.sort();
        assert_eq!(asked, vec![(1, 0), (1, 1), (1, 2)]);
        // A late response for the forgotten request changes nothing.
        s.handle(Event::Verified { source: liar, piece: 2 }, 0);
        assert!(!s.is_verified(2));
        assert_eq!(s.in_flight(honest), 3);
    }

    #[test]
    fn http_sources_are_used_only_when_no_peer_is_left() {
        let mut s = Scheduler::new(2, SchedulerLimits { slots_per_source: 1, ..limits() });
        let peer = add(&mut s, SourceKind::Peer).unwrap();
        let http = add(&mut s, SourceKind::Http).unwrap();
        assert_eq!(requests(&drain(&mut s)), vec![(0, 0)], "busy peer is waited for, not bypassed");
        s.handle(Event::Missing { source: peer, piece: 0 }, 0);
        let asked = requests(&drain(&mut s));
        assert_eq!(asked, vec![(1, 0), (0, 1)]);
        s.handle(Event::Verified { source: http, piece: 0 }, 0);
        s.handle(Event::Verified { source: peer, piece: 1 }, 0);
        assert_eq!(drain(&mut s), vec![Action::Done]);
    }

    #[test]
    fn every_peer_banned_falls_back_to_http() {
        let mut s = Scheduler::new(3, SchedulerLimits { slots_per_source: 3, ..limits() });
        let peer = add(&mut s, SourceKind::Peer).unwrap();
        let http = add(&mut s, SourceKind::Http).unwrap();
        drain(&mut s);
        s.handle(Event::Bad { source: peer, piece: 0 }, 0);
        s.handle(Event::Bad { source: peer, piece: 1 }, 0);
        let actions = drain(&mut s);
        assert!(actions.contains(&Action::Ban { source: peer }));
        let mut asked = requests(&actions);
        asked.sort();
        assert_eq!(asked, vec![(1, 0), (1, 1), (1, 2)]);
        assert_eq!(s.in_flight(http), 3);
    }

    #[test]
    fn no_source_left_is_exhaustion() {
        let mut s = Scheduler::new(1, limits());
        let a = add(&mut s, SourceKind::Http).unwrap();
        drain(&mut s);
        s.handle(Event::Missing { source: a, piece: 0 }, 0);
        assert_eq!(drain(&mut s), vec![Action::Exhausted { piece: 0, why: Exhaustion::NoSource }]);
        let mut empty = Scheduler::new(1, limits());
        assert_eq!(drain(&mut empty), vec![Action::Exhausted { piece: 0, why: Exhaustion::NoSource }]);
    }

    #[test]
    fn failing_sources_are_dropped_and_piece_retries_are_bounded() {
        let budget = SchedulerLimits { source_failures_max: 100, retries_per_piece_max: 2, ..limits() };
        let mut s = Scheduler::new(1, budget);
        for _ in 0..5 {
            add(&mut s, SourceKind::Peer).unwrap();
        }
        for round in 0..3u32 {
            assert_eq!(requests(&drain(&mut s)), vec![(round, 0)], "each retry goes to a source not yet failed");
            s.handle(Event::TimedOut { source: SourceId(round), pieces: vec![0] }, 0);
        }
        assert_eq!(drain(&mut s), vec![Action::Exhausted { piece: 0, why: Exhaustion::TooManyFailures }]);

        let mut s = Scheduler::new(4, limits());
        let a = add(&mut s, SourceKind::Peer).unwrap();
        let b = add(&mut s, SourceKind::Peer).unwrap();
        drain(&mut s);
        s.handle(Event::Failed { source: a, pieces: vec![0, 2] }, 0);
        assert_eq!(s.in_flight(a), 0);
        let asked = requests(&drain(&mut s));
        assert!(asked.is_empty(), "b is full and a may not retry pieces it failed: {asked:?}");
        s.handle(Event::Verified { source: b, piece: 1 }, 0);
        assert_eq!(requests(&drain(&mut s)), vec![(1, 2)], "the latest retry goes first");
        s.handle(Event::Failed { source: a, pieces: vec![] }, 0);
        assert_eq!(drain(&mut s), vec![], "an empty failure does not count");
    }

    #[test]
    fn lost_requests_are_asked_again_without_blame() {
        let mut s = Scheduler::new(2, SchedulerLimits { source_failures_max: 1, ..limits() });
        let a = add(&mut s, SourceKind::Peer).unwrap();
        assert_eq!(requests(&drain(&mut s)), vec![(0, 0), (0, 1)]);
        s.handle(Event::Lost { source: a, pieces: vec![0, 1] }, 0);
        let mut asked = requests(&drain(&mut s));
        asked.sort();
        assert_eq!(asked, vec![(0, 0), (0, 1)]);
    }

    #[test]
    fn source_is_dropped_after_its_failure_budget() {
        let mut s = Scheduler::new(4, limits());
        let a = add(&mut s, SourceKind::Peer).unwrap();
        let _b = add(&mut s, SourceKind::Peer).unwrap();
        drain(&mut s);
        s.handle(Event::TimedOut { source: a, pieces: vec![0] }, 0);
        s.handle(Event::TimedOut { source: a, pieces: vec![2] }, 0);
        let actions = drain(&mut s);
        assert_eq!(actions[0], Action::Drop { source: a });
        assert!(requests(&actions).iter().all(|&(source, _)| source != 0));
    }

    #[test]
    fn end_game_asks_a_second_source_and_ignores_the_late_copy() {
        let mut s = Scheduler::new(2, SchedulerLimits { endgame_pieces: 2, slots_per_source: 1, ..limits() });
        let a = add(&mut s, SourceKind::Peer).unwrap();
        let b = add(&mut s, SourceKind::Peer).unwrap();
        let c = add(&mut s, SourceKind::Peer).unwrap();
        let asked = requests(&drain(&mut s));
        assert_eq!(asked, vec![(0, 0), (1, 1), (2, 0)], "c duplicates piece 0");
        s.handle(Event::Verified { source: c, piece: 0 }, 0);
        assert_eq!(requests(&drain(&mut s)), vec![(2, 1)], "c duplicates piece 1");
        s.handle(Event::Verified { source: a, piece: 0 }, 0);
        assert_eq!(s.in_flight(a), 0);
        s.handle(Event::Verified { source: b, piece: 1 }, 0);
        assert_eq!(drain(&mut s), vec![Action::Done]);
    }

    #[test]
    fn resumed_pieces_are_never_asked() {
        let mut s = Scheduler::new(3, limits());
        s.mark_verified(0);
        s.mark_verified(2);
        let a = add(&mut s, SourceKind::Peer).unwrap();
        assert_eq!(requests(&drain(&mut s)), vec![(0, 1)]);
        s.handle(Event::Verified { source: a, piece: 1 }, 0);
        assert_eq!(drain(&mut s), vec![Action::Done]);
        let mut all = Scheduler::new(1, limits());
        all.mark_verified(0);
        assert_eq!(drain(&mut all), vec![Action::Done]);
    }

    #[test]
    fn sources_beyond_the_limit_are_refused() {
        let mut s = Scheduler::new(1, SchedulerLimits { sources_max: 1, ..limits() });
        assert!(add(&mut s, SourceKind::Peer).is_some());
        assert!(add(&mut s, SourceKind::Http).is_none());
    }

    /// Adds a box past its probation.
    fn add_trusted_box(scheduler: &mut Scheduler) -> SourceId {
        let key = format!("box-{}", scheduler.sources.len());
        for _ in 0..8 {
            scheduler.node_bans().lock().record_good(&key);
        }
        scheduler.add_box(&key).unwrap()
    }

    #[test]
    fn boxes_serve_one_at_a_time_and_the_next_takes_over_when_the_primary_fails() {
        let mut s = Scheduler::new(8, limits());
        let primary = add_trusted_box(&mut s);
        let second = add_trusted_box(&mut s);
        let peer = add(&mut s, SourceKind::Peer).unwrap();
        let asked = requests(&drain(&mut s));
        assert_eq!(asked, vec![(0, 0), (2, 1), (0, 2), (2, 3)], "the primary box and the peer, never the second box");
        s.handle(Event::Verified { source: primary, piece: 0 }, 0);
        assert_eq!(requests(&drain(&mut s)), vec![(0, 4)], "a busy primary is waited for, not bypassed");
        s.handle(Event::Failed { source: primary, pieces: vec![2] }, 0);
        let actions = drain(&mut s);
        assert_eq!(actions[0], Action::Drop { source: primary }, "one failure is enough while another box is left");
        let mut asked = requests(&actions);
        asked.sort();
        assert_eq!(asked, vec![(1, 2), (1, 4)], "its pieces, in flight or failed, go to the next box");
        assert_eq!((s.in_flight(primary), s.in_flight(second), s.in_flight(peer)), (0, 2, 2));
    }

    #[test]
    fn the_last_usable_box_keeps_the_usual_failure_budget() {
        let mut s = Scheduler::new(8, SchedulerLimits { source_failures_max: 2, ..limits() });
        let primary = add_trusted_box(&mut s);
        let second = add_trusted_box(&mut s);
        // A plain peer takes the pieces a box failed, so the download goes on.
        add(&mut s, SourceKind::Peer).unwrap();
        drain(&mut s);
        s.handle(Event::Failed { source: primary, pieces: vec![0] }, 0);
        assert_eq!(drain(&mut s)[0], Action::Drop { source: primary });
        s.handle(Event::TimedOut { source: second, pieces: vec![2] }, 0);
        assert!(!drain(&mut s).contains(&Action::Drop { source: second }), "no box left to take over");
        s.handle(Event::TimedOut { source: second, pieces: vec![0] }, 0);
        assert!(drain(&mut s).contains(&Action::Drop { source: second }), "dropped at source_failures_max");
    }

    #[test]
    fn a_piece_the_primary_lacks_goes_to_the_next_box_alone() {
        let mut s = Scheduler::new(4, SchedulerLimits { slots_per_source: 1, ..limits() });
        let primary = add_trusted_box(&mut s);
        let second = add_trusted_box(&mut s);
        assert_eq!(requests(&drain(&mut s)), vec![(0, 0)]);
        s.handle(Event::Missing { source: primary, piece: 0 }, 0);
        assert_eq!(requests(&drain(&mut s)), vec![(1, 0), (0, 1)], "piece 0 to the second box, the rest stays");
        s.handle(Event::Verified { source: second, piece: 0 }, 0);
        assert_eq!(requests(&drain(&mut s)), vec![], "the second box gets nothing the primary can serve");
    }

    #[test]
    fn a_pace_spreads_requests_over_time() {
        // 10 pieces of 100 bytes at 1000 bytes/s: one piece of credit at start, then one per 100 ms.
        let mut s = Scheduler::new(10, SchedulerLimits { slots_per_source: 16, ..limits() });
        let a = add(&mut s, SourceKind::Peer).unwrap();
        s.set_pace(1000, 100, 0);
        let mut asked_at = Vec::new();
        for now_ms in (0..=1000).step_by(50) {
            while let Some(action) = s.poll(now_ms) {
                if let Action::Request { piece, .. } = action {
                    asked_at.push(now_ms);
                    s.handle(Event::Verified { source: a, piece }, now_ms);
                }
            }
        }
        assert_eq!(asked_at, vec![0, 100, 200, 300, 400, 500, 600, 700, 800, 900]);
        assert!(s.is_finished(), "a paced download is never exhausted while it waits");
    }

    fn probation_limits() -> SchedulerLimits {
        SchedulerLimits { slots_per_source: 8, endgame_pieces: 0, ..limits() }
    }

    #[test]
    fn a_new_source_gets_one_request_until_a_piece_verifies_then_doubles() {
        let mut s = Scheduler::new(64, probation_limits());
        let peer = add_new(&mut s, SourceKind::Peer).unwrap();
        assert_eq!(requests(&drain(&mut s)), vec![(0, 0)], "one request on probation");
        let mut windows = Vec::new();
        for piece in 0..5 {
            s.handle(Event::Verified { source: peer, piece }, 0);
            drain(&mut s);
            windows.push(s.in_flight(peer));
        }
        assert_eq!(windows, vec![2, 4, 8, 8, 8], "slow start up to slots_per_source");
    }

    #[test]
    fn a_liar_is_asked_at_most_ban_threshold_plus_one_times() {
        let mut s = Scheduler::new(64, probation_limits());
        let honest = add_new(&mut s, SourceKind::Peer).unwrap();
        let liars: Vec<SourceId> = (0..5).map(|_| add_new(&mut s, SourceKind::Peer).unwrap()).collect();
        let mut asked_of_liars = [0u32; 5];
        // Bounded: every round answers every outstanding request; 64 pieces finish long before.
        for _ in 0..200 {
            let actions = drain(&mut s);
            if actions.contains(&Action::Done) {
                break;
            }
            for (source, piece) in requests(&actions) {
                let source = SourceId(source);
                match liars.iter().position(|&liar| liar == source) {
                    Some(index) => {
                        asked_of_liars[index] += 1;
                        s.handle(Event::Bad { source, piece }, 0);
                    }
                    None => s.handle(Event::Verified { source, piece }, 0),
                }
            }
        }
        assert!(s.is_finished() && s.missing_count() == 0);
        for (index, &liar) in liars.iter().enumerate() {
            assert!(s.is_banned(liar, 0));
            assert!(asked_of_liars[index] <= 3, "liar {index} asked {} times", asked_of_liars[index]);
        }
        assert!(!s.is_banned(honest, 0));
    }

    #[test]
    fn a_bad_piece_sends_a_trusted_source_back_to_probation() {
        let ban = BanLimits { bad_pieces_max: 3, ..limits().ban };
        let mut s = Scheduler::new(32, SchedulerLimits { ban, ..probation_limits() });
        let peer = add(&mut s, SourceKind::Peer).unwrap();
        let asked = requests(&drain(&mut s));
        assert_eq!(asked.len(), 8, "a proven source gets its full depth");
        s.handle(Event::Bad { source: peer, piece: asked[0].1 }, 0);
        assert_eq!(s.window(peer), 1);
        assert_eq!(requests(&drain(&mut s)), vec![], "seven in flight, a window of one: nothing more");
        s.handle(Event::Verified { source: peer, piece: asked[1].1 }, 0);
        assert_eq!(s.window(peer), 2, "and it earns its depth back piece by piece");
    }

    #[test]
    fn a_shared_policy_outlives_one_download() {
        let node = NodeBans::new(limits().ban);
        let mut first = Scheduler::with_bans(8, probation_limits(), node.clone());
        let liar = first.add_source(SourceKind::Peer, "10.0.0.9:7070").unwrap();
        first.add_source(SourceKind::Peer, "10.0.0.1:7070").unwrap();
        // Bounded: each round answers every request; two bad pieces ban the liar.
        for _ in 0..10 {
            for (source, piece) in requests(&drain(&mut first)) {
                let source = SourceId(source);
                let event =
                    if source == liar { Event::Bad { source, piece } } else { Event::Verified { source, piece } };
                first.handle(event, 0);
            }
        }
        assert!(first.is_banned(liar, 0) && first.is_finished());
        let mut second = Scheduler::with_bans(16, probation_limits(), node.clone());
        let liar = second.add_source(SourceKind::Peer, "10.0.0.9:7070").unwrap();
        let seed = second.add_source(SourceKind::Peer, "10.0.0.1:7070").unwrap();
        let asked = requests(&drain(&mut second));
        assert_eq!(asked.len(), 8, "the seed keeps the window it earned: {asked:?}");
        assert!(asked.iter().all(|&(source, _)| SourceId(source) == seed), "the liar is still banned: {asked:?}");
        assert!(second.is_banned(liar, 0));
        assert_eq!(node.lock().counts().bans_total, 1);
    }
}
