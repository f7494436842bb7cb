//! `tessera serve`: parses its arguments and runs the [`Appliance`] until SIGINT or SIGTERM.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::appliance::check::Finding;
use crate::appliance::{Appliance, ApplianceError};
use crate::cli::service_cmd::{self, EmbeddedServiceArgs};
use crate::cli::{CliError, DataDirArgs};
use crate::config::{BackendChoice, Config, LogFormat};
use crate::dataplane::ServeError;

/// Arguments of `tessera serve`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  tessera serve --config /etc/tessera/tessera.toml
  tessera serve --upstream https://seed.example:7443 --upstream-ca /etc/tessera/upstream-ca.pem
  tessera serve --check --config /etc/tessera/tessera.toml

`--check` starts nothing: it checks the values, the data dir and store, the service certificate,
that the listen addresses are free, io_uring, and the upstream; it names every problem and exits
0 or 2. `tessera config --check FILE` checks the values alone. RUST_LOG sets the log level
(e.g. RUST_LOG=debug or RUST_LOG=tessera::fill=debug).

SIGHUP reloads the config file (command-line overrides applied again) without dropping a
connection: [serve] limits and timeouts, [announce], [log] level and the access log (reopened).
Settings that need a restart (listen, workers, backend, data_dir, buffer and ring sizes, [store],
[service], [upstream]…) are logged as \"needs restart\"; a config that does not load or check is
logged with its bad keys and the running one stays.")]
pub struct ServeArgs {
    #[command(flatten)]
    pub data: DataDirArgs,
    #[command(flatten)]
    pub service: EmbeddedServiceArgs,
    /// Address to listen on (overrides `[serve] listen`), e.g. 0.0.0.0:7680.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Worker threads, one pinned per core (overrides `[serve] workers`; 0 = one per core).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Event-loop backend: auto, uring or epoll (overrides `[serve] backend`).
    #[arg(long, value_name = "BACKEND")]
    pub backend: Option<String>,
    /// Upstream metadata service of this cache box, `https://HOST:PORT` (overrides `[upstream]
    /// service_url`); repeatable: the services of an upstream fleet (the rest replace
    /// `service_urls`), ranked per content by rendezvous hashing, the next asked on failure.
    #[arg(long = "upstream", value_name = "URL")]
    pub upstream: Vec<String>,
    /// CA certificate(s) (PEM) for `--upstream` (overrides `[upstream] ca_file`).
    #[arg(long, value_name = "FILE")]
    pub upstream_ca: Option<std::path::PathBuf>,
    /// A parent that speaks the piece API, `HOST:PORT`; repeatable (replaces `[upstream] peers`).
    #[arg(long = "upstream-peer", value_name = "HOST:PORT")]
    pub upstream_peers: Vec<String>,
    /// Check everything a start needs (config, data dir and store, certificates, free listen
    /// addresses, io_uring, upstream), start nothing, and exit 0 or 2 naming every problem.
    #[arg(long)]
    pub check: bool,
}

impl From<ApplianceError> for CliError {
    fn from(error: ApplianceError) -> Self {
        match error {
            ApplianceError::Serve(ServeError::BadAddress { .. }) | ApplianceError::AnnounceTarget(_) => {
                CliError::Usage(error.to_string())
            }
            ApplianceError::Service(error) => CliError::Service(error),
            other => CliError::Other(other.to_string()),
        }
    }
}

