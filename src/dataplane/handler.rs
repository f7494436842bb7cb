//! The data plane's answers: a parsed request in, an [`Outgoing`] (head plus pinned piece slices)
//! out. One handler per worker; it performs no socket I/O.
//!
//! Every answer carries `Date`; content, piece and hash-file answers carry their validators
//! (`ETag`, `Last-Modified`) and honour `If-None-Match`, `If-Modified-Since` and (for ranges)
//! `If-Range` (`http::conditional`).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::dataplane::access_log::{AccessLog, Entry};
use crate::dataplane::connection::{Connection, ConnectionEvent, Respond, ResponseError, ResponseToken};
use crate::dataplane::library::{Content, Library};
use crate::dataplane::live::Settings;
use crate::dataplane::metrics::WorkerMetrics;
use crate::dataplane::response::{Body, BodyPart, Outgoing, PieceSlice, Reply, Segment};
use crate::dataplane::route::{route, Route};
use crate::dataplane::shared::Shared;
use crate::dataplane::upstream::{Done, Filled, Miss, Need, PassHead, ToPassThrough};
use crate::http::conditional::format_date;
use crate::http::{
    parse_range, ByteRange, ContentRange, DigestTag, Framing, Method, RangeOutcome, Request, ResponseHead, Validators,
    Version,
};
use crate::io::slots::SlotKey;

const OCTETS: &str = "application/octet-stream";
const TEXT: &str = "text/plain; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";
const JSON: &str = "application/json";
/// Caches may store every answer but must revalidate before reuse: an id can be republished with
/// other bytes under the same URL, and revalidation is cheap (a 304 on the strong `ETag`).
const CACHE_CONTROL: &str = "public, no-cache";
/// How long a worker answers `/` and `/status.json` from the status it gathered last: the
/// page reads the catalog, so a client reloading it in a loop costs one gather a second.
const STATUS_REUSE: Duration = Duration::from_secs(1);
/// Most extra headers one head carries (Date, ETag, Last-Modified, Cache-Control, Accept-Ranges,
/// Connection).
const EXTRA_MAX: usize = 6;

/// The worker's wall clock, formatted once per second for `Date` (no per-request formatting).
struct Clock {
    date: [u8; 29],
    now_s: u64,
    refresh_at: Instant,
}

impl Clock {
    fn new(now: Instant) -> Clock {
        let mut clock = Clock { date: [b' '; 29], now_s: 0, refresh_at: now };
        clock.tick(now);
        clock
    }

    /// Reformats the date when the wall clock has entered a new second.
    fn tick(&mut self, now: Instant) {
        if now < self.refresh_at {
            return;
        }
        let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        self.now_s = since.as_secs();
        self.date = format_date(UNIX_EPOCH + Duration::from_secs(self.now_s));
        self.refresh_at = now + Duration::from_nanos(1_000_000_000 - u64::from(since.subsec_nanos()));
    }
}

/// The extra headers of one head, on the stack.
struct Extra<'a> {
    fields: [(&'a str, &'a str); EXTRA_MAX],
    count: usize,
}

impl<'a> Extra<'a> {
    fn push(&mut self, name: &'a str, value: &'a str) {
        assert!(self.count < EXTRA_MAX, "more than {EXTRA_MAX} extra headers");
        self.fields[self.count] = (name, value);
        self.count += 1;
    }

    fn as_slice(&self) -> &[(&'a str, &'a str)] {
        &self.fields[..self.count]
    }
}

/// How to shape the answer to one request.
struct Answer<'a> {
    keep_alive: bool,
    head_only: bool,
    /// HTTP/1.0 with `Connection: keep-alive`: say so in the answer.
    http10_keep_alive: bool,
    date: &'a str,
}

impl<'a> Answer<'a> {
    /// `Date` (and `Connection: keep-alive` for HTTP/1.0) with room for more.
    fn extra(&self) -> Extra<'a> {
        let mut extra = Extra { fields: [("", ""); EXTRA_MAX], count: 0 };
        extra.push("Date", self.date);
        if self.http10_keep_alive {
            extra.push("Connection", "keep-alive");
        }
        extra
    }

    /// The headers of a representation: `Date`, its validators, `Cache-Control`.
    fn representation(&self, validators: &Validators<'a>, last_modified: &'a str) -> Extra<'a> {
        let mut extra = self.extra();
        extra.push("ETag", validators.etag);
        extra.push("Last-Modified", last_modified);
        extra.push("Cache-Control", CACHE_CONTROL);
        extra
    }

    fn head<'h>(
        &self,
        status: u16,
        content_length: u64,
        content_type: &'h str,
        extra: &'h [(&'h str, &'h str)],
    ) -> ResponseHead<'h> {
        ResponseHead { status, content_length, content_type, content_range: None, keep_alive: self.keep_alive, extra }
    }

    /// A short text answer (errors, health, metrics).
    fn text(&self, status: u16, text: &str, content_type: &str, extra: &Extra<'_>) -> Outgoing {
        let mut bytes = Vec::with_capacity(256 + text.len());
        self.head(status, text.len() as u64, content_type, extra.as_slice()).write_to(&mut bytes);
        if !self.head_only {
            bytes.extend_from_slice(text.as_bytes());
        }
        Outgoing::new(status, bytes, Body::Empty)
    }

    fn error(&self, status: u16, message: &str) -> Outgoing {
        let mut extra = self.extra();
        if status == 405 {
            extra.push("Allow", "GET, HEAD");
        }
        self.text(status, message, TEXT, &extra)
    }

    fn missing_piece(&self, id: &crate::content::ContentId, index: u64) -> Outgoing {
        self.error(503, &format!("piece {index} of {id} is not in the store\n"))
    }

    fn not_modified(&self, extra: &Extra<'_>) -> Outgoing {
        Outgoing::with_head(&self.head(304, 0, "", extra.as_slice()), Body::Empty)
    }
}

/// How an error answer to a request that waited on a fill is framed.
#[derive(Clone, Copy)]
struct FillReply {
    keep_alive: bool,
    head_only: bool,
}

/// The one extra header an error answer after a fill may carry.
enum FillHeader<'a> {
    None,
    RetryAfter(u32),
    /// `X-Tessera-Mode`, with why the content is in Simple mode.
    Simple(&'a str),
}

/// `X-Tessera-Mode` of a Simple-mode answer: `simple; reason=…` (a header value holds no
/// control characters).
fn simple_mode_value(reason: &str) -> String {
    let reason: String = reason.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    format!("simple; reason={reason}")
}

/// A response pending on a cache box's fill.
struct PendingFill {
    request: Request,
    /// When the request was answered pending (its access-log request time runs from here).
    since: Instant,
    keep_alive: bool,
    id: crate::content::ContentId,
    need: Need,
    /// The fill said pieces landed since this was last looked at.
    landed: bool,
    /// The fill's final answer, not yet acted on.
    done: Option<Filled>,
    /// Once its head is out: the body still to append.
    stream: Option<Stream>,
    /// Set once a Simple-mode pass-through's head came: the response relays its origin.
    relay: Option<Relay>,
}

/// A Simple-mode response relayed from its origin by the pass-through thread.
struct Relay {
    /// The origin's head, until the connection is given it.
    head: Option<PassHead>,
    /// Body chunks received and not yet appended (the connection was full).
    held: VecDeque<Vec<u8>>,
    /// Body bytes still to append before the response is whole.
    left_bytes: u64,
}

/// A streaming answer: bytes `start..end` of `content`, pieces from `next_piece` on still to be
/// appended as they land.
struct Stream {
    content: Rc<Content>,
    start: u64,
    end: u64,
    next_piece: u64,
}

