//! `tessera load swarm`: arguments, the live line and the summary (text or JSON).

use std::io::{IsTerminal, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::cli::CliError;
use crate::content::ContentId;
use crate::load::swarm::liar::LieKind;
use crate::load::swarm::{self, Progress, SwarmError, SwarmOptions, SwarmSummary};
use crate::tls::TlsClientOptions;

/// Arguments of `tessera load swarm`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Every device runs what `tessera get` runs (manifest over TLS, hash file, peer matching, pieces
verified against the hash file) and its output is checked against the hash file again; liars
announce themselves to the service with the announce token, so devices are handed to them.
Liar kinds: bit-flip, wrong-piece, short-body (half a piece), stall (never answers: timed out and
dropped, not banned), good-then-bad (honest for --honest-pieces per connection, then bit flips).
The run fails (exit 1) if any download failed or any bad byte was accepted.

Examples:
  tessera load swarm --service https://127.0.0.1:7443 --ca data/tls/ca.pem --content demo --token-file data/announce.token
  tessera load swarm --service https://box:7443 --ca ca.pem --content kb5031445 --devices 200 --concurrency 16 --liars 4 --liar-kinds bit-flip,good-then-bad --token-file announce.token --json
  tessera load swarm --service https://box:7443 --ca ca.pem --peer box:7680 --content demo --devices 50 --liars 0")]
pub struct SwarmArgs {
    /// Metadata service (`https://HOST:PORT`): a box's embedded one or a fleet's.
    #[arg(long, value_name = "URL")]
    pub service: String,
    /// CA certificate(s) (PEM) that sign the service's certificate.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Pin the service's key: SHA-256 of its SubjectPublicKeyInfo (64 hex digits).
    #[arg(long, value_name = "HEX")]
    pub pin_sha256: Option<String>,
    /// A peer every device uses besides the matched ones, as `get --peer` (repeatable): a cache
    /// box's data plane, which fills what it lacks from its upstream.
    #[arg(long = "peer", value_name = "HOST:PORT")]
    pub peers: Vec<String>,
    /// The content every device downloads.
    #[arg(long, value_name = "ID")]
    pub content: String,
    /// Devices, each one download.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub devices: u64,
    /// Downloads at once (each a client loop with its verifier thread); default two per allowed CPU.
    #[arg(long, value_name = "C")]
    pub concurrency: Option<usize>,
    /// Lying peers.
    #[arg(long, value_name = "M", default_value_t = 2)]
    pub liars: usize,
    /// How the liars lie, comma-separated, given to the liars in turn.
    #[arg(
        long,
        value_name = "KINDS",
        value_delimiter = ',',
        default_value = "bit-flip,wrong-piece,short-body,stall,good-then-bad"
    )]
    pub liar_kinds: Vec<String>,
    /// Pieces a good-then-bad liar answers honestly on each connection before it lies.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub honest_pieces: u64,
    /// Address the liars listen on (and announce); the ports are chosen by the kernel.
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    pub liar_ip: IpAddr,
    /// Connections one liar holds at most.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub liar_connections: usize,
    /// The service's announce token file (its `announce.token`); default `[announce] token_file` of --config.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Peer-matching group of the devices and liars.
    #[arg(long, value_name = "G", default_value = "default")]
    pub group: String,
    /// The devices' `--ban-after` and `--backend`.
    #[command(flatten)]
    pub download: super::get_cmd::DownloadFlags,
    /// Configuration file (TOML): the devices' `[download]` limits, the liars' `[announce] token_file`.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory for the devices' outputs (each removed once checked); default the temp dir.
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Keep every completed output (`device-N.bin`, in a directory the summary names).
    #[arg(long)]
    pub keep_outputs: bool,
}

/// Runs `tessera load swarm`; `json` prints the summary as JSON.
pub fn run(args: SwarmArgs, json: bool) -> Result<(), CliError> {
    let options = options(&args)?;
    let live = !json && std::io::stderr().is_terminal();
    let mut last_line = Instant::now();
    let mut observe = |progress: &Progress| {
        if live && (last_line.elapsed() >= Duration::from_secs(1) || progress.done == progress.devices) {
            last_line = Instant::now();
            eprintln!(
                "  {}/{} devices done, {} failed, {} bans, {} bad bytes accepted",
                progress.done, progress.devices, progress.failed, progress.bans_seen, progress.bad_bytes_accepted
            );
        }
    };
    let summary = swarm::run(&options, &mut observe).map_err(swarm_error)?;
    let mut out = std::io::stdout();
    let printed = if json {
        writeln!(out, "{}", serde_json::to_string(&summary).expect("summary serializes"))
    } else {
        print_summary(&mut out, &summary)
    };
    printed.map_err(|e| CliError::Other(format!("printing the summary: {e}")))?;
    if summary.bad_bytes_accepted > 0 {
        return Err(CliError::Other(format!("{} bad bytes were accepted", summary.bad_bytes_accepted)));
    }
    if summary.failed > 0 {
        return Err(CliError::Other(format!("{} of {} downloads failed", summary.failed, summary.devices)));
    }
    Ok(())
}

