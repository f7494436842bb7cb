//! The service's request handling, without I/O: a parsed request and its body in, a response out.

use std::time::Instant;

use crate::catalog::Catalog;
use crate::config::ServiceConfig;
use crate::content::ContentId;
use crate::control::api::{validate_name, ErrorBody, PeersResponse};
use crate::control::auth::AdminToken;
use crate::control::rate::{AnnounceLimiter, RateError};
use crate::control::registry::PeerRegistry;
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

/// Routes requests to the catalog and the peer registry, enforcing auth and limits.
pub struct Handler {
    catalog: Catalog,
    registry: Box<dyn PeerRegistry>,
    limiter: AnnounceLimiter,
    admin_token: Option<AdminToken>,
    peers_returned_max: usize,
    announce_contents_max: usize,
}

impl Handler {
    /// A handler serving `catalog` and matching peers through `registry`.
    pub fn new(
        catalog: Catalog,
        registry: Box<dyn PeerRegistry>,
        admin_token: Option<AdminToken>,
        config: &ServiceConfig,
    ) -> Handler {
        let peers_tracked_max = usize::try_from(config.registry_entries_max).unwrap_or(usize::MAX);
        Handler {
            catalog,
            registry,
            limiter: AnnounceLimiter::new(config.announces_per_peer_per_minute_max, peers_tracked_max),
            admin_token,
            peers_returned_max: config.peers_returned_max as usize,
            announce_contents_max: config.announce_contents_max as usize,
        }
    }

    /// Housekeeping that does not wait for requests: drops expired announces.
    pub fn tick(&mut self, now: Instant) {
        self.registry.expire(now);
    }

    /// Answers one request whose whole body is `body`.
    pub fn handle(&mut self, request: &Request, body: &[u8], now: Instant) -> Response {
        let path = request.path();
        if path == "/healthz" {
            return match request.method {
                Method::Get | Method::Head => {
                    Response { status: 200, content_type: "text/plain", body: b"ok\n".to_vec(), extra: Vec::new() }
                }
                _ => method_not_allowed("GET, HEAD"),
            };
        }
        if path == "/v1/announce" {
            return match request.method {
                Method::Post => self.announce(body, now),
                _ => method_not_allowed("POST"),
            };
        }
        let Some(rest) = path.strip_prefix("/v1/content/") else {
            return Response::error(404, format!("no such endpoint: {}", shown(path)));
        };
        let (id_text, action) = rest.split_once('/').unwrap_or((rest, ""));
        let id = match ContentId::parse(id_text) {
            Ok(id) => id,
            Err(error) => return Response::error(400, error.to_string()),
        };
        match (action, request.method) {
            ("manifest", Method::Get) => self.manifest(&id),
            ("hashfile", Method::Get) => self.hashfile(&id),
            ("peers", Method::Get) => self.peers(request, &id, now),
            ("", Method::Put) => self.publish(request, &id, body),
            ("", Method::Delete) => self.remove(request, &id),
            ("manifest" | "hashfile" | "peers", _) => method_not_allowed("GET"),
            ("", _) => method_not_allowed("PUT, DELETE"),
            _ => Response::error(404, format!("no such endpoint: {}", shown(path))),
        }
    }

    fn manifest(&self, id: &ContentId) -> Response {
        // Read per request, so content published while the service runs is served at once.
        match self.catalog.read_manifest(id) {
            Ok(Some(manifest)) => Response {
                status: 200,
                content_type: "application/json",
                body: manifest.to_json().into_bytes(),
                extra: Vec::new(),
            },
            Ok(None) => Response::error(404, format!("no manifest for {id}")),
            Err(error) => internal(error),
        }
    }

    fn hashfile(&self, id: &ContentId) -> Response {
        match self.catalog.read_hashfile(id) {
            Ok(Some(bytes)) => {
                Response { status: 200, content_type: "application/octet-stream", body: bytes, extra: Vec::new() }
            }
            Ok(None) => Response::error(404, format!("no hash file for {id}")),
            Err(error) => internal(error),
        }
    }

    fn announce(&mut self, body: &[u8], now: Instant) -> Response {
        let announce = match parse_announce(body, self.announce_contents_max) {
            Ok(announce) => announce,
            Err(message) => return Response::error(400, message),
        };
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
        match self.registry.announce(announce, now) {
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
        let peers = self.registry.peers(id, group, asker, self.peers_returned_max, now);
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

    fn publish(&mut self, request: &Request, id: &ContentId, body: &[u8]) -> Response {
        if let Err(response) = self.authorize(request) {
            return response;
        }
        let (manifest, hashfile) = match parse_publish(body, id) {
            Ok(parsed) => parsed,
            Err(message) => return Response::error(400, message),
        };
        match self.catalog.write(id, &hashfile, &manifest) {
            Ok(()) => {
                tracing::info!(content = %id, "published remotely");
                Response::json(
                    200,
                    &serde_json::json!({ "published": id.as_str(), "hashfile_sha256": manifest.hashfile_sha256 }),
                )
            }
            Err(error) => internal(error),
        }
    }

    fn remove(&mut self, request: &Request, id: &ContentId) -> Response {
        if let Err(response) = self.authorize(request) {
            return response;
        }
        match self.catalog.remove(id) {
            Ok(true) => {
                tracing::info!(content = %id, "removed remotely");
                Response::json(200, &serde_json::json!({ "removed": id.as_str() }))
            }
            Ok(false) => Response::error(404, format!("no content {id} to remove")),
            Err(error) => internal(error),
        }
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
    use crate::control::registry::MemoryRegistry;
    use crate::http::{parse_request, Parsed, RequestLimits};
    use std::time::Duration;

    const TOKEN: &str = "0123456789abcdef";

    fn handler(dir: &std::path::Path) -> Handler {
        let config = ServiceConfig { announces_per_peer_per_minute_max: 2, ..ServiceConfig::default() };
        let registry = Box::new(MemoryRegistry::new(Duration::from_secs(60), 100));
        let token = AdminToken::new(TOKEN, "test").unwrap();
        Handler::new(Catalog::new(dir.join("catalog")), registry, Some(token), &config)
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
    fn writes_need_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let mut handler = handler(dir.path());
        let now = Instant::now();
        let response = handler.handle(&request("DELETE /v1/content/x HTTP/1.1"), b"", now);
        assert_eq!(response.status, 401);
        let authorized = request(&format!("DELETE /v1/content/x HTTP/1.1\r\nAuthorization: Bearer {TOKEN}"));
        assert_eq!(handler.handle(&authorized, b"", now).status, 404);
        let mut no_token = handler;
        no_token.admin_token = None;
        assert_eq!(no_token.handle(&authorized, b"", now).status, 403);
    }
}
