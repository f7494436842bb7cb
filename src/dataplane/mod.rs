//! The data plane: `tessera serve`'s piece server. One pinned worker thread per core, each with
//! its own `SO_REUSEPORT` listener (the group owned by this process: `io::sys`), connections and buffers, driven by io_uring (`uring`) or,
//! where io_uring is unavailable, by mio/epoll (`epoll`). Both drivers are thin shells around the
//! same sans-I/O [`connection::Connection`] and [`handler::Handler`].
//!
//! ```text
//!  socket bytes ─► driver (uring | epoll) ─► Connection (parse, pipeline, timeouts)
//!                                              │ Respond
//!                                              ▼
//!                                   Handler ─► route ─► Library (catalog + PieceRef cache) ─► Store::pin
//!                                              │
//!  kernel ◄─ send(msg) of head + mmap slices ◄─┘ Outgoing (guards live until the kernel is done)
//! ```

pub mod access_log;
pub mod connection;
pub mod epoll;
pub mod handler;
pub mod library;
pub mod live;
pub mod metrics;
pub mod rate;
pub mod response;
pub mod route;
pub mod shared;
pub mod status;
pub mod status_page;
pub mod upstream;
pub mod uring;
pub mod worker;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::catalog::{Catalog, CatalogError};
use crate::config::{BackendChoice, Config};
use crate::io::sys::{self, ListenError, ListenerGroup};
use crate::store::{Store, StoreError};
use access_log::AccessLogFile;
use library::Content;
use live::{LiveSettings, Settings};
use metrics::Metrics;
use shared::Shared;
use worker::{WorkerContext, WorkerError};

/// How long `start` waits for every worker to report ready.
const WORKER_READY_TIMEOUT: Duration = Duration::from_secs(10);

pub use crate::io::Backend;

