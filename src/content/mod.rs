//! The content model: ids, piece sizes, hash files, manifests and the mode decision.

pub mod hashfile;
pub mod id;
pub mod manifest;
pub mod mode;
pub mod piece_size;

pub use hashfile::{Digest, HashFile, HashFileError};
pub use id::{ContentId, ContentIdError};
pub use manifest::{Manifest, ManifestError};
pub use mode::{decide, MetadataFailure, Mode, SimpleReason};
pub use piece_size::{PieceSize, PieceSizeError};
