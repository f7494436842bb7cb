//! Simple-mode pass-through (rule 5): a content whose metadata cannot be had or does not verify
//! is streamed to the device from its HTTP source, and never stored, served as pieces or
//! announced. One thread runs every pass-through on one [`ClientLoop`] (io_uring, or epoll like
//! the data plane's backend); the sans-I/O [`http::client::Connection`](HttpConnection) frames
//! each origin response as it arrives.
//!
//! The fill thread hands a miss over ([`ToPassThrough::Start`]). This thread connects to the
//! origin and asks with the device's method and `Range:`. Once the origin's head is in, the
//! worker gets [`Filled::PassThrough`] (status, length, fields) and sends the device its head,
//! then every body chunk as [`Filled::PassThroughBody`]. The worker acknowledges what its
//! connection took ([`ToPassThrough::Taken`]); with half of `pass_through_buffer_bytes`
//! unacknowledged the origin read pauses (TCP slows the origin), and the device's connection
//! holds the other half at most: a pass-through of any size holds about that many bytes.
//!
//! Ends: the body complete → the origin connection closes (it was asked `Connection: close`);
//! the device gone ([`ToPassThrough::Gone`]) → closed at once, the slot free; the origin closing
//! early or silent for `request_timeout_ms` → `Filled::Failed`, and the worker aborts the device's
//! connection after the bytes it has (never a short body presented as whole). A device's
//! `If-Range:` goes with its `Range:`, so the origin decides whether the range still applies.
//! Before the head: a redirect is followed (curl's `-L` rules, at most five hops, plain HTTP:
//! the same request on a new connection); a status other than 200, 206 or 416 → 502 naming it; unreachable → 502 with the reason; more
//! than `pass_throughs_max` at once → 503 with `Retry-After`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Receiver;

use super::FillStartError;
use crate::config::{BackendChoice, UpstreamConfig};
use crate::dataplane::connection::ResponseToken;
use crate::dataplane::upstream::{Done, Filled, Miss, Need, PassHead, ToPassThrough, UpstreamLink};
use crate::http::client::redirect::next_hop;
use crate::http::client::{ClientLimits, Connection as HttpConnection, Event as HttpEvent, ReceivedHead, RequestSpec};
use crate::http::response::reason_phrase;
use crate::http::url::HttpUrl;
use crate::io::client::{ClientConfig, ClientLoop, ConnId, Event};

/// The thread looks for a stop request at least this often.
const STOP_POLL_MS: u64 = 50;
/// Body chunks handed to a worker and not yet taken, per pass-through, at most (bounds the
/// `Taken` messages in flight far below the pass-through queue's bound).
const CHUNKS_UNTAKEN_MAX: u32 = 64;
/// Bytes of one receive from an origin (one body chunk at most).
const RECV_BUFFER_BYTES: usize = 64 * 1024;
/// Origin fields a device is given as they are; the rest (hop-by-hop, cookies…) stay behind.
const FIELDS_PASSED: [&str; 5] = ["Content-Type", "Content-Range", "Accept-Ranges", "ETag", "Last-Modified"];

/// The limits of the pass-through thread, from `[upstream]`.
#[derive(Debug, Clone, Copy)]
struct Limits {
    pass_throughs_max: usize,
    /// Bytes handed to a worker and not yet taken by its connection before the origin read pauses.
    untaken_bytes_max: u64,
    /// Body bytes the device's connection holds at most.
    held_bytes_max: u64,
    connect_timeout: Duration,
    request_timeout: Duration,
    retry_after_s: u32,
}

impl Limits {
    fn from_config(upstream: &UpstreamConfig) -> Limits {
        let half = (upstream.pass_through_buffer_bytes / 2).max(1);
        Limits {
            pass_throughs_max: upstream.pass_throughs_max.max(1) as usize,
            untaken_bytes_max: half,
            held_bytes_max: half,
            connect_timeout: Duration::from_millis(upstream.connect_timeout_ms.max(1)),
            request_timeout: Duration::from_millis(upstream.request_timeout_ms.max(1)),
            retry_after_s: upstream.busy_retry_after_s,
        }
    }
}

