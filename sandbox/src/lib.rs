//! Pod sandboxes and containers for berth: shim v2 client, OCI spec generation, state.
//!
//! Delivered with pod sandboxes; nothing here is wired into the daemon yet.
#![warn(missing_docs)]