/// How far appending a stream got.
enum Fed {
    /// Every byte is appended.
    Whole,
    /// The next piece is not in the store (yet).
    Missing,
    /// The connection holds enough for now: wait for its `Writable`.
    Full,
    /// The connection no longer takes parts for it.
    Gone,
}

/// One worker's request handler.
pub struct Handler {
    shared: Arc<Shared>,
    worker: usize,
    library: Library,
    now: Instant,
    clock: Clock,
    /// What the request being answered lacks (set by `answer`; acted on with an upstream).
    miss: Option<(crate::content::ContentId, Need)>,
    /// Responses waiting for the fill thread (each gets one final `Done`).
    pending: HashMap<ResponseToken, PendingFill>,
    /// Set while answering a response whose fill has pieces landing: a content answer missing a
    /// later piece streams (its head and the pieces there) instead of missing.
    streaming: bool,
    /// The stream such an answer started.
    stream: Option<Stream>,
    /// The upstream link's catalog generation this worker's library has followed.
    catalog_seen: u64,
    /// The reloadable settings in force (the drivers hand new ones in: [`Handler::apply`]).
    settings: Arc<Settings>,
    /// This worker's access log, when on.
    access_log: Option<AccessLog>,
    /// Client addresses by connection, kept only while the access log is on.
    peers: HashMap<SlotKey, SocketAddr>,
    /// The status last gathered, and when (reused for [`STATUS_REUSE`]).
    status: Option<(Instant, Rc<crate::dataplane::status::Status>)>,
}

impl Handler {
    /// The handler of worker `worker`.
    pub fn new(shared: Arc<Shared>, worker: usize) -> Handler {
        let now = Instant::now();
        let settings = shared.live.load();
        let library = Library::new(
            shared.catalog.clone(),
            shared.store.clone(),
            &shared.contents,
            shared.config.catalog_cache_entries_max,
            std::time::Duration::from_millis(shared.config.catalog_recheck_ms),
            now,
        );
        Handler {
            shared,
            worker,
            library,
            now,
            clock: Clock::new(now),
            miss: None,
            pending: HashMap::new(),
            streaming: false,
            stream: None,
            catalog_seen: 0,
            access_log: access_log_of(&settings),
            settings,
            peers: HashMap::new(),
            status: None,
        }
    }

    /// Takes on reloaded settings: range limits, the access log (reopened).
    pub fn apply(&mut self, settings: Arc<Settings>) {
        // The old buffer goes to the old file before it closes.
        self.access_log = access_log_of(&settings);
        if self.access_log.is_none() {
            self.peers.clear();
        }
        self.settings = settings;
    }

    /// Whether the drivers should say who each connection is ([`Handler::opened`]).
    pub fn wants_peers(&self) -> bool {
        self.access_log.is_some()
    }

    /// Connection `key` came from `peer` (told only while [`Handler::wants_peers`]).
    pub fn opened(&mut self, key: SlotKey, peer: SocketAddr) {
        self.peers.insert(key, peer);
    }

    /// Connection `key` is closed.
    pub fn closed(&mut self, key: SlotKey) {
        self.peers.remove(&key);
    }

    /// Writes the access-log lines of this loop turn (drivers call it at the end of every turn).
    pub fn flush_access_log(&mut self) {
        if let Some(log) = &mut self.access_log {
            log.flush();
        }
    }

    /// One access-log line, when the log is on.
    fn log_access(
        &mut self,
        request: Option<&Request>,
        connection: Option<SlotKey>,
        outgoing: &Outgoing,
        since: Instant,
    ) {
        let Some(log) = &mut self.access_log else { return };
        let entry = Entry {
            remote: connection.and_then(|key| self.peers.get(&key).copied()),
            request,
            status: outgoing.status,
            body_bytes: outgoing.body_bytes_declared(),
            request_time: self.now.saturating_duration_since(since),
        };
        log.record(&entry, self.clock.now_s);
    }

    /// Sets the time the next requests are handled at (drivers call it once per loop turn).
    pub fn set_now(&mut self, now: Instant) {
        self.now = now;
        self.clock.tick(now);
        self.metrics().mark_rate(self.clock.now_s);
    }

    /// This worker's counters (the handler counts responses; drivers count transport events).
    fn metrics(&self) -> &WorkerMetrics {
        self.shared.metrics.worker(self.worker)
    }

    fn content(&mut self, id: &crate::content::ContentId) -> Option<Rc<Content>> {
        let Some(link) = self.shared.upstream.as_deref() else { return self.library.content(id, self.now) };
        // A cache box: entries the fill rewrote are read again; an entry served past the
        // metadata expiry has its metadata refetched in the background (the hit does not wait).
        if link.catalog_generation() != self.catalog_seen {
            let (generation, changed) = link.catalog_changes_since(self.catalog_seen);
            match changed {
                Some(ids) => ids.iter().for_each(|id| self.library.forget(id)),
                None => self.library.forget_all(),
            }
            self.catalog_seen = generation;
        }
        let content = self.library.content(id, self.now)?;
        let every = Duration::from_millis(link.refresh_after_ms());
        if !every.is_zero() && self.library.refresh_due(id, self.now, self.clock.now_s, every) {
            link.send_refresh(id);
        }
        Some(content)
    }

    fn answer(&mut self, request: &Request, keep_alive: bool) -> Outgoing {
        let date = self.clock.date;
        let reply = Answer {
            keep_alive,
            head_only: request.method == Method::Head,
            http10_keep_alive: keep_alive && request.version == Version::Http10,
            date: std::str::from_utf8(&date).expect("ASCII date"),
        };
        let resource = match route(request.method, request.path()) {
            Ok(resource) => resource,
            Err(error_kind) => return reply.error(error_kind.status(), &format!("{error_kind}\n")),
        };
        let (id, piece) = match resource {
            Route::Health => return reply.text(200, "ok\n", TEXT, &reply.extra()),
            Route::Metrics => {
                let mut text = self.shared.metrics.render(&self.shared.store.stats());
                if let Some(link) = &self.shared.upstream {
                    text.push_str(&link.metrics_text());
                }
                return reply.text(200, &text, PROMETHEUS_TEXT, &reply.extra());
            }
            Route::Status => {
                let page = crate::dataplane::status_page::render(&self.status());
                return reply.text(200, &page, HTML, &reply.extra());
            }
            Route::StatusJson => {
                let json = serde_json::to_string_pretty(&*self.status()).expect("the status serializes");
                return reply.text(200, &json, JSON, &reply.extra());
            }
            Route::HashFile { ref id } | Route::Content { ref id } => (id, None),
            Route::Piece { ref id, index } => (id, Some(index)),
        };
        let Some(content) = self.content(id) else {
            let need = match resource {
                Route::Piece { index, .. } => Need::Piece(index),
                Route::Content { .. } if !reply.head_only => Need::Content { range: request.range.clone() },
                Route::Content { .. } => Need::ContentHead { range: request.range.clone() },
                _ => Need::Metadata,
            };
            self.miss = Some((id.clone(), need));
            return reply.error(404, &format!("no such content: {id}\n"));
        };
        // RFC 9110 §8.8.2: never a Last-Modified later than the Date (a clock stepped back).
        let future = content.last_modified_s > self.clock.now_s;
        let last_modified =
            if future { reply.date } else { std::str::from_utf8(&content.last_modified).expect("ASCII") };
        let last_modified_s = content.last_modified_s.min(self.clock.now_s);
        match resource {
            Route::Piece { index, .. } => self.piece(&content, index, request, &reply, last_modified, last_modified_s),
            Route::HashFile { .. } => {
                let validators = Validators { etag: content.etag.as_str(), last_modified_s };
                let extra = reply.representation(&validators, last_modified);
                if request.conditions().not_modified(&validators) {
                    return reply.not_modified(&extra);
                }
                let body = if reply.head_only { Body::Empty } else { Body::Shared(content.hashfile.clone()) };
                let head = reply.head(200, content.hashfile.len() as u64, OCTETS, extra.as_slice());
                Outgoing::with_head(&head, body)
            }
            _ => {
                debug_assert!(piece.is_none());
                let validators = Validators { etag: content.etag.as_str(), last_modified_s };
                self.content_range(&content, request, &reply, &validators, last_modified)
            }
        }
    }

