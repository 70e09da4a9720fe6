//! `uplink bench`: the end-to-end proof a user can run. Starts a private pipeline (edge and
//! cloud nats-servers, ingest, gateway, dev PKI), publishes N messages over several subjects,
//! waits until the cloud stream holds them and the edge consumer is drained, then verifies every
//! id arrived exactly once with its payload intact.

pub mod anchor;
pub mod backlog;
pub mod baseline_go;
pub mod chaos;
pub mod cli;
pub mod cluster;
pub mod concurrency;
pub mod dedupe;
pub mod fleet;
pub mod harness;
pub mod ingest_alone;
pub mod latency;
pub mod load;
pub mod plot;
pub mod sample;
pub mod sweep;
pub mod timeline;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_nats::jetstream;

use crate::testbed::nginx::NginxSite;
use crate::testbed::pipeline::{Pipeline, PipelineOptions, delivery_budget};
use crate::testbed::verify::{self, Workload};
use uplink::config::{GatewayConfig, IngestConfig};
use uplink::telemetry::scrape_sum;

/// What to run: `uplink bench`'s pipeline flags (the doc comments are their help); `anchor`,
/// `chaos` and `adaptive` are set from their flags once checked.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchOptions {
    #[arg(long, default_value_t = 100_000)]
    pub messages: usize,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 200)]
    pub size: usize,
    /// Mixed sizes (0 B … 64 KiB), binary payloads and headers.
    #[arg(long)]
    pub mixed: bool,
    /// Print one JSON object as the last line.
    #[arg(long)]
    pub json: bool,
    #[arg(long)]
    pub nats_server: Option<PathBuf>,
    /// Ingest: GOAWAY after this many requests per connection (`http2.max_requests_per_connection`).
    #[arg(long)]
    pub ingest_max_requests: Option<u64>,
    /// Ingest: idle timeout (e.g. 2s; `timeouts.idle`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ingest_idle_timeout: Option<Duration>,
    /// Gateway: batches in flight (`forward.max_in_flight`); with --ingest-alone: requests in
    /// flight (default 64).
    #[arg(long)]
    pub in_flight: Option<usize>,
    /// Route through a real nginx (TLS terminator, ssl_verify_client on, nginx defaults).
    #[arg(long)]
    pub via_nginx: bool,
    /// Run a steady load (--rate) for this long instead of --messages; without --chaos a
    /// soak that samples gateway and ingest (RSS, fds, threads). Default with --chaos: 60s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Messages per second of the steady load.
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Seed of the fault schedule (printed by every run).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Run the cloud on a JetStream cluster of N nats-servers (stream at min(N, 3)
    /// replicas, the ingest given every node's URL). Without --chaos, the stream leader is
    /// SIGKILLed a third of the way in, the follower the ingest is connected to two thirds
    /// in, and the election and stall of each are reported; with --chaos, kill-cloud-node
    /// and restart-cloud-nats hit one node of the cluster.
    #[arg(long, value_name = "N")]
    pub cloud_cluster: Option<usize>,
    /// Also measure the in-process JetStream-to-JetStream relay on the same servers
    /// (`--anchor` / `--anchor relay`).
    #[arg(skip)]
    pub anchor: bool,
    /// Faults to inject under a steady load (`--chaos`); with none but a `duration`, a soak.
    #[arg(skip)]
    pub chaos: Vec<chaos::Fault>,
    /// Gateway `batch.adaptive` (`--adaptive on|off`); None: the default.
    #[arg(skip)]
    pub adaptive: Option<bool>,
    /// Gateway `batch.max_messages` (set by `--sweep batch`).
    #[arg(skip)]
    pub batch: Option<usize>,
    /// Gateway `forward.connections` (set by `--sweep connections`).
    #[arg(skip)]
    pub connections: Option<usize>,
    /// Write throughput and latency over the run's time to this SVG file (`--plot`, checked
    /// before it is set here).
    #[arg(skip)]
    pub plot: Option<PathBuf>,
}

