//! `uplink bench --backlog N`: catching up after an outage. The edge stream is filled with N
//! messages first, with no gateway running; then the gateway starts and the clock runs until
//! the cloud stream holds all N (then: the edge consumer drained, every id exactly once and
//! intact, as in the plain bench). `--anchor leafnode,leafnode-ws` moves the same backlog the
//! NATS-native way (the cloud stream sources the edge stream over a leafnode), `--anchor
//! relay,relay-ackall,relay-bare` with an in-process JetStream client doing less and less (see
//! [`super::anchor::Native`]) on the same nats-server binary, in the same run: `--runs` rounds,
//! alternating which goes first, every trial on fresh servers. Per trial, the CPU time each
//! process spent during the drain (from `/proc/<pid>/stat`) says where the core-seconds went.

use super::sample::{cpu_of, cpu_since, peak_rss};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use async_nats::jetstream;

use super::anchor::{self, Native};
use crate::testbed::pipeline::{Pipeline, PipelineOptions, delivery_budget};
use crate::testbed::verify::{self, Workload};
use uplink::config::GatewayConfig;

/// What `--backlog` runs.
#[derive(Clone, Debug)]
pub struct BacklogOptions {
    pub messages: usize,
    pub size: usize,
    pub runs: usize,
    pub anchors: Vec<Native>,
    pub nats_server: Option<PathBuf>,
    pub in_flight: Option<usize>,
    pub json: bool,
}

/// One drain.
#[derive(Debug, serde::Serialize)]
pub struct Trial {
    pub round: usize,
    /// `uplink`, `leafnode` or `leafnode-ws`.
    pub what: String,
    pub seconds: f64,
    pub msgs_per_sec: f64,
    /// CPU milliseconds per process during the drain (the gateway: from its start).
    pub cpu_ms: BTreeMap<String, f64>,
    pub cpu_ms_total: f64,
    /// CPU microseconds per message, all processes.
    pub cpu_us_per_msg: f64,
    /// uplink trials: the gateway's and the ingest's peak RSS (KiB, VmHWM).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub peak_rss_kib: BTreeMap<String, u64>,
    /// uplink trials: the verdict (0 / 0 / 0 or the run failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
}

/// Lost, duplicated and corrupted messages of an uplink trial.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Verdict {
    pub delivered: usize,
    pub lost: usize,
    pub duplicates: usize,
    pub corrupted: usize,
}

/// Smallest, median and largest of a set of figures.
#[derive(Debug, serde::Serialize)]
pub struct Range {
    pub min: f64,
    pub median: f64,
    pub max: f64,
    pub n: usize,
}

impl Range {
    pub fn of(mut v: Vec<f64>) -> Option<Range> {
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Range {
            min: v[0],
            median,
            max: v[n - 1],
            n,
        })
    }
}

/// The whole `--backlog` run.
#[derive(Debug, serde::Serialize)]
pub struct BacklogResult {
    pub backlog: usize,
    pub size: usize,
    pub runs: usize,
    pub nats_server: String,
    /// In the order they ran.
    pub trials: Vec<Trial>,
    /// msgs/s per kind over the rounds.
    pub msgs_per_sec: BTreeMap<String, Range>,
    /// uplink msgs/s ÷ the anchor's, each round's pair (the two ran back to back).
    pub ratio_to: BTreeMap<String, Range>,
    /// Sums over the uplink trials.
    pub lost: usize,
    pub duplicates: usize,
    pub corrupted: usize,
}

impl BacklogResult {
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.duplicates == 0 && self.corrupted == 0
    }
}

