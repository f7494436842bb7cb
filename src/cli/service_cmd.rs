//! `tessera service` (the metadata service alone) and the service flags of `tessera serve`.

use crate::cli::{CliError, DataDirArgs};
use crate::config::Config;
use crate::control::{Service, ServiceHandle};

/// Arguments of `tessera service`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  tessera service --config /etc/tessera/tessera.toml
  tessera service --listen 0.0.0.0:7443 --data-dir /var/lib/tessera")]
pub struct ServiceArgs {
    /// Address to listen on (HTTPS); overrides the config's `[service] listen`.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    #[command(flatten)]
    pub data: DataDirArgs,
}

/// The flags of `tessera serve` that control the embedded metadata service.
#[derive(Debug, Clone, clap::Args)]
pub struct EmbeddedServiceArgs {
    /// Address of the embedded metadata service (HTTPS); overrides the config's `[service] listen`.
    #[arg(long, value_name = "ADDR")]
    pub service_listen: Option<String>,
    /// Do not run the embedded metadata service.
    #[arg(long)]
    pub no_service: bool,
}

impl EmbeddedServiceArgs {
    /// Applies `--no-service` and `--service-listen` to `config`.
    pub fn apply(&self, config: &mut Config) {
        if self.no_service {
            config.service.enabled = false;
        }
        if let Some(listen) = &self.service_listen {
            config.service.listen = listen.clone();
        }
    }
}

/// Runs `tessera service` until SIGINT or SIGTERM.
pub fn run(args: ServiceArgs) -> Result<(), CliError> {
    let mut config = args.data.load()?;
    if let Some(listen) = args.listen {
        config.service.listen = listen;
    }
    let handle = start_and_report(&config)?;
    wait_for_shutdown_signal()?;
    handle.shutdown();
    Ok(())
}

/// Starts the service and tells the person how to reach it.
fn start_and_report(config: &Config) -> Result<ServiceHandle, CliError> {
    let handle = Service::start(config)?;
    report(&handle);
    Ok(handle)
}

/// Tells the person how to reach a started service.
pub fn report(handle: &ServiceHandle) {
    // One line on stdout with the real address (port 0 picks one), for people and scripts.
    println!("tessera service: listening on https://{}", handle.local_addr());
    if let Some(ca) = handle.dev_ca_file() {
        let port = handle.local_addr().port();
        tracing::info!(
            ca = %ca.display(),
            "development certificate; try: curl --cacert {} https://localhost:{port}/healthz",
            ca.display()
        );
    }
    if let Some(token) = handle.announce_token_file() {
        tracing::info!(token_file = %token.display(), "announces need the bearer token in this file");
    }
}

/// Blocks until SIGINT or SIGTERM arrives.
pub fn wait_for_shutdown_signal() -> Result<(), CliError> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(|e| CliError::Other(format!("cannot install signal handlers: {e}")))?;
    if let Some(signal) = signals.forever().next() {
        tracing::info!(signal, "shutting down");
    }
    Ok(())
}
