//! The download engine behind `tessera get`: metadata first, then verified pieces from peers and
//! HTTP sources (P2P mode), or the HTTP sources alone (Simple mode).
//!
//! Sans-I/O cores: [`scheduler`] (what to ask whom) and [`ban`] (rule 4); requests and responses go
//! through the one HTTP client, `crate::http::client`. [`driver`] is the thin loop around them, on
//! the ring layer's `io::client::ClientLoop`; [`metadata`] gets the manifest and hash file behind
//! the [`MetadataSource`] trait; [`output`] owns the partial file and resume; [`get`] ties one
//! download together. See `docs/download.md`.

pub mod ban;
pub mod driver;
pub mod fetch;
pub mod get;
pub mod metadata;
pub mod output;
pub(crate) mod piece_response;
pub mod prometheus;
pub mod scheduler;
pub mod service_metadata;
pub(crate) mod transport;
pub mod verify;

pub use driver::{Progress, SourceSpec, SourceStats};
pub use get::{get, GetError, GetRequest, Status, Summary};
pub use metadata::{MetadataSource, NoService};
pub use service_metadata::ServiceMetadata;
