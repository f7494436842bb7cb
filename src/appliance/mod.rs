//! What `tessera serve` runs, assembled in one place: the data plane, the check of the store
//! after a restart, the embedded metadata service, the announcer, and (next) the fill engine.
//! `cli/serve.rs` only turns arguments into a [`Config`] and calls [`Appliance::start`].
//!
//! Start order: data plane (it opens the store) → store check → embedded service → announcer
//! (it needs both addresses). Stop order: store check → data plane (in-flight responses finish)
//! → announcer → service.

pub mod announcer;
pub mod check;
pub mod fill;
pub mod notify;
pub mod reload;
pub mod store_check;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::catalog::Catalog;
use crate::config::{Config, UpstreamConfig};
use crate::control::snapshot::MetadataUpstream;
use crate::control::{Service, ServiceError, ServiceHandle};
use crate::dataplane::upstream::UpstreamLink;
use crate::dataplane::{ServeError, Server, ServerHandle};
use announcer::{AnnounceTarget, AnnounceTrigger, AnnouncerError, AnnouncerHandle, TargetError};
use store_check::StoreCheck;

/// How often [`Appliance::run_until`] looks for a stop request or a dead worker.
const STOP_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Beyond its two upstream steps, the time a metadata ask of the service may take on the fill
/// thread (a catalog write, a busy turn).
const ASK_MARGIN_MS: u64 = 1000;

