//! Development certificates: a local CA and a server certificate it signs, so the service speaks
//! verified TLS out of the box (`DATA_DIR/tls/`) and `tessera cert init` can make them on demand.
//!
//! The CA's certificate is derived from its key with fixed parameters, so a CA key kept on disk is
//! enough to issue more server certificates that chain to the `ca.pem` users already trust.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};

use crate::tls::{server::ServerTlsFiles, TlsError};

/// Lifetime of a development CA.
pub const DEV_CA_VALID_DAYS: u64 = 3650;
/// Lifetime of a development server certificate.
pub const DEV_SERVER_VALID_DAYS: u64 = 825;
const DAY: Duration = Duration::from_secs(86_400);

/// The files of a development TLS setup in one directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevTlsFiles {
    /// The CA certificate clients trust (`ca.pem`).
    pub ca_cert: PathBuf,
    /// The CA's private key (`ca.key.pem`, mode 0600).
    pub ca_key: PathBuf,
    /// The server certificate followed by the CA certificate (`server.pem`).
    pub server_cert: PathBuf,
    /// The server's private key (`server.key.pem`, mode 0600).
    pub server_key: PathBuf,
}

impl DevTlsFiles {
    /// The standard file names in `dir`.
    pub fn in_dir(dir: &Path) -> DevTlsFiles {
        DevTlsFiles {
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join("ca.key.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key.pem"),
        }
    }

    /// The server side of these files.
    pub fn server(&self) -> ServerTlsFiles {
        ServerTlsFiles { cert_file: self.server_cert.clone(), key_file: self.server_key.clone() }
    }
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PEM, PKCS#8).
    pub key_pem: String,
    /// SHA-256 of its SubjectPublicKeyInfo, the value clients pin.
    pub spki_sha256: [u8; 32],
}

/// A development certificate authority.
pub struct DevCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl DevCa {
    /// A new CA with a fresh key.
    pub fn generate() -> Result<DevCa, TlsError> {
        DevCa::from_key(KeyPair::generate()?)
    }

    /// The CA of an existing key (PEM), re-derived with the same subject so it issues certificates
    /// that chain to the CA certificate made from this key before.
    pub fn from_key_pem(key_pem: &str) -> Result<DevCa, TlsError> {
        DevCa::from_key(KeyPair::from_pem(key_pem)?)
    }

    fn from_key(key: KeyPair) -> Result<DevCa, TlsError> {
        let mut params = CertificateParams::default();
        // The key's fingerprint in the name keeps two development CAs apart: clients find an issuer
        // by name, and a shared name turns "unknown CA" into a confusing bad-signature error.
        let fingerprint = hex::encode(&crate::hash::sha256(&key.public_key_der())[..8]);
        params.distinguished_name.push(DnType::CommonName, format!("tessera development CA {fingerprint}"));
        params.distinguished_name.push(DnType::OrganizationName, "tessera");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        // A re-derived CA certificate gets new dates, which is harmless: it only names the issuer
        // of new certificates, and clients check them against the `ca.pem` they already trust.
        let now = SystemTime::now();
        set_window(&mut params, now - DAY, now + DAY * DEV_CA_VALID_DAYS as u32);
        let cert = params.self_signed(&key)?;
        Ok(DevCa { cert, key })
    }

    /// The CA certificate (PEM), what clients trust.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA private key (PEM).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A server certificate for `names` (DNS names or IP addresses) valid from `valid_from` to
    /// `valid_until`.
    pub fn issue_server(
        &self,
        names: &[String],
        valid_from: SystemTime,
        valid_until: SystemTime,
    ) -> Result<IssuedCert, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, names.first().map(String::as_str).unwrap_or("tessera"));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        set_window(&mut params, valid_from, valid_until);
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            spki_sha256: crate::hash::sha256(&key.public_key_der()),
        })
    }

    /// Writes the CA certificate and key into `files`.
    pub fn write_ca(&self, files: &DevTlsFiles) -> Result<(), TlsError> {
        write_file(&files.ca_key, self.key_pem().as_bytes(), true)?;
        write_file(&files.ca_cert, self.cert_pem().as_bytes(), false)
    }

    /// Issues a server certificate for `names` valid for [`DEV_SERVER_VALID_DAYS`] and writes it into
    /// `files`; the certificate file holds the chain (server, then CA).
    pub fn write_server(&self, files: &DevTlsFiles, names: &[String]) -> Result<IssuedCert, TlsError> {
        let now = SystemTime::now();
        let server = self.issue_server(names, now - DAY, now + DAY * DEV_SERVER_VALID_DAYS as u32)?;
        write_file(&files.server_key, server.key_pem.as_bytes(), true)?;
        write_file(&files.server_cert, format!("{}{}", server.cert_pem, self.cert_pem()).as_bytes(), false)?;
        Ok(server)
    }
}

