//! The control plane: the metadata and peer-matching service (HTTPS on mio + rustls, no async
//! runtime) and the blocking client that downloads and cache boxes use to reach it.
//!
//! - [`handler`]: routes and answers requests without I/O (catalog snapshot, registry, auth, limits).
//! - [`snapshot`]: the catalog in memory, and the keeper thread that does its disk work.
//! - [`connection`] and [`service`]: the TLS connections and the event loop around the handler.
//! - [`registry`]: the [`PeerRegistry`] trait and its in-memory implementation;
//!   [`redis_registry`]: the one on Redis, shared by a fleet; [`metrics`]: the service's `/metrics`.
//! - [`client`]: [`MetadataClient`], with a typed error per way a fetch fails.

pub mod api;
pub mod auth;
pub mod client;
pub mod connection;
pub mod handler;
pub mod metrics;
pub mod rate;
pub mod redis_registry;
pub mod registry;
pub mod service;
pub mod snapshot;
pub mod validate;

pub use api::{AnnounceRequest, AnnouncedContent, PeerInfo, PeersResponse};
pub use client::{service_url, ClientError, MetadataClient};
pub use redis_registry::RedisRegistry;
pub use registry::{MemoryRegistry, PeerRegistry};
pub use service::{Service, ServiceError, ServiceHandle};
