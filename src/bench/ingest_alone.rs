//! `uplink bench --ingest-alone`: the ingest by itself against nginx `return 204`, driven by
//! the same load generator in the same run, with the case study's request shape: one POST per
//! message. The load generator is this process: the project's own HTTP/2 client over mutual
//! TLS (a client certificate from the dev PKI) and the gateway's own retry loop
//! ([`send_with_retries`]), keeping `--in-flight` requests open at all times until
//! `--requests` are answered. Each request is what the gateway sends for one message: a
//! one-message batch in the wire format (protobuf; uncompressed below `wire::SMALL_BODY`, as
//! the gateway sends it, or `--compression zstd` forced), the bodies encoded before the clock
//! starts so the encoding costs neither side.
//!
//! * `ingest`: a real `uplink ingest` in front of a real cloud nats-server; the ingest answers
//!   200 only once the message is persisted in the cloud stream (the generator checks the
//!   answer confirms it), and after the trial the cloud stream must hold exactly the messages
//!   sent.
//! * `nginx`: nginx from the deployed config with `location / { return 204; }`,
//!   `ssl_verify_client on`, HTTP/2 (the generator checks every answer is a 204).
//!
//! Per `--keepalive-requests` value, the ingest's `http2.max_requests_per_connection` and
//! nginx's `keepalive_requests` are set to it alike. `--runs` rounds, each running both sides
//! per setting on fresh servers, alternating who goes first; the ratio is each round's pair.
//! CPU per request of every process comes from `/proc/<pid>/stat` over the timed part only.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::Context as _;
use async_nats::jetstream;
use bytes::Bytes;

use super::backlog::Range;
use super::sample::{cpu_of, cpu_since};
use crate::testbed::nginx::{Nginx, NginxSite};
use crate::testbed::pipeline::{Pipeline, PipelineOptions};
use uplink::config::IngestConfig;
use uplink::wire::{self, Encoding};

mod generator;
use generator::{Expect, Generator};

/// Requests in flight by default: the case study's 64 worker goroutines, each with one POST
/// open. Below both servers' 128 concurrent streams per connection (nginx's
/// `http2_max_concurrent_streams`, the ingest's `http2.max_concurrent_streams`), so neither
/// side makes the client queue streams, and one connection carries them all.
pub const DEFAULT_IN_FLIGHT: usize = 64;

/// `keepalive_requests` (and the ingest's `http2.max_requests_per_connection`) that never
/// rotates a connection within a run: the case study's "effectively off" setting.
pub const NO_ROTATION: u64 = 1_000_000;

/// What `--ingest-alone` runs.
#[derive(Clone, Debug)]
pub struct IngestAloneOptions {
    pub requests: usize,
    pub runs: usize,
    pub in_flight: usize,
    pub size: usize,
    /// Body encoding: by default what the gateway sends for one message of this size
    /// ([`gateway_encoding`]), or forced zstd / identity.
    pub encoding: Encoding,
    /// One pair of trials per value and round.
    pub keepalive_requests: Vec<u64>,
    pub nats_server: Option<PathBuf>,
    pub json: bool,
}

/// One side of one round.
#[derive(Debug, serde::Serialize)]
pub struct Trial {
    pub round: usize,
    pub keepalive_requests: u64,
    /// `ingest` or `nginx`.
    pub what: &'static str,
    pub requests: usize,
    pub seconds: f64,
    pub req_per_sec: f64,
    /// CPU milliseconds per process over the timed part (`load-generator` is this process).
    pub cpu_ms: BTreeMap<String, f64>,
    /// CPU microseconds per request per process, and all of them (`total`).
    pub cpu_us_per_req: BTreeMap<String, f64>,
    /// Cores busy with the measured processes (total CPU ÷ wall time).
    pub cores_busy: f64,
    /// Attempts beyond one per request (a stream refused by a GOAWAY, resent).
    pub retries: u64,
    /// TLS connections the load generator dialed (warm-up included).
    pub connections: u64,
    /// `ingest`: messages the cloud stream holds afterwards (= warm-up + requests, or the run
    /// fails).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persisted: Option<u64>,
}

/// The whole run.
#[derive(Debug, serde::Serialize)]
pub struct IngestAloneResult {
    pub requests: usize,
    pub runs: usize,
    pub in_flight: usize,
    pub size: usize,
    /// The encoded body of one request (bytes), and how it is encoded.
    pub body_bytes: usize,
    pub encoding: String,
    /// Requests sent before each trial's clock starts (the connection's handshake, warm-up).
    pub warmup: usize,
    pub nats_server: String,
    pub nginx: String,
    pub cores: usize,
    pub load_average_start: String,
    pub load_average_end: String,
    /// In the order they ran.
    pub trials: Vec<Trial>,
    /// Per `keepalive_requests` value: req/s of each side over the rounds.
    pub req_per_sec: BTreeMap<String, BTreeMap<String, Range>>,
    /// Per `keepalive_requests` value: ingest req/s ÷ nginx req/s, each round's pair.
    pub ratio_ingest_to_nginx: BTreeMap<String, Range>,
    /// Every ingest trial persisted exactly what it was sent.
    pub persisted_exactly: bool,
}

