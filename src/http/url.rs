//! The one URL type of the project: `http://` and `https://` URLs of sources, services and
//! hash files, parsed by the `url` crate (WHATWG rules: case-insensitive schemes, IPv6 literals,
//! percent-encoding) plus the refusals a client that writes request heads needs.
//!
//! The `url` crate silently strips tabs and newlines and percent-encodes other control
//! characters; a URL that contained them was not what its author meant (and CR/LF is header
//! injection in a hand-made head), so they are refused before parsing.

use std::net::{SocketAddr, ToSocketAddrs};

/// Why a text is not a usable `http(s)` URL; every variant names the URL.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("URL {url:?} is not a URL: {source}")]
    Parse { url: String, source: url::ParseError },
    #[error("URL {url:?} contains a control character (CR, LF, TAB, NUL...)")]
    ControlCharacter { url: String },
    #[error("URL {url:?} is not http:// or https://")]
    Scheme { url: String },
    #[error("URL {url:?} has user info (user:password@); credentials are not sent from a URL")]
    UserInfo { url: String },
    #[error("URL {url:?} has no host")]
    NoHost { url: String },
    #[error("cannot resolve the host of {url:?}: {source}")]
    Resolve { url: String, source: std::io::Error },
    #[error("redirect from {from:?} to {to:?}: https to http downgrade refused")]
    Downgrade { from: String, to: String },
}

/// A parsed, checked `http[s]://HOST[:PORT][/PATH][?QUERY]` (fragment dropped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    url: url::Url,
}

impl HttpUrl {
    /// Parses and checks `text`.
    pub fn parse(text: &str) -> Result<HttpUrl, UrlError> {
        if text.chars().any(char::is_control) {
            return Err(UrlError::ControlCharacter { url: text.to_string() });
        }
        let url = url::Url::parse(text).map_err(|source| UrlError::Parse { url: text.to_string(), source })?;
        HttpUrl::checked(url, text)
    }

    fn checked(mut url: url::Url, text: &str) -> Result<HttpUrl, UrlError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(UrlError::Scheme { url: text.to_string() });
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlError::UserInfo { url: text.to_string() });
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(UrlError::NoHost { url: text.to_string() });
        }
        url.set_fragment(None);
        Ok(HttpUrl { url })
    }

    /// Whether the scheme is `https`.
    pub fn is_tls(&self) -> bool {
        self.url.scheme() == "https"
    }

    /// Host name or IP address without brackets: what a TLS certificate is checked against.
    pub fn host(&self) -> String {
        match self.url.host() {
            Some(url::Host::Ipv6(address)) => address.to_string(),
            Some(host) => host.to_string(),
            None => String::new(),
        }
    }

    /// TCP port (the scheme's default when not written).
    pub fn port(&self) -> u16 {
        self.url.port_or_known_default().unwrap_or(80)
    }

    /// `HOST[:PORT]` for the `Host:` header (brackets kept, default port left out).
    pub fn authority(&self) -> String {
        let host = self.url.host_str().unwrap_or_default();
        match self.url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        }
    }

    /// The request target: path and query, at least `/`.
    pub fn target(&self) -> String {
        match self.url.query() {
            Some(query) => format!("{}?{query}", self.url.path()),
            None => self.url.path().to_string(),
        }
    }

    /// Whether the URL has a query string.
    pub fn has_query(&self) -> bool {
        self.url.query().is_some()
    }

    /// The URL, normalised, for messages and summaries.
    pub fn as_str(&self) -> &str {
        self.url.as_str()
    }

    /// The first address the host resolves to (blocking DNS).
    pub fn resolve(&self) -> Result<SocketAddr, UrlError> {
        let failed = |source| UrlError::Resolve { url: self.as_str().to_string(), source };
        (self.host().as_str(), self.port())
            .to_socket_addrs()
            .map_err(failed)?
            .next()
            .ok_or_else(|| failed(std::io::ErrorKind::NotFound.into()))
    }

    /// This URL with `path` (starting with `/`, may carry a query) appended to its path: service
    /// endpoints under a prefix.
    pub fn join(&self, path: &str) -> Result<HttpUrl, UrlError> {
        let base = self.url.path().trim_end_matches('/');
        let text = format!("{}://{}{base}{path}", self.url.scheme(), self.authority());
        HttpUrl::parse(&text)
    }

    /// Where a redirect's `Location` points, resolved against this URL (relative references
    /// allowed, as curl does); an https to http downgrade is refused.
    pub fn redirect(&self, location: &str) -> Result<HttpUrl, UrlError> {
        if location.chars().any(char::is_control) {
            return Err(UrlError::ControlCharacter { url: location.to_string() });
        }
        let url = self.url.join(location).map_err(|source| UrlError::Parse { url: location.to_string(), source })?;
        let next = HttpUrl::checked(url, location)?;
        if self.is_tls() && !next.is_tls() {
            return Err(UrlError::Downgrade { from: self.as_str().to_string(), to: next.as_str().to_string() });
        }
        Ok(next)
    }
}

