//! `tessera serve` (the data plane lands with its own issue; the metadata service is embedded).

use crate::cli::service_cmd::{wait_for_shutdown_signal, EmbeddedServiceArgs};
use crate::cli::{CliError, DataDirArgs};

/// Arguments of `tessera serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub data: DataDirArgs,
    #[command(flatten)]
    pub service: EmbeddedServiceArgs,
}

/// Runs `tessera serve`.
pub fn run(args: ServeArgs) -> Result<(), CliError> {
    let config = args.data.load()?;
    let service = args.service.start(&config)?;
    if service.is_none() {
        return Err(CliError::Other(
            "serve is not built yet: the data-plane piece server lands with the next issue (and --no-service is set)"
                .into(),
        ));
    }
    tracing::warn!("the data-plane piece server is not built yet; serving the metadata service only");
    wait_for_shutdown_signal()?;
    drop(service);
    Ok(())
}