fn options(args: &SwarmArgs) -> Result<SwarmOptions, CliError> {
    let content = ContentId::parse(&args.content).map_err(|e| CliError::Usage(format!("--content: {e}")))?;
    let liar_kinds = args
        .liar_kinds
        .iter()
        .map(|kind| LieKind::parse(kind))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CliError::Usage(format!("--liar-kinds: {e}")))?;
    let config = crate::config::Config::load(args.config.as_deref())?;
    let mut download = config.download;
    let token_file = args.token_file.clone().or(config.announce.token_file);
    args.download.apply(&mut download)?;
    if let Some(path) = &token_file {
        if !path.is_file() {
            let option = if args.token_file.is_some() { "--token-file" } else { "[announce] token_file" };
            return Err(CliError::Usage(format!("{option} {}: no such file", path.display())));
        }
    }
    let peers = args.peers.iter().map(|peer| super::get_cmd::resolve_peer(peer)).collect::<Result<Vec<_>, _>>()?;
    let cpus = crate::io::sys::allowed_cpus().len();
    Ok(SwarmOptions {
        service_url: args.service.clone(),
        tls: TlsClientOptions {
            ca_file: args.ca.clone(),
            pin_spki_sha256: args.pin_sha256.clone(),
            timeout_ms: download.metadata_timeout_ms,
            response_bytes_max: download.metadata_bytes_max,
        },
        content,
        group: args.group.clone(),
        peers,
        devices: args.devices,
        concurrency: args.concurrency.unwrap_or(2 * cpus.max(1)),
        liar_kinds,
        liars: args.liars,
        honest_pieces: args.honest_pieces,
        liar_ip: args.liar_ip,
        liar_connections_max: args.liar_connections,
        token_file,
        work_dir: args.work_dir.clone(),
        keep_outputs: args.keep_outputs,
        download,
    })
}

fn swarm_error(error: SwarmError) -> CliError {
    match error {
        // `Service` comes only from setting the client up: a bad URL or CA file.
        SwarmError::Usage(_) | SwarmError::Service { .. } | SwarmError::Token(_) | SwarmError::WorkDir { .. } => {
            CliError::Usage(error.to_string())
        }
        other => CliError::Other(other.to_string()),
    }
}

fn print_summary(out: &mut dyn Write, summary: &SwarmSummary) -> std::io::Result<()> {
    writeln!(
        out,
        "swarm of {} devices ({} at once) on {} ({} bytes, {} pieces), {:.2} s",
        summary.devices,
        summary.concurrency,
        summary.content_id,
        summary.content_length,
        summary.pieces,
        summary.duration_s
    )?;
    writeln!(
        out,
        "  downloads  {} completed, {} failed, {} in Simple mode; {:.2} MB/s",
        summary.completed,
        summary.failed,
        summary.simple_mode,
        summary.bytes_per_s / 1e6
    )?;
    let p = &summary.download_ms;
    writeln!(out, "  time per download (ms)  p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}", p.p50, p.p90, p.p99, p.max)?;
    writeln!(out, "  bans seen  {}   bad bytes accepted  {}", summary.bans_seen, summary.bad_bytes_accepted)?;
    for liar in &summary.liars {
        writeln!(
            out,
            "  liar {:<21} {:<13} {:>6} requests {:>6} lies {:>5} honest {:>5} held  banned by {} dropped by {}",
            liar.address,
            liar.kind.name(),
            liar.requests,
            liar.lies,
            liar.honest,
            liar.held,
            liar.banned_by,
            liar.dropped_by
        )?;
    }
    for error in &summary.errors {
        writeln!(out, "  {error}")?;
    }
    if let Some(dir) = &summary.outputs_dir {
        writeln!(out, "  outputs kept in {}", dir.display())?;
    }
    Ok(())
}