/// The options of a run, as recorded in its JSON.
#[derive(Debug, serde::Serialize)]
pub struct RunOptions {
    pub size: usize,
    pub mixed: bool,
    pub via_nginx: bool,
    pub anchor: bool,
    pub in_flight: Option<usize>,
    pub ingest_max_requests: Option<u64>,
    pub ingest_idle_timeout_s: Option<f64>,
    pub chaos: Vec<&'static str>,
    pub cloud_cluster: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plot: Option<PathBuf>,
    /// `nats-server --version` of the binary the run used.
    pub nats_server: String,
}

impl RunOptions {
    fn of(o: &BenchOptions) -> Self {
        let version = crate::testbed::find_nats_server(o.nats_server.as_deref())
            .ok()
            .and_then(|bin| {
                std::process::Command::new(bin)
                    .arg("--version")
                    .output()
                    .ok()
            })
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
            .unwrap_or_default();
        RunOptions {
            size: o.size,
            mixed: o.mixed,
            via_nginx: o.via_nginx,
            anchor: o.anchor,
            in_flight: o.in_flight,
            ingest_max_requests: o.ingest_max_requests,
            ingest_idle_timeout_s: o.ingest_idle_timeout.map(|d| d.as_secs_f64()),
            chaos: o.chaos.iter().map(|f| f.name()).collect(),
            cloud_cluster: o.cloud_cluster,
            adaptive: o.adaptive,
            batch: o.batch,
            connections: o.connections,
            plot: o.plot.clone(),
            nats_server: version,
        }
    }
}

/// The figures of a run.
#[derive(Debug, serde::Serialize)]
pub struct BenchResult {
    pub messages: usize,
    pub delivered: usize,
    pub lost: usize,
    pub duplicates: usize,
    pub corrupted: usize,
    pub seconds: f64,
    pub msgs_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub connections_opened: u64,
    pub retries: u64,
    pub server_goaways: u64,
    /// What this run was asked to do, so a JSON line stands on its own.
    pub options: RunOptions,
    /// Messages per second of a direct in-process JetStream relay (`--anchor`), same run.
    pub anchor_msgs_per_sec: Option<f64>,
    /// `msgs_per_sec / anchor_msgs_per_sec`.
    pub ratio_to_anchor: Option<f64>,
    /// Steady-load runs: the seed of the fault schedule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Steady-load runs: the load's rate (messages per second) and duration (seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<f64>,
    /// `--chaos` runs: per scenario, how often it was injected and the longest recovery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub faults: Option<std::collections::BTreeMap<String, chaos::FaultFigures>>,
    /// Steady-load runs: RSS, open fds and threads of gateway and ingest (start, peak, end).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<std::collections::BTreeMap<String, chaos::Resources>>,
    /// Steady-load runs: what went wrong along the way besides the verdict (exit codes).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// `--cloud-cluster` runs without `--chaos`: the leader kill and what it cost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<cluster::ClusterFigures>,
    /// The plain bench: CPU milliseconds per process from the publisher's start until the
    /// cloud stream holds every message (`publisher` is this process), from `/proc/<pid>/stat`.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub cpu_ms: std::collections::BTreeMap<String, f64>,
}

