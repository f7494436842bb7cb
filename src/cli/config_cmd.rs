//! `tessera config`.

use std::path::PathBuf;

use crate::cli::CliError;
use crate::config::Config;

/// Arguments of `tessera config`.
#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// Print the default configuration (the embedded one) as TOML.
    #[arg(long)]
    pub print_default: bool,
    /// Check a configuration file and print it with every default filled in.
    #[arg(long, value_name = "FILE")]
    pub check: Option<PathBuf>,
}

/// Runs `tessera config`.
pub fn run(args: ConfigArgs) -> Result<(), CliError> {
    if args.print_default {
        print!("{}", Config::default_toml());
        return Ok(());
    }
    if let Some(path) = args.check {
        let config = Config::load(Some(&path))?;
        print!("{}", toml::to_string_pretty(&config).expect("config serializes"));
        return Ok(());
    }
    Err(CliError::Usage("tessera config: give --print-default or --check FILE".into()))
}
