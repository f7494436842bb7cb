//! The seed side of peer matching: a thread that tells the metadata service, every interval,
//! which verified content this `serve` holds (all pieces, or a bitfield of them). A cache box also
//! asks for an announce as soon as it stores filled pieces ([`AnnounceTrigger`]), at most one per
//! [`TRIGGERED_GAP`], so devices find it right after it filled what they want.
//!
//! Only content whose hash file verifies against its manifest is announced: content that would
//! be downloaded in Simple mode is never offered to peers (rule 5).

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::net::SocketAddr;
use std::path::Path;

use crate::catalog::Catalog;
use crate::config::AnnounceConfig;
use crate::content::{decide, Mode};
use crate::control::api::{AnnounceRequest, AnnouncedContent};
use crate::control::auth::AdminToken;
use crate::control::client::{ClientError, MetadataClient};
use crate::store::Store;
use crate::tls::TlsClientOptions;

/// Where and as whom to announce.
#[derive(Debug, Clone)]
pub struct AnnounceTarget {
    /// The metadata service, `https://HOST:PORT`.
    pub service_url: String,
    /// How to trust it.
    pub tls: TlsClientOptions,
    /// This seed's peer id.
    pub peer_id: String,
    /// Peer-matching group.
    pub group: String,
    /// Data-plane address devices should use.
    pub address: String,
    /// Time between announces.
    pub interval: Duration,
    /// Time before retrying a failed announce.
    pub retry: Duration,
    /// Most contents in one announce.
    pub contents_max: usize,
    /// The site's announce token, sent as a bearer token.
    pub token: Option<AdminToken>,
}

/// The embedded service an announcer may default to: its address, development CA and announce
/// token file.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedService<'a> {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its development CA, when it made one.
    pub dev_ca: Option<&'a Path>,
    /// Its announce token file, unless it is open.
    pub token_file: Option<&'a Path>,
}

/// Why no announce target could be made from the config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error(
        "[announce] address is empty and serve listens on {0}, which devices cannot reach; set [announce] address"
    )]
    UnspecifiedAddress(SocketAddr),
    #[error("[announce] address {0:?} is not IP:PORT")]
    BadAddress(String),
    #[error("[announce] token_file: {0}")]
    Token(String),
}

impl AnnounceTarget {
    /// The target `config` describes for a data plane listening on `data_plane`, with the embedded
    /// service `embedded`, if any. `None`: nothing to announce to.
    pub fn resolve(
        config: &AnnounceConfig,
        data_plane: SocketAddr,
        embedded: Option<EmbeddedService<'_>>,
        timeout_ms: u64,
    ) -> Result<Option<AnnounceTarget>, TargetError> {
        if !config.enabled {
            return Ok(None);
        }
        let (service_url, ca_file, token_file) = if config.service_url.is_empty() {
            let Some(EmbeddedService { addr: service, dev_ca, token_file }) = embedded else { return Ok(None) };
            let host = if service.ip().is_unspecified() { "127.0.0.1".to_string() } else { service.ip().to_string() };
            let host = if host.contains(':') { format!("[{host}]") } else { host };
            let ca_file = config.ca_file.clone().or(dev_ca.map(Path::to_path_buf));
            let token_file = config.token_file.clone().or(token_file.map(Path::to_path_buf));
            (format!("https://{host}:{}", service.port()), ca_file, token_file)
        } else {
            (config.service_url.clone(), config.ca_file.clone(), config.token_file.clone())
        };
        let token = match token_file {
            Some(path) => Some(AdminToken::from_file(&path).map_err(|error| TargetError::Token(error.to_string()))?),
            None => None,
        };
        let address = if config.address.is_empty() {
            if data_plane.ip().is_unspecified() {
                return Err(TargetError::UnspecifiedAddress(data_plane));
            }
            data_plane
        } else {
            config.address.parse().map_err(|_| TargetError::BadAddress(config.address.clone()))?
        };
        let peer_id = if config.peer_id.is_empty() { default_peer_id(address.port()) } else { config.peer_id.clone() };
        Ok(Some(AnnounceTarget {
            service_url,
            tls: TlsClientOptions { ca_file, timeout_ms, ..TlsClientOptions::default() },
            peer_id,
            group: config.group.clone(),
            address: address.to_string(),
            interval: Duration::from_millis(config.interval_ms.max(1)),
            retry: Duration::from_millis(config.retry_ms.max(1)),
            contents_max: config.contents_max as usize,
            token,
        }))
    }
}

/// `HOSTNAME-PORT`, with anything a peer id may not hold replaced by `-`.
fn default_peer_id(port: u16) -> String {
    let host = crate::io::sys::host_name().unwrap_or_else(|| "tessera".into());
    let host: String = host
        .trim()
        .chars()
        .take(100)
        .map(|c| if c.is_ascii_alphanumeric() || ".-_".contains(c) { c } else { '-' })
        .collect();
    format!("{}-{port}", if host.is_empty() { "tessera" } else { &host })
}

