//! The sandbox crate's error type. A message says all there is to say (causes included); no
//! error is both printed and chained as a `source`, so a caller prints it once, whole.

use berth_image as image;

/// The class of a failure; the agent maps it to a gRPC code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The named thing does not exist.
    NotFound,
    /// A caller's input is malformed.
    InvalidArgument,
    /// The name or id is taken.
    AlreadyExists,
    /// Not possible in the present state.
    FailedPrecondition,
    /// A deadline passed.
    DeadlineExceeded,
    /// A shim or runtime failed.
    Failed,
    /// A local failure: the disk, the metadata store.
    Internal,
    /// A registry refused the credentials (pulling the sandbox image).
    Unauthenticated,
    /// Something outside berth is down (a registry).
    Unavailable,
    /// Content did not match its digest.
    DataLoss,
    /// The caller gave up.
    Cancelled,
}

/// Errors of shims and sandboxes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A caller's input is invalid.
    #[error("{0}")]
    Invalid(String),
    /// No such pod or container.
    #[error("{0}")]
    NotFound(String),
    /// An image, snapshot or metadata-store operation failed.
    #[error(transparent)]
    Image(#[from] berth_image::Error),
    /// The sandbox image could not be pulled.
    #[error("pull sandbox image {image}: {error}")]
    SandboxImage {
        /// Its reference.
        image: String,
        /// Why.
        error: berth_image::Error,
    },
    /// Networking failed.
    #[error("network: {0}")]
    Network(berth_network::Error),
    /// A name or id is already taken.
    #[error("{0}")]
    AlreadyExists(String),
    /// The object is not in a state that allows the call.
    #[error("{0}")]
    Precondition(String),
    /// A deadline passed.
    #[error("{0}")]
    Timeout(String),
    /// The shim binary is not installed.
    #[error("shim binary {binary} not found (looked in {searched})")]
    ShimNotFound {
        /// The binary name.
        binary: String,
        /// Where berth looked.
        searched: String,
    },
    /// `<shim> start` failed.
    #[error("start shim {binary}: {reason}")]
    ShimStart {
        /// The binary.
        binary: String,
        /// Its stderr, or what went wrong.
        reason: String,
    },
    /// The shim speaks a task API berth does not.
    #[error("shim {binary} speaks task API {version}; berth speaks containerd.task.v2")]
    UnsupportedShim {
        /// The binary.
        binary: String,
        /// What it announced.
        version: String,
    },
    /// A task API call failed.
    #[error("shim {call} {id}: {reason}")]
    Task {
        /// The call (Create, Start, …).
        call: &'static str,
        /// The task id.
        id: String,
        /// The shim's message.
        reason: String,
        /// Whether the shim said "not found".
        not_found: bool,
        /// Whether the connection to the shim is gone (the shim died).
        gone: bool,
    },
    /// A file operation failed.
    #[error("{context}: {error}")]
    Io {
        /// What berth was doing.
        context: String,
        /// The OS error.
        error: std::io::Error,
    },
}

impl From<berth_network::Error> for Error {
    fn from(e: berth_network::Error) -> Self {
        Error::Network(e)
    }
}

impl Error {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Invalid(_) => ErrorKind::InvalidArgument,
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::Image(e) | Error::SandboxImage { error: e, .. } => match e.kind() {
                image::ErrorKind::NotFound => ErrorKind::NotFound,
                image::ErrorKind::InvalidArgument => ErrorKind::InvalidArgument,
                image::ErrorKind::Unauthenticated => ErrorKind::Unauthenticated,
                image::ErrorKind::Unavailable => ErrorKind::Unavailable,
                image::ErrorKind::FailedPrecondition => ErrorKind::FailedPrecondition,
                image::ErrorKind::DataLoss => ErrorKind::DataLoss,
                image::ErrorKind::Internal => ErrorKind::Internal,
                image::ErrorKind::Cancelled => ErrorKind::Cancelled,
            },
            Error::Network(e) => match e.kind() {
                berth_network::ErrorKind::NotReady => ErrorKind::FailedPrecondition,
                berth_network::ErrorKind::InvalidArgument => ErrorKind::InvalidArgument,
                berth_network::ErrorKind::Failed => ErrorKind::Failed,
                berth_network::ErrorKind::Internal => ErrorKind::Internal,
            },
            Error::AlreadyExists(_) => ErrorKind::AlreadyExists,
            Error::Precondition(_) => ErrorKind::FailedPrecondition,
            Error::Timeout(_) => ErrorKind::DeadlineExceeded,
            Error::ShimNotFound { .. } | Error::UnsupportedShim { .. } => {
                ErrorKind::FailedPrecondition
            }
            Error::Task {
                not_found: true, ..
            } => ErrorKind::NotFound,
            Error::ShimStart { .. } | Error::Task { .. } => ErrorKind::Failed,
            Error::Io { .. } => ErrorKind::Internal,
        }
    }

    /// Whether this is a task call that failed because the shim is gone.
    pub fn shim_gone(&self) -> bool {
        matches!(self, Error::Task { gone: true, .. })
    }

    pub(crate) fn io(context: impl Into<String>, error: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            error,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_and_store_errors_keep_their_kind_and_say_their_cause_once() {
        let disk = std::io::Error::from_raw_os_error(28);
        let store = Error::from(berth_image::Error::Store(format!("write: {disk}")));
        assert_eq!(store.kind(), ErrorKind::Internal);
        assert_eq!(store.to_string(), format!("metadata store: write: {disk}"));
        let missing = Error::from(berth_image::Error::ImageNotFound("busybox".into()));
        assert_eq!(missing.kind(), ErrorKind::NotFound);
        let io = Error::io("write hosts", std::io::Error::from_raw_os_error(28));
        assert!(std::error::Error::source(&io).is_none());
        assert_eq!(io.to_string().matches("No space left").count(), 1);
        let pull = Error::SandboxImage {
            image: "pause:3.10".into(),
            error: berth_image::Error::Registry {
                host: "registry.k8s.io".into(),
                reason: "HTTP 503".into(),
            },
        };
        assert_eq!(pull.kind(), ErrorKind::Unavailable);
    }
}
