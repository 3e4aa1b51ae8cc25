//! The sandbox crate's error type.

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
    /// A local failure.
    Internal,
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
    /// An image or the metadata store failed.
    #[error("{0}")]
    Image(String),
    /// Networking failed.
    #[error("network: {0}")]
    Network(#[source] berth_network::Error),
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
    #[error("{context}: {source}")]
    Io {
        /// What berth was doing.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Invalid(_) => ErrorKind::InvalidArgument,
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::Image(_) => ErrorKind::Failed,
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

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