/// Least time between an announce and a triggered one: 10 a minute at most, under the metadata
/// service's default 12 announces per peer per minute (the interval's announce has room).
pub const TRIGGERED_GAP: Duration = Duration::from_secs(6);

#[derive(Debug, Default)]
struct Signals {
    stop: bool,
    due: bool,
}

/// Asks the announcer for an announce soon (after [`TRIGGERED_GAP`] since the last one), not at
/// its next interval. Cheap: a flag and a wake-up; triggers before the announce coalesce.
#[derive(Debug, Clone, Default)]
pub struct AnnounceTrigger(Arc<(Mutex<Signals>, Condvar)>);

impl AnnounceTrigger {
    /// Something new is held: announce soon.
    pub fn announce_soon(&self) {
        self.lock().due = true;
        self.0 .1.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, Signals> {
        self.0 .0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until `wait` after `announced_at`, or a trigger past the gap; `false` on stop.
    fn wait_next(&self, announced_at: Instant, wait: Duration) -> bool {
        let deadline = announced_at + wait;
        let earliest = announced_at + TRIGGERED_GAP.min(wait);
        let mut signals = self.lock();
        loop {
            let now = Instant::now();
            if signals.stop {
                return false;
            }
            if now >= deadline || (signals.due && now >= earliest) {
                signals.due = false;
                return true;
            }
            let until = if signals.due { earliest } else { deadline };
            signals = self.0 .1.wait_timeout(signals, until - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

/// Why the announcer did not start.
#[derive(Debug, thiserror::Error)]
pub enum AnnouncerError {
    #[error("announce client: {0}")]
    Client(#[from] ClientError),
    #[error("cannot start the announce thread: {0}")]
    Spawn(std::io::Error),
}

/// A running announcer; dropping it stops the thread.
pub struct AnnouncerHandle {
    signals: AnnounceTrigger,
    thread: Option<JoinHandle<()>>,
}

/// Starts announcing what `store` holds of `catalog`'s content, every interval and when
/// `trigger` asks.
pub fn start(
    target: AnnounceTarget,
    catalog: Catalog,
    store: Arc<Store>,
    trigger: AnnounceTrigger,
) -> Result<AnnouncerHandle, AnnouncerError> {
    let client = MetadataClient::new(target.tls.clone())?;
    // A trigger whose previous announcer was stopped (a reload) serves this one.
    trigger.lock().stop = false;
    let signals = trigger.clone();
    let thread = std::thread::Builder::new()
        .name("tessera-announce".into())
        .spawn(move || run(&client, &target, &catalog, &store, &trigger))
        .map_err(AnnouncerError::Spawn)?;
    Ok(AnnouncerHandle { signals, thread: Some(thread) })
}

fn run(client: &MetadataClient, target: &AnnounceTarget, catalog: &Catalog, store: &Store, signals: &AnnounceTrigger) {
    let mut failing = false;
    loop {
        let contents = holdings(catalog, store, target.contents_max);
        let count = contents.len();
        let request = AnnounceRequest {
            peer_id: target.peer_id.clone(),
            group: target.group.clone(),
            address: target.address.clone(),
            contents,
        };
        let wait = match client.announce(&target.service_url, target.token.as_ref().map(AdminToken::secret), &request) {
            Ok(()) => {
                if failing {
                    tracing::info!(service = %target.service_url, "announces reach the metadata service again");
                }
                tracing::debug!(contents = count, service = %target.service_url, "announced");
                failing = false;
                target.interval
            }
            Err(error) => {
                // Said once per failure streak: a service that is down must not flood the log.
                if !failing {
                    tracing::warn!(%error, service = %target.service_url, "announce failed; retrying");
                }
                failing = true;
                target.retry
            }
        };
        if !signals.wait_next(Instant::now(), wait) {
            return;
        }
    }
}

/// The verified catalog contents the store holds pieces of, at most `contents_max`.
pub fn holdings(catalog: &Catalog, store: &Store, contents_max: usize) -> Vec<AnnouncedContent> {
    let ids = match catalog.list() {
        Ok(ids) => ids,
        Err(error) => {
            tracing::warn!(%error, "cannot list the catalog for an announce");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for id in ids {
        if out.len() >= contents_max {
            break;
        }
        let (Ok(Some(manifest)), Ok(Some(hashfile))) = (catalog.read_manifest(&id), catalog.read_hashfile(&id)) else {
            continue;
        };
        let Mode::P2p { hashes } = decide(Ok(&manifest), Ok(&hashfile)) else { continue };
        let held = store.indexes_held(hashes.digests());
        if held.is_empty() && hashes.piece_count() > 0 {
            continue;
        }
        let bitfield = (held.len() as u64 != hashes.piece_count()).then(|| bitfield_hex(&held, hashes.piece_count()));
        out.push(AnnouncedContent { id: id.to_string(), bitfield });
    }
    out
}

/// Hex of a bitfield of `count` pieces with `held` set; piece 0 is the high bit of the first byte.
fn bitfield_hex(held: &[u64], count: u64) -> String {
    let mut bytes = vec![0u8; count.div_ceil(8) as usize];
    for &index in held.iter().filter(|&&i| i < count) {
        bytes[(index / 8) as usize] |= 0x80 >> (index % 8);
    }
    hex::encode(bytes)
}

impl AnnouncerHandle {
    /// Stops announcing and waits for the thread.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.signals.lock().stop = true;
        self.signals.0 .1.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for AnnouncerHandle {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_plane() -> SocketAddr {
        "127.0.0.1:7680".parse().unwrap()
    }

    fn embedded<'a>(addr: SocketAddr, dev_ca: Option<&'a Path>, token_file: Option<&'a Path>) -> EmbeddedService<'a> {
        EmbeddedService { addr, dev_ca, token_file }
    }

    #[test]
    fn the_embedded_service_token_is_sent_unless_the_config_names_another() {
        let dir = tempfile::tempdir().unwrap();
        let (own, other) = (dir.path().join("own.token"), dir.path().join("other.token"));
        std::fs::write(&own, "own-token-0123456789\n").unwrap();
        std::fs::write(&other, "other-token-0123456789\n").unwrap();
        let service = Some(embedded("127.0.0.1:7443".parse().unwrap(), None, Some(&own)));
        let secret = |config: &AnnounceConfig, service| {
            let target = AnnounceTarget::resolve(config, data_plane(), service, 1000).unwrap().unwrap();
            target.token.map(|token| token.secret().to_string())
        };
        assert_eq!(secret(&AnnounceConfig::default(), service).as_deref(), Some("own-token-0123456789"));
        let named = AnnounceConfig { token_file: Some(other.clone()), ..AnnounceConfig::default() };
        assert_eq!(secret(&named, service).as_deref(), Some("other-token-0123456789"));
        let remote = AnnounceConfig { service_url: "https://meta.example:7443".into(), ..AnnounceConfig::default() };
        assert_eq!(secret(&remote, service), None);
        let missing = AnnounceConfig { token_file: Some(dir.path().join("absent")), ..AnnounceConfig::default() };
        let error = AnnounceTarget::resolve(&missing, data_plane(), service, 1000).unwrap_err();
        assert!(error.to_string().contains("absent"), "{error}");
    }

    #[test]
    fn embedded_service_is_the_default_target() {
        let service: SocketAddr = "0.0.0.0:7443".parse().unwrap();
        let ca = Path::new("data/tls/ca.pem");
        let target = AnnounceTarget::resolve(
            &AnnounceConfig::default(),
            data_plane(),
            Some(embedded(service, Some(ca), None)),
            1000,
        )
        .unwrap();
        let target = target.expect("announces to the embedded service");
        assert_eq!(target.service_url, "https://127.0.0.1:7443");
        assert_eq!(target.tls.ca_file.as_deref(), Some(ca));
        assert_eq!(target.address, "127.0.0.1:7680");
        assert!(target.peer_id.ends_with("-7680"), "{}", target.peer_id);
        assert_eq!(target.group, "default");
    }

    #[test]
    fn nothing_to_announce_to_or_disabled_gives_none() {
        assert_eq!(
            AnnounceTarget::resolve(&AnnounceConfig::default(), data_plane(), None, 1000)
                .unwrap()
                .map(|t| t.service_url),
            None
        );
        let off = AnnounceConfig { enabled: false, ..AnnounceConfig::default() };
        let service = Some(embedded("127.0.0.1:1".parse().unwrap(), None, None));
        assert!(AnnounceTarget::resolve(&off, data_plane(), service, 1000).unwrap().is_none());
    }

    #[test]
    fn unreachable_or_bad_addresses_are_named() {
        let service = Some(embedded("127.0.0.1:1".parse().unwrap(), None, None));
        let any: SocketAddr = "0.0.0.0:7680".parse().unwrap();
        let error = AnnounceTarget::resolve(&AnnounceConfig::default(), any, service, 1000).unwrap_err();
        assert_eq!(error, TargetError::UnspecifiedAddress(any));
        let bad = AnnounceConfig { address: "seed.local".into(), ..AnnounceConfig::default() };
        assert_eq!(
            AnnounceTarget::resolve(&bad, any, service, 1000).unwrap_err(),
            TargetError::BadAddress("seed.local".into())
        );
        let remote = AnnounceConfig {
            service_url: "https://meta.example:7443".into(),
            address: "10.1.2.3:7680".into(),
            peer_id: "seed-a".into(),
            ..AnnounceConfig::default()
        };
        let target = AnnounceTarget::resolve(&remote, any, None, 1000).unwrap().unwrap();
        assert_eq!(
            (target.service_url.as_str(), target.address.as_str(), target.peer_id.as_str()),
            ("https://meta.example:7443", "10.1.2.3:7680", "seed-a")
        );
        assert_eq!(target.tls.ca_file, None);
    }

    #[test]
    fn bitfield_sets_the_held_pieces_from_the_high_bit() {
        assert_eq!(bitfield_hex(&[0, 2, 9], 10), "a040");
        assert_eq!(bitfield_hex(&[], 3), "00");
        assert_eq!(bitfield_hex(&[7], 8), "01");
    }
}
