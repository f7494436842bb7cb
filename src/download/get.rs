//! One whole download: metadata, mode, sources, the driver, the whole-file check, the summary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use rustls::ClientConfig;
use serde::Serialize;

use crate::config::DownloadConfig;
use crate::content::{ContentId, Digest, Manifest, Mode, SimpleReason};
use crate::download::driver::{self, Job, Outcome, Progress, SourceSpec, SourceStats};
use crate::download::fetch::{fetch, FetchLimits};
use crate::download::metadata::{gather, MetadataSource};
use crate::download::output::{Identity, Layout, Output, OutputError};
use crate::download::scheduler::Exhaustion;
use crate::http::url::{HttpUrl, UrlError};
use crate::rendezvous;

/// What to download, from where, to where.
#[derive(Debug, Clone)]
pub struct GetRequest {
    pub id: ContentId,
    /// Peer-matching group.
    pub group: String,
    /// The site's boxes given by hand (`--peer`), in P2P mode: ranked by rendezvous hashing of
    /// (`config.device_id`, content id), the first serves the download and the next takes over
    /// when it fails; matched peers that are not among them are used besides, side by side.
    pub peers: Vec<SocketAddr>,
    /// The caller's own HTTP sources (`--source`).
    pub sources: Vec<String>,
    pub output: PathBuf,
    /// Whole-file SHA-256 to check (`--sha256`); the manifest's is used when absent.
    pub sha256: Option<Digest>,
    pub config: DownloadConfig,
    pub tls: Arc<ClientConfig>,
}

/// Why a download failed; each kind has its own exit status in the CLI.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error("{id}: not found ({detail})")]
    NotFound { id: String, detail: String },
    #[error("Simple mode ({reason}) and no HTTP source: give --source URL")]
    NoHttpSource { reason: String },
    #[error("sources exhausted: piece {piece} {why}; {detail}")]
    Exhausted { piece: u64, why: &'static str, detail: String, summary: Box<Summary> },
    #[error("verification failed: {0}")]
    Verification(String),
    #[error("source {0}")]
    BadSource(#[from] UrlError),
    #[error(transparent)]
    Output(OutputError),
}

impl From<OutputError> for GetError {
    fn from(error: OutputError) -> GetError {
        match error {
            OutputError::Mismatch { .. } => GetError::Verification(error.to_string()),
            other => GetError::Output(other),
        }
    }
}

/// The end-of-download summary (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub content_id: String,
    pub output: PathBuf,
    pub mode: &'static str,
    /// Why Simple mode, if it is.
    pub mode_reason: Option<String>,
    /// Where the verified hash file came from.
    pub hashfile_origin: Option<String>,
    pub content_length: u64,
    pub piece_size: u64,
    pub pieces: u64,
    pub pieces_resumed: u64,
    /// Whole-file SHA-256 checked, if one was known.
    pub sha256: Option<String>,
    pub duration_ms: u64,
    pub sources: Vec<SourceStats>,
    pub banned: Vec<String>,
}