/// Sets a certificate's validity window (whole seconds; times before 1970 clamp to it).
fn set_window(params: &mut CertificateParams, from: SystemTime, until: SystemTime) {
    let seconds = |time: SystemTime| {
        Duration::from_secs(time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs())
    };
    // rcgen's time type is only reachable through its own helpers, so start from its epoch.
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + seconds(from);
    params.not_after = epoch + seconds(until);
}

/// Makes the development TLS files in `dir` unless they are already there; returns them and whether
/// they were made now. A missing server certificate is reissued from the kept CA key.
pub fn ensure_dev_tls(dir: &Path, names: &[String]) -> Result<(DevTlsFiles, bool), TlsError> {
    let files = DevTlsFiles::in_dir(dir);
    let exists = |path: &Path| path.is_file();
    if exists(&files.server_cert) && exists(&files.server_key) && exists(&files.ca_cert) {
        return Ok((files, false));
    }
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Write { path: dir.to_path_buf(), source })?;
    let ca = if exists(&files.ca_key) && exists(&files.ca_cert) {
        // Keep the CA users already trust; only the server certificate is new.
        let pem = std::fs::read_to_string(&files.ca_key)
            .map_err(|source| TlsError::Read { path: files.ca_key.clone(), source })?;
        DevCa::from_key_pem(&pem)?
    } else {
        let ca = DevCa::generate()?;
        ca.write_ca(&files)?;
        ca
    };
    ca.write_server(&files, names)?;
    Ok((files, true))
}

/// The names a development server certificate covers: `localhost`, `127.0.0.1`, `::1` and this
/// host's name when it has one.
pub fn host_names() -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    // /proc avoids an unsafe gethostname call; elsewhere HOSTNAME is the fallback.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").ok().or_else(|| std::env::var("HOSTNAME").ok());
    if let Some(host) = host.map(|h| h.trim().to_string()) {
        if !host.is_empty() && !names.contains(&host) && rcgen::Ia5String::try_from(host.as_str()).is_ok() {
            names.push(host);
        }
    }
    names
}

fn write_file(path: &Path, bytes: &[u8], private: bool) -> Result<(), TlsError> {
    use std::io::Write;
    let error = |source| TlsError::Write { path: path.to_path_buf(), source };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path).map_err(error)?;
    file.write_all(bytes).map_err(error)?;
    file.sync_all().map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ensure_makes_once_then_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let (files, made) = ensure_dev_tls(dir.path(), &names).unwrap();
        assert!(made);
        let ca = std::fs::read(&files.ca_cert).unwrap();
        let server = std::fs::read(&files.server_cert).unwrap();
        let (_, made) = ensure_dev_tls(dir.path(), &names).unwrap();
        assert!(!made);
        assert_eq!(std::fs::read(&files.server_cert).unwrap(), server);
        // A lost server certificate is reissued under the same CA file.
        std::fs::remove_file(&files.server_cert).unwrap();
        let (_, made) = ensure_dev_tls(dir.path(), &names).unwrap();
        assert!(made);
        assert_eq!(std::fs::read(&files.ca_cert).unwrap(), ca);
        assert_ne!(std::fs::read(&files.server_cert).unwrap(), server);
        assert_eq!(crate::tls::load_certs(&files.server_cert).unwrap().len(), 2);
    }

    #[cfg(unix)]
    #[test]
    fn private_keys_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (files, _) = ensure_dev_tls(dir.path(), &["localhost".to_string()]).unwrap();
        for key in [&files.ca_key, &files.server_key] {
            assert_eq!(std::fs::metadata(key).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }

    #[test]
    fn host_names_cover_loopback() {
        let names = host_names();
        assert_eq!(&names[..3], &["localhost", "127.0.0.1", "::1"]);
    }
}
