//! The network crate's error type.

use std::path::PathBuf;

pub use berth_errdefs::{Classify, ErrorKind};

/// Errors of network namespaces and CNI.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No network config in the conf dir.
    #[error("no network config found in {0}")]
    NoNetwork(PathBuf),
    /// A network config file is unusable.
    #[error("{file}: {reason}")]
    BadConfig {
        /// The file.
        file: PathBuf,
        /// Why.
        reason: String,
    },
    /// A plugin binary is not in any bin dir.
    #[error("CNI plugin {plugin:?} not found in {dirs}")]
    PluginNotFound {
        /// The plugin type.
        plugin: String,
        /// Where berth looked.
        dirs: String,
    },
    /// A plugin failed; its own message.
    #[error("CNI plugin {plugin} {command} failed: {message}")]
    Plugin {
        /// The plugin type.
        plugin: String,
        /// ADD, CHECK or DEL.
        command: String,
        /// The plugin's error (`msg` and `details`), or its stderr.
        message: String,
    },
    /// A caller's argument is invalid.
    #[error("{0}")]
    Invalid(String),
    /// Creating, opening or removing a network namespace failed.
    #[error("network namespace {path}: {reason}")]
    Netns {
        /// The namespace's pinned path.
        path: PathBuf,
        /// What failed.
        reason: String,
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

impl Error {
    /// The class of this error. A network that is not configured is
    /// [`ErrorKind::FailedPrecondition`]: pods wait for it (the runtime's `NetworkReady`
    /// condition says so too).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NoNetwork(_) | Error::BadConfig { .. } | Error::PluginNotFound { .. } => {
                ErrorKind::FailedPrecondition
            }
            Error::Invalid(_) => ErrorKind::InvalidArgument,
            Error::Plugin { .. } | Error::Netns { .. } => ErrorKind::Unknown,
            Error::Io { .. } => ErrorKind::Internal,
        }
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