    /// The status page's data: gathered again once [`STATUS_REUSE`] has passed.
    fn status(&mut self) -> Rc<crate::dataplane::status::Status> {
        match &self.status {
            Some((at, status)) if self.now.saturating_duration_since(*at) < STATUS_REUSE => status.clone(),
            _ => {
                let status = Rc::new(crate::dataplane::status::gather(&self.shared));
                self.status = Some((self.now, status.clone()));
                status
            }
        }
    }

    /// `/piece/{index}`: the piece's own SHA-256 is its `ETag`, so a piece that a republish left
    /// unchanged stays valid in caches.
    fn piece(
        &mut self,
        content: &Content,
        index: u64,
        request: &Request,
        reply: &Answer<'_>,
        last_modified: &str,
        last_modified_s: u64,
    ) -> Outgoing {
        let id = &content.id;
        let Some(length) = content.piece_size.piece_length(content.length, index) else {
            let count = content.piece_count();
            return reply.error(404, &format!("{id} has {count} pieces; there is no piece {index}\n"));
        };
        let tag = DigestTag::new(&content.digests[index as usize]);
        let validators = Validators { etag: tag.as_str(), last_modified_s };
        let extra = reply.representation(&validators, last_modified);
        if request.conditions().not_modified(&validators) {
            return reply.not_modified(&extra);
        }
        let body = if reply.head_only {
            if !self.library.has_piece(content, index) {
                self.miss = Some((id.clone(), Need::Piece(index)));
                return reply.missing_piece(id, index);
            }
            Body::Empty
        } else {
            let Some(guard) = self.library.pin(content, index) else {
                self.miss = Some((id.clone(), Need::Piece(index)));
                return reply.missing_piece(id, index);
            };
            Body::Parts(vec![PieceSlice::new(guard, 0, length).into()])
        };
        Outgoing::with_head(&reply.head(200, u64::from(length), OCTETS, extra.as_slice()), body)
    }

    fn content_range(
        &mut self,
        content: &Rc<Content>,
        request: &Request,
        reply: &Answer<'_>,
        validators: &Validators<'_>,
        last_modified: &str,
    ) -> Outgoing {
        let length = content.length;
        let mut extra = reply.representation(validators, last_modified);
        extra.push("Accept-Ranges", "bytes");
        let conditions = request.conditions();
        if conditions.not_modified(validators) {
            return reply.not_modified(&extra);
        }
        // An If-Range that names another version means "send it all": never splice two versions.
        let range = request.range.as_deref().filter(|_| conditions.range_allowed(validators));
        let (status, start, end, content_range) =
            match parse_range(range, length, self.settings.serve.ranges_per_request_max) {
                RangeOutcome::Full => (200, 0, length, None),
                RangeOutcome::Partial { start, end } => {
                    (206, start, end + 1, Some(ContentRange::Bytes { start, end, length }))
                }
                RangeOutcome::Multiple(ranges) => return self.multipart(content, range, &ranges, reply, &extra),
                RangeOutcome::Unsatisfiable => {
                    let text = "range not satisfiable\n";
                    let mut head = reply.head(416, text.len() as u64, TEXT, extra.as_slice());
                    head.content_range = Some(ContentRange::Unsatisfiable { length });
                    let mut bytes = Vec::with_capacity(300);
                    head.write_to(&mut bytes);
                    if !reply.head_only {
                        bytes.extend_from_slice(text.as_bytes());
                    }
                    return Outgoing::new(416, bytes, Body::Empty);
                }
            };
        let mut slices = Vec::new();
        let pinned = self.pin_range(content, start, end, reply.head_only, &mut |slice| slices.push(slice.into()));
        let mut head = reply.head(status, end - start, OCTETS, extra.as_slice());
        head.content_range = content_range;
        match pinned {
            Ok(()) => Outgoing::with_head(&head, if reply.head_only { Body::Empty } else { Body::Parts(slices) }),
            // The pieces before it are here and the rest are coming: send what there is.
            Err(index) if self.streaming && !slices.is_empty() => {
                self.stream = Some(Stream { content: content.clone(), start, end, next_piece: index });
                Outgoing::streaming(&head, slices)
            }
            Err(index) => {
                self.miss = Some((content.id.clone(), Need::Content { range: request.range.clone() }));
                reply.missing_piece(&content.id, index)
            }
        }
    }

    /// A 206 `multipart/byteranges`: small framing spans between slices of pinned pieces.
    fn multipart(
        &mut self,
        content: &Content,
        range_header: Option<&str>,
        ranges: &[ByteRange],
        reply: &Answer<'_>,
        extra: &Extra<'_>,
    ) -> Outgoing {
        let mut framing = Framing::new(ranges, content.length, OCTETS, rand::random());
        let mut segments = Vec::with_capacity(2 * ranges.len() + 1);
        for (span, range) in framing.spans.iter().zip(ranges) {
            segments.push(Segment::Framing(span.clone()));
            let pinned = self.pin_range(content, range.start, range.end + 1, reply.head_only, &mut |slice| {
                segments.push(Segment::Piece(slice))
            });
            if let Err(index) = pinned {
                self.miss = Some((content.id.clone(), Need::Content { range: range_header.map(str::to_string) }));
                return reply.missing_piece(&content.id, index);
            }
        }
        segments.push(Segment::Framing(framing.spans[ranges.len()].clone()));
        let content_type = std::mem::take(&mut framing.content_type);
        let head = reply.head(206, framing.body_length(ranges), &content_type, extra.as_slice());
        let body = if reply.head_only { Body::Empty } else { Body::Multipart { framing: framing.bytes, segments } };
        Outgoing::with_head(&head, body)
    }

    /// Pins the pieces under bytes `start..end` and hands each slice to `push` (for HEAD only
    /// checks that they are there). `Err(index)` names the first missing piece: the caller refuses
    /// the whole response rather than send a short body.
    fn pin_range(
        &mut self,
        content: &Content,
        start: u64,
        end: u64,
        head_only: bool,
        push: &mut dyn FnMut(PieceSlice),
    ) -> Result<(), u64> {
        if start >= end {
            return Ok(());
        }
        let piece_bytes = u64::from(content.piece_size.bytes());
        for index in start / piece_bytes..=(end - 1) / piece_bytes {
            if head_only {
                // A cache box answers HEAD from the metadata alone: the pieces come when asked.
                if self.shared.upstream.is_none() && !self.library.has_piece(content, index) {
                    return Err(index);
                }
                continue;
            }
            push(self.pin_within(content, index, start, end).ok_or(index)?);
        }
        Ok(())
    }

    /// Pins piece `index` of `content`, cut to bytes `start..end` of the content.
    fn pin_within(&mut self, content: &Content, index: u64, start: u64, end: u64) -> Option<PieceSlice> {
        let piece_bytes = u64::from(content.piece_size.bytes());
        let guard = self.library.pin(content, index)?;
        let piece_start = index * piece_bytes;
        let from = (start.max(piece_start) - piece_start) as u32;
        let to = (end.min(piece_start + piece_bytes) - piece_start) as u32;
        Some(PieceSlice::new(guard, from, to))
    }
}

