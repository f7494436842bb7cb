//! TLS material and configurations for the control plane: development certificates, PEM loading,
//! rustls server and client configs (with optional SPKI pinning).
//!
//! The crypto provider is ring, chosen explicitly per config so nothing depends on a process-wide default.

pub mod client;
pub mod dev_ca;
pub mod pem;
pub mod server;

use std::path::PathBuf;
use std::sync::Arc;

pub use client::{ca_client_config, client_config, spki_sha256, TlsClientOptions};
pub use dev_ca::{ensure_dev_tls, host_names, DevCa, DevTlsFiles, IssuedCert};
pub use pem::{load_certs, load_private_key};
pub use server::{server_config, ServerTlsFiles};

/// TLS setup failures, each naming the file or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoPrivateKey { path: PathBuf },
    #[error("{path} is not valid PEM: {message}")]
    BadPem { path: PathBuf, message: String },
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("CA file {path} has no certificate usable as a trust anchor: {message}")]
    BadRoot { path: PathBuf, message: String },
    #[error("pin {value:?} is not a SHA-256 in hex (64 hex digits)")]
    BadPin { value: String },
    #[error("server certificate chain from {path} was rejected: {message}")]
    BadChain { path: PathBuf, message: String },
}

/// The crypto provider every tessera TLS config uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
