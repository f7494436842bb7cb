//! `tessera config`.

use std::path::PathBuf;

use crate::cli::CliError;
use crate::config::{Config, DEFAULT_CONFIG_TOML};

/// Arguments of `tessera config`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  tessera config --print-default > /etc/tessera/tessera.toml
  tessera config --check /etc/tessera/tessera.toml
  tessera config --check box.toml && tessera serve --config box.toml")]
pub struct ConfigArgs {
    /// Print the embedded default configuration, comments and optional keys included.
    #[arg(long)]
    pub print_default: bool,
    /// Check a configuration file with the checks `serve` runs (every bad key is named; exit
    /// status 2), and print it with every default filled in.
    #[arg(long, value_name = "FILE")]
    pub check: Option<PathBuf>,
}

/// Runs `tessera config`.
pub fn run(args: ConfigArgs) -> Result<(), CliError> {
    if args.print_default {
        print!("{DEFAULT_CONFIG_TOML}");
        return Ok(());
    }
    if let Some(path) = args.check {
        let config = Config::load(Some(&path))?;
        print!("{}", toml::to_string_pretty(&config).expect("config serializes"));
        return Ok(());
    }
    Err(CliError::Usage("tessera config: give --print-default or --check FILE".into()))
}
