//! `tessera publish`.

use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};

use crate::catalog::Catalog;
use crate::cli::{CliError, DataDirArgs};
use crate::content::{ContentId, PieceSize};
use crate::http::url::HttpUrl;
use crate::publish::{publish, PublishRequest};
use crate::store::Store;

/// Arguments of `tessera publish`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  tessera publish update.cab --id kb5031445 --source https://origin.example/update.cab
  tessera publish big.iso --id iso-2026-11 --piece-size 4M --config /etc/tessera/tessera.toml
  tessera publish notes.txt --id notes --no-store --json")]
pub struct PublishArgs {
    /// The file to publish.
    pub file: PathBuf,
    /// Content id: [A-Za-z0-9._-]{1,128}.
    #[arg(long)]
    pub id: String,
    /// Piece size: a power of two from 64K to 16M (default 1M).
    #[arg(long, value_name = "SIZE", default_value = "1M")]
    pub piece_size: String,
    /// HTTP source of the whole content, written into the manifest (repeatable).
    #[arg(long = "source", value_name = "URL")]
    pub sources: Vec<String>,
    /// Where else the hash file can be fetched, written into the manifest (repeatable).
    #[arg(long = "hashfile-url", value_name = "URL")]
    pub hashfile_urls: Vec<String>,
    /// Also compute the whole-file SHA-256 and put it in the manifest.
    #[arg(long)]
    pub with_sha256: bool,
    /// Write the catalog only; do not import pieces into the store.
    #[arg(long)]
    pub no_store: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub data: DataDirArgs,
}

/// Runs `tessera publish`.
pub fn run(args: PublishArgs) -> Result<(), CliError> {
    let id = ContentId::parse(&args.id).map_err(|e| CliError::Usage(format!("--id: {e}")))?;
    let piece_size = PieceSize::parse(&args.piece_size).map_err(|e| CliError::Usage(format!("--piece-size: {e}")))?;
    // A URL that no client can fetch must not reach the manifest, where every `get` would trip on it.
    for (flag, urls) in [("--source", &args.sources), ("--hashfile-url", &args.hashfile_urls)] {
        for url in urls.iter() {
            HttpUrl::parse(url).map_err(|e| CliError::Usage(format!("{flag}: {e}")))?;
        }
    }
    let config = args.data.load()?;
    let length = std::fs::metadata(&args.file)
        .map_err(|e| CliError::Usage(format!("cannot publish {}: {e}", args.file.display())))?
        .len();
    let store = if args.no_store { None } else { Some(Store::open(&config.store_dir(), &config.store)?) };
    let catalog = Catalog::new(config.catalog_dir());
    let bar = ProgressBar::new(length);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(format!("publishing {id}"));
    let request = PublishRequest {
        file: args.file.clone(),
        id: id.clone(),
        piece_size,
        sources: args.sources,
        hashfile_urls: args.hashfile_urls,
        whole_sha256: args.with_sha256,
    };
    let report = publish(&request, &catalog, store.as_ref(), &mut |done| bar.set_position(done))?;
    bar.finish_and_clear();
    if args.json {
        let summary = serde_json::json!({
            "content_id": id.as_str(),
            "content_length": report.manifest.content_length,
            "piece_size": report.manifest.piece_size,
            "piece_count": report.piece_count,
            "pieces_stored": report.pieces_stored,
            "pieces_already_present": report.pieces_already_present,
            "hashfile_sha256": report.manifest.hashfile_sha256,
            "sha256": report.manifest.sha256,
            "hashfile": catalog.hashfile_path(&id),
            "manifest": catalog.manifest_path(&id),
        });
        println!("{summary}");
    } else {
        println!(
            "published {id}: {} bytes in {} piece(s) of {} bytes; {} stored, {} already present",
            report.manifest.content_length,
            report.piece_count,
            report.manifest.piece_size,
            report.pieces_stored,
            report.pieces_already_present
        );
        println!("  hash file  {}", catalog.hashfile_path(&id).display());
        println!("  manifest   {}", catalog.manifest_path(&id).display());
        if args.no_store {
            println!("  store      not imported (--no-store)");
        }
    }
    Ok(())
}
