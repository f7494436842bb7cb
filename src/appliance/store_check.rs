//! The check of every stored piece after a (re)start, on a thread of its own, so that the first
//! requests after a restart rarely pay for verification on a data-plane worker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::store::Store;

/// A running store check; [`StoreCheck::stop`] ends it early.
pub struct StoreCheck {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StoreCheck {
    /// Starts checking every piece of `store` against its hash; bad pieces are discarded.
    pub fn start(store: Arc<Store>) -> std::io::Result<StoreCheck> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new().name("tessera-verify".into()).spawn(move || {
            let started = std::time::Instant::now();
            let (good, bad) = store.scrub_while(&|| !stopping.load(Ordering::Acquire));
            let elapsed_ms = started.elapsed().as_millis() as u64;
            if bad > 0 {
                tracing::warn!(
                    good,
                    bad,
                    elapsed_ms,
                    "store check: pieces that did not match their hash were discarded"
                );
            } else {
                tracing::info!(good, elapsed_ms, "store check: every stored piece matches its hash");
            }
        })?;
        Ok(StoreCheck { stop, thread: Some(thread) })
    }

    /// Asks the check to stop and waits for its thread.
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for StoreCheck {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}
