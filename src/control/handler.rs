//! The service's request handling, without I/O: a parsed request and its body in, a response out
//! — now, or later for what needs the catalog's disk side ([`snapshot`](crate::control::snapshot)).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use crossbeam_channel::{Sender, TrySendError};

use crate::config::ServiceConfig;
use crate::content::ContentId;
use crate::control::api::{validate_name, ErrorBody, PeersResponse};
use crate::control::auth::AdminToken;
use crate::control::metrics::{Refusal, RegistryOp, ServiceMetrics};
use crate::control::rate::{AnnounceLimiter, RateError};
use crate::control::registry::PeerRegistry;
use crate::control::snapshot::{Done, Entry, Job, Snapshot, Ticket, UpstreamMiss};
use crate::control::validate::{parse_announce, parse_publish};
use crate::http::{Method, Request};

/// A response to write: status, content type, body, and extra headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// `Content-Type` value.
    pub content_type: &'static str,
    /// The whole body.
    pub body: Vec<u8>,
    /// Further headers (e.g. `Allow`, `Retry-After`, `WWW-Authenticate`).
    pub extra: Vec<(&'static str, String)>,
}

impl Response {
    /// A JSON response.
    pub fn json(status: u16, value: &impl serde::Serialize) -> Response {
        let mut body = serde_json::to_vec(value).expect("response serializes");
        body.push(b'\n');
        Response { status, content_type: "application/json", body, extra: Vec::new() }
    }

    /// An error response: `{"error": message}`.
    pub fn error(status: u16, message: impl Into<String>) -> Response {
        Response::json(status, &ErrorBody { error: message.into() })
    }

    fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.extra.push((name, value.into()));
        self
    }
}

/// A request waiting for the catalog keeper, by what its answer will be.
#[derive(Debug)]
enum Pending {
    Manifest,
    HashFile,
    Publish { hashfile_sha256: String },
    Remove,
}

/// Routes requests to the catalog snapshot and the peer registry, enforcing auth and limits.
pub struct Handler {
    snapshot: Snapshot,
    /// Work for the catalog keeper (bounded: past it, 503).
    jobs: Sender<Job>,
    /// Requests waiting for the keeper: at most one per connection.
    pending: HashMap<Ticket, Pending>,
    registry: Box<dyn PeerRegistry>,
    limiter: AnnounceLimiter,
    admin_token: Option<AdminToken>,
    peers_returned_max: usize,
    announce_contents_max: usize,
    announce_auth: AnnounceAuth,
    metrics: ServiceMetrics,
}

/// Who may announce.
#[derive(Debug, Clone, Default)]
pub struct AnnounceAuth {
    /// The bearer token announces must carry; `None`: an open registry.
    pub token: Option<AdminToken>,
    /// Accept any address, not only the caller's own IP (loopback callers always may).
    pub any_address: bool,
}

impl Handler {
    /// A handler answering from `snapshot`, sending what needs the disk to `jobs`, and matching
    /// peers through `registry`.
    pub fn new(
        snapshot: Snapshot,
        jobs: Sender<Job>,
        registry: Box<dyn PeerRegistry>,
        admin_token: Option<AdminToken>,
        announce_auth: AnnounceAuth,
        config: &ServiceConfig,
    ) -> Handler {
        let peers_tracked_max = usize::try_from(config.registry_entries_max).unwrap_or(usize::MAX);
        Handler {
            snapshot,
            jobs,
            pending: HashMap::new(),
            registry,
            limiter: AnnounceLimiter::new(config.announces_per_peer_per_minute_max, peers_tracked_max),
            admin_token,
            peers_returned_max: config.peers_returned_max as usize,
            announce_contents_max: config.announce_contents_max as usize,
            announce_auth,
            metrics: ServiceMetrics::default(),
        }
    }

    /// Housekeeping that does not wait for requests: drops expired announces.
    pub fn tick(&mut self, now: Instant) {
        self.registry.expire(now);
    }

