//! `uplink bench --ingest-alone` and `--compare-baseline`: the anchors that run alone, their
//! flags checked (each mistake exits 64 naming the flag), then run.

use std::process::ExitCode;

use super::BenchArgs;
use uplink::config::ConfigError;

/// `--keepalive-requests`: a comma-separated list of positive counts (default 1000, 1000000).
fn keepalive_list(list: Option<&str>) -> Result<Vec<u64>, ConfigError> {
    let Some(list) = list else {
        return Ok(vec![1000, crate::bench::ingest_alone::NO_ROTATION]);
    };
    let mut out = Vec::new();
    for item in list.split(',') {
        match item.trim().parse::<u64>() {
            Ok(n) if n > 0 && !out.contains(&n) => out.push(n),
            _ => {
                return Err(ConfigError::Invalid {
                    key: "--keepalive-requests",
                    reason: format!(
                        "{item:?}: a comma-separated list of distinct request counts, each at least 1"
                    ),
                });
            }
        }
    }
    Ok(out)
}

/// The flags `--ingest-alone` and `--compare-baseline` are run with; `Err` names the flag that
/// does not belong (a bench kind of its own, or an option of another kind).
fn others(a: &BenchArgs, allowed_in_flight: bool) -> Option<&'static str> {
    let o = &a.opts;
    [
        (a.chaos.is_some(), "--chaos"),
        (a.backlog.is_some(), "--backlog"),
        (a.open_loop.is_some(), "--open-loop"),
        (a.platforms.is_some(), "--platforms"),
        (a.dedupe_memory, "--dedupe-memory"),
        (a.anchor.is_some(), "--anchor"),
        (a.adaptive.is_some(), "--adaptive"),
        (a.plot.is_some(), "--plot"),
        (a.sweep.is_some(), "--sweep"),
        (a.concurrency.is_some(), "--concurrency"),
        (a.inject_latency.is_some(), "--inject-latency"),
        (a.ingest_budget.is_some(), "--ingest-budget"),
        (o.mixed, "--mixed"),
        (o.via_nginx, "--via-nginx"),
        (o.duration.is_some(), "--duration"),
        (o.cloud_cluster.is_some(), "--cloud-cluster"),
        (o.ingest_max_requests.is_some(), "--ingest-max-requests"),
        (o.ingest_idle_timeout.is_some(), "--ingest-idle-timeout"),
        (o.in_flight.is_some() && !allowed_in_flight, "--in-flight"),
    ]
    .into_iter()
    .find_map(|(set, flag)| set.then_some(flag))
}

fn runs_ok(args: &BenchArgs) -> Result<(), ConfigError> {
    if args.runs == 0 {
        Err(ConfigError::Invalid {
            key: "--runs",
            reason: "must be at least 1".into(),
        })
    } else {
        Ok(())
    }
}

/// `--ingest-alone` / `--compare-baseline`, checked and run; None: neither was asked for.
pub(super) fn run(args: &BenchArgs) -> anyhow::Result<Option<ExitCode>> {
    if args.ingest_alone {
        return ingest_alone(args).map(Some);
    }
    if args.requests.is_some() || args.compression.is_some() {
        return Err(ConfigError::Invalid {
            key: if args.requests.is_some() {
                "--requests"
            } else {
                "--compression"
            },
            reason: "applies to --ingest-alone only (the other benches count --messages)".into(),
        }
        .into());
    }
    if !args.compare_baseline {
        if args.keepalive_requests.is_some() {
            return Err(ConfigError::Invalid {
                key: "--keepalive-requests",
                reason: "applies to --ingest-alone and --compare-baseline only".into(),
            }
            .into());
        }
        return Ok(None);
    }
    compare_baseline(args).map(Some)
}

/// `--ingest-alone`: the ingest vs nginx `return 204`.
fn ingest_alone(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let bad = |reason: String| ConfigError::Invalid {
        key: "--ingest-alone",
        reason,
    };
    if args.compare_baseline {
        return Err(bad("runs alone: not with --compare-baseline".into()).into());
    }
    if let Some(flag) = others(args, true) {
        return Err(bad(format!("runs alone (with --requests, --runs, --in-flight, --size, --compression, --keepalive-requests, --json, --nats-server): not with {flag}")).into());
    }
    runs_ok(args)?;
    let requests = args.requests.unwrap_or(100_000);
    if requests == 0 {
        return Err(ConfigError::Invalid {
            key: "--requests",
            reason: "must be at least 1".into(),
        }
        .into());
    }
    let in_flight = args
        .opts
        .in_flight
        .unwrap_or(crate::bench::ingest_alone::DEFAULT_IN_FLIGHT);
    if in_flight == 0 {
        return Err(ConfigError::Invalid {
            key: "--in-flight",
            reason: "must be at least 1 request".into(),
        }
        .into());
    }
    let encoding = match args.compression.as_deref() {
        None => crate::bench::ingest_alone::gateway_encoding(args.opts.size),
        Some("zstd") => uplink::wire::Encoding::Zstd,
        Some("identity") => uplink::wire::Encoding::Identity,
        Some(other) => {
            return Err(ConfigError::Invalid {
                key: "--compression",
                reason: format!("{other:?}: zstd or identity"),
            }
            .into());
        }
    };
    let o = crate::bench::ingest_alone::IngestAloneOptions {
        encoding,
        requests,
        runs: args.runs,
        in_flight,
        size: args.opts.size,
        keepalive_requests: keepalive_list(args.keepalive_requests.as_deref())?,
        nats_server: args.opts.nats_server.clone(),
        json: args.opts.json,
    };
    let r = crate::bench::harness::until_interrupted(crate::bench::ingest_alone::run(&o))?;
    crate::bench::ingest_alone::print(&r, o.json);
    Ok(super::verdict(r.persisted_exactly))
}

/// `--compare-baseline`: the steady bench beside the case study's Go gateway.
fn compare_baseline(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    if let Some(flag) = others(args, false) {
        return Err(ConfigError::Invalid {
            key: "--compare-baseline",
            reason: format!("runs alone (with --messages, --size, --runs, --keepalive-requests, --baseline-dir, --json, --nats-server): not with {flag}"),
        }
        .into());
    }
    runs_ok(args)?;
    if args.opts.messages == 0 {
        return Err(ConfigError::Invalid {
            key: "--messages",
            reason: "--compare-baseline needs at least 1 message".into(),
        }
        .into());
    }
    let keepalive_requests = keepalive_list(args.keepalive_requests.as_deref())?;
    let dir = crate::bench::baseline_go::baseline_dir(args.baseline_dir.as_deref());
    let go = crate::bench::baseline_go::check(&dir)?;
    if !args.opts.json {
        eprintln!(
            "building the case study's Go gateway from {}",
            dir.display()
        );
    }
    let bin = crate::bench::baseline_go::build(&go, &dir)?;
    let o = crate::bench::baseline_go::BaselineOptions {
        bench: args.opts.clone(),
        runs: args.runs,
        keepalive_requests,
        dir,
        go,
    };
    let r = crate::bench::harness::until_interrupted(crate::bench::baseline_go::run(&o, &bin))?;
    crate::bench::baseline_go::print(&r, o.bench.json);
    Ok(super::verdict(r.ok))
}