/// The plain bench's pipeline, with the flags' settings, announced unless `--json`.
async fn start_plain(opts: &BenchOptions) -> anyhow::Result<Pipeline> {
    let exe = std::env::current_exe()?;
    let nats_bin = crate::testbed::find_nats_server(opts.nats_server.as_deref())?;
    let o = opts.clone();
    let tweak_ingest = move |c: &mut IngestConfig| {
        if let Some(n) = o.ingest_max_requests {
            c.http2.max_requests_per_connection = n;
        }
        if let Some(d) = o.ingest_idle_timeout {
            c.timeouts.idle = d;
        }
    };
    let o = opts.clone();
    let tweak_gateway = move |c: &mut GatewayConfig| {
        if let Some(n) = o.in_flight {
            c.forward.max_in_flight = n;
        }
        if let Some(a) = o.adaptive {
            c.batch.adaptive = a;
        }
        if let Some(n) = o.batch {
            c.batch.max_messages = n;
        }
        if let Some(n) = o.connections {
            c.forward.connections = n;
        }
    };
    let options = PipelineOptions {
        nginx: opts.via_nginx.then(NginxSite::default),
        cloud_cluster: opts.cloud_cluster,
        ..Default::default()
    };
    let p = Pipeline::start_with(&exe, &nats_bin, options, tweak_ingest, tweak_gateway).await?;
    if !opts.json {
        eprintln!(
            "pipeline up: edge {} → gateway → {}ingest {} → cloud {} (logs in {})",
            p.edge.url(),
            match &p.nginx {
                Some(n) => format!("nginx {} → ", n.url()),
                None => String::new(),
            },
            p.ingest_url(),
            p.ingest_cfg.nats.connect.url,
            p.dir.path().display()
        );
        if let Some(c) = &p.cluster {
            eprintln!(
                "cloud: a {}-node JetStream cluster, stream {} at {} replicas; SIGKILL of the stream leader a third of the way in, of the ingest's follower two thirds in",
                c.nodes.len(),
                p.ingest_cfg.nats.stream,
                p.ingest_cfg.nats.replicas
            );
        }
    }
    Ok(p)
}

/// The pipeline's processes by name (and this one, the publisher), for CPU sampling.
fn processes(p: &Pipeline) -> Vec<(&'static str, u32)> {
    let pid = |u: &Option<crate::testbed::Uplink>| u.as_ref().and_then(|u| u.proc.pid());
    [
        ("edge-nats", p.edge.proc.pid()),
        ("gateway", pid(&p.gateway)),
        ("ingest", pid(&p.ingest)),
        ("cloud-nats", p.cloud.as_ref().and_then(|c| c.proc.pid())),
        ("publisher", Some(std::process::id())),
    ]
    .into_iter()
    .filter_map(|(name, pid)| Some((name, pid?)))
    .collect()
}

/// Runs the bench; Ok(result) whatever the verdict (the caller decides the exit code).
pub async fn run(opts: &BenchOptions) -> anyhow::Result<BenchResult> {
    if opts.duration.is_some() || !opts.chaos.is_empty() {
        return run_load(opts).await;
    }
    let mut p = start_plain(opts).await?;
    let edge = jetstream::new(async_nats::connect(p.edge.url()).await?);
    let cloud = jetstream::new(async_nats::connect(p.cloud_addrs()).await?);
    let w = Workload {
        count: opts.messages,
        size: opts.size,
        mixed: opts.mixed,
        ..Default::default()
    };
    let procs = processes(&p);
    let cpu0 = sample::cpu_of(&procs);
    let started = Instant::now();
    let started_ns = timeline::now_ns();
    let publisher = tokio::spawn({
        let (edge, w) = (edge.clone(), w.clone());
        async move { verify::publish(&edge, &w).await }
    });
    let cluster = if p.cluster.is_some() {
        let total = opts.messages as u64;
        Some(cluster::kill_nodes(&mut p, &cloud, total).await?)
    } else {
        None
    };
    let sent = publisher.await??;
    let budget = delivery_budget(opts.messages);
    verify::wait_count(&cloud, &p.ingest_cfg.nats.stream, sent.len() as u64, budget).await?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu_ms = sample::cpu_since(&procs, &cpu0);
    verify::wait_drained(
        &edge,
        &p.gateway_cfg.nats.stream,
        &p.gateway_cfg.nats.consumer,
        budget,
    )
    .await?;
    let (report, got) = p.read_and_check(&edge, &cloud, &sent).await?;
    let gm = p.gateway_metrics().await.unwrap_or_default();
    let im = p.ingest_metrics().await.unwrap_or_default();
    for problem in &report.problems {
        eprintln!("problem: {problem}");
    }
    let msgs_per_sec = report.messages as f64 / seconds.max(1e-9);
    let anchor = if opts.anchor {
        let batch = p.gateway_cfg.batch.max_messages;
        Some(anchor::relay_rate(&edge, &cloud, &w, batch).await?)
    } else {
        None
    };
    let result = BenchResult {
        messages: report.messages,
        delivered: report.delivered,
        lost: report.lost,
        duplicates: report.duplicates,
        corrupted: report.corrupted,
        seconds,
        msgs_per_sec,
        p50_ms: report.p50_ms,
        p99_ms: report.p99_ms,
        connections_opened: scrape_sum(&gm, "uplink_client_connections_opened_total") as u64,
        retries: scrape_sum(&gm, "uplink_gateway_retries_total") as u64,
        server_goaways: scrape_sum(&im, "uplink_ingest_goaway_sent_total") as u64,
        options: RunOptions::of(opts),
        anchor_msgs_per_sec: anchor,
        ratio_to_anchor: anchor.map(|a| msgs_per_sec / a),
        seed: None,
        rate: None,
        duration_s: None,
        faults: None,
        resources: None,
        problems: Vec::new(),
        cluster,
        cpu_ms,
    };
    if let Some(path) = &opts.plot {
        write_plot(path, &result, started_ns, &got)?;
    }
    Ok(result)
}

