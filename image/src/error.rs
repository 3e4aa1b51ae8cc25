//! The image crate's error type.
//!
//! Every variant is classified by [`Classify::kind`] into berth's one list of kinds, which the
//! agent turns into a gRPC code in one place. This crate itself knows nothing of gRPC.

use std::io;
use std::path::PathBuf;

pub use berth_errdefs::{Classify, ErrorKind};

/// Errors of image references, registry access, pulls and the local stores.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The reference does not follow the distribution reference grammar.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// What the caller sent.
        reference: String,
        /// Why it was refused.
        reason: String,
    },
    /// No local image matches the reference.
    #[error("image {0:?} not found")]
    ImageNotFound(String),
    /// The signature policy file (or a key it names) cannot be used.
    #[error("signature policy {0}")]
    Policy(String),
    /// The signature policy does not trust the image.
    #[error("{0}")]
    NotTrusted(Box<NotTrusted>),
    /// A hosts.toml (or the certs.d directory holding it) is malformed.
    #[error("{}{}: {reason}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    HostsConfig {
        /// The file at fault.
        file: PathBuf,
        /// The 1-based line, where known.
        line: Option<usize>,
        /// What is wrong.
        reason: String,
    },
    /// The registry has no such manifest or blob on any host tried.
    #[error("{what} not found in registry (tried {tried})")]
    RemoteNotFound {
        /// What was asked for.
        what: String,
        /// The hosts tried, in order.
        tried: String,
    },
    /// The registry wants credentials we do not have, or refused those we sent.
    #[error("{host}: authentication failed: {reason}")]
    Unauthorized {
        /// The host that refused.
        host: String,
        /// The registry's own words.
        reason: String,
    },
    /// A registry answered with an error, or could not be reached.
    #[error("{host}: {reason}")]
    Registry {
        /// The host tried.
        host: String,
        /// What went wrong, the registry's own message where it gave one.
        reason: String,
    },
    /// Downloaded or unpacked content does not match the digest or size it was promised.
    #[error("{what}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The object checked.
        what: String,
        /// The digest or size promised.
        expected: String,
        /// What the content had.
        actual: String,
    },
    /// A manifest, index or config the registry served is not usable.
    #[error("{what}: {reason}")]
    BadContent {
        /// The object at fault.
        what: String,
        /// Why.
        reason: String,
    },
    /// The index has no manifest for this machine's platform.
    #[error("no manifest for platform {platform} in {reference}")]
    NoMatchingPlatform {
        /// The platform wanted, e.g. linux/amd64.
        platform: String,
        /// The reference pulled.
        reference: String,
    },
    /// A layer tries to write outside its snapshot, or holds an entry berth will not create.
    #[error("layer {layer} rejected: entry {path:?}: {reason}")]
    UnsafeLayer {
        /// The layer's digest.
        layer: String,
        /// The entry at fault.
        path: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A filesystem operation failed.
    #[error("{context}: {error}")]
    Io {
        /// What berth was doing.
        context: String,
        /// The OS error.
        error: io::Error,
    },
    /// The metadata store failed.
    #[error(transparent)]
    Store(#[from] berth_store::Error),
    /// The snapshots are not what their records say (a parent missing, a key that cannot be).
    #[error("snapshots: {0}")]
    Snapshot(String),
    /// An encrypted layer's key could not be unwrapped with the node's keys.
    #[error("cannot decrypt layer {layer} of {image} with the keys in {}: {reason}", dir.display())]
    Decryption {
        /// The image pulled.
        image: String,
        /// The layer's (encrypted) digest.
        layer: String,
        /// The node's key directory.
        dir: PathBuf,
        /// Why no key opened it.
        reason: String,
    },
    /// An encrypted layer's content is not what was encrypted (HMAC or plain digest).
    #[error("encrypted layer {layer}: {reason}")]
    Tampered {
        /// The layer's (encrypted) digest.
        layer: String,
        /// What did not match.
        reason: String,
    },
    /// The pull's caller went away, and the pull stopped.
    #[error("pull of {0} abandoned: its caller went away")]
    Cancelled(String),
}

impl Error {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidReference { .. } => ErrorKind::InvalidArgument,
            Error::ImageNotFound(_) | Error::RemoteNotFound { .. } => ErrorKind::NotFound,
            Error::NoMatchingPlatform { .. } => ErrorKind::NotFound,
            Error::HostsConfig { .. } => ErrorKind::FailedPrecondition,
            Error::Policy(_) | Error::NotTrusted(_) => ErrorKind::FailedPrecondition,
            Error::Unauthorized { .. } => ErrorKind::Unauthenticated,
            Error::Registry { .. } => ErrorKind::Unavailable,
            Error::DigestMismatch { .. } | Error::Tampered { .. } => ErrorKind::DataLoss,
            Error::Decryption { .. } => ErrorKind::FailedPrecondition,
            Error::BadContent { .. } | Error::UnsafeLayer { .. } => ErrorKind::FailedPrecondition,
            Error::Store(e) => e.kind(),
            Error::Io { .. } | Error::Snapshot(_) => ErrorKind::Internal,
            Error::Cancelled(_) => ErrorKind::Cancelled,
        }
    }

    pub(crate) fn io(context: impl Into<String>, error: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            error,
        }
    }

    pub(crate) fn bad(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::BadContent {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

impl Classify for Error {
    fn kind(&self) -> ErrorKind {
        Error::kind(self)
    }
}

/// Why the signature policy refused an image.
#[derive(Debug, thiserror::Error)]
#[error("image {image} is not trusted: policy scope {scope:?} requires {requires}, and {reason}")]
pub struct NotTrusted {
    /// The image as the pod names it.
    pub image: String,
    /// The policy scope that applied.
    pub scope: String,
    /// What the scope requires.
    pub requires: String,
    /// Why the image does not meet it.
    pub reason: String,
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
