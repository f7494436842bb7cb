//! `tessera info`.

use std::time::Duration;

use crate::cli::CliError;
use crate::hash::{bulk_threads, speed, Backend, NI_LANES_MIN, X16_LANES_MIN};

/// Arguments of `tessera info`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  tessera info
  tessera info --hash-speed --json")]
pub struct InfoArgs {
    /// Also measure SHA-256 speed on 1 MiB pieces: one stream, a batch on one core, batches on
    /// all cores (about 2 s each).
    #[arg(long)]
    pub hash_speed: bool,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `tessera info`.
pub fn run(args: InfoArgs) -> Result<(), CliError> {
    let backend = Backend::detect();
    let batch_backend = Backend::detect_batch();
    let batch_pieces_min = match batch_backend {
        Backend::Avx512X16 => X16_LANES_MIN,
        Backend::ShaNiX4 => NI_LANES_MIN,
        _ => 1,
    };
    let cores = bulk_threads();
    let measured = args.hash_speed.then(|| speed::measure(1 << 20, Duration::from_secs(2), cores));
    if args.json {
        let mut summary = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "sha256_backend": backend.name(),
            "sha256_batch_backend": batch_backend.name(),
            "sha256_batch_pieces_min": batch_pieces_min,
            "sha_ni_x4_registers": crate::hash::ni_registers(),
            "cores": cores,
        });
        if let Some(m) = measured {
            summary["hash_single_stream_bytes_per_s"] = m.single_stream_bytes_per_s.into();
            summary["hash_one_core_bytes_per_s"] = m.one_core_bytes_per_s.into();
            summary["hash_all_cores_bytes_per_s"] = m.all_cores_bytes_per_s.into();
        }
        println!("{summary}");
    } else {
        println!("tessera {}", env!("CARGO_PKG_VERSION"));
        println!("sha256 backend: {}", backend.name());
        println!("sha256 batch backend ({batch_pieces_min}+ pieces): {}", batch_backend.name());
        if let Some(registers) = crate::hash::ni_registers() {
            println!("sha-ni-x4 rounds on: {registers}");
        }
        println!("cores: {cores}");
        if let Some(m) = measured {
            println!("sha256 1 MiB pieces, one stream:        {:.2} GB/s", m.single_stream_bytes_per_s / 1e9);
            println!("sha256 1 MiB pieces, batch, one core:   {:.2} GB/s", m.one_core_bytes_per_s / 1e9);
            println!("sha256 1 MiB pieces, batch, {} cores:    {:.2} GB/s", m.threads, m.all_cores_bytes_per_s / 1e9);
        }
    }
    Ok(())
}