/// `--plot`: the timeline of a run, titled with what it was and its verdict.
fn write_plot(
    path: &std::path::Path,
    r: &BenchResult,
    started_ns: i128,
    got: &[verify::Received],
) -> anyhow::Result<()> {
    let o = &r.options;
    let what = match (r.rate, r.duration_s) {
        (Some(rate), Some(d)) => format!(
            "steady load {rate:.0} msg/s for {d:.0} s{}",
            if o.chaos.is_empty() {
                String::new()
            } else {
                format!(", chaos [{}]", o.chaos.join(","))
            }
        ),
        _ => "closed-loop publisher (512 PubAcks in flight)".to_string(),
    };
    let title = format!(
        "uplink bench: {} messages of {}, {what}",
        r.messages,
        if o.mixed {
            "mixed sizes".to_string()
        } else {
            format!("{} B", o.size)
        }
    );
    let notes = vec![
        format!(
            "{:.0} msgs/s end to end over {:.2} s; latency edge→cloud p50 {:.1} ms, p99 {:.1} ms; delivered {}, lost {}, duplicates {}, corrupted {}",
            r.msgs_per_sec,
            r.seconds,
            r.p50_ms,
            r.p99_ms,
            r.delivered,
            r.lost,
            r.duplicates,
            r.corrupted
        ),
        format!(
            "{}; gateway in-flight {}, batch {}, connections {}{}; {} cores, load average {}",
            o.nats_server,
            opt(o.in_flight),
            opt(o.batch),
            opt(o.connections),
            if o.via_nginx { ", via nginx" } else { "" },
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            load_average()
        ),
    ];
    timeline::write(path, &title, notes, started_ns, got)?;
    eprintln!("plot written to {}", path.display());
    Ok(())
}

fn opt(v: Option<usize>) -> String {
    v.map_or_else(|| "default".to_string(), |n| n.to_string())
}

/// The 1-minute load average (`/proc/loadavg`), for the notes of a plot.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

