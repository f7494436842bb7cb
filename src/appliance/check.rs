//! `tessera serve --check`, like `nginx -t`: everything a start would need, checked without
//! starting anything, every problem reported (not just the first).
//!
//! What it may touch: nothing in a data directory that does not exist (it is reported missing,
//! never created); an existing store is opened and closed as a start would open it (which may
//! compact its index log or drop expired pieces); a store held by a running `serve` is reported
//! as in use, not as a problem. Certificates are checked for parsing, key match and, when the
//! chain allows a path to its last certificate, current validity (rustls/webpki; no X.509 crate).

use std::net::SocketAddr;
use std::path::Path;

use rustls::pki_types::CertificateDer;

use crate::config::{BackendChoice, Config, UpstreamConfig};
use crate::control::client::MetadataClient;
use crate::store::{Store, StoreError, LOCK_FILE_NAME};
use crate::tls::client::TlsClientOptions;
use crate::tls::dev_ca::DevTlsFiles;
use crate::tls::server::ServerTlsFiles;

/// Bound on the upstream check's connect, handshake and answer.
const UPSTREAM_CHECK_TIMEOUT_MS: u64 = 3_000;

/// What one check found: a problem (the start would fail) or a note (what the start would do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The thing named and why it cannot work.
    Problem(String),
    /// Information for the operator, e.g. the backend `auto` would pick.
    Note(String),
}

/// Runs every check in order: values, data dir and store, TLS, listen addresses, backend, upstream.
pub fn check(config: &Config) -> Vec<Finding> {
    let mut findings = check_values(config);
    findings.extend(check_data_dir(config));
    findings.extend(check_access_log(config));
    findings.extend(check_service_tls(config));
    findings.extend(check_listen(config));
    findings.extend(check_backend(config.serve.backend));
    if let Some(upstream) = config.upstream.as_ref().filter(|u| !u.service_url.is_empty()) {
        findings.extend(check_upstream(upstream));
    }
    findings
}

/// Every bad value, as `Config::validate` names it.
pub fn check_values(config: &Config) -> Vec<Finding> {
    match config.validate() {
        Ok(()) => Vec::new(),
        Err(problems) => problems.0.iter().map(|p| Finding::Problem(p.to_string())).collect(),
    }
}

/// The access log, when on, opens for appending (an existing file is opened, not changed; a
/// missing one is only looked for, since a check creates nothing).
pub fn check_access_log(config: &Config) -> Vec<Finding> {
    let Some(path) = config.log.access_log.as_deref().filter(|path| *path != Path::new("-")) else {
        return Vec::new();
    };
    if path.exists() {
        return match std::fs::OpenOptions::new().append(true).open(path) {
            Ok(_) => vec![Finding::Note(format!("access log {}: appending", path.display()))],
            Err(error) => vec![Finding::Problem(format!("log.access_log {}: {error}", path.display()))],
        };
    }
    let parent = path.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if parent.is_dir() {
        vec![Finding::Note(format!("access log {}: none yet; serve creates it", path.display()))]
    } else {
        vec![Finding::Problem(format!(
            "log.access_log {}: directory {} does not exist",
            path.display(),
            parent.display()
        ))]
    }
}

/// The data directory exists and the store in it opens (or is held by a running `serve`).
pub fn check_data_dir(config: &Config) -> Vec<Finding> {
    let dir = &config.data_dir;
    if !dir.exists() {
        return vec![Finding::Problem(format!(
            "data_dir {}: does not exist (a check creates nothing; create it, or fix data_dir)",
            dir.display()
        ))];
    }
    if !dir.is_dir() {
        return vec![Finding::Problem(format!("data_dir {}: is not a directory", dir.display()))];
    }
    let store_dir = config.store_dir();
    if !store_dir.exists() {
        return vec![Finding::Note(format!("store {}: none yet; serve creates it", store_dir.display()))];
    }
    if let Some(pid) = store_holder(&store_dir) {
        return vec![Finding::Note(format!("store {}: in use by pid {pid} (a running serve)", store_dir.display()))];
    }
    match Store::open(&store_dir, &config.store) {
        Ok(store) => vec![Finding::Note(format!("store {}: {} pieces", store_dir.display(), store.stats().pieces))],
        Err(StoreError::Locked { holder, .. }) => {
            vec![Finding::Note(format!("store {}: in use{holder}", store_dir.display()))]
        }
        Err(error) => vec![Finding::Problem(format!("store {}: {error}", store_dir.display()))],
    }
}

