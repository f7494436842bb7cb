//! The data plane's answers: a parsed request in, an [`Outgoing`] (head plus pinned piece slices)
//! out. One handler per worker; it performs no socket I/O.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::dataplane::connection::{Respond, ResponseToken};
use crate::dataplane::library::{Content, Library};
use crate::dataplane::metrics::WorkerMetrics;
use crate::dataplane::response::{Body, Outgoing, PieceSlice, Reply};
use crate::dataplane::route::{route, Route};
use crate::dataplane::shared::Shared;
use crate::http::{parse_range, ContentRange, Method, RangeOutcome, Request, ResponseHead, Version};

const OCTETS: &str = "application/octet-stream";
/// The headers of a content response when the request asked for nothing extra (the usual case).
const ACCEPT_RANGES: &[(&str, &str)] = &[("Accept-Ranges", "bytes")];
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One worker's request handler.
pub struct Handler {
    shared: Arc<Shared>,
    worker: usize,
    library: Library,
    now: Instant,
}

impl Handler {
    /// The handler of worker `worker`.
    pub fn new(shared: Arc<Shared>, worker: usize) -> Handler {
        let now = Instant::now();
        let library = Library::new(
            shared.catalog.clone(),
            shared.store.clone(),
            &shared.contents,
            shared.config.catalog_cache_entries_max,
            std::time::Duration::from_millis(shared.config.catalog_recheck_ms),
            now,
        );
        Handler { shared, worker, library, now }
    }

    /// Sets the time the next requests are handled at (drivers call it once per loop turn).
    pub fn set_now(&mut self, now: Instant) {
        self.now = now;
    }

    /// This worker's counters.
    pub fn metrics(&self) -> &WorkerMetrics {
        self.shared.metrics.worker(self.worker)
    }

    fn content(&mut self, id: &crate::content::ContentId) -> Option<Rc<Content>> {
        self.library.content(id, self.now)
    }

    fn answer(&mut self, request: &Request, keep_alive: bool) -> Outgoing {
        let head_only = request.method == Method::Head;
        let extra: &[(&str, &str)] =
            if keep_alive && request.version == Version::Http10 { &[("Connection", "keep-alive")] } else { &[] };
        let error = |status: u16, message: &str| error_response(status, message, keep_alive, head_only, extra);
        let resource = match route(request.method, request.path()) {
            Ok(resource) => resource,
            Err(error_kind) => return error(error_kind.status(), &format!("{error_kind}\n")),
        };
        let head = |status, length, content_type, content_range| ResponseHead {
            status,
            content_length: length,
            content_type,
            content_range,
            keep_alive,
            extra,
        };
        match resource {
            Route::Health | Route::Metrics => {
                let (text, content_type) = match resource {
                    Route::Health => ("ok\n".to_string(), "text/plain; charset=utf-8"),
                    _ => (self.shared.metrics.render(&self.shared.store.stats()), PROMETHEUS_TEXT),
                };
                let mut bytes = Vec::with_capacity(text.len() + 160);
                head(200, text.len() as u64, content_type, None).write_to(&mut bytes);
                if !head_only {
                    bytes.extend_from_slice(text.as_bytes());
                }
                Outgoing::new(200, bytes, Body::Empty)
            }
            Route::HashFile { id } => {
                let Some(content) = self.content(&id) else { return error(404, &format!("no such content: {id}\n")) };
                let body = if head_only { Body::Empty } else { Body::Shared(content.hashfile.clone()) };
                Outgoing::with_head(&head(200, content.hashfile.len() as u64, OCTETS, None), body)
            }
            Route::Piece { id, index } => {
                let Some(content) = self.content(&id) else { return error(404, &format!("no such content: {id}\n")) };
                let Some(length) = content.piece_size.piece_length(content.length, index) else {
                    let count = content.piece_count();
                    return error(404, &format!("{id} has {count} pieces; there is no piece {index}\n"));
                };
                let body = if head_only {
                    if !self.library.has_piece(&content, index) {
                        return missing_piece(&id, index, keep_alive, head_only, extra);
                    }
                    Body::Empty
                } else {
                    let Some(guard) = self.library.pin(&content, index) else {
                        return missing_piece(&id, index, keep_alive, head_only, extra);
                    };
                    Body::Pieces(vec![PieceSlice::new(guard, 0, length)])
                };
                Outgoing::with_head(&head(200, u64::from(length), OCTETS, None), body)
            }
            Route::Content { id } => {
                let Some(content) = self.content(&id) else { return error(404, &format!("no such content: {id}\n")) };
                self.content_range(&content, request, keep_alive, head_only, extra)
            }
        }
    }