impl Handler {
    /// Takes the fill thread's answers (the driver calls this when the fill thread woke it) and
    /// names the responses that have news, for the driver to [`Handler::deliver`].
    pub fn take_filled(&mut self) -> Vec<ResponseToken> {
        let Some(link) = self.shared.upstream.clone() else { return Vec::new() };
        let mut tokens = Vec::new();
        for Done { token, filled } in link.take_done(self.worker) {
            let Some(pending) = self.pending.get_mut(&token) else {
                if matches!(filled, Filled::PassThrough { .. } | Filled::PassThroughBody { .. }) {
                    // It went away before its relay began (or after it ended): end the relay.
                    link.send_pass(ToPassThrough::Gone { worker: self.worker, token });
                }
                continue;
            };
            match filled {
                Filled::Landed { .. } => pending.landed = true,
                Filled::PassThrough { head } => {
                    let left_bytes = if head.head_only { 0 } else { head.content_length };
                    pending.relay = Some(Relay { head: Some(head), held: VecDeque::new(), left_bytes });
                }
                Filled::PassThroughBody { bytes } => {
                    if let Some(relay) = pending.relay.as_mut() {
                        relay.held.push_back(bytes);
                    }
                }
                filled => pending.done = Some(filled),
            }
            tokens.push(token);
        }
        tokens.dedup();
        tokens
    }

    /// Gives response `token` on `connection` what its fill has for it: its whole answer, the
    /// head and first pieces of a streaming answer, or the next pieces of one.
    pub fn deliver(&mut self, token: ResponseToken, connection: &mut Connection, now: Instant) {
        let Some(mut pending) = self.pending.remove(&token) else { return };
        if pending.relay.is_some() {
            return self.deliver_relay(token, pending, connection, now);
        }
        if pending.stream.is_none() {
            if let Some(filled) = pending.done.take() {
                let outgoing = self.answer_filled(&pending, filled);
                self.log_access(Some(&pending.request), Some(token.connection), &outgoing, pending.since);
                return self.give(token, connection, outgoing, now);
            }
            if !std::mem::take(&mut pending.landed) || pending.request.method != Method::Get {
                self.pending.insert(token, pending);
                return;
            }
            let Some(outgoing) = self.answer_landed(&pending) else {
                self.pending.insert(token, pending);
                return;
            };
            pending.stream = self.stream.take();
            let streaming = pending.stream.is_some();
            self.log_access(Some(&pending.request), Some(token.connection), &outgoing, pending.since);
            self.give(token, connection, outgoing, now);
            if !streaming {
                // Whole already (or a 304): the fill need not go on for it.
                return self.gone(token);
            }
        }
        let Some(stream) = pending.stream.as_mut() else { return };
        match self.feed(token, stream, connection, now) {
            Fed::Whole | Fed::Gone => self.gone(token),
            // A fill that ended (failed, or its piece since evicted) cannot finish the body.
            Fed::Missing if pending.done.is_some() => {
                let _ = connection.abort(token, now);
                self.gone(token);
            }
            Fed::Missing | Fed::Full => {
                self.pending.insert(token, pending);
            }
        }
    }

    /// A connection's news about a pending or streaming response (drivers drain
    /// [`Connection::poll_event`] into this after every input).
    pub fn connection_event(&mut self, event: ConnectionEvent, connection: &mut Connection, now: Instant) {
        match event {
            ConnectionEvent::Released(token) => self.forget_response(token),
            ConnectionEvent::Writable(token) => self.deliver(token, connection, now),
        }
    }

    /// A response whose connection is gone: forget it, and tell the fill (or the pass-through).
    pub fn forget_response(&mut self, token: ResponseToken) {
        match self.pending.remove(&token) {
            Some(PendingFill { relay: Some(_), .. }) => self.relay_gone(token),
            Some(_) => self.gone(token),
            None => {}
        }
    }

    fn gone(&self, token: ResponseToken) {
        if let Some(link) = &self.shared.upstream {
            link.send_gone(self.worker, token);
        }
    }

    /// A relayed response ended before its origin's body did: the pass-through closes it.
    fn relay_gone(&self, token: ResponseToken) {
        if let Some(link) = &self.shared.upstream {
            link.send_pass(ToPassThrough::Gone { worker: self.worker, token });
        }
    }

    /// Gives a relayed response its head (once), then appends the body chunks held, as far as the
    /// connection takes them; each taken chunk is acknowledged so the origin read goes on. An
    /// origin that ended the body short (a final answer came) aborts the response once the bytes
    /// it did send are appended: never a short body presented as complete.
    fn deliver_relay(
        &mut self,
        token: ResponseToken,
        mut pending: PendingFill,
        connection: &mut Connection,
        now: Instant,
    ) {
        let Some(link) = self.shared.upstream.clone() else { return };
        let relay = pending.relay.as_mut().expect("called for relays");
        if let Some(head) = relay.head.take() {
            let http10 = pending.request.version == Version::Http10;
            let outgoing = self.relay_outgoing(&head, pending.keep_alive, http10);
            self.metrics().response(outgoing.status);
            self.log_access(Some(&pending.request), Some(token.connection), &outgoing, pending.since);
            if connection.complete(token, outgoing, now).is_err() {
                return self.relay_gone(token);
            }
        }
        while let Some(bytes) = relay.held.pop_front() {
            let count = bytes.len() as u64;
            match connection.append(token, vec![BodyPart::Bytes(bytes)], now) {
                Ok(()) => {
                    relay.left_bytes = relay.left_bytes.saturating_sub(count);
                    link.send_pass(ToPassThrough::Taken { worker: self.worker, token, bytes: count });
                }
                Err(ResponseError::Full { mut parts, .. }) => {
                    if let Some(BodyPart::Bytes(bytes)) = parts.pop() {
                        relay.held.push_front(bytes);
                    }
                    self.pending.insert(token, pending);
                    return;
                }
                Err(_) => return self.relay_gone(token),
            }
        }
        if relay.left_bytes == 0 {
            return;
        }
        if pending.done.is_some() {
            let _ = connection.abort(token, now);
            return;
        }
        self.pending.insert(token, pending);
    }

    /// The head of a relayed response: the origin's status, length and fields, marked Simple.
    fn relay_outgoing(&self, head: &PassHead, keep_alive: bool, http10: bool) -> Outgoing {
        let date = self.clock.date;
        let date = std::str::from_utf8(&date).expect("ASCII date");
        let mode = simple_mode_value(&head.reason);
        let mut extra: Vec<(&str, &str)> = vec![("Date", date), ("X-Tessera-Mode", &mode)];
        if keep_alive && http10 {
            extra.push(("Connection", "keep-alive"));
        }
        let mut content_type = OCTETS;
        for (name, value) in &head.fields {
            match *name {
                "Content-Type" => content_type = value,
                _ => extra.push((name, value)),
            }
        }
        let response = ResponseHead {
            status: head.status,
            content_length: head.content_length,
            content_type,
            content_range: None,
            keep_alive,
            extra: &extra,
        };
        if head.head_only || head.content_length == 0 {
            return Outgoing::with_head(&response, Body::Empty);
        }
        Outgoing::streaming(&response, Vec::new()).with_held_bytes_max(head.held_bytes_max)
    }

    /// Completes a pending response (dropped if it is not waiting any more).
    fn give(&mut self, token: ResponseToken, connection: &mut Connection, outgoing: Outgoing, now: Instant) {
        self.metrics().response(outgoing.status);
        if outgoing.is_from_store() {
            self.metrics().miss_bytes(outgoing.body_bytes());
        }
        if connection.complete(token, outgoing, now).is_err() {
            self.gone(token);
        }
    }