    /// Answers one request whose whole body is `body`; `None` when the answer needs the catalog
    /// keeper: it comes out of [`Handler::apply`] under `ticket`. `from` is the caller's IP.
    pub fn handle(
        &mut self,
        request: &Request,
        body: &[u8],
        from: IpAddr,
        now: Instant,
        ticket: Ticket,
    ) -> Option<Response> {
        let answer = self.answer(request, body, from, now, ticket);
        if let Some(response) = &answer {
            self.metrics.response(response.status);
        }
        answer
    }

    /// What [`Handler::handle`] answers, before it is counted.
    fn answer(
        &mut self,
        request: &Request,
        body: &[u8],
        from: IpAddr,
        now: Instant,
        ticket: Ticket,
    ) -> Option<Response> {
        let path = request.path();
        if path == "/healthz" {
            return Some(match request.method {
                Method::Get | Method::Head => {
                    Response { status: 200, content_type: "text/plain", body: b"ok\n".to_vec(), extra: Vec::new() }
                }
                _ => method_not_allowed("GET, HEAD"),
            });
        }
        if path == "/v1/announce" {
            return Some(match request.method {
                Method::Post => self.announce(request, body, from, now),
                _ => method_not_allowed("POST"),
            });
        }
        if path == "/metrics" {
            return Some(match request.method {
                Method::Get | Method::Head => {
                    let text = self.metrics.render(&self.registry.status(), self.registry.entry_count());
                    Response {
                        status: 200,
                        content_type: "text/plain; version=0.0.4",
                        body: text.into_bytes(),
                        extra: Vec::new(),
                    }
                }
                _ => method_not_allowed("GET, HEAD"),
            });
        }
        let Some(rest) = path.strip_prefix("/v1/content/") else {
            return Some(Response::error(404, format!("no such endpoint: {}", shown(path))));
        };
        let (id_text, action) = rest.split_once('/').unwrap_or((rest, ""));
        let id = match ContentId::parse(id_text) {
            Ok(id) => id,
            Err(error) => return Some(Response::error(400, error.to_string())),
        };
        match (action, request.method) {
            ("manifest", Method::Get) => self.metadata(id, Pending::Manifest, ticket),
            ("hashfile", Method::Get) => self.metadata(id, Pending::HashFile, ticket),
            ("peers", Method::Get) => Some(self.peers(request, &id, now)),
            ("", Method::Put) => self.publish(request, id, body, ticket),
            ("", Method::Delete) => self.remove(request, id, ticket),
            ("manifest" | "hashfile" | "peers", _) => Some(method_not_allowed("GET")),
            ("", _) => Some(method_not_allowed("PUT, DELETE")),
            _ => Some(Response::error(404, format!("no such endpoint: {}", shown(path)))),
        }
    }

    /// Takes in what the catalog keeper did; returns the answer it completes, if any.
    pub fn apply(&mut self, done: Done) -> Option<(Ticket, Response)> {
        let answered = self.settle(done);
        if let Some((_, response)) = &answered {
            self.metrics.response(response.status);
        }
        answered
    }

