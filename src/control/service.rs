//! The service's event loop: one thread, mio readiness, rustls per connection. Catalog disk work
//! runs on the keeper thread ([`snapshot`](crate::control::snapshot)), whose results arrive
//! through a channel and the loop's waker.
//!
//! Started by `tessera serve` (embedded) and `tessera service` (alone) through [`Service::start`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::catalog::Catalog;
use crate::config::{Config, RegistryBackend};
use crate::control::auth::{AdminToken, AuthError};
use crate::control::connection::{Connection, ConnectionLimits, Next};
use crate::control::handler::{AnnounceAuth, Handler};
use crate::control::redis_registry::{RedisRegistry, RedisSetupError};
use crate::control::registry::{MemoryRegistry, PeerRegistry};
use crate::control::snapshot::{self, Done, Keeper, MetadataUpstream, UpstreamWaits};
use crate::http::RequestLimits;
use crate::tls::{ensure_dev_tls, host_names, server_config, ServerTlsFiles, TlsError};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CONNECTION: usize = 2;
/// How often timeouts are checked and expired announces dropped.
const TICK: Duration = Duration::from_millis(200);
/// Readiness events handled per poll.
const EVENTS_CAPACITY: usize = 256;

/// Why the service did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("service listen address {value:?} is not IP:PORT")]
    BadListen { value: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("service TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("service admin token: {0}")]
    Auth(#[from] AuthError),
    #[error("service announce token: {0}")]
    AnnounceToken(AuthError),
    #[error("peer registry: {0}")]
    Registry(#[from] RedisSetupError),
    #[error("service config sets {given} without {missing}; give both or neither")]
    HalfTls { given: &'static str, missing: &'static str },
    #[error("service event loop: {0}")]
    Io(#[from] std::io::Error),
}

/// Starts the metadata and peer-matching service.
pub struct Service;

/// A running service; dropping it stops the service.
pub struct ServiceHandle {
    local_addr: SocketAddr,
    ca_file: Option<PathBuf>,
    announce_token_file: Option<PathBuf>,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl Service {
    /// Binds `config.service.listen` and serves `config.data_dir`'s catalog on a thread of its own,
    /// with the peer registry `[registry]` names (in memory, or on Redis).
    pub fn start(config: &Config) -> Result<ServiceHandle, ServiceError> {
        Service::start_for_box(config, None)
    }

    /// As [`Service::start`]; for a cache box, `upstream` has the metadata of ids the catalog
    /// lacks fetched by the box's fill thread.
    pub fn start_for_box(config: &Config, upstream: Option<MetadataUpstream>) -> Result<ServiceHandle, ServiceError> {
        let ttl = Duration::from_millis(config.service.peer_ttl_ms);
        let entries_max = config.service.registry_entries_max;
        let registry: Box<dyn PeerRegistry> = match config.registry.backend {
            RegistryBackend::Memory => Box::new(MemoryRegistry::new(ttl, entries_max)),
            RegistryBackend::Redis => Box::new(RedisRegistry::new(&config.registry, ttl, entries_max)?),
        };
        Service::start_with(config, registry, upstream)
    }

    /// As [`Service::start`], with the given peer registry.
    pub fn start_with_registry(
        config: &Config,
        registry: Box<dyn PeerRegistry>,
    ) -> Result<ServiceHandle, ServiceError> {
        Service::start_with(config, registry, None)
    }

    fn start_with(
        config: &Config,
        registry: Box<dyn PeerRegistry>,
        upstream: Option<MetadataUpstream>,
    ) -> Result<ServiceHandle, ServiceError> {
        let service = &config.service;
        let addr: SocketAddr =
            service.listen.parse().map_err(|_| ServiceError::BadListen { value: service.listen.clone() })?;
        let (tls_files, ca_file) = resolve_tls(config)?;
        let tls = server_config(&tls_files)?;
        let token = AdminToken::from_config(service)?;
        let (announce_auth, announce_token_file) = announce_auth(config)?;
        let std_listener = std::net::TcpListener::bind(addr).map_err(|source| ServiceError::Bind { addr, source })?;
        std_listener.set_nonblocking(true)?;
        let local_addr = std_listener.local_addr()?;
        let mut listener = TcpListener::from_std(std_listener);
        let poll = Poll::new()?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        // The snapshot is loaded here, on the starting thread; later disk work is the keeper's.
        let mut keeper = Keeper::new(Catalog::new(config.catalog_dir()));
        let snapshot = keeper.load_all();
        tracing::info!(entries = snapshot.len(), "control service catalog loaded");
        let (jobs, job_queue) = crossbeam_channel::bounded(service.catalog_jobs_max.max(1) as usize);
        let (done, answers) = crossbeam_channel::unbounded();
        let keeper_waker = waker.clone();
        let rescan = Duration::from_millis(service.catalog_rescan_ms.max(10));
        let upstream = upstream.map(|upstream| {
            // Answered before the connection's own wait bound closes it unanswered.
            let timeout = upstream.timeout.min(Duration::from_millis(service.body_timeout_ms) * 3 / 4);
            (upstream, UpstreamWaits::new(service.catalog_jobs_max.max(1) as usize, timeout))
        });
        let keeper = snapshot::spawn(keeper, rescan, job_queue, done, upstream, move || {
            let _ = keeper_waker.wake();
        })?;
        let handler = Handler::new(snapshot, jobs, registry, token, announce_auth, service);
        let stop = Arc::new(AtomicBool::new(false));
        let limits = ConnectionLimits {
            request: RequestLimits {
                header_bytes_max: service.request_head_bytes_max as usize,
                ..RequestLimits::default()
            },
            body_bytes_max: service.request_body_bytes_max,
            header_timeout: Duration::from_millis(service.header_timeout_ms),
            body_timeout: Duration::from_millis(service.body_timeout_ms),
            idle_timeout: Duration::from_millis(service.idle_timeout_ms),
        };
        let event_loop = EventLoop {
            poll,
            listener,
            tls,
            handler,
            answers,
            keeper,
            limits,
            connections: HashMap::new(),
            connections_max: service.connections_max as usize,
            next_token: FIRST_CONNECTION,
            stop: stop.clone(),
        };
        let thread = std::thread::Builder::new().name("tessera-control".into()).spawn(move || event_loop.run())?;
        tracing::info!(%local_addr, "control service listening (HTTPS)");
        Ok(ServiceHandle { local_addr, ca_file, announce_token_file, stop, waker, thread: Some(thread) })
    }
}

impl ServiceHandle {
    /// The address the service listens on (the real port when the config said port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The development CA clients should trust, when the service made or reused one.
    pub fn dev_ca_file(&self) -> Option<&std::path::Path> {
        self.ca_file.as_deref()
    }

    /// The file holding the token announces must carry; `None` for an open registry.
    pub fn announce_token_file(&self) -> Option<&std::path::Path> {
        self.announce_token_file.as_deref()
    }

    /// Stops the service and waits for its thread.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    /// Whether the service thread still runs (it ends only on shutdown or a fatal poll error).
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|thread| !thread.is_finished())
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ServiceHandle {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Who may announce: the holders of the site token (made on first run), or anyone (warned).
fn announce_auth(config: &Config) -> Result<(AnnounceAuth, Option<PathBuf>), ServiceError> {
    let any_address = config.service.announce_any_address;
    if config.service.announce_open {
        tracing::warn!("announces are not authenticated ([service] announce_open = true): anyone who reaches this service can announce peers");
        return Ok((AnnounceAuth { token: None, any_address }, None));
    }
    let path = config.announce_token_file();
    let (token, made) = AdminToken::ensure_file(&path).map_err(ServiceError::AnnounceToken)?;
    if made {
        tracing::info!(file = %path.display(), "made the site's announce token; give this file to every box of the site");
    }
    Ok((AnnounceAuth { token: Some(token), any_address }, Some(path)))
}

/// The configured certificate, or the development one under `DATA_DIR/tls/` (made on first run).
fn resolve_tls(config: &Config) -> Result<(ServerTlsFiles, Option<PathBuf>), ServiceError> {
    match (&config.service.cert_file, &config.service.key_file) {
        (Some(cert_file), Some(key_file)) => {
            Ok((ServerTlsFiles { cert_file: cert_file.clone(), key_file: key_file.clone() }, None))
        }
        (Some(_), None) => Err(ServiceError::HalfTls { given: "cert_file", missing: "key_file" }),
        (None, Some(_)) => Err(ServiceError::HalfTls { given: "key_file", missing: "cert_file" }),
        (None, None) => {
            let (files, made) = ensure_dev_tls(&config.tls_dir(), &host_names())?;
            if made {
                tracing::info!(ca = %files.ca_cert.display(), "made a development CA and server certificate; trust the CA file");
            }
            Ok((files.server(), Some(files.ca_cert)))
        }
    }
}

struct EventLoop {
    poll: Poll,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    handler: Handler,
    /// What the catalog keeper did, in order.
    answers: Receiver<Done>,
    keeper: JoinHandle<()>,
    limits: ConnectionLimits,
    connections: HashMap<Token, Connection>,
    connections_max: usize,
    next_token: usize,
    stop: Arc<AtomicBool>,
}

impl EventLoop {
    fn run(mut self) {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        let mut last_tick = Instant::now();
        while !self.stop.load(Ordering::SeqCst) {
            if let Err(error) = self.poll.poll(&mut events, Some(TICK)) {
                if error.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(%error, "control service poll failed; stopping");
                return;
            }
            let now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(now),
                    WAKER => self.take_answers(now),
                    token => self.drive(token, now),
                }
            }
            if now.duration_since(last_tick) >= TICK {
                last_tick = now;
                self.handler.tick(now);
                let expired: Vec<Token> =
                    self.connections.iter().filter(|(_, c)| c.timed_out(now)).map(|(token, _)| *token).collect();
                for token in expired {
                    tracing::debug!(?token, "control connection timed out");
                    self.close(token);
                }
            }
        }
        // The keeper ends when its job queue closes with the handler; a write in progress finishes.
        let EventLoop { handler, keeper, .. } = self;
        drop(handler);
        let _ = keeper.join();
        tracing::info!("control service stopped");
    }

    /// Applies what the catalog keeper did; delivers the answers it completes.
    fn take_answers(&mut self, now: Instant) {
        // Bounded: the keeper sends one result per job (at most `catalog_jobs_max` queued) plus
        // at most one change per catalog entry per rescan.
        while let Ok(done) = self.answers.try_recv() {
            let Some((ticket, response)) = self.handler.apply(done) else { continue };
            let token = Token(ticket as usize);
            let Some(connection) = self.connections.get_mut(&token) else { continue };
            connection.deliver(&response, &self.limits, now);
            self.drive(token, now);
        }
    }

    fn accept(&mut self, now: Instant) {
        // Bounded by the kernel's backlog: each pass takes one pending connection.
        loop {
            let (mut socket, peer) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    // E.g. out of file descriptors: wait for the next readiness instead of spinning.
                    tracing::warn!(%error, "control service accept failed");
                    return;
                }
            };
            if self.connections.len() >= self.connections_max {
                tracing::warn!(%peer, connections_max = self.connections_max, "control connection refused: at the limit");
                continue;
            }
            let tls = match rustls::ServerConnection::new(self.tls.clone()) {
                Ok(tls) => tls,
                Err(error) => {
                    tracing::error!(%error, "cannot start a TLS session");
                    continue;
                }
            };
            let token = Token(self.next_token);
            self.next_token = self.next_token.checked_add(1).unwrap_or(FIRST_CONNECTION);
            if let Err(error) = self.poll.registry().register(&mut socket, token, Interest::READABLE) {
                tracing::warn!(%error, "cannot register a control connection");
                continue;
            }
            self.connections.insert(token, Connection::new(socket, peer.ip(), tls, &self.limits, now, token.0 as u64));
        }
    }

    fn drive(&mut self, token: Token, now: Instant) {
        let Some(connection) = self.connections.get_mut(&token) else { return };
        match connection.drive(&mut self.handler, &self.limits, now) {
            Next::Close => self.close(token),
            Next::Wait { writable } => {
                let interest = if writable { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
                if self.poll.registry().reregister(&mut connection.socket, token, interest).is_err() {
                    self.close(token);
                }
            }
        }
    }

    fn close(&mut self, token: Token) {
        if let Some(mut connection) = self.connections.remove(&token) {
            let _ = self.poll.registry().deregister(&mut connection.socket);
        }
    }
}
