//! `tessera get`: download one content under the Delivery Optimization rules.

use std::io::{IsTerminal, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::CliError;
use crate::config::{BackendChoice, DownloadConfig};
use crate::content::manifest::parse_digest;
use crate::content::ContentId;
use crate::download::output::STDOUT_PATH;
use crate::download::{
    get, prometheus, GetError, GetRequest, MetadataSource, NoService, ServiceMetadata, Status, Summary,
};
use crate::tls::{ca_client_config, TlsClientOptions};

/// Arguments of `tessera get`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  tessera get kb5031445 --service https://seed.example:7443 --ca ca.pem -o update.cab
  tessera get iso-2026-11 --peer 10.0.0.5:7680 --source https://origin.example/big.iso -o big.iso
  tessera get pkg --service https://box1:7443 --service https://box2:7443 --peer box1:7680 --peer box2:7680 -o pkg")]
pub struct GetArgs {
    /// Content id: [A-Za-z0-9._-]{1,128}.
    pub id: String,
    /// Metadata service, `https://HOST:PORT`; repeatable (the services of a site's boxes, ranked
    /// per content by rendezvous hashing, the next asked when one fails). Without it the
    /// download runs in Simple mode.
    #[arg(long = "service", value_name = "URL")]
    pub services: Vec<String>,
    /// CA certificate(s) (PEM) that sign the service's and https sources' certificates.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Pin the service's key: SHA-256 of its SubjectPublicKeyInfo (64 hex digits, as `cert init` prints).
    #[arg(long, value_name = "HEX")]
    pub pin_sha256: Option<String>,
    /// Peer-matching group.
    #[arg(long, value_name = "G", default_value = "default")]
    pub group: String,
    /// One of the site's boxes (its data plane), repeatable: ranked per content by rendezvous
    /// hashing of `[download] device_id` and the content id, the first serves the download and
    /// the next takes over when it fails; matched peers are used besides.
    #[arg(long = "peer", value_name = "HOST:PORT")]
    pub peers: Vec<String>,
    /// An HTTP(S) URL of the content: the Simple-mode source, and a fallback in P2P mode (repeatable).
    #[arg(long = "source", value_name = "URL")]
    pub sources: Vec<String>,
    /// Where to write the content: a file (written beside as FILE.tessera-partial, renamed when
    /// verified), `-` for stdout, or a FIFO or device (written in order, no resume).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
    /// Expected SHA-256 of the whole file (64 hex digits); checked before the file appears.
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    #[command(flatten)]
    pub download: DownloadFlags,
    /// Configuration file (TOML) for the `[download]` limits.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Also write the outcome (mode, bytes, bad pieces and bans per source) as Prometheus text to
    /// FILE, for node_exporter's textfile collector; written on failure too.
    #[arg(long, value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,
    /// Print a JSON summary at the end instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `tessera get`.
pub fn run(args: GetArgs) -> Result<(), CliError> {
    let id = ContentId::parse(&args.id).map_err(|e| CliError::Usage(format!("ID: {e}")))?;
    let mut config = crate::config::Config::load(args.config.as_deref())?.download;
    args.download.apply(&mut config)?;
    let sha256 = match &args.sha256 {
        Some(hex) => Some(parse_digest("--sha256", hex).map_err(|e| CliError::Usage(e.to_string()))?),
        None => None,
    };
    let peers = args.peers.iter().map(|peer| resolve_peer(peer)).collect::<Result<Vec<_>, _>>()?;
    if config.device_id.is_empty() {
        config.device_id = host_name();
    }
    let tls = ca_client_config(args.ca.as_deref()).map_err(|e| CliError::Usage(format!("--ca: {e}")))?;
    let metadata: Box<dyn MetadataSource> = if args.services.is_empty() {
        Box::new(NoService)
    } else {
        let options = TlsClientOptions {
            ca_file: args.ca.clone(),
            pin_spki_sha256: args.pin_sha256.clone(),
            timeout_ms: config.metadata_timeout_ms,
            response_bytes_max: config.metadata_bytes_max,
        };
        let service = ServiceMetadata::ranked(&args.services, &config.device_id, options)
            .map_err(|e| CliError::Usage(format!("--service: {e}")))?;
        Box::new(service)
    };
    let request = GetRequest {
        id,
        group: args.group.clone(),
        peers,
        sources: args.sources.clone(),
        output: args.output.clone(),
        sha256,
        config,
        tls,
    };
    let show_bar = !args.json && std::io::stderr().is_terminal();
    let bar = ProgressBar::hidden();
    if show_bar {
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {prefix}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
    }
    let mut mode_name = "";
    let mut observe = |status: &Status| match status {
        Status::Mode { mode, reason } => {
            mode_name = mode;
            if let Some(reason) = reason {
                if !args.json {
                    eprintln!("tessera: Simple mode: {reason}");
                }
            }
            bar.set_message(format!("{} ({mode})", request.id));
        }
        Status::Progress(progress) => {
            bar.set_length(progress.bytes_total);
            bar.set_position(progress.bytes_done);
            bar.set_prefix(format!("peers {} banned {}", progress.peers_in_use, progress.peers_banned));
        }
    };
    let result = get(&request, &*metadata, &mut observe);
    bar.finish_and_clear();
    if let Some(path) = &args.metrics_file {
        let text = match &result {
            Ok(summary) => prometheus::render(request.id.as_str(), Some(summary), true),
            Err(GetError::Exhausted { summary, .. }) => prometheus::render(request.id.as_str(), Some(summary), false),
            Err(_) => prometheus::render(request.id.as_str(), None, false),
        };
        if let Err(error) = crate::catalog::write_atomically(path, text.as_bytes()) {
            eprintln!("tessera: --metrics-file: {error}");
        }
    }
    let summary = result?;
    // With `-o -` stdout carries the content: the summary goes to stderr.
    let mut out: Box<dyn Write> =
        if args.output.as_os_str() == STDOUT_PATH { Box::new(std::io::stderr()) } else { Box::new(std::io::stdout()) };
    let printed = if args.json {
        writeln!(out, "{}", serde_json::to_string(&summary).expect("summary serializes"))
    } else {
        print_summary(&mut out, &summary)
    };
    printed.map_err(|e| CliError::Other(format!("printing the summary: {e}")))
}

/// This machine's host name: the device id when `[download] device_id` is empty. It is stable
/// across runs and differs between the devices of a site, which is all the ranking needs.
fn host_name() -> String {
    crate::io::sys::host_name().unwrap_or_else(|| {
        tracing::warn!("no host name: set [download] device_id to spread devices over boxes");
        "unnamed-device".into()
    })
}

/// The `[download]` overrides `get` and `load swarm` share.
#[derive(Debug, clap::Args)]
pub struct DownloadFlags {
    /// Bad pieces after which a peer is banned (overrides the config).
    #[arg(long, value_name = "N")]
    pub ban_after: Option<u32>,
    /// Event-loop backend: auto, uring or epoll (overrides `[download] backend`).
    #[arg(long, value_name = "BACKEND")]
    pub backend: Option<String>,
}

impl DownloadFlags {
    /// Puts the flags given over `config`; a bad value is named.
    pub(super) fn apply(&self, config: &mut DownloadConfig) -> Result<(), CliError> {
        if let Some(count) = self.ban_after {
            if count == 0 {
                return Err(CliError::Usage("--ban-after: must be at least 1".into()));
            }
            config.ban_after_bad_pieces = count;
        }
        if let Some(backend) = &self.backend {
            config.backend = BackendChoice::parse(backend)
                .ok_or_else(|| CliError::Usage(format!("--backend {backend:?}: use auto, uring or epoll")))?;
        }
        Ok(())
    }
}

/// `HOST:PORT` of a `--peer`, resolved (the first address).
pub(super) fn resolve_peer(text: &str) -> Result<SocketAddr, CliError> {
    text.to_socket_addrs()
        .map_err(|e| CliError::Usage(format!("--peer {text:?}: {e}")))?
        .next()
        .ok_or_else(|| CliError::Usage(format!("--peer {text:?}: no address")))
}

fn print_summary(out: &mut dyn Write, summary: &Summary) -> std::io::Result<()> {
    writeln!(
        out,
        "got {} ({} bytes) in {} ms, {} mode{}",
        summary.content_id,
        summary.content_length,
        summary.duration_ms,
        summary.mode,
        summary.mode_reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default()
    )?;
    for source in &summary.sources {
        writeln!(
            out,
            "  {:<5} {:<40} {:>12} bytes {:>6} pieces {:>4} bad{}",
            source.kind,
            source.source,
            source.bytes,
            source.pieces,
            source.bad_pieces,
            if source.banned { "  BANNED" } else { "" }
        )?;
    }
    if let Some(digest) = &summary.sha256 {
        writeln!(out, "  sha256 {digest} verified")?;
    }
    Ok(())
}