    /// What [`Handler::apply`] answers, before it is counted.
    fn settle(&mut self, done: Done) -> Option<(Ticket, Response)> {
        let (ticket, response) = match done {
            Done::Changed { id, entry } => {
                self.snapshot.set(id, entry);
                return None;
            }
            Done::Loaded { ticket, id, result } => {
                let pending = self.pending.remove(&ticket)?;
                let response = match result {
                    Ok(entry) => {
                        let response = metadata_response(&id, entry.as_ref(), &pending);
                        self.snapshot.set(id, entry);
                        response
                    }
                    Err(error) => internal(error),
                };
                (ticket, response)
            }
            Done::Unavailable { ticket, id, miss } => {
                let pending = self.pending.remove(&ticket)?;
                (ticket, unavailable_response(&id, &miss, &pending))
            }
            Done::Written { ticket, id, result } => {
                let pending = self.pending.remove(&ticket)?;
                let response = match (result, pending) {
                    (Ok(entry), Pending::Publish { hashfile_sha256 }) => {
                        tracing::info!(content = %id, "published remotely");
                        let body = serde_json::json!({ "published": id.as_str(), "hashfile_sha256": hashfile_sha256 });
                        self.snapshot.set(id, Some(entry));
                        Response::json(200, &body)
                    }
                    (Ok(_), other) => internal(format!("a write answered a {other:?} request")),
                    (Err(error), _) => internal(error),
                };
                (ticket, response)
            }
            Done::Removed { ticket, id, result } => {
                self.pending.remove(&ticket)?;
                let response = match result {
                    Ok(true) => {
                        tracing::info!(content = %id, "removed remotely");
                        Response::json(200, &serde_json::json!({ "removed": id.as_str() }))
                    }
                    Ok(false) => Response::error(404, format!("no content {id} to remove")),
                    Err(error) => internal(error),
                };
                if response.status != 500 {
                    self.snapshot.set(id, None);
                }
                (ticket, response)
            }
        };
        Some((ticket, response))
    }

    /// The manifest or hash file of `id`, from the snapshot; an id it lacks is looked up on disk.
    fn metadata(&mut self, id: ContentId, pending: Pending, ticket: Ticket) -> Option<Response> {
        match self.snapshot.get(&id) {
            Some(entry) => Some(metadata_response(&id, Some(entry), &pending)),
            None => self.defer(Job::Load { ticket, id }, pending, ticket),
        }
    }

    /// Hands `job` to the catalog keeper; `None` when it took it.
    fn defer(&mut self, job: Job, pending: Pending, ticket: Ticket) -> Option<Response> {
        match self.jobs.try_send(job) {
            Ok(()) => {
                self.pending.insert(ticket, pending);
                None
            }
            Err(TrySendError::Full(_)) => {
                Some(Response::error(503, "the catalog is busy; try again shortly").with_header("Retry-After", "1"))
            }
            Err(TrySendError::Disconnected(_)) => Some(internal("the catalog keeper has stopped")),
        }
    }

    fn announce(&mut self, request: &Request, body: &[u8], from: IpAddr, now: Instant) -> Response {
        if let Some(token) = &self.announce_auth.token {
            let authorization = request.authorization.as_deref();
            if !token.accepts(authorization) {
                let (refusal, response) = if authorization.is_none() {
                    (
                        Refusal::NoToken,
                        Response::error(401, "announces need the site's bearer token (Authorization: Bearer TOKEN)"),
                    )
                } else {
                    (Refusal::BadToken, Response::error(403, "the announce token is not this site's"))
                };
                self.metrics.refused(refusal);
                return response.with_header("WWW-Authenticate", "Bearer realm=\"tessera-announce\"");
            }
        }
        let announce = match parse_announce(body, self.announce_contents_max) {
            Ok(announce) => announce,
            Err(message) => return Response::error(400, message),
        };
        // A dual-stack listener sees IPv4 callers as ::ffff:a.b.c.d.
        let from = from.to_canonical();
        let own = announce.address.ip().to_canonical() == from || from.is_loopback();
        if !own && !self.announce_auth.any_address {
            self.metrics.refused(Refusal::Address);
            let message = format!(
                "address {}: a peer announces its own IP ({from}) unless the service sets announce_any_address",
                announce.address
            );
            return Response::error(403, message);
        }
        match self.limiter.check(&announce.peer_id, now) {
            Ok(()) => {}
            Err(error @ RateError::TooMany { retry_after_s, .. }) => {
                return Response::error(429, error.to_string()).with_header("Retry-After", retry_after_s.to_string())
            }
            Err(error @ RateError::TooManyPeers { .. }) => {
                return Response::error(503, error.to_string()).with_header("Retry-After", "60")
            }
        }
        let count = announce.holdings.len();
        let started = Instant::now();
        let written = self.registry.announce(announce, now);
        self.metrics.record(RegistryOp::Announce, started.elapsed());
        match written {
            Ok(()) => Response::json(200, &serde_json::json!({ "accepted": count })),
            Err(error) => Response::error(503, error.to_string()).with_header("Retry-After", "60"),
        }
    }

