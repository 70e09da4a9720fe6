//! The configs a pipeline starts its programs with: the defaults, on free loopback ports, with
//! the dev PKI's files.

use std::net::SocketAddr;

use super::MoreIngest;
use crate::testbed::{Nats, free_addr};
use uplink::config::{GatewayConfig, IngestConfig, NatsTls};
use uplink::tls::DevPki;

/// The TLS files of the dev PKI's client `name` for a NATS connection.
pub(super) fn nats_tls(pki: &DevPki, name: &str) -> NatsTls {
    NatsTls {
        ca: pki.ca(),
        cert: pki.client_cert(name),
        key: pki.client_key(name),
        required: true,
    }
}

/// The first ingest: listening on `listen`, publishing to `cloud_urls` with `replicas` (the
/// default without), a PROXY-protocol listener too when nginx stands in front.
pub(super) fn ingest(
    pki: &DevPki,
    cloud_urls: &str,
    replicas: Option<usize>,
    listen: SocketAddr,
    behind_nginx: bool,
) -> anyhow::Result<IngestConfig> {
    let defaults = IngestConfig::default();
    let mut cfg = IngestConfig {
        listen,
        admin: uplink::config::AdminConfig {
            listen: free_addr(),
        },
        tls: uplink::config::ServerTls {
            ca: pki.ca(),
            cert: pki.server_cert(),
            key: pki.server_key(),
            deny_list: Default::default(),
        },
        nats: uplink::config::CloudNats {
            connect: uplink::config::NatsConnect {
                url: cloud_urls.parse()?,
                ..defaults.nats.connect.clone()
            },
            replicas: replicas.unwrap_or(defaults.nats.replicas),
            ..defaults.nats.clone()
        },
        ..defaults
    };
    if behind_nginx {
        cfg.proxy.listen = Some(free_addr());
    }
    Ok(cfg)
}

/// The gateway of `platform`: consuming from `edge`, sending to the ingest on `ingest`.
pub(super) fn gateway(
    pki: &DevPki,
    platform: &str,
    edge: &Nats,
    ingest: SocketAddr,
    nats_tls: bool,
) -> anyhow::Result<GatewayConfig> {
    let defaults = GatewayConfig::default();
    Ok(GatewayConfig {
        nats: uplink::config::EdgeNats {
            connect: uplink::config::NatsConnect {
                url: edge.url().parse()?,
                tls: if nats_tls {
                    self::nats_tls(pki, platform)
                } else {
                    Default::default()
                },
                ..defaults.nats.connect.clone()
            },
            ..defaults.nats.clone()
        },
        cloud: uplink::config::Cloud {
            url: format!("https://localhost:{}", ingest.port()).parse()?,
            server_name: None,
            ca: pki.ca(),
            cert: pki.client_cert(platform),
            key: pki.client_key(platform),
        },
        admin: uplink::config::AdminConfig {
            listen: free_addr(),
        },
        ..defaults
    })
}

/// Ingests 2 … `ingests`: the first one's settings (after its tweak) on listeners of their own.
pub(super) fn more_ingests(
    first: &IngestConfig,
    ingests: usize,
    behind_nginx: bool,
) -> Vec<MoreIngest> {
    (2..=ingests)
        .map(|i| {
            let mut cfg = first.clone();
            cfg.listen = free_addr();
            cfg.admin.listen = free_addr();
            if behind_nginx {
                cfg.proxy.listen = Some(free_addr());
            }
            MoreIngest {
                name: format!("ingest-{i}"),
                cfg,
                proc: None,
            }
        })
        .collect()
}
