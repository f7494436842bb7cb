//! The settings a reload (SIGHUP) changes in running workers: `[serve]`'s live limits and the
//! access log. The appliance publishes a whole new [`Settings`]; each worker compares one
//! generation number at its timeout tick and takes the new settings only when it changed, so
//! the request path reads no shared state for them and takes no lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::ServeConfig;
use crate::dataplane::access_log::AccessLogFile;

/// What workers take on at a reload.
#[derive(Debug)]
pub struct Settings {
    /// `[serve]` as in force (its restart-only keys keep their start values).
    pub serve: ServeConfig,
    /// The access log, when on.
    pub access_log: Option<Arc<AccessLogFile>>,
    /// Bytes of access-log lines a worker buffers at most.
    pub access_log_buffer_bytes: usize,
}

/// The settings in force, shared by the workers.
pub struct LiveSettings {
    current: ArcSwap<Settings>,
    generation: AtomicU64,
}

impl LiveSettings {
    /// The settings the workers start with.
    pub fn new(settings: Settings) -> LiveSettings {
        LiveSettings { current: ArcSwap::from_pointee(settings), generation: AtomicU64::new(0) }
    }

    /// Puts `settings` in force; every worker takes them at its next tick.
    pub fn publish(&self, settings: Settings) {
        self.current.store(Arc::new(settings));
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The settings in force.
    pub fn load(&self) -> Arc<Settings> {
        self.current.load_full()
    }
}

/// One worker's view: the generation it took last.
#[derive(Debug, Default)]
pub struct SettingsWatch {
    seen: u64,
}

impl SettingsWatch {
    /// The new settings, when some were published since the last call.
    pub fn poll(&mut self, live: &LiveSettings) -> Option<Arc<Settings>> {
        let generation = live.generation.load(Ordering::Acquire);
        if generation == self.seen {
            return None;
        }
        self.seen = generation;
        Some(live.load())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(idle_timeout_ms: u64) -> Settings {
        let serve = ServeConfig { idle_timeout_ms, ..ServeConfig::default() };
        Settings { serve, access_log: None, access_log_buffer_bytes: 4096 }
    }

    #[test]
    fn a_worker_sees_each_publish_once_and_only_the_latest() {
        let live = LiveSettings::new(settings(1));
        let mut watch = SettingsWatch::default();
        assert!(watch.poll(&live).is_none(), "the start settings are not news");
        live.publish(settings(2));
        live.publish(settings(3));
        assert_eq!(watch.poll(&live).map(|s| s.serve.idle_timeout_ms), Some(3));
        assert!(watch.poll(&live).is_none());
    }
}
