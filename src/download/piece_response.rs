//! The receiving side of a piece connection, shared by `get`'s driver and the cache box's fetch
//! loop: responses to pipelined piece requests are framed by the HTTP client connection and their
//! bodies copied into reused piece buffers (plain body bytes straight from each receive, not
//! through the connection's input). What a finished response means is a [`Response`]; the bytes
//! are not trusted here — the verifier hashes them.

use crate::http::client::{self as http_client, ClientLimits, ReceivedHead};
use crate::io::client::{ClientLoop, ConnId};

/// Bytes the client loop brought for a connection.
pub(crate) enum Taken<'a> {
    /// Received into the loop's own buffer ([`crate::io::client::Event::Received`]).
    Copy(&'a [u8]),
    /// Received straight into the lent piece buffer ([`crate::io::client::Event::Filled`]).
    Lent { buffer: Vec<u8>, start: usize, bytes: usize },
}

/// What the request tagged `T` asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Expect {
    /// Where the piece starts in the content.
    pub start: u64,
    /// The piece's length.
    pub length: u64,
    /// Asked of an HTTP URL by `Range:` (not of the piece API).
    pub ranged: bool,
}

/// What a finished (or refused) response means.
#[derive(Debug)]
pub(crate) enum Response {
    /// The piece's bytes: the first `length` of `buffer` (not verified yet).
    Bytes { buffer: Vec<u8>, length: usize },
    /// Wrong length, range or Content-Range: the source sent other bytes than asked for.
    Bad,
    /// 404, 410 or 416: the source has no such piece.
    Missing,
    /// Any other answer.
    Failed,
    /// A redirect from an HTTP source, to follow once the response is complete.
    Redirect(ReceivedHead),
}

/// Why a connection ends.
#[derive(Debug)]
pub(crate) enum End<T> {
    /// Still open.
    Open,
    /// Closed by the server as HTTP allows; unanswered requests are lost without blame.
    Closed(Vec<T>),
    /// Broken (reset, truncated, unparseable): unanswered requests failed.
    Failed(Vec<T>, String),
}

impl<T> End<T> {
    /// For an ended connection, its unanswered requests and, if it broke, why; `None` if open.
    pub(crate) fn ended(self) -> Option<(Vec<T>, Option<String>)> {
        match self {
            End::Open => None,
            End::Closed(unanswered) => Some((unanswered, None)),
            End::Failed(unanswered, reason) => Some((unanswered, Some(reason))),
        }
    }
}

/// Piece-sized buffers, reused so that receiving a piece neither allocates nor faults pages in.
pub(crate) struct BufferPool {
    free: Vec<Vec<u8>>,
    buffer_bytes: usize,
    kept_max: usize,
}

impl BufferPool {
    /// A pool of `buffer_bytes` buffers keeping at most `kept_max` free ones.
    pub(crate) fn new(buffer_bytes: usize, kept_max: usize) -> BufferPool {
        BufferPool { free: Vec::new(), buffer_bytes: buffer_bytes.max(1), kept_max }
    }

    /// A buffer with room for `length` bytes: a pooled one when `length` is near the pool's size
    /// (a last piece, a piece of the usual size), else one of exactly `length`.
    pub(crate) fn take(&mut self, length: usize) -> Vec<u8> {
        if length > self.buffer_bytes || length <= self.buffer_bytes / 2 {
            return vec![0; length];
        }
        self.free.pop().unwrap_or_else(|| vec![0; self.buffer_bytes])
    }

    /// Hands a buffer back for reuse.
    pub(crate) fn give(&mut self, buffer: Vec<u8>) {
        if self.free.len() < self.kept_max && buffer.len() == self.buffer_bytes {
            self.free.push(buffer);
        }
    }
}

/// A response body being received for the request at the head of the connection's queue.
struct Body {
    status: u16,
    /// A piece buffer (empty for a status whose body is not kept); `filled` bytes are received.
    buffer: Vec<u8>,
    filled: usize,
    /// The piece's length: bytes past it are not kept.
    expected: usize,
    overflow: bool,
    /// The head of a redirect from an HTTP source, followed once the response is complete.
    redirect: Option<ReceivedHead>,
    /// The buffer is lent to the client loop for a receive straight into it ([`PieceReceiver::lend`]).
    lent: bool,
}

