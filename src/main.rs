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
    let log_format = match uplink::telemetry::requested_log_format(cli.log_format) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("uplink: configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // Gateway and ingest start logging once their config (log.format) is read.
    if !matches!(cli.command, Cmd::Gateway(_) | Cmd::Ingest(_)) {
        uplink::telemetry::init_logging(log_format.unwrap_or_default());
    }
    uplink::tls::install_crypto_provider();
    match run(cli, log_format) {
        Ok(code) => code,
        Err(e) => {
            if let Some(why) = config_error(&e) {
                eprintln!("uplink: configuration error: {why}");
                return ExitCode::from(EXIT_CONFIG);
            }
            eprintln!("uplink: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The text of an error that is the operator's configuration's fault (exit 64), decided in one
/// place: a [`ConfigError`], or whatever [`StartError::is_config`] (and its TLS rule,
/// certificates, keys and CA files being loaded before any socket opens) says is one.
fn config_error(e: &anyhow::Error) -> Option<String> {
    if let Some(c) = e.downcast_ref::<ConfigError>() {
        return Some(c.to_string());
    }
    if let Some(s) = e.downcast_ref::<StartError>() {
        return s.is_config().then(|| s.to_string());
    }
    let t = e.downcast_ref::<uplink::tls::TlsError>()?;
    uplink::error::tls_is_config(t).then(|| format!("{e:#}"))
}

fn run(cli: Cli, log_format: Option<config::LogFormat>) -> anyhow::Result<ExitCode> {
    match cli.command {
        Cmd::Gateway(a) => gateway(a, log_format)?,
        Cmd::Ingest(a) => ingest(a, log_format)?,
        Cmd::Config { command } => config_cmd(command)?,
        Cmd::Pki {
            command: PkiCmd::Dev { out, platforms },
        } => pki_dev(&out, &platforms)?,
        Cmd::Publish {
            nats,
            subject,
            subjects,
            count,
            size,
            rate,
            create_stream,
        } => {
            let w = uplink_tools::testbed::verify::Workload {
                count,
                subjects,
                subject_prefix: subject,
                size,
                mixed: false,
                rate,
            };
            publish(&nats, create_stream.as_deref(), w)?
        }
        Cmd::Bench(a) => return uplink_tools::bench::cli::run(a),
        Cmd::Doctor { opts, json } => return doctor(opts, json),
        Cmd::Status(opts) => uplink::status::run(&opts, &mut std::io::stdout().lock())?,
        Cmd::Tail {
            config: file,
            sets,
            nats,
            opts,
        } => tail(file, sets, nats, opts)?,
        Cmd::Demo {
            rate,
            duration,
            nats_server,
            plot,
        } => {
            uplink_tools::bench::cli::plot_and_sweep(plot.as_deref(), None, false, || false)?;
            uplink::runtime()?.block_on(async {
                uplink_tools::demo::run(
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

/// `uplink gateway`: parse → build → spawn, so every config error surfaces before a socket opens.
fn gateway(a: args::ProgramArgs, log_format: Option<config::LogFormat>) -> anyhow::Result<()> {
    let mut cfg = config::gateway(&Sources::from_process(a.config, a.sets))?;
    uplink::telemetry::init_logging(log_format.unwrap_or(cfg.log.format));
    cfg.trace_h2 |= a.trace_h2 || uplink::http2::tap::trace_from_env();
    uplink::runtime()?.block_on(async {
        let _ = uplink::telemetry::metrics();
        uplink::gateway::run(cfg, uplink::shutdown::on_signals()).await
    })?;
    Ok(())
}

/// `uplink ingest`, the same way.
fn ingest(a: args::ProgramArgs, log_format: Option<config::LogFormat>) -> anyhow::Result<()> {
    let mut cfg = config::ingest(&Sources::from_process(a.config, a.sets))?;
    uplink::telemetry::init_logging(log_format.unwrap_or(cfg.log.format));
    cfg.trace_h2 |= a.trace_h2 || uplink::http2::tap::trace_from_env();
    uplink::runtime()?.block_on(async {
        let _ = uplink::telemetry::metrics();
        uplink::ingest::run(cfg, uplink::shutdown::on_signals()).await
    })?;
    Ok(())
}

/// `uplink config defaults | reference | check`.
fn config_cmd(command: ConfigCmd) -> anyhow::Result<()> {
    match command {
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
    }
    Ok(())
}

/// `uplink pki dev`: the dev PKI, and what was written where.
fn pki_dev(out: &std::path::Path, platforms: &[String]) -> anyhow::Result<()> {
    let pki = uplink::tls::dev_pki(out, platforms)?;
    println!(
        "wrote {} (CA), {} + {} (server: localhost, 127.0.0.1, ::1)",
        pki.ca().display(),
        pki.server_cert().display(),
        pki.server_key().display()
    );
    for p in platforms {
        println!(
            "wrote {} + {} (client, CN={p})",
            pki.client_cert(p).display(),
            pki.client_key(p).display()
        );
    }
    Ok(())
}

/// `uplink publish`: the load publisher, its subject checked first.
fn publish(
    nats: &str,
    create_stream: Option<&str>,
    w: uplink_tools::testbed::verify::Workload,
) -> anyhow::Result<()> {
    uplink::wire::validate_subject(&w.subject_prefix).map_err(|e| ConfigError::Invalid {
        key: "--subject",
        reason: e.to_string(),
    })?;
    uplink::runtime()?.block_on(uplink_tools::publish::run(nats, create_stream, w))?;
    Ok(())
}

/// `uplink doctor`: exit 2 when the endpoint cannot be probed, 1 when `--config` would break
/// against it.
fn doctor(mut opts: uplink::doctor::DoctorOptions, json: bool) -> anyhow::Result<ExitCode> {
    // --config: loaded exactly as `uplink gateway` loads it (file, environment, --set).
    let gateway = if opts.config.is_some() || !opts.sets.is_empty() {
        let cfg = config::gateway(&Sources::from_process(
            opts.config.clone(),
            opts.sets.clone(),
        ))?;
        opts.ca.get_or_insert_with(|| cfg.cloud.ca.clone());
        if opts.cert.is_none() && opts.key.is_none() {
            opts.cert = Some(cfg.cloud.cert.clone());
            opts.key = Some(cfg.cloud.key.clone());
        }
        Some(cfg)
    } else {
        None
    };
    if !json {
        eprintln!(
            "probing {} (up to {} requests per connection, idle wait {})…",
            opts.url,
            opts.requests,
            humantime::format_duration(opts.idle_wait)
        );
    }
    let rt = uplink::runtime()?;
    let result = rt.block_on(async {
        // A last guard, not a promise the README makes: every probe has its own timeouts and
        // none starts after the limit, so this cut is not expected to fire.
        tokio::time::timeout(
            opts.time_limit + Duration::from_secs(30),
            uplink::doctor::run(&opts),
        )
        .await
    });
    match result {
        Ok(Ok(mut f)) => {
            if let Some(cfg) = &gateway {
                let mut source = opts
                    .config
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "(defaults)".into());
                for s in &opts.sets {
                    source.push_str(&format!(" --set {s}"));
                }
                f.config_check = Some(uplink::doctor::check_config(cfg, &f, source));
            }
            if json {
                println!("{}", serde_json::to_string(&f)?);
            } else {
                print!("{}", f.render());
            }
            if f.config_check.as_ref().is_some_and(|c| !c.fits) {
                return Ok(ExitCode::from(1));
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
    Ok(ExitCode::SUCCESS)
}

/// `uplink tail`: connects like the ingest (its config's `nats.*`, stream and prefix).
fn tail(
    file: Option<std::path::PathBuf>,
    mut sets: Vec<String>,
    nats: Option<String>,
    mut opts: uplink::tail::TailOptions,
) -> anyhow::Result<()> {
    if let Some(url) = nats {
        sets.push(format!("nats.url={url}"));
    }
    let cfg = config::ingest(&Sources::from_process(file, sets))?;
    opts.nats = cfg.nats.connect;
    opts.stream = cfg.nats.stream;
    opts.subject_prefix = cfg.nats.subject_prefix;
    uplink::runtime()?
        .block_on(async {
            let mut out = std::io::stdout().lock();
            uplink::tail::run(&opts, &mut out, uplink::shutdown::on_signals()).await
        })
        // A credentials file that cannot be read is a configuration error (exit 64).
        .map_err(|e| match e {
            uplink::tail::TailError::Nats(n) => StartError::from(n).into(),
            e => anyhow::Error::from(e),
        })?;
    Ok(())
}
