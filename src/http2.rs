//! HTTP/2 connection lifecycle shared by the gateway and the doctor: the client connection
//! manager, the one dial and handshake path both use, the failure classification of
//! docs/design.md §3, and the frame tap.

pub mod classify;
pub mod client;
pub mod conn_info;
pub mod dial;
pub mod frame;
pub mod learn;
pub mod tap;

pub use classify::{ForwardError, Retry, classify};
pub use client::{Client, ClientConfig};
