//! `tessera load swarm`: a site of devices and lying peers in one process.
//!
//! Devices run the download workflow of `tessera get` ([`device`]), at most `concurrency` at
//! once, against a box or a metadata service; liars ([`liars`], lying as [`liar`] says) serve the
//! piece API with bad bytes and announce themselves to the service with the site's announce
//! token, so peer matching hands them to the devices and banning is tested under load. The run
//! reports what the devices did and, above all, the bad bytes they accepted (which must be 0).
//!
//! The liars need the true pieces to lie plausibly (a wrong piece is another true piece; a
//! good-then-bad liar first serves true ones), so a reference copy is downloaded first, before
//! any liar is announced.

pub mod device;
pub mod liar;
pub mod liars;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::DownloadConfig;
use crate::content::{ContentId, HashFile};
use crate::control::api::{AnnounceRequest, AnnouncedContent};
use crate::control::auth::AdminToken;
use crate::control::client::{ClientError, MetadataClient};
use crate::download::{get, GetError, GetRequest, ServiceMetadata};
use crate::load::record::{new_histogram, Percentiles};
use crate::load::target::verified_hashes;
use crate::tls::TlsClientOptions;
use device::{DeviceOutcome, DeviceSetup};
use liar::LieKind;
use liars::{Liar, Liars, LiarsConfig, Reference, LIARS_MAX};

/// Devices of one run at most.
pub const DEVICES_MAX: u64 = 1_000_000;
/// Downloads running at once at most (each is a client loop and its verifier threads).
pub const CONCURRENCY_MAX: usize = 256;
/// Failure messages kept for the report (the first ones).
const ERRORS_KEPT_MAX: usize = 8;
/// The reference copy's name in the work dir.
const REFERENCE_FILE: &str = "reference.bin";
/// Liars announce again this often, well within the service's default peer TTL (15 minutes).
const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(300);

