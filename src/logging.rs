//! The process log: `tracing` events on stderr, as text lines or JSON objects, filtered by a level
//! that `RUST_LOG` sets or, without it, `[log] level`; `serve` changes the level on SIGHUP
//! through a reload layer, so no event path takes a lock for it.

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::config::LogFormat;

/// The filter in force, replaceable while running.
static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Why the level was not changed.
#[derive(Debug, thiserror::Error)]
pub enum LevelError {
    #[error("RUST_LOG is set and wins over [log] level")]
    EnvironmentWins,
    #[error("log level {level:?}: {source}")]
    Parse { level: String, source: tracing_subscriber::filter::ParseError },
    #[error("the log is not set up by this process")]
    NotInstalled,
    #[error("cannot change the log level: {0}")]
    Reload(#[from] reload::Error),
}

/// Installs the process's subscriber (once; later calls do nothing): `format` on stderr,
/// `RUST_LOG` or else `level` as the filter (`info` if `level` does not parse).
pub fn init(format: LogFormat, level: &str) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => EnvFilter::new(env),
        _ => EnvFilter::builder().parse(level).unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let (filter, handle) = reload::Layer::new(filter);
    // Colour only for a person at a terminal: logs piped to files and tests stay plain text.
    let ansi = std::io::stderr().is_terminal();
    let text = (format == LogFormat::Text)
        .then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi));
    let json =
        (format == LogFormat::Json).then(|| tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr));
    if tracing_subscriber::registry().with(filter).with(text).with(json).try_init().is_ok() {
        let _ = FILTER.set(handle);
    }
}

/// Replaces the level filter with `level` (RUST_LOG syntax), unless `RUST_LOG` set it.
pub fn set_level(level: &str) -> Result<(), LevelError> {
    if std::env::var("RUST_LOG").is_ok_and(|env| !env.is_empty()) {
        return Err(LevelError::EnvironmentWins);
    }
    let filter =
        EnvFilter::builder().parse(level).map_err(|source| LevelError::Parse { level: level.to_string(), source })?;
    FILTER.get().ok_or(LevelError::NotInstalled)?.reload(filter)?;
    Ok(())
}
