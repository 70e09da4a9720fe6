//! `uplink bench`'s command line and its dispatch: which kind of bench the flags ask for, the
//! checks of flag combinations (each mistake exits 64 naming the flag), and the run. The binary's
//! `main.rs` only dispatches here.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::BenchOptions;
use uplink::config::ConfigError;

mod anchors;

/// `uplink bench` flags: the plain bench's options, and the kinds of bench beside it.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub opts: BenchOptions,
    /// Also measure an anchor in the same run, as a ratio. Without a value (or `relay`): a
    /// direct in-process JetStream-to-JetStream relay on the same servers. With --backlog,
    /// comma-separated: `leafnode` (the cloud stream sources the edge stream over an mTLS
    /// leafnode), `leafnode-ws` (over a wss leafnode through nginx, ssl_verify_client on),
    /// `relay` (uplink's NATS work in one process: explicit acks, Nats-Msg-Id, every PubAck),
    /// `relay-limits` (the same on a limits edge stream), `relay-ackall` (one AckAll ack per
    /// batch, limits), `relay-bare` (no edge acks, no Nats-Msg-Id: only the PubAck kept).
    #[arg(long, value_name = "KIND[,KIND]", num_args = 0..=1, default_missing_value = "relay")]
    pub anchor: Option<String>,
    /// Catching up after an outage: fill the edge stream with N messages first, then start
    /// the gateway and time the drain until the cloud stream holds them all (verified
    /// exactly once); --anchor leafnode,leafnode-ws moves the same backlog NATS-natively.
    #[arg(long, value_name = "N")]
    pub backlog: Option<usize>,
    /// --backlog, --open-loop: rounds (each contender once per round, alternating who goes
    /// first).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Inject faults under a steady load (SCENARIO[,SCENARIO…] or `all`; see --help).
    #[arg(long, value_name = "SCENARIOS", long_help = crate::bench::chaos::help())]
    pub chaos: Option<String>,
    /// Instead of the pipeline: measure the cloud nats-server's memory per message id held
    /// in its duplicate window (--messages ids, side by side with a server holding none).
    #[arg(long)]
    pub dedupe_memory: bool,
    /// Latency, open loop: publish --messages at a fixed RATE (msg/s) that never waits for an
    /// ack before the next send; latency = cloud persist − each message's scheduled send
    /// time. --runs rounds of one trial per --adaptive mode (default both), alternating.
    #[arg(long, value_name = "RATE")]
    pub open_loop: Option<f64>,
    /// A fleet: N simulated edge platforms against one ingest from this process, each with
    /// its own client certificate, connection and loopback address, sending a batch every
    /// second (--rate msg/s in all) for --duration (default 30s): a cold start of all at
    /// once, a quiet third, a third with one more platform flooding, a third around an
    /// ingest restart; every message verified exactly once.
    #[arg(long, value_name = "N")]
    pub platforms: Option<usize>,
    /// Gateway adaptive linger (`batch.adaptive`): on, off, or (--open-loop only) both.
    #[arg(long, value_name = "on|off|both")]
    pub adaptive: Option<String>,
    /// Write throughput and latency over the run's time to one self-contained SVG file (the
    /// plain bench, --duration, --chaos); with --sweep, throughput against each setting.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// The curve, not one point: the bench at each value of these settings (size: 16 B …
    /// 64 KiB, batch: batch.max_messages, in-flight, connections; or all), a fresh verified
    /// pipeline per point, --runs rounds; prints a table (and draws it with --plot).
    #[arg(long, value_name = "SETTING[,SETTING]")]
    pub sweep: Option<String>,
    /// The ingest alone against nginx `return 204`, the case study's request shape (one
    /// one-message POST per message, the ingest answering after the persist), driven by the
    /// same mTLS HTTP/2 load generator in the same run: --requests per trial, --in-flight
    /// requests open (default 64), --runs rounds alternating who goes first.
    #[arg(long)]
    pub ingest_alone: bool,
    /// --ingest-alone: requests per trial (default 100000).
    #[arg(long, value_name = "N")]
    pub requests: Option<usize>,
    /// --ingest-alone: each request's body encoding; by default what the gateway sends for one
    /// message of --size (identity below 1 KiB encoded, zstd above), or forced zstd / identity.
    #[arg(long, value_name = "zstd|identity")]
    pub compression: Option<String>,
    /// --ingest-alone, --compare-baseline: nginx `keepalive_requests` values, one trial each
    /// per round (with --ingest-alone the ingest's http2.max_requests_per_connection alike);
    /// default 1000 (nginx's default) and 1000000 (no rotation).
    #[arg(long, value_name = "N[,N]")]
    pub keepalive_requests: Option<String>,
    /// uplink's steady bench (--messages) side by side with the case study's Go gateway
    /// (built from --baseline-dir with Go; 64 workers, one POST per message into nginx
    /// `return 204`, draining --messages pre-published), with uplink and NATS's leafnode
    /// sourcing draining the same pre-published backlog beside them; --runs rounds alternating.
    #[arg(long)]
    pub compare_baseline: bool,
    /// --compare-baseline: the case study's baseline directory (default ../shared/baseline).
    #[arg(long, value_name = "DIR", env = "UPLINK_BASELINE_DIR")]
    pub baseline_dir: Option<PathBuf>,
    /// The gateway's forward.concurrency modes side by side: adaptive and/or fixed, each with an
    /// optional :MAX_IN_FLIGHT (default --in-flight or 8), e.g. adaptive,fixed,fixed:32. Backlog
    /// drains of --messages, --runs rounds alternating the order, every one verified.
    #[arg(long, value_name = "MODE[:MAX],...")]
    pub concurrency: Option<String>,
    /// With --concurrency: a slow ingest — this latency added before every 16 KiB chunk
    /// between the ingest and cloud NATS (e.g. 5ms).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub inject_latency: Option<Duration>,
    /// With --concurrency: the ingest's memory budget per platform in bytes
    /// (limits.max_inflight_bytes_per_platform and _per_connection; its request size limits
    /// lowered to 1 MiB body / 2 MiB decoded to fit): beyond it, requests get 503 busy at once.
    #[arg(long, value_name = "BYTES")]
    pub ingest_budget: Option<usize>,
}

