//! The in-run anchor of `uplink bench --anchor`: the same JetStream work as the pipeline — publish
//! into an edge stream, pull + ack from it, publish into a cloud stream with `Nats-Msg-Id` and
//! await the PubAcks — done by one in-process relay with no HTTP, TLS, protobuf or compression.
//! It runs on the same two nats-servers in the same bench run, so `msgs_per_sec / anchor` says
//! how close the whole gateway → ingest path comes to moving the data JetStream-to-JetStream.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, AckKind, consumer, message::PublishMessage};
use futures_util::StreamExt;

use crate::testbed::verify::{self, Workload};

const EDGE_STREAM: &str = "ANCHOR_EDGE";
const CLOUD_STREAM: &str = "ANCHOR_CLOUD";
/// Batches in flight, as the gateway's default `forward.max_in_flight`.
const IN_FLIGHT: usize = 8;

/// Messages per second of the relay for `w` (publisher concurrent with the relay, clock stopped
/// when the cloud stream holds everything — the same method as the pipeline figure).
pub async fn relay_rate(
    edge: &jetstream::Context,
    cloud: &jetstream::Context,
    w: &Workload,
    batch: usize,
) -> anyhow::Result<f64> {
    let w = Workload {
        subject_prefix: "anchor".into(),
        ..w.clone()
    };
    for (js, name) in [(edge, EDGE_STREAM), (cloud, CLOUD_STREAM)] {
        let _ = js.delete_stream(name).await;
        js.create_stream(jetstream::stream::Config {
            name: name.into(),
            subjects: vec!["anchor.>".into()],
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .with_context(|| format!("anchor stream {name}"))?;
    }
    let consumer: consumer::PullConsumer = edge
        .get_stream(EDGE_STREAM)
        .await?
        .create_consumer(consumer::pull::Config {
            durable_name: Some("anchor".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 20_000,
            ..Default::default()
        })
        .await?;
    let count = w.count;
    let cloud_js = cloud.clone();
    let relay = tokio::spawn(async move {
        let mut msgs = consumer
            .stream()
            .max_messages_per_batch(batch)
            .messages()
            .await?;
        let mut moved = 0;
        // Up to IN_FLIGHT batches awaiting their cloud PubAcks, like the gateway's in-flight
        // requests: the relay is pipelined, not one batch at a time.
        let mut in_flight = std::collections::VecDeque::new();
        let mut received = 0;
        while moved < count {
            if received < count {
                let pending = next_batch(&mut msgs, batch.min(count - received)).await?;
                received += pending.len();
                let mut acks = Vec::with_capacity(pending.len());
                for m in &pending {
                    let seq = m
                        .info()
                        .map_err(|e| anyhow::anyhow!("{e}"))?
                        .stream_sequence;
                    let mut p = PublishMessage::build().payload(m.payload.clone());
                    if let Some(h) = &m.headers {
                        p = p.headers(h.clone());
                    }
                    acks.push(
                        cloud_js
                            .send_publish(m.subject.clone(), p.message_id(format!("anchor.{seq}")))
                            .await?,
                    );
                }
                in_flight.push_back((pending, acks));
            }
            if in_flight.len() >= IN_FLIGHT || received >= count {
                let Some((pending, acks)) = in_flight.pop_front() else {
                    break;
                };
                for a in acks {
                    a.await?;
                }
                for m in pending {
                    m.ack_with(AckKind::Ack)
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    moved += 1;
                }
            }
        }
        anyhow::Ok(())
    });
    let started = Instant::now();
    verify::publish(edge, &w).await?;
    verify::wait_count(
        cloud,
        CLOUD_STREAM,
        count as u64,
        crate::testbed::pipeline::delivery_budget(count),
    )
    .await?;
    let secs = started.elapsed().as_secs_f64();
    relay.abort();
    for (js, name) in [(edge, EDGE_STREAM), (cloud, CLOUD_STREAM)] {
        let _ = js.delete_stream(name).await;
    }
    Ok(count as f64 / secs.max(1e-9))
}

/// Another way to move an edge stream's backlog into the cloud, for `uplink bench --backlog N
/// --anchor KIND,…`, on the same nats-server binary as the pipeline. The NATS-native ones are
/// what a NATS user would deploy instead of uplink: the cloud stream *sources* the edge stream
/// over a leafnode between two JetStream domains. The relays are in-process JetStream clients
/// (no HTTP, TLS, protobuf or second process) that bound what any client-side bridge costs the
/// two servers: the ladder from uplink's NATS-side protocol down to no guarantees at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Native {
    /// The edge server dials the cloud's leafnode port over mutual TLS (dev PKI, `verify: true`).
    Leafnode,
    /// The edge server dials `wss://` through nginx (TLS terminated there, `ssl_verify_client
    /// on`, HTTP/1.1 upgrade), which relays plain WebSocket to the cloud's websocket listener:
    /// the topology for an edge allowed only HTTPS outbound.
    LeafnodeWs,
    /// uplink's NATS work and nothing else: the gateway's (work-queue) edge stream and a pull
    /// durable acked message by message after the cloud's PubAcks; each message published to
    /// the ingest's cloud stream with the ingest's headers and `Nats-Msg-Id`, every PubAck
    /// awaited; batches of 500, 8 in flight.
    Relay,
    /// As `relay` on a *limits* edge stream (`nats.retention = "limits"`): an ack no longer
    /// deletes the message, so the difference to `relay` is what the work queue costs.
    RelayLimits,
    /// As `relay-limits`, but one ack per batch on an `AckAll` durable (the contiguous-watermark idea)
    /// — which needs a *limits* edge stream: a work-queue stream refuses any consumer but an
    /// explicit-ack one (JetStream 10098).
    RelayAckAll,
    /// No guarantee left but the PubAck: limits edge stream, `AckNone` consumer, no headers and
    /// no `Nats-Msg-Id` at the cloud (a retried batch would be stored twice).
    RelayBare,
}

impl Native {
    pub fn name(self) -> &'static str {
        match self {
            Native::Leafnode => "leafnode",
            Native::LeafnodeWs => "leafnode-ws",
            Native::Relay => "relay",
            Native::RelayLimits => "relay-limits",
            Native::RelayAckAll => "relay-ackall",
            Native::RelayBare => "relay-bare",
        }
    }

    /// Every kind, for `--anchor` parsing and its error message.
    pub const ALL: [Native; 6] = [
        Native::Leafnode,
        Native::LeafnodeWs,
        Native::Relay,
        Native::RelayLimits,
        Native::RelayAckAll,
        Native::RelayBare,
    ];

    fn is_relay(self) -> bool {
        matches!(
            self,
            Native::Relay | Native::RelayLimits | Native::RelayAckAll | Native::RelayBare
        )
    }
}

/// What one native drain measured.
#[derive(Debug)]
pub struct NativeRun {
    pub seconds: f64,
    /// Messages the sourcing stream holds at the end (exactly the backlog, or an error).
    pub messages: u64,
    /// CPU milliseconds per process during the drain.
    pub cpu_ms: std::collections::BTreeMap<String, f64>,
}

/// The cloud stream of the native anchors and the edge domain's JetStream API prefix.
const NATIVE_CLOUD_STREAM: &str = "UPLINK";
const EDGE_API: &str = "$JS.edge.API";

/// The leafnode settings of the cloud server and the edge's remote for `kind` (none for the
/// relays: two unconnected servers). `pl`: the cloud's leafnode port, `pw` its websocket port,
/// `pn` nginx's in front of it. The remotes name `127.0.0.1`, never `localhost`: a nats-server
/// built with Go's own resolver may ask DNS before /etc/hosts (no /etc/nsswitch.conf), and an
/// unreachable resolver is one way a loaded CI run's leaf came up only at the end of the wait
/// (stop 35; the log that would say why was cut).
fn leaf_configs(
    kind: Native,
    pki: &uplink::tls::DevPki,
    pl: u16,
    pw: u16,
    pn: u16,
) -> (String, String) {
    let q = |p: std::path::PathBuf| {
        serde_json::to_string(&p.to_string_lossy()).expect("string serializes")
    };
    let edge_tls = format!(
        "tls {{ cert_file: {}, key_file: {}, ca_file: {} }}",
        q(pki.client_cert("edge-1")),
        q(pki.client_key("edge-1")),
        q(pki.ca())
    );
    match kind {
        Native::Leafnode => (
            format!(
                "leafnodes {{ listen: \"127.0.0.1:{pl}\", tls {{ cert_file: {}, key_file: {}, ca_file: {}, verify: true }} }}",
                q(pki.server_cert()),
                q(pki.server_key()),
                q(pki.ca())
            ),
            format!("leafnodes {{ remotes [ {{ url: \"tls://127.0.0.1:{pl}\", {edge_tls} }} ] }}"),
        ),
        // nats-server 2.9 accepts a leafnode websocket upgrade only with a leafnode port
        // configured (loopback, unused); `advertise` names nginx, never the raw websocket port.
        Native::LeafnodeWs => (
            format!(
                "leafnodes {{ listen: \"127.0.0.1:{pl}\" }}\nwebsocket {{ listen: \"127.0.0.1:{pw}\", no_tls: true, advertise: \"127.0.0.1:{pn}\" }}"
            ),
            format!(
                "leafnodes {{ remotes [ {{ urls: [\"wss://127.0.0.1:{pn}\"], {edge_tls} }} ] }}"
            ),
        ),
        // Two unconnected servers: the relay is the only link.
        _ => (String::new(), String::new()),
    }
}

/// How long the anchors wait for the leaf: seconds when fast, the margin is for a loaded 2-core
/// CI machine.
const LEAF_WAIT: Duration = Duration::from_secs(30);

/// The leaf is up when the edge domain's JetStream API answers from the cloud side (for
/// wss, the edge's "connection created" is logged before the upgrade: not enough).
async fn wait_leaf(
    kind: Native,
    cloud_nc: &async_nats::Client,
    edge: &crate::testbed::Proc,
) -> anyhow::Result<()> {
    crate::testbed::wait_for(
        || {
            let nc = cloud_nc.clone();
            async move {
                let r = tokio::time::timeout(
                    Duration::from_millis(500),
                    nc.request(format!("{EDGE_API}.INFO"), "".into()),
                )
                .await;
                Ok(matches!(r, Ok(Ok(m)) if !m.payload.is_empty()))
            }
        },
        LEAF_WAIT,
    )
    .await
    .with_context(|| {
        // The edge's warnings and errors last: a truncated CI log keeps the tail.
        let log = edge.log_text();
        let alarms: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("[ERR]") || l.contains("[WRN]"))
            .collect();
        format!(
            "{} leafnode did not connect within {LEAF_WAIT:?}: edge log {log}\nedge warnings and errors:\n{}",
            kind.name(),
            alarms.join("\n")
        )
    })
}

