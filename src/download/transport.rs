//! The byte side of one `get` connection: a connection of the ring layer's client loop
//! ([`ClientLoop`], io_uring or epoll), with rustls on top for https sources, moving bytes between
//! the loop and the HTTP client connection. The only code of `download/` that sends or receives;
//! the cache box's piece fetches (`appliance::fill`) use it too.

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::{ClientConfig, ClientConnection};

use crate::http::client::Connection;
use crate::io::client::{ClientLoop, ConnId};
use crate::tls::client::{client_connection, records_to_send, PLAINTEXT_CHUNK_BYTES};

/// One connection's loop id and TLS state.
pub(crate) struct Transport {
    id: ConnId,
    tls: Option<Box<ClientConnection>>,
    connected: bool,
}

impl Transport {
    /// Starts connecting to `address` on `client`, with TLS for `server_name` when given.
    pub(crate) fn connect(
        client: &mut ClientLoop,
        address: SocketAddr,
        tls: Option<(Arc<ClientConfig>, String)>,
    ) -> Result<Transport, String> {
        let tls = match tls {
            Some((config, name)) => Some(Box::new(client_connection(config, &name)?)),
            None => None,
        };
        let id = client.connect(address).map_err(|e| e.to_string())?;
        Ok(Transport { id, tls, connected: false })
    }

    /// The connection's id in the client loop.
    pub(crate) fn id(&self) -> ConnId {
        self.id
    }

    /// Whether the TCP connect completed.
    pub(crate) fn is_connected(&self) -> bool {
        self.connected
    }

    /// The loop reported the connect done.
    pub(crate) fn set_connected(&mut self) {
        self.connected = true;
    }

    /// Whether bytes pass through TLS (and so cannot be copied straight into a body buffer).
    pub(crate) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Feeds received TLS records to rustls and hands the plaintext to `http`; `Ok(true)` when
    /// the server ended the TLS stream (close_notify). Answers rustls owes (handshake, key
    /// updates) are sent.
    pub(crate) fn receive_tls<T>(
        &mut self,
        client: &mut ClientLoop,
        http: &mut Connection<T>,
        mut bytes: &[u8],
    ) -> Result<bool, String> {
        let tls = self.tls.as_mut().expect("a TLS connection");
        let mut plaintext = [0u8; PLAINTEXT_CHUNK_BYTES];
        // Bounded by the input: each pass consumes received bytes, or stops.
        while !bytes.is_empty() {
            match tls.read_tls(&mut bytes) {
                Ok(0) => break,
                Ok(_) => {}
                Err(error) => return Err(format!("TLS read: {error}")),
            }
            tls.process_new_packets().map_err(|error| format!("TLS: {error}"))?;
            // Bounded by the records just processed: the plaintext reader runs dry with WouldBlock.
            loop {
                match tls.reader().read(&mut plaintext) {
                    Ok(0) => return self.flush_tls(client).map(|()| true),
                    Ok(count) => http.handle_input(&plaintext[..count]),
                    Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                    Err(error) if error.kind() == ErrorKind::UnexpectedEof => return Ok(true),
                    Err(error) => return Err(format!("TLS read: {error}")),
                }
            }
        }
        self.flush_tls(client).map(|()| false)
    }

    /// Queues on the loop what `http` has to send (through TLS for https).
    pub(crate) fn send<T>(&mut self, client: &mut ClientLoop, http: &mut Connection<T>) -> Result<(), String> {
        let pending = http.transmit().len();
        if let Some(tls) = self.tls.as_mut() {
            if pending > 0 {
                tls.writer().write_all(http.transmit()).map_err(|error| format!("TLS write: {error}"))?;
                http.transmitted(pending);
            }
            return self.flush_tls(client);
        }
        if pending > 0 {
            client.send(self.id, http.transmit().to_vec()).map_err(|error| format!("send: {error}"))?;
            http.transmitted(pending);
        }
        Ok(())
    }

    fn flush_tls(&mut self, client: &mut ClientLoop) -> Result<(), String> {
        let Some(tls) = self.tls.as_mut() else { return Ok(()) };
        let records = records_to_send(tls)?;
        if records.is_empty() {
            return Ok(());
        }
        client.send(self.id, records).map_err(|error| format!("send: {error}"))
    }
}