/// The pid holding the store's lock, without taking it for long or writing anything.
fn store_holder(store_dir: &Path) -> Option<String> {
    let path = store_dir.join(LOCK_FILE_NAME);
    let file = std::fs::File::open(&path).ok()?;
    match file.try_lock() {
        Ok(()) => None,
        Err(std::fs::TryLockError::WouldBlock) => {
            let pid = std::fs::read_to_string(&path).unwrap_or_default();
            Some(if pid.trim().is_empty() { "unknown".into() } else { pid.trim().to_string() })
        }
        Err(std::fs::TryLockError::Error(_)) => None,
    }
}

/// The service's certificate and key (configured, or the development ones when present) load,
/// match, and the certificate is currently valid.
pub fn check_service_tls(config: &Config) -> Vec<Finding> {
    if !config.service.enabled {
        return Vec::new();
    }
    let files = match (&config.service.cert_file, &config.service.key_file) {
        (Some(cert_file), Some(key_file)) => {
            ServerTlsFiles { cert_file: cert_file.clone(), key_file: key_file.clone() }
        }
        // Config::validate names a certificate without its key (and the reverse).
        (Some(_), None) | (None, Some(_)) => return Vec::new(),
        (None, None) => {
            let dev = DevTlsFiles::in_dir(&config.tls_dir());
            if !dev.server_cert.is_file() {
                let note = format!(
                    "service TLS: no certificate yet; serve makes a development CA in {}",
                    config.tls_dir().display()
                );
                return vec![Finding::Note(note)];
            }
            dev.server()
        }
    };
    let cert = files.cert_file.display();
    let mut findings = Vec::new();
    // The certificate and the key are checked apart, so a bad pair is named twice, not once.
    match crate::tls::load_certs(&files.cert_file) {
        Err(error) => findings.push(Finding::Problem(format!("service certificate {cert}: {error}"))),
        Ok(chain) => {
            if let Err(error) = crate::tls::spki_sha256(&chain[0]) {
                findings.push(Finding::Problem(format!("service certificate {cert}: does not parse ({error})")));
            } else if let Some(why) = certificate_time_problem(&chain) {
                findings.push(Finding::Problem(format!("service certificate {cert}: {why}")));
            }
        }
    }
    if let Err(error) = crate::tls::load_private_key(&files.key_file) {
        findings.push(Finding::Problem(format!("service key {}: {error}", files.key_file.display())));
    }
    if !findings.is_empty() {
        return findings;
    }
    match crate::tls::server::server_config(&files) {
        Ok(_) => vec![Finding::Note(format!("service certificate {cert}: ok"))],
        Err(error) => vec![Finding::Problem(format!("service certificate {cert}: {error}"))],
    }
}

/// Whether the leaf of `chain` is expired or not yet valid, found by verifying it
/// against the chain's last certificate as its root (other verification results are not this
/// check's business: the clients' trust decides those).
fn certificate_time_problem(chain: &[CertificateDer<'static>]) -> Option<String> {
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{ServerName, UnixTime};
    let (leaf, rest) = chain.split_first()?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(chain.last()?.clone()).ok()?;
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), crate::tls::provider())
        .build()
        .ok()?;
    let name = ServerName::try_from("localhost").ok()?;
    match verifier.verify_server_cert(leaf, rest, &name, &[], UnixTime::now()) {
        Err(rustls::Error::InvalidCertificate(
            error @ (rustls::CertificateError::Expired
            | rustls::CertificateError::ExpiredContext { .. }
            | rustls::CertificateError::NotValidYet
            | rustls::CertificateError::NotValidYetContext { .. }),
        )) => Some(format!("not currently valid ({error})")),
        _ => None,
    }
}

