//! `uplink bench --compare-baseline`: uplink's steady bench (the plain `uplink bench
//! --messages N`: publisher running, every message verified exactly once) side by side with
//! the case study's Go gateway in the same run. The Go program is built from
//! `../shared/baseline/baseline-go` (offline, GOPATH mode, against Debian's nats.go), then run
//! as in the case study (`-mode gateway -variant fixed -workers 64`, RESULTS.md §3): it drains
//! N pre-published messages from a fresh nats-server, one HTTP/2 mTLS POST per message into
//! nginx `return 204` (`ssl_verify_client on`), acking each after its 2xx. Its certificates
//! come from uplink's dev PKI (the same CA and server certificate code the uplink run uses;
//! no openssl needed). nginx runs once per `--keepalive-requests` value (1000 is nginx's
//! default and the case study's setting). Note: uplink persists into a cloud JetStream, while
//! nginx persists nothing.
//!
//! The Go gateway drains a backlog published before its clock starts, while the steady bench's
//! clock includes its publisher: so each round also has uplink draining the same N
//! pre-published messages (`uplink-drain`, as `--backlog N` runs it) and NATS's own leafnode
//! sourcing moving them (`leafnode`, as `--backlog N --anchor leafnode`): the like-for-like
//! pair, and what NATS itself reaches on the same machine in the same round.
//!
//! `--runs` rounds; each runs every contender once (the Go gateway once per keepalive value),
//! on fresh servers, alternating the order. CPU per message per process from
//! `/proc/<pid>/stat`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;

use super::BenchOptions;
use super::backlog::Range;
use super::sample::{cpu_ms, cpu_of, cpu_since};
use crate::testbed::nginx::{Nginx, NginxSite};
use crate::testbed::{Nats, Proc, TempDir};
use uplink::config::ConfigError;

/// The Debian packages that build the Go gateway offline.
pub const GO_PACKAGES: &str = "golang-go golang-github-nats-io-go-nats-dev";

/// The case study's worker goroutines (RESULTS.md §3).
pub const WORKERS: usize = 64;

const STREAM: &str = "TELEM";
const SUBJECT: &str = "telemetry.in";

/// Where the case study's baseline lives: `--baseline-dir` / `$UPLINK_BASELINE_DIR`, else
/// `../shared/baseline` next to this source tree, else relative to the current directory.
pub fn baseline_dir(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    let beside = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join("../shared/baseline");
    if beside.is_dir() {
        return beside;
    }
    PathBuf::from("../shared/baseline")
}

/// `go` on PATH.
fn find_go() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("go"))
        .find(|p| p.is_file())
}

/// The GOPATH holding Debian's nats.go (`$DEBIAN_GOCODE`, as `env.sh`, else /usr/share/gocode).
fn gopath() -> PathBuf {
    std::env::var_os("DEBIAN_GOCODE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/share/gocode"))
}

/// Checks what the build needs, before anything starts: each problem names the flag and what
/// to install.
pub fn check(dir: &Path) -> Result<PathBuf, ConfigError> {
    let bad = |key: &'static str, reason: String| ConfigError::Invalid { key, reason };
    let go = find_go().ok_or_else(|| {
        bad(
            "--compare-baseline",
            format!(
                "builds the case study's Go gateway and needs `go` on PATH, which is not there: install the Debian packages {GO_PACKAGES} (apt-get install -y {GO_PACKAGES})"
            ),
        )
    })?;
    let main = dir.join("baseline-go/main.go");
    if !main.is_file() {
        return Err(bad(
            "--baseline-dir",
            format!(
                "{} has no baseline-go/main.go (the case study's baseline; set --baseline-dir or UPLINK_BASELINE_DIR)",
                dir.display()
            ),
        ));
    }
    let nats_go = gopath().join("src/github.com/nats-io/nats.go");
    if !nats_go.is_dir() {
        return Err(bad(
            "--compare-baseline",
            format!(
                "the Go gateway builds offline against Debian's nats.go, not found at {}: install the Debian packages {GO_PACKAGES} (or set DEBIAN_GOCODE)",
                nats_go.display()
            ),
        ));
    }
    Ok(go)
}

