//! Images for berth: references, registry hosts (certs.d `hosts.toml`), the registry client,
//! the content store, overlay snapshots, the layer applier and the image service that ties
//! them together. Nothing here knows about gRPC.
#![warn(missing_docs)]

pub mod blob;
pub mod content;
pub mod error;
pub mod hosts;
pub mod lazy;
pub mod manifest;
pub mod mountpoints;
pub mod reference;
pub mod registry;
pub mod service;
pub mod snapshot;
pub mod trash;
pub mod unpack;

pub use error::{Classify, Error, ErrorKind, Result};
pub use reference::{Digest, Reference};
pub use registry::Credentials;
pub use service::{FsUsage, ImageRecord, ImageService, ImageServiceConfig};