/// `uplink bench --plot FILE.svg` / `--sweep SETTINGS`: checked before anything starts; the
/// settings to sweep, if any. `only_plain`: a bench kind neither applies to; `not_sweep()`:
/// options a sweep point cannot have.
pub fn plot_and_sweep(
    plot: Option<&std::path::Path>,
    sweep: Option<&str>,
    only_plain: bool,
    not_sweep: impl FnOnce() -> bool,
) -> Result<Option<Vec<crate::bench::sweep::Dim>>, ConfigError> {
    if let Some(path) = plot {
        crate::bench::timeline::check_path(path).map_err(|reason| ConfigError::Invalid {
            key: "--plot",
            reason,
        })?;
        if only_plain {
            return Err(ConfigError::Invalid {
                key: "--plot",
                reason: "draws the plain bench, --duration, --chaos and --sweep (not --open-loop, --backlog or --dedupe-memory)".into(),
            });
        }
    }
    let Some(list) = sweep else {
        return Ok(None);
    };
    let bad = |reason: String| ConfigError::Invalid {
        key: "--sweep",
        reason,
    };
    if only_plain || not_sweep() {
        return Err(bad("sweeps the plain bench: not with --open-loop, --backlog, --dedupe-memory, --chaos, --duration, --cloud-cluster, --anchor or --mixed".into()));
    }
    crate::bench::sweep::parse(list).map(Some).map_err(bad)
}

