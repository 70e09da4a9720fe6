//! The `uplink` binary: parses the command line, sets up logging, calls into the library.
//! Exit codes: 0 ok, 1 runtime failure (or a bench that lost/duplicated), 64 usage/config error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use uplink::config::{self, ConfigError, Sources};
use uplink::error::StartError;

const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "uplink",
    version,
    about = "Telemetry from edge NATS JetStream to a cloud JetStream over HTTP/2 + mTLS, losing nothing."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args)]
struct ProgramArgs {
    /// TOML config file (see `uplink config defaults`).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Override one setting, e.g. `--set batch.max_messages=200` (repeatable; wins over file
    /// and UPLINK_* environment).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Log every HTTP/2 frame sent and received (also: UPLINK_TRACE_H2=1).
    #[arg(long)]
    trace_h2: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Edge: JetStream durable consumer → batches → HTTP/2 mTLS → ack after the cloud confirms.
    Gateway(ProgramArgs),
    /// Cloud: HTTP/2 mTLS server → JetStream with dedupe → 2xx once persisted.
    Ingest(ProgramArgs),
    /// Show or check configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCmd,
    },
    /// Certificates for demos and tests.
    Pki {
        #[command(subcommand)]
        command: PkiCmd,
    },
    /// Publish a load into the edge stream.
    Publish {
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        nats: String,
        /// Subject; with --subjects N > 1, messages go to SUBJECT.s0 … SUBJECT.s{N-1}.
        #[arg(long, default_value = "telemetry.demo")]
        subject: String,
        #[arg(long, default_value_t = 1)]
        subjects: usize,
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Payload bytes per message.
        #[arg(long, default_value_t = 200)]
        size: usize,
        /// Messages per second (default: as fast as acks come back).
        #[arg(long)]
        rate: Option<f64>,
        /// Create this stream (on SUBJECT.>) if it does not exist.
        #[arg(long)]
        create_stream: Option<String>,
    },
    /// Run a whole local pipeline and report throughput, latency, lost and duplicated counts.
    Bench {
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
        /// Payload bytes per message.
        #[arg(long, default_value_t = 200)]
        size: usize,
        /// Mixed sizes (0 B … 64 KiB), binary payloads and headers.
        #[arg(long)]
        mixed: bool,
        /// Print one JSON object as the last line.
        #[arg(long)]
        json: bool,
        #[arg(long)]
        nats_server: Option<PathBuf>,
        /// Ingest: GOAWAY after this many requests per connection.
        #[arg(long)]
        ingest_max_requests: Option<u64>,
        /// Ingest: idle timeout (e.g. 2s).
        #[arg(long, value_parser = humantime::parse_duration)]
        ingest_idle_timeout: Option<Duration>,
        /// Gateway: batches in flight.
        #[arg(long)]
        in_flight: Option<usize>,
        /// Route through a real nginx (TLS terminator, ssl_verify_client on, nginx defaults).
        #[arg(long)]
        via_nginx: bool,
        /// Also measure an anchor in the same run, as a ratio. Without a value (or `relay`): a
        /// direct in-process JetStream-to-JetStream relay on the same servers. With --backlog:
        /// `leafnode` (the cloud stream sources the edge stream over an mTLS leafnode) and/or
        /// `leafnode-ws` (over a wss leafnode through nginx, ssl_verify_client on), comma-separated.
        #[arg(long, value_name = "KIND[,KIND]", num_args = 0..=1, default_missing_value = "relay")]
        anchor: Option<String>,
        /// Catching up after an outage: fill the edge stream with N messages first, then start
        /// the gateway and time the drain until the cloud stream holds them all (verified
        /// exactly once); --anchor leafnode,leafnode-ws moves the same backlog NATS-natively.
        #[arg(long, value_name = "N")]
        backlog: Option<usize>,
        /// --backlog, --open-loop: rounds (each contender once per round, alternating who goes
        /// first).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Inject faults under a steady load (SCENARIO[,SCENARIO…] or `all`; see --help).
        #[arg(long, value_name = "SCENARIOS", long_help = uplink::bench::chaos::help())]
        chaos: Option<String>,
        /// Run a steady load (--rate) for this long instead of --messages; without --chaos a
        /// soak that samples gateway and ingest (RSS, fds, threads). Default with --chaos: 60s.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Messages per second of the steady load.
        #[arg(long, default_value_t = 2000.0)]
        rate: f64,
        /// Seed of the fault schedule (printed by every run).
        #[arg(long)]
        seed: Option<u64>,
        /// Instead of the pipeline: measure the cloud nats-server's memory per message id held
        /// in its duplicate window (--messages ids, side by side with a server holding none).
        #[arg(long)]
        dedupe_memory: bool,
        /// Run the cloud on a JetStream cluster of N nats-servers (stream at min(N, 3)
        /// replicas, the ingest given every node's URL). Without --chaos, the stream leader is
        /// SIGKILLed a third of the way in, the follower the ingest is connected to two thirds
        /// in, and the election and stall of each are reported; with --chaos, kill-cloud-node
        /// and restart-cloud-nats hit one node of the cluster.
        #[arg(long, value_name = "N")]
        cloud_cluster: Option<usize>,
        /// Latency, open loop: publish --messages at a fixed RATE (msg/s) that never waits for an
        /// ack before the next send; latency = cloud persist − each message's scheduled send
        /// time. --runs rounds of one trial per --adaptive mode (default both), alternating.
        #[arg(long, value_name = "RATE")]
        open_loop: Option<f64>,
        /// Gateway adaptive linger (`batch.adaptive`): on, off, or (--open-loop only) both.
        #[arg(long, value_name = "on|off|both")]
        adaptive: Option<String>,
    },
    /// Probe an HTTP/2 endpoint's connection lifecycle and recommend gateway settings.
    Doctor {
        /// https:// URL to probe (requests go to this path).
        url: String,
        /// CA bundle to verify the server (default: the system bundle).
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Client certificate (PEM) for mTLS.
        #[arg(long)]
        cert: Option<PathBuf>,
        /// Client private key (PEM).
        #[arg(long)]
        key: Option<PathBuf>,
        #[arg(long, default_value = "GET")]
        method: String,
        /// Request body (e.g. with --method POST).
        #[arg(long, default_value = "")]
        body: String,
        /// Most requests on one connection while looking for a limit.
        #[arg(long, default_value_t = 1100)]
        requests: u64,
        /// Requests in flight in the concurrent phase.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Longest an idle connection is held open.
        #[arg(long, default_value = "90s", value_parser = humantime::parse_duration)]
        idle_wait: Duration,
        /// Time limit of the whole run.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        time_limit: Duration,
        /// Print every HTTP/2 frame while probing.
        #[arg(long)]
        trace: bool,
        /// Print one JSON object with every finding.
        #[arg(long)]
        json: bool,
    },
    /// A refreshing view of running gateways and ingests, from their admin listeners.
    Status {
        /// Admin addresses (default: 127.0.0.1:9101, the gateway's, and 127.0.0.1:9102, the
        /// ingest's).
        #[arg(value_name = "ADDR")]
        targets: Vec<String>,
        /// Print one view and exit (rates over one interval).
        #[arg(long)]
        once: bool,
        /// One JSON array per view.
        #[arg(long)]
        json: bool,
        /// Time between scrapes (and redraws).
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        interval: Duration,
    },
    /// Read the cloud stream as a downstream consumer would (an ordered consumer that acks
    /// nothing): time, platform, subject, id, headers, payload.
    Tail {
        /// The ingest's config file: tail connects with its `nats.*` (url, credentials, TLS),
        /// stream and subject prefix.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Override one ingest setting (repeatable), e.g. `--set nats.creds=cloud.creds`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// NATS URL(s) (same as `--set nats.url=URL`).
        #[arg(long)]
        nats: Option<String>,
        /// Only this platform's messages.
        #[arg(long)]
        platform: Option<String>,
        /// A cloud subject pattern (`uplink.edge-1.telemetry.>`) or an edge one (`telemetry.cpu`).
        #[arg(long)]
        subject: Option<String>,
        /// Start this long ago (`10m`) or at this RFC 3339 time (default: the stream's start).
        #[arg(long, value_parser = uplink::tail::Since::parse)]
        since: Option<uplink::tail::Since>,
        /// Only messages stored from now on.
        #[arg(long, conflicts_with = "since")]
        new: bool,
        /// Stop after this many messages (default: follow until Ctrl-C).
        #[arg(long)]
        count: Option<u64>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Most payload bytes shown per message.
        #[arg(long, default_value_t = 256)]
        max_bytes: usize,
    },
    /// Zero-setup pipeline on embedded defaults, with live progress, until Ctrl-C.
    Demo {
        /// Messages per second.
        #[arg(long, default_value_t = 500.0)]
        rate: f64,
        /// Stop after this long (default: until Ctrl-C).
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        #[arg(long)]
        nats_server: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Print every setting with its default and unit.
    Defaults {
        #[arg(value_parser = ["gateway", "ingest"])]
        program: Option<String>,
    },
    /// Print the settings reference of both programs as Markdown (docs/configuration.md).
    Reference,
    /// Validate a config file (with UPLINK_* environment applied) for a program.
    Check {
        #[arg(value_parser = ["gateway", "ingest"])]
        program: String,
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum PkiCmd {
    /// A dev CA, a server certificate (localhost, 127.0.0.1, ::1) and one client certificate per platform.
    Dev {
        #[arg(long)]
        out: PathBuf,
        /// Platform names (certificate CN); repeatable.
        #[arg(long = "platform", default_value = "edge-1")]
        platforms: Vec<String>,
    },
}

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
                    print!(
                        "{}",
                        config::render_defaults::<config::GatewayConfig>(config::GATEWAY_DOCS)
                    );
                }
                if show_ingest {
                    if show_gateway {
                        println!();
                    }
                    println!(
                        "# ===== uplink ingest (env: UPLINK_INGEST_<KEY>, nested keys joined by __) ====="
                    );
                    print!(
                        "{}",
                        config::render_defaults::<config::IngestConfig>(config::INGEST_DOCS)
                    );
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
            messages,
            size,
            mixed,
            json,
            nats_server,
            ingest_max_requests,
            ingest_idle_timeout,
            in_flight,
            via_nginx,
            anchor,
            backlog,
            runs,
            chaos,
            duration,
            rate,
            seed,
            dedupe_memory,
            cloud_cluster,
            open_loop,
            adaptive,
        } => {
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
                if messages == 0 || runs == 0 {
                    return Err(bad(
                        "needs at least 1 message (--messages) and 1 run (--runs)".into()
                    )
                    .into());
                }
                if chaos.is_some()
                    || duration.is_some()
                    || backlog.is_some()
                    || mixed
                    || via_nginx
                    || anchor.is_some()
                    || cloud_cluster.is_some()
                    || dedupe_memory
                {
                    return Err(bad("runs alone: not with --chaos, --duration, --backlog, --mixed, --via-nginx, --anchor, --cloud-cluster or --dedupe-memory".into()).into());
                }
                let o = uplink::bench::latency::LatencyOptions {
                    rate,
                    messages,
                    size,
                    runs,
                    modes: modes.unwrap_or_else(|| vec![true, false]),
                    nats_server,
                    in_flight,
                    json,
                };
                let result = runtime()?.block_on(async {
                    let shutdown = uplink::shutdown::on_signals();
                    tokio::select! {
                        r = uplink::bench::latency::run(&o) => r,
                        _ = shutdown.cancelled() => Err(anyhow::anyhow!("interrupted; cleaned up")),
                    }
                })?;
                uplink::bench::latency::print(&result, json);
                return Ok(if result.ok() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                });
            }
            let adaptive = modes.map(|m| m[0]);
            if adaptive.is_some() && (backlog.is_some() || chaos.is_some() || duration.is_some()) {
                return Err(ConfigError::Invalid {
                    key: "--adaptive",
                    reason: "applies to the plain bench and --open-loop (not --backlog, --chaos or --duration)".into(),
                }
                .into());
            }
            if dedupe_memory {
                if messages < uplink::bench::dedupe::MIN_MESSAGES {
                    return Err(ConfigError::Invalid {
                        key: "--messages",
                        reason: format!(
                            "--dedupe-memory needs at least {} messages to measure",
                            uplink::bench::dedupe::MIN_MESSAGES
                        ),
                    }
                    .into());
                }
                let bin = uplink::testbed::find_nats_server(nats_server.as_deref())?;
                let r = runtime()?.block_on(uplink::bench::dedupe::run(&bin, messages))?;
                println!(
                    "{} ids of {} B held by {}: {:.0} B per id (median of {} rounds)",
                    r.messages,
                    r.id_len,
                    r.nats_server,
                    r.bytes_per_id,
                    r.rounds.len()
                );
                if json {
                    println!("{}", serde_json::to_string(&r)?);
                }
                return Ok(ExitCode::SUCCESS);
            }
            if cloud_cluster.is_some_and(|n| !(1..=9).contains(&n)) {
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
                if chaos.is_some() || duration.is_some() || mixed || via_nginx {
                    return Err(bad(
                        "runs alone: not with --chaos, --duration, --mixed or --via-nginx".into(),
                    )
                    .into());
                }
                let o = uplink::bench::backlog::BacklogOptions {
                    messages: n,
                    size,
                    runs,
                    anchors: kinds,
                    nats_server,
                    in_flight,
                    json,
                };
                let result = runtime()?.block_on(async {
                    let shutdown = uplink::shutdown::on_signals();
                    tokio::select! {
                        r = uplink::bench::backlog::run(&o) => r,
                        _ = shutdown.cancelled() => Err(anyhow::anyhow!("interrupted; cleaned up")),
                    }
                })?;
                uplink::bench::backlog::print(&result, json);
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
            if !(rate > 0.0 && rate.is_finite()) {
                return Err(ConfigError::Invalid {
                    key: "--rate",
                    reason: "must be a positive number of messages per second".into(),
                }
                .into());
            }
            let opts = uplink::bench::BenchOptions {
                adaptive,
                chaos,
                duration,
                rate,
                seed,
                cloud_cluster,
                via_nginx,
                anchor,
                messages,
                size,
                mixed,
                json,
                nats_server,
                ingest_max_requests,
                ingest_idle_timeout,
                in_flight,
            };
            let result = runtime()?.block_on(async {
                let shutdown = uplink::shutdown::on_signals();
                tokio::select! {
                    r = uplink::bench::run(&opts) => r,
                    _ = shutdown.cancelled() => Err(anyhow::anyhow!("interrupted; cleaned up")),
                }
            })?;
            uplink::bench::print(&result, json);
            if result.lost > 0 || result.duplicates > 0 || result.corrupted > 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
        Cmd::Doctor {
            url,
            ca,
            cert,
            key,
            method,
            body,
            requests,
            concurrency,
            idle_wait,
            time_limit,
            trace,
            json,
        } => {
            let opts = uplink::doctor::DoctorOptions {
                url,
                ca,
                cert,
                key,
                method,
                body,
                requests,
                concurrency,
                idle_wait,
                trace,
                time_limit,
            };
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
        Cmd::Status {
            targets,
            once,
            json,
            interval,
        } => {
            let opts = uplink::status::StatusOptions {
                targets,
                once,
                json,
                interval,
            };
            uplink::status::run(&opts, &mut std::io::stdout().lock())?;
        }
        Cmd::Tail {
            config: file,
            mut sets,
            nats,
            platform,
            subject,
            since,
            new,
            count,
            json,
            max_bytes,
        } => {
            if let Some(url) = nats {
                sets.push(format!("nats.url={url}"));
            }
            let cfg = config::ingest(&Sources::from_process(file, sets))?;
            let opts = uplink::tail::TailOptions {
                nats: cfg.nats.connect,
                stream: cfg.nats.stream,
                subject_prefix: cfg.nats.subject_prefix,
                platform,
                subject,
                since,
                new_only: new,
                count,
                json,
                max_bytes,
            };
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
        } => {
            runtime()?.block_on(async {
                uplink::demo::run(
                    nats_server.as_deref(),
                    rate,
                    duration,
                    uplink::shutdown::on_signals(),
                )
                .await
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