/// Why the appliance did not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum ApplianceError {
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error(transparent)]
    AnnounceTarget(#[from] TargetError),
    #[error(transparent)]
    Announcer(#[from] AnnouncerError),
    #[error("cannot start the store check thread: {0}")]
    StoreCheck(std::io::Error),
    #[error(transparent)]
    Fill(#[from] fill::FillStartError),
    #[error("a data-plane worker stopped unexpectedly")]
    WorkerStopped,
}

/// A running appliance; dropping it stops every part.
pub struct Appliance {
    store_check: Option<StoreCheck>,
    server: Option<ServerHandle>,
    /// A cache box's fill thread (misses → upstream); started after the data plane whose
    /// workers it wakes, stopped after it.
    fill: Option<fill::FillHandle>,
    announcer: Option<AnnouncerHandle>,
    service: Option<ServiceHandle>,
    /// The config in force (a reload changes its live settings only).
    config: Config,
    /// The announcer's wake-up, kept to restart it with reloaded `[announce]` settings.
    trigger: AnnounceTrigger,
}

impl Appliance {
    /// Starts every part `config` asks for; on an error, the parts already started are stopped.
    pub fn start(config: &Config) -> Result<Appliance, ApplianceError> {
        let upstream = config.upstream.as_ref().filter(|upstream| !upstream.service_url.is_empty());
        let link = upstream.map(|_| UpstreamLink::new(crate::dataplane::worker_count(&config.serve)));
        let (link, misses) = match link {
            Some((link, misses)) => (Some(Arc::new(link)), Some(misses)),
            None => (None, None),
        };
        let server = Server::start_with_upstream(config, link.clone())?;
        // The fill asks the announcer to announce what it just stored.
        let trigger = AnnounceTrigger::default();
        let mut appliance = Appliance {
            store_check: None,
            server: None,
            fill: None,
            announcer: None,
            service: None,
            config: config.clone(),
            trigger: trigger.clone(),
        };
        // A cache box's embedded service asks the fill for the metadata of ids it lacks.
        let mut service_upstream = None;
        if let (Some(upstream), Some(link), Some(misses)) = (upstream, link, misses) {
            tracing::info!(service = %upstream.service_url, parents = ?upstream.peers, "cache box: filling misses from upstream");
            let store = server.store().clone();
            let asked = config.service.enabled.then(|| {
                let (service_end, fill_end) = service_link(config, upstream);
                service_upstream = Some(service_end);
                fill_end
            });
            appliance.fill = Some(fill::start(config, upstream, store, link, misses, trigger.clone(), asked)?);
        }
        if config.store.verify_at_start {
            appliance.store_check = Some(
                StoreCheck::start(server.store().clone(), Catalog::new(config.catalog_dir()))
                    .map_err(ApplianceError::StoreCheck)?,
            );
        }
        appliance.server = Some(server);
        if config.service.enabled {
            appliance.service = Some(Service::start_for_box(config, service_upstream)?);
        }
        appliance.announcer = start_announcer(config, appliance.server(), appliance.service(), trigger)?;
        Ok(appliance)
    }

    /// The data plane.
    pub fn server(&self) -> &ServerHandle {
        self.server.as_ref().expect("the server runs until the appliance stops")
    }

    /// The embedded metadata service, when it runs.
    pub fn service(&self) -> Option<&ServiceHandle> {
        self.service.as_ref()
    }

    /// Serves until `stop` is set (e.g. by a signal) or a data-plane worker dies, then stops.
    /// Tells systemd it is ready first (`notify`): every part started in [`Appliance::start`].
    /// Each time `reload` is set (SIGHUP), `load` gives the config to reload, or why there is
    /// none (the config in force then stays, and the log says why).
    pub fn run_until<E: std::fmt::Display>(
        mut self,
        stop: &AtomicBool,
        reload: &AtomicBool,
        mut load: impl FnMut() -> Result<Config, E>,
    ) -> Result<(), ApplianceError> {
        notify::ready();
        while !stop.load(Ordering::Acquire) && !self.server().any_worker_finished() {
            if reload.swap(false, Ordering::AcqRel) {
                match load() {
                    Ok(config) => drop(self.reload(&config)),
                    Err(error) => tracing::error!(%error, "reload refused: the config in force stays"),
                }
            }
            std::thread::sleep(STOP_POLL_INTERVAL);
        }
        if stop.load(Ordering::Acquire) {
            tracing::info!("stop requested: no new connections; finishing in-flight responses");
        } else {
            tracing::error!("a worker stopped unexpectedly; shutting down");
        }
        let clean = !self.server().any_worker_finished();
        notify::stopping();
        self.shutdown()?;
        if clean {
            Ok(())
        } else {
            Err(ApplianceError::WorkerStopped)
        }
    }

    /// Stops every part, the data plane first letting in-flight responses finish.
    pub fn shutdown(mut self) -> Result<(), ApplianceError> {
        self.stop_all()
    }

    fn stop_all(&mut self) -> Result<(), ApplianceError> {
        if let Some(check) = self.store_check.take() {
            check.stop();
        }
        // Drop stops what `shutdown` left; a second pass finds nothing to stop and says nothing.
        let result = match self.server.take() {
            Some(server) => {
                let stopped = server.shutdown().map_err(ApplianceError::from);
                if stopped.is_ok() {
                    tracing::info!("data plane stopped");
                }
                stopped
            }
            None => Ok(()),
        };
        drop(self.fill.take());
        drop(self.announcer.take());
        drop(self.service.take());
        result
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        if let Err(error) = self.stop_all() {
            tracing::error!(%error, "appliance stopped with an error");
        }
    }
}

/// The link between the embedded service's catalog keeper and the fill thread: as many asks as
/// the keeper's job queue, each answered within the two metadata steps (manifest, hash file).
fn service_link(config: &Config, upstream: &UpstreamConfig) -> (MetadataUpstream, fill::service_asks::ServiceAsks) {
    let timeout_ms = upstream.metadata_timeout_ms.saturating_mul(2).saturating_add(ASK_MARGIN_MS);
    fill::service_asks::link(config.service.catalog_jobs_max as usize, Duration::from_millis(timeout_ms))
}

/// Announces this seed's content to the metadata service (the embedded one by default).
fn start_announcer(
    config: &Config,
    server: &ServerHandle,
    service: Option<&ServiceHandle>,
    trigger: AnnounceTrigger,
) -> Result<Option<AnnouncerHandle>, ApplianceError> {
    let embedded = service.map(|s| announcer::EmbeddedService {
        addr: s.local_addr(),
        dev_ca: s.dev_ca_file(),
        token_file: s.announce_token_file(),
    });
    let resolved =
        AnnounceTarget::resolve(&config.announce, server.local_addr(), embedded, config.download.metadata_timeout_ms);
    let target = match resolved {
        Ok(target) => target,
        // Serving matters more than being found: say why, and serve unannounced.
        Err(error @ TargetError::UnspecifiedAddress(_)) => {
            tracing::warn!(%error, "not announcing");
            return Ok(None);
        }
        Err(error) => return Err(error.into()),
    };
    let Some(target) = target else {
        tracing::info!(
            "not announcing: no metadata service to announce to ([announce] service_url, or the embedded service)"
        );
        return Ok(None);
    };
    tracing::info!(service = %target.service_url, peer_id = %target.peer_id, group = %target.group, address = %target.address, "announcing held content");
    Ok(Some(announcer::start(target, Catalog::new(config.catalog_dir()), server.store().clone(), trigger)?))
}