/// Runs the bench the flags ask for; its exit code (1 when anything was lost or duplicated).
pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if let Some(code) = anchors::run(&args)? {
        return Ok(code);
    }
    let BenchArgs {
        opts,
        anchor,
        backlog,
        runs,
        chaos,
        dedupe_memory,
        open_loop,
        adaptive,
        platforms,
        plot,
        sweep,
        concurrency,
        inject_latency,
        ingest_budget,
        ..
    } = args;
    if concurrency.is_some() || inject_latency.is_some() || ingest_budget.is_some() {
        let alone = anchor.is_none()
            && backlog.is_none()
            && chaos.is_none()
            && !dedupe_memory
            && open_loop.is_none()
            && adaptive.is_none()
            && platforms.is_none()
            && plot.is_none()
            && sweep.is_none();
        return crate::bench::concurrency::cli(
            concurrency,
            (inject_latency, ingest_budget),
            opts,
            runs,
            alone,
        );
    }
    let only_plain = open_loop.is_some() || backlog.is_some() || dedupe_memory;
    let sweep = plot_and_sweep(plot.as_deref(), sweep.as_deref(), only_plain, || {
        chaos.is_some()
            || opts.duration.is_some()
            || opts.cloud_cluster.is_some()
            || anchor.is_some()
            || opts.mixed
    })?;
    if let Some(platforms) = platforms {
        let with_others = chaos.is_some()
            || backlog.is_some()
            || open_loop.is_some()
            || opts.mixed
            || opts.via_nginx
            || anchor.is_some()
            || opts.cloud_cluster.is_some()
            || dedupe_memory
            || adaptive.is_some()
            || plot.is_some()
            || sweep.is_some();
        return fleet_mode(platforms, opts, with_others);
    }
    let modes = adaptive_modes(adaptive.as_deref(), open_loop.is_some())?;
    if let Some(rate) = open_loop {
        let with_others = chaos.is_some()
            || opts.duration.is_some()
            || backlog.is_some()
            || opts.mixed
            || opts.via_nginx
            || anchor.is_some()
            || opts.cloud_cluster.is_some()
            || dedupe_memory;
        return open_loop_mode(rate, opts, runs, modes, with_others);
    }
    let adaptive = modes.map(|m| m[0]);
    if adaptive.is_some() && (backlog.is_some() || chaos.is_some() || opts.duration.is_some()) {
        return Err(ConfigError::Invalid {
            key: "--adaptive",
            reason:
                "applies to the plain bench and --open-loop (not --backlog, --chaos or --duration)"
                    .into(),
        }
        .into());
    }
    if dedupe_memory {
        return dedupe_mode(&opts);
    }
    if opts.cloud_cluster.is_some_and(|n| !(1..=9).contains(&n)) {
        return Err(ConfigError::Invalid {
            key: "--cloud-cluster",
            reason: "must be a number of nodes from 1 to 9".into(),
        }
        .into());
    }
    let anchors: Vec<String> = anchor
        .as_deref()
        .map(|a| a.split(',').map(|k| k.trim().to_string()).collect())
        .unwrap_or_default();
    if let Some(n) = backlog {
        let with_others =
            chaos.is_some() || opts.duration.is_some() || opts.mixed || opts.via_nginx;
        return backlog_mode(n, opts, runs, &anchors, with_others);
    }
    plain_mode(opts, runs, &anchors, chaos, adaptive, plot, sweep)
}

/// `--adaptive on|off|both`: the adaptive-linger modes to run (`both` only with --open-loop).
fn adaptive_modes(
    adaptive: Option<&str>,
    open_loop: bool,
) -> Result<Option<Vec<bool>>, ConfigError> {
    match adaptive {
        None => Ok(None),
        Some("on") => Ok(Some(vec![true])),
        Some("off") => Ok(Some(vec![false])),
        Some("both") if open_loop => Ok(Some(vec![true, false])),
        Some(other) => Err(ConfigError::Invalid {
            key: "--adaptive",
            reason: format!(
                "{other:?}: on or off ({}both with --open-loop)",
                if open_loop { "" } else { "or " }
            ),
        }),
    }
}

