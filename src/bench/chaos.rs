//! `uplink bench --chaos SCENARIO[,…]` and the soak (`uplink bench --duration D` without
//! `--chaos`): the whole pipeline under a steady load for a duration, faults injected again and
//! again at random (seeded) moments, then the same verdict as the plain bench — every id exactly
//! once, intact. Gateway and ingest are sampled along the way (RSS, open fds, threads).
//!
//! The scenario list is [`SCENARIOS`]; `--help` and the README are written from it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use tokio_util::sync::CancellationToken;

use crate::testbed::pipeline::{Pipeline, PipelineOptions};
use crate::testbed::verify::{Sent, Workload};
use uplink::config::GatewayConfig;

mod faults;
use faults::inject;

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    KillGateway,
    TermGateway,
    KillIngest,
    TermIngest,
    RestartEdgeNats,
    RestartCloudNats,
    KillCloudNode,
    Stall,
    Reset,
    Latency,
    Loss,
    DiskFullCloud,
    CertRotate,
}

/// A scenario of `--chaos`: its name on the command line and what it injects.
pub struct Scenario {
    pub fault: Fault,
    pub name: &'static str,
    pub about: &'static str,
}

/// Every scenario, in the order `all` cycles through them.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        fault: Fault::KillGateway,
        name: "kill-gateway",
        about: "SIGKILL the gateway (nothing acked or nak'ed), restart it",
    },
    Scenario {
        fault: Fault::TermGateway,
        name: "term-gateway",
        about: "SIGTERM the gateway (graceful: in-flight finish, the rest nak'ed), restart it",
    },
    Scenario {
        fault: Fault::KillIngest,
        name: "kill-ingest",
        about: "SIGKILL the ingest mid-request, restart it on the same port",
    },
    Scenario {
        fault: Fault::TermIngest,
        name: "term-ingest",
        about: "SIGTERM the ingest (GOAWAY, drain, exit 0), restart it",
    },
    Scenario {
        fault: Fault::RestartEdgeNats,
        name: "restart-edge-nats",
        about: "SIGTERM the edge nats-server, restart it on the same port and store",
    },
    Scenario {
        fault: Fault::RestartCloudNats,
        name: "restart-cloud-nats",
        about: "SIGTERM the cloud nats-server (with --cloud-cluster: one node), restart it on the same port and store",
    },
    Scenario {
        fault: Fault::KillCloudNode,
        name: "kill-cloud-node",
        about: "SIGKILL a node of the cloud cluster (--cloud-cluster; any node, the stream leader included), restart it on its ports and store; on a single cloud nats-server: restart-cloud-nats with SIGKILL",
    },
    Scenario {
        fault: Fault::Stall,
        name: "stall",
        about: "gateway↔ingest proxy stops forwarding, sockets kept open (a frozen peer), then resumes",
    },
    Scenario {
        fault: Fault::Reset,
        name: "reset",
        about: "gateway↔ingest connections reset (RST to both sides)",
    },
    Scenario {
        fault: Fault::Latency,
        name: "latency",
        about: "gateway↔ingest proxy adds 50–300 ms per chunk each way for a while",
    },
    Scenario {
        fault: Fault::Loss,
        name: "loss",
        about: "gateway↔ingest connections closed mid-stream after N more bytes (1–64 KiB) for a while; \
                userspace: flows cut, not packets dropped (no netem here)",
    },
    Scenario {
        fault: Fault::DiskFullCloud,
        name: "disk-full-cloud",
        about: "cloud stream limited to 2,000 messages above its content (max_msgs, discard=new): once full the ingest answers 503; then room again",
    },
    Scenario {
        fault: Fault::CertRotate,
        name: "cert-rotate",
        about: "server and client pairs replaced on disk with new ones of the same CA, connections reset to use them",
    },
];

impl Fault {
    pub fn name(self) -> &'static str {
        scenario(self).name
    }
}

fn scenario(f: Fault) -> &'static Scenario {
    SCENARIOS
        .iter()
        .find(|s| s.fault == f)
        .expect("every fault has a scenario")
}

/// A `--chaos` list that names something unknown.
#[derive(Debug, thiserror::Error)]
#[error("unknown chaos scenario {0:?} (one of: all, {names})", names = SCENARIOS.iter().map(|s| s.name).collect::<Vec<_>>().join(", "))]
pub struct UnknownScenario(pub String);