/// The relay anchors' drain: the in-process relay of `kind` moves `count` messages of the edge
/// stream `stream` into the ingest's cloud stream: the seconds and the CPU of `procs` until the
/// cloud held them all, and what it held. The relay must then end cleanly within 10 s.
async fn drain_by_relay(
    kind: Native,
    edge_js: &jetstream::Context,
    cloud_js: &jetstream::Context,
    stream: &str,
    count: usize,
    procs: &[(&str, u32)],
) -> anyhow::Result<NativeRun> {
    let cpu0 = super::sample::cpu_of(procs);
    let started = Instant::now();
    let budget = crate::testbed::pipeline::delivery_budget(count);
    let cloud_cfg = uplink::config::IngestConfig::default().nats;
    let relay = tokio::spawn(relay_backlog(
        edge_js.clone(),
        cloud_js.clone(),
        stream.to_string(),
        cloud_cfg.clone(),
        kind,
        count,
    ));
    let held = super::harness::wait_holds(cloud_js, &cloud_cfg.stream, count as u64, budget).await;
    let seconds = started.elapsed().as_secs_f64();
    let cpu_ms = super::sample::cpu_since(procs, &cpu0);
    let outcome = tokio::time::timeout(Duration::from_secs(10), relay).await;
    let messages = held?;
    match outcome {
        Ok(Ok(Ok(()))) => Ok(NativeRun {
            seconds,
            messages,
            cpu_ms,
        }),
        Ok(Ok(Err(e))) => Err(e.context(format!("{} failed", kind.name()))),
        Ok(Err(e)) => anyhow::bail!("{} panicked: {e}", kind.name()),
        Err(_) => anyhow::bail!(
            "{} did not finish after the cloud held everything",
            kind.name()
        ),
    }
}