/// The plain bench (with `--anchor relay`, `--chaos`, `--plot`, or as a `--sweep`): its flags
/// checked, then run.
fn plain_mode(
    mut opts: BenchOptions,
    runs: usize,
    anchors: &[String],
    chaos: Option<String>,
    adaptive: Option<bool>,
    plot: Option<PathBuf>,
    sweep: Option<Vec<crate::bench::sweep::Dim>>,
) -> anyhow::Result<ExitCode> {
    let anchor = match anchors {
        [] => false,
        [one] if one == "relay" => true,
        _ => {
            return Err(ConfigError::Invalid {
                key: "--anchor",
                reason: format!(
                    "{:?}: without --backlog the only anchor is `relay` (leafnode anchors need --backlog)",
                    anchors.join(",")
                ),
            }
            .into());
        }
    };
    let chaos = match chaos {
        Some(list) => crate::bench::chaos::parse(&list).map_err(|e| ConfigError::Invalid {
            key: "--chaos",
            reason: e.to_string(),
        })?,
        None => Vec::new(),
    };
    if !(opts.rate > 0.0 && opts.rate.is_finite()) {
        return Err(ConfigError::Invalid {
            key: "--rate",
            reason: "must be a positive number of messages per second".into(),
        }
        .into());
    }
    opts.adaptive = adaptive;
    opts.chaos = chaos;
    opts.anchor = anchor;
    opts.plot = plot;
    if let Some(dims) = sweep {
        return sweep_mode(dims, opts, runs);
    }
    let result = super::harness::until_interrupted(crate::bench::run(&opts))?;
    crate::bench::print(&result, opts.json);
    // --chaos: a scenario asked for and never injected fails the run (said in `problems`).
    let unexercised = result
        .faults
        .as_ref()
        .is_some_and(|f| f.values().any(|f| f.injected == 0));
    Ok(
        if result.lost > 0 || result.duplicates > 0 || result.corrupted > 0 || unexercised {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        },
    )
}