/// Why a swarm could not run.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    #[error("{0}")]
    Usage(String),
    #[error("--service {url}: {source}")]
    Service { url: String, source: Box<ClientError> },
    #[error("--content {id}: no verified hash file from {url} ({reason}); a swarm needs P2P content")]
    NotP2p { id: String, url: String, reason: String },
    #[error("--token-file: {0}")]
    Token(#[from] crate::control::auth::AuthError),
    #[error("cannot make the work directory in {path}: {source}")]
    WorkDir { path: PathBuf, source: std::io::Error },
    #[error("the reference copy the liars lie about could not be downloaded: {0}")]
    Reference(#[source] Box<GetError>),
    #[error("cannot start the liars: {0}")]
    Liars(#[source] std::io::Error),
    #[error("liar {address} could not announce itself to {url}: {source}{hint}")]
    Announce { address: String, url: String, source: Box<ClientError>, hint: &'static str },
    #[error("cannot start device thread {index}: {source}")]
    Thread { index: usize, source: std::io::Error },
}

/// What to run.
#[derive(Debug, Clone)]
pub struct SwarmOptions {
    /// The metadata service (`https://HOST:PORT`): a box's embedded one, or a fleet's.
    pub service_url: String,
    /// How to trust it (CA file, pin); its timeouts and size bound come from `download`.
    pub tls: TlsClientOptions,
    pub content: ContentId,
    /// Peer-matching group of the devices and liars.
    pub group: String,
    /// Peers every device uses besides the matched ones (`get --peer`).
    pub peers: Vec<SocketAddr>,
    pub devices: u64,
    /// Downloads running at once.
    pub concurrency: usize,
    /// How the liars lie, cycled over `liars` liars.
    pub liar_kinds: Vec<LieKind>,
    pub liars: usize,
    /// Pieces a good-then-bad liar answers honestly per connection.
    pub honest_pieces: u64,
    /// Where liars listen (their ports are the kernel's choice).
    pub liar_ip: IpAddr,
    /// Connections one liar holds at most.
    pub liar_connections_max: usize,
    /// The service's announce token (`[announce] token_file`, the service's `announce.token`).
    pub token_file: Option<PathBuf>,
    /// Where device outputs are written (each removed once checked); the system's temp dir if `None`.
    pub work_dir: Option<PathBuf>,
    /// Keep every completed output in the work dir (named in the summary) for inspection.
    pub keep_outputs: bool,
    /// The devices' download limits (`[download]`).
    pub download: DownloadConfig,
}

/// One finished device, for a live line.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub done: u64,
    pub failed: u64,
    pub devices: u64,
    pub bans_seen: u64,
    pub bad_bytes_accepted: u64,
}

/// What one liar did over the run.
#[derive(Debug, Clone, Serialize)]
pub struct LiarReport {
    pub address: String,
    pub kind: LieKind,
    pub connections: u64,
    /// Connections refused at the liar's connection limit.
    pub refused: u64,
    pub requests: u64,
    /// Responses with bad bytes.
    pub lies: u64,
    /// Responses with the true piece.
    pub honest: u64,
    /// Requests never answered.
    pub held: u64,
    /// Devices that banned it.
    pub banned_by: u64,
    /// Devices that dropped it (too many timeouts or failures).
    pub dropped_by: u64,
    /// Verified bytes devices took from it (true pieces only).
    pub bytes_accepted: u64,
}

/// The run's summary, as printed and as `--json` writes it.
#[derive(Debug, Clone, Serialize)]
pub struct SwarmSummary {
    pub content_id: String,
    pub content_length: u64,
    pub pieces: u64,
    pub devices: u64,
    pub concurrency: usize,
    /// Downloads that finished with every piece verified.
    pub completed: u64,
    pub failed: u64,
    /// Completed downloads that ran in Simple mode (no peers, so no bans).
    pub simple_mode: u64,
    /// Bytes of the completed downloads.
    pub bytes: u64,
    pub duration_s: f64,
    pub bytes_per_s: f64,
    /// Time per download (completed ones), ms.
    pub download_ms: Percentiles,
    /// Bans over all devices (a liar banned by three devices counts three).
    pub bans_seen: u64,
    /// Bytes of completed outputs that do not match the hash file: must be 0.
    pub bad_bytes_accepted: u64,
    /// Liars banned by at least one device.
    pub liars_banned: usize,
    pub liars: Vec<LiarReport>,
    /// The first failure messages.
    pub errors: Vec<String>,
    /// Where the outputs were kept (`--keep-outputs`): `device-N.bin` for device N.
    pub outputs_dir: Option<PathBuf>,
}

impl SwarmOptions {
    fn check(&self) -> Result<(), SwarmError> {
        let usage = |text: String| Err(SwarmError::Usage(text));
        if self.devices == 0 || self.devices > DEVICES_MAX {
            return usage(format!("--devices {}: use 1 to {DEVICES_MAX}", self.devices));
        }
        if self.concurrency == 0 || self.concurrency > CONCURRENCY_MAX {
            return usage(format!("--concurrency {}: use 1 to {CONCURRENCY_MAX}", self.concurrency));
        }
        if self.liars > LIARS_MAX {
            return usage(format!("--liars {}: use 0 to {LIARS_MAX}", self.liars));
        }
        if self.liars > 0 && self.liar_kinds.is_empty() {
            return usage("--liar-kinds: name at least one kind".into());
        }
        if self.liars > 0 && self.liar_ip.is_unspecified() {
            return usage(format!("--liar-ip {}: liars announce it, so give an address devices reach", self.liar_ip));
        }
        if self.liar_connections_max == 0 {
            return usage("--liar-connections: must be at least 1".into());
        }
        Ok(())
    }

    fn metadata(&self) -> Result<ServiceMetadata, SwarmError> {
        ServiceMetadata::new(&self.service_url, self.tls.clone())
            .map_err(|source| SwarmError::Service { url: self.service_url.clone(), source: Box::new(source) })
    }
}

/// Runs the swarm; `observe` hears of every finished device.
pub fn run(options: &SwarmOptions, observe: &mut dyn FnMut(&Progress)) -> Result<SwarmSummary, SwarmError> {
    options.check()?;
    let metadata = options.metadata()?;
    let hashes = verified_hashes(&metadata, &options.content).map_err(|reason| SwarmError::NotP2p {
        id: options.content.to_string(),
        url: options.service_url.clone(),
        reason,
    })?;
    let token = options.token_file.as_deref().map(AdminToken::from_file).transpose()?;
    let base = options.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let work_dir = tempfile::Builder::new()
        .prefix("tessera-swarm-")
        .tempdir_in(&base)
        .map_err(|source| SwarmError::WorkDir { path: base.clone(), source })?;
    // As `tessera get` has it: the CA for https sources and peers; the key pin is the service's only.
    let tls = crate::tls::ca_client_config(options.tls.ca_file.as_deref())
        .map_err(|e| SwarmError::Usage(format!("--ca: {e}")))?;
    let liars =
        if options.liars > 0 { Some(start_liars(options, &metadata, &hashes, &tls, work_dir.path())?) } else { None };
    let announcer = Announcer::new(options, token)?;
    if let Some(liars) = &liars {
        if let Err(error) = announcer.announce(liars.liars(), true) {
            // The liars announced before the failing one must not outlive the run.
            let _ = announcer.announce(liars.liars(), false);
            return Err(error);
        }
    }
    let setup = DeviceSetup {
        service_url: &options.service_url,
        tls_options: &options.tls,
        tls,
        id: &options.content,
        group: &options.group,
        peers: &options.peers,
        hashes: &hashes,
        config: &options.download,
        work_dir: work_dir.path(),
        keep_outputs: options.keep_outputs,
    };
    let started = Instant::now();
    let outcomes = run_devices(options, &setup, liars.as_ref().map(Liars::liars).unwrap_or(&[]), &announcer, observe);
    let duration_s = started.elapsed().as_secs_f64();
    if let Some(liars) = &liars {
        // Later devices of the site must not be sent to ports nobody listens on.
        if let Err(error) = announcer.announce(liars.liars(), false) {
            tracing::warn!(%error, "the liars' last announce (holding nothing) failed; they expire with the peer TTL");
        }
    }
    let outcomes = outcomes?;
    let liar_list = liars.as_ref().map(|l| l.liars().to_vec()).unwrap_or_default();
    drop(liars);
    let mut summary = summarize(options, &hashes, &outcomes, &liar_list, duration_s);
    if options.keep_outputs {
        let _ = std::fs::remove_file(work_dir.path().join(REFERENCE_FILE));
        summary.outputs_dir = Some(work_dir.keep());
    }
    Ok(summary)
}

/// Downloads the reference copy (no liar is announced yet) and starts the liars on it.
fn start_liars(
    options: &SwarmOptions,
    metadata: &ServiceMetadata,
    hashes: &HashFile,
    tls: &Arc<rustls::ClientConfig>,
    work_dir: &std::path::Path,
) -> Result<Liars, SwarmError> {
    let path = work_dir.join(REFERENCE_FILE);
    let request = GetRequest {
        id: options.content.clone(),
        group: options.group.clone(),
        peers: options.peers.clone(),
        sources: Vec::new(),
        output: path.clone(),
        sha256: None,
        config: options.download.clone(),
        tls: tls.clone(),
    };
    get(&request, metadata, &mut |_| {}).map_err(|error| SwarmError::Reference(Box::new(error)))?;
    let reference = Reference::open(options.content.clone(), hashes.clone(), &path).map_err(SwarmError::Liars)?;
    let config = LiarsConfig {
        bind: options.liar_ip,
        kinds: (0..options.liars).map(|i| options.liar_kinds[i % options.liar_kinds.len()]).collect(),
        honest_pieces: options.honest_pieces,
        connections_max: options.liar_connections_max,
        idle_timeout: Duration::from_millis(options.download.request_timeout_ms.saturating_mul(2).max(1000)),
    };
    Liars::start(&config, Arc::new(reference)).map_err(SwarmError::Liars)
}

/// The liars' announces: as peers of the group holding the content, with the site's token.
struct Announcer {
    client: MetadataClient,
    service_url: String,
    token: Option<AdminToken>,
    group: String,
    content: ContentId,
}

impl Announcer {
    fn new(options: &SwarmOptions, token: Option<AdminToken>) -> Result<Announcer, SwarmError> {
        let client = MetadataClient::new(options.tls.clone())
            .map_err(|source| SwarmError::Service { url: options.service_url.clone(), source: Box::new(source) })?;
        Ok(Announcer {
            client,
            service_url: options.service_url.clone(),
            token,
            group: options.group.clone(),
            content: options.content.clone(),
        })
    }

    /// Announces every liar as holding the content (`holding`), or as holding nothing.
    fn announce(&self, liars: &[Liar], holding: bool) -> Result<(), SwarmError> {
        for liar in liars {
            let contents =
                if holding { vec![AnnouncedContent { id: self.content.to_string(), bitfield: None }] } else { vec![] };
            let request = AnnounceRequest {
                peer_id: format!("swarm-liar-{}-{}", std::process::id(), liar.address.port()),
                group: self.group.clone(),
                address: liar.address.to_string(),
                contents,
            };
            let token = self.token.as_ref().map(AdminToken::secret);
            self.client.announce(&self.service_url, token, &request).map_err(|source| SwarmError::Announce {
                address: liar.address.to_string(),
                url: self.service_url.clone(),
                hint: if self.token.is_none() { " (give --token-file: the service's announce.token)" } else { "" },
                source: Box::new(source),
            })?;
        }
        Ok(())
    }
}

/// Runs every device on `options.concurrency` threads; the caller's thread gathers the outcomes
/// and keeps the liars announced.
fn run_devices(
    options: &SwarmOptions,
    setup: &DeviceSetup<'_>,
    liars: &[Liar],
    announcer: &Announcer,
    observe: &mut dyn FnMut(&Progress),
) -> Result<Vec<DeviceOutcome>, SwarmError> {
    let next = AtomicU64::new(0);
    let threads = options.concurrency.min(options.devices as usize);
    let (done_in, done) = crossbeam_channel::bounded::<DeviceOutcome>(threads);
    std::thread::scope(|scope| {
        for index in 0..threads {
            let (next, done_in) = (&next, done_in.clone());
            let spawned =
                std::thread::Builder::new().name(format!("swarm-device-{index}")).spawn_scoped(scope, move || loop {
                    let device = next.fetch_add(1, Ordering::SeqCst);
                    if device >= options.devices || done_in.send(device::run(setup, device)).is_err() {
                        return;
                    }
                });
            if let Err(source) = spawned {
                // Devices not yet taken are skipped; the threads already running finish theirs.
                next.store(options.devices, Ordering::SeqCst);
                return Err(SwarmError::Thread { index, source });
            }
        }
        drop(done_in);
        Ok(gather(options.devices, &done, liars, announcer, observe))
    })
}

/// Takes every outcome as it comes (until the device threads end), re-announcing the liars
/// every [`ANNOUNCE_INTERVAL`].
fn gather(
    devices: u64,
    done: &crossbeam_channel::Receiver<DeviceOutcome>,
    liars: &[Liar],
    announcer: &Announcer,
    observe: &mut dyn FnMut(&Progress),
) -> Vec<DeviceOutcome> {
    let mut outcomes = Vec::new();
    let mut progress = Progress { done: 0, failed: 0, devices, bans_seen: 0, bad_bytes_accepted: 0 };
    let mut announced_at = Instant::now();
    loop {
        match done.recv_timeout(ANNOUNCE_INTERVAL) {
            Ok(outcome) => {
                progress.done += 1;
                progress.failed += u64::from(outcome.error.is_some());
                progress.bans_seen += outcome.sources.iter().filter(|s| s.banned).count() as u64;
                progress.bad_bytes_accepted += outcome.bad_bytes;
                observe(&progress);
                outcomes.push(outcome);
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return outcomes,
        }
        if !liars.is_empty() && announced_at.elapsed() >= ANNOUNCE_INTERVAL {
            announced_at = Instant::now();
            if let Err(error) = announcer.announce(liars, true) {
                tracing::warn!(%error, "liars' announce failed; retrying at the next interval");
            }
        }
    }
}

fn summarize(
    options: &SwarmOptions,
    hashes: &HashFile,
    outcomes: &[DeviceOutcome],
    liars: &[Liar],
    duration_s: f64,
) -> SwarmSummary {
    let mut histogram = new_histogram();
    let mut errors = Vec::new();
    let completed: Vec<&DeviceOutcome> = outcomes.iter().filter(|o| o.error.is_none()).collect();
    for outcome in outcomes {
        match &outcome.error {
            None => histogram.saturating_record(outcome.duration_us.max(1)),
            Some(error) if errors.len() < ERRORS_KEPT_MAX => errors.push(format!("device {}: {error}", outcome.index)),
            Some(_) => {}
        }
    }
    let liars: Vec<LiarReport> = liars.iter().map(|liar| liar_report(liar, outcomes)).collect();
    let bytes: u64 = completed.iter().map(|o| o.bytes).sum();
    SwarmSummary {
        content_id: options.content.to_string(),
        content_length: hashes.content_length(),
        pieces: hashes.piece_count(),
        devices: options.devices,
        concurrency: options.concurrency.min(options.devices as usize),
        completed: completed.len() as u64,
        failed: (outcomes.len() - completed.len()) as u64,
        simple_mode: completed.iter().filter(|o| o.mode == "simple").count() as u64,
        bytes,
        duration_s,
        bytes_per_s: if duration_s > 0.0 { bytes as f64 / duration_s } else { 0.0 },
        download_ms: Percentiles::of(&histogram),
        bans_seen: outcomes.iter().flat_map(|o| &o.sources).filter(|s| s.banned).count() as u64,
        bad_bytes_accepted: outcomes.iter().map(|o| o.bad_bytes).sum(),
        liars_banned: liars.iter().filter(|liar| liar.banned_by > 0).count(),
        liars,
        errors,
        outputs_dir: None,
    }
}

fn liar_report(liar: &Liar, outcomes: &[DeviceOutcome]) -> LiarReport {
    let label = liar.address.to_string();
    let seen = || outcomes.iter().flat_map(|o| &o.sources).filter(|s| s.source == label);
    let counters = &liar.counters;
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    LiarReport {
        address: label.clone(),
        kind: liar.kind,
        connections: load(&counters.connections),
        refused: load(&counters.refused),
        requests: load(&counters.requests),
        lies: load(&counters.lies),
        honest: load(&counters.honest),
        held: load(&counters.held),
        banned_by: seen().filter(|s| s.banned).count() as u64,
        dropped_by: seen().filter(|s| s.dropped).count() as u64,
        bytes_accepted: seen().map(|s| s.bytes).sum(),
    }
}