    fn peers(&mut self, request: &Request, id: &ContentId, now: Instant) -> Response {
        let Some(group) = request.query("group") else {
            return Response::error(400, "group: missing query parameter (?group=G)");
        };
        if let Err(message) = validate_name("group", group) {
            return Response::error(400, message);
        }
        let asker = request.query("peer");
        if let Some(Err(message)) = asker.map(|peer| validate_name("peer", peer)) {
            return Response::error(400, message);
        }
        let started = Instant::now();
        let peers = self.registry.peers(id, group, asker, self.peers_returned_max, now);
        self.metrics.record(RegistryOp::Peers, started.elapsed());
        Response::json(200, &PeersResponse { content_id: id.to_string(), group: group.to_string(), peers })
    }

    fn authorize(&self, request: &Request) -> Result<(), Response> {
        match &self.admin_token {
            None => {
                Err(Response::error(403, "remote publishing is disabled: the service has no admin token configured"))
            }
            Some(token) if token.accepts(request.authorization.as_deref()) => Ok(()),
            Some(_) => {
                Err(Response::error(401, "a valid admin bearer token is required (Authorization: Bearer TOKEN)")
                    .with_header("WWW-Authenticate", "Bearer realm=\"tessera\""))
            }
        }
    }

    fn publish(&mut self, request: &Request, id: ContentId, body: &[u8], ticket: Ticket) -> Option<Response> {
        if let Err(response) = self.authorize(request) {
            return Some(response);
        }
        let (manifest, hashfile) = match parse_publish(body, &id) {
            Ok(parsed) => parsed,
            Err(message) => return Some(Response::error(400, message)),
        };
        let pending = Pending::Publish { hashfile_sha256: manifest.hashfile_sha256.clone() };
        self.defer(Job::Write { ticket, id, hashfile, manifest: Box::new(manifest) }, pending, ticket)
    }

    fn remove(&mut self, request: &Request, id: ContentId, ticket: Ticket) -> Option<Response> {
        if let Err(response) = self.authorize(request) {
            return Some(response);
        }
        self.defer(Job::Remove { ticket, id }, Pending::Remove, ticket)
    }
}

/// The answer to a manifest or hash file request for `id`, whose catalog entry is `entry`.
fn metadata_response(id: &ContentId, entry: Option<&Entry>, pending: &Pending) -> Response {
    let bytes =
        |content_type, body: &[u8]| Response { status: 200, content_type, body: body.to_vec(), extra: Vec::new() };
    match (pending, entry) {
        (Pending::Manifest, Some(entry)) => bytes("application/json", &entry.manifest_json),
        (Pending::Manifest, None) => Response::error(404, format!("no manifest for {id}")),
        (_, Some(Entry { hashfile: Some(hashfile), .. })) => bytes("application/octet-stream", hashfile),
        (_, _) => Response::error(404, format!("no hash file for {id}")),
    }
}

/// The answer to a manifest or hash file request for `id`, which a cache box could not get.
fn unavailable_response(id: &ContentId, miss: &UpstreamMiss, pending: &Pending) -> Response {
    let what = match pending {
        Pending::Manifest => "manifest",
        _ => "hash file",
    };
    let response = Response::error(miss.status(), format!("no {what} for {id}: {miss}"));
    match miss {
        UpstreamMiss::Busy { retry_after_s } => response.with_header("Retry-After", retry_after_s.to_string()),
        _ => response,
    }
}

fn method_not_allowed(allow: &'static str) -> Response {
    Response::error(405, format!("method not allowed; use {allow}")).with_header("Allow", allow)
}

fn internal(error: impl std::fmt::Display) -> Response {
    tracing::error!(%error, "control request failed");
    Response::error(500, error.to_string())
}