/// A bench's exit status: 1 when anything was lost, duplicated or corrupted.
pub(super) fn verdict(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `--platforms N`: the fleet, alone (`with_others`: a flag it does not combine with was given).
fn fleet_mode(platforms: usize, opts: BenchOptions, with_others: bool) -> anyhow::Result<ExitCode> {
    if with_others {
        return Err(ConfigError::Invalid {
            key: "--platforms",
            reason: "runs alone (with --duration, --rate, --size, --json, --nats-server): not with --chaos, --backlog, --open-loop, --mixed, --via-nginx, --anchor, --cloud-cluster, --dedupe-memory, --adaptive, --plot or --sweep".into(),
        }
        .into());
    }
    let o = crate::bench::fleet::FleetOptions {
        platforms,
        duration: opts.duration.unwrap_or(Duration::from_secs(30)),
        rate: opts.rate,
        size: opts.size,
        interval: Duration::from_secs(1),
        nats_server: opts.nats_server,
        json: opts.json,
    };
    o.check()?;
    let result = super::harness::until_interrupted(crate::bench::fleet::run(&o))?;
    crate::bench::fleet::print(&result, o.json);
    Ok(verdict(result.ok()))
}

/// `--open-loop RATE`: latency from each message's scheduled send time.
fn open_loop_mode(
    rate: f64,
    opts: BenchOptions,
    runs: usize,
    modes: Option<Vec<bool>>,
    with_others: bool,
) -> anyhow::Result<ExitCode> {
    let bad = |reason: String| ConfigError::Invalid {
        key: "--open-loop",
        reason,
    };
    if !(rate > 0.0 && rate.is_finite()) {
        return Err(bad("must be a positive number of messages per second".into()).into());
    }
    if opts.messages == 0 || runs == 0 {
        return Err(bad("needs at least 1 message (--messages) and 1 run (--runs)".into()).into());
    }
    if with_others {
        return Err(bad("runs alone: not with --chaos, --duration, --backlog, --mixed, --via-nginx, --anchor, --cloud-cluster or --dedupe-memory".into()).into());
    }
    let o = crate::bench::latency::LatencyOptions {
        rate,
        messages: opts.messages,
        size: opts.size,
        runs,
        modes: modes.unwrap_or_else(|| vec![true, false]),
        nats_server: opts.nats_server,
        in_flight: opts.in_flight,
        json: opts.json,
    };
    let result = super::harness::until_interrupted(crate::bench::latency::run(&o))?;
    crate::bench::latency::print(&result, opts.json);
    Ok(verdict(result.ok()))
}

/// `--dedupe-memory`: the duplicate window's memory per id.
fn dedupe_mode(opts: &BenchOptions) -> anyhow::Result<ExitCode> {
    if opts.messages < crate::bench::dedupe::MIN_MESSAGES {
        return Err(ConfigError::Invalid {
            key: "--messages",
            reason: format!(
                "--dedupe-memory needs at least {} messages to measure",
                crate::bench::dedupe::MIN_MESSAGES
            ),
        }
        .into());
    }
    let bin = crate::testbed::find_nats_server(opts.nats_server.as_deref())?;
    let r = uplink::runtime()?.block_on(crate::bench::dedupe::run(&bin, opts.messages))?;
    println!(
        "{} ids of {} B held by {}: {:.0} B per id (median of {} rounds)",
        r.messages,
        r.id_len,
        r.nats_server,
        r.bytes_per_id,
        r.rounds.len()
    );
    if opts.json {
        println!("{}", serde_json::to_string(&r)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// `--backlog N`: the drain of a filled edge stream, beside the `--anchor`s asked for.
fn backlog_mode(
    n: usize,
    opts: BenchOptions,
    runs: usize,
    anchors: &[String],
    with_others: bool,
) -> anyhow::Result<ExitCode> {
    let bad = |reason: String| ConfigError::Invalid {
        key: "--backlog",
        reason,
    };
    if n == 0 {
        return Err(bad("must be at least 1 message".into()).into());
    }
    if runs == 0 {
        return Err(ConfigError::Invalid {
            key: "--runs",
            reason: "must be at least 1".into(),
        }
        .into());
    }
    use crate::bench::anchor::Native;
    let mut kinds = Vec::new();
    for a in anchors {
        match Native::ALL.iter().find(|k| k.name() == a) {
            Some(k) => kinds.push(*k),
            None => {
                let names: Vec<&str> = Native::ALL.iter().map(|k| k.name()).collect();
                return Err(ConfigError::Invalid {
                    key: "--anchor",
                    reason: format!("{a:?} is not an anchor of --backlog ({})", names.join(", ")),
                }
                .into());
            }
        }
    }
    if with_others {
        return Err(
            bad("runs alone: not with --chaos, --duration, --mixed or --via-nginx".into()).into(),
        );
    }
    let o = crate::bench::backlog::BacklogOptions {
        messages: n,
        size: opts.size,
        runs,
        anchors: kinds,
        nats_server: opts.nats_server,
        in_flight: opts.in_flight,
        json: opts.json,
    };
    let result = super::harness::until_interrupted(crate::bench::backlog::run(&o))?;
    crate::bench::backlog::print(&result, opts.json);
    Ok(verdict(result.ok()))
}

/// `--sweep SETTINGS`: the plain bench at each value.
fn sweep_mode(
    dims: Vec<crate::bench::sweep::Dim>,
    opts: BenchOptions,
    runs: usize,
) -> anyhow::Result<ExitCode> {
    if runs == 0 || opts.messages == 0 {
        return Err(ConfigError::Invalid {
            key: "--sweep",
            reason: "needs at least 1 message (--messages) and 1 run (--runs)".into(),
        }
        .into());
    }
    let o = crate::bench::sweep::SweepOptions {
        dims,
        plot: opts.plot.clone(),
        json: opts.json,
        base: opts,
        runs,
    };
    let result = super::harness::until_interrupted(crate::bench::sweep::run(&o))?;
    crate::bench::sweep::print(&result, o.json);
    Ok(verdict(result.ok()))
}