/// One connection's HTTP state and the body being received; each request is tagged `T`.
pub(crate) struct PieceReceiver<T> {
    /// The HTTP client connection (requests go in here).
    pub http: http_client::Connection<T>,
    body: Option<Body>,
    /// A small buffer lent for receives while a response head is awaited (empty until first
    /// lent, and while lent).
    head: Vec<u8>,
    head_lent: bool,
}

/// Bytes of a receive while a response head is awaited: a head and little else, because the body
/// bytes that come with a head go through the HTTP input (copied twice) instead of straight into
/// the piece buffer.
const HEAD_RECEIVE_BYTES: usize = 4096;

impl<T: Copy + PartialEq> PieceReceiver<T> {
    /// A fresh connection under `limits`.
    pub(crate) fn new(limits: ClientLimits) -> PieceReceiver<T> {
        PieceReceiver { http: http_client::Connection::new(limits), body: None, head: Vec::new(), head_lent: false }
    }

    /// Whether a response body is being received (begun, not complete).
    pub(crate) fn mid_body(&self) -> bool {
        self.body.is_some()
    }

    /// Gives up on the connection: the unanswered requests' tags; the body buffer goes back.
    pub(crate) fn abandon(&mut self, pool: &mut BufferPool) -> Vec<T> {
        if let Some(body) = self.body.take() {
            pool.give(body.buffer);
        }
        self.http.abandon()
    }

    /// Takes in plaintext received bytes, framing responses as they come; finished responses are
    /// pushed on `landed`. Plain body bytes the framing allows are copied straight into the piece
    /// buffer, the rest goes through the HTTP input. Never called while a buffer is lent (the
    /// client loop receives into a loan before any other receive).
    pub(crate) fn receive(
        &mut self,
        bytes: &[u8],
        expect: &dyn Fn(&T) -> Expect,
        pool: &mut BufferPool,
        landed: &mut Vec<(T, Response)>,
    ) -> End<T> {
        assert!(
            !self.head_lent && !self.body.as_ref().is_some_and(|b| b.lent),
            "bytes received while a buffer is lent"
        );
        let mut rest = bytes;
        // Bounded by the input: each pass consumes received bytes.
        while !rest.is_empty() {
            match self.direct_span() {
                Some(span) => {
                    let count = span.len().min(rest.len());
                    let body = self.body.as_mut().expect("a direct span is inside a body");
                    body.buffer[span.start..span.start + count].copy_from_slice(&rest[..count]);
                    body.filled += count;
                    self.http.handle_body_direct(count as u64);
                    rest = &rest[count..];
                }
                None => {
                    self.http.handle_input(rest);
                    rest = &[];
                }
            }
            if let Some(end) = self.frame(expect, pool, landed) {
                return end;
            }
        }
        End::Open
    }

    /// Takes in what the client loop brought: [`PieceReceiver::receive`] for copied bytes,
    /// [`PieceReceiver::filled`] for a lent buffer.
    pub(crate) fn take_in(
        &mut self,
        taken: Taken,
        expect: &dyn Fn(&T) -> Expect,
        pool: &mut BufferPool,
        landed: &mut Vec<(T, Response)>,
    ) -> End<T> {
        match taken {
            Taken::Copy(bytes) => self.receive(bytes, expect, pool, landed),
            Taken::Lent { buffer, start, bytes } => self.filled(buffer, start, bytes, expect, pool, landed),
        }
    }

    /// Lends a buffer to `client` for the connection's next receive ([`ClientLoop::receive_into`]):
    /// the body's, when the next body bytes have a place waiting there, so they skip the copy out
    /// of a receive buffer; or a small one while a head is awaited, so that few body bytes come
    /// with it. Call it with every event of the loop's poll handled (a loan already out, or a
    /// receive still in flight, leaves it as it is); the buffer comes back with
    /// [`crate::io::client::Event::Filled`]. Plaintext connections only.
    pub(crate) fn lend_to(&mut self, client: &mut ClientLoop, conn: ConnId) {
        let Some((buffer, start, length)) = self.lend() else { return };
        if let Err(buffer) = client.receive_into(conn, buffer, start, length) {
            self.unlend(buffer);
        }
    }

