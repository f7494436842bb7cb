//! `tessera info`.

use std::time::Duration;

use crate::cli::CliError;
use crate::hash::{bulk_threads, speed, Backend};

/// Arguments of `tessera info`.
#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// Also measure SHA-256 speed on 1 MiB pieces (one core and all cores; about 2 s per mode).
    #[arg(long)]
    pub hash_speed: bool,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `tessera info`.
pub fn run(args: InfoArgs) -> Result<(), CliError> {
    let backend = Backend::detect();
    let cores = bulk_threads();
    let measured = args.hash_speed.then(|| speed::measure(1 << 20, Duration::from_secs(2), cores));
    if args.json {
        let mut summary = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "sha256_backend": backend.name(),
            "cores": cores,
        });
        if let Some(m) = measured {
            summary["hash_one_core_bytes_per_s"] = m.one_core_bytes_per_s.into();
            summary["hash_all_cores_bytes_per_s"] = m.all_cores_bytes_per_s.into();
        }
        println!("{summary}");
    } else {
        println!("tessera {}", env!("CARGO_PKG_VERSION"));
        println!("sha256 backend: {}", backend.name());
        println!("cores: {cores}");
        if let Some(m) = measured {
            println!("sha256 1 MiB pieces, one core:   {:.2} GB/s", m.one_core_bytes_per_s / 1e9);
            println!("sha256 1 MiB pieces, {} cores:  {:.2} GB/s", m.threads, m.all_cores_bytes_per_s / 1e9);
        }
    }
    Ok(())
}