/// Starts the pass-through thread on `backend` (the data plane's); it stops when `stop` is set.
pub fn start(
    backend: BackendChoice,
    upstream: &UpstreamConfig,
    link: Arc<UpstreamLink>,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>, FillStartError> {
    let limits = Limits::from_config(upstream);
    let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
    let thread = std::thread::Builder::new()
        .name("tessera-pass".into())
        .spawn(move || {
            let config = ClientConfig {
                // Room for connections still closing (their slots go once their operations do).
                connections_max: 2 * limits.pass_throughs_max,
                recv_buffer_bytes: RECV_BUFFER_BYTES,
                ..ClientConfig::default()
            };
            let client = match ClientLoop::new(backend, config) {
                Ok(client) => client,
                Err(error) => return drop(ready_tx.send(Err(error))),
            };
            link.set_pass_waker(client.waker());
            let _ = ready_tx.send(Ok(()));
            PassThroughs::new(client, link, limits).run(&stop);
        })
        .map_err(FillStartError::Thread)?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(error)) => {
            let _ = thread.join();
            Err(FillStartError::PassThrough(error))
        }
        Err(_) => {
            let _ = thread.join();
            Err(FillStartError::Thread(std::io::Error::other("the pass-through thread ended at start")))
        }
    }
}

/// One pass-through: a device's response and its origin connection.
struct Pass {
    worker: usize,
    token: ResponseToken,
    url: String,
    /// Why the content is in Simple mode.
    reason: String,
    head_only: bool,
    /// The device's `Range:` and `If-Range:`, asked again of a redirect's target.
    fields: Vec<(&'static str, String)>,
    /// Redirects followed so far.
    hops: u32,
    http: HttpConnection<()>,
    /// The origin's head went to the worker: what follows is the body.
    relaying: bool,
    untaken_bytes: u64,
    untaken_chunks: u32,
    /// Not receiving from the origin until the worker takes more.
    paused: bool,
}

/// What the thread counts, for `/metrics`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counters {
    started_total: u64,
    busy_total: u64,
    failed_total: u64,
    bytes_total: u64,
}

/// The pass-through thread's state.
struct PassThroughs {
    client: ClientLoop,
    link: Arc<UpstreamLink>,
    limits: Limits,
    passes: HashMap<ConnId, Pass>,
    by_response: HashMap<(usize, ResponseToken), ConnId>,
    counters: Counters,
    /// What `/metrics` last showed.
    published: Option<(Counters, usize)>,
}

/// One output of an origin connection's HTTP state, owned (the connection lends its bytes).
enum Step {
    Head(ReceivedHead),
    Body(Vec<u8>),
    Done,
    Closed(Option<String>),
}

impl PassThroughs {
    fn new(client: ClientLoop, link: Arc<UpstreamLink>, limits: Limits) -> PassThroughs {
        PassThroughs {
            client,
            link,
            limits,
            passes: HashMap::new(),
            by_response: HashMap::new(),
            counters: Counters::default(),
            published: None,
        }
    }

    fn run(mut self, stop: &AtomicBool) {
        let mut events = Vec::new();
        let inbox: Receiver<ToPassThrough> = self.link.pass_receiver();
        while !stop.load(Ordering::Acquire) {
            self.publish_metrics();
            let wait = Some(Duration::from_millis(STOP_POLL_MS));
            if let Err(error) = self.client.poll(&mut events, wait) {
                tracing::error!(%error, "the pass-through loop failed; Simple-mode content is no longer passed through");
                return;
            }
            for event in events.drain(..) {
                self.on_event(event);
            }
            // Bounded by the queue's bound.
            for message in inbox.try_iter() {
                self.on_message(message);
            }
        }
    }

    fn on_message(&mut self, message: ToPassThrough) {
        match message {
            ToPassThrough::Start { miss, url, reason } => self.begin(miss, url, reason),
            ToPassThrough::Taken { worker, token, bytes } => {
                let Some(&conn) = self.by_response.get(&(worker, token)) else { return };
                let Some(pass) = self.passes.get_mut(&conn) else { return };
                pass.untaken_bytes = pass.untaken_bytes.saturating_sub(bytes);
                pass.untaken_chunks = pass.untaken_chunks.saturating_sub(1);
                self.resume_if_room(conn);
            }
            ToPassThrough::Gone { worker, token } => {
                let conn = self.by_response.get(&(worker, token)).copied();
                if let Some(pass) = conn.and_then(|conn| self.close(conn)) {
                    tracing::debug!(url = %pass.url, relaying = pass.relaying, "device gone: pass-through ended");
                }
            }
        }
    }

