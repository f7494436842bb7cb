//! rustls client configuration for https sources and the metadata adapter.
//!
//! Roots are the `--ca` file when given, webpki-roots otherwise. (The control plane's `tls`
//! module replaces this at merge; it is kept to the one function the download needs.)

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ClientConfig;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read CA file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("CA file {path} holds no PEM certificate")]
    Empty { path: PathBuf },
    #[error("CA file {path}: certificate rejected: {reason}")]
    Rejected { path: PathBuf, reason: String },
}

/// A client configuration trusting the certificates of `ca` (PEM), or the web PKI without it.
pub fn client_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|source| TlsSetupError::Read { path: path.into(), source })?;
            let mut reader = bytes.as_slice();
            let mut count = 0;
            for certificate in rustls_pemfile::certs(&mut reader) {
                let certificate = certificate.map_err(|source| TlsSetupError::Read { path: path.into(), source })?;
                roots
                    .add(certificate)
                    .map_err(|e| TlsSetupError::Rejected { path: path.into(), reason: e.to_string() })?;
                count += 1;
            }
            if count == 0 {
                return Err(TlsSetupError::Empty { path: path.into() });
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
