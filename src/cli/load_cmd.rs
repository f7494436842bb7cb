//! `tessera load`: arguments, the live line, the summary (text or JSON) and the files.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use crate::cli::CliError;
use crate::config::BackendChoice;
use crate::content::ContentId;
use crate::download::ServiceMetadata;
use crate::load::schedule::{Pace, Stop};
use crate::load::svg::Curve;
use crate::load::target::{verified_hashes, Pieces};
use crate::load::{hgrm, svg, LoadOptions, Percentiles, Summary};
use crate::tls::TlsClientOptions;

/// Arguments of `tessera load`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
#[command(after_help = "Examples:
  tessera load http://127.0.0.1:7680/v1/content/demo --duration 30s --connections 64
  tessera load http://box:7680/v1/content/demo --rate 2000 --range-bytes 65536 --hgrm out.hgrm --svg out.svg
  tessera load swarm --service https://box:7443 --ca ca.pem --content demo --token-file announce.token

Without --rate the loop is closed (each connection sends when the last answer is in, like wrk).
With --rate it is open: requests leave on a fixed schedule and latency counts from the time a
request was meant to leave, so a stalled server shows in the percentiles (service time is
reported beside it).")]
pub struct LoadArgs {
    /// `swarm`: devices and lying peers instead of URLs.
    #[command(subcommand)]
    pub swarm: Option<LoadCommand>,
    /// URLs to load (http://), asked round-robin.
    #[arg(required = true, value_name = "URL")]
    pub urls: Vec<String>,
    /// Open loop at R requests per second in total; without it, a closed loop.
    #[arg(long, value_name = "R")]
    pub rate: Option<f64>,
    /// How long to send (e.g. 30s, 2m, 500ms).
    #[arg(long, value_name = "D", default_value = "10s", value_parser = humantime::parse_duration, conflicts_with = "requests")]
    pub duration: Duration,
    /// Send N requests in total instead of running for a duration.
    #[arg(long, value_name = "N")]
    pub requests: Option<u64>,
    /// Connections in total, spread over the threads.
    #[arg(long, value_name = "C", default_value_t = 10)]
    pub connections: usize,
    /// Threads, each pinned to a CPU with its own event loop (default: one per allowed CPU,
    /// at most one per connection).
    #[arg(long, value_name = "T")]
    pub threads: Option<usize>,
    /// Ask random byte ranges of N bytes of the (first) URL; its length comes from a HEAD first.
    #[arg(long, value_name = "N")]
    pub range_bytes: Option<u64>,
    /// A request not answered within D fails as a timeout (e.g. 10s).
    #[arg(long, value_name = "D", default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Ask the pieces of content ID over the piece API (`/v1/content/ID/piece/N`) of the servers
    /// the URLs name; its manifest and hash file come from --service first.
    #[arg(long, value_name = "ID", requires = "service")]
    pub content: Option<String>,
    /// Metadata service (`https://HOST:PORT`) for --content.
    #[arg(long, value_name = "URL", requires = "content")]
    pub service: Option<String>,
    /// CA certificate(s) (PEM) that sign the service's certificate (--content) and https URLs'
    /// certificates; default the system's roots.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// With --content: check every piece body against the hash file and count the mismatches.
    #[arg(long, requires = "content")]
    pub verify: bool,
    /// Event-loop backend: auto, uring or epoll.
    #[arg(long, value_name = "BACKEND", default_value = "auto")]
    pub backend: String,
    /// Write the corrected latency distribution to FILE in HdrHistogram's percentile text (.hgrm).
    #[arg(long, value_name = "FILE")]
    pub hgrm: Option<PathBuf>,
    /// Write a latency-by-percentile chart (both curves) to FILE as SVG.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long, global = true)]
    pub json: bool,
}

/// What `tessera load` runs instead of loading URLs.
#[derive(Debug, clap::Subcommand)]
pub enum LoadCommand {
    /// A site in one process: devices downloading a content as `tessera get` does, beside lying
    /// peers announced to the service; reports bans and the bad bytes accepted (must be 0).
    Swarm(Box<super::swarm_cmd::SwarmArgs>),
}

/// Runs `tessera load`.
pub fn run(args: LoadArgs) -> Result<(), CliError> {
    if let Some(LoadCommand::Swarm(swarm)) = args.swarm {
        return super::swarm_cmd::run(*swarm, args.json);
    }
    let options = options(&args)?;
    // The first Ctrl-C ends the run with its summary; a second one exits at once.
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 130, options.interrupt.clone())
            .and_then(|_| signal_hook::flag::register(signal, options.interrupt.clone()))
            .map_err(|e| CliError::Other(format!("cannot handle signal {signal}: {e}")))?;
    }
    let live = !args.json && std::io::stderr().is_terminal();
    let mut observe = |status: &crate::load::Live| {
        if live {
            eprintln!(
                "{:>5.0}s  {:>10.0} req/s  {:>8} errors  p99 {:.3} ms",
                status.elapsed_s, status.rate_per_s, status.errors, status.p99_ms
            );
        }
    };
    let report = crate::load::run(&options, &mut observe).map_err(load_error)?;
    if let Some(path) = &args.hgrm {
        write_file("--hgrm", path, hgrm::render(&report.recorder.corrected).as_bytes())?;
    }
    if let Some(path) = &args.svg {
        let curves = [
            Curve { histogram: &report.recorder.corrected, label: "corrected (from intended send)", colour: "#c0392b" },
            Curve { histogram: &report.recorder.service, label: "service time", colour: "#2471a3" },
        ];
        write_file("--svg", path, svg::render(&curves).as_bytes())?;
    }
    let mut out = std::io::stdout();
    let printed = if args.json {
        writeln!(out, "{}", serde_json::to_string(&report.summary).expect("summary serializes"))
    } else {
        print_summary(&mut out, &report.summary)
    };
    printed.map_err(|e| CliError::Other(format!("printing the summary: {e}")))?;
    if report.summary.requests == 0 {
        return Err(CliError::Other("no request was answered".into()));
    }
    Ok(())
}

