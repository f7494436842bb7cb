//! Redirects as curl's `-L` follows them, sans-I/O: which statuses, which method next, where to,
//! and how many hops.

use crate::http::client::ReceivedHead;
use crate::http::url::{HttpUrl, UrlError};

/// Most redirects followed for one request.
pub const REDIRECTS_MAX: u32 = 5;

/// Why a redirect was not followed.
#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    #[error("{url}: more than {limit} redirects")]
    TooMany { url: String, limit: u32 },
    #[error("{url}: bad redirect: {source}")]
    Location { url: String, source: UrlError },
}

/// The method and URL to ask next when `head` (the answer to `method` on `url`) is a redirect
/// to follow; `None` when it is not one (no `Location`, or another status).
///
/// curl's rules: 303 turns anything but HEAD into GET; 301 and 302 turn POST into GET; 307 and
/// 308 keep the method. Relative locations resolve against `url`; https to http is refused.
pub fn next_hop(
    url: &HttpUrl,
    method: &'static str,
    head: &ReceivedHead,
    hops: u32,
) -> Result<Option<(&'static str, HttpUrl)>, RedirectError> {
    let method = match (head.status, method) {
        (303, "HEAD") => "HEAD",
        (303, _) => "GET",
        (301 | 302, "POST") => "GET",
        (301 | 302 | 307 | 308, method) => method,
        _ => return Ok(None),
    };
    let Some(location) = head.location.as_deref() else { return Ok(None) };
    if hops >= REDIRECTS_MAX {
        return Err(RedirectError::TooMany { url: url.to_string(), limit: REDIRECTS_MAX });
    }
    let next = url.redirect(location).map_err(|source| RedirectError::Location { url: url.to_string(), source })?;
    Ok(Some((method, next)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(status: u16, location: Option<&str>) -> ReceivedHead {
        ReceivedHead {
            status,
            content_length: None,
            content_range: None,
            keep_alive: true,
            chunked: false,
            location: location.map(str::to_string),
            headers: Vec::new(),
        }
    }

    #[test]
    fn follows_curl_rules() {
        let url = HttpUrl::parse("http://a/x/y").unwrap();
        let hop = |status, method| next_hop(&url, method, &head(status, Some("z")), 0).unwrap();
        assert_eq!(hop(302, "GET").map(|(m, u)| (m, u.to_string())), Some(("GET", "http://a/x/z".into())));
        assert_eq!(hop(303, "POST").unwrap().0, "GET");
        assert_eq!(hop(303, "HEAD").unwrap().0, "HEAD");
        assert_eq!(hop(301, "POST").unwrap().0, "GET");
        assert_eq!(hop(307, "POST").unwrap().0, "POST");
        assert_eq!(hop(308, "HEAD").unwrap().0, "HEAD");
        assert!(hop(200, "GET").is_none() && hop(304, "GET").is_none());
        assert!(next_hop(&url, "GET", &head(302, None), 0).unwrap().is_none());
    }

    #[test]
    fn stops_after_the_hop_limit_and_at_bad_locations() {
        let url = HttpUrl::parse("https://a/").unwrap();
        let error = next_hop(&url, "GET", &head(302, Some("/b")), REDIRECTS_MAX).unwrap_err();
        assert!(matches!(error, RedirectError::TooMany { limit: 5, .. }), "{error}");
        let error = next_hop(&url, "GET", &head(301, Some("http://a/")), 0).unwrap_err();
        assert!(error.to_string().contains("downgrade"), "{error}");
        assert!(next_hop(&url, "GET", &head(301, Some("http://a/\r\nX: 1")), 0).is_err());
    }
}