    /// The answer to a content request some of whose pieces landed: streaming when its first
    /// piece is here, `None` while it is not.
    fn answer_landed(&mut self, pending: &PendingFill) -> Option<Outgoing> {
        self.library.forget(&pending.id);
        self.streaming = true;
        let outgoing = self.answer(&pending.request, pending.keep_alive);
        self.streaming = false;
        if self.miss.take().is_some() {
            self.stream = None;
            return None;
        }
        Some(outgoing)
    }

    /// Appends the pieces of a stream that are in the store, in order, as far as the connection
    /// takes them.
    fn feed(&mut self, token: ResponseToken, stream: &mut Stream, connection: &mut Connection, now: Instant) -> Fed {
        let piece_bytes = u64::from(stream.content.piece_size.bytes());
        while stream.next_piece * piece_bytes < stream.end {
            let Some(slice) = self.pin_within(&stream.content, stream.next_piece, stream.start, stream.end) else {
                return Fed::Missing;
            };
            let bytes = slice.bytes().len() as u64;
            match connection.append(token, vec![slice.into()], now) {
                Ok(()) => {
                    stream.next_piece += 1;
                    self.metrics().miss_bytes(bytes);
                }
                Err(ResponseError::Full { .. }) => return Fed::Full,
                Err(_) => return Fed::Gone,
            }
        }
        Fed::Whole
    }

    fn answer_filled(&mut self, pending: &PendingFill, filled: Filled) -> Outgoing {
        let PendingFill { request, keep_alive, id, need, .. } = pending;
        let reply = FillReply { keep_alive: *keep_alive, head_only: request.method == Method::Head };
        match filled {
            Filled::Ready | Filled::Landed { .. } => {
                self.library.forget(id);
                let outgoing = self.answer(request, *keep_alive);
                self.miss = None;
                outgoing
            }
            // Simple mode: never the piece API; the content only through its HTTP source.
            Filled::Simple { reason } => {
                let status = if matches!(need, Need::Content { .. } | Need::ContentHead { .. }) { 502 } else { 404 };
                let message = format!("{id} is in Simple mode and cannot be passed through: {reason}\n");
                self.fill_error(reply, status, &message, FillHeader::Simple(&reason))
            }
            Filled::Failed { reason } => {
                self.fill_error(reply, 502, &format!("cannot fill {id} from upstream: {reason}\n"), FillHeader::None)
            }
            Filled::Busy { retry_after_s } => self.fill_error(
                reply,
                503,
                "the box's fill limits are reached; retry later\n",
                FillHeader::RetryAfter(retry_after_s),
            ),
            // Intercepted by `take_filled`; never a final answer.
            Filled::PassThrough { .. } | Filled::PassThroughBody { .. } => {
                let message = format!("the pass-through of {id} was answered out of order\n");
                self.fill_error(reply, 502, &message, FillHeader::None)
            }
        }
    }

    /// An error answer to a request that waited on a fill.
    fn fill_error(&self, framing: FillReply, status: u16, message: &str, header: FillHeader<'_>) -> Outgoing {
        let date = self.clock.date;
        let date = std::str::from_utf8(&date).expect("ASCII date");
        let FillReply { keep_alive, head_only } = framing;
        let reply = Answer { keep_alive, head_only, http10_keep_alive: false, date };
        let mut extra = reply.extra();
        let value = match header {
            FillHeader::None => None,
            FillHeader::RetryAfter(seconds) => Some(("Retry-After", seconds.to_string())),
            FillHeader::Simple(reason) => Some(("X-Tessera-Mode", simple_mode_value(reason))),
        };
        if let Some((name, value)) = &value {
            extra.push(name, value);
        }
        reply.text(status, message, TEXT, &extra)
    }
}

impl Respond for Handler {
    fn respond(&mut self, request: &Request, keep_alive: bool, token: ResponseToken) -> Reply {
        self.miss = None;
        let outgoing = self.answer(request, keep_alive);
        if let (Some((id, need)), Some(link)) = (self.miss.take(), self.shared.upstream.as_ref()) {
            let if_range = request.conditions().if_range.filter(|_| request.range.is_some()).map(str::to_string);
            let miss = Miss { worker: self.worker, token, id: id.clone(), need: need.clone(), if_range };
            if link.send_miss(miss) {
                let pending = PendingFill {
                    request: request.clone(),
                    since: self.now,
                    keep_alive,
                    id,
                    need,
                    landed: false,
                    done: None,
                    stream: None,
                    relay: None,
                };
                self.pending.insert(token, pending);
                self.metrics().miss();
                return Reply::Pending;
            }
            let reply = FillReply { keep_alive, head_only: request.method == Method::Head };
            let busy =
                self.fill_error(reply, 503, "the fill queue is full; retry shortly\n", FillHeader::RetryAfter(1));
            self.metrics().response(busy.status);
            self.log_access(Some(request), Some(token.connection), &busy, self.now);
            return Reply::Ready(busy);
        }
        self.metrics().response(outgoing.status);
        self.log_access(Some(request), Some(token.connection), &outgoing, self.now);
        if outgoing.is_from_store() {
            self.metrics().hit(outgoing.body_bytes());
        }
        Reply::Ready(outgoing)
    }

    fn reject(&mut self, status: u16, message: &str, connection: SlotKey) -> Outgoing {
        self.metrics().response(status);
        let date = self.clock.date;
        let date = std::str::from_utf8(&date).expect("ASCII date");
        let outgoing =
            Answer { keep_alive: false, head_only: false, http10_keep_alive: false, date }.error(status, message);
        self.log_access(None, Some(connection), &outgoing, self.now);
        outgoing
    }

    fn answered(&mut self, elapsed: Duration) {
        self.metrics().answered(elapsed);
    }
}