/// Why the server did not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("listen address {address:?} is not valid: {reason}")]
    BadAddress { address: String, reason: String },
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("cannot create data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("io_uring was required (--backend uring) but is unavailable: {0}")]
    UringUnavailable(String),
    #[error("cannot start worker {index}: {message}")]
    WorkerStart { index: usize, message: String },
    #[error(transparent)]
    Worker(#[from] WorkerError),
    #[error("worker {0} panicked")]
    WorkerPanicked(usize),
    #[error("cannot open the access log {path}: {source}")]
    AccessLog { path: PathBuf, source: std::io::Error },
}

/// The piece server.
pub struct Server;

impl Server {
    /// Opens the store and catalog under `config.data_dir` (creating it), binds one listener per
    /// worker and starts the workers. Returns once every worker is ready to accept.
    pub fn start(config: &Config) -> Result<ServerHandle, ServeError> {
        Self::start_with_upstream(config, None)
    }

    /// Like [`Server::start`]; with `upstream`, misses are handed to a cache box's fill thread
    /// through it (it must have [`worker_count`] workers).
    pub fn start_with_upstream(
        config: &Config,
        upstream: Option<Arc<upstream::UpstreamLink>>,
    ) -> Result<ServerHandle, ServeError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|source| ServeError::DataDir { path: config.data_dir.clone(), source })?;
        let store = Arc::new(Store::open(&config.store_dir(), &config.store)?);
        Self::start_inner(config, store, upstream)
    }

    /// Like [`Server::start`], with a store the caller already opened (and may keep ingesting into).
    pub fn start_with_store(config: &Config, store: Arc<Store>) -> Result<ServerHandle, ServeError> {
        Self::start_inner(config, store, None)
    }

    fn start_inner(
        config: &Config,
        store: Arc<Store>,
        upstream: Option<Arc<upstream::UpstreamLink>>,
    ) -> Result<ServerHandle, ServeError> {
        let serve = &config.serve;
        let address = resolve(&serve.listen)?;
        let live = LiveSettings::new(settings_of(config)?);
        let (backend, why) = choose_backend(serve.backend)?;
        let catalog = Catalog::new(config.catalog_dir());
        let (contents, refused) = Content::load_all(&catalog)?;
        for error in &refused {
            tracing::warn!(%error, "catalog entry refused: its metadata does not verify, so it is not served");
        }
        let cpus = sys::allowed_cpus();
        let worker_count = worker_count(serve);
        assert!(upstream.as_ref().is_none_or(|link| link.worker_count() == worker_count), "one link per worker");
        let ListenerGroup { listeners, local_addr, lock: listen_lock } =
            sys::owned_listener_group(address, worker_count, serve.listen_backlog)?;
        tracing::info!(
            address = %local_addr,
            backend = backend.name(),
            why = why.as_str(),
            workers = worker_count,
            contents = contents.len(),
            "data plane listening"
        );
        for content in contents.iter().take(32) {
            tracing::info!(id = %content.id, length = content.length, pieces = content.piece_count(), "serving content");
        }
        if contents.len() > 32 {
            tracing::info!(more = contents.len() - 32, "serving more contents");
        }
        let shared = Arc::new(Shared {
            store,
            catalog,
            contents,
            metrics: Metrics::new(worker_count),
            config: serve.clone(),
            upstream,
            live,
            status: status::StatusContext::new(backend, worker_count),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel::<(usize, Result<(), String>)>();
        let mut workers = Vec::with_capacity(worker_count);
        for (index, listener) in listeners.into_iter().enumerate() {
            let context = WorkerContext { index, listener: Some(listener), shared: shared.clone(), stop: stop.clone() };
            let cpu = cpus[index % cpus.len()];
            let ready = ready_tx.clone();
            let spawned = std::thread::Builder::new().name(format!("tessera-w{index}")).spawn(move || {
                if let Err(error) = sys::pin_current_thread(cpu) {
                    tracing::warn!(worker = index, cpu, %error, "cannot pin worker thread; running unpinned");
                }
                let report = move |result: Result<(), String>| {
                    let _ = ready.send((index, result));
                };
                match backend {
                    Backend::Uring => uring::run(context, report),
                    Backend::Epoll => epoll::run(context, report),
                }
            });
            match spawned {
                Ok(handle) => workers.push(handle),
                Err(error) => {
                    stop.store(true, Ordering::Release);
                    return Err(ServeError::WorkerStart { index, message: error.to_string() });
                }
            }
        }
        drop(ready_tx);
        let handle = ServerHandle { local_addr, backend, stop, workers, shared, _listen_lock: listen_lock };
        for _ in 0..worker_count {
            match ready_rx.recv_timeout(WORKER_READY_TIMEOUT) {
                Ok((_, Ok(()))) => {}
                Ok((index, Err(message))) => {
                    let _ = handle.shutdown();
                    return Err(ServeError::WorkerStart { index, message });
                }
                Err(_) => {
                    let _ = handle.shutdown();
                    return Err(ServeError::WorkerStart {
                        index: usize::MAX,
                        message: "no ready report in time".into(),
                    });
                }
            }
        }
        Ok(handle)
    }
}

/// A running server.
pub struct ServerHandle {
    local_addr: SocketAddr,
    backend: Backend,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<Result<(), WorkerError>>>,
    shared: Arc<Shared>,
    /// Keeps other processes out of the listeners' `SO_REUSEPORT` group while the server runs.
    _listen_lock: std::os::unix::net::UnixListener,
}

impl ServerHandle {
    /// The address the workers listen on (with the real port when `:0` was configured).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The store the workers serve from.
    pub fn store(&self) -> &Arc<Store> {
        &self.shared.store
    }

    /// The backend the workers run on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Number of worker threads.
    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// The counters, as `/metrics` renders them.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Puts `config`'s live settings in force (`[serve]` limits and timeouts, the access log,
    /// reopened): each worker takes them at its next timeout tick (at most 100 ms), without
    /// dropping a connection. On an access log that does not open, the previous one stays.
    pub fn reload(&self, config: &Config) -> Result<(), ServeError> {
        let (settings, result) = match settings_of(config) {
            Ok(settings) => (settings, Ok(())),
            Err(error) => {
                let access_log = self.shared.live.load().access_log.clone();
                let serve = config.serve.clone();
                (
                    Settings { serve, access_log, access_log_buffer_bytes: config.log.access_log_buffer_bytes },
                    Err(error),
                )
            }
        };
        self.shared.live.publish(settings);
        result
    }

    /// Whether any worker has exited (only after `shutdown` or a failure).
    pub fn any_worker_finished(&self) -> bool {
        self.workers.iter().any(JoinHandle::is_finished)
    }

    /// Asks the workers to stop without waiting for them.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Stops accepting, lets in-flight responses finish (within `shutdown_grace_ms`), joins the workers.
    pub fn shutdown(mut self) -> Result<(), ServeError> {
        self.join_all()
    }

    fn join_all(&mut self) -> Result<(), ServeError> {
        self.request_stop();
        let mut result = Ok(());
        for (index, worker) in self.workers.drain(..).enumerate() {
            match worker.join() {
                Ok(Ok(())) => {}
                Ok(Err(error)) => result = result.and(Err(ServeError::Worker(error))),
                Err(_) => result = result.and(Err(ServeError::WorkerPanicked(index))),
            }
        }
        result
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Err(error) = self.join_all() {
            tracing::error!(%error, "data plane stopped with an error");
        }
    }
}

/// The live settings of `config`, with its access log opened.
fn settings_of(config: &Config) -> Result<Settings, ServeError> {
    let access_log = match &config.log.access_log {
        Some(path) => Some(Arc::new(
            AccessLogFile::open(path).map_err(|source| ServeError::AccessLog { path: path.clone(), source })?,
        )),
        None => None,
    };
    Ok(Settings {
        serve: config.serve.clone(),
        access_log,
        access_log_buffer_bytes: config.log.access_log_buffer_bytes,
    })
}

/// Worker threads `serve` runs: `workers`, or one per allowed CPU when 0.
pub fn worker_count(serve: &crate::config::ServeConfig) -> usize {
    if serve.workers == 0 {
        sys::allowed_cpus().len().max(1)
    } else {
        serve.workers
    }
}

fn resolve(listen: &str) -> Result<SocketAddr, ServeError> {
    let bad = |reason: String| ServeError::BadAddress { address: listen.to_string(), reason };
    listen.to_socket_addrs().map_err(|e| bad(e.to_string()))?.next().ok_or_else(|| bad("resolves to nothing".into()))
}

/// Picks the backend for `choice`, with the reason to log.
pub fn choose_backend(choice: BackendChoice) -> Result<(Backend, String), ServeError> {
    crate::io::choose_backend(choice).map_err(ServeError::UringUnavailable)
}
