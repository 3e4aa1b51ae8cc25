//! Images for berth: references, registry hosts (certs.d `hosts.toml`), the registry client,
//! the content store, overlay snapshots, the layer applier and the image service that ties
//! them together. Nothing here knows about gRPC.
//!
//! ```text
//!  service/   ImageService: index.rs (records, resolve), pull.rs, decrypt.rs, lazy_pull.rs,
//!             verify.rs (the signature policy applied to a pull), gc.rs (remove, GC,
//!             usage), readers.rs (what a layer streams through)
//!  registry/  the distribution API client: mod.rs (clients, credentials), session.rs (the
//!             host loop, manifests, blobs, ranges), auth.rs, body.rs
//!  hosts.rs   certs.d hosts.toml          reference.rs  references and digests
//!  policy.rs  the signature policy (policy.json): scopes, requirements, keys, payloads
//!  manifest.rs manifests, indexes, configs, platforms
//!  content.rs the blob store    blob.rs downloads    unpack.rs the layer applier
//!  snapshot.rs overlay snapshots (committed layers, writable snapshots, views)
//!  mountpoints.rs, trash.rs, lazy.rs (eStargz mounts: berth-lazy underneath), error.rs
//! ```
//!
//! Where a change goes: a new image source (another kind of registry, a local archive)
//! comes in beside `registry/` and is chosen in `service/pull.rs`; a new layer media type in
//! `unpack.rs` (and `service/readers.rs` for its decompression); a new error in `error.rs`
//! with its kind from `berth-errdefs`.
#![warn(missing_docs)]

pub mod blob;
pub mod content;
pub mod error;
pub mod hosts;
pub mod lazy;
pub mod manifest;
pub mod mountpoints;
pub mod policy;
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
