//! The ring layer under every plane: io_uring operations that own their descriptors and buffers
//! ([`uring`]), the slot table that routes completions and readiness events ([`slots`]), sockets
//! and CPU pinning ([`sys`]), and the client-connection event loop with an io_uring and a
//! mio/epoll backend ([`client`]). All of the crate's `unsafe` for system calls lives here.

pub mod client;
pub mod slots;
pub mod sys;
pub mod uring;

use crate::config::BackendChoice;

/// The event-loop backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Uring,
    Epoll,
}

impl Backend {
    /// `uring` or `epoll`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Uring => "uring",
            Backend::Epoll => "epoll",
        }
    }
}

/// Picks the backend for `choice`, with the reason to log; `Err` (the probe's reason) when
/// io_uring is forced but unavailable.
pub fn choose_backend(choice: BackendChoice) -> Result<(Backend, String), String> {
    match choice {
        BackendChoice::Epoll => Ok((Backend::Epoll, "forced by configuration or --backend".into())),
        BackendChoice::Uring => {
            uring::probe().map(|()| (Backend::Uring, "forced by configuration or --backend".into()))
        }
        BackendChoice::Auto => Ok(match uring::probe() {
            Ok(()) => (Backend::Uring, "io_uring is available".into()),
            Err(reason) => (Backend::Epoll, format!("io_uring is unavailable ({reason}); falling back to epoll")),
        }),
    }
}