fn options(args: &LoadArgs) -> Result<LoadOptions, CliError> {
    let backend = BackendChoice::parse(&args.backend)
        .ok_or_else(|| CliError::Usage(format!("--backend {:?}: use auto, uring or epoll", args.backend)))?;
    let cpus = crate::io::sys::allowed_cpus().len();
    Ok(LoadOptions {
        urls: args.urls.clone(),
        pace: match args.rate {
            Some(rate_per_s) => Pace::Open { rate_per_s },
            None => Pace::Closed,
        },
        stop: match args.requests {
            Some(count) => Stop::Requests { count },
            None => Stop::After { duration_ns: args.duration.as_nanos().min(u64::MAX as u128) as u64 },
        },
        connections: args.connections,
        threads: args.threads.unwrap_or_else(|| cpus.min(args.connections).max(1)),
        range_bytes: args.range_bytes,
        pieces: pieces(args)?,
        timeout: args.timeout,
        backend,
        ca_file: args.ca.clone(),
        interrupt: std::sync::Arc::default(),
    })
}

/// With `--content`: the content's hash file, from the service under rules 1 and 2 (manifest
/// over TLS, hash file checked against it), as `tessera get` has it.
fn pieces(args: &LoadArgs) -> Result<Option<Pieces>, CliError> {
    let (Some(id), Some(service)) = (&args.content, &args.service) else { return Ok(None) };
    let id = ContentId::parse(id).map_err(|e| CliError::Usage(format!("--content: {e}")))?;
    let config = crate::config::DownloadConfig::default();
    let options = TlsClientOptions {
        ca_file: args.ca.clone(),
        pin_spki_sha256: None,
        timeout_ms: config.metadata_timeout_ms,
        response_bytes_max: config.metadata_bytes_max,
    };
    let metadata = ServiceMetadata::new(service, options).map_err(|e| CliError::Usage(format!("--service: {e}")))?;
    match verified_hashes(&metadata, &id) {
        Ok(hashes) => Ok(Some(Pieces { id, hashes, verify: args.verify })),
        Err(reason) => Err(CliError::Other(format!("--content {id}: no verified hash file: {reason}"))),
    }
}

fn load_error(error: crate::load::LoadError) -> CliError {
    use crate::load::LoadError;
    match error {
        LoadError::Usage(_) | LoadError::Url(_) | LoadError::Request { .. } => CliError::Usage(error.to_string()),
        other => CliError::Other(other.to_string()),
    }
}

fn write_file(option: &str, path: &std::path::Path, bytes: &[u8]) -> Result<(), CliError> {
    std::fs::write(path, bytes).map_err(|e| CliError::Usage(format!("{option} {}: {e}", path.display())))
}

fn print_summary(out: &mut dyn Write, summary: &Summary) -> std::io::Result<()> {
    let rate = match summary.target_rate_per_s {
        Some(target) => format!("{:.1} req/s achieved, target {target:.1}", summary.achieved_rate_per_s),
        None => format!("{:.1} req/s", summary.achieved_rate_per_s),
    };
    writeln!(
        out,
        "{} loop, {} threads, {} connections, {:.2} s",
        summary.mode, summary.threads, summary.connections, summary.duration_s
    )?;
    writeln!(out, "  requests  {} ({rate}), {:.2} MB/s", summary.requests, summary.bytes_per_s / 1e6)?;
    if summary.target_rate_per_s.is_some() {
        writeln!(out, "  behind schedule  {} sends", summary.behind_schedule)?;
    }
    if summary.bad_pieces > 0 {
        writeln!(out, "  bad pieces  {} (bodies that do not match the hash file)", summary.bad_pieces)?;
    }
    let errors = &summary.errors;
    let status: Vec<String> = errors.status.iter().map(|(code, count)| format!("{code}: {count}")).collect();
    writeln!(
        out,
        "  errors    connect {}, timeout {}, read {}, status {{{}}}",
        errors.connect,
        errors.timeout,
        errors.read,
        status.join(", ")
    )?;
    writeln!(
        out,
        "  {:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "latency (ms)", "p50", "p90", "p99", "p99.9", "p99.99", "max"
    )?;
    print_row(out, "corrected", &summary.latency_ms)?;
    print_row(out, "service time", &summary.service_time_ms)
}

fn print_row(out: &mut dyn Write, name: &str, p: &Percentiles) -> std::io::Result<()> {
    writeln!(
        out,
        "  {name:<22} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
        p.p50, p.p90, p.p99, p.p99_9, p.p99_99, p.max
    )
}
