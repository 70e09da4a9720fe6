//! The `uplink` binary's command line: every subcommand and flag, with its help text (clap
//! derive). `main.rs` dispatches on it; the library never sees it.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "uplink",
    version,
    about = "Telemetry from edge NATS JetStream to a cloud JetStream over HTTP/2 + mTLS, losing nothing."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
    /// Log format: "text" (for people) or "json" (one object per line, for log pipelines);
    /// overrides UPLINK_LOG_FORMAT and the program's log.format.
    #[arg(long, global = true, value_name = "text|json")]
    pub log_format: Option<uplink::config::LogFormat>,
}

#[derive(clap::Args)]
pub struct ProgramArgs {
    /// TOML config file (see `uplink config defaults`).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Override one setting, e.g. `--set timeouts.idle=30s` (repeatable; wins over file
    /// and UPLINK_* environment).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Log every HTTP/2 frame sent and received (also: UPLINK_TRACE_H2=1).
    #[arg(long)]
    pub trace_h2: bool,
}

#[derive(Subcommand)]
pub enum Cmd {
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
    Bench(uplink_tools::bench::cli::BenchArgs),
    /// Probe an HTTP/2 endpoint's connection lifecycle and recommend gateway settings.
    Doctor {
        #[command(flatten)]
        opts: uplink::doctor::DoctorOptions,
        /// Print one JSON object with every finding.
        #[arg(long)]
        json: bool,
    },
    /// A refreshing view of running gateways and ingests, from their admin listeners.
    Status(uplink::status::StatusOptions),
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
        #[command(flatten)]
        opts: uplink::tail::TailOptions,
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
        /// At the end, write throughput and latency per second of the run to one
        /// self-contained SVG file.
        #[arg(long, value_name = "FILE.svg")]
        plot: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum ConfigCmd {
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
pub enum PkiCmd {
    /// A dev CA, a server certificate (localhost, 127.0.0.1, ::1) and one client certificate per platform.
    Dev {
        #[arg(long)]
        out: PathBuf,
        /// Platform names (certificate CN); repeatable.
        #[arg(long = "platform", default_value = "edge-1")]
        platforms: Vec<String>,
    },
}