impl std::fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_sources_use() {
        let url = HttpUrl::parse("https://cdn.example:8443/a/b?x=1#frag").unwrap();
        assert!(url.is_tls());
        assert_eq!((url.host().as_str(), url.port(), url.target().as_str()), ("cdn.example", 8443, "/a/b?x=1"));
        assert_eq!(url.authority(), "cdn.example:8443");
        assert_eq!(url.as_str(), "https://cdn.example:8443/a/b?x=1", "fragment dropped");
        let url = HttpUrl::parse("HTTP://127.0.0.1").unwrap();
        assert_eq!((url.is_tls(), url.port(), url.target().as_str()), (false, 80, "/"));
        let url = HttpUrl::parse("http://[::1]:81/f").unwrap();
        assert_eq!((url.host().as_str(), url.port(), url.authority().as_str()), ("::1", 81, "[::1]:81"));
        let url = HttpUrl::parse("HTTPS://H?q").unwrap();
        assert_eq!((url.port(), url.target().as_str(), url.authority().as_str()), (443, "/?q", "h"));
    }

    #[test]
    fn refuses_what_it_cannot_fetch_naming_the_url() {
        type Check = fn(&UrlError) -> bool;
        let cases: [(&str, Check); 8] = [
            ("http://h/a\r\nX-Injected: 1", |e| matches!(e, UrlError::ControlCharacter { .. })),
            ("http://h/\ta", |e| matches!(e, UrlError::ControlCharacter { .. })),
            ("ftp://x/y", |e| matches!(e, UrlError::Scheme { .. })),
            ("notaurl", |e| matches!(e, UrlError::Parse { .. })),
            ("http://[::1", |e| matches!(e, UrlError::Parse { .. })),
            ("http://u@h/", |e| matches!(e, UrlError::UserInfo { .. })),
            ("http://u:p@h/", |e| matches!(e, UrlError::UserInfo { .. })),
            ("http://h:99999/", |e| matches!(e, UrlError::Parse { .. })),
        ];
        for (text, expected) in cases {
            let error = HttpUrl::parse(text).unwrap_err();
            assert!(expected(&error), "{text:?}: {error:?}");
            assert!(error.to_string().contains(&format!("{text:?}")), "{error}");
        }
    }

    #[test]
    fn joins_service_paths() {
        let url = HttpUrl::parse("https://svc:7443/").unwrap().join("/v1/content/a/manifest").unwrap();
        assert_eq!(url.target(), "/v1/content/a/manifest");
        assert_eq!(url.as_str(), "https://svc:7443/v1/content/a/manifest");
        let url = HttpUrl::parse("https://svc/meta/").unwrap().join("/v1/x?group=g").unwrap();
        assert_eq!(url.target(), "/meta/v1/x?group=g");
    }

    #[test]
    fn redirects_resolve_relative_locations_and_refuse_downgrades() {
        let base = HttpUrl::parse("https://a.example/dir/file").unwrap();
        assert_eq!(base.redirect("other").unwrap().as_str(), "https://a.example/dir/other");
        assert_eq!(base.redirect("/root?x").unwrap().as_str(), "https://a.example/root?x");
        assert_eq!(base.redirect("//b.example/f").unwrap().as_str(), "https://b.example/f");
        assert!(matches!(base.redirect("http://b.example/"), Err(UrlError::Downgrade { .. })));
        assert!(matches!(base.redirect("ftp://b.example/"), Err(UrlError::Scheme { .. })));
        let plain = HttpUrl::parse("http://a.example/f").unwrap();
        assert_eq!(plain.redirect("https://b.example/g").unwrap().as_str(), "https://b.example/g");
    }
}
