//! The sandbox crate's error type. A message says all there is to say (causes included); no
//! error is both printed and chained as a `source`, so a caller prints it once, whole.

pub use berth_errdefs::{Classify, ErrorKind};

/// Errors of shims and sandboxes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A caller's input is invalid.
    #[error("{0}")]
    Invalid(String),
    /// No such pod or container.
    #[error("{0}")]
    NotFound(String),
    /// An image or snapshot operation failed.
    #[error(transparent)]
    Image(#[from] berth_image::Error),
    /// The metadata store failed (a pod or container record).
    #[error(transparent)]
    Store(#[from] berth_store::Error),
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
    /// An NRI plugin refused, conflicted with another, or asked for what berth cannot do.
    #[error(transparent)]
    Nri(berth_nri::Error),
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
            Error::Image(e) | Error::SandboxImage { error: e, .. } => e.kind(),
            Error::Store(e) => e.kind(),
            Error::Network(e) => e.kind(),
            Error::Nri(e) => e.kind(),
            Error::AlreadyExists(_) => ErrorKind::AlreadyExists,
            Error::Precondition(_) => ErrorKind::FailedPrecondition,
            Error::Timeout(_) => ErrorKind::DeadlineExceeded,
            Error::ShimNotFound { .. } | Error::UnsupportedShim { .. } => {
                ErrorKind::FailedPrecondition
            }
            Error::Task {
                not_found: true, ..
            } => ErrorKind::NotFound,
            Error::ShimStart { .. } | Error::Task { .. } => ErrorKind::Unknown,
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

impl Classify for Error {
    fn kind(&self) -> ErrorKind {
        Error::kind(self)
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
        let store = Error::from(berth_store::Error::new(format!("write: {disk}")));
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
