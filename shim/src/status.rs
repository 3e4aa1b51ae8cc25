//! What the task service answers besides a response: a ttrpc error status, and whether the
//! daemon goes on after answering.

/// A ttrpc error status.
#[derive(Debug)]
pub struct Status {
    code: ttrpc::proto::Code,
    pub(crate) message: String,
}

impl Status {
    pub(crate) fn new(code: ttrpc::proto::Code, message: impl Into<String>) -> Self {
        Status {
            code,
            message: message.into(),
        }
    }
    pub fn invalid(m: impl Into<String>) -> Self {
        Self::new(ttrpc::proto::Code::INVALID_ARGUMENT, m)
    }
    pub(crate) fn not_found(m: impl Into<String>) -> Self {
        Self::new(ttrpc::proto::Code::NOT_FOUND, m)
    }
    pub(crate) fn exists(m: impl Into<String>) -> Self {
        Self::new(ttrpc::proto::Code::ALREADY_EXISTS, m)
    }
    pub(crate) fn precondition(m: impl Into<String>) -> Self {
        Self::new(ttrpc::proto::Code::FAILED_PRECONDITION, m)
    }
    pub(crate) fn failed(m: impl Into<String>) -> Self {
        Self::new(ttrpc::proto::Code::UNKNOWN, m)
    }
    pub(crate) fn unimplemented(m: impl Into<String>) -> Self {
        Self::new(ttrpc::proto::Code::UNIMPLEMENTED, m)
    }
    /// As the ttrpc response's status.
    pub fn into_proto(self) -> ttrpc::proto::Status {
        ttrpc::proto::Status {
            code: self.code.into(),
            message: self.message,
            ..Default::default()
        }
    }
}

/// What the server does after answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Continue,
    /// Exit the daemon (`Shutdown` with no tasks left).
    Exit,
}