/// Parses `SCENARIO[,SCENARIO…]` (`all` = every one); duplicates are dropped, order kept.
pub fn parse(list: &str) -> Result<Vec<Fault>, UnknownScenario> {
    let mut out = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let add: Vec<Fault> = if name == "all" {
            SCENARIOS.iter().map(|s| s.fault).collect()
        } else {
            vec![
                SCENARIOS
                    .iter()
                    .find(|s| s.name == name)
                    .ok_or_else(|| UnknownScenario(name.into()))?
                    .fault,
            ]
        };
        for f in add {
            if !out.contains(&f) {
                out.push(f);
            }
        }
    }
    if out.is_empty() {
        return Err(UnknownScenario(list.into()));
    }
    Ok(out)
}

/// The `--chaos` help: one line per scenario.
pub fn help() -> String {
    let mut s =
        String::from("Inject faults under a steady load (comma-separated; `all` = every one):\n");
    for sc in SCENARIOS {
        s.push_str(&format!("  {:<19} {}\n", sc.name, sc.about));
    }
    s
}

/// What a steady-load run does.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Faults to inject (empty: a soak, load and samples only).
    pub faults: Vec<Fault>,
    pub duration: Duration,
    /// Messages per second published into the edge.
    pub rate: f64,
    /// Seed of the fault schedule (random when `None`; printed either way).
    pub seed: Option<u64>,
    pub size: usize,
    /// How often gateway and ingest are sampled.
    pub sample_every: Duration,
    /// Quiet: no progress lines on stderr.
    pub json: bool,
}

/// What was injected of one scenario.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct FaultFigures {
    pub injected: usize,
    /// Longest time from the fault's end until the cloud stream grew again (or held everything
    /// published so far), in milliseconds.
    pub max_recovery_ms: f64,
    /// Evidence the fault bit (503s answered, reloads, connections reset …), scenario-specific.
    pub evidence: u64,
}

pub use super::sample::{Resources, Sample, sample};

/// The figures of a run beyond the plain bench's.
#[derive(Debug, Default)]
pub struct LoadFigures {
    pub seed: u64,
    pub faults: BTreeMap<String, FaultFigures>,
    pub resources: BTreeMap<String, Resources>,
    pub problems: Vec<String>,
}

/// Gateway settings of a chaos run: recovery within seconds rather than the production
/// defaults' tens of seconds (redelivery after a kill, PING-detected stalls, backoff ceiling).
fn tune_gateway(g: &mut GatewayConfig) {
    g.nats.ack_wait = Duration::from_secs(6);
    g.timeouts.request = Duration::from_secs(3);
    g.timeouts.ping_interval = Duration::from_secs(2);
    g.timeouts.ping_timeout = Duration::from_secs(2);
    g.retry.max_backoff = Duration::from_secs(1);
}

/// Starts the pipeline of `exe` (the `uplink` binary) with a fault proxy between gateway and
/// ingest, for a steady-load run.
pub async fn start_pipeline(
    exe: &std::path::Path,
    nats_bin: &std::path::Path,
    cloud_cluster: Option<usize>,
) -> anyhow::Result<Pipeline> {
    let options = PipelineOptions {
        fault_proxy: true,
        cloud_cluster,
        ..Default::default()
    };
    Pipeline::start_with(exe, nats_bin, options, |_| {}, tune_gateway).await
}

