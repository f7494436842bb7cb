//! Command-line surface: argument types and one function per subcommand.

mod cert_cmd;
mod completions_cmd;
mod config_cmd;
mod get_cmd;
mod info;
mod load_cmd;
mod man_cmd;
mod publish_cmd;
mod serve;
mod service_cmd;
mod status_cmd;
mod swarm_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// tessera: a content-delivery cache appliance serving verified pieces.
#[derive(Debug, Parser)]
#[command(name = "tessera", version, about, long_about = None, after_help = LOG_HELP)]
pub struct Cli {
    /// Log events on stderr as `text` lines or `json` objects (overrides `[log] format`).
    #[arg(long, global = true, value_name = "FORMAT", value_parser = ["text", "json"])]
    pub log_format: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

/// How the log is set, said at the end of `--help`.
const LOG_HELP: &str = "\
Logging: events go to stderr. RUST_LOG sets the level and wins over `[log] level` (e.g.
RUST_LOG=debug, or RUST_LOG=info,tessera::fill=debug); --log-format json writes one JSON object
per event for log shippers. `tessera serve` reloads `[log] level` on SIGHUP.";

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Hash a file into pieces, write its hash file and manifest, and import its pieces into the store.
    Publish(publish_cmd::PublishArgs),
    /// Run the appliance: the piece server (data plane) on the embedded default config.
    Serve(serve::ServeArgs),
    /// Run the metadata and peer-matching service (HTTPS) alone.
    Service(service_cmd::ServiceArgs),
    /// Make TLS certificates for the metadata service.
    Cert(cert_cmd::CertArgs),
    /// Download a content: metadata first, verified pieces from peers, HTTP sources as fallback.
    Get(get_cmd::GetArgs),
    /// Load an HTTP server: closed or open loop, HDR latency percentiles (coordinated omission corrected).
    Load(load_cmd::LoadArgs),
    /// Print or check the configuration.
    Config(config_cmd::ConfigArgs),
    /// Show a running box's status: contents, store, hits and misses, upstream, request rate.
    Status(status_cmd::StatusArgs),
    /// Show the build, the hashing backend and the I/O backends this machine supports.
    Info(info::InfoArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions_cmd::CompletionsArgs),
    /// Print the man page (roff) to stdout.
    Man(man_cmd::ManArgs),
}

/// A failure the binary reports to a person (or as JSON) and turns into an exit status.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Publish(#[from] crate::publish::PublishError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
    #[error(transparent)]
    Service(#[from] crate::control::ServiceError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Get(#[from] crate::download::GetError),
    #[error(transparent)]
    Status(#[from] status_cmd::StatusError),
    #[error("{0}")]
    Other(String),
}

impl CliError {
    /// Exit status, one scheme for every subcommand (the README's table):
    /// 1 a failure while running (I/O, store, network); 2 bad input on the command line,
    /// including a file it names that is missing, unreadable or of the wrong kind (`publish FILE`,
    /// `--ca`, `--config`, `-o`); for `get`, 3 not found, 4 verification failed, 5 sources
    /// exhausted.
    pub fn exit_code(&self) -> u8 {
        use crate::download::output::OutputError;
        use crate::download::GetError;
        use crate::publish::PublishError;
        match self {
            CliError::Usage(_)
            | CliError::Config(_)
            | CliError::Status(status_cmd::StatusError::BadUrl(_))
            | CliError::Publish(PublishError::Open { .. } | PublishError::NotAFile { .. })
            | CliError::Get(GetError::BadSource(_) | GetError::Output(OutputError::Unusable { .. })) => 2,
            CliError::Get(GetError::NotFound { .. }) => 3,
            CliError::Get(GetError::Verification(_)) => 4,
            CliError::Get(GetError::Exhausted { .. } | GetError::NoHttpSource { .. }) => 5,
            _ => 1,
        }
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    let json = match &cli.command {
        Command::Publish(args) => args.json,
        Command::Info(args) => args.json,
        Command::Get(args) => args.json,
        Command::Load(args) => args.json,
        Command::Status(args) => args.json,
        _ => false,
    };
    let log_format = cli.log_format.as_deref().and_then(crate::config::LogFormat::parse);
    // `serve` sets its log up once its config is read (`[log]`); every other command now.
    if !matches!(cli.command, Command::Serve(_)) {
        crate::logging::init(log_format.unwrap_or_default(), "info");
    }
    let result = match cli.command {
        Command::Publish(args) => publish_cmd::run(args),
        Command::Serve(args) => serve::run(args, log_format),
        Command::Service(args) => service_cmd::run(args),
        Command::Cert(args) => cert_cmd::run(args),
        Command::Get(args) => get_cmd::run(args),
        Command::Load(args) => load_cmd::run(args),
        Command::Config(args) => config_cmd::run(args),
        Command::Status(args) => status_cmd::run(args),
        Command::Info(args) => info::run(args),
        Command::Completions(args) => completions_cmd::run(args),
        Command::Man(args) => man_cmd::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            if json {
                let mut report = serde_json::json!({ "error": error.to_string(), "exit_code": error.exit_code() });
                if let CliError::Get(crate::download::GetError::Exhausted { summary, .. }) = &error {
                    // What each source did is the useful part of an exhausted download.
                    report["summary"] = serde_json::to_value(summary).expect("summary serializes");
                }
                println!("{report}");
            } else {
                eprintln!("tessera: error: {error}");
            }
            ExitCode::from(error.exit_code())
        }
    }
}

/// Options shared by commands that use the data directory.
#[derive(Debug, Clone, clap::Args)]
pub struct DataDirArgs {
    /// Configuration file (TOML); without it the embedded defaults apply.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory (catalog, store, TLS material); overrides the config's `data_dir`.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

impl DataDirArgs {
    /// The configuration with command-line overrides applied.
    pub fn load(&self) -> Result<crate::config::Config, CliError> {
        self.with_data_dir(crate::config::Config::load(self.config.as_deref())?)
    }

    /// [`DataDirArgs::load`] without the value checks (`serve --check` reports them itself).
    pub fn load_unchecked(&self) -> Result<crate::config::Config, CliError> {
        self.with_data_dir(crate::config::Config::load_unchecked(self.config.as_deref())?)
    }

    fn with_data_dir(&self, mut config: crate::config::Config) -> Result<crate::config::Config, CliError> {
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        Ok(config)
    }
}
