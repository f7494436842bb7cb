//! `http://` and `https://` URLs of sources and services: just what a GET needs.

use std::net::{SocketAddr, ToSocketAddrs};

/// Why a URL is not usable as a source or service.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("URL {0:?} is not http:// or https://")]
    Scheme(String),
    #[error("URL {0:?} has no host")]
    NoHost(String),
    #[error("URL {0:?} has a bad port")]
    Port(String),
    #[error("cannot resolve the host of {url:?}: {reason}")]
    Resolve { url: String, reason: String },
}

/// A parsed `http[s]://HOST[:PORT][/PATH]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// Whether the URL is `https`.
    pub tls: bool,
    /// Host name or IP address, without brackets: checked against a TLS certificate.
    pub host: String,
    pub port: u16,
    /// `HOST[:PORT]` as written, for the `Host:` header.
    pub authority: String,
    /// Path and query, at least `/`.
    pub path: String,
    /// The URL as given, for messages and summaries.
    pub text: String,
}

impl HttpUrl {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<HttpUrl, UrlError> {
        let (tls, rest) = if let Some(rest) = text.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = text.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(UrlError::Scheme(text.to_string()));
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(at) if rest[at..].starts_with('/') => (&rest[..at], rest[at..].to_string()),
            Some(at) => (&rest[..at], format!("/{}", &rest[at..])),
            None => (rest, "/".to_string()),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(UrlError::NoHost(text.to_string()));
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed.split_once(']').ok_or_else(|| UrlError::NoHost(text.to_string()))?;
            let port = match after.strip_prefix(':') {
                Some(port) => port.parse().map_err(|_| UrlError::Port(text.to_string()))?,
                None if after.is_empty() => default_port,
                None => return Err(UrlError::Port(text.to_string())),
            };
            (host.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host.to_string(), port.parse().map_err(|_| UrlError::Port(text.to_string()))?),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err(UrlError::NoHost(text.to_string()));
        }
        Ok(HttpUrl { tls, host, port, authority: authority.to_string(), path, text: text.to_string() })
    }

    /// The first address the host resolves to (blocking DNS, done once per source before the loop).
    pub fn resolve(&self) -> Result<SocketAddr, UrlError> {
        let failed = |reason: String| UrlError::Resolve { url: self.text.clone(), reason };
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| failed(e.to_string()))?
            .next()
            .ok_or_else(|| failed("no address".into()))
    }

    /// This URL with `path` (starting with `/`) appended to its path, for service endpoints.
    pub fn join(&self, path: &str) -> HttpUrl {
        let base = self.path.trim_end_matches('/');
        let mut joined = self.clone();
        joined.path = format!("{base}{path}");
        joined.text = format!("{}://{}{}", if self.tls { "https" } else { "http" }, self.authority, joined.path);
        joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_sources_use() {
        let url = HttpUrl::parse("https://cdn.example:8443/a/b?x=1").unwrap();
        assert!(url.tls);
        assert_eq!((url.host.as_str(), url.port, url.path.as_str()), ("cdn.example", 8443, "/a/b?x=1"));
        assert_eq!(url.authority, "cdn.example:8443");
        let url = HttpUrl::parse("http://127.0.0.1").unwrap();
        assert_eq!((url.port, url.path.as_str()), (80, "/"));
        let url = HttpUrl::parse("http://[::1]:81/f").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("::1", 81));
        let url = HttpUrl::parse("https://h?q").unwrap();
        assert_eq!((url.port, url.path.as_str()), (443, "/?q"));
    }

    #[test]
    fn rejects_what_it_cannot_fetch() {
        assert!(matches!(HttpUrl::parse("ftp://x/y"), Err(UrlError::Scheme(_))));
        assert!(matches!(HttpUrl::parse("http:///y"), Err(UrlError::NoHost(_))));
        assert!(matches!(HttpUrl::parse("http://u@h/"), Err(UrlError::NoHost(_))));
        assert!(matches!(HttpUrl::parse("http://h:x/"), Err(UrlError::Port(_))));
        assert!(matches!(HttpUrl::parse("http://h:99999/"), Err(UrlError::Port(_))));
    }

    #[test]
    fn joins_service_paths() {
        let url = HttpUrl::parse("https://svc:7443/").unwrap().join("/v1/content/a/manifest");
        assert_eq!(url.path, "/v1/content/a/manifest");
        assert_eq!(url.text, "https://svc:7443/v1/content/a/manifest");
    }
}