/// A worker's access log for `settings`, when on.
fn access_log_of(settings: &Settings) -> Option<AccessLog> {
    let file = settings.access_log.clone()?;
    Some(AccessLog::new(file, settings.access_log_buffer_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::config::{ServeConfig, StoreConfig};
    use crate::content::{ContentId, PieceSize};
    use crate::dataplane::metrics::Metrics;
    use crate::http::{parse_request, Parsed, RequestLimits};
    use crate::publish::{publish, PublishRequest};
    use crate::store::Store;

    const PIECE: usize = 65536;

    struct Fixture {
        _dir: tempfile::TempDir,
        handler: Handler,
        bytes: Vec<u8>,
    }

    /// Publishes `a` (2.5 pieces, stored) and `meta-only` (catalog only, no pieces).
    fn fixture() -> Fixture {
        fixture_with(None)
    }

    /// [`fixture`], a cache box's when `upstream` is set.
    fn fixture_with(upstream: Option<Arc<crate::dataplane::upstream::UpstreamLink>>) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = (0..PIECE * 5 / 2).map(|i| (i * 7 + i / 251) as u8).collect();
        let file = dir.path().join("a.bin");
        let catalog = Catalog::new(dir.path().join("catalog"));
        let store = Arc::new(Store::open(&dir.path().join("store"), &StoreConfig::default()).unwrap());
        for (id, store, flip) in [("a", Some(&*store), 0u8), ("meta-only", None, 0xff)] {
            // Other bytes for meta-only: the store is content-addressed, a's pieces would serve it.
            std::fs::write(&file, bytes.iter().map(|b| b ^ flip).collect::<Vec<u8>>()).unwrap();
            let request = PublishRequest {
                file: file.clone(),
                id: ContentId::parse(id).unwrap(),
                piece_size: PieceSize::new(PIECE as u32).unwrap(),
                sources: vec![],
                hashfile_urls: vec![],
                whole_sha256: false,
            };
            publish(&request, &catalog, store, &mut |_| {}).unwrap();
        }
        let (contents, refused) = Content::load_all(&catalog).unwrap();
        assert!(refused.is_empty());
        let shared = Arc::new(Shared {
            store,
            catalog,
            contents,
            metrics: Metrics::new(1),
            config: ServeConfig::default(),
            upstream,
            live: crate::dataplane::live::LiveSettings::new(crate::dataplane::live::Settings {
                serve: ServeConfig::default(),
                access_log: None,
                access_log_buffer_bytes: 4096,
            }),
            status: crate::dataplane::status::StatusContext::new(crate::io::Backend::Epoll, 1),
        });
        Fixture { _dir: dir, handler: Handler::new(shared, 0), bytes }
    }

    fn request(text: &str) -> Request {
        match parse_request(text.as_bytes(), &RequestLimits::default()).unwrap() {
            Parsed::Complete { request, .. } => request,
            Parsed::Partial => panic!("partial request"),
        }
    }

    /// (status, head text, body)
    fn get(handler: &mut Handler, text: &str) -> (u16, String, Vec<u8>) {
        let token = ResponseToken { connection: crate::io::slots::SlotKey { index: 0, generation: 1 }, seq: 1 };
        let Reply::Ready(outgoing) = handler.respond(&request(text), true, token) else { panic!("pending reply") };
        let wire = outgoing.to_vec();
        let split = wire.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        (outgoing.status, String::from_utf8(wire[..split].to_vec()).unwrap(), wire[split..].to_vec())
    }

    #[test]
    fn pieces_are_the_published_bytes() {
        let mut f = fixture();
        for index in 0..3 {
            let (status, head, body) =
                get(&mut f.handler, &format!("GET /v1/content/a/piece/{index} HTTP/1.1\r\n\r\n"));
            assert_eq!(status, 200);
            let start = index * PIECE;
            assert_eq!(body, f.bytes[start..(start + PIECE).min(f.bytes.len())]);
            assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())), "{head}");
        }
        let (status, _, body) = get(&mut f.handler, "GET /v1/content/a/piece/3 HTTP/1.1\r\n\r\n");
        assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    }

    #[test]
    fn ranges_span_pieces_and_respect_boundaries() {
        let mut f = fixture();
        let cases = [(0, PIECE - 1), (PIECE - 1, PIECE), (PIECE, 2 * PIECE - 1), (100, 2 * PIECE + 100), (5, 5)];
        for (start, end) in cases {
            let (status, head, body) =
                get(&mut f.handler, &format!("GET /v1/content/a HTTP/1.1\r\nRange: bytes={start}-{end}\r\n\r\n"));
            assert_eq!(status, 206, "{start}-{end}");
            assert_eq!(body, f.bytes[start..=end], "{start}-{end}");
            assert!(head.contains(&format!("Content-Range: bytes {start}-{end}/{}\r\n", f.bytes.len())), "{head}");
        }
        let (status, _, body) = get(&mut f.handler, "GET /v1/content/a HTTP/1.1\r\n\r\n");
        assert_eq!((status, body), (200, f.bytes.clone()));
        let (status, _, body) = get(&mut f.handler, "GET /v1/content/a HTTP/1.1\r\nRange: bytes=-10\r\n\r\n");
        assert_eq!((status, body.as_slice()), (206, &f.bytes[f.bytes.len() - 10..]));
        let (status, _, body) = get(&mut f.handler, "GET /v1/content/a HTTP/1.1\r\nRange: bytes=0-1,1-6\r\n\r\n");
        assert_eq!((status, body.as_slice()), (206, &f.bytes[..7]), "overlapping ranges are coalesced into one");
    }

    fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
        head.lines()
            .find_map(|line| line.split_once(": ").filter(|(key, _)| key.eq_ignore_ascii_case(name)))
            .map(|(_, v)| v)
    }

    /// Splits a multipart/byteranges body into (Content-Range, bytes) parts.
    fn parts(head: &str, body: &[u8]) -> Vec<(String, Vec<u8>)> {
        let boundary = header(head, "content-type").unwrap().split_once("boundary=").unwrap().1;
        let delimiter = format!("\r\n--{boundary}");
        let text = body.iter().map(|&b| b as char).collect::<String>();
        let mut pieces: Vec<&str> = text.split(delimiter.as_str()).collect();
        assert_eq!(pieces.remove(0), "", "the body starts with a delimiter");
        assert_eq!(pieces.pop(), Some("--\r\n"), "the body ends with the closing delimiter");
        pieces
            .iter()
            .map(|part| {
                let (head, bytes) = part.split_once("\r\n\r\n").unwrap();
                assert!(head.contains("Content-Type: application/octet-stream"), "{head}");
                let range = header(head, "content-range").unwrap().to_string();
                (range, bytes.chars().map(|c| c as u8).collect())
            })
            .collect()
    }

    #[test]
    fn several_ranges_are_multipart_byteranges_with_exact_bytes() {
        let mut f = fixture();
        let length = f.bytes.len();
        let text = format!("GET /v1/content/a HTTP/1.1\r\nRange: bytes=0-9,{}-{},-5\r\n\r\n", PIECE - 3, PIECE + 2);
        let (status, head, body) = get(&mut f.handler, &text);
        assert_eq!(status, 206);
        assert!(head.contains("Content-Type: multipart/byteranges; boundary="), "{head}");
        assert_eq!(header(&head, "content-length"), Some(body.len().to_string().as_str()));
        assert_eq!(header(&head, "content-range"), None);
        let expected = [(0, 9), (PIECE - 3, PIECE + 2), (length - 5, length - 1)];
        let got = parts(&head, &body);
        assert_eq!(got.len(), 3);
        for ((range, bytes), (start, end)) in got.iter().zip(expected) {
            assert_eq!(range, &format!("bytes {start}-{end}/{length}"));
            assert_eq!(bytes.as_slice(), &f.bytes[start..=end]);
        }
        let (status, head_only, body) = get(&mut f.handler, &text.replace("GET", "HEAD"));
        assert_eq!((status, body.len()), (206, 0));
        assert_eq!(header(&head_only, "content-length"), header(&head, "content-length"));
        let (status, _, _) = get(&mut f.handler, "GET /v1/content/meta-only HTTP/1.1\r\nRange: bytes=0-1,9-10\r\n\r\n");
        assert_eq!(status, 503, "a missing piece refuses the whole multipart answer");
    }

    #[test]
    fn too_many_ranges_get_the_whole_content() {
        let mut f = fixture();
        let max = f.handler.shared.config.ranges_per_request_max;
        let specs: Vec<String> = (0..=max).map(|i| format!("{}-{}", i * 10, i * 10)).collect();
        let text = format!("GET /v1/content/a HTTP/1.1\r\nRange: bytes={}\r\n\r\n", specs.join(","));
        let (status, _, body) = get(&mut f.handler, &text);
        assert_eq!((status, body.len()), (200, f.bytes.len()));
        let (status, _, _) = get(&mut f.handler, &text.replacen(&format!(",{}", specs[max]), "", 1));
        assert_eq!(status, 206, "exactly the limit is honoured");
    }

    #[test]
    fn validators_and_date_on_content_pieces_and_hash_file() {
        let mut f = fixture();
        let hashfile = f.handler.shared.catalog.read_hashfile(&ContentId::parse("a").unwrap()).unwrap().unwrap();
        let etag = format!("\"{}\"", hex::encode(crate::hash::sha256(&hashfile)));
        for path in ["/v1/content/a", "/v1/content/a/hashfile"] {
            let (status, head, _) = get(&mut f.handler, &format!("GET {path} HTTP/1.1\r\n\r\n"));
            assert_eq!(status, 200);
            assert_eq!(header(&head, "etag"), Some(etag.as_str()), "{path}");
            assert_eq!(header(&head, "cache-control"), Some(CACHE_CONTROL));
            let modified = crate::http::conditional::parse_date_s(header(&head, "last-modified").unwrap()).unwrap();
            let date = crate::http::conditional::parse_date_s(header(&head, "date").unwrap()).unwrap();
            assert!(modified <= date, "{head}");
        }
        let (_, head, _) = get(&mut f.handler, "GET /v1/content/a/piece/1 HTTP/1.1\r\n\r\n");
        let piece_digest = crate::hash::sha256(&f.bytes[PIECE..2 * PIECE]);
        assert_eq!(header(&head, "etag"), Some(format!("\"{}\"", hex::encode(piece_digest)).as_str()));
        // HTTP/1.0 keep-alive adds a header to the most a head carries.
        let (status, head, _) = get(&mut f.handler, "GET /v1/content/a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert_eq!((status, header(&head, "connection")), (200, Some("keep-alive")));
        assert!(header(&head, "etag").is_some() && header(&head, "accept-ranges").is_some(), "{head}");
        for line in ["GET /nowhere HTTP/1.1", "GET /healthz HTTP/1.1", "GET /v1/content/nope HTTP/1.1"] {
            let (_, head, _) = get(&mut f.handler, &format!("{line}\r\n\r\n"));
            assert!(header(&head, "date").is_some_and(|d| d.ends_with(" GMT")), "{line}: {head}");
        }
    }

    #[test]
    fn conditional_requests_give_304_without_a_body() {
        let mut f = fixture();
        let (_, head, _) = get(&mut f.handler, "GET /v1/content/a HTTP/1.1\r\n\r\n");
        let etag = header(&head, "etag").unwrap().to_string();
        let modified = header(&head, "last-modified").unwrap().to_string();
        let cases = [
            (format!("If-None-Match: {etag}"), 304),
            (format!("If-None-Match: \"x\", W/{etag}"), 304),
            ("If-None-Match: *".to_string(), 304),
            ("If-None-Match: \"x\"".to_string(), 200),
            (format!("If-Modified-Since: {modified}"), 304),
            ("If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT".to_string(), 200),
            (format!("If-None-Match: \"x\"\r\nIf-Modified-Since: {modified}"), 200),
        ];
        for path in ["/v1/content/a", "/v1/content/a/hashfile"] {
            for (headers, expected) in &cases {
                let (status, head, body) = get(&mut f.handler, &format!("GET {path} HTTP/1.1\r\n{headers}\r\n\r\n"));
                assert_eq!(status, *expected, "{path} {headers}");
                if status == 304 {
                    assert!(body.is_empty() && header(&head, "content-length").is_none(), "{head}");
                    assert_eq!(header(&head, "etag"), Some(etag.as_str()));
                }
            }
        }
        let (_, head, _) = get(&mut f.handler, "GET /v1/content/a/piece/0 HTTP/1.1\r\n\r\n");
        let piece_tag = header(&head, "etag").unwrap().to_string();
        let text = format!("GET /v1/content/a/piece/0 HTTP/1.1\r\nIf-None-Match: {piece_tag}\r\n\r\n");
        assert_eq!(get(&mut f.handler, &text).0, 304);
    }

    #[test]
    fn if_range_honours_the_range_only_for_the_same_version() {
        let mut f = fixture();
        let (_, head, _) = get(&mut f.handler, "HEAD /v1/content/a HTTP/1.1\r\n\r\n");
        let etag = header(&head, "etag").unwrap().to_string();
        let modified = header(&head, "last-modified").unwrap().to_string();
        let range = "Range: bytes=10-19";
        for (validator, partial) in [
            (etag.clone(), true),
            (modified, true),
            (format!("W/{etag}"), false),
            ("\"another-version\"".into(), false),
            ("Sun, 06 Nov 1994 08:49:37 GMT".into(), false),
        ] {
            let text = format!("GET /v1/content/a HTTP/1.1\r\n{range}\r\nIf-Range: {validator}\r\n\r\n");
            let (status, _, body) = get(&mut f.handler, &text);
            if partial {
                assert_eq!((status, body.as_slice()), (206, &f.bytes[10..20]), "{validator}");
            } else {
                assert_eq!((status, body.len()), (200, f.bytes.len()), "{validator}");
            }
        }
    }

    #[test]
    fn unsatisfiable_range_is_416_with_the_length() {
        let mut f = fixture();
        let text = format!("GET /v1/content/a HTTP/1.1\r\nRange: bytes={}-\r\n\r\n", f.bytes.len());
        let (status, head, _) = get(&mut f.handler, &text);
        assert_eq!(status, 416);
        assert!(head.contains(&format!("Content-Range: bytes */{}\r\n", f.bytes.len())), "{head}");
    }

    #[test]
    fn head_has_the_length_and_no_body() {
        let mut f = fixture();
        let (status, head, body) = get(&mut f.handler, "HEAD /v1/content/a HTTP/1.1\r\n\r\n");
        assert_eq!(status, 200);
        assert!(head.contains(&format!("Content-Length: {}\r\n", f.bytes.len())));
        assert!(head.contains("Accept-Ranges: bytes\r\n"));
        assert!(body.is_empty());
        let (status, _, body) = get(&mut f.handler, "HEAD /v1/content/nope/piece/0 HTTP/1.1\r\n\r\n");
        assert_eq!((status, body.len()), (404, 0));
    }

    #[test]
    fn errors_have_their_status() {
        let mut f = fixture();
        let cases = [
            ("GET /v1/content/nope HTTP/1.1", 404),
            ("GET /v1/content/nope/piece/0 HTTP/1.1", 404),
            ("GET /v1/content/../piece/0 HTTP/1.1", 400),
            ("GET /v1/content/%2e%2e/piece/0 HTTP/1.1", 400),
            ("GET /v1/content/a/piece/x HTTP/1.1", 400),
            ("POST /v1/content/a HTTP/1.1", 405),
            ("GET /elsewhere HTTP/1.1", 404),
        ];
        for (line, expected) in cases {
            let (status, head, _) = get(&mut f.handler, &format!("{line}\r\n\r\n"));
            assert_eq!(status, expected, "{line}");
            if expected == 405 {
                assert!(head.contains("Allow: GET, HEAD\r\n"));
            }
        }
        assert_eq!(f.handler.shared.metrics.requests_with_status(404), 3);
    }

    #[test]
    fn content_without_pieces_is_503_never_partial() {
        let mut f = fixture();
        let (status, _, _) = get(&mut f.handler, "GET /v1/content/meta-only/piece/1 HTTP/1.1\r\n\r\n");
        assert_eq!(status, 503);
        let (status, _, body) = get(&mut f.handler, "GET /v1/content/meta-only HTTP/1.1\r\nRange: bytes=0-9\r\n\r\n");
        assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
        let a = f.handler.shared.contents.iter().find(|c| c.id.as_str() == "a").unwrap();
        f.handler.shared.store.remove(&a.digests).unwrap();
        let (status, _, _) = get(&mut f.handler, "GET /v1/content/a HTTP/1.1\r\n\r\n");
        assert_eq!(status, 503, "cached piece locations are rechecked on pin");
    }

    #[test]
    fn content_whose_hash_file_does_not_verify_is_not_served() {
        let mut f = fixture();
        let catalog = f.handler.shared.catalog.clone();
        let id = ContentId::parse("bad").unwrap();
        let manifest = catalog.read_manifest(&ContentId::parse("a").unwrap()).unwrap().unwrap();
        let mut manifest = manifest;
        manifest.content_id = "bad".into();
        catalog.write(&id, b"not the hash file", &manifest).unwrap();
        let (status, _, _) = get(&mut f.handler, "GET /v1/content/bad/hashfile HTTP/1.1\r\n\r\n");
        assert_eq!(status, 404);
        let (status, _, body) = get(&mut f.handler, "GET /v1/content/a/hashfile HTTP/1.1\r\n\r\n");
        assert_eq!(status, 200);
        assert_eq!(body, catalog.read_hashfile(&ContentId::parse("a").unwrap()).unwrap().unwrap());
    }

    #[test]
    fn health_metrics_and_http10_keep_alive() {
        let mut f = fixture();
        let (status, _, body) = get(&mut f.handler, "GET /healthz HTTP/1.1\r\n\r\n");
        assert_eq!((status, body.as_slice()), (200, b"ok\n".as_slice()));
        let (status, head, body) = get(&mut f.handler, "GET /metrics HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert_eq!(status, 200);
        assert!(head.contains("Connection: keep-alive\r\n"), "{head}");
        let text = String::from_utf8(body).unwrap();
        assert!(text.contains("tessera_http_requests_total{worker=\"0\",code=\"200\"} 1"), "{text}");
        assert!(text.contains("tessera_store_pieces 3"), "{text}");
        let (_, _, body) = get(&mut f.handler, "GET /v1/content/a HTTP/1.1\r\nRange: bytes=10-19\r\n\r\n");
        assert_eq!(body.len(), 10);
        let (_, _, text) = get(&mut f.handler, "GET /metrics HTTP/1.1\r\n\r\n");
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("tessera_cache_requests_total{worker=\"0\",result=\"hit\"} 1\n"), "{text}");
        assert!(text.contains("tessera_cache_bytes_total{worker=\"0\",result=\"hit\"} 10\n"), "{text}");
    }

    #[test]
    fn the_status_page_and_its_json_show_the_contents_and_counters() {
        let mut f = fixture();
        get(&mut f.handler, "GET /v1/content/a/piece/1 HTTP/1.1\r\n\r\n");
        let (status, head, body) = get(&mut f.handler, "GET /status.json HTTP/1.1\r\n\r\n");
        assert_eq!(status, 200);
        assert!(head.contains("Content-Type: application/json\r\n"), "{head}");
        let shown: crate::dataplane::status::Status = serde_json::from_slice(&body).unwrap();
        let ids: Vec<&str> = shown.contents.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["a", "meta-only"]);
        let (a, meta_only) = (&shown.contents[0], &shown.contents[1]);
        assert_eq!((a.pieces, a.pieces_held, a.bytes_held), (3, 3, f.bytes.len() as u64));
        assert_eq!((meta_only.pieces_held, meta_only.bytes_held), (0, 0));
        assert_eq!((shown.requests_total, shown.cache.hits, shown.store.pieces), (1, 1, 3));
        assert_eq!((shown.role.as_str(), shown.fill.is_none(), shown.request_rate.counts.len()), ("seed", true, 36));
        let (status, head, body) = get(&mut f.handler, "GET / HTTP/1.1\r\n\r\n");
        assert_eq!(status, 200);
        assert!(head.contains("Content-Type: text/html; charset=utf-8\r\n"), "{head}");
        let page = String::from_utf8(body).unwrap();
        assert!(page.contains("<td>meta-only</td>") && page.contains("3 of 3"), "{page}");
        // Within a second the page is answered from the status gathered last, then gathered again.
        get(&mut f.handler, "GET /v1/content/a/piece/0 HTTP/1.1\r\n\r\n");
        let hits = |handler: &mut Handler| {
            let (_, _, body) = get(handler, "GET /status.json HTTP/1.1\r\n\r\n");
            serde_json::from_slice::<crate::dataplane::status::Status>(&body).unwrap().cache.hits
        };
        assert_eq!(hits(&mut f.handler), 1);
        let later = f.handler.now + STATUS_REUSE;
        f.handler.set_now(later);
        assert_eq!(hits(&mut f.handler), 2);
    }

    /// Sends what `connection` has, releases it, and hands the connection's events to `handler`:
    /// the wire bytes.
    fn drain(connection: &mut Connection, handler: &mut Handler, now: Instant) -> Vec<u8> {
        let mut slices = Vec::new();
        let plan = connection.fill_send(&mut slices, 1024, None);
        let wire = slices.concat();
        connection.sent(plan.bytes, now);
        connection.release_through(plan.through_seq, now, handler);
        while let Some(event) = connection.poll_event() {
            handler.connection_event(event, connection, now);
        }
        wire
    }

    #[test]
    fn a_pass_through_is_relayed_within_its_bound_and_cut_when_its_origin_ends_early() {
        use crate::dataplane::connection::ConnectionLimits;
        use crate::dataplane::upstream::{FromWorker, PassHead, UpstreamLink};
        let (link, misses) = UpstreamLink::new(1);
        let link = Arc::new(link);
        let mut f = fixture_with(Some(link.clone()));
        let passes = link.pass_receiver();
        let now = Instant::now();
        let key = crate::io::slots::SlotKey { index: 0, generation: 1 };
        let mut c = Connection::new(ConnectionLimits::from_config(&ServeConfig::default()), key, now);
        c.receive(
            b"GET /v1/content/simple HTTP/1.1\r\nRange: bytes=0-9\r\nIf-Range: \"t\"\r\n\r\n",
            now,
            &mut f.handler,
        );
        let Ok(FromWorker::Miss(miss)) = misses.try_recv() else { panic!("no miss sent") };
        assert_eq!(miss.need, Need::Content { range: Some("bytes=0-9".into()) });
        assert_eq!(miss.if_range.as_deref(), Some("\"t\""));
        let fields = vec![("Content-Type", "text/x".to_string()), ("Content-Range", "bytes 0-9/20".to_string())];
        let head = PassHead {
            reason: "no manifest".into(),
            status: 206,
            content_length: 10,
            head_only: false,
            fields,
            held_bytes_max: 4,
        };
        let token = miss.token;
        link.send_done(0, Done { token, filled: Filled::PassThrough { head } });
        for chunk in ["abc", "def"] {
            link.send_done(0, Done { token, filled: Filled::PassThroughBody { bytes: chunk.into() } });
        }
        let deliver = |handler: &mut Handler, c: &mut Connection| {
            for token in handler.take_filled() {
                handler.deliver(token, c, now);
            }
        };
        deliver(&mut f.handler, &mut c);
        let taken = |passes: &crossbeam_channel::Receiver<ToPassThrough>| -> Vec<u64> {
            passes.try_iter().map(|m| if let ToPassThrough::Taken { bytes, .. } = m { bytes } else { 0 }).collect()
        };
        // 4 bytes held at most: "abc" is taken, "def" waits in the handler.
        assert_eq!(taken(&passes), [3]);
        let wire = String::from_utf8(drain(&mut c, &mut f.handler, now)).unwrap();
        assert!(wire.starts_with("HTTP/1.1 206 ") && wire.ends_with("\r\n\r\nabc"), "{wire}");
        for field in [
            "X-Tessera-Mode: simple; reason=no manifest",
            "Content-Type: text/x",
            "Content-Range: bytes 0-9/20",
            "Content-Length: 10",
        ] {
            assert!(wire.contains(&format!("{field}\r\n")), "{field}: {wire}");
        }
        assert!(!wire.contains("Accept-Ranges"), "{wire}");
        // Room again: "def" goes, and is acknowledged.
        assert_eq!(taken(&passes), [3]);
        assert_eq!(drain(&mut c, &mut f.handler, now), b"def");
        // The origin ended early: the response ends short and the connection closes after it.
        link.send_done(0, Done { token, filled: Filled::Failed { reason: "closed".into() } });
        deliver(&mut f.handler, &mut c);
        assert_eq!(drain(&mut c, &mut f.handler, now), b"");
        assert!(c.should_close(), "a short body is never presented as whole");
        assert!(passes.try_recv().is_err());
    }
}