/// Runs `tessera serve`; `log_format` is `--log-format`.
pub fn run(args: ServeArgs, log_format: Option<LogFormat>) -> Result<(), CliError> {
    if args.check {
        crate::logging::init(log_format.unwrap_or_default(), "info");
        return run_check(&args);
    }
    let loaded = load(&args);
    let (format, level) = match &loaded {
        Ok(config) => (log_format.unwrap_or(config.log.format), config.log.level.as_str()),
        Err(_) => (log_format.unwrap_or_default(), "info"),
    };
    crate::logging::init(format, level);
    let config = loaded?;
    let stop = Arc::new(AtomicBool::new(false));
    let reload = Arc::new(AtomicBool::new(false));
    let handlers = [
        (signal_hook::consts::SIGINT, &stop),
        (signal_hook::consts::SIGTERM, &stop),
        (signal_hook::consts::SIGHUP, &reload),
    ];
    for (signal, flag) in handlers {
        signal_hook::flag::register(signal, Arc::clone(flag))
            .map_err(|e| CliError::Other(format!("cannot install a handler for signal {signal}: {e}")))?;
    }
    let appliance = Appliance::start(&config)?;
    if let Some(service) = appliance.service() {
        service_cmd::report(service);
    }
    appliance.run_until(&stop, &reload, || {
        tracing::info!(config = %origin(&args).display(), "SIGHUP: reloading the config");
        load(&args)
    })?;
    Ok(())
}

/// The config file with the command-line overrides applied, checked: at start and on SIGHUP.
fn load(args: &ServeArgs) -> Result<Config, CliError> {
    let mut config = args.data.load()?;
    apply_flags(args, &mut config)?;
    // The file was checked when loaded; the command-line overrides are checked the same way.
    config.check(&origin(args))?;
    Ok(config)
}

/// How errors name the config: its file, or the embedded default.
fn origin(args: &ServeArgs) -> std::path::PathBuf {
    args.data.config.clone().unwrap_or_else(|| crate::config::DEFAULT_CONFIG_ORIGIN.into())
}

/// Applies the command-line overrides over the loaded config.
fn apply_flags(args: &ServeArgs, config: &mut crate::config::Config) -> Result<(), CliError> {
    if let Some(listen) = &args.listen {
        config.serve.listen = listen.clone();
    }
    if let Some(workers) = args.workers {
        config.serve.workers = workers;
    }
    if let Some(backend) = &args.backend {
        config.serve.backend = BackendChoice::parse(backend)
            .ok_or_else(|| CliError::Usage(format!("--backend {backend:?}: use auto, uring or epoll")))?;
    }
    args.service.apply(config);
    apply_upstream(&args.upstream, &args.upstream_ca, &args.upstream_peers, config)
}

/// `serve --check`: every problem on stderr, one a line, then exit 2; what a start would do on
/// stdout (after "configuration ok" when there is no problem). Bad values are collected with the rest rather than stopping the load.
fn run_check(args: &ServeArgs) -> Result<(), CliError> {
    let mut config = args.data.load_unchecked()?;
    apply_flags(args, &mut config)?;
    let findings = crate::appliance::check::check(&config);
    let problems = findings.iter().filter(|finding| matches!(finding, Finding::Problem(_))).count();
    if problems == 0 {
        println!("configuration ok");
    }
    for finding in &findings {
        match finding {
            Finding::Problem(problem) => eprintln!("problem: {problem}"),
            Finding::Note(note) => println!("  {note}"),
        }
    }
    if problems > 0 {
        let plural = if problems == 1 { "" } else { "s" };
        return Err(CliError::Usage(format!("serve --check: {problems} problem{plural}")));
    }
    Ok(())
}

/// Applies `--upstream`, `--upstream-ca` and `--upstream-peer` over `[upstream]` (creating the
/// section when a flag is given) and checks the result.
fn apply_upstream(
    urls: &[String],
    ca: &Option<std::path::PathBuf>,
    peers: &[String],
    config: &mut crate::config::Config,
) -> Result<(), CliError> {
    if urls.is_empty() && ca.is_none() && peers.is_empty() {
        return Ok(());
    }
    let upstream = config.upstream.get_or_insert_with(Default::default);
    if let Some((first, rest)) = urls.split_first() {
        upstream.service_url = first.clone();
        upstream.service_urls = rest.to_vec();
    }
    if let Some(ca) = ca {
        upstream.ca_file = Some(ca.clone());
    }
    if !peers.is_empty() {
        upstream.peers = peers.to_vec();
    }
    if upstream.service_url.is_empty() {
        return Err(CliError::Usage(
            "--upstream-ca and --upstream-peer need --upstream URL (or [upstream] service_url)".into(),
        ));
    }
    upstream.validate().map_err(|error| CliError::Usage(format!("upstream: {error}")))
}
