//! uplink carries telemetry from edge NATS JetStream to a cloud JetStream over HTTP/2 with
//! mutual TLS, and loses nothing on the way.
//!
//! # Layout
//! ```text
//! edge JetStream ─► gateway ─────────► http2 (client) ══ HTTP/2 + mTLS ══► ingest ─► cloud JetStream
//!                   batch, forward,     pool, rotation,                    accept, handler,
//!                   retry               classify                           publish
//! ```
//! - [`wire`]: the protobuf contract, encodings, subject rules, message ids (shared vocabulary).
//! - [`config`], [`tls`], [`telemetry`], `admin`, [`shutdown`], `backoff`: what every program needs;
//!   [`nats`]: connecting to NATS as deployed (servers, credentials, TLS, connection events).
//! - [`http2`]: HTTP/2 connection lifecycle (client pool, dial + handshake, failure
//!   classification, frame parser and tap).
//! - [`gateway`], [`ingest`]: the two programs; they never import each other.
//! - [`doctor`]: probes any HTTP/2 endpoint's lifecycle (uses [`http2`]'s tap and dialer).
//! - [`status`], [`tail`]: operator tools: the programs' admin listeners at a glance; the cloud
//!   stream as a downstream consumer sees it.
//! - [`scratch`]: a directory removed on drop (the dev PKI's home in tests and tools).
//!
//! The harness, the benches, the demo and the `uplink` binary are another crate, `uplink_tools`
//! (`tools/Cargo.toml`, root `src/tools.rs`): they see only what this crate makes public — the
//! modules above but `admin` and `backoff`, each program's entry points, and the few items
//! re-exported for them at a shallow path (`gateway`'s sender, `http2`'s client and dialer),
//! each with a line saying who uses it (docs/design.md "Product and tools").

pub(crate) mod admin;
pub(crate) mod backoff;
pub mod config;
pub mod doctor;
pub mod error;
pub mod gateway;
pub mod http2;
pub mod ingest;
pub mod nats;
#[cfg(test)]
mod proptest_config;
pub mod scratch;
pub mod shutdown;
pub mod status;
pub mod tail;
pub mod telemetry;
pub mod tls;
pub mod wire;

/// The multi-threaded tokio runtime every command of the binary runs on.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