/// Runs the rounds.
pub async fn run(o: &BacklogOptions) -> anyhow::Result<BacklogResult> {
    let exe = std::env::current_exe()?;
    let nats_bin = crate::testbed::find_nats_server(o.nats_server.as_deref())?;
    let version = std::process::Command::new(&nats_bin)
        .arg("--version")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .unwrap_or_default();
    let w = Workload {
        count: o.messages,
        size: o.size,
        ..Default::default()
    };
    let mut trials = Vec::new();
    for round in 0..o.runs {
        let mut order: Vec<Option<Native>> = std::iter::once(None)
            .chain(o.anchors.iter().copied().map(Some))
            .collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for what in order {
            let t = match what {
                None => uplink_drain(&exe, &nats_bin, o, &w, round).await?,
                Some(kind) => {
                    let r = anchor::native_drain(&nats_bin, kind, &w, &GatewayConfig::default())
                        .await
                        .with_context(|| format!("anchor {}", kind.name()))?;
                    if r.messages != w.count as u64 {
                        anyhow::bail!(
                            "anchor {}: the sourcing stream holds {} of {} messages",
                            kind.name(),
                            r.messages,
                            w.count
                        );
                    }
                    trial(round, kind.name(), r.seconds, w.count, r.cpu_ms)
                }
            };
            if !o.json {
                eprintln!(
                    "round {} {:<12} {:>8.0} msgs/s  {:.2} s  cpu {:.1} µs/msg {:?}",
                    round + 1,
                    t.what,
                    t.msgs_per_sec,
                    t.seconds,
                    t.cpu_us_per_msg,
                    t.cpu_ms
                );
            }
            trials.push(t);
        }
    }
    let rates = |what: &str| -> Vec<f64> {
        trials
            .iter()
            .filter(|t| t.what == what)
            .map(|t| t.msgs_per_sec)
            .collect()
    };
    let mut msgs_per_sec = BTreeMap::new();
    let mut ratio_to = BTreeMap::new();
    let ours = rates("uplink");
    msgs_per_sec.extend(Range::of(ours.clone()).map(|r| ("uplink".to_string(), r)));
    for kind in &o.anchors {
        let theirs = rates(kind.name());
        let ratios = ours.iter().zip(&theirs).map(|(a, b)| a / b).collect();
        msgs_per_sec.extend(Range::of(theirs).map(|r| (kind.name().to_string(), r)));
        ratio_to.extend(Range::of(ratios).map(|r| (kind.name().to_string(), r)));
    }
    let sum = |f: fn(&Verdict) -> usize| -> usize {
        trials
            .iter()
            .filter_map(|t| t.verdict.as_ref())
            .map(f)
            .sum()
    };
    Ok(BacklogResult {
        backlog: o.messages,
        size: o.size,
        runs: o.runs,
        nats_server: version,
        lost: sum(|v| v.lost),
        duplicates: sum(|v| v.duplicates),
        corrupted: sum(|v| v.corrupted),
        trials,
        msgs_per_sec,
        ratio_to,
    })
}

fn trial(
    round: usize,
    what: &str,
    seconds: f64,
    count: usize,
    cpu_ms: BTreeMap<String, f64>,
) -> Trial {
    let cpu_ms_total: f64 = cpu_ms.values().sum();
    Trial {
        round: round + 1,
        what: what.into(),
        seconds,
        msgs_per_sec: count as f64 / seconds.max(1e-9),
        cpu_us_per_msg: cpu_ms_total * 1000.0 / count.max(1) as f64,
        cpu_ms_total,
        cpu_ms,
        peak_rss_kib: BTreeMap::new(),
        verdict: None,
    }
}

