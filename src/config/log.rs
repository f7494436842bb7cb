//! `[log]`: the level and format of the log, and the optional access log.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How log events are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl LogFormat {
    /// Parses `text` or `json`.
    pub fn parse(text: &str) -> Option<LogFormat> {
        match text {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

/// Settings of the log and the access log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Level filter in `RUST_LOG` syntax (`info`, `debug`, `info,tessera::fill=debug`);
    /// `RUST_LOG`, when set, wins. Reloaded on SIGHUP.
    pub level: String,
    /// `text` or `json` (`--log-format` wins).
    pub format: LogFormat,
    /// Where `serve` writes one line per request in nginx's "combined" format plus the request
    /// time; `-` is stdout; absent: no access log. Reopened on SIGHUP (log rotation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_log: Option<PathBuf>,
    /// Bytes of access-log lines a worker buffers before it writes them (it also writes them at
    /// the end of every loop turn).
    pub access_log_buffer_bytes: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into(), format: LogFormat::Text, access_log: None, access_log_buffer_bytes: 65536 }
    }
}
