//! `tessera serve`: parses its arguments and runs the [`Appliance`] until SIGINT or SIGTERM.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::appliance::{Appliance, ApplianceError};
use crate::cli::service_cmd::{self, EmbeddedServiceArgs};
use crate::cli::{CliError, DataDirArgs};
use crate::config::BackendChoice;
use crate::dataplane::ServeError;

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
    args.service.apply(&mut config);
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())
            .map_err(|e| CliError::Other(format!("cannot install a handler for signal {signal}: {e}")))?;
    }
    let appliance = Appliance::start(&config)?;
    if let Some(service) = appliance.service() {
        service_cmd::report(service);
    }
    appliance.run_until(&stop)?;
    Ok(())
}
