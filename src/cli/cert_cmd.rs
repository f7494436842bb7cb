//! `tessera cert init`: a development CA and a server certificate for the metadata service.

use std::path::PathBuf;

use crate::cli::CliError;
use crate::tls::{host_names, DevCa, DevTlsFiles};

/// Arguments of `tessera cert`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  tessera cert init /etc/tessera/tls
  tessera cert init ./tls --name box1.example --name 10.0.0.5 --force")]
pub struct CertArgs {
    #[command(subcommand)]
    pub command: CertCommand,
}

/// The `cert` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum CertCommand {
    /// Make a development CA and a server certificate signed by it, and print how to trust them.
    Init(CertInitArgs),
}

/// Arguments of `tessera cert init`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  tessera cert init /etc/tessera/tls
  tessera cert init ./tls --name box1.example --name 10.0.0.5
  curl --cacert ./tls/ca.pem https://box1.example:7443/v1/content/ID")]
pub struct CertInitArgs {
    /// Directory to write ca.pem, ca.key.pem, server.pem and server.key.pem into.
    pub dir: PathBuf,
    /// A DNS name or IP address the server certificate is valid for (repeatable; default:
    /// localhost, 127.0.0.1, ::1 and this host's name).
    #[arg(long = "name", value_name = "HOST")]
    pub names: Vec<String>,
    /// Replace certificates already in DIR.
    #[arg(long)]
    pub force: bool,
}

/// Runs `tessera cert`.
pub fn run(args: CertArgs) -> Result<(), CliError> {
    match args.command {
        CertCommand::Init(args) => init(args),
    }
}

fn init(args: CertInitArgs) -> Result<(), CliError> {
    let files = DevTlsFiles::in_dir(&args.dir);
    if !args.force {
        if let Some(existing) = [&files.ca_cert, &files.ca_key, &files.server_cert, &files.server_key]
            .into_iter()
            .find(|path| path.exists())
        {
            return Err(CliError::Usage(format!(
                "{} already exists; pass --force to replace the certificates in {}",
                existing.display(),
                args.dir.display()
            )));
        }
    }
    let names = if args.names.is_empty() { host_names() } else { args.names };
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| CliError::Other(format!("cannot create {}: {e}", args.dir.display())))?;
    let ca = DevCa::generate()?;
    ca.write_ca(&files)?;
    let server = ca.write_server(&files, &names)?;
    let port = crate::config::ServiceConfig::default().listen.rsplit(':').next().unwrap_or("7443").to_string();
    println!("made a development CA and a server certificate for {}", names.join(", "));
    println!("  CA certificate      {}", files.ca_cert.display());
    println!("  CA key              {} (keep private)", files.ca_key.display());
    println!("  server certificate  {}", files.server_cert.display());
    println!("  server key          {}", files.server_key.display());
    println!("  server key pin      {} (SPKI SHA-256)", hex::encode(server.spki_sha256));
    println!();
    println!("use them in the config:");
    println!("  [service]");
    println!("  cert_file = {:?}", files.server_cert.display().to_string());
    println!("  key_file = {:?}", files.server_key.display().to_string());
    println!("trust the CA:");
    println!("  curl --cacert {} https://{}:{port}/healthz", files.ca_cert.display(), names[0]);
    println!("  system-wide (Debian/Ubuntu): sudo cp {} /usr/local/share/ca-certificates/tessera-dev.crt && sudo update-ca-certificates", files.ca_cert.display());
    Ok(())
}
