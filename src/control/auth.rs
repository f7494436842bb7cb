//! The bearer tokens of the service: the admin token that guards remote publishing and removal,
//! and the per-site announce token that guards the peer registry.

use std::path::{Path, PathBuf};

use crate::config::ServiceConfig;

/// Shortest admin token accepted, so a guessable one is refused at start-up.
pub const ADMIN_TOKEN_LENGTH_MIN: usize = 16;
/// Largest token file read.
const TOKEN_FILE_BYTES_MAX: u64 = 4096;

/// Why the admin token could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read admin token file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("admin token {origin} is {length} characters; at least {ADMIN_TOKEN_LENGTH_MIN} are required")]
    TooShort { origin: String, length: usize },
    #[error("admin token file {path} is larger than {TOKEN_FILE_BYTES_MAX} bytes")]
    FileTooLarge { path: PathBuf },
    #[error("admin token is given twice: set admin_token or admin_token_file, not both")]
    Both,
    #[error("cannot make announce token file {path}: {source}")]
    Make { path: PathBuf, source: std::io::Error },
}

/// The configured admin token.
#[derive(Clone)]
pub struct AdminToken(String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// A token from text (trimmed), refused when shorter than [`ADMIN_TOKEN_LENGTH_MIN`].
    pub fn new(text: &str, origin: &str) -> Result<AdminToken, AuthError> {
        let token = text.trim();
        if token.chars().count() < ADMIN_TOKEN_LENGTH_MIN {
            return Err(AuthError::TooShort { origin: origin.to_string(), length: token.chars().count() });
        }
        Ok(AdminToken(token.to_string()))
    }

    /// The token the service config names, if any (from `admin_token_file` or `admin_token`).
    pub fn from_config(config: &ServiceConfig) -> Result<Option<AdminToken>, AuthError> {
        match (&config.admin_token, &config.admin_token_file) {
            (Some(_), Some(_)) => Err(AuthError::Both),
            (Some(text), None) => AdminToken::new(text, "admin_token").map(Some),
            (None, Some(path)) => AdminToken::from_file(path).map(Some),
            (None, None) => Ok(None),
        }
    }

    /// The token on the first line of `path`.
    pub fn from_file(path: &Path) -> Result<AdminToken, AuthError> {
        let read = |source| AuthError::Read { path: path.to_path_buf(), source };
        if std::fs::metadata(path).map_err(read)?.len() > TOKEN_FILE_BYTES_MAX {
            return Err(AuthError::FileTooLarge { path: path.to_path_buf() });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        let first_line = text.lines().next().unwrap_or("");
        AdminToken::new(first_line, &format!("in {}", path.display()))
    }

    /// The token in `path`, made first (32 random bytes as hex, mode 0600) when the file does not
    /// exist; `true` when it was made now.
    pub fn ensure_file(path: &Path) -> Result<(AdminToken, bool), AuthError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let make = |source| AuthError::Make { path: path.to_path_buf(), source };
        if path.exists() {
            return Ok((AdminToken::from_file(path)?, false));
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(make)?;
        }
        let text = hex::encode(rand::random::<[u8; 32]>());
        // create_new: two services starting on one data dir never overwrite each other's token.
        match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
            Ok(mut file) => {
                file.write_all(format!("{text}\n").as_bytes()).map_err(make)?;
                file.sync_all().map_err(make)?;
                Ok((AdminToken::new(&text, "generated")?, true))
            }
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                Ok((AdminToken::from_file(path)?, false))
            }
            Err(error) => Err(make(error)),
        }
    }

    /// The token text, for a client to send.
    pub fn secret(&self) -> &str {
        &self.0
    }

    /// Whether an `Authorization:` header value carries this token as a bearer token.
    pub fn accepts(&self, authorization: Option<&str>) -> bool {
        let Some(value) = authorization else { return false };
        let Some((scheme, presented)) = value.trim().split_once(' ') else { return false };
        scheme.eq_ignore_ascii_case("bearer") && constant_time_eq(presented.trim().as_bytes(), self.0.as_bytes())
    }
}

/// Compares without an early exit, so response time does not reveal how much of a guess matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_the_bearer_token() {
        let token = AdminToken::new("0123456789abcdef\n", "test").unwrap();
        assert!(token.accepts(Some("Bearer 0123456789abcdef")));
        assert!(token.accepts(Some("bearer 0123456789abcdef")));
        assert!(!token.accepts(None));
        assert!(!token.accepts(Some("Bearer 0123456789abcdeF")));
        assert!(!token.accepts(Some("Basic 0123456789abcdef")));
        assert!(!token.accepts(Some("Bearer")));
    }

    #[test]
    fn short_or_doubled_tokens_are_refused() {
        assert!(matches!(AdminToken::new("short", "x"), Err(AuthError::TooShort { length: 5, .. })));
        let config = ServiceConfig {
            admin_token: Some("0123456789abcdef".into()),
            admin_token_file: Some("t".into()),
            ..ServiceConfig::default()
        };
        assert!(matches!(AdminToken::from_config(&config), Err(AuthError::Both)));
    }

    #[test]
    fn announce_token_file_is_made_once_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/announce.token");
        let (made, fresh) = AdminToken::ensure_file(&path).unwrap();
        assert!(fresh);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let (again, fresh) = AdminToken::ensure_file(&path).unwrap();
        assert!(!fresh);
        assert_eq!(made.secret(), again.secret());
        assert_eq!(made.secret().len(), 64);
        assert!(again.accepts(Some(&format!("Bearer {}", made.secret()))));
    }

    #[test]
    fn token_file_first_line_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "0123456789abcdef\ncomment\n").unwrap();
        let config = ServiceConfig { admin_token_file: Some(path), ..ServiceConfig::default() };
        let token = AdminToken::from_config(&config).unwrap().unwrap();
        assert!(token.accepts(Some("Bearer 0123456789abcdef")));
    }
}