    fn content_range(
        &mut self,
        content: &Content,
        request: &Request,
        keep_alive: bool,
        head_only: bool,
        extra: &[(&str, &str)],
    ) -> Outgoing {
        let length = content.length;
        let with_extra: Vec<(&str, &str)>;
        let headers: &[(&str, &str)] = if extra.is_empty() {
            ACCEPT_RANGES
        } else {
            with_extra = extra.iter().chain(ACCEPT_RANGES).copied().collect();
            &with_extra
        };
        let (status, start, end, content_range) = match parse_range(request.range.as_deref(), length) {
            RangeOutcome::Full => (200, 0, length, None),
            RangeOutcome::Partial { start, end } => {
                (206, start, end + 1, Some(ContentRange::Bytes { start, end, length }))
            }
            RangeOutcome::Unsatisfiable => {
                let text = "range not satisfiable\n";
                let head = ResponseHead {
                    status: 416,
                    content_length: text.len() as u64,
                    content_type: "text/plain; charset=utf-8",
                    content_range: Some(ContentRange::Unsatisfiable { length }),
                    keep_alive,
                    extra: headers,
                };
                let mut bytes = Vec::with_capacity(200);
                head.write_to(&mut bytes);
                if !head_only {
                    bytes.extend_from_slice(text.as_bytes());
                }
                return Outgoing::new(416, bytes, Body::Empty);
            }
        };
        let piece_bytes = u64::from(content.piece_size.bytes());
        let mut slices = Vec::new();
        if start < end {
            for index in start / piece_bytes..=(end - 1) / piece_bytes {
                let piece_start = index * piece_bytes;
                if head_only {
                    if !self.library.has_piece(content, index) {
                        return missing_piece(&content.id, index, keep_alive, head_only, extra);
                    }
                    continue;
                }
                let Some(guard) = self.library.pin(content, index) else {
                    // Never a partial body: refuse the whole response.
                    return missing_piece(&content.id, index, keep_alive, head_only, extra);
                };
                let from = (start.max(piece_start) - piece_start) as u32;
                let to = (end.min(piece_start + piece_bytes) - piece_start) as u32;
                slices.push(PieceSlice::new(guard, from, to));
            }
        }
        let head = ResponseHead {
            status,
            content_length: end - start,
            content_type: OCTETS,
            content_range,
            keep_alive,
            extra: headers,
        };
        let body = if head_only { Body::Empty } else { Body::Pieces(slices) };
        Outgoing::with_head(&head, body)
    }
}

fn error_response(status: u16, message: &str, keep_alive: bool, head_only: bool, extra: &[(&str, &str)]) -> Outgoing {
    let mut headers: Vec<(&str, &str)> = extra.to_vec();
    if status == 405 {
        headers.push(("Allow", "GET, HEAD"));
    }
    let head = ResponseHead {
        status,
        content_length: message.len() as u64,
        content_type: "text/plain; charset=utf-8",
        content_range: None,
        keep_alive,
        extra: &headers,
    };
    let mut bytes = Vec::with_capacity(200 + message.len());
    head.write_to(&mut bytes);
    if !head_only {
        bytes.extend_from_slice(message.as_bytes());
    }
    Outgoing::new(status, bytes, Body::Empty)
}

fn missing_piece(
    id: &crate::content::ContentId,
    index: u64,
    keep_alive: bool,
    head_only: bool,
    extra: &[(&str, &str)],
) -> Outgoing {
    error_response(503, &format!("piece {index} of {id} is not in the store\n"), keep_alive, head_only, extra)
}

impl Respond for Handler {
    fn respond(&mut self, request: &Request, keep_alive: bool, _token: ResponseToken) -> Reply {
        let outgoing = self.answer(request, keep_alive);
        self.metrics().response(outgoing.status);
        Reply::Ready(outgoing)
    }

    fn reject(&mut self, status: u16, message: &str) -> Outgoing {
        self.metrics().response(status);
        error_response(status, message, false, false, &[])
    }
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
        let shared =
            Arc::new(Shared { store, catalog, contents, metrics: Metrics::new(1), config: ServeConfig::default() });
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
        let token = ResponseToken { connection: crate::dataplane::slots::SlotKey { index: 0, generation: 1 }, seq: 1 };
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
        let (status, _, body) = get(&mut f.handler, "GET /v1/content/a HTTP/1.1\r\nRange: bytes=0-1,5-6\r\n\r\n");
        assert_eq!((status, body.len()), (200, f.bytes.len()), "multi-range gets the whole content");
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
        assert!(text.contains("tessera_http_requests_total{worker=\"0\",status=\"200\"} 1"), "{text}");
        assert!(text.contains("tessera_store_pieces 3"), "{text}");
    }
}
