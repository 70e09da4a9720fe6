//! The one integration-test binary: real nats-server, real TLS, the real `uplink` binary.

mod api;
mod backlog;
mod certificates;
mod chaos;
mod cli;
mod connections;
mod doctor;
mod failures;
mod hostile;
mod lifecycle;
mod metrics;
mod nats_auth;
mod pipeline;
mod security;
mod status;
mod support;
mod tail;
