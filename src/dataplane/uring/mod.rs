//! The io_uring driver (stage 3).

use crate::dataplane::worker::{WorkerContext, WorkerError};

/// Whether io_uring can run here; the reason when it cannot.
pub fn probe() -> Result<(), String> {
    Err("the io_uring driver is not built yet".into())
}

/// Runs one worker on io_uring.
pub fn run(context: WorkerContext, ready: impl FnOnce(Result<(), String>)) -> Result<(), WorkerError> {
    drop(context);
    ready(Err("the io_uring driver is not built yet".into()));
    Ok(())
}
