//! `--ingest-alone`'s load generator: one-message POSTs sent as the gateway sends them (its
//! `HttpPost`: the request and the check of a confirmation), through the library's client and the
//! gateway's retry loop, over a dialer that counts its connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use anyhow::Context as _;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use rustls::pki_types::ServerName;
use tokio_util::sync::CancellationToken;

use uplink::config::{ClientTimeouts, GatewayConfig};
use uplink::gateway::{
    Backoff, CloudFiles, Complaints, Delivery, HttpPost, Post, send_with_retries, unconfirmed,
};
use uplink::http2::{self, BoxIo, Client, ClientConfig, Dial, ForwardError, FullResponse};
use uplink::wire::{self, Encoding};

/// A dialer that counts the connections it made.
pub(super) struct Counting {
    pub(super) addr: String,
    pub(super) server_name: ServerName<'static>,
    pub(super) tls: Arc<rustls::ClientConfig>,
    pub(super) timeouts: ClientTimeouts,
    pub(super) dials: Arc<AtomicU64>,
}

impl Dial for Counting {
    fn dial(&self) -> BoxFuture<'_, Result<BoxIo, ForwardError>> {
        Box::pin(async move {
            let s = http2::connect_tls_from(
                &self.addr,
                None,
                self.server_name.clone(),
                self.tls.clone(),
                &self.timeouts,
            )
            .await?;
            self.dials.fetch_add(1, Ordering::Relaxed);
            Ok(Box::new(s) as BoxIo)
        })
    }

    fn peer(&self) -> &str {
        &self.addr
    }
}

/// What a server's answer must be to count.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Expect {
    /// 200 with `{"accepted":1,...}`: persisted.
    Confirmed,
    /// 204: nginx's `return 204`.
    NoContent,
}

/// The load generator: one client, `in_flight` requests open at all times.
pub(super) struct Generator {
    /// The gateway's own POST of a batch body, over the counting client.
    pub(super) post: HttpPost,
    pub(super) expect: Expect,
    pub(super) encoding: Encoding,
    pub(super) dials: Arc<AtomicU64>,
    pub(super) complaints: Complaints,
    pub(super) backoff: Backoff,
    pub(super) stop: CancellationToken,
}

impl Generator {
    pub(super) fn new(
        base: &str,
        pki: &uplink::tls::DevPki,
        platform: &str,
        ka: u64,
        expect: Expect,
        encoding: Encoding,
    ) -> anyhow::Result<Self> {
        let gw = GatewayConfig::default();
        let base_uri: http::Uri = base.parse()?;
        let (addr, server_name) =
            http2::target_of(&base_uri, None).map_err(|e| anyhow::anyhow!("{base}: {e}"))?;
        let tls = uplink::tls::client_config(
            &pki.ca(),
            &pki.client_cert(platform),
            &pki.client_key(platform),
        )?;
        let dials = Arc::new(AtomicU64::new(0));
        let dialer = Counting {
            addr,
            server_name,
            tls: tls.clone(),
            timeouts: gw.timeouts.clone(),
            dials: dials.clone(),
        };
        let client = Client::with_dialer(
            ClientConfig {
                url: base_uri,
                server_name: None,
                tls,
                timeouts: gw.timeouts.clone(),
                connections: 1,
                // The gateway's own cap (900, rotating before nginx's default 1000), or the
                // setting when it is higher: with "no rotation", the client does not rotate
                // either.
                max_requests_per_connection: ka.max(gw.forward.max_requests_per_connection),
                max_connection_age: gw.forward.max_connection_age,
                trace: false,
            },
            Arc::new(dialer),
        );
        Ok(Generator {
            post: HttpPost {
                client,
                url: format!("{base}{}", wire::BATCHES_PATH).parse()?,
            },
            expect,
            encoding,
            dials,
            complaints: Complaints::new(CloudFiles {
                url: base.to_string(),
                ca: pki.ca(),
                cert: pki.client_cert(platform),
            }),
            backoff: Backoff {
                initial: gw.retry.initial_backoff,
                max: gw.retry.max_backoff,
            },
            stop: CancellationToken::new(),
        })
    }

    /// One attempt: the gateway's POST of a one-message body, its answer checked as the
    /// gateway checks it (confirmed), or as nginx's `return 204`.
    pub(super) fn attempt(&self, body: Bytes) -> BoxFuture<'_, Result<FullResponse, ForwardError>> {
        match self.expect {
            Expect::Confirmed => self.post.post(body, self.encoding, 1, false),
            Expect::NoContent => {
                let send = self.post.send(body, self.encoding, false);
                Box::pin(async move {
                    let resp = send.await?;
                    if resp.status().is_success() && resp.status() != http::StatusCode::NO_CONTENT {
                        return Err(unconfirmed(&resp));
                    }
                    Ok(resp)
                })
            }
        }
    }

    /// Sends `bodies` with `in_flight` open at all times; the attempts beyond one each.
    pub(super) async fn drive(
        self: &Arc<Self>,
        bodies: Arc<Vec<Bytes>>,
        in_flight: usize,
    ) -> anyhow::Result<u64> {
        let next = Arc::new(AtomicUsize::new(0));
        let retries = Arc::new(AtomicU64::new(0));
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..in_flight.min(bodies.len()).max(1) {
            let (g, bodies, next, retries) =
                (self.clone(), bodies.clone(), next.clone(), retries.clone());
            workers.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(body) = bodies.get(i) else {
                        return anyhow::Ok(());
                    };
                    let d = send_with_retries(
                        || g.attempt(body.clone()),
                        g.backoff,
                        &g.complaints,
                        &g.stop,
                        &g.stop,
                    )
                    .await;
                    match d {
                        Delivery::Delivered { attempts } => {
                            retries.fetch_add(u64::from(attempts - 1), Ordering::Relaxed);
                        }
                        Delivery::Rejected { status, detail } => {
                            anyhow::bail!("request {i} rejected: {status} {detail}")
                        }
                        Delivery::Abandoned => anyhow::bail!("request {i} abandoned"),
                    }
                }
            });
        }
        while let Some(r) = workers.join_next().await {
            if let Err(e) = r.context("load generator task").and_then(|r| r) {
                self.stop.cancel();
                return Err(e);
            }
        }
        Ok(retries.load(Ordering::Relaxed))
    }
}