/// At most a prefix of a hostile path, for messages.
fn shown(path: &str) -> String {
    path.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::content::{HashFile, Manifest, PieceSize};
    use crate::control::registry::MemoryRegistry;
    use crate::control::snapshot::Keeper;
    use crate::http::{parse_request, Parsed, RequestLimits};
    use crossbeam_channel::Receiver;
    use std::time::Duration;

    const TOKEN: &str = "0123456789abcdef";
    const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    /// A handler with its catalog keeper, run in step on the test's thread.
    struct Fixture {
        handler: Handler,
        keeper: Keeper,
        jobs: Receiver<Job>,
    }

    impl Fixture {
        /// The answer to `request`, after the keeper's job when it needs one.
        fn handle(&mut self, request: &Request, body: &[u8], now: Instant) -> Response {
            self.handle_from(request, body, LOOPBACK, now)
        }

        /// As [`Fixture::handle`], from the caller `from`.
        fn handle_from(&mut self, request: &Request, body: &[u8], from: IpAddr, now: Instant) -> Response {
            if let Some(response) = self.handler.handle(request, body, from, now, 1) {
                assert!(self.jobs.is_empty(), "an answer given now leaves no job behind");
                return response;
            }
            let done = self.keeper.run(self.jobs.try_recv().expect("a deferred answer has a job"));
            let (ticket, response) = self.handler.apply(done).expect("the job answers the request");
            assert_eq!(ticket, 1);
            response
        }
    }

    fn handler(dir: &std::path::Path) -> Fixture {
        let config = ServiceConfig { announces_per_peer_per_minute_max: 2, ..ServiceConfig::default() };
        let registry = Box::new(MemoryRegistry::new(Duration::from_secs(60), 100));
        let token = AdminToken::new(TOKEN, "test").unwrap();
        let mut keeper = Keeper::new(Catalog::new(dir.join("catalog")));
        let (sender, jobs) = crossbeam_channel::bounded(1);
        let handler = Handler::new(keeper.load_all(), sender, registry, Some(token), AnnounceAuth::default(), &config);
        Fixture { handler, keeper, jobs }
    }

    fn request(head: &str) -> Request {
        let text = format!("{head}\r\nHost: x\r\n\r\n");
        match parse_request(text.as_bytes(), &RequestLimits::default()).unwrap() {
            Parsed::Complete { request, .. } => request,
            Parsed::Partial => panic!("partial"),
        }
    }

    fn error_of(response: &Response) -> String {
        serde_json::from_slice::<ErrorBody>(&response.body).unwrap().error
    }

    #[test]
    fn ids_are_validated_and_unknown_paths_are_404() {
        let dir = tempfile::tempdir().unwrap();
        let mut handler = handler(dir.path());
        let now = Instant::now();
        let response = handler.handle(&request("GET /v1/content/..%2fetc/manifest HTTP/1.1"), b"", now);
        assert_eq!(response.status, 400);
        assert!(error_of(&response).contains("content id"), "{}", error_of(&response));
        assert_eq!(handler.handle(&request("GET /v1/content/../manifest HTTP/1.1"), b"", now).status, 400);
        assert_eq!(handler.handle(&request("GET /v1/content/a/manifest HTTP/1.1"), b"", now).status, 404);
        assert_eq!(handler.handle(&request("GET /v1/content/a/other HTTP/1.1"), b"", now).status, 404);
        assert_eq!(handler.handle(&request("GET /etc/passwd HTTP/1.1"), b"", now).status, 404);
        assert_eq!(handler.handle(&request("GET /healthz HTTP/1.1"), b"", now).status, 200);
        let response = handler.handle(&request("POST /v1/content/a/manifest HTTP/1.1"), b"", now);
        assert_eq!((response.status, response.extra[0].0), (405, "Allow"));
    }

    #[test]
    fn announce_then_peers_and_rate_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut handler = handler(dir.path());
        let now = Instant::now();
        let body = br#"{"peer_id":"p1","group":"g","address":"10.0.0.1:7680","contents":[{"id":"x"}]}"#;
        let post = request("POST /v1/announce HTTP/1.1");
        assert_eq!(handler.handle(&post, body, now).status, 200);
        assert_eq!(handler.handle(&post, body, now).status, 200);
        let limited = handler.handle(&post, body, now);
        assert_eq!(limited.status, 429);
        assert!(limited.extra.iter().any(|(name, _)| *name == "Retry-After"));
        let response = handler.handle(&request("GET /v1/content/x/peers?group=g&peer=p2 HTTP/1.1"), b"", now);
        let peers: PeersResponse = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(peers.peers.len(), 1);
        let response = handler.handle(&request("GET /v1/content/x/peers HTTP/1.1"), b"", now);
        assert_eq!(response.status, 400);
        assert!(error_of(&response).contains("group"));
    }

    #[test]
    fn announces_need_the_site_token_and_their_own_address() {
        let dir = tempfile::tempdir().unwrap();
        let mut fixture = handler(dir.path());
        let site_token = AdminToken::new("announce-token-0123", "test").unwrap();
        fixture.handler.announce_auth = AnnounceAuth { token: Some(site_token), any_address: false };
        let now = Instant::now();
        let body = br#"{"peer_id":"p1","group":"g","address":"10.0.0.1:7680","contents":[{"id":"x"}]}"#;
        let box_ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other_ip: IpAddr = "10.0.0.2".parse().unwrap();
        let unsigned = fixture.handle_from(&request("POST /v1/announce HTTP/1.1"), body, box_ip, now);
        assert_eq!(unsigned.status, 401);
        let wrong = request("POST /v1/announce HTTP/1.1\r\nAuthorization: Bearer announce-token-0124");
        assert_eq!(fixture.handle_from(&wrong, body, box_ip, now).status, 403);
        let signed = request("POST /v1/announce HTTP/1.1\r\nAuthorization: Bearer announce-token-0123");
        let elsewhere = fixture.handle_from(&signed, body, other_ip, now);
        assert_eq!(elsewhere.status, 403);
        assert!(error_of(&elsewhere).contains("10.0.0.1:7680"), "{}", error_of(&elsewhere));
        let peers = request("GET /v1/content/x/peers?group=g HTTP/1.1");
        assert!(serde_json::from_slice::<PeersResponse>(&fixture.handle(&peers, b"", now).body)
            .unwrap()
            .peers
            .is_empty());
        assert_eq!(fixture.handle_from(&signed, body, box_ip, now).status, 200);
        let found: PeersResponse = serde_json::from_slice(&fixture.handle(&peers, b"", now).body).unwrap();
        assert_eq!(found.peers.len(), 1);
        let metrics = String::from_utf8(fixture.handle(&request("GET /metrics HTTP/1.1"), b"", now).body).unwrap();
        for line in [
            "tessera_announces_refused_total{reason=\"no_token\"} 1",
            "tessera_announces_refused_total{reason=\"bad_token\"} 1",
            "tessera_announces_refused_total{reason=\"address\"} 1",
            "tessera_registry_operation_seconds_count{op=\"announce\"} 1",
            "tessera_registry_operation_seconds_count{op=\"peers\"} 2",
            "tessera_registry_backend{backend=\"memory\"} 1",
            "tessera_service_requests_total{code=\"200\"} 3",
            "tessera_service_requests_total{code=\"401\"} 1",
            "tessera_service_requests_total{code=\"403\"} 2",
        ] {
            assert!(metrics.lines().any(|l| l == line), "missing {line:?} in\n{metrics}");
        }
    }

    #[test]
    fn writes_need_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let mut handler = handler(dir.path());
        let now = Instant::now();
        let response = handler.handle(&request("DELETE /v1/content/x HTTP/1.1"), b"", now);
        assert_eq!(response.status, 401);
        let authorized = request(&format!("DELETE /v1/content/x HTTP/1.1\r\nAuthorization: Bearer {TOKEN}"));
        assert_eq!(handler.handle(&authorized, b"", now).status, 404);
        let mut no_token = handler;
        no_token.handler.admin_token = None;
        assert_eq!(no_token.handle(&authorized, b"", now).status, 403);
    }

    #[test]
    fn metadata_comes_from_memory_once_known_and_a_full_keeper_queue_is_503() {
        let dir = tempfile::tempdir().unwrap();
        let mut fixture = handler(dir.path());
        let now = Instant::now();
        let hashfile = HashFile::new(PieceSize::new(65536).unwrap(), 10, vec![[1; 32]]).unwrap().to_bytes();
        let manifest = Manifest {
            version: 1,
            content_id: "pkg".into(),
            content_length: 10,
            piece_size: 65536,
            hashfile_sha256: hex::encode(crate::hash::sha256(&hashfile)),
            hashfile_urls: vec![],
            sources: vec![],
            sha256: None,
        };
        let id = ContentId::parse("pkg").unwrap();
        Catalog::new(dir.path().join("catalog")).write(&id, &hashfile, &manifest).unwrap();
        let get = request("GET /v1/content/pkg/manifest HTTP/1.1");
        let first = fixture.handle(&get, b"", now);
        assert_eq!(first.status, 200);
        assert_eq!(Manifest::parse(&first.body).unwrap(), manifest);
        // Known now: answered without the keeper, even with the files gone from under it.
        std::fs::remove_dir_all(dir.path().join("catalog")).unwrap();
        let again = fixture.handler.handle(&get, b"", LOOPBACK, now, 2).expect("answered from memory");
        assert_eq!(again.body, first.body);
        let hashfile_get = request("GET /v1/content/pkg/hashfile HTTP/1.1");
        assert_eq!(fixture.handler.handle(&hashfile_get, b"", LOOPBACK, now, 3).expect("from memory").body, hashfile);
        // Unknown ids wait for the keeper, whose queue holds one job here.
        assert!(fixture
            .handler
            .handle(&request("GET /v1/content/a/manifest HTTP/1.1"), b"", LOOPBACK, now, 4)
            .is_none());
        let busy =
            fixture.handler.handle(&request("GET /v1/content/b/manifest HTTP/1.1"), b"", LOOPBACK, now, 5).unwrap();
        assert_eq!(busy.status, 503);
        assert!(busy.extra.iter().any(|(name, _)| *name == "Retry-After"));
    }

    #[test]
    fn what_a_box_cannot_get_from_upstream_is_answered_with_its_status_and_reason() {
        let dir = tempfile::tempdir().unwrap();
        let mut fixture = handler(dir.path());
        let now = Instant::now();
        let cases = [
            (UpstreamMiss::Unverified { reason: "hash file SHA-256 ab does not match".into() }, 404, "does not match"),
            (UpstreamMiss::Busy { retry_after_s: 1 }, 503, "busy"),
            (UpstreamMiss::TimedOut { timeout_ms: 21000 }, 504, "within 21000 ms"),
        ];
        for (ticket, (miss, status, says)) in (10..).zip(cases) {
            let get = request("GET /v1/content/pkg/hashfile HTTP/1.1");
            assert!(fixture.handler.handle(&get, b"", LOOPBACK, now, ticket).is_none(), "looked up off the thread");
            fixture.jobs.try_recv().unwrap();
            let id = ContentId::parse("pkg").unwrap();
            let (answered, response) = fixture.handler.apply(Done::Unavailable { ticket, id, miss }).unwrap();
            assert_eq!((answered, response.status), (ticket, status));
            let error = error_of(&response);
            assert!(error.starts_with("no hash file for pkg: ") && error.contains(says), "{error}");
            assert_eq!(response.extra.iter().any(|(name, _)| *name == "Retry-After"), status == 503);
        }
    }
}
