//! What every data-plane worker is given a reference to, whichever backend drives it.

use std::sync::Arc;

use crate::catalog::Catalog;
use crate::config::ServeConfig;
use crate::dataplane::library::Content;
use crate::dataplane::live::LiveSettings;
use crate::dataplane::metrics::Metrics;
use crate::dataplane::status::StatusContext;
use crate::dataplane::upstream::UpstreamLink;
use crate::store::Store;

/// What every worker shares: the store, the catalog snapshot taken at startup, the counters.
pub struct Shared {
    pub store: Arc<Store>,
    pub catalog: Catalog,
    pub contents: Vec<Content>,
    pub metrics: Metrics,
    /// `[serve]` as the server started (what sized its tables, rings and buffers).
    pub config: ServeConfig,
    /// A cache box's way to its fill thread; `None` for a seed.
    pub upstream: Option<Arc<UpstreamLink>>,
    /// The settings a reload changes (limits, timeouts, access log), taken by each worker at its tick.
    pub live: LiveSettings,
    /// What the status page shows beside the counters (start time, backend, workers).
    pub status: StatusContext,
}
