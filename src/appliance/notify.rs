//! Tells systemd how `serve` is doing (the `sd_notify` protocol, `Type=notify` in
//! `appliance/tessera.service`): `READY=1` once the listeners accept and the store is open,
//! `STOPPING=1` when a clean shutdown begins.
//!
//! The protocol is one datagram of `KEY=VALUE` lines sent to the `AF_UNIX` socket named by
//! `$NOTIFY_SOCKET`: a path, or an abstract name written with a leading `@`. Without the
//! variable (not started by systemd) nothing is sent. A message systemd never gets only costs the
//! unit its start timeout, so a failed send is logged and serving goes on.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;

/// The variable systemd sets for a `Type=notify` service.
pub const NOTIFY_SOCKET_VAR: &str = "NOTIFY_SOCKET";

/// Why a state could not be sent to the service manager.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET {0:?}: not an absolute path or an @abstract name")]
    Unsupported(String),
    #[error("NOTIFY_SOCKET {socket:?}: {source}")]
    Send {
        socket: String,
        #[source]
        source: std::io::Error,
    },
}

/// Where the service manager listens, parsed from `$NOTIFY_SOCKET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyTarget {
    /// A socket file.
    Path(PathBuf),
    /// A Linux abstract socket (the bytes after the `@`).
    Abstract(Vec<u8>),
}

impl NotifyTarget {
    /// Parses a `$NOTIFY_SOCKET` value; systemd's other forms (e.g. `vsock:`) are refused.
    pub fn parse(value: &str) -> Result<NotifyTarget, NotifyError> {
        if let Some(name) = value.strip_prefix('@') {
            if !name.is_empty() {
                return Ok(NotifyTarget::Abstract(name.as_bytes().to_vec()));
            }
        } else if value.starts_with('/') {
            return Ok(NotifyTarget::Path(PathBuf::from(value)));
        }
        Err(NotifyError::Unsupported(value.to_string()))
    }

    fn address(&self) -> std::io::Result<SocketAddr> {
        match self {
            NotifyTarget::Path(path) => SocketAddr::from_pathname(path),
            NotifyTarget::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name)
            }
        }
    }

    /// Sends `state` (newline-separated `KEY=VALUE` lines) as one datagram.
    pub fn send(&self, state: &str) -> Result<(), NotifyError> {
        let send = || -> std::io::Result<()> {
            let socket = UnixDatagram::unbound()?;
            let sent = socket.send_to_addr(state.as_bytes(), &self.address()?)?;
            // A datagram is sent whole or not at all; a short count would be a kernel bug.
            assert_eq!(sent, state.len(), "a datagram is sent whole");
            Ok(())
        };
        send().map_err(|source| NotifyError::Send { socket: self.to_string(), source })
    }
}

impl std::fmt::Display for NotifyTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotifyTarget::Path(path) => write!(f, "{}", path.display()),
            NotifyTarget::Abstract(name) => write!(f, "@{}", String::from_utf8_lossy(name)),
        }
    }
}

/// Sends `state` to `$NOTIFY_SOCKET` when it is set; logs a failure rather than stopping.
fn notify(state: &str) {
    let Some(value) = std::env::var_os(NOTIFY_SOCKET_VAR) else {
        return;
    };
    let result = NotifyTarget::parse(&value.to_string_lossy()).and_then(|target| target.send(state));
    match result {
        Ok(()) => tracing::debug!(state, "told the service manager"),
        Err(error) => tracing::warn!(%error, state, "cannot tell the service manager"),
    }
}

/// `READY=1`: the listeners accept and the store is open.
pub fn ready() {
    notify("READY=1");
}

/// `STOPPING=1`: a clean shutdown has begun.
pub fn stopping() {
    notify("STOPPING=1");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_abstract_names_parse_other_forms_are_refused() {
        assert_eq!(
            NotifyTarget::parse("/run/systemd/notify").unwrap(),
            NotifyTarget::Path("/run/systemd/notify".into())
        );
        assert_eq!(NotifyTarget::parse("@sd-notify/1").unwrap(), NotifyTarget::Abstract(b"sd-notify/1".to_vec()));
        for bad in ["", "@", "relative/notify", "vsock:2:1234"] {
            let error = NotifyTarget::parse(bad).unwrap_err();
            assert!(error.to_string().contains(&format!("{bad:?}")), "{error}");
        }
    }

    #[test]
    fn a_state_arrives_as_one_datagram_on_a_socket_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        NotifyTarget::parse(path.to_str().unwrap()).unwrap().send("READY=1").unwrap();
        let mut buffer = [0u8; 64];
        let count = listener.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..count], b"READY=1");
    }

    #[test]
    fn a_state_arrives_on_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("tessera-notify-test-{}", std::process::id());
        let listener = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        NotifyTarget::parse(&format!("@{name}")).unwrap().send("STOPPING=1").unwrap();
        let mut buffer = [0u8; 64];
        let count = listener.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..count], b"STOPPING=1");
    }

    #[test]
    fn a_socket_nobody_listens_on_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone");
        let error = NotifyTarget::Path(path.clone()).send("READY=1").unwrap_err();
        assert!(error.to_string().contains(path.to_str().unwrap()), "{error}");
    }
}