/// What the gateway sends a one-message batch of a `size`-byte message in with its default
/// `batch.compression = "zstd"`: identity below [`wire::SMALL_BODY`] (a 200 B message), zstd
/// above.
pub fn gateway_encoding(size: usize) -> Encoding {
    let raw = &bodies("edge-1", 0, 1, size, Encoding::Identity)[0];
    if raw.len() < wire::SMALL_BODY {
        Encoding::Identity
    } else {
        Encoding::Zstd
    }
}

/// One encoded one-message batch per id, as the gateway would send each message alone.
fn bodies(platform: &str, first: u64, count: usize, size: usize, encoding: Encoding) -> Vec<Bytes> {
    let incarnation = 1_764_633_600_000_000_000i128;
    let mut c = zstd::bulk::Compressor::new(1).expect("zstd level 1");
    (0..count as u64)
        .map(|n| {
            let seq = first + n;
            let mut payload = format!(
                "{{\"seq\":{seq},\"temp\":{:.2},\"pad\":\"",
                20.0 + (seq % 97) as f64 / 10.0
            )
            .into_bytes();
            payload.resize(size.saturating_sub(2).max(payload.len()), b'x');
            payload.extend_from_slice(b"\"}");
            payload.truncate(size);
            let m = wire::Message {
                id: wire::message_id(platform, "TELEMETRY", incarnation, seq),
                subject: format!("telemetry.s{}", seq % 8),
                payload: Bytes::from(payload),
                time_unix_nano: 1_764_633_600_000_000_000 + seq as i64,
                ..Default::default()
            };
            let raw = prost::Message::encode_to_vec(&wire::Batch { messages: vec![m] });
            match encoding {
                Encoding::Zstd => Bytes::from(c.compress(&raw).expect("zstd into memory")),
                _ => Bytes::from(raw),
            }
        })
        .collect()
}

/// Runs the rounds.
pub async fn run(o: &IngestAloneOptions) -> anyhow::Result<IngestAloneResult> {
    uplink::tls::install_crypto_provider();
    let exe = std::env::current_exe()?;
    let nats_bin = crate::testbed::find_nats_server(o.nats_server.as_deref())?;
    let version = |cmd: &std::path::Path, arg: &str| {
        std::process::Command::new(cmd)
            .arg(arg)
            .output()
            .map(|out| {
                let mut s = String::from_utf8_lossy(&out.stdout).trim().to_string();
                s.push_str(String::from_utf8_lossy(&out.stderr).trim());
                s
            })
            .unwrap_or_default()
    };
    let nginx_bin = crate::testbed::nginx::find_nginx()?;
    let warmup = o.in_flight.min(o.requests).max(1);
    let sample = bodies("edge-1", 0, 1, o.size, o.encoding);
    let mut result = IngestAloneResult {
        requests: o.requests,
        runs: o.runs,
        in_flight: o.in_flight,
        size: o.size,
        body_bytes: sample[0].len(),
        encoding: o.encoding.as_str().to_string(),
        warmup,
        nats_server: version(&nats_bin, "--version"),
        nginx: version(&nginx_bin, "-v"),
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average_start: super::load_average(),
        load_average_end: String::new(),
        trials: Vec::new(),
        req_per_sec: BTreeMap::new(),
        ratio_ingest_to_nginx: BTreeMap::new(),
        persisted_exactly: true,
    };
    for round in 0..o.runs {
        for &ka in &o.keepalive_requests {
            let mut order = [Expect::Confirmed, Expect::NoContent];
            if round % 2 == 1 {
                order.reverse();
            }
            for side in order {
                let t = match side {
                    Expect::Confirmed => {
                        ingest_trial(&exe, &nats_bin, o, ka, round, warmup).await?
                    }
                    Expect::NoContent => nginx_trial(o, ka, round, warmup).await?,
                };
                if !o.json {
                    eprintln!(
                        "round {} keepalive {:>7} {:<6} {:>8.0} req/s  {:.2} s  cpu µs/req {}  retries {}  connections {}",
                        t.round,
                        t.keepalive_requests,
                        t.what,
                        t.req_per_sec,
                        t.seconds,
                        t.cpu_us_per_req
                            .iter()
                            .map(|(k, v)| format!("{k} {v:.1}"))
                            .collect::<Vec<_>>()
                            .join(", "),
                        t.retries,
                        t.connections
                    );
                }
                if t.persisted
                    .is_some_and(|n| n != (warmup + o.requests) as u64)
                {
                    result.persisted_exactly = false;
                }
                result.trials.push(t);
            }
        }
    }
    for &ka in &o.keepalive_requests {
        let rates = |what: &str| -> Vec<f64> {
            result
                .trials
                .iter()
                .filter(|t| t.keepalive_requests == ka && t.what == what)
                .map(|t| t.req_per_sec)
                .collect()
        };
        let (ours, theirs) = (rates("ingest"), rates("nginx"));
        let ratios = ours.iter().zip(&theirs).map(|(a, b)| a / b).collect();
        let mut per = BTreeMap::new();
        per.extend(Range::of(ours).map(|r| ("ingest".to_string(), r)));
        per.extend(Range::of(theirs).map(|r| ("nginx".to_string(), r)));
        result.req_per_sec.insert(ka.to_string(), per);
        if let Some(r) = Range::of(ratios) {
            result.ratio_ingest_to_nginx.insert(ka.to_string(), r);
        }
    }
    result.load_average_end = super::load_average();
    Ok(result)
}

