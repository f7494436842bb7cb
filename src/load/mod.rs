//! `tessera load`: an HTTP load generator on the ring layer, thread-per-core.
//!
//! Closed loop (as fast as the server answers, like wrk) or open loop at a fixed total rate,
//! with latency measured from each request's *intended* send time (the coordinated-omission
//! correction wrk2 makes) and the raw service time, both in HDR histograms.
//!
//! - [`schedule`]: when each request is meant to leave, split exactly over threads (sans-I/O);
//! - [`record`]: the histograms, counts and errors; the [`Summary`];
//! - [`target`]: the URLs and their request bytes, random ranges;
//! - [`worker`]: one thread's loop over `io::client::ClientLoop` and `http::client::Connection`;
//! - [`hgrm`] and [`svg`]: the percentile distribution text and the chart;
//! - [`swarm`]: `tessera load swarm`, devices running `get`'s workflow beside lying peers.

pub mod hgrm;
pub mod record;
pub mod schedule;
pub mod svg;
pub mod swarm;
pub mod target;
pub mod worker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::BackendChoice;
pub use record::{Errors, Percentiles, Recorder, Summary};
use schedule::{Pace, Stop};
use target::Plan;
use worker::{Finished, Setup, Tick};

/// Connections per run at most (over every thread).
pub const CONNECTIONS_MAX: usize = 65_536;
/// Threads per run at most.
pub const THREADS_MAX: usize = 1024;
/// How often the caller hears how the run goes.
const LIVE_INTERVAL: Duration = Duration::from_secs(1);

/// Why a run could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Url(#[from] crate::http::url::UrlError),
    #[error("cannot build the request for {url}: {reason}")]
    Request { url: String, reason: String },
    #[error("HEAD {url} (for --range-bytes) failed: {reason}")]
    Head { url: String, reason: String },
    #[error(transparent)]
    Client(#[from] crate::io::client::ClientError),
    #[error("cannot start load thread {index}: {source}")]
    Thread { index: usize, source: std::io::Error },
    #[error("load thread {0} panicked")]
    Panicked(usize),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub urls: Vec<String>,
    pub pace: Pace,
    pub stop: Stop,
    pub connections: usize,
    pub threads: usize,
    pub range_bytes: Option<u64>,
    /// `--content`: ask the pieces of one content over the piece API.
    pub pieces: Option<target::Pieces>,
    /// A request not answered (or a connect not done) within this fails.
    pub timeout: Duration,
    pub backend: BackendChoice,
    /// CA certificate(s) (PEM) that https URLs' certificates are checked against; `None`: the
    /// system's roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// Set (by a Ctrl-C handler) to end the run early: no new sends, the ones in flight are
    /// waited for (within the timeout), and the summary covers what was done.
    pub interrupt: Arc<AtomicBool>,
}

/// How the run goes, once a second.
#[derive(Debug, Clone, Copy)]
pub struct Live {
    pub elapsed_s: f64,
    /// Responses in the last interval, per second.
    pub rate_per_s: f64,
    pub responses: u64,
    pub errors: u64,
    /// p99 of the corrected latency so far (the highest over threads), ms.
    pub p99_ms: f64,
}

/// The run's measurements and its summary.
pub struct Report {
    pub recorder: Recorder,
    pub summary: Summary,
}

impl LoadOptions {
    fn check(&self) -> Result<(), LoadError> {
        let usage = |text: String| Err(LoadError::Usage(text));
        if self.threads == 0 || self.threads > THREADS_MAX {
            return usage(format!("--threads {}: use 1 to {THREADS_MAX}", self.threads));
        }
        if self.connections < self.threads || self.connections > CONNECTIONS_MAX {
            return usage(format!(
                "--connections {}: use at least one per thread ({}) and at most {CONNECTIONS_MAX}",
                self.connections, self.threads
            ));
        }
        if let Pace::Open { rate_per_s } = self.pace {
            if !(rate_per_s.is_finite() && rate_per_s > 0.0) {
                return usage(format!("--rate {rate_per_s}: must be a positive number"));
            }
        }
        if matches!(self.stop, Stop::Requests { count: 0 } | Stop::After { duration_ns: 0 }) {
            return usage("--duration / --requests must be more than 0".into());
        }
        if self.timeout.is_zero() {
            return usage("--timeout must be more than 0".into());
        }
        Ok(())
    }
}

