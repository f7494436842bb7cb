//! `tessera info`.

use crate::cli::CliError;
use crate::hash::Backend;

/// Arguments of `tessera info`.
#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `tessera info`.
pub fn run(args: InfoArgs) -> Result<(), CliError> {
    let backend = Backend::detect();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "version": env!("CARGO_PKG_VERSION"),
                "sha256_backend": backend.name(),
                "cores": cores,
            })
        );
    } else {
        println!("tessera {}", env!("CARGO_PKG_VERSION"));
        println!("sha256 backend: {}", backend.name());
        println!("cores: {cores}");
    }
    Ok(())
}
