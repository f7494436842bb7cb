//! `tessera man`: the man page (roff), generated from the argument types.

use clap::CommandFactory;

use crate::cli::{Cli, CliError};

/// Arguments of `tessera man`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  tessera man > /usr/share/man/man1/tessera.1
  tessera man | man -l -")]
pub struct ManArgs {}

/// Runs `tessera man`: the page goes to stdout.
pub fn run(_args: ManArgs) -> Result<(), CliError> {
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut page)
        .map_err(|e| CliError::Other(format!("cannot render the man page: {e}")))?;
    use std::io::Write;
    std::io::stdout().write_all(&page).map_err(|e| CliError::Other(format!("cannot write the man page: {e}")))
}