    /// The buffer to lend, the place in it and its length, if a receive is due.
    fn lend(&mut self) -> Option<(Vec<u8>, usize, usize)> {
        if let Some(span) = self.direct_span() {
            let body = self.body.as_mut().expect("a direct span is inside a body");
            body.lent = true;
            return Some((std::mem::take(&mut body.buffer), span.start, span.len()));
        }
        if self.body.is_some() || self.head_lent || self.http.in_flight() == 0 {
            return None;
        }
        self.head.resize(HEAD_RECEIVE_BYTES, 0);
        self.head_lent = true;
        Some((std::mem::take(&mut self.head), 0, HEAD_RECEIVE_BYTES))
    }

    /// Takes back a buffer whose loan was refused.
    fn unlend(&mut self, buffer: Vec<u8>) {
        if std::mem::take(&mut self.head_lent) {
            self.head = buffer;
            return;
        }
        let body = self.body.as_mut().filter(|b| b.lent).expect("only a lent buffer comes back");
        body.buffer = buffer;
        body.lent = false;
    }

    /// Takes back a lent buffer into which `bytes` bytes were received at `start`, framing as
    /// [`PieceReceiver::receive`] does.
    fn filled(
        &mut self,
        buffer: Vec<u8>,
        start: usize,
        bytes: usize,
        expect: &dyn Fn(&T) -> Expect,
        pool: &mut BufferPool,
        landed: &mut Vec<(T, Response)>,
    ) -> End<T> {
        if std::mem::take(&mut self.head_lent) {
            let end = self.receive(&buffer[start..start + bytes], expect, pool, landed);
            self.head = buffer;
            return end;
        }
        let body = self.body.as_mut().filter(|b| b.lent).expect("only a lent buffer comes back");
        assert_eq!(start, body.filled, "a loan starts where the body stands");
        body.buffer = buffer;
        body.lent = false;
        body.filled += bytes;
        self.http.handle_body_direct(bytes as u64);
        self.frame(expect, pool, landed).unwrap_or(End::Open)
    }

    /// Turns the HTTP connection's events into finished responses; `Some` when the connection ends.
    pub(crate) fn frame(
        &mut self,
        expect: &dyn Fn(&T) -> Expect,
        pool: &mut BufferPool,
        landed: &mut Vec<(T, Response)>,
    ) -> Option<End<T>> {
        // Bounded by the input: every event consumes bytes or a request.
        while let Some(event) = self.http.poll_event() {
            match event {
                http_client::Event::Head { tag, head } => {
                    let tag = *tag;
                    if let Some(refused) = body_for(head, &expect(&tag), pool, &mut self.body) {
                        // Longer than the piece: a liar or a server ignoring Range; do not read it.
                        landed.push((tag, refused));
                        let mut unanswered = self.http.abandon();
                        unanswered.retain(|&other| other != tag);
                        return Some(End::Closed(unanswered));
                    }
                }
                http_client::Event::BodyData { data, .. } => {
                    let Some(body) = self.body.as_mut() else { continue };
                    let kept = matches!(body.status, 200 | 206);
                    let keep = if kept { body.expected.saturating_sub(body.filled).min(data.len()) } else { 0 };
                    body.buffer[body.filled..body.filled + keep].copy_from_slice(&data[..keep]);
                    body.filled += keep;
                    body.overflow |= kept && keep < data.len();
                }
                http_client::Event::Done { tag } => {
                    let body = self.body.take().expect("a completed response had a head");
                    landed.push((tag, land(body, &expect(&tag), pool)));
                }
                http_client::Event::Closed { unanswered, error } => {
                    return Some(match error {
                        None => End::Closed(unanswered),
                        Some(error) => End::Failed(unanswered, error.to_string()),
                    });
                }
            }
        }
        None
    }