/// Runs one download; `observe` sees the mode once and progress as pieces land.
pub fn get(
    request: &GetRequest,
    metadata: &dyn MetadataSource,
    observe: &mut dyn FnMut(&Status),
) -> Result<Summary, GetError> {
    let started = Instant::now();
    let config = &request.config;
    let own_sources = request.sources.iter().map(|s| HttpUrl::parse(s)).collect::<Result<Vec<_>, _>>()?;
    let boxes = rank_boxes(&config.device_id, &request.id, &request.peers);
    // Peers are only looked up when P2P is possible; the boxes can serve the hash file.
    let found = gather(&request.id, metadata, &boxes, &request.tls, config);
    let manifest = found.manifest.clone();
    let manifest_sources = manifest_urls(manifest.as_ref());
    let mut http: Vec<HttpUrl> = manifest_sources;
    for url in own_sources {
        if !http.contains(&url) {
            http.push(url);
        }
    }
    let (mode_reason, hashes) = match &found.mode {
        Mode::P2p { hashes } => (None, Some(hashes)),
        Mode::Simple { reason } => (Some(reason.clone()), None),
    };
    observe(&Status::Mode { mode: found.mode.name(), reason: mode_reason.as_ref().map(ToString::to_string) });
    let mut sources = Vec::new();
    let (content_length, piece_size) = match hashes {
        Some(hashes) => {
            let peers = metadata.peers(&request.id, &request.group).unwrap_or_else(|failure| {
                tracing::warn!(%failure, "peer matching failed; using --peer and HTTP sources");
                Vec::new()
            });
            sources.extend(boxes.iter().copied().map(SourceSpec::Box));
            let mut seen = boxes.clone();
            for peer in peers {
                if !seen.contains(&peer) {
                    seen.push(peer);
                    sources.push(SourceSpec::Peer(peer));
                }
            }
            (hashes.content_length(), u64::from(hashes.piece_size().bytes()))
        }
        None => {
            let reason = mode_reason.as_ref().expect("simple mode has a reason");
            if http.is_empty() {
                if matches!(reason, SimpleReason::NoManifest) {
                    return Err(GetError::NotFound {
                        id: request.id.to_string(),
                        detail: "the metadata service has no such content and no --source was given".into(),
                    });
                }
                return Err(GetError::NoHttpSource { reason: reason.to_string() });
            }
            let length = match &manifest {
                Some(manifest) => manifest.content_length,
                None => probe_length(&request.id, &mut http, &request.tls, config)?,
            };
            (length, u64::from(config.simple_chunk_bytes.max(1)))
        }
    };
    sources.extend(http.into_iter().map(SourceSpec::Http));
    if sources.is_empty() {
        // Before any file is made: nothing could be asked.
        return Err(GetError::NotFound { id: request.id.to_string(), detail: NO_SOURCE.into() });
    }
    let piece_count = content_length.div_ceil(piece_size);
    let resume = match (hashes, &manifest) {
        (Some(hashes), Some(manifest)) => Some((
            Identity {
                content_id: request.id.to_string(),
                content_length,
                piece_size: piece_size as u32,
                hashfile_sha256: manifest.hashfile_sha256.clone(),
            },
            hashes,
        )),
        _ => None,
    };
    let expected = match request.sha256 {
        Some(digest) => Some(digest),
        None => manifest.as_ref().and_then(|m| m.whole_digest().ok().flatten()),
    };
    let layout = Layout {
        content_length,
        piece_size,
        save_every: config.progress_save_pieces,
        queue_tasks: config.verify_queue_pieces,
        whole_sha256: expected.is_some(),
    };
    let mut output = Output::open(&request.output, layout, resume)?;
    let pieces_resumed = output.verified_pieces().count() as u64;
    let job = Job { id: &request.id, content_length, piece_size, hashes, sources, config, tls: request.tls.clone() };
    let report = driver::run(&job, &mut output, &mut |progress| observe(&Status::Progress(*progress)))?;
    let banned = report.sources.iter().filter(|s| s.banned).map(|s| s.source.clone()).collect();
    let mut summary = Summary {
        content_id: request.id.to_string(),
        output: request.output.clone(),
        mode: found.mode.name(),
        mode_reason: mode_reason.map(|r| r.to_string()),
        hashfile_origin: found.hashfile_origin.clone(),
        content_length,
        piece_size,
        pieces: piece_count,
        pieces_resumed,
        sha256: None,
        duration_ms: started.elapsed().as_millis() as u64,
        sources: report.sources,
        banned,
    };
    if let Outcome::Exhausted { piece, why } = report.outcome {
        let missing_everywhere = summary.sources.iter().all(|s| s.pieces == 0 && s.bad_pieces == 0);
        let detail = format!("{} source(s) tried; the partial file is kept for a resume", summary.sources.len());
        let why = match why {
            Exhaustion::NoSource => "has no usable source left",
            Exhaustion::TooManyFailures => "failed too many times",
        };
        if missing_everywhere && summary.sources.iter().all(|s| s.failures == 0 && s.timeouts == 0) {
            return Err(GetError::NotFound { id: request.id.to_string(), detail: "no source has it".into() });
        }
        return Err(GetError::Exhausted { piece, why, detail, summary: Box::new(summary) });
    }
    summary.sha256 = output.finish(expected)?.map(hex::encode);
    summary.duration_ms = started.elapsed().as_millis() as u64;
    Ok(summary)
}