/// Fills a fresh edge stream (the gateway's stream configuration) with `w`, then creates the
/// cloud stream sourcing it and times until it holds every message. Everything it starts is
/// killed by pid and its directory removed when it returns.
pub async fn native_drain(
    nats_bin: &std::path::Path,
    kind: Native,
    w: &Workload,
    edge_cfg: &uplink::config::GatewayConfig,
) -> anyhow::Result<NativeRun> {
    use crate::testbed::{Proc, TempDir, free_port};
    let dir = TempDir::new("uplink-anchor")?;
    let d = dir.path();
    let pki = uplink::tls::dev_pki(&d.join("pki"), &["edge-1".to_string()])?;
    let q = |p: std::path::PathBuf| {
        serde_json::to_string(&p.to_string_lossy()).expect("string serializes")
    };
    let (pc, pe, pl, pw, pn) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let (cloud_leaf, edge_remote) = leaf_configs(kind, &pki, pl, pw, pn);
    let conf = |name: &str, port: u16, extra: &str| {
        format!(
            "listen: \"127.0.0.1:{port}\"\nserver_name: {name}\njetstream {{ store_dir: {}, domain: {name} }}\n{extra}\n",
            q(d.join(format!("{name}-js")))
        )
    };
    let start = |name: &str, text: String| -> anyhow::Result<Proc> {
        let path = d.join(format!("{name}.conf"));
        std::fs::write(&path, text)?;
        let mut cmd = std::process::Command::new(nats_bin);
        cmd.arg("-c").arg(&path);
        Proc::spawn(
            &format!("nats-server {name}"),
            cmd,
            d.join(format!("{name}.log")),
        )
    };
    let cloud = start("cloud", conf("cloud", pc, &cloud_leaf))?;
    wait_port(pc, &cloud).await?;
    let nginx = match kind {
        Native::LeafnodeWs => Some(start_ws_nginx(d, &pki, pn, pw).await?),
        _ => None,
    };
    let edge = start("edge", conf("edge", pe, &edge_remote))?;
    wait_port(pe, &edge).await?;

    let cloud_nc = async_nats::connect(format!("nats://127.0.0.1:{pc}")).await?;
    let edge_js = jetstream::new(async_nats::connect(format!("nats://127.0.0.1:{pe}")).await?);
    let cloud_js = jetstream::new(cloud_nc.clone());
    if !kind.is_relay() {
        wait_leaf(kind, &cloud_nc, &edge).await?;
    }
    let mut stream = uplink::gateway::stream_config(edge_cfg);
    if matches!(
        kind,
        Native::RelayLimits | Native::RelayAckAll | Native::RelayBare
    ) {
        stream.retention = jetstream::stream::RetentionPolicy::Limits;
    }
    edge_js.create_stream(stream.clone()).await?;
    verify::publish(&edge_js, w).await?;

    let mut procs: Vec<(&str, u32)> = vec![
        ("edge-nats", edge.pid().unwrap_or(0)),
        ("cloud-nats", cloud.pid().unwrap_or(0)),
    ];
    if let Some(n) = &nginx {
        procs.push(("nginx", n.pid().unwrap_or(0)));
    }
    if kind.is_relay() {
        procs.push(("relay", std::process::id()));
    }
    if kind.is_relay() {
        let run = drain_by_relay(kind, &edge_js, &cloud_js, &stream.name, w.count, &procs).await;
        drop((edge, nginx, cloud));
        return run;
    }
    let cpu0 = super::sample::cpu_of(&procs);
    super::harness::perf_control("enable");
    let started = Instant::now();
    let want = w.count as u64;
    let budget = crate::testbed::pipeline::delivery_budget(w.count);
    cloud_js
        .create_stream(jetstream::stream::Config {
            name: NATIVE_CLOUD_STREAM.into(),
            storage: jetstream::stream::StorageType::File,
            sources: Some(vec![jetstream::stream::Source {
                name: stream.name.clone(),
                external: Some(jetstream::stream::External {
                    api_prefix: EDGE_API.into(),
                    delivery_prefix: None,
                }),
                ..Default::default()
            }]),
            ..Default::default()
        })
        .await
        .context("creating the sourcing cloud stream")?;
    let messages = super::harness::wait_holds(&cloud_js, NATIVE_CLOUD_STREAM, want, budget).await?;
    let seconds = started.elapsed().as_secs_f64();
    super::harness::perf_control("disable");
    let cpu_ms = super::sample::cpu_since(&procs, &cpu0);
    drop((edge, nginx, cloud));
    Ok(NativeRun {
        seconds,
        messages,
        cpu_ms,
    })
}

