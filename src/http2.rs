//! HTTP/2 connection lifecycle shared by the gateway and the doctor: the client connection
//! manager and the failure classification of DESIGN.md §4.

pub mod classify;
pub mod client;

pub use classify::{ForwardError, Retry, classify, classify_status};
pub use client::{Client, ClientConfig};