/// Each listen address (data plane, and the service when enabled) can be bound now.
pub fn check_listen(config: &Config) -> Vec<Finding> {
    let mut addresses = vec![("serve.listen", config.serve.listen.as_str())];
    if config.service.enabled {
        addresses.push(("service.listen", config.service.listen.as_str()));
    }
    let mut findings = Vec::new();
    let mut seen: Vec<SocketAddr> = Vec::new();
    for (key, text) in addresses {
        // A value that does not parse is already named by check_values.
        let Ok(addr) = text.parse::<SocketAddr>() else { continue };
        if addr.port() != 0 && seen.contains(&addr) {
            findings.push(Finding::Problem(format!("{key} = {addr}: another listener of this config uses it")));
            continue;
        }
        seen.push(addr);
        if let Err(error) = try_bind(addr) {
            findings.push(Finding::Problem(format!("{key} = {addr}: cannot bind: {error}")));
        }
    }
    findings
}

/// Binds `addr` with `SO_REUSEADDR` off (so a socket in use is seen) and closes it at once.
fn try_bind(addr: SocketAddr) -> std::io::Result<()> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(false)?;
    socket.bind(&addr.into())
}

/// Whether io_uring is usable here, and what the configured backend resolves to.
pub fn check_backend(choice: BackendChoice) -> Vec<Finding> {
    let uring = match crate::io::uring::probe() {
        Ok(()) => "available".to_string(),
        Err(reason) => format!("unavailable ({reason})"),
    };
    match crate::io::choose_backend(choice) {
        Ok((backend, reason)) => {
            let choice = format!("{choice:?}").to_lowercase();
            vec![Finding::Note(format!("io_uring: {uring}; backend {choice} picks {} ({reason})", backend.name()))]
        }
        Err(reason) => vec![Finding::Problem(format!("serve.backend = uring: io_uring is unavailable ({reason})"))],
    }
}

/// Each upstream metadata service answers `/healthz` over TLS, trusted as the fill would trust it.
pub fn check_upstream(upstream: &UpstreamConfig) -> Vec<Finding> {
    let options = TlsClientOptions {
        ca_file: upstream.ca_file.clone(),
        pin_spki_sha256: upstream.pin_sha256.clone(),
        timeout_ms: UPSTREAM_CHECK_TIMEOUT_MS,
        ..TlsClientOptions::default()
    };
    let client = match MetadataClient::new(options) {
        Ok(client) => client,
        Err(error) => {
            return vec![Finding::Problem(format!("upstream.service_url = {}: {error}", upstream.service_url))]
        }
    };
    let urls = upstream.all_service_urls();
    let key = |index: usize| {
        if index == 0 {
            "upstream.service_url".to_string()
        } else {
            format!("upstream.service_urls[{}]", index - 1)
        }
    };
    let finding = |(index, url): (usize, &String)| match client.health(url) {
        Ok(()) => Finding::Note(format!("upstream {url}: reachable")),
        Err(error) => Finding::Problem(format!("{} = {url}: {error}", key(index))),
    };
    urls.iter().enumerate().map(finding).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_data_dir_is_named_and_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config { data_dir: dir.path().join("absent"), ..Config::default() };
        let findings = check_data_dir(&config);
        assert!(matches!(&findings[..], [Finding::Problem(p)] if p.contains("absent")), "{findings:?}");
        assert!(!config.data_dir.exists());
    }

    #[test]
    fn an_access_log_in_a_missing_directory_is_named_and_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.log.access_log = Some(dir.path().join("absent/access.log"));
        let findings = check_access_log(&config);
        assert!(matches!(&findings[..], [Finding::Problem(p)] if p.contains("log.access_log")), "{findings:?}");
        config.log.access_log = Some(dir.path().join("access.log"));
        assert!(matches!(&check_access_log(&config)[..], [Finding::Note(_)]));
        assert!(!dir.path().join("access.log").exists(), "a check creates nothing");
    }

    #[test]
    fn a_bound_port_is_named() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mut config = Config::default();
        config.serve.listen = addr.clone();
        config.service.enabled = false;
        let findings = check_listen(&config);
        assert!(matches!(&findings[..], [Finding::Problem(p)] if p.contains(&addr)), "{findings:?}");
    }
}
