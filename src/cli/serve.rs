//! `tessera serve`: runs the data plane, and the embedded metadata service, until SIGINT or SIGTERM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::catalog::Catalog;
use crate::cli::service_cmd::EmbeddedServiceArgs;
use crate::cli::{CliError, DataDirArgs};
use crate::config::{BackendChoice, Config};
use crate::control::announcer::{self, AnnounceTarget, AnnouncerHandle, TargetError};
use crate::control::ServiceHandle;
use crate::dataplane::{ServeError, Server, ServerHandle};

/// How often the main thread looks for a signal or a dead worker.
const SIGNAL_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Arguments of `tessera serve`.
#[derive(Debug, clap::Args)]
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
}

impl From<ServeError> for CliError {
    fn from(error: ServeError) -> Self {
        match error {
            ServeError::BadAddress { .. } => CliError::Usage(error.to_string()),
            other => CliError::Other(other.to_string()),
        }
    }
}

/// Runs `tessera serve`.
pub fn run(args: ServeArgs) -> Result<(), CliError> {
    let mut config = args.data.load()?;
    if let Some(listen) = args.listen {
        config.serve.listen = listen;
    }
    if let Some(workers) = args.workers {
        config.serve.workers = workers;
    }
    if let Some(backend) = &args.backend {
        config.serve.backend = BackendChoice::parse(backend)
            .ok_or_else(|| CliError::Usage(format!("--backend {backend:?}: use auto, uring or epoll")))?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())
            .map_err(|e| CliError::Other(format!("cannot install a handler for signal {signal}: {e}")))?;
    }
    let server = Server::start(&config)?;
    let service = args.service.start(&config)?;
    let announcer = start_announcer(&config, &server, service.as_ref())?;
    while !stop.load(Ordering::Acquire) && !server.any_worker_finished() {
        std::thread::sleep(SIGNAL_POLL_INTERVAL);
    }
    if stop.load(Ordering::Acquire) {
        tracing::info!("signal received: no new connections; finishing in-flight responses");
    } else {
        tracing::error!("a worker stopped unexpectedly; shutting down");
    }
    let clean = !server.any_worker_finished();
    server.shutdown()?;
    if !clean {
        return Err(CliError::Other("a data-plane worker stopped unexpectedly".into()));
    }
    tracing::info!("data plane stopped");
    drop(announcer);
    drop(service);
    Ok(())
}

/// Announces this seed's content to the metadata service (the embedded one by default).
fn start_announcer(
    config: &Config,
    server: &ServerHandle,
    service: Option<&ServiceHandle>,
) -> Result<Option<AnnouncerHandle>, CliError> {
    let embedded = service.map(|s| (s.local_addr(), s.dev_ca_file()));
    let resolved =
        AnnounceTarget::resolve(&config.announce, server.local_addr(), embedded, config.download.metadata_timeout_ms);
    let target = match resolved {
        Ok(target) => target,
        // Serving matters more than being found: say why, and serve unannounced.
        Err(error @ TargetError::UnspecifiedAddress(_)) => {
            tracing::warn!(%error, "not announcing");
            return Ok(None);
        }
        Err(error) => return Err(CliError::Usage(error.to_string())),
    };
    let Some(target) = target else {
        tracing::info!(
            "not announcing: no metadata service to announce to ([announce] service_url, or the embedded service)"
        );
        return Ok(None);
    };
    tracing::info!(service = %target.service_url, peer_id = %target.peer_id, group = %target.group, address = %target.address, "announcing held content");
    announcer::start(target, Catalog::new(config.catalog_dir()), server.store().clone())
        .map(Some)
        .map_err(|e| CliError::Other(e.to_string()))
}