/// `--chaos` / `--duration`: a steady load for a duration with faults (or none: a soak), then
/// the drain and the same verdict as [`run`].
async fn run_load(opts: &BenchOptions) -> anyhow::Result<BenchResult> {
    let lo = chaos::LoadOptions {
        faults: opts.chaos.clone(),
        duration: opts.duration.unwrap_or(Duration::from_secs(60)),
        rate: opts.rate,
        seed: opts.seed,
        size: opts.size,
        sample_every: Duration::from_secs(2),
        json: opts.json,
    };
    let exe = std::env::current_exe()?;
    let nats_bin = crate::testbed::find_nats_server(opts.nats_server.as_deref())?;
    let mut p = chaos::start_pipeline(&exe, &nats_bin, opts.cloud_cluster).await?;
    // Seeds are drawn here so the text output can say which one before anything happens.
    let seed = lo.seed.unwrap_or_else(|| fastrand::u64(..));
    let lo = chaos::LoadOptions {
        seed: Some(seed),
        ..lo
    };
    if !opts.json {
        eprintln!(
            "pipeline up: edge {} → gateway → fault proxy → ingest {} → cloud {} (logs in {})",
            p.edge.url(),
            p.ingest_url(),
            p.ingest_cfg.nats.connect.url,
            p.dir.path().display()
        );
        eprintln!(
            "{} for {:?} at {} msg/s, seed {seed} (rerun with --seed {seed}); gateway tuned for fast recovery (ack_wait 6s, request 3s, ping 2s/2s, max_backoff 1s)",
            if lo.faults.is_empty() {
                "soak".to_string()
            } else {
                format!(
                    "chaos [{}]",
                    lo.faults
                        .iter()
                        .map(|f| f.name())
                        .collect::<Vec<_>>()
                        .join(",")
                )
            },
            lo.duration,
            lo.rate
        );
        if lo.faults.contains(&chaos::Fault::KillCloudNode) && p.cluster.is_none() {
            eprintln!(
                "kill-cloud-node: the cloud is a single nats-server here (no --cloud-cluster), so this is restart-cloud-nats with SIGKILL"
            );
        }
    }
    if opts.json {
        // The seed is printed by every run: with --json on stderr, so stdout stays one line.
        eprintln!("seed {seed}");
    }
    let verdict = drive_and_verify(&mut p, &lo).await;
    let (seconds, report, figures, started_ns, got) = match verdict {
        Ok(v) => v,
        Err(e) => {
            // Keep the evidence: the logs of a run that did not drain outlive it.
            p.dir.keep();
            eprintln!("logs kept in {}", p.dir.path().display());
            return Err(e);
        }
    };
    for problem in report.problems.iter().chain(&figures.problems) {
        eprintln!("problem: {problem}");
    }
    if !report.ok() {
        p.dir.keep();
        eprintln!("logs kept in {}", p.dir.path().display());
    }
    let gm = p.gateway_metrics().await.unwrap_or_default();
    let im = p.ingest_metrics().await.unwrap_or_default();
    let result = BenchResult {
        messages: report.messages,
        delivered: report.delivered,
        lost: report.lost,
        duplicates: report.duplicates,
        corrupted: report.corrupted,
        seconds,
        msgs_per_sec: report.messages as f64 / seconds.max(1e-9),
        p50_ms: report.p50_ms,
        p99_ms: report.p99_ms,
        connections_opened: scrape_sum(&gm, "uplink_client_connections_opened_total") as u64,
        retries: scrape_sum(&gm, "uplink_gateway_retries_total") as u64,
        server_goaways: scrape_sum(&im, "uplink_ingest_goaway_sent_total") as u64,
        options: RunOptions::of(opts),
        anchor_msgs_per_sec: None,
        ratio_to_anchor: None,
        seed: Some(figures.seed),
        rate: Some(lo.rate),
        duration_s: Some(lo.duration.as_secs_f64()),
        faults: (!lo.faults.is_empty()).then_some(figures.faults),
        resources: Some(figures.resources),
        problems: figures.problems,
        cluster: None,
        cpu_ms: Default::default(),
    };
    if let Some(path) = &opts.plot {
        write_plot(path, &result, started_ns, &got)?;
    }
    Ok(result)
}

