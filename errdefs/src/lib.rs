//! berth's error vocabulary, after containerd's `errdefs`: the one list of kinds every
//! domain crate (`image`, `network`, `sandbox`, `store`, `stream`) classifies its errors
//! into. Each crate keeps its own error type, whose messages say what happened; its
//! [`Classify::kind`] says what class of failure that is. The agent turns a kind into a gRPC
//! code in one function, so a new kind is a compile error exactly there.
//!
//! A new error kind goes here, with the code the agent gives it.
#![warn(missing_docs)]

/// The class of a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The named thing does not exist.
    NotFound,
    /// The caller's input is malformed.
    InvalidArgument,
    /// The name or id is taken.
    AlreadyExists,
    /// The request is well formed but cannot be done in the present state of things (a bad
    /// hosts.toml, an unsupported manifest, a container that is not running, a network that
    /// is not configured).
    FailedPrecondition,
    /// A deadline passed.
    DeadlineExceeded,
    /// Too much of something is in use at once (streaming URLs waiting for their client):
    /// trying again later may work.
    ResourceExhausted,
    /// A registry refused the credentials, or wanted some.
    Unauthenticated,
    /// Something outside berth is down or unreachable (a registry, a mirror): trying again
    /// later may work.
    Unavailable,
    /// Content did not match its digest or size.
    DataLoss,
    /// The caller gave up, and the work was abandoned.
    Cancelled,
    /// A local failure: the disk, a mount, the metadata store.
    Internal,
    /// A component outside berth (an OCI runtime, a shim, a CNI plugin) failed; its message
    /// says why.
    Unknown,
}

/// An error that knows its [`ErrorKind`].
pub trait Classify {
    /// The class of this error.
    fn kind(&self) -> ErrorKind;
}
