//! The one integration-test binary: real nats-server, real TLS, the real `uplink` binary.

mod api;
mod backlog;
mod balancer;
mod certificates;
mod chaos;
mod cli;
mod cluster;
mod connections;
mod deploy;
mod diagnosis;
mod doctor;
mod failures;
mod gateways;
mod hostile;
mod latency;
mod lifecycle;
mod memory;
mod metrics;
mod nats_auth;
mod pipeline;
mod readme;
mod security;
mod status;
mod status_page;
mod support;
mod tail;
