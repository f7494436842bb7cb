//! `tessera serve` (the data plane lands with its own issue).

use crate::cli::{CliError, DataDirArgs};

/// Arguments of `tessera serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub data: DataDirArgs,
}

/// Runs `tessera serve`.
pub fn run(args: ServeArgs) -> Result<(), CliError> {
    let _config = args.data.load()?;
    Err(CliError::Other("serve is not built yet: the data-plane piece server lands with the next issue".into()))
}
