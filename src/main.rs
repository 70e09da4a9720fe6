//! The `uplink` binary: parses the command line, sets up logging, calls into the library.
//! Exit codes: 0 ok, 1 runtime failure (or a bench that lost/duplicated), 64 usage/config error.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser as _;
use uplink::config::{self, ConfigError, Sources};
use uplink::error::StartError;

mod args;

use args::{Cli, Cmd, ConfigCmd, PkiCmd};

const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    uplink::telemetry::init_logging();
    uplink::tls::install_crypto_provider();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            if let Some(c) = e.downcast_ref::<ConfigError>() {
                eprintln!("uplink: configuration error: {c}");
                return ExitCode::from(EXIT_CONFIG);
            }
            if let Some(s) = e.downcast_ref::<StartError>()
                && s.is_config()
            {
                eprintln!("uplink: configuration error: {s}");
                return ExitCode::from(EXIT_CONFIG);
            }
            // Certificate, key and CA files are loaded before any socket opens: a file that
            // cannot be read or a pair that does not match is a configuration error.
            if let Some(t) = e.downcast_ref::<uplink::tls::TlsError>()
                && !matches!(t, uplink::tls::TlsError::Pki(_))
            {
                eprintln!("uplink: configuration error: {e:#}");
                return ExitCode::from(EXIT_CONFIG);
            }
            eprintln!("uplink: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a bench on a fresh runtime; Ctrl-C / SIGTERM ends it (its processes and temp dirs are
/// dropped, so cleaned up) with an error.
fn until_interrupted<T>(
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    runtime()?.block_on(async {
        let shutdown = uplink::shutdown::on_signals();
        tokio::select! {
            r = work => r,
            _ = shutdown.cancelled() => Err(anyhow::anyhow!("interrupted; cleaned up")),
        }
    })
}

/// `uplink bench --plot FILE.svg` / `--sweep SETTINGS`: checked before anything starts; the
/// settings to sweep, if any. `only_plain`: a bench kind neither applies to; `not_sweep()`:
/// options a sweep point cannot have.
fn plot_and_sweep(
    plot: Option<&std::path::Path>,
    sweep: Option<&str>,
    only_plain: bool,
    not_sweep: impl FnOnce() -> bool,
) -> Result<Option<Vec<uplink::bench::sweep::Dim>>, ConfigError> {
    if let Some(path) = plot {
        uplink::bench::timeline::check_path(path).map_err(|reason| ConfigError::Invalid {
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
    uplink::bench::sweep::parse(list).map(Some).map_err(bad)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Cmd::Gateway(a) => {
            // Parse → build → spawn: every config error surfaces before a socket opens.
            let mut cfg = config::gateway(&Sources::from_process(a.config, a.sets))?;
            cfg.trace_h2 |= a.trace_h2 || uplink::http2::tap::trace_from_env();
            runtime()?.block_on(async {
                let _ = uplink::telemetry::metrics();
                uplink::gateway::run(cfg, uplink::shutdown::on_signals()).await
            })?;
        }
        Cmd::Ingest(a) => {
            let mut cfg = config::ingest(&Sources::from_process(a.config, a.sets))?;
            cfg.trace_h2 |= a.trace_h2 || uplink::http2::tap::trace_from_env();
            runtime()?.block_on(async {
                let _ = uplink::telemetry::metrics();
                uplink::ingest::run(cfg, uplink::shutdown::on_signals()).await
            })?;
        }
        Cmd::Config { command } => match command {
            ConfigCmd::Defaults { program } => {
                let show_gateway = program.as_deref() != Some("ingest");
                let show_ingest = program.as_deref() != Some("gateway");
                if show_gateway {
                    println!(
                        "# ===== uplink gateway (env: UPLINK_GATEWAY_<KEY>, nested keys joined by __) ====="
                    );
                    print!("{}", config::render_defaults::<config::GatewayConfig>());
                }
                if show_ingest {
                    if show_gateway {
                        println!();
                    }
                    println!(
                        "# ===== uplink ingest (env: UPLINK_INGEST_<KEY>, nested keys joined by __) ====="
                    );
                    print!("{}", config::render_defaults::<config::IngestConfig>());
                }
            }
            ConfigCmd::Reference => print!("{}", config::reference()),
            ConfigCmd::Check { program, file } => {
                let sources = Sources::from_process(Some(file.clone()), vec![]);
                // Every file the config names is read and checked too (certificates, keys, CA
                // bundles, deny list, NATS credentials), as the program would at start.
                match program.as_str() {
                    "gateway" => drop(uplink::gateway::preflight(&config::gateway(&sources)?)?),
                    _ => drop(uplink::ingest::preflight(&config::ingest(&sources)?)?),
                }
                println!(
                    "{}: valid {program} configuration (and every file it names)",
                    file.display()
                );
            }
        },
        Cmd::Pki {
            command: PkiCmd::Dev { out, platforms },
        } => {
            let pki = uplink::tls::dev_pki(&out, &platforms)?;
            println!(
                "wrote {} (CA), {} + {} (server: localhost, 127.0.0.1, ::1)",
                pki.ca().display(),
                pki.server_cert().display(),
                pki.server_key().display()
            );
            for p in &platforms {
                println!(
                    "wrote {} + {} (client, CN={p})",
                    pki.client_cert(p).display(),
                    pki.client_key(p).display()
                );
            }
        }
        Cmd::Publish {
            nats,
            subject,
            subjects,
            count,
            size,
            rate,
            create_stream,
        } => {
            uplink::wire::validate_subject(&subject).map_err(|e| ConfigError::Invalid {
                key: "--subject",
                reason: e.to_string(),
            })?;
            let w = uplink::testbed::verify::Workload {
                count,
                subjects,
                subject_prefix: subject,
                size,
                mixed: false,
                rate,
            };
            runtime()?.block_on(uplink::publish::run(&nats, create_stream.as_deref(), w))?;
        }
        Cmd::Bench {
            mut opts,
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
        } => {
            let only_plain = open_loop.is_some() || backlog.is_some() || dedupe_memory;
            let sweep = plot_and_sweep(plot.as_deref(), sweep.as_deref(), only_plain, || {
                chaos.is_some()
                    || opts.duration.is_some()
                    || opts.cloud_cluster.is_some()
                    || anchor.is_some()
                    || opts.mixed
            })?;
            if let Some(platforms) = platforms {
                if chaos.is_some()
                    || backlog.is_some()
                    || open_loop.is_some()
                    || opts.mixed
                    || opts.via_nginx
                    || anchor.is_some()
                    || opts.cloud_cluster.is_some()
                    || dedupe_memory
                    || adaptive.is_some()
                    || plot.is_some()
                    || sweep.is_some()
                {
                    return Err(ConfigError::Invalid {
                        key: "--platforms",
                        reason: "runs alone (with --duration, --rate, --size, --json, --nats-server): not with --chaos, --backlog, --open-loop, --mixed, --via-nginx, --anchor, --cloud-cluster, --dedupe-memory, --adaptive, --plot or --sweep".into(),
                    }
                    .into());
                }
                let o = uplink::bench::fleet::FleetOptions {
                    platforms,
                    duration: opts.duration.unwrap_or(Duration::from_secs(30)),
                    rate: opts.rate,
                    size: opts.size,
                    interval: Duration::from_secs(1),
                    nats_server: opts.nats_server,
                    json: opts.json,
                };
                o.check()?;
                let result = until_interrupted(uplink::bench::fleet::run(&o))?;
                uplink::bench::fleet::print(&result, o.json);
                return Ok(if result.ok() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                });
            }
            let modes: Option<Vec<bool>> = match adaptive.as_deref() {
                None => None,
                Some("on") => Some(vec![true]),
                Some("off") => Some(vec![false]),
                Some("both") if open_loop.is_some() => Some(vec![true, false]),
                Some(other) => {
                    return Err(ConfigError::Invalid {
                        key: "--adaptive",
                        reason: format!(
                            "{other:?}: on or off ({}both with --open-loop)",
                            if open_loop.is_some() { "" } else { "or " }
                        ),
                    }
                    .into());
                }
            };
            if let Some(rate) = open_loop {
                let bad = |reason: String| ConfigError::Invalid {
                    key: "--open-loop",
                    reason,
                };
                if !(rate > 0.0 && rate.is_finite()) {
                    return Err(
                        bad("must be a positive number of messages per second".into()).into(),
                    );
                }
                if opts.messages == 0 || runs == 0 {
                    return Err(bad(
                        "needs at least 1 message (--messages) and 1 run (--runs)".into()
                    )
                    .into());
                }
                if chaos.is_some()
                    || opts.duration.is_some()
                    || backlog.is_some()
                    || opts.mixed
                    || opts.via_nginx
                    || anchor.is_some()
                    || opts.cloud_cluster.is_some()
                    || dedupe_memory
                {
                    return Err(bad("runs alone: not with --chaos, --duration, --backlog, --mixed, --via-nginx, --anchor, --cloud-cluster or --dedupe-memory".into()).into());
                }
                let o = uplink::bench::latency::LatencyOptions {
                    rate,
                    messages: opts.messages,
                    size: opts.size,
                    runs,
                    modes: modes.unwrap_or_else(|| vec![true, false]),
                    nats_server: opts.nats_server,
                    in_flight: opts.in_flight,
                    json: opts.json,
                };
                let result = until_interrupted(uplink::bench::latency::run(&o))?;
                uplink::bench::latency::print(&result, opts.json);
                return Ok(if result.ok() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                });
            }
            let adaptive = modes.map(|m| m[0]);
            if adaptive.is_some()
                && (backlog.is_some() || chaos.is_some() || opts.duration.is_some())
            {
                return Err(ConfigError::Invalid {
                    key: "--adaptive",
                    reason: "applies to the plain bench and --open-loop (not --backlog, --chaos or --duration)".into(),
                }
                .into());
            }
            if dedupe_memory {
                if opts.messages < uplink::bench::dedupe::MIN_MESSAGES {
                    return Err(ConfigError::Invalid {
                        key: "--messages",
                        reason: format!(
                            "--dedupe-memory needs at least {} messages to measure",
                            uplink::bench::dedupe::MIN_MESSAGES
                        ),
                    }
                    .into());
                }
                let bin = uplink::testbed::find_nats_server(opts.nats_server.as_deref())?;
                let r = runtime()?.block_on(uplink::bench::dedupe::run(&bin, opts.messages))?;
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
                return Ok(ExitCode::SUCCESS);
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
                let mut kinds = Vec::new();
                for a in &anchors {
                    kinds.push(match a.as_str() {
                        "leafnode" => uplink::bench::anchor::Native::Leafnode,
                        "leafnode-ws" => uplink::bench::anchor::Native::LeafnodeWs,
                        other => {
                            return Err(ConfigError::Invalid {
                                key: "--anchor",
                                reason: format!(
                                    "{other:?} is not an anchor of --backlog (leafnode, leafnode-ws)"
                                ),
                            }
                            .into());
                        }
                    });
                }
                if chaos.is_some() || opts.duration.is_some() || opts.mixed || opts.via_nginx {
                    return Err(bad(
                        "runs alone: not with --chaos, --duration, --mixed or --via-nginx".into(),
                    )
                    .into());
                }
                let o = uplink::bench::backlog::BacklogOptions {
                    messages: n,
                    size: opts.size,
                    runs,
                    anchors: kinds,
                    nats_server: opts.nats_server,
                    in_flight: opts.in_flight,
                    json: opts.json,
                };
                let result = until_interrupted(uplink::bench::backlog::run(&o))?;
                uplink::bench::backlog::print(&result, opts.json);
                return Ok(if result.ok() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                });
            }
            let anchor = match anchors.as_slice() {
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
                Some(list) => {
                    uplink::bench::chaos::parse(&list).map_err(|e| ConfigError::Invalid {
                        key: "--chaos",
                        reason: e.to_string(),
                    })?
                }
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
                if runs == 0 || opts.messages == 0 {
                    return Err(ConfigError::Invalid {
                        key: "--sweep",
                        reason: "needs at least 1 message (--messages) and 1 run (--runs)".into(),
                    }
                    .into());
                }
                let o = uplink::bench::sweep::SweepOptions {
                    dims,
                    plot: opts.plot.clone(),
                    json: opts.json,
                    base: opts,
                    runs,
                };
                let result = until_interrupted(uplink::bench::sweep::run(&o))?;
                uplink::bench::sweep::print(&result, o.json);
                return Ok(if result.ok() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                });
            }
            let result = until_interrupted(uplink::bench::run(&opts))?;
            uplink::bench::print(&result, opts.json);
            if result.lost > 0 || result.duplicates > 0 || result.corrupted > 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
        Cmd::Doctor { opts, json } => {
            if !json {
                eprintln!(
                    "probing {} (up to {} requests per connection, idle wait {})…",
                    opts.url,
                    opts.requests,
                    humantime::format_duration(opts.idle_wait)
                );
            }
            let rt = runtime()?;
            let result = rt.block_on(async {
                tokio::time::timeout(
                    opts.time_limit + Duration::from_secs(30),
                    uplink::doctor::run(&opts),
                )
                .await
            });
            match result {
                Ok(Ok(f)) => {
                    if json {
                        println!("{}", serde_json::to_string(&f)?);
                    } else {
                        print!("{}", f.render());
                    }
                }
                Ok(Err(d)) => {
                    if json {
                        println!("{}", serde_json::json!({"error": d.to_string()}));
                    }
                    eprintln!("uplink doctor: {d}");
                    return Ok(ExitCode::from(2));
                }
                Err(_) => {
                    eprintln!("uplink doctor: time limit reached");
                    return Ok(ExitCode::from(2));
                }
            }
        }
        Cmd::Status(opts) => {
            uplink::status::run(&opts, &mut std::io::stdout().lock())?;
        }
        Cmd::Tail {
            config: file,
            mut sets,
            nats,
            mut opts,
        } => {
            if let Some(url) = nats {
                sets.push(format!("nats.url={url}"));
            }
            let cfg = config::ingest(&Sources::from_process(file, sets))?;
            opts.nats = cfg.nats.connect;
            opts.stream = cfg.nats.stream;
            opts.subject_prefix = cfg.nats.subject_prefix;
            runtime()?
                .block_on(async {
                    let mut out = std::io::stdout().lock();
                    uplink::tail::run(&opts, &mut out, uplink::shutdown::on_signals()).await
                })
                // A credentials file that cannot be read is a configuration error (exit 64).
                .map_err(|e| match e {
                    uplink::tail::TailError::Nats(n) => StartError::from(n).into(),
                    e => anyhow::Error::from(e),
                })?;
        }
        Cmd::Demo {
            rate,
            duration,
            nats_server,
            plot,
        } => {
            plot_and_sweep(plot.as_deref(), None, false, || false)?;
            runtime()?.block_on(async {
                uplink::demo::run(
                    nats_server.as_deref(),
                    rate,
                    duration,
                    plot.as_deref(),
                    uplink::shutdown::on_signals(),
                )
                .await
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
