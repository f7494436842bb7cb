//! `tessera status`: a running box's status page, from its `/status.json`, for a shell on the box.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use indicatif::HumanBytes;

use crate::cli::CliError;
use crate::dataplane::status::{FillStatus, Status};
use crate::download::fetch::{fetch, FetchError, FetchLimits};
use crate::http::url::{HttpUrl, UrlError};

/// How long connecting and reading the answer may take, in milliseconds.
const TIMEOUT_MS: u64 = 5000;
/// Largest `/status.json` taken (a few hundred contents and sources fit in far less).
const STATUS_BYTES_MAX: u64 = 4 << 20;
/// Bars of the rate sparkline, lowest to highest.
const SPARKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// Arguments of `tessera status`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  tessera status
  tessera status --config /etc/tessera/tessera.toml
  tessera status --url http://10.0.0.5:7680 --json

The same data is on the box's status page (http://HOST:7680/ in a browser) and at /status.json.")]
pub struct StatusArgs {
    /// The box's data plane, `http://HOST:PORT` (default: the listen address of `--config`, or
    /// of the embedded config).
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// The box's configuration file, for its `[serve] listen` address.
    #[arg(long, value_name = "FILE", conflicts_with = "url")]
    pub config: Option<std::path::PathBuf>,
    /// Print the box's JSON as it gave it.
    #[arg(long)]
    pub json: bool,
}

/// Why the status could not be had; each names the URL.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    BadUrl(#[from] UrlError),
    #[error("cannot reach {url}: {source} (is `tessera serve` running there?)")]
    Unreachable { url: String, source: std::io::Error },
    #[error(transparent)]
    Fetch(FetchError),
    #[error("{url} answered {status}, not the status (is it a tessera data plane?)")]
    Status { url: String, status: u16 },
    #[error("{url} did not give a status this tessera reads: {source}")]
    Json { url: String, source: serde_json::Error },
}

/// Runs `tessera status`.
pub fn run(args: StatusArgs) -> Result<(), CliError> {
    let base = match &args.url {
        Some(url) => url.clone(),
        None => url_of(&crate::config::Config::load(args.config.as_deref())?.serve.listen),
    };
    let url = HttpUrl::parse(&base).and_then(|url| url.join("/status.json")).map_err(StatusError::from)?;
    let body = get_status(&url)?;
    let status: Status =
        serde_json::from_slice(&body).map_err(|source| StatusError::Json { url: url.as_str().to_string(), source })?;
    if args.json {
        println!("{}", String::from_utf8_lossy(&body).trim_end());
    } else {
        print!("{}", render(&status));
    }
    Ok(())
}

/// `http://` and a listen address (loopback for a wildcard address).
fn url_of(listen: &str) -> String {
    match listen.parse::<SocketAddr>() {
        Ok(mut address) if address.ip().is_unspecified() => {
            let loopback = if address.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() };
            address.set_ip(loopback);
            format!("http://{address}")
        }
        _ => format!("http://{listen}"),
    }
}

/// The body of a 200 answer to `GET url`.
fn get_status(url: &HttpUrl) -> Result<Vec<u8>, StatusError> {
    let tls = crate::tls::client::ca_client_config(None)
        .map_err(|error| StatusError::Fetch(FetchError::Tls { url: url.to_string(), reason: error.to_string() }))?;
    let limits = FetchLimits { timeout_ms: TIMEOUT_MS, body_bytes_max: STATUS_BYTES_MAX };
    let fetched = fetch(url, "GET", &tls, limits).map_err(|error| match error {
        FetchError::Connect { url, source } => StatusError::Unreachable { url, source },
        error => StatusError::Fetch(error),
    })?;
    if fetched.head.status != 200 {
        return Err(StatusError::Status { url: url.to_string(), status: fetched.head.status });
    }
    Ok(fetched.body)
}