/// One uplink drain: pipeline up without the gateway, fill, start the gateway, time, verify.
pub(super) async fn uplink_drain(
    exe: &std::path::Path,
    nats_bin: &std::path::Path,
    o: &BacklogOptions,
    w: &Workload,
    round: usize,
) -> anyhow::Result<Trial> {
    let in_flight = o.in_flight;
    let options = PipelineOptions {
        defer_gateway: true,
        ..Default::default()
    };
    let mut p = Pipeline::start_with(
        exe,
        nats_bin,
        options,
        |_| {},
        move |c: &mut GatewayConfig| {
            if let Some(n) = in_flight {
                c.forward.max_in_flight = n;
            }
        },
    )
    .await?;
    let edge = jetstream::new(async_nats::connect(p.edge.url()).await?);
    let cloud = jetstream::new(async_nats::connect(p.cloud_url()).await?);
    // The stream the gateway would create: the backlog is there before the gateway is.
    edge.create_stream(uplink::gateway::stream_config(&p.gateway_cfg))
        .await
        .context("creating the edge stream")?;
    let sent = verify::publish(&edge, w).await?;
    let mut procs = vec![
        ("edge-nats", p.edge.proc.pid().unwrap_or(0)),
        (
            "ingest",
            p.ingest.as_ref().and_then(|u| u.proc.pid()).unwrap_or(0),
        ),
        (
            "cloud-nats",
            p.cloud.as_ref().and_then(|c| c.proc.pid()).unwrap_or(0),
        ),
    ];
    let cpu0 = cpu_of(&procs);
    if !o.json {
        eprintln!("round {} uplink: pids {procs:?} (gateway: next)", round + 1);
    }
    super::harness::perf_control("enable");
    let started = Instant::now();
    p.start_gateway().await?;
    procs.push((
        "gateway",
        p.gateway.as_ref().and_then(|u| u.proc.pid()).unwrap_or(0),
    ));
    let budget = delivery_budget(w.count);
    let stream = &p.ingest_cfg.nats.stream;
    if let Err(e) = super::harness::wait_holds(&cloud, stream, sent.len() as u64, budget).await {
        // The logs of a drain that did not finish are the evidence: keep them.
        p.dir.keep();
        eprintln!("logs kept in {}", p.dir.path().display());
        return Err(e);
    }
    let seconds = started.elapsed().as_secs_f64();
    super::harness::perf_control("disable");
    let cpu_ms = cpu_since(&procs, &cpu0);
    if !o.json {
        eprintln!("round {} uplink: pids {procs:?}", round + 1);
    }
    let mut peak_rss_kib = BTreeMap::new();
    for (name, pid) in &procs {
        if matches!(*name, "gateway" | "ingest")
            && let Some(kib) = peak_rss(*pid)
        {
            peak_rss_kib.insert(name.to_string(), kib);
        }
    }
    verify::wait_drained(
        &edge,
        &p.gateway_cfg.nats.stream,
        &p.gateway_cfg.nats.consumer,
        budget,
    )
    .await?;
    let report = p.check_delivery(&edge, &cloud, &sent).await?;
    for problem in &report.problems {
        eprintln!("problem: {problem}");
    }
    if !report.ok() {
        p.dir.keep();
        eprintln!("logs kept in {}", p.dir.path().display());
    }
    let mut t = trial(round, "uplink", seconds, w.count, cpu_ms);
    t.peak_rss_kib = peak_rss_kib;
    t.verdict = Some(Verdict {
        delivered: report.delivered,
        lost: report.lost,
        duplicates: report.duplicates,
        corrupted: report.corrupted,
    });
    Ok(t)
}

/// Prints the rounds and the ratios, or one JSON line.
pub fn print(r: &BacklogResult, json: bool) {
    if json {
        println!("{}", serde_json::to_string(r).expect("serializable"));
        return;
    }
    println!(
        "backlog {} × {} B, {} rounds, {}",
        r.backlog, r.size, r.runs, r.nats_server
    );
    for (what, x) in &r.msgs_per_sec {
        println!(
            "{what:<12} {:>8.0} … {:>8.0} msgs/s (median {:.0})",
            x.min, x.max, x.median
        );
    }
    for (what, x) in &r.ratio_to {
        println!(
            "uplink ÷ {what:<12} {:.2} … {:.2} (median {:.2}, each round's pair)",
            x.min, x.max, x.median
        );
    }
    println!(
        "uplink verdict over all rounds: lost {}, duplicates {}, corrupted {}",
        r.lost, r.duplicates, r.corrupted
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_have_the_median_of_odd_and_even_sets() {
        let r = Range::of(vec![3.0, 1.0, 2.0]).unwrap();
        assert_eq!((r.min, r.median, r.max, r.n), (1.0, 2.0, 3.0, 3));
        let r = Range::of(vec![4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(r.median, 2.5);
        assert!(Range::of(vec![]).is_none());
    }
}
