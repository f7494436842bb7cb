//! The rustls server config of the control plane.

use std::path::PathBuf;
use std::sync::Arc;

use crate::tls::{load_certs, load_private_key, provider, TlsError};

/// Where the server's certificate chain and key are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// The certificate chain, leaf first (PEM).
    pub cert_file: PathBuf,
    /// The leaf's private key (PEM).
    pub key_file: PathBuf,
}

/// A server config serving `files`, speaking HTTP/1.1 only (TLS 1.2 and 1.3).
pub fn server_config(files: &ServerTlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = load_certs(&files.cert_file)?;
    let key = load_private_key(&files.key_file)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::BadChain { path: files.cert_file.clone(), message: e.to_string() })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
