//! The network crate's error type.

use std::path::PathBuf;

/// The class of a failure; the agent maps it to a gRPC code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The network is not configured (no usable conflist).
    NotReady,
    /// A caller's input is malformed.
    InvalidArgument,
    /// A plugin or the kernel refused.
    Failed,
    /// A local failure: the disk, a mount.
    Internal,
}

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
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NoNetwork(_) | Error::BadConfig { .. } | Error::PluginNotFound { .. } => {
                ErrorKind::NotReady
            }
            Error::Invalid(_) => ErrorKind::InvalidArgument,
            Error::Plugin { .. } | Error::Netns { .. } => ErrorKind::Failed,
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

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
