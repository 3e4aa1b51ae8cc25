//! Pod networking for berth: pinned network namespaces and a CNI plugin runner (conflists,
//! ADD / CHECK / DEL as the CNI spec says, `prevResult` chaining, runtime capabilities such as
//! `portMappings`, and a result cache so DEL after a restart uses the config ADD used).
#![warn(missing_docs)]

pub mod cni;
pub mod error;
pub mod netns;

pub use error::{Classify, Error, ErrorKind, Result};