/// Runs the load; `observe` hears how it goes once a second.
pub fn run(options: &LoadOptions, observe: &mut dyn FnMut(&Live)) -> Result<Report, LoadError> {
    options.check()?;
    let tls = if options.urls.iter().any(|url| url.starts_with("https://")) {
        let config = crate::tls::client::ca_client_config(options.ca_file.as_deref())
            .map_err(|error| LoadError::Usage(format!("--ca: {error}")))?;
        Some(config)
    } else {
        None
    };
    let plan = Arc::new(Plan::new(&options.urls, options.range_bytes, options.pieces.as_ref(), options.timeout, tls)?);
    let cpus = crate::io::sys::allowed_cpus();
    let (ticks_in, ticks) = crossbeam_channel::bounded::<Tick>(options.threads * 4);
    let (ready_in, ready) = crossbeam_channel::bounded::<()>(options.threads);
    // Dropping `go_in` starts the threads (their `recv` returns); `abort` says not to run.
    let (go_in, go) = crossbeam_channel::bounded::<()>(0);
    let abort = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::with_capacity(options.threads);
    for thread_index in 0..options.threads {
        let setup = Setup {
            thread_index,
            thread_count: options.threads,
            connections: share(options.connections, options.threads, thread_index),
            plan: plan.clone(),
            pace: options.pace,
            stop: options.stop,
            timeout: options.timeout,
            backend: options.backend,
            cpu: (options.threads <= cpus.len()).then(|| cpus[thread_index]),
            ticks: ticks_in.clone(),
            ready: ready_in.clone(),
            go: go.clone(),
            abort: abort.clone(),
            interrupt: options.interrupt.clone(),
        };
        let spawned =
            std::thread::Builder::new().name(format!("load-{thread_index}")).spawn(move || worker::run(setup));
        match spawned {
            Ok(handle) => handles.push(handle),
            Err(source) => {
                abort.store(true, Ordering::SeqCst);
                drop(go_in);
                for handle in handles {
                    let _ = handle.join();
                }
                return Err(LoadError::Thread { index: thread_index, source });
            }
        }
    }
    drop((ticks_in, ready_in, go));
    // Every thread says ready once its connections are open (or it failed); a thread that
    // panicked drops its sender, which ends the wait too.
    for _ in 0..options.threads {
        if ready.recv().is_err() {
            break;
        }
    }
    drop(go_in);
    watch(&ticks, options.threads, Instant::now(), observe);
    let mut recorder = Recorder::default();
    let mut end_ns = 0;
    for (index, handle) in handles.into_iter().enumerate() {
        let Finished { recorder: thread_recorder, end_ns: thread_end_ns } =
            handle.join().map_err(|_| LoadError::Panicked(index))??;
        recorder.merge(&thread_recorder);
        end_ns = end_ns.max(thread_end_ns);
    }
    let target_rate_per_s = match options.pace {
        Pace::Open { rate_per_s } => Some(rate_per_s),
        Pace::Closed => None,
    };
    let summary = Summary::new(&recorder, target_rate_per_s, options.threads, options.connections, end_ns as f64 / 1e9);
    Ok(Report { recorder, summary })
}

/// Thread `index`'s share of `total` over `count` threads (the first ones get the remainder).
fn share(total: usize, count: usize, index: usize) -> usize {
    total / count + usize::from(index < total % count)
}

