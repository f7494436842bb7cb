//! The rustls client config for talking to a metadata service: configured roots, hostname check,
//! and an optional pin of the server's key (SHA-256 of its SubjectPublicKeyInfo).

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};

use crate::tls::{load_certs, provider, TlsError};

/// How a client trusts a metadata service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsClientOptions {
    /// CA certificates to trust (PEM); `None` trusts the public web roots (webpki-roots).
    pub ca_file: Option<PathBuf>,
    /// SHA-256 of the server's SubjectPublicKeyInfo (64 hex digits); checked after the chain.
    pub pin_spki_sha256: Option<String>,
    /// Bound on connecting, and on each read and write.
    pub timeout_ms: u64,
    /// Largest response (head and body) accepted.
    pub response_bytes_max: u64,
}

impl Default for TlsClientOptions {
    fn default() -> Self {
        TlsClientOptions { ca_file: None, pin_spki_sha256: None, timeout_ms: 10_000, response_bytes_max: 64 << 20 }
    }
}

/// The server's key is not the pinned one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("server key SHA-256 {actual} does not match the pinned {expected}")]
pub struct PinMismatch {
    /// The pinned SPKI SHA-256 (hex).
    pub expected: String,
    /// The presented SPKI SHA-256 (hex).
    pub actual: String,
}

/// SHA-256 of a certificate's SubjectPublicKeyInfo (the DER SEQUENCE), the value pins hold.
pub fn spki_sha256(cert: &CertificateDer<'_>) -> Result<[u8; 32], rustls::Error> {
    let parsed = rustls::server::ParsedCertificate::try_from(cert)?;
    Ok(crate::hash::sha256(parsed.subject_public_key_info().as_ref()))
}

/// A client config trusting the CA certificates in `ca_file` (PEM), or the web roots without it:
/// what https content sources and peers are checked against.
pub fn ca_client_config(ca_file: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    client_config(&TlsClientOptions { ca_file: ca_file.map(PathBuf::from), ..TlsClientOptions::default() })
}

/// A client config for `options` (roots and pin; timeouts are the caller's).
pub fn client_config(options: &TlsClientOptions) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match &options.ca_file {
        Some(path) => {
            for cert in load_certs(path)? {
                roots.add(cert).map_err(|e| TlsError::BadRoot { path: path.clone(), message: e.to_string() })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = provider();
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::BadRoot { path: options.ca_file.clone().unwrap_or_default(), message: e.to_string() })?;
    let builder = rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions()?;
    let mut config = match &options.pin_spki_sha256 {
        None => builder.with_webpki_verifier(webpki).with_no_client_auth(),
        Some(pin) => {
            let mut expected = [0u8; 32];
            hex::decode_to_slice(pin.trim(), &mut expected).map_err(|_| TlsError::BadPin { value: pin.clone() })?;
            let verifier = Arc::new(PinnedVerifier { inner: webpki, expected });
            builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The webpki verifier plus a key pin: the chain and name are verified first, so a pin narrows trust
/// and never widens it.
#[derive(Debug)]
struct PinnedVerifier {
    inner: Arc<WebPkiServerVerifier>,
    expected: [u8; 32],
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        let actual = spki_sha256(end_entity)?;
        if actual != self.expected {
            let mismatch = PinMismatch { expected: hex::encode(self.expected), actual: hex::encode(actual) };
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(mismatch)))));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Plaintext read out of a TLS connection at a time, by the event-loop clients (`get`, the fill,
/// `load`).
pub const PLAINTEXT_CHUNK_BYTES: usize = 64 * 1024;

/// A client connection to `name` (its certificate is checked against it) under `config`.
pub fn client_connection(config: Arc<rustls::ClientConfig>, name: &str) -> Result<rustls::ClientConnection, String> {
    let name = ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
    rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())
}

/// What rustls has to send (records, handshake messages), taken out of `tls`; empty when nothing.
pub fn records_to_send(tls: &mut rustls::ClientConnection) -> Result<Vec<u8>, String> {
    let mut records = Vec::new();
    // Bounded: each pass moves bytes rustls holds into `records`, or stops.
    while tls.wants_write() {
        match tls.write_tls(&mut records) {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) => return Err(format!("TLS write: {error}")),
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::DevCa;

    #[test]
    fn spki_of_issued_certificate_matches_its_key() {
        let ca = DevCa::generate().unwrap();
        let now = std::time::SystemTime::now();
        let issued = ca.issue_server(&["localhost".into()], now, now + std::time::Duration::from_secs(60)).unwrap();
        use rustls_pki_types::pem::PemObject;
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        assert_eq!(spki_sha256(&der).unwrap(), issued.spki_sha256);
    }

    #[test]
    fn bad_pin_is_named() {
        let options = TlsClientOptions { pin_spki_sha256: Some("xyz".into()), ..TlsClientOptions::default() };
        assert!(client_config(&options).unwrap_err().to_string().contains("\"xyz\""));
    }
}
