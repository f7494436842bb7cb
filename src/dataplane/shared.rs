//! What every data-plane worker is given a reference to, whichever backend drives it.

use std::sync::Arc;

use crate::catalog::Catalog;
use crate::config::ServeConfig;
use crate::dataplane::library::Content;
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
    pub config: ServeConfig,
    /// A cache box's way to its fill thread; `None` for a seed.
    pub upstream: Option<Arc<UpstreamLink>>,
    /// What the status page shows beside the counters (start time, backend, workers).
    pub status: StatusContext,
}