/// Hands `observe` the threads' totals once a second until every thread has ended (their
/// tick senders are dropped then).
fn watch(ticks: &crossbeam_channel::Receiver<Tick>, threads: usize, start: Instant, observe: &mut dyn FnMut(&Live)) {
    let mut latest = vec![None::<Tick>; threads];
    let mut shown = vec![None::<Tick>; threads];
    let mut next = start + LIVE_INTERVAL;
    loop {
        match ticks.recv_deadline(next) {
            Ok(tick) => latest[tick.thread_index] = Some(tick),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        }
        if Instant::now() < next {
            continue;
        }
        next += LIVE_INTERVAL;
        let seen = latest.iter().flatten();
        let live = Live {
            elapsed_s: start.elapsed().as_secs_f64(),
            rate_per_s: rate_per_s(&shown, &latest),
            responses: seen.clone().map(|t| t.responses).sum(),
            errors: seen.clone().map(|t| t.errors).sum(),
            p99_ms: seen.map(|t| t.p99_us).max().unwrap_or(0) as f64 / 1000.0,
        };
        shown.clone_from(&latest);
        observe(&live);
    }
}

/// Responses per second between two sets of the threads' reports: each thread's count over its
/// own interval, summed. A thread's reports carry their own times, so a line drawn just before
/// a report arrives shows the rate so far, not 0 then twice the rate (as counting the responses
/// since the last line over a fixed second did). A thread with no new report adds nothing.
fn rate_per_s(before: &[Option<Tick>], now: &[Option<Tick>]) -> f64 {
    before
        .iter()
        .zip(now)
        .filter_map(|(before, now)| {
            let now = now.as_ref()?;
            let (responses, at_ns) = before.as_ref().map_or((0, 0), |t| (t.responses, t.at_ns));
            (now.at_ns > at_ns)
                .then(|| now.responses.saturating_sub(responses) as f64 * 1e9 / (now.at_ns - at_ns) as f64)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(thread_index: usize, at_ms: u64, responses: u64) -> Option<Tick> {
        Some(Tick { thread_index, at_ns: at_ms * 1_000_000, responses, errors: 0, p99_us: 0 })
    }

    #[test]
    fn the_live_rate_follows_each_threads_own_report_times() {
        // Two threads at 1,000 and 3,000 responses per second, reporting at their own times.
        let before = [tick(0, 900, 900), tick(1, 950, 2_850)];
        let now = [tick(0, 1_900, 1_900), tick(1, 1_950, 5_850)];
        assert_eq!(rate_per_s(&before, &now), 4_000.0);
        // The first line: from each thread's start.
        assert_eq!(rate_per_s(&[None, None], &before), 4_000.0);
    }

    #[test]
    fn a_thread_without_a_new_report_adds_nothing_to_the_live_rate() {
        let before = [tick(0, 900, 900), tick(1, 950, 2_850)];
        let now = [tick(0, 900, 900), tick(1, 1_950, 5_850)];
        assert_eq!(rate_per_s(&before, &now), 3_000.0);
        assert_eq!(rate_per_s(&[None, None], &[None, None]), 0.0);
    }

    #[test]
    fn connections_are_shared_over_threads_without_loss() {
        let shares: Vec<usize> = (0..3).map(|index| share(10, 3, index)).collect();
        assert_eq!(shares, vec![4, 3, 3]);
    }

    #[test]
    fn fewer_connections_than_threads_is_refused_naming_both() {
        let options = LoadOptions {
            urls: vec!["http://127.0.0.1:9/".into()],
            pace: Pace::Closed,
            stop: Stop::Requests { count: 1 },
            connections: 1,
            threads: 2,
            range_bytes: None,
            pieces: None,
            timeout: Duration::from_secs(1),
            backend: BackendChoice::Auto,
            ca_file: None,
            interrupt: Arc::default(),
        };
        let error = run(&options, &mut |_| {}).err().expect("refused");
        assert!(error.to_string().contains("--connections 1"), "{error}");
    }
}