/// What the timed part of a trial measured.
struct Timed {
    seconds: f64,
    cpu_ms: BTreeMap<String, f64>,
    retries: u64,
}

/// Times `bodies` through `g` with `procs` measured (this process is the load generator).
async fn timed(
    g: &Arc<Generator>,
    bodies: Vec<Bytes>,
    in_flight: usize,
    mut procs: Vec<(&'static str, u32)>,
) -> anyhow::Result<Timed> {
    procs.push(("load-generator", std::process::id()));
    let bodies = Arc::new(bodies);
    if std::env::var_os("UPLINK_BENCH_PERF_CTL").is_some() {
        eprintln!("timed part: pids {procs:?}");
    }
    let cpu0 = cpu_of(&procs);
    super::harness::perf_control("enable");
    let started = Instant::now();
    let retries = g.drive(bodies, in_flight).await;
    let seconds = started.elapsed().as_secs_f64();
    super::harness::perf_control("disable");
    Ok(Timed {
        seconds,
        cpu_ms: cpu_since(&procs, &cpu0),
        retries: retries?,
    })
}

fn trial(
    round: usize,
    ka: u64,
    what: &'static str,
    requests: usize,
    t: Timed,
    connections: u64,
) -> Trial {
    let Timed {
        seconds,
        cpu_ms,
        retries,
    } = t;
    let total: f64 = cpu_ms.values().sum();
    let mut per: BTreeMap<String, f64> = cpu_ms
        .iter()
        .map(|(k, v)| (k.clone(), v * 1000.0 / requests.max(1) as f64))
        .collect();
    per.insert("total".into(), total * 1000.0 / requests.max(1) as f64);
    Trial {
        round: round + 1,
        keepalive_requests: ka,
        what,
        requests,
        seconds,
        req_per_sec: requests as f64 / seconds.max(1e-9),
        cores_busy: total / 1000.0 / seconds.max(1e-9),
        cpu_ms,
        cpu_us_per_req: per,
        retries,
        connections,
        persisted: None,
    }
}

/// The ingest side: a fresh ingest and cloud nats-server (the pipeline without its gateway).
async fn ingest_trial(
    exe: &std::path::Path,
    nats_bin: &std::path::Path,
    o: &IngestAloneOptions,
    ka: u64,
    round: usize,
    warmup: usize,
) -> anyhow::Result<Trial> {
    let options = PipelineOptions {
        defer_gateway: true,
        ..Default::default()
    };
    let p = Pipeline::start_with(
        exe,
        nats_bin,
        options,
        move |c: &mut IngestConfig| c.http2.max_requests_per_connection = ka,
        |_| {},
    )
    .await?;
    let platform = p.platform.clone();
    let g = Arc::new(Generator::new(
        &p.ingest_url(),
        &p.pki(),
        &platform,
        ka,
        Expect::Confirmed,
        o.encoding,
    )?);
    g.drive(
        Arc::new(bodies(&platform, 0, warmup, o.size, o.encoding)),
        o.in_flight,
    )
    .await
    .context("warm-up against the ingest")?;
    let procs = vec![
        (
            "ingest",
            p.ingest.as_ref().and_then(|u| u.proc.pid()).unwrap_or(0),
        ),
        (
            "cloud-nats",
            p.cloud.as_ref().and_then(|c| c.proc.pid()).unwrap_or(0),
        ),
    ];
    let work = bodies(&platform, warmup as u64, o.requests, o.size, o.encoding);
    let measured = timed(&g, work, o.in_flight, procs)
        .await
        .context("ingest trial")?;
    // Every 200 came after the persist: the stream holds them all now, and nothing more.
    let cloud = jetstream::new(async_nats::connect(p.cloud_url()).await?);
    let persisted = cloud
        .get_stream(&p.ingest_cfg.nats.stream)
        .await?
        .get_info()
        .await?
        .state
        .messages;
    let mut t = trial(
        round,
        ka,
        "ingest",
        o.requests,
        measured,
        g.dials.load(Ordering::Relaxed),
    );
    t.persisted = Some(persisted);
    if persisted != (warmup + o.requests) as u64 {
        eprintln!(
            "problem: the cloud stream holds {persisted} messages, {} were sent",
            warmup + o.requests
        );
    }
    Ok(t)
}

/// The nginx side: `return 204` with mutual TLS, from the deployed config.
async fn nginx_trial(
    o: &IngestAloneOptions,
    ka: u64,
    round: usize,
    warmup: usize,
) -> anyhow::Result<Trial> {
    let dir = crate::testbed::TempDir::new("uplink-ingest-alone")?;
    let platform = "edge-1".to_string();
    let pki = uplink::tls::dev_pki(&dir.path().join("pki"), std::slice::from_ref(&platform))?;
    let site = NginxSite {
        keepalive_requests: ka,
        ..Default::default()
    };
    let nginx = Nginx::start(dir.path(), &pki, &site).await?;
    let g = Arc::new(Generator::new(
        &nginx.url(),
        &pki,
        &platform,
        ka,
        Expect::NoContent,
        o.encoding,
    )?);
    g.drive(
        Arc::new(bodies(&platform, 0, warmup, o.size, o.encoding)),
        o.in_flight,
    )
    .await
    .context("warm-up against nginx")?;
    let procs = vec![("nginx", nginx.proc.pid().unwrap_or(0))];
    let work = bodies(&platform, warmup as u64, o.requests, o.size, o.encoding);
    let measured = timed(&g, work, o.in_flight, procs)
        .await
        .context("nginx trial")?;
    Ok(trial(
        round,
        ka,
        "nginx",
        o.requests,
        measured,
        g.dials.load(Ordering::Relaxed),
    ))
}

/// Prints the rounds' summary and the ratios, or one JSON line.
pub fn print(r: &IngestAloneResult, json: bool) {
    if json {
        println!("{}", serde_json::to_string(r).expect("serializable"));
        return;
    }
    println!(
        "ingest alone vs nginx return 204: {} requests of one {} B message ({} B {} body), {} in flight, {} rounds; {}; {}; load average {} → {}",
        r.requests,
        r.size,
        r.body_bytes,
        r.encoding,
        r.in_flight,
        r.runs,
        r.nats_server,
        r.nginx,
        r.load_average_start,
        r.load_average_end
    );
    for (ka, per) in &r.req_per_sec {
        for (what, x) in per {
            println!(
                "keepalive {ka:>7} {what:<6} {:>8.0} … {:>8.0} req/s (median {:.0})",
                x.min, x.max, x.median
            );
        }
        if let Some(x) = r.ratio_ingest_to_nginx.get(ka) {
            println!(
                "keepalive {ka:>7} ingest ÷ nginx {:.2} … {:.2} (median {:.2}, each round's pair)",
                x.min, x.max, x.median
            );
        }
    }
    println!(
        "ingest persisted exactly what it was sent: {}",
        if r.persisted_exactly { "yes" } else { "NO" }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_body_is_one_message_of_the_given_size_with_its_own_id() {
        let b = bodies("edge-1", 5, 2, 200, Encoding::Zstd);
        assert_eq!(b.len(), 2);
        let decode = |body: &Bytes| wire::decode_batch(body, Encoding::Zstd, 1 << 20).unwrap();
        let (one, two) = (decode(&b[0]), decode(&b[1]));
        assert_eq!(one.messages.len(), 1);
        assert_eq!(one.messages[0].payload.len(), 200);
        assert!(one.messages[0].payload.starts_with(b"{\"seq\":5,"));
        assert!(one.messages[0].payload.ends_with(b"\"}"));
        assert_ne!(one.messages[0].id, two.messages[0].id);
        wire::validate_subject(&one.messages[0].subject).unwrap();
        let plain = bodies("edge-1", 5, 1, 200, Encoding::Identity);
        let same = wire::decode_batch(&plain[0], Encoding::Identity, 1 << 20).unwrap();
        assert_eq!(same.messages[0].payload, one.messages[0].payload);
    }
}
