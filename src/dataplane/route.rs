//! Data-plane routes: a request target in, the resource it names (or the status it earns) out.
//!
//! Ids are taken from the raw path, never percent-decoded: `%2e%2e` is simply an id with `%`,
//! which [`ContentId::parse`] refuses, so no encoded form can ever reach a file name.

use crate::content::ContentId;
use crate::http::Method;

/// A resource of the data plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v1/content/{id}/piece/{index}`.
    Piece { id: ContentId, index: u64 },
    /// `/v1/content/{id}`, with optional `Range:`.
    Content { id: ContentId },
    /// `/v1/content/{id}/hashfile`.
    HashFile { id: ContentId },
    /// `/metrics`.
    Metrics,
    /// `/healthz`.
    Health,
    /// `/`: the status page (HTML).
    Status,
    /// `/status.json`: the status page's data.
    StatusJson,
}

/// Why a target names no resource; each maps to one status code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("bad content id: {0}")]
    BadId(String),
    #[error("piece index {0:?} is not a number")]
    BadIndex(String),
    #[error("no such path")]
    NotFound,
    #[error("method not allowed; use GET or HEAD")]
    MethodNotAllowed,
}

impl RouteError {
    /// The status code to answer with.
    pub fn status(&self) -> u16 {
        match self {
            RouteError::BadId(_) | RouteError::BadIndex(_) => 400,
            RouteError::NotFound => 404,
            RouteError::MethodNotAllowed => 405,
        }
    }
}

/// Resolves `path` (the target without its query) for `method`.
pub fn route(method: Method, path: &str) -> Result<Route, RouteError> {
    let resource = resolve(path)?;
    match method {
        Method::Get | Method::Head => Ok(resource),
        _ => Err(RouteError::MethodNotAllowed),
    }
}

fn resolve(path: &str) -> Result<Route, RouteError> {
    match path {
        "/healthz" => return Ok(Route::Health),
        "/metrics" => return Ok(Route::Metrics),
        "/" => return Ok(Route::Status),
        "/status.json" => return Ok(Route::StatusJson),
        _ => {}
    }
    let Some(rest) = path.strip_prefix("/v1/content/") else { return Err(RouteError::NotFound) };
    let mut segments = rest.split('/');
    let raw_id = segments.next().unwrap_or("");
    let id = ContentId::parse(raw_id).map_err(|error| RouteError::BadId(error.to_string()))?;
    let route = match (segments.next(), segments.next(), segments.next()) {
        (None, _, _) => Route::Content { id },
        (Some("hashfile"), None, _) => Route::HashFile { id },
        (Some("piece"), Some(index), None) => Route::Piece { id, index: parse_index(index)? },
        _ => return Err(RouteError::NotFound),
    };
    Ok(route)
}

/// Plain decimal, no sign, at most 20 digits (any u64).
fn parse_index(text: &str) -> Result<u64, RouteError> {
    let shown = || RouteError::BadIndex(text.chars().take(24).collect());
    if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(shown());
    }
    text.parse().map_err(|_| shown())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> ContentId {
        ContentId::parse(text).unwrap()
    }

    #[test]
    fn resolves_every_data_plane_path() {
        assert_eq!(route(Method::Get, "/healthz"), Ok(Route::Health));
        assert_eq!(route(Method::Head, "/metrics"), Ok(Route::Metrics));
        assert_eq!(route(Method::Get, "/"), Ok(Route::Status));
        assert_eq!(route(Method::Get, "/status.json"), Ok(Route::StatusJson));
        assert_eq!(route(Method::Get, "/v1/content/pkg-1"), Ok(Route::Content { id: id("pkg-1") }));
        assert_eq!(route(Method::Get, "/v1/content/a/hashfile"), Ok(Route::HashFile { id: id("a") }));
        assert_eq!(route(Method::Get, "/v1/content/a/piece/0"), Ok(Route::Piece { id: id("a"), index: 0 }));
        assert_eq!(
            route(Method::Get, "/v1/content/a/piece/18446744073709551615"),
            Ok(Route::Piece { id: id("a"), index: u64::MAX })
        );
    }

    #[test]
    fn hostile_ids_are_400_never_paths() {
        for path in [
            "/v1/content/../piece/0",
            "/v1/content/..",
            "/v1/content/%2e%2e/piece/0",
            "/v1/content/%2E%2E",
            "/v1/content//piece/0",
            "/v1/content/a%2fb",
            "/v1/content/",
        ] {
            assert_eq!(route(Method::Get, path).unwrap_err().status(), 400, "{path}");
        }
        let overlong = format!("/v1/content/{}/piece/0", "x".repeat(129));
        assert_eq!(route(Method::Get, &overlong).unwrap_err().status(), 400);
    }

    #[test]
    fn bad_indexes_are_400_and_unknown_paths_404() {
        for index in ["-1", "+1", "1x", "", "99999999999999999999999", "0x10"] {
            let path = format!("/v1/content/a/piece/{index}");
            assert_eq!(route(Method::Get, &path).unwrap_err().status(), 400, "{path}");
        }
        for path in
            ["/status", "/v1", "/v1/content", "/v1/content/a/piece", "/v1/content/a/piece/1/x", "/v1/content/a/b"]
        {
            assert_eq!(route(Method::Get, path).unwrap_err().status(), 404, "{path}");
        }
    }

    #[test]
    fn only_get_and_head_are_allowed() {
        for method in [Method::Post, Method::Put, Method::Delete, Method::Other] {
            assert_eq!(route(method, "/v1/content/a").unwrap_err().status(), 405);
        }
        assert_eq!(route(Method::Post, "/nope").unwrap_err().status(), 404);
    }
}
