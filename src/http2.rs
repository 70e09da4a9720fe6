//! HTTP/2 connection lifecycle shared by the gateway and the doctor: the client connection
//! manager, the one dial and handshake path both use, the failure classification of
//! docs/design.md §3, and the frame tap.

pub(crate) mod classify;
pub(crate) mod client;
pub(crate) mod conn_info;
pub(crate) mod dial;
pub(crate) mod frame;
pub(crate) mod learn;
pub mod tap;

pub(crate) use classify::{Retry, classify};

// The public API, for the tools (uplink-tools) and `tap` for tests/it:
/// The client pool and what it answers (bench fleet and ingest-alone, tests/it support).
pub use classify::ForwardError;
pub use client::{Client, ClientConfig, FullResponse};
/// The dialer a client can be given: a bench's own source address, a counted dial (bench fleet
/// and ingest-alone's generator).
pub use dial::{BoxIo, Dial, connect_tls_from, target_of};