    /// Where the next body bytes may be received straight into the piece buffer: inside a kept
    /// body of known length, with nothing buffered, and no more than the piece has room for.
    fn direct_span(&self) -> Option<std::ops::Range<usize>> {
        let direct = self.http.body_direct_bytes();
        let body = self.body.as_ref().filter(|b| matches!(b.status, 200 | 206) && !b.lent && direct > 0)?;
        let room = body.expected.saturating_sub(body.filled) as u64;
        (direct <= room).then(|| body.filled..body.filled + direct as usize)
    }
}

/// Prepares `body` for the response whose `head` arrived; `Some` when the response is refused at
/// its head.
fn body_for(head: ReceivedHead, expect: &Expect, pool: &mut BufferPool, body: &mut Option<Body>) -> Option<Response> {
    let Expect { start, length, ranged } = *expect;
    let empty = |status, redirect| Body {
        status,
        buffer: Vec::new(),
        filled: 0,
        expected: 0,
        overflow: false,
        redirect,
        lent: false,
    };
    if !matches!(head.status, 200 | 206) {
        let status = head.status;
        let redirect = (ranged && (300..400).contains(&status) && head.location.is_some()).then_some(head);
        *body = Some(empty(status, redirect));
        return None;
    }
    if head.content_length.is_some_and(|n| n > length) {
        return Some(if ranged && head.status == 200 { Response::Failed } else { Response::Bad });
    }
    let range_ok = match head.content_range {
        Some((first, last, _)) => first == start && last + 1 == start + length,
        None => head.status == 200 && (!ranged || start == 0),
    };
    *body = Some(match range_ok {
        true => Body { buffer: pool.take(length as usize), expected: length as usize, ..empty(head.status, None) },
        false => empty(0, None),
    });
    None
}

