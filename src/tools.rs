//! `uplink_tools`: everything around the product that is not the product — the harness that
//! starts real components on loopback ([`testbed`]), the benches ([`bench`]), the demo
//! ([`demo`]) and the load publisher ([`publish`]). The `uplink` binary (`src/main.rs`) and the
//! integration tests (`tests/it`) are in this crate too.
//!
//! This crate sees the product (`uplink`, `src/lib.rs`) only through its public API: the
//! compiler holds the boundary. Its crate root is this file, so `mod testbed` is `src/testbed.rs`
//! beside the product's modules; `tools/Cargo.toml` declares it.

pub mod bench;
pub mod demo;
pub mod publish;
pub mod testbed;