    /// Opens the origin connection of a Simple-mode miss (or answers why not).
    fn begin(&mut self, miss: Miss, url: String, reason: String) {
        let (head_only, range) = match &miss.need {
            Need::Content { range } => (false, range.clone()),
            Need::ContentHead { range } => (true, range.clone()),
            Need::Metadata | Need::Piece(_) => {
                answer(&self.link, miss.worker, miss.token, Filled::Simple { reason });
                return;
            }
        };
        if self.passes.len() >= self.limits.pass_throughs_max {
            self.counters.busy_total += 1;
            let busy = Filled::Busy { retry_after_s: self.limits.retry_after_s };
            answer(&self.link, miss.worker, miss.token, busy);
            return;
        }
        let mut fields: Vec<(&'static str, String)> = range.into_iter().map(|range| ("Range", range)).collect();
        if !fields.is_empty() {
            fields.extend(miss.if_range.clone().map(|tag| ("If-Range", tag)));
        }
        let (conn, http) = match self.connect(&url, head_only, fields.clone()) {
            Ok(opened) => opened,
            Err(why) => {
                self.counters.failed_total += 1;
                let reason = format!("{reason}; its HTTP source {url} cannot be asked: {why}");
                answer(&self.link, miss.worker, miss.token, Filled::Simple { reason });
                return;
            }
        };
        self.counters.started_total += 1;
        tracing::info!(id = %miss.id, %url, %reason, "Simple mode: passing through from the HTTP source");
        let pass = Pass {
            worker: miss.worker,
            token: miss.token,
            url,
            reason,
            head_only,
            fields,
            hops: 0,
            http,
            relaying: false,
            untaken_bytes: 0,
            untaken_chunks: 0,
            paused: false,
        };
        self.by_response.insert((pass.worker, pass.token), conn);
        self.passes.insert(conn, pass);
    }

    /// Connects to `url` and queues the request: the device's method and `fields` (its `Range:`
    /// and `If-Range:`), one request.
    fn connect(
        &mut self,
        url: &str,
        head_only: bool,
        fields: Vec<(&'static str, String)>,
    ) -> Result<(ConnId, HttpConnection<()>), String> {
        let parsed = HttpUrl::parse(url).map_err(|error| error.to_string())?;
        let address = parsed.resolve().map_err(|error| error.to_string())?;
        let mut spec = RequestSpec::new(if head_only { "HEAD" } else { "GET" }, &parsed);
        spec.close = true;
        spec.fields = fields;
        // Any length: the body is relayed as it comes, never held whole.
        let limits = ClientLimits { body_bytes_max: u64::MAX, pipeline_depth_max: 1, ..ClientLimits::default() };
        let mut http = HttpConnection::new(limits);
        http.send_request((), &spec).map_err(|error| error.to_string())?;
        let conn = self.client.connect(address).map_err(|error| error.to_string())?;
        let request = http.transmit().to_vec();
        http.transmitted(request.len());
        let queued =
            self.client.send(conn, request).and_then(|()| self.client.set_timer(conn, self.limits.connect_timeout));
        if let Err(error) = queued {
            self.client.close(conn);
            return Err(error.to_string());
        }
        Ok((conn, http))
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Connected { conn } => {
                let _ = self.client.set_timer(conn, self.limits.request_timeout);
            }
            Event::Received { conn, bytes } => {
                if let Some(pass) = self.passes.get_mut(&conn) {
                    pass.http.handle_input(&bytes);
                    let _ = self.client.set_timer(conn, self.limits.request_timeout);
                }
                self.client.recycle(bytes);
                self.drain(conn);
            }
            Event::Timer { conn } => self.on_timer(conn),
            Event::Closed { conn, error } => {
                let Some(pass) = self.passes.get_mut(&conn) else { return };
                pass.http.handle_eof();
                self.drain(conn);
                if self.passes.contains_key(&conn) {
                    let why = error.map_or_else(|| "it closed the connection".to_string(), |error| error.to_string());
                    self.fail(conn, why);
                }
            }
            // (No buffer is lent here, so nothing is filled.)
            Event::Sent { .. } | Event::Filled { .. } | Event::Woken => {}
        }
    }

    fn on_timer(&mut self, conn: ConnId) {
        let Some(pass) = self.passes.get(&conn) else { return };
        if pass.paused {
            // The device is slow, not the origin: the data plane's send timeout watches that.
            let _ = self.client.set_timer(conn, self.limits.request_timeout);
            return;
        }
        let timeout_ms = self.limits.request_timeout.as_millis();
        let why = if pass.relaying { "sent no body bytes" } else { "did not answer" };
        self.fail(conn, format!("it {why} for {timeout_ms} ms"));
    }

    /// Acts on everything the origin connection's HTTP state has to say.
    fn drain(&mut self, conn: ConnId) {
        // Bounded: every step consumes received bytes, and Done and Closed end the pass.
        loop {
            let Some(pass) = self.passes.get_mut(&conn) else { return };
            let step = match pass.http.poll_event() {
                None => return,
                Some(HttpEvent::Head { head, .. }) => Step::Head(head),
                Some(HttpEvent::BodyData { data, .. }) => Step::Body(data.to_vec()),
                Some(HttpEvent::Done { .. }) => Step::Done,
                Some(HttpEvent::Closed { error, .. }) => Step::Closed(error.map(|error| error.to_string())),
            };
            match step {
                Step::Head(head) => self.on_head(conn, &head),
                Step::Body(bytes) => self.on_body(conn, bytes),
                Step::Done => {
                    // The whole body came: an orderly close.
                    if self.forget(conn).is_some() {
                        self.client.close(conn);
                    }
                }
                Step::Closed(why) => {
                    let why = why.unwrap_or_else(|| "it closed the connection".to_string());
                    self.fail(conn, why);
                }
            }
        }
    }

    /// The origin's head: relayed if it is a body (or its absence) a device can be given.
    fn on_head(&mut self, conn: ConnId, head: &ReceivedHead) {
        let Some(pass) = self.passes.get_mut(&conn) else { return };
        if (300..400).contains(&head.status) && head.location.is_some() {
            return self.redirect(conn, head);
        }
        if !matches!(head.status, 200 | 206 | 416) {
            let why = format!("it answered {} {}", head.status, reason_phrase(head.status));
            return self.fail(conn, why);
        }
        let Some(content_length) = head.content_length else {
            // The data plane frames every answer by its length; a relay cannot promise one.
            return self.fail(conn, "it sent no Content-Length (a chunked body is not passed through)".into());
        };
        let fields = FIELDS_PASSED
            .iter()
            .filter_map(|&name| {
                let (_, value) = head.headers.iter().find(|(field, _)| field.eq_ignore_ascii_case(name))?;
                Some((name, value.chars().filter(|c| !c.is_control()).collect()))
            })
            .collect();
        pass.relaying = true;
        let head = PassHead {
            reason: pass.reason.clone(),
            status: head.status,
            content_length,
            head_only: pass.head_only,
            fields,
            held_bytes_max: self.limits.held_bytes_max,
        };
        if !answer(&self.link, pass.worker, pass.token, Filled::PassThrough { head }) {
            drop(self.close(conn));
        }
    }

    /// A redirect before any byte went to the device: the same request, on a new connection, to
    /// where it points (curl's `-L` rules, at most `REDIRECTS_MAX` hops; plain HTTP only).
    fn redirect(&mut self, conn: ConnId, head: &ReceivedHead) {
        let Some(pass) = self.passes.get(&conn) else { return };
        let method = if pass.head_only { "HEAD" } else { "GET" };
        let next = HttpUrl::parse(&pass.url)
            .map_err(|error| error.to_string())
            .and_then(|url| next_hop(&url, method, head, pass.hops).map_err(|error| error.to_string()));
        let next = match next {
            Ok(Some((_, next))) if !next.is_tls() => next,
            Ok(Some((_, next))) => {
                return self.fail(conn, format!("it redirected to {next}, and a pass-through speaks plain HTTP only"))
            }
            Ok(None) => return self.fail(conn, format!("it answered {} {}", head.status, reason_phrase(head.status))),
            Err(why) => return self.fail(conn, why),
        };
        let Some(mut pass) = self.close(conn) else { return };
        tracing::debug!(from = %pass.url, to = %next, "pass-through redirected");
        match self.connect(next.as_str(), pass.head_only, pass.fields.clone()) {
            Ok((conn, http)) => {
                (pass.url, pass.http, pass.hops) = (next.to_string(), http, pass.hops + 1);
                self.by_response.insert((pass.worker, pass.token), conn);
                self.passes.insert(conn, pass);
            }
            Err(why) => {
                self.counters.failed_total += 1;
                let reason =
                    format!("{}; its HTTP source redirected to {next}, which cannot be asked: {why}", pass.reason);
                answer(&self.link, pass.worker, pass.token, Filled::Simple { reason });
            }
        }
    }

    /// A body chunk: to the worker; the origin read pauses while too much is not yet taken.
    fn on_body(&mut self, conn: ConnId, bytes: Vec<u8>) {
        let Some(pass) = self.passes.get_mut(&conn) else { return };
        assert!(pass.relaying && !pass.head_only, "body bytes come after a head, never for a HEAD");
        let count = bytes.len() as u64;
        pass.untaken_bytes += count;
        pass.untaken_chunks += 1;
        self.counters.bytes_total += count;
        if !answer(&self.link, pass.worker, pass.token, Filled::PassThroughBody { bytes }) {
            // A chunk lost would splice the body: send no further one (the response ends short).
            drop(self.close(conn));
            return;
        }
        let full = pass.untaken_bytes >= self.limits.untaken_bytes_max || pass.untaken_chunks >= CHUNKS_UNTAKEN_MAX;
        if full && !pass.paused {
            pass.paused = true;
            let _ = self.client.set_receiving(conn, false);
        }
    }

    fn resume_if_room(&mut self, conn: ConnId) {
        let Some(pass) = self.passes.get_mut(&conn) else { return };
        let room = pass.untaken_bytes < self.limits.untaken_bytes_max && pass.untaken_chunks < CHUNKS_UNTAKEN_MAX;
        if pass.paused && room {
            pass.paused = false;
            let _ = self.client.set_receiving(conn, true);
            let _ = self.client.set_timer(conn, self.limits.request_timeout);
        }
    }

    /// Ends a pass-through that failed: before its head the device gets 502 with the reason; after
    /// it, the relay is cut short (the worker aborts the device's connection).
    fn fail(&mut self, conn: ConnId, why: String) {
        let Some(pass) = self.close(conn) else { return };
        self.counters.failed_total += 1;
        let url = &pass.url;
        tracing::warn!(%url, %why, relaying = pass.relaying, "pass-through failed");
        let filled = if pass.relaying {
            Filled::Failed { reason: format!("its HTTP source {url} ended the body early: {why}") }
        } else {
            Filled::Simple { reason: format!("{}; its HTTP source {url}: {why}", pass.reason) }
        };
        answer(&self.link, pass.worker, pass.token, filled);
    }

    /// Forgets a pass-through whose body is not over and resets its origin connection, so the
    /// origin stops sending at once (a FIN would leave it pushing into a window nobody reads).
    fn close(&mut self, conn: ConnId) -> Option<Pass> {
        let pass = self.forget(conn)?;
        self.client.abort(conn);
        Some(pass)
    }

    /// Forgets a pass-through; its connection is the caller's to close.
    fn forget(&mut self, conn: ConnId) -> Option<Pass> {
        let pass = self.passes.remove(&conn)?;
        let indexed = self.by_response.remove(&(pass.worker, pass.token));
        assert_eq!(indexed, Some(conn), "a pass-through is indexed by its response");
        debug_assert_eq!(self.passes.len(), self.by_response.len());
        Some(pass)
    }

    /// Publishes the counters for `/metrics` when they changed.
    fn publish_metrics(&mut self) {
        use std::fmt::Write as _;
        let now = (self.counters, self.passes.len());
        if self.published == Some(now) {
            return;
        }
        self.published = Some(now);
        let c = self.counters;
        let mut out = String::with_capacity(1024);
        let name = "tessera_fill_pass_throughs";
        let _ = writeln!(
            out,
            "# HELP {name} Simple-mode pass-throughs streaming now.\n# TYPE {name} gauge\n{name} {}",
            now.1
        );
        for (name, help, value) in [
            ("tessera_fill_pass_throughs_total", "Simple-mode pass-throughs begun.", c.started_total),
            ("tessera_fill_pass_throughs_busy_total", "Pass-throughs refused at pass_throughs_max.", c.busy_total),
            ("tessera_fill_pass_throughs_failed_total", "Pass-throughs the origin failed.", c.failed_total),
            ("tessera_fill_pass_through_bytes_total", "Body bytes passed through.", c.bytes_total),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        }
        self.link.set_pass_metrics_text(out);
    }
}

/// Answers a worker's response; `false` if its queue was full.
fn answer(link: &UpstreamLink, worker: usize, token: ResponseToken, filled: Filled) -> bool {
    link.send_done(worker, Done { token, filled })
}
