//! The socket side of one `get` connection: a non-blocking TCP stream (mio), with rustls on top
//! for https sources, moving bytes between the kernel and the HTTP client connection. The only
//! code of `download/` that touches a socket, so that it moves onto the ring layer as one piece.

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

use crate::http::client::Connection;

/// What one receive did.
pub(crate) enum Received {
    /// The server closed the connection.
    Eof,
    /// This many body bytes went straight into the caller's buffer (already told to `http`).
    Direct(usize),
    /// Bytes (or TLS records) went into `http`'s input.
    Buffered,
}

/// One connection's socket and TLS state.
pub(crate) struct Transport {
    stream: TcpStream,
    tls: Option<Box<ClientConnection>>,
    connected: bool,
}

impl Transport {
    /// Starts a non-blocking connect to `address`, with TLS for `server_name` when given.
    pub(crate) fn connect(
        address: SocketAddr,
        tls: Option<(Arc<ClientConfig>, String)>,
        registry: &Registry,
        token: Token,
    ) -> Result<Transport, String> {
        let mut stream = TcpStream::connect(address).map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let tls = match tls {
            Some((config, name)) => {
                let name = ServerName::try_from(name).map_err(|e| e.to_string())?;
                Some(Box::new(ClientConnection::new(config, name).map_err(|e| e.to_string())?))
            }
            None => None,
        };
        registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE).map_err(|e| e.to_string())?;
        Ok(Transport { stream, tls, connected: false })
    }

    /// Stops readiness events for this socket (it closes when dropped).
    pub(crate) fn deregister(&mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.stream);
    }

    /// Whether the TCP connect completed.
    pub(crate) fn is_connected(&self) -> bool {
        self.connected
    }

    /// Whether bytes pass through TLS (and so cannot be received straight into a buffer).
    pub(crate) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// After a writable event on a connecting socket: `Ok(true)` once connected.
    pub(crate) fn finish_connect(&mut self) -> Result<bool, String> {
        if let Ok(Some(error)) | Err(error) = self.stream.take_error() {
            return Err(format!("connect: {error}"));
        }
        match self.stream.peer_addr() {
            Ok(_) => {
                self.connected = true;
                Ok(true)
            }
            Err(error) if error.kind() == ErrorKind::NotConnected => Ok(false),
            Err(error) => Err(format!("connect: {error}")),
        }
    }

    /// Receives once: straight into `direct` when given (plain TCP, inside a body), else into
    /// `http`'s input through `scratch`.
    pub(crate) fn receive(
        &mut self,
        http: &mut Connection<u64>,
        direct: Option<&mut [u8]>,
        scratch: &mut [u8],
    ) -> std::io::Result<Received> {
        if self.tls.is_some() {
            return self.receive_tls(http, scratch);
        }
        if let Some(buffer) = direct {
            let count = self.stream.read(buffer)?;
            if count == 0 {
                return Ok(Received::Eof);
            }
            http.handle_body_direct(count as u64);
            return Ok(Received::Direct(count));
        }
        let count = self.stream.read(scratch)?;
        if count == 0 {
            return Ok(Received::Eof);
        }
        http.handle_input(&scratch[..count]);
        Ok(Received::Buffered)
    }

    /// Reads what TLS records arrived and hands the plaintext to `http`. A close without
    /// close_notify is EOF too: the bytes before it still count.
    fn receive_tls(&mut self, http: &mut Connection<u64>, scratch: &mut [u8]) -> std::io::Result<Received> {
        let tls = self.tls.as_mut().expect("a TLS connection");
        if tls.read_tls(&mut self.stream)? == 0 {
            return Ok(Received::Eof);
        }
        tls.process_new_packets().map_err(|error| std::io::Error::other(format!("TLS: {error}")))?;
        // Bounded by the records just processed: the plaintext reader runs dry with WouldBlock.
        loop {
            match tls.reader().read(scratch) {
                Ok(0) => return Ok(Received::Eof),
                Ok(count) => http.handle_input(&scratch[..count]),
                Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == ErrorKind::UnexpectedEof => return Ok(Received::Eof),
                Err(error) => return Err(error),
            }
        }
        self.flush_tls().map_err(std::io::Error::other)?;
        Ok(Received::Buffered)
    }

    /// Writes what `http` has queued, as far as the socket takes it.
    pub(crate) fn send(&mut self, http: &mut Connection<u64>) -> Result<(), String> {
        if let Some(tls) = self.tls.as_mut() {
            let pending = http.transmit().len();
            if pending > 0 {
                tls.writer().write_all(http.transmit()).map_err(|error| format!("TLS write: {error}"))?;
                http.transmitted(pending);
            }
            return self.flush_tls();
        }
        // Bounded: each pass writes bytes or stops.
        while !http.transmit().is_empty() {
            match self.stream.write(http.transmit()) {
                Ok(0) => return Err("write returned 0".into()),
                Ok(count) => http.transmitted(count),
                Err(error) if error.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(error) => return Err(format!("write: {error}")),
            }
        }
        Ok(())
    }

    fn flush_tls(&mut self) -> Result<(), String> {
        let Some(tls) = self.tls.as_mut() else { return Ok(()) };
        // Bounded: each pass writes TLS bytes or stops.
        while tls.wants_write() {
            match tls.write_tls(&mut self.stream) {
                Ok(0) => return Err("write returned 0".into()),
                Ok(_) => {}
                Err(error) if error.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(error) => return Err(format!("TLS write: {error}")),
            }
        }
        Ok(())
    }
}