/// Prints the result as a human summary, or one JSON line.
pub fn print(r: &BenchResult, json: bool) {
    if json {
        println!("{}", serde_json::to_string(r).expect("serializable"));
        return;
    }
    println!(
        "{} messages: delivered {}, lost {}, duplicates {}, corrupted {}",
        r.messages, r.delivered, r.lost, r.duplicates, r.corrupted
    );
    println!(
        "{:.2} s, {:.0} msgs/s end to end; latency edge→cloud p50 {:.1} ms, p99 {:.1} ms",
        r.seconds, r.msgs_per_sec, r.p50_ms, r.p99_ms
    );
    println!(
        "connections opened {}, retries {}, server GOAWAYs {}",
        r.connections_opened, r.retries, r.server_goaways
    );
    if let Some(faults) = &r.faults {
        println!("fault                injected  max recovery  evidence");
        for (name, f) in faults {
            println!(
                "{name:<20} {:>8}  {:>9.0} ms  {}",
                f.injected, f.max_recovery_ms, f.evidence
            );
        }
    }
    if let Some(res) = &r.resources {
        for (name, x) in res {
            println!(
                "{name}: RSS {} → peak {} → {} KiB; fds {} → {} → {}; threads {} → {} → {} ({} samples)",
                x.start.rss_kib,
                x.peak.rss_kib,
                x.end.rss_kib,
                x.start.fds,
                x.peak.fds,
                x.end.fds,
                x.start.threads,
                x.peak.threads,
                x.end.threads,
                x.samples
            );
        }
    }
    if let Some(seed) = r.seed {
        println!("seed {seed}");
    }
    if let Some(c) = &r.cluster {
        println!(
            "cloud cluster: {} nodes, stream at {} replicas, timeouts.publish {:.0} ms",
            c.nodes, c.replicas, c.publish_timeout_ms
        );
        for f in &c.faults {
            println!("  {}", f.fault);
            println!(
                "    election {:.0} ms, pipeline stall {:.0} ms, 503s answered {}, rejoined: {}",
                f.election_ms, f.stall_ms, f.ingest_503, f.rejoined
            );
        }
    }
    if let (Some(a), Some(ratio)) = (r.anchor_msgs_per_sec, r.ratio_to_anchor) {
        println!(
            "anchor (in-process JetStream→JetStream relay, same servers, same run): {a:.0} msgs/s; uplink = {ratio:.2}× of it"
        );
    }
}

/// The load with its faults, the drain and the verdict of a steady-load run.
async fn drive_and_verify(
    p: &mut Pipeline,
    lo: &chaos::LoadOptions,
) -> anyhow::Result<(
    f64,
    verify::Report,
    chaos::LoadFigures,
    i128,
    Vec<verify::Received>,
)> {
    let edge = jetstream::new(async_nats::connect(p.edge.url()).await?);
    let cloud = jetstream::new(async_nats::connect(p.cloud_addrs()).await?);
    let started = Instant::now();
    let started_ns = timeline::now_ns();
    let (sent, mut figures) = chaos::drive(p, lo, &edge, &cloud).await?;
    let budget = delivery_budget(sent.len());
    // A run that does not drain still gets its verdict: which ids are missing is the point.
    let stream = &p.ingest_cfg.nats.stream;
    if let Err(e) = verify::wait_count(&cloud, stream, sent.len() as u64, budget).await {
        figures.problems.push(format!("drain: {e}"));
    }
    let seconds = started.elapsed().as_secs_f64();
    if let Err(e) = verify::wait_drained(
        &edge,
        &p.gateway_cfg.nats.stream,
        &p.gateway_cfg.nats.consumer,
        budget,
    )
    .await
    {
        figures.problems.push(format!("drain: {e}"));
    }
    let (report, got) = p.read_and_check(&edge, &cloud, &sent).await?;
    Ok((seconds, report, figures, started_ns, got))
}