/// Why a verified content cannot be downloaded from anywhere: no `--peer`, no peer matched, no
/// HTTP source. The usual case is a box asked right after it filled the content, before its
/// announce (within [`crate::appliance::announcer::TRIGGERED_GAP`]) reached the service.
const NO_SOURCE: &str = "no source: the service matched no peer holding it and its manifest names no HTTP \
     source; a box announces what it fills within seconds, so try again, or give --peer HOST:PORT or --source URL";

/// What the download is doing, for the progress bar.
#[derive(Debug, Clone)]
pub enum Status {
    /// The mode was decided.
    Mode { mode: &'static str, reason: Option<String> },
    /// Pieces landed.
    Progress(Progress),
}

/// The boxes in rendezvous order for this device and content, each once: the primary first.
fn rank_boxes(device_id: &str, id: &ContentId, boxes: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut unique: Vec<SocketAddr> = Vec::with_capacity(boxes.len());
    for address in boxes {
        if !unique.contains(address) {
            unique.push(*address);
        }
    }
    let names: Vec<String> = unique.iter().map(ToString::to_string).collect();
    let ranked: Vec<SocketAddr> =
        rendezvous::rank(device_id, id.as_str(), &names).into_iter().map(|i| unique[i]).collect();
    if ranked.len() > 1 {
        tracing::info!(device = device_id, content = %id, boxes = ?ranked, "boxes ranked: the first serves, the next takes over");
    }
    ranked
}

fn manifest_urls(manifest: Option<&Manifest>) -> Vec<HttpUrl> {
    let Some(manifest) = manifest else { return Vec::new() };
    manifest
        .sources
        .iter()
        .filter_map(|text| HttpUrl::parse(text).map_err(|e| tracing::warn!(error = %e, "manifest source ignored")).ok())
        .collect()
}

/// The content length from the first HTTP source that answers a HEAD (Simple mode without manifest).
fn probe_length(
    id: &ContentId,
    sources: &mut [HttpUrl],
    tls: &Arc<ClientConfig>,
    config: &DownloadConfig,
) -> Result<u64, GetError> {
    let limits = FetchLimits { timeout_ms: config.metadata_timeout_ms, body_bytes_max: 0 };
    let mut failures = Vec::new();
    let mut not_found = 0;
    for url in sources.iter_mut() {
        match fetch(url, "HEAD", tls, limits) {
            Ok(fetched) if fetched.head.status == 200 => {
                if let Some(length) = fetched.head.content_length {
                    // Range requests go where the redirects ended.
                    *url = fetched.url;
                    return Ok(length);
                }
                failures.push(format!("{url}: no Content-Length"));
            }
            Ok(fetched) if matches!(fetched.head.status, 404 | 410) => not_found += 1,
            Ok(fetched) => failures.push(format!("{url}: HTTP {}", fetched.head.status)),
            Err(error) => failures.push(error.to_string()),
        }
    }
    if not_found == sources.len() {
        return Err(GetError::NotFound { id: id.to_string(), detail: "every HTTP source answered 404".into() });
    }
    let summary = Summary {
        content_id: id.to_string(),
        output: PathBuf::new(),
        mode: "simple",
        mode_reason: None,
        hashfile_origin: None,
        content_length: 0,
        piece_size: 0,
        pieces: 0,
        pieces_resumed: 0,
        sha256: None,
        duration_ms: 0,
        sources: Vec::new(),
        banned: Vec::new(),
    };
    Err(GetError::Exhausted {
        piece: 0,
        why: "has no usable source left",
        detail: format!("no HTTP source gave the content length: {}", failures.join("; ")),
        summary: Box::new(summary),
    })
}