/// The status as lines for a terminal.
fn render(status: &Status) -> String {
    let mut out = String::new();
    let uptime = humantime::format_duration(Duration::from_secs(status.uptime_s));
    let _ = writeln!(out, "tessera {} · {} · up {uptime}", status.version, status.role);
    let _ = writeln!(
        out,
        "backend: {}, {} workers · connections open: {}",
        status.backend, status.workers, status.connections_open
    );
    let (cache, store) = (&status.cache, &status.store);
    let _ = writeln!(
        out,
        "requests: {} · bytes served: {} ({}) · hits: {} · misses: {} · bans in force: {}",
        status.requests_total,
        HumanBytes(status.bytes_sent_total),
        status.bytes_sent_total,
        cache.hits,
        cache.misses,
        status.bans_in_force
    );
    let _ = writeln!(
        out,
        "store: {} pieces ({}) · slabs {} of {} · age limit {} · evictions: {}",
        store.pieces,
        HumanBytes(store.piece_bytes),
        HumanBytes(store.slab_bytes),
        HumanBytes(store.size_bytes_max),
        humantime::format_duration(Duration::from_secs(store.age_s_max)),
        store.evictions_total
    );
    let rate = &status.request_rate;
    let minutes = (rate.period_s * rate.counts.len() as u64).div_ceil(60);
    let _ = writeln!(out, "requests per {} s, last {minutes} min: {}", rate.period_s, sparkline(&rate.counts));
    let _ = writeln!(out, "contents: {}", status.contents_total);
    for content in &status.contents {
        let _ = writeln!(
            out,
            "  {:<32} {:>12}  {} of {} pieces held  {:>12} held",
            content.id,
            HumanBytes(content.length_bytes).to_string(),
            content.pieces_held,
            content.pieces,
            HumanBytes(content.bytes_held).to_string()
        );
    }
    if let Some(fill) = &status.fill {
        upstream(&mut out, fill);
    }
    out
}

fn upstream(out: &mut String, fill: &FillStatus) {
    let health = match fill.service.reachable() {
        None => "not asked yet".to_string(),
        Some(true) => "answering".to_string(),
        Some(false) => format!("failing: {}", fill.service.last_failure.as_deref().unwrap_or("")),
    };
    let _ = writeln!(out, "upstream: {} ({health})", fill.service_url);
    let _ = writeln!(
        out,
        "  fills in flight: {} · piece fetches: {} · waiting: {} · bans in force: {} (ever: {})",
        fill.fills_in_flight, fill.pieces_in_flight, fill.waiters, fill.bans_in_force, fill.bans_total
    );
    for source in &fill.sources {
        let state = if source.banned { "banned" } else { "in use" };
        let _ = writeln!(
            out,
            "  {:<32} {:>12} verified  {} bad pieces  {state}",
            source.name,
            HumanBytes(source.bytes).to_string(),
            source.bad_pieces
        );
    }
}

/// One bar per count, scaled to the largest.
fn sparkline(counts: &[u64]) -> String {
    let peak = counts.iter().copied().max().unwrap_or(0).max(1);
    let top = SPARKS.len() as u64 - 1;
    counts.iter().map(|&count| SPARKS[(count * top).div_ceil(peak) as usize]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_is_the_listen_address_with_loopback_for_a_wildcard() {
        let listen = crate::config::Config::default().serve.listen;
        assert_eq!(url_of(&listen), format!("http://{listen}"));
        assert_eq!(url_of("0.0.0.0:7680"), "http://127.0.0.1:7680");
        assert_eq!(url_of("[::]:7680"), "http://[::1]:7680");
        assert_eq!(url_of("box.example:7680"), "http://box.example:7680");
    }

    #[test]
    fn a_cache_box_is_shown_with_its_upstream_and_sources() {
        let text = render(&crate::dataplane::status::example::status("pkg-1"));
        for shown in [
            "tessera 0.1.0 · cache box · up 1h 2m 3s",
            "hits: 30 · misses: 10 · bans in force: 1",
            "contents: 1",
            "pkg-1",
            "2 of 3 pieces held",
            "upstream: https://seed.example:7443 (failing: refused <x>)",
            "evil\"<peer>",
            "banned",
        ] {
            assert!(text.contains(shown), "{shown:?} missing from\n{text}");
        }
    }

    #[test]
    fn the_sparkline_scales_to_the_peak() {
        assert_eq!(sparkline(&[0, 1, 7, 14]), "▁▂▅█");
        assert_eq!(sparkline(&[0, 0]), "▁▁");
    }
}