fn land(body: Body, expect: &Expect, pool: &mut BufferPool) -> Response {
    if let Some(head) = body.redirect {
        return Response::Redirect(head);
    }
    let response = match body.status {
        200 | 206 if !body.overflow && body.filled as u64 == expect.length => {
            return Response::Bytes { buffer: body.buffer, length: body.filled };
        }
        // Wrong length, wrong range or wrong Content-Range: the source answered with wrong bytes.
        0 | 200 | 206 => Response::Bad,
        404 | 410 | 416 => Response::Missing,
        _ => Response::Failed,
    };
    pool.give(body.buffer);
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::client::RequestSpec;

    fn receiver(pipeline: usize) -> PieceReceiver<u64> {
        let limits = ClientLimits { pipeline_depth_max: pipeline, body_bytes_max: 64, ..ClientLimits::default() };
        let mut receiver = PieceReceiver::new(limits);
        for piece in 0..pipeline as u64 {
            let spec = RequestSpec::to_host("GET", "h".into(), format!("/v1/content/c/piece/{piece}"));
            receiver.http.send_request(piece, &spec).unwrap();
        }
        receiver
    }

    /// Pieces of 4 bytes; piece 2 is the last, 2 bytes.
    fn expect(piece: &u64) -> Expect {
        Expect { start: piece * 4, length: if *piece == 2 { 2 } else { 4 }, ranged: false }
    }

    #[test]
    fn pipelined_answers_in_one_receive_land_in_order_with_exact_bytes() {
        let mut receiver = receiver(3);
        let mut pool = BufferPool::new(4, 4);
        let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nabcdHTTP/1.1 404 No\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nef";
        let mut landed = Vec::new();
        let end = receiver.receive(wire, &expect, &mut pool, &mut landed);
        assert!(matches!(end, End::Open));
        let summary: Vec<(u64, Option<Vec<u8>>, bool)> = landed
            .into_iter()
            .map(|(piece, response)| match response {
                Response::Bytes { buffer, length } => (piece, Some(buffer[..length].to_vec()), false),
                Response::Missing => (piece, None, true),
                other => panic!("piece {piece}: {other:?}"),
            })
            .collect();
        assert_eq!(
            summary,
            vec![(0, Some(b"abcd".to_vec()), false), (1, None, true), (2, Some(b"ef".to_vec()), false)]
        );
    }

    #[test]
    fn a_close_in_the_middle_of_a_body_fails_the_piece_and_those_behind_it() {
        let mut receiver = receiver(2);
        let mut pool = BufferPool::new(4, 4);
        let mut landed = Vec::new();
        let end = receiver.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab", &expect, &mut pool, &mut landed);
        assert!(matches!(end, End::Open) && landed.is_empty());
        receiver.http.handle_eof();
        match receiver.frame(&expect, &mut pool, &mut landed) {
            Some(End::Failed(unanswered, _)) => assert_eq!(unanswered, vec![0, 1]),
            other => panic!("{other:?}"),
        }
        assert!(landed.is_empty(), "no bytes of a cut piece are handed on");
    }

    #[test]
    fn a_body_longer_than_the_piece_is_refused_at_its_head() {
        let mut receiver = receiver(2);
        let mut pool = BufferPool::new(4, 4);
        let mut landed = Vec::new();
        let end = receiver.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n", &expect, &mut pool, &mut landed);
        assert!(matches!(end, End::Closed(ref unanswered) if unanswered == &vec![1]), "{end:?}");
        assert!(matches!(landed.as_slice(), [(0, Response::Bad)]), "{landed:?}");
    }

    fn bytes_of(landed: Vec<(u64, Response)>) -> Vec<(u64, Vec<u8>)> {
        landed
            .into_iter()
            .map(|(piece, response)| match response {
                Response::Bytes { buffer, length } => (piece, buffer[..length].to_vec()),
                other => panic!("piece {piece}: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_body_lent_out_lands_whole_then_a_small_loan_waits_for_the_next_head() {
        let mut receiver = receiver(2);
        let mut pool = BufferPool::new(4, 4);
        let mut landed = Vec::new();
        // The head and one body byte come the usual way.
        let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\na";
        assert!(matches!(receiver.receive(wire, &expect, &mut pool, &mut landed), End::Open));
        // The rest of the body has its place: bytes 1..4 of the piece buffer, no more.
        let (mut buffer, start, length) = receiver.lend().expect("a body with room");
        assert_eq!((start, length), (1, 3));
        assert!(receiver.lend().is_none(), "one loan at a time");
        buffer[1..3].copy_from_slice(b"bc");
        let end = receiver.take_in(Taken::Lent { buffer, start, bytes: 2 }, &expect, &mut pool, &mut landed);
        assert!(matches!(end, End::Open) && landed.is_empty(), "a part of the body lands nothing");
        let (mut buffer, start, length) = receiver.lend().expect("the body's last byte");
        assert_eq!((start, length), (3, 1));
        buffer[3] = b'd';
        receiver.take_in(Taken::Lent { buffer, start, bytes: 1 }, &expect, &mut pool, &mut landed);
        assert_eq!(bytes_of(std::mem::take(&mut landed)), vec![(0, b"abcd".to_vec())]);
        // Piece 1's head is awaited: the loan is a small head buffer; the bytes go through framing.
        let (mut head, start, length) = receiver.lend().expect("a head is awaited");
        assert_eq!((start, length), (0, HEAD_RECEIVE_BYTES));
        let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nwxyz";
        head[..wire.len()].copy_from_slice(wire);
        receiver.take_in(Taken::Lent { buffer: head, start: 0, bytes: wire.len() }, &expect, &mut pool, &mut landed);
        assert_eq!(bytes_of(landed), vec![(1, b"wxyz".to_vec())]);
        assert!(receiver.lend().is_none(), "nothing is awaited");
    }

    #[test]
    fn a_refused_loan_leaves_the_receiver_as_it_was() {
        let mut receiver = receiver(1);
        let mut pool = BufferPool::new(4, 4);
        let mut landed = Vec::new();
        receiver.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab", &expect, &mut pool, &mut landed);
        let (buffer, _, _) = receiver.lend().unwrap();
        receiver.unlend(buffer);
        receiver.receive(b"cd", &expect, &mut pool, &mut landed);
        assert_eq!(bytes_of(landed), vec![(0, b"abcd".to_vec())]);
    }
}