/// The relays of `--backlog --anchor relay…`: drains `count` messages of the edge stream into
/// the ingest's cloud stream (created here as the ingest would), as the pipeline does it but in
/// one process — batches of the gateway's 500, up to its 8 in flight, each batch's PubAcks
/// awaited before its edge acks — with the guarantees `kind` keeps.
async fn relay_backlog(
    edge: jetstream::Context,
    cloud: jetstream::Context,
    edge_stream: String,
    cloud_cfg: uplink::config::CloudNats,
    kind: Native,
    count: usize,
) -> anyhow::Result<()> {
    const BATCH: usize = 500;
    cloud
        .create_stream(jetstream::stream::Config {
            name: cloud_cfg.stream.clone(),
            subjects: cloud_cfg.subjects.clone(),
            duplicate_window: cloud_cfg.duplicate_window,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .context("creating the relay's cloud stream")?;
    let ack_policy = match kind {
        Native::RelayAckAll => consumer::AckPolicy::All,
        Native::RelayBare => consumer::AckPolicy::None,
        _ => consumer::AckPolicy::Explicit,
    };
    let consumer: consumer::PullConsumer = edge
        .get_stream(&edge_stream)
        .await?
        .create_consumer(consumer::pull::Config {
            durable_name: Some("relay".into()),
            ack_policy,
            max_ack_pending: 20_000,
            ..Default::default()
        })
        .await
        .with_context(|| format!("creating the {} consumer", kind.name()))?;
    let mut msgs = consumer
        .stream()
        .max_messages_per_batch(BATCH)
        .messages()
        .await?;
    let platform = "edge-1";
    let mut in_flight = std::collections::VecDeque::new();
    let (mut received, mut moved) = (0, 0);
    while moved < count {
        if received < count && in_flight.len() < IN_FLIGHT {
            let pending = next_batch(&mut msgs, BATCH.min(count - received)).await?;
            received += pending.len();
            let mut acks = Vec::with_capacity(pending.len());
            for m in &pending {
                let mut p = PublishMessage::build().payload(m.payload.clone());
                if kind != Native::RelayBare {
                    let seq = m
                        .info()
                        .map_err(|e| anyhow::anyhow!("{e}"))?
                        .stream_sequence;
                    let mut h = async_nats::HeaderMap::new();
                    h.insert(uplink::wire::TIME_HEADER, "1796185928813989953");
                    p = p
                        .headers(h)
                        .message_id(format!("{platform}.{edge_stream}.{seq}"));
                }
                let subject = format!("{}.{platform}.{}", cloud_cfg.subject_prefix, m.subject);
                acks.push(cloud.send_publish(subject, p).await?);
            }
            in_flight.push_back((pending, acks));
            continue;
        }
        let Some((pending, acks)) = in_flight.pop_front() else {
            break;
        };
        for a in acks {
            a.await?;
        }
        moved += pending.len();
        match kind {
            Native::RelayBare => {}
            // Batches settle in order, so the last of each is the watermark.
            Native::RelayAckAll => {
                if let Some(last) = pending.last() {
                    last.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                }
            }
            _ => {
                for m in &pending {
                    m.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                }
            }
        }
    }
    Ok(())
}

/// The relays' batch, as the gateway's linger makes one: the next message, then whatever else
/// arrives within 20 ms, `max` (≥ 1) at most.
async fn next_batch(
    msgs: &mut consumer::pull::Stream,
    max: usize,
) -> anyhow::Result<Vec<jetstream::Message>> {
    let first = msgs.next().await.context("edge ended")??;
    let mut pending = vec![first];
    let until = tokio::time::Instant::now() + Duration::from_millis(20);
    while pending.len() < max {
        match tokio::time::timeout_at(until, msgs.next()).await {
            Ok(Some(m)) => pending.push(m?),
            _ => break,
        }
    }
    Ok(pending)
}

async fn wait_port(port: u16, p: &crate::testbed::Proc) -> anyhow::Result<()> {
    crate::testbed::wait_for(
        || async {
            Ok(tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok())
        },
        Duration::from_secs(10),
    )
    .await
    .with_context(|| format!("{} did not start: {}", p.name, p.log_text()))
}

/// nginx as the edge's HTTPS way out: TLS with `ssl_verify_client on` on `port`, the
/// `/leafnode` WebSocket upgrade relayed (HTTP/1.1) to the cloud's plain websocket listener.
/// One process (`master_process off`), so its pid is all of its CPU and its kill ends it.
async fn start_ws_nginx(
    dir: &std::path::Path,
    pki: &uplink::tls::DevPki,
    port: u16,
    upstream: u16,
) -> anyhow::Result<crate::testbed::Proc> {
    let root = dir.join("nginx");
    std::fs::create_dir_all(&root)?;
    let r = root.display();
    let conf = format!(
        "daemon off;
master_process off;
pid {r}/nginx.pid;
error_log {r}/error.log notice;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {r}/body;
    proxy_temp_path {r}/proxy;
    fastcgi_temp_path {r}/fastcgi;
    uwsgi_temp_path {r}/uwsgi;
    scgi_temp_path {r}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_client_certificate {ca};
        ssl_verify_client on;
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection upgrade;
            proxy_set_header Host $host;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }}
    }}
}}
",
        cert = pki.server_cert().display(),
        key = pki.server_key().display(),
        ca = pki.ca().display(),
    );
    let path = root.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let mut cmd = std::process::Command::new(crate::testbed::nginx::find_nginx()?);
    cmd.arg("-p")
        .arg(&root)
        .arg("-c")
        .arg(&path)
        .arg("-e")
        .arg(root.join("error.log"));
    let p = crate::testbed::Proc::spawn("nginx", cmd, root.join("stdout.log"))?;
    wait_port(port, &p).await?;
    Ok(p)
}
