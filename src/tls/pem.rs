//! Reading certificates and private keys from PEM files.

use std::path::Path;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls_pki_types::pem::{self, PemObject};

use crate::tls::TlsError;

/// Largest PEM file read (certificate chains and keys are a few KiB; bundles of roots some hundred).
pub const PEM_FILE_BYTES_MAX: u64 = 4 << 20;

fn read_limited(path: &Path) -> Result<Vec<u8>, TlsError> {
    let read = |source| TlsError::Read { path: path.to_path_buf(), source };
    let length = std::fs::metadata(path).map_err(read)?.len();
    if length > PEM_FILE_BYTES_MAX {
        return Err(TlsError::BadPem {
            path: path.to_path_buf(),
            message: format!("{length} bytes is over the {PEM_FILE_BYTES_MAX}-byte limit"),
        });
    }
    std::fs::read(path).map_err(read)
}

/// Every certificate in a PEM file, in order; at least one.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_limited(path)?;
    let certs = match CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>() {
        Ok(certs) => certs,
        Err(pem::Error::NoItemsFound) => Vec::new(),
        Err(e) => return Err(TlsError::BadPem { path: path.to_path_buf(), message: e.to_string() }),
    };
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_path_buf() });
    }
    Ok(certs)
}

/// The first private key in a PEM file.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_limited(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoPrivateKey { path: path.to_path_buf() },
        e => TlsError::BadPem { path: path.to_path_buf(), message: e.to_string() },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_files_name_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.pem");
        std::fs::write(&path, "").unwrap();
        assert!(matches!(load_certs(&path), Err(TlsError::NoCertificate { .. })));
        assert!(matches!(load_private_key(&path), Err(TlsError::NoPrivateKey { .. })));
        let missing = dir.path().join("missing.pem");
        assert!(load_certs(&missing).unwrap_err().to_string().contains("missing.pem"));
    }
}