/// Builds `baseline-go` as `setup.sh` does (GOPATH mode, no modules, no network), into a
/// directory under the system temp dir that keeps Go's build cache between runs.
pub fn build(go: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let out_dir = std::env::temp_dir().join("uplink-baseline-go");
    std::fs::create_dir_all(&out_dir)?;
    let bin = out_dir.join("baseline-go");
    let out = std::process::Command::new(go)
        .args(["build", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(dir.join("baseline-go"))
        .env("GO111MODULE", "off")
        .env("GOPATH", gopath())
        .env("GOCACHE", out_dir.join("gocache"))
        .env("GOFLAGS", "")
        .env("GOPROXY", "off")
        .output()
        .with_context(|| format!("running {}", go.display()))?;
    if !out.status.success() {
        anyhow::bail!(
            "go build in {} failed: {}",
            dir.join("baseline-go").display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(bin)
}

/// What `--compare-baseline` runs.
#[derive(Clone, Debug)]
pub struct BaselineOptions {
    /// The plain bench's options (messages, size, …) for the uplink trials.
    pub bench: BenchOptions,
    pub runs: usize,
    pub keepalive_requests: Vec<u64>,
    pub dir: PathBuf,
    pub go: PathBuf,
}

/// One trial.
#[derive(Debug, serde::Serialize)]
pub struct Trial {
    pub round: usize,
    /// `uplink`, `uplink-drain`, `leafnode` or `go-gateway`.
    pub what: &'static str,
    /// nginx's `keepalive_requests` (Go gateway trials).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keepalive_requests: Option<u64>,
    pub messages: usize,
    /// uplink: publisher start → the cloud stream holds all; uplink-drain and leafnode: the
    /// backlog's drain (`--backlog`); Go: its own clock (consumer created → last ack), as the
    /// case study reports it.
    pub seconds: f64,
    /// The CPU's window: uplink as `seconds`; Go: process start → exit.
    pub wall_seconds: f64,
    pub msgs_per_sec: f64,
    /// CPU milliseconds per process over the measured part, and µs per message (`total`: all).
    pub cpu_ms: BTreeMap<String, f64>,
    pub cpu_us_per_msg: BTreeMap<String, f64>,
    /// uplink: lost + duplicated + corrupted (0, or the run fails); Go: messages not acked.
    pub failures: usize,
    /// Go gateway: the RESULT and CONSUMER lines it printed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub report: Vec<String>,
}

/// The whole run.
#[derive(Debug, serde::Serialize)]
pub struct BaselineResult {
    pub messages: usize,
    pub size: usize,
    pub runs: usize,
    pub workers: usize,
    pub go: String,
    pub nats_server: String,
    pub nginx: String,
    pub cores: usize,
    pub load_average_start: String,
    pub load_average_end: String,
    pub trials: Vec<Trial>,
    /// msgs/s per contender (`uplink`, `uplink-drain`, `leafnode`, `go-gateway@<keepalive>`).
    pub msgs_per_sec: BTreeMap<String, Range>,
    /// uplink's (steady) msgs/s ÷ the Go gateway's, each round's pair, per keepalive value
    /// (`go-gateway@<keepalive>`); `uplink-drain÷go-gateway@<keepalive>` and
    /// `leafnode÷go-gateway@<keepalive>` the same for the drains.
    pub ratio_to: BTreeMap<String, Range>,
    /// Every uplink trial exactly once and every Go trial fully acked.
    pub ok: bool,
}

fn version(cmd: &Path, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .map(|out| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })
        .unwrap_or_default()
}

fn per_msg(cpu: &BTreeMap<String, f64>, messages: usize) -> BTreeMap<String, f64> {
    let n = messages.max(1) as f64;
    let mut out: BTreeMap<String, f64> = cpu
        .iter()
        .map(|(k, v)| (k.clone(), v * 1000.0 / n))
        .collect();
    out.insert("total".into(), cpu.values().sum::<f64>() * 1000.0 / n);
    out
}

fn key(ka: u64) -> String {
    format!("go-gateway@{ka}")
}

/// One contender of a round.
#[derive(Clone, Copy)]
enum Contender {
    /// The steady bench (publisher running).
    Uplink,
    /// uplink draining N pre-published messages (`--backlog N`).
    UplinkDrain,
    /// NATS-native sourcing over an mTLS leafnode, the same backlog.
    Leafnode,
    /// The case study's Go gateway at this `keepalive_requests`.
    Go(u64),
}

/// Runs the rounds (the Go program already built: `bin`).
pub async fn run(o: &BaselineOptions, bin: &Path) -> anyhow::Result<BaselineResult> {
    uplink::tls::install_crypto_provider();
    let nats_bin = crate::testbed::find_nats_server(o.bench.nats_server.as_deref())?;
    let mut result = BaselineResult {
        messages: o.bench.messages,
        size: o.bench.size,
        runs: o.runs,
        workers: WORKERS,
        go: version(&o.go, &["version"]),
        nats_server: version(&nats_bin, &["--version"]),
        nginx: version(&crate::testbed::nginx::find_nginx()?, &["-v"]),
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average_start: super::load_average(),
        load_average_end: String::new(),
        trials: Vec::new(),
        msgs_per_sec: BTreeMap::new(),
        ratio_to: BTreeMap::new(),
        ok: true,
    };
    let exe = std::env::current_exe()?;
    let drain = super::backlog::BacklogOptions {
        messages: o.bench.messages,
        size: o.bench.size,
        runs: 1,
        anchors: Vec::new(),
        nats_server: Some(nats_bin.clone()),
        in_flight: None,
        json: true,
    };
    let w = crate::testbed::verify::Workload {
        count: o.bench.messages,
        size: o.bench.size,
        ..Default::default()
    };
    for round in 0..o.runs {
        let mut order: Vec<Contender> = [
            Contender::Uplink,
            Contender::UplinkDrain,
            Contender::Leafnode,
        ]
        .into_iter()
        .chain(o.keepalive_requests.iter().copied().map(Contender::Go))
        .collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for what in order {
            let t = match what {
                Contender::Uplink => uplink_trial(o, round).await?,
                Contender::UplinkDrain => {
                    let t = super::backlog::uplink_drain(&exe, &nats_bin, &drain, &w, round)
                        .await
                        .context("uplink draining the backlog")?;
                    drain_trial("uplink-drain", round, &t.cpu_ms, t.seconds, &w, t.verdict)
                }
                Contender::Leafnode => {
                    let kind = super::anchor::Native::Leafnode;
                    let r = super::anchor::native_drain(
                        &nats_bin,
                        kind,
                        &w,
                        &uplink::config::GatewayConfig::default(),
                    )
                    .await
                    .context("leafnode sourcing")?;
                    let mut t = drain_trial("leafnode", round, &r.cpu_ms, r.seconds, &w, None);
                    t.failures = w.count.saturating_sub(r.messages as usize);
                    t
                }
                Contender::Go(ka) => go_trial(o, bin, &nats_bin, ka, round)
                    .await
                    .with_context(|| format!("Go gateway, keepalive_requests {ka}"))?,
            };
            if !o.bench.json {
                eprintln!(
                    "round {} {:<22} {:>8.0} msgs/s  {:.2} s  cpu µs/msg {}",
                    t.round,
                    t.keepalive_requests.map_or(t.what.to_string(), key),
                    t.msgs_per_sec,
                    t.seconds,
                    t.cpu_us_per_msg
                        .iter()
                        .map(|(k, v)| format!("{k} {v:.1}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            if t.failures > 0 {
                result.ok = false;
            }
            result.trials.push(t);
        }
    }
    let (msgs_per_sec, ratio_to) = summary(&result.trials, &o.keepalive_requests);
    result.msgs_per_sec = msgs_per_sec;
    result.ratio_to = ratio_to;
    result.load_average_end = super::load_average();
    Ok(result)
}

/// msgs/s per contender over the rounds, and each round's ratio of uplink (steady and
/// draining) and of sourcing to the Go gateway, per keepalive value.
fn summary(
    trials: &[Trial],
    keepalive_requests: &[u64],
) -> (BTreeMap<String, Range>, BTreeMap<String, Range>) {
    let rates = |what: &str, ka: Option<u64>| -> Vec<f64> {
        trials
            .iter()
            .filter(|t| t.what == what && t.keepalive_requests == ka)
            .map(|t| t.msgs_per_sec)
            .collect()
    };
    let mut msgs_per_sec = BTreeMap::new();
    let mut ratio_to = BTreeMap::new();
    for what in ["uplink", "uplink-drain", "leafnode"] {
        msgs_per_sec.extend(Range::of(rates(what, None)).map(|r| (what.to_string(), r)));
    }
    for &ka in keepalive_requests {
        let theirs = rates("go-gateway", Some(ka));
        msgs_per_sec.extend(Range::of(theirs.clone()).map(|r| (key(ka), r)));
        for what in ["uplink", "uplink-drain", "leafnode"] {
            let ratios = rates(what, None)
                .iter()
                .zip(&theirs)
                .map(|(a, b)| a / b)
                .collect();
            let name = match what {
                "uplink" => key(ka),
                _ => format!("{what}÷{}", key(ka)),
            };
            ratio_to.extend(Range::of(ratios).map(|r| (name, r)));
        }
    }
    (msgs_per_sec, ratio_to)
}

/// uplink's steady bench, as `uplink bench --messages N` runs it.
async fn uplink_trial(o: &BaselineOptions, round: usize) -> anyhow::Result<Trial> {
    let mut opts = o.bench.clone();
    opts.json = true; // no pipeline banner between the rounds' lines
    let r = super::run(&opts).await?;
    Ok(Trial {
        round: round + 1,
        what: "uplink",
        keepalive_requests: None,
        messages: r.messages,
        seconds: r.seconds,
        wall_seconds: r.seconds,
        msgs_per_sec: r.msgs_per_sec,
        cpu_us_per_msg: per_msg(&r.cpu_ms, r.messages),
        cpu_ms: r.cpu_ms,
        failures: r.lost + r.duplicates + r.corrupted,
        report: Vec::new(),
    })
}

/// A drain's trial (`uplink-drain`, `leafnode`): its failures are the verdict's lost,
/// duplicated and corrupted messages.
fn drain_trial(
    what: &'static str,
    round: usize,
    cpu_ms: &BTreeMap<String, f64>,
    seconds: f64,
    w: &crate::testbed::verify::Workload,
    verdict: Option<super::backlog::Verdict>,
) -> Trial {
    Trial {
        round: round + 1,
        what,
        keepalive_requests: None,
        messages: w.count,
        seconds,
        wall_seconds: seconds,
        msgs_per_sec: w.count as f64 / seconds.max(1e-9),
        cpu_us_per_msg: per_msg(cpu_ms, w.count),
        cpu_ms: cpu_ms.clone(),
        failures: verdict.map_or(0, |v| v.lost + v.duplicates + v.corrupted),
        report: Vec::new(),
    }
}

/// Publishes `count` messages of `size` bytes into `STREAM` (512 PubAcks in flight).
async fn prepublish(js: &jetstream::Context, count: usize, size: usize) -> anyhow::Result<()> {
    js.create_stream(jetstream::stream::Config {
        name: STREAM.into(),
        subjects: vec![SUBJECT.into()],
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .context("creating the Go gateway's stream")?;
    let payload = bytes::Bytes::from(vec![b'x'; size]);
    let mut acks = std::collections::VecDeque::new();
    for _ in 0..count {
        acks.push_back(js.publish(SUBJECT, payload.clone()).await?);
        if acks.len() >= 512
            && let Some(a) = acks.pop_front()
        {
            a.await?;
        }
    }
    for a in acks {
        a.await?;
    }
    let held = js
        .get_stream(STREAM)
        .await?
        .get_info()
        .await?
        .state
        .messages;
    if held != count as u64 {
        anyhow::bail!("the Go gateway's stream holds {held} of {count} messages");
    }
    Ok(())
}

/// The case study's Go gateway draining N pre-published messages into nginx `return 204`.
async fn go_trial(
    o: &BaselineOptions,
    bin: &Path,
    nats_bin: &Path,
    ka: u64,
    round: usize,
) -> anyhow::Result<Trial> {
    let n = o.bench.messages;
    let dir = TempDir::new("uplink-baseline")?;
    let d = dir.path();
    let platform = "bench-gateway".to_string();
    let pki = uplink::tls::dev_pki(&d.join("pki"), std::slice::from_ref(&platform))?;
    let nats = Nats::start(nats_bin, d, "baseline").await?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    prepublish(&js, n, o.bench.size).await?;
    let site = NginxSite {
        keepalive_requests: ka,
        ..Default::default()
    };
    let nginx = Nginx::start(d, &pki, &site).await?;
    let mut cmd = std::process::Command::new(bin);
    cmd.args(["-mode", "gateway", "-variant", "fixed", "-trace"])
        .args(["-workers", &WORKERS.to_string(), "-n", &n.to_string()])
        .args(["-nats", &nats.url(), "-stream", STREAM, "-subject", SUBJECT])
        .args(["-durable", "gateway"])
        .arg("-url")
        .arg(format!("https://127.0.0.1:{}/ingest", nginx.port))
        .arg("-ca")
        .arg(pki.ca())
        .arg("-cert")
        .arg(pki.client_cert(&platform))
        .arg("-key")
        .arg(pki.client_key(&platform));
    let mut procs: Vec<(&str, u32)> = vec![
        ("nats-server", nats.proc.pid().unwrap_or(0)),
        ("nginx", nginx.proc.pid().unwrap_or(0)),
    ];
    let cpu0 = cpu_of(&procs);
    let started = Instant::now();
    let mut go = Proc::spawn("baseline-go", cmd, d.join("baseline-go.log"))?;
    let pid = go.pid().unwrap_or(0);
    procs.push(("go-gateway", pid));
    // The Go process's CPU is read until it exits (every 10 ms: its last reading misses at
    // most the final flush and the report it prints).
    let mut go_cpu = 0.0;
    let deadline = started + Duration::from_secs(330);
    while go.running() {
        if let Some(ms) = cpu_ms(pid) {
            go_cpu = ms;
        }
        if Instant::now() >= deadline {
            go.kill();
            anyhow::bail!(
                "the Go gateway did not finish within 330 s: {}",
                go.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut cpu = cpu_since(&procs, &cpu0);
    cpu.insert("go-gateway".into(), go_cpu);
    let wall = started.elapsed().as_secs_f64();
    let log = go.log_text();
    let report: Vec<String> = log
        .lines()
        .filter(|l| l.starts_with("RESULT") || l.starts_with("CONSUMER") || l.starts_with("ERROR"))
        .map(str::to_string)
        .collect();
    let field = |name: &str| -> Option<f64> {
        log.lines()
            .find(|l| l.starts_with("RESULT"))?
            .split_whitespace()
            .find_map(|w| w.strip_prefix(name))?
            .trim_end_matches('s')
            .parse()
            .ok()
    };
    let (Some(done), Some(elapsed)) = (field("done="), field("elapsed=")) else {
        anyhow::bail!("the Go gateway printed no RESULT line: {log}");
    };
    drop((nginx, nats));
    Ok(Trial {
        round: round + 1,
        what: "go-gateway",
        keepalive_requests: Some(ka),
        messages: n,
        seconds: elapsed,
        wall_seconds: wall,
        msgs_per_sec: done / elapsed.max(1e-9),
        cpu_us_per_msg: per_msg(&cpu, n),
        cpu_ms: cpu,
        failures: n.saturating_sub(done as usize),
        report,
    })
}

/// Prints the summary, or one JSON line.
pub fn print(r: &BaselineResult, json: bool) {
    if json {
        println!("{}", serde_json::to_string(r).expect("serializable"));
        return;
    }
    println!(
        "uplink steady bench vs the case study's Go gateway ({} workers, nginx return 204): {} × {} B, {} rounds; {}; {}; {}; load average {} → {}",
        r.workers,
        r.messages,
        r.size,
        r.runs,
        r.go,
        r.nats_server,
        r.nginx,
        r.load_average_start,
        r.load_average_end
    );
    for (what, x) in &r.msgs_per_sec {
        println!(
            "{what:<22} {:>8.0} … {:>8.0} msgs/s (median {:.0})",
            x.min, x.max, x.median
        );
    }
    for (what, x) in &r.ratio_to {
        let what = if what.contains('÷') {
            what.replace('÷', " ÷ ")
        } else {
            format!("uplink ÷ {what}")
        };
        println!(
            "{what:<38} {:.2} … {:.2} (median {:.2}, each round's pair)",
            x.min, x.max, x.median
        );
    }
    println!(
        "uplink exactly once and the Go gateway fully acked in every trial: {}",
        if r.ok { "yes" } else { "NO" }
    );
}
