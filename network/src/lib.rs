//! Pod networking for berth: pinned network namespaces and the CNI plugin runner.
//!
//! Delivered with pod sandboxes; nothing here is wired into the daemon yet.
#![warn(missing_docs)]