/// Runs the load, the faults and the samples on `p`; returns what was sent and the figures.
/// The caller waits for the drain and verifies.
pub async fn drive(
    p: &mut Pipeline,
    opts: &LoadOptions,
    edge: &jetstream::Context,
    cloud: &jetstream::Context,
) -> anyhow::Result<(Vec<Sent>, LoadFigures)> {
    let seed = opts.seed.unwrap_or_else(|| fastrand::u64(..));
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut figures = LoadFigures {
        seed,
        ..Default::default()
    };
    for f in &opts.faults {
        figures
            .faults
            .insert(f.name().into(), FaultFigures::default());
    }
    let w = Workload {
        count: usize::MAX,
        size: opts.size,
        rate: Some(opts.rate),
        ..Default::default()
    };
    let stop = CancellationToken::new();
    let load = tokio::spawn(super::load::steady_load(edge.clone(), w, stop.clone()));
    let started = Instant::now();
    let end = started + opts.duration;
    // The first fault only once traffic flows; then a random gap after each recovery.
    let gap = |rng: &mut fastrand::Rng| Duration::from_millis(rng.u64(500..2_000));
    let mut next_fault = started + Duration::from_secs(1) + gap(&mut rng);
    let mut next_sample = started;
    let mut order = opts.faults.clone();
    rng.shuffle(&mut order);
    let mut k = 0;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if now >= next_sample {
            take_samples(p, &mut figures);
            next_sample += opts.sample_every;
        }
        if !order.is_empty() && now >= next_fault {
            let f = order[k % order.len()];
            k += 1;
            if !opts.json {
                eprintln!(
                    "{:>6.1} s  inject {}",
                    started.elapsed().as_secs_f64(),
                    f.name()
                );
            }
            let evidence = inject(f, p, &mut rng, cloud, &mut figures.problems)
                .await
                .with_context(|| format!("injecting {}", f.name()))?;
            let recovery = recovery(p, edge, cloud).await;
            let fig = figures.faults.entry(f.name().into()).or_default();
            fig.injected += 1;
            fig.evidence += evidence.max(0.0).round() as u64;
            fig.max_recovery_ms = fig.max_recovery_ms.max(recovery.as_secs_f64() * 1000.0);
            next_fault = Instant::now() + gap(&mut rng);
        }
        let wake = [
            Some(next_sample),
            (!order.is_empty()).then_some(next_fault),
            Some(end),
        ]
        .into_iter()
        .flatten()
        .min()
        .expect("end is always there");
        tokio::time::sleep_until(wake.into()).await;
    }
    stop.cancel();
    let sent = load.await.context("the load task")??;
    take_samples(p, &mut figures);
    // A run that claims a scenario must have injected it: one never reached within the
    // duration fails the run rather than passing unexercised.
    let missed: Vec<&str> = opts
        .faults
        .iter()
        .map(|f| f.name())
        .filter(|n| figures.faults.get(*n).is_none_or(|f| f.injected == 0))
        .collect();
    if !missed.is_empty() {
        figures.problems.push(format!(
            "not injected within --duration {:?}: {} (raise --duration; each scenario takes 2–4 s)",
            opts.duration,
            missed.join(", ")
        ));
    }
    Ok((sent, figures))
}

fn take_samples(p: &Pipeline, figures: &mut LoadFigures) {
    for (name, up) in [("gateway", &p.gateway), ("ingest", &p.ingest)] {
        if let Some(s) = up.as_ref().and_then(|u| u.proc.pid()).and_then(sample) {
            figures.resources.entry(name.into()).or_default().add(s);
        }
    }
}

/// Messages in a stream, `None` while its server does not answer.
async fn stream_len(js: &jetstream::Context, stream: &str) -> Option<u64> {
    stream_state(js, stream).await.map(|s| s.messages)
}

/// Messages ever stored in a stream (its last sequence): the edge's work queue holds only the
/// undelivered ones.
async fn stream_stored(js: &jetstream::Context, stream: &str) -> Option<u64> {
    stream_state(js, stream).await.map(|s| s.last_sequence)
}

async fn stream_state(js: &jetstream::Context, stream: &str) -> Option<jetstream::stream::State> {
    let mut s = tokio::time::timeout(Duration::from_secs(2), js.get_stream(stream))
        .await
        .ok()?
        .ok()?;
    let info = tokio::time::timeout(Duration::from_secs(2), s.info())
        .await
        .ok()?
        .ok()?;
    Some(info.state.clone())
}

/// How long after a fault's end deliveries resumed: the cloud stream grows past what it held at
/// the fault's end, or holds everything the edge does (nothing left to resume). Bounded by the
/// delivery budget of a minute: a pipeline that does not resume is the verdict's business.
async fn recovery(p: &Pipeline, edge: &jetstream::Context, cloud: &jetstream::Context) -> Duration {
    let since = Instant::now();
    let (edge_stream, cloud_stream) = (&p.gateway_cfg.nats.stream, &p.ingest_cfg.nats.stream);
    let mut base = None;
    while since.elapsed() < Duration::from_secs(60) {
        if let Some(c) = stream_len(cloud, cloud_stream).await {
            match base {
                None => base = Some(c),
                Some(b) if c > b => break,
                Some(_) => {}
            }
            if stream_stored(edge, edge_stream)
                .await
                .is_some_and(|e| c >= e)
            {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    since.elapsed()
}

#[cfg(test)]
mod tests;
