//! `uplink status`: a compact, refreshing view of running gateways and ingests, read from their
//! admin listeners (`/metrics`, `/readyz`). Rates come from two scrapes an interval apart.
//! A program that does not answer is shown as down; that is a finding, not an error.
//! The same view in a browser: the admin listener's `/status` page ([`page`]).

use std::io::{Read as _, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::telemetry::{scrape_label_values, scrape_sum, scrape_value, unix_now};

/// The admin addresses of a gateway and an ingest with their default configuration.
pub(crate) const DEFAULT_TARGETS: [&str; 2] = ["127.0.0.1:9101", "127.0.0.1:9102"];

/// How long one admin request may take: a hung program is down for this view.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// What `uplink status` was asked: its flags (the doc comments are their help).
#[derive(Clone, Debug, clap::Args)]
pub struct StatusOptions {
    /// Admin addresses (default: 127.0.0.1:9101, the gateway's, and 127.0.0.1:9102, the
    /// ingest's).
    #[arg(value_name = "ADDR")]
    pub targets: Vec<String>,
    /// Print one view and exit (rates over one interval: two scrapes `--interval` apart).
    #[arg(long)]
    pub once: bool,
    /// One JSON array per view.
    #[arg(long)]
    pub json: bool,
    /// Time between scrapes (and redraws).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
}

/// One scrape of one program.
#[derive(Clone, Debug)]
struct Scrape {
    at: Instant,
    metrics: String,
    ready: Result<(), String>,
    /// Its HTTP/2 connections, from `/status.json` (absent: a version without it).
    connections: Option<(Vec<crate::http2::tap::LiveConnection>, usize)>,
}

/// Why a program could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ScrapeError {
    #[error("{0}: not an address")]
    Address(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("answered HTTP {0} to /metrics")]
    Status(u16),
    #[error("not an HTTP answer")]
    Malformed,
}

fn resolve(addr: &str) -> Result<SocketAddr, ScrapeError> {
    let bare = addr
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    bare.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or(ScrapeError::Address(addr.to_string()))
}

/// A plain HTTP/1.0 GET on an admin listener: (status, body).
fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), ScrapeError> {
    let mut s = TcpStream::connect_timeout(&addr, SCRAPE_TIMEOUT)?;
    s.set_read_timeout(Some(SCRAPE_TIMEOUT))?;
    s.set_write_timeout(Some(SCRAPE_TIMEOUT))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").ok_or(ScrapeError::Malformed)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(ScrapeError::Malformed)?;
    Ok((status, body.to_string()))
}

fn scrape(addr: &str) -> Result<Scrape, ScrapeError> {
    let addr = resolve(addr)?;
    let (status, metrics) = get(addr, "/metrics")?;
    if status != 200 {
        return Err(ScrapeError::Status(status));
    }
    let ready = match get(addr, "/readyz")? {
        (200, _) => Ok(()),
        (_, why) => Err(why.trim().trim_start_matches("not ready: ").to_string()),
    };
    let connections = match get(addr, "/status.json") {
        Ok((200, body)) => serde_json::from_str::<ConnectionsOnly>(&body)
            .ok()
            .map(|c| (c.connections, c.connections_total)),
        _ => None,
    };
    Ok(Scrape {
        at: Instant::now(),
        metrics,
        ready,
        connections,
    })
}

/// The part of `/status.json` this view adds to the metrics.
#[derive(serde::Deserialize)]
struct ConnectionsOnly {
    connections: Vec<crate::http2::tap::LiveConnection>,
    connections_total: usize,
}

/// What one program looks like now.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct TargetStatus {
    pub addr: String,
    pub up: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `gateway`, `ingest`, or `unknown` (answers, but exports neither's metrics).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub program: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_ready: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingest: Option<IngestStatus>,
    /// Open HTTP/2 connections, newest first (from the program's `/status.json`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<Vec<crate::http2::tap::LiveConnection>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections_total: Option<usize>,
}

/// A gateway's numbers. Rates are per second over the two scrapes; ages in seconds.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct GatewayStatus {
    pub delivered: f64,
    pub delivered_per_sec: f64,
    pub rejected: f64,
    /// Of those, copies stored in the dead letters (`forward.dead_letter`).
    pub dead_letters: f64,
    pub in_flight_batches: f64,
    /// The send slots now (`uplink_gateway_concurrency_limit`: `forward.max_in_flight`, or the
    /// adaptive limit); absent from a gateway that does not export it.
    pub send_slots: Option<f64>,
    pub retries_now: f64,
    pub retries_backoff: f64,
    pub retries_per_sec: f64,
    pub connections_open: f64,
    pub connections_opened: f64,
    pub goaways_received: f64,
    /// Seconds since the last GOAWAY the ingest sent (none yet: absent).
    pub last_goaway_ago: Option<f64>,
    pub backlog_pending: f64,
    pub backlog_unacked: f64,
    pub lag_seconds: f64,
    pub edge_in_per_sec: f64,
    pub edge_stream_messages: f64,
    pub edge_stream_bytes: f64,
    /// Absent: the stream has no byte limit.
    pub edge_stream_max_bytes: Option<f64>,
    pub edge_stream_usage: f64,
    /// Absent: not filling up.
    pub seconds_to_full: Option<f64>,
    /// Seconds since the last batch the cloud confirmed (none yet: absent).
    pub last_delivery_ago: Option<f64>,
}

/// An ingest's numbers.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct IngestStatus {
    pub accepted: f64,
    pub accepted_per_sec: f64,
    pub duplicates: f64,
    pub rejected_requests: f64,
    pub requests_per_sec: f64,
    pub connections_open: f64,
    pub connections_total: f64,
    pub goaways_sent: f64,
    pub last_goaway_ago: Option<f64>,
    pub inflight_bytes: f64,
    /// Whether first-send requests go to the cloud as fast batches (`None`: not said yet).
    pub fast_batches: Option<bool>,
    /// Requests go as atomic batches (`nats.batch_publish = "atomic"`); absent before this
    /// metric existed.
    pub atomic_batches: Option<bool>,
    pub platforms: Vec<PlatformStatus>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct PlatformStatus {
    pub platform: String,
    pub accepted: f64,
    pub accepted_per_sec: f64,
    pub duplicates: f64,
    pub rejected_requests: f64,
}

/// Rate of a counter between two scrapes (0 when it went down: the program restarted).
fn rate(old: &Scrape, new: &Scrape, series: &str) -> f64 {
    let dt = new.at.duration_since(old.at).as_secs_f64();
    let delta = scrape_sum(&new.metrics, series) - scrape_sum(&old.metrics, series);
    if dt > 0.0 && delta > 0.0 {
        delta / dt
    } else {
        0.0
    }
}

/// Seconds since a timestamp gauge (0 or absent: never).
fn ago(m: &str, series: &str, now: f64) -> Option<f64> {
    let ts = scrape_sum(m, series);
    (ts > 0.0).then(|| (now - ts).max(0.0))
}

fn describe(addr: &str, old: Option<&Scrape>, new: &Result<Scrape, ScrapeError>) -> TargetStatus {
    let mut s = TargetStatus {
        addr: addr.to_string(),
        up: false,
        error: None,
        program: None,
        ready: None,
        not_ready: None,
        gateway: None,
        ingest: None,
        connections: None,
        connections_total: None,
    };
    let new = match new {
        Ok(n) => n,
        Err(e) => {
            s.error = Some(e.to_string());
            return s;
        }
    };
    s.up = true;
    if let Some((c, total)) = &new.connections {
        s.connections = Some(c.clone());
        s.connections_total = Some(*total);
    }
    s.ready = Some(new.ready.is_ok());
    s.not_ready = new.ready.clone().err();
    // Rates need two scrapes; a program that just came up has one.
    let old = old.unwrap_or(new);
    let m = new.metrics.as_str();
    let now = unix_now();
    if scrape_value(m, "uplink_gateway_lag_seconds").is_some() {
        s.program = Some("gateway");
        s.gateway = Some(gateway_status(m, old, new, now));
    } else if scrape_value(m, "uplink_ingest_messages_total{result=\"accepted\"}").is_some() {
        s.program = Some("ingest");
        s.ingest = Some(ingest_status(m, old, new, now));
    } else {
        s.program = Some("unknown");
    }
    s
}

/// The gateway's view from its metrics (`old`: the scrape before, for rates).
fn gateway_status(m: &str, old: &Scrape, new: &Scrape, now: f64) -> GatewayStatus {
    let limit = |v: Option<f64>| v.filter(|v| *v >= 0.0);
    GatewayStatus {
        delivered: scrape_sum(m, "uplink_gateway_messages_total{result=\"acked\"}"),
        delivered_per_sec: rate(old, new, "uplink_gateway_messages_total{result=\"acked\"}"),
        rejected: scrape_sum(m, "uplink_gateway_messages_total{result=\"rejected\"}"),
        dead_letters: scrape_sum(m, "uplink_gateway_dead_letters_total{result=\"stored\"}"),
        in_flight_batches: scrape_sum(m, "uplink_gateway_in_flight_batches"),
        send_slots: scrape_value(m, "uplink_gateway_concurrency_limit"),
        retries_now: scrape_sum(m, "uplink_gateway_retries_total{class=\"now\"}"),
        retries_backoff: scrape_sum(m, "uplink_gateway_retries_total{class=\"backoff\"}"),
        retries_per_sec: rate(old, new, "uplink_gateway_retries_total"),
        connections_open: scrape_sum(m, "uplink_client_connections_open"),
        connections_opened: scrape_sum(m, "uplink_client_connections_opened_total"),
        goaways_received: scrape_sum(m, "uplink_h2_goaway_total{side=\"client\",dir=\"recv\"}"),
        last_goaway_ago: ago(
            m,
            "uplink_h2_last_goaway_timestamp_seconds{side=\"client\",dir=\"recv\"}",
            now,
        ),
        backlog_pending: scrape_sum(m, "uplink_gateway_consumer_pending_messages"),
        backlog_unacked: scrape_sum(m, "uplink_gateway_consumer_ack_pending_messages"),
        lag_seconds: scrape_sum(m, "uplink_gateway_lag_seconds"),
        edge_in_per_sec: scrape_sum(m, "uplink_gateway_edge_in_messages_per_second"),
        edge_stream_messages: scrape_sum(m, "uplink_gateway_edge_stream_messages"),
        edge_stream_bytes: scrape_sum(m, "uplink_gateway_edge_stream_bytes"),
        edge_stream_max_bytes: limit(scrape_value(m, "uplink_gateway_edge_stream_max_bytes")),
        edge_stream_usage: scrape_sum(m, "uplink_gateway_edge_stream_usage_ratio"),
        seconds_to_full: limit(scrape_value(
            m,
            "uplink_gateway_edge_stream_seconds_to_full",
        )),
        last_delivery_ago: ago(m, "uplink_gateway_last_delivery_timestamp_seconds", now),
    }
}

/// The ingest's view from its metrics, per platform too.
fn ingest_status(m: &str, old: &Scrape, new: &Scrape, now: f64) -> IngestStatus {
    let family = "uplink_ingest_platform_messages_total";
    let mut names = scrape_label_values(m, family, "platform");
    for p in scrape_label_values(
        m,
        "uplink_ingest_platform_rejected_requests_total",
        "platform",
    ) {
        if !names.contains(&p) {
            names.push(p);
        }
    }
    let platforms = names
        .into_iter()
        .map(|p| {
            let accepted = format!("{family}{{platform=\"{p}\",result=\"accepted\"}}");
            PlatformStatus {
                accepted: scrape_sum(m, &accepted),
                accepted_per_sec: rate(old, new, &accepted),
                duplicates: scrape_sum(
                    m,
                    &format!("{family}{{platform=\"{p}\",result=\"duplicate\"}}"),
                ),
                rejected_requests: scrape_sum(
                    m,
                    &format!("uplink_ingest_platform_rejected_requests_total{{platform=\"{p}\"}}"),
                ),
                platform: p,
            }
        })
        .collect();
    IngestStatus {
        accepted: scrape_sum(m, "uplink_ingest_messages_total{result=\"accepted\"}"),
        accepted_per_sec: rate(
            old,
            new,
            "uplink_ingest_messages_total{result=\"accepted\"}",
        ),
        duplicates: scrape_sum(m, "uplink_ingest_messages_total{result=\"duplicate\"}"),
        rejected_requests: scrape_sum(m, "uplink_ingest_platform_rejected_requests_total"),
        requests_per_sec: rate(old, new, "uplink_ingest_requests_total"),
        connections_open: scrape_sum(m, "uplink_ingest_connections_open"),
        connections_total: scrape_sum(m, "uplink_ingest_connections_total"),
        goaways_sent: scrape_sum(m, "uplink_ingest_goaway_sent_total"),
        last_goaway_ago: ago(
            m,
            "uplink_h2_last_goaway_timestamp_seconds{side=\"server\",dir=\"send\"}",
            now,
        ),
        inflight_bytes: scrape_sum(m, "uplink_ingest_inflight_bytes"),
        fast_batches: crate::telemetry::scrape_value(m, "uplink_ingest_fast_batches")
            .map(|v| v > 0.0),
        atomic_batches: crate::telemetry::scrape_value(m, "uplink_ingest_atomic_batches")
            .map(|v| v > 0.0),
        platforms,
    }
}

/// Human units: 1234567 → "1.2M".
fn count(v: f64) -> String {
    match v.abs() {
        x if x >= 1e9 => format!("{:.1}G", v / 1e9),
        x if x >= 1e6 => format!("{:.1}M", v / 1e6),
        x if x >= 1e4 => format!("{:.1}k", v / 1e3),
        _ => format!("{v:.0}"),
    }
}

fn per_sec(v: f64) -> String {
    if v > 0.0 && v < 10.0 {
        format!("{v:.1}/s")
    } else {
        format!("{}/s", count(v))
    }
}

fn bytes(v: f64) -> String {
    match v {
        x if x >= (1u64 << 30) as f64 => format!("{:.1} GiB", v / (1u64 << 30) as f64),
        x if x >= (1u64 << 20) as f64 => format!("{:.1} MiB", v / (1u64 << 20) as f64),
        x if x >= 1024.0 => format!("{:.1} KiB", v / 1024.0),
        _ => format!("{v:.0} B"),
    }
}

/// A duration in its two largest units ("2h 15m"): a refreshing view needs no more.
fn secs(v: f64) -> String {
    if v < 10.0 {
        return format!("{v:.1}s");
    }
    let s = v as u64;
    let (d, h, m) = (s / 86_400, s / 3600 % 24, s / 60 % 60);
    match () {
        _ if d > 0 => format!("{d}d {h}h"),
        _ if h > 0 => format!("{h}h {m}m"),
        _ if m > 0 => format!("{m}m {}s", s % 60),
        _ => format!("{s}s"),
    }
}

fn ago_text(v: Option<f64>) -> String {
    v.map(|v| format!("{} ago", secs(v)))
        .unwrap_or_else(|| "never".into())
}

/// Connections listed in the text view, newest first; the rest are counted.
const CONNECTION_LINES: usize = 4;

/// One line per open HTTP/2 connection: id, age, requests, last GOAWAY each way.
fn connection_lines(out: &mut String, s: &TargetStatus) {
    let Some(conns) = &s.connections else {
        return;
    };
    for c in conns.iter().take(CONNECTION_LINES) {
        let goaway = |g: &Option<String>| g.clone().unwrap_or_else(|| "none".into());
        out.push_str(&format!(
            "    conn {:<5} age {:<8} requests {:<7} GOAWAY received {}, sent {}\n",
            c.id,
            secs(c.age_seconds),
            count(c.requests as f64),
            goaway(&c.last_goaway_received),
            goaway(&c.last_goaway_sent),
        ));
    }
    let total = s.connections_total.unwrap_or(conns.len());
    if total > CONNECTION_LINES.min(conns.len()) {
        out.push_str(&format!(
            "    … {} more connections\n",
            total - CONNECTION_LINES.min(conns.len())
        ));
    }
}

/// The text view of every target.
pub(crate) fn render(statuses: &[TargetStatus]) -> String {
    let mut out = String::new();
    for s in statuses {
        let state = match (&s.error, s.ready, &s.not_ready) {
            (Some(e), _, _) => format!("DOWN ({e})"),
            (None, Some(true), _) => "ready".into(),
            (None, _, Some(why)) => format!("NOT READY ({why})"),
            _ => "up".into(),
        };
        out.push_str(&format!(
            "{:<8} {:<22} {state}\n",
            s.program.unwrap_or("?"),
            s.addr
        ));
        if let Some(g) = &s.gateway {
            out.push_str(&format!(
                "  delivered {} ({})  rejected {}{}  in flight {}{} batches  retries {} now / {} backoff ({})  last delivery {}\n",
                count(g.delivered),
                per_sec(g.delivered_per_sec),
                count(g.rejected),
                if g.dead_letters > 0.0 {
                    format!(" ({} in dead letters)", count(g.dead_letters))
                } else {
                    String::new()
                },
                g.in_flight_batches,
                g.send_slots.map(|n| format!(" of {n}")).unwrap_or_default(),
                count(g.retries_now),
                count(g.retries_backoff),
                per_sec(g.retries_per_sec),
                ago_text(g.last_delivery_ago),
            ));
            out.push_str(&format!(
                "  connections {} open, {} opened  GOAWAYs received {} (last {})\n",
                g.connections_open,
                count(g.connections_opened),
                count(g.goaways_received),
                ago_text(g.last_goaway_ago),
            ));
            let limit = match g.edge_stream_max_bytes {
                Some(max) => format!(" of {} ({:.1}%)", bytes(max), g.edge_stream_usage * 100.0),
                None => String::new(),
            };
            connection_lines(&mut out, s);
            out.push_str(&format!(
                "  backlog {} pending, {} unacked  lag {}  edge in {}  stream {} msgs, {}{limit}  full in {}\n",
                count(g.backlog_pending),
                count(g.backlog_unacked),
                secs(g.lag_seconds),
                per_sec(g.edge_in_per_sec),
                count(g.edge_stream_messages),
                bytes(g.edge_stream_bytes),
                g.seconds_to_full
                    .map(secs)
                    .unwrap_or_else(|| "never (not filling)".into()),
            ));
        }
        if let Some(i) = &s.ingest {
            out.push_str(&format!(
                "  accepted {} ({})  duplicates {}  rejected {} requests  requests {}  in flight {}\n",
                count(i.accepted),
                per_sec(i.accepted_per_sec),
                count(i.duplicates),
                count(i.rejected_requests),
                per_sec(i.requests_per_sec),
                bytes(i.inflight_bytes),
            ));
            out.push_str(&format!(
                "  connections {} open, {} accepted  GOAWAYs sent {} (last {})\n",
                i.connections_open,
                count(i.connections_total),
                count(i.goaways_sent),
                ago_text(i.last_goaway_ago),
            ));
            if i.atomic_batches == Some(true) {
                out.push_str(
                    "  publish: atomic batches (nats-server 2.12.1+, stream with allow_atomic)\n",
                );
            } else if let Some(fast) = i.fast_batches {
                out.push_str(if fast {
                    "  publish: fast batches (nats-server 2.14+, stream with allow_batched)\n"
                } else {
                    "  publish: message by message (no fast batches: server before 2.14, or stream without allow_batched)\n"
                });
            }
            connection_lines(&mut out, s);
            for p in &i.platforms {
                out.push_str(&format!(
                    "  platform {:<16} accepted {} ({})  duplicates {}  rejected {} requests\n",
                    p.platform,
                    count(p.accepted),
                    per_sec(p.accepted_per_sec),
                    count(p.duplicates),
                    count(p.rejected_requests),
                ));
            }
        }
    }
    out
}

fn scrape_all(targets: &[String]) -> Vec<Result<Scrape, ScrapeError>> {
    // One thread per target: a hung program costs one timeout, not one per target.
    std::thread::scope(|s| {
        let handles: Vec<_> = targets.iter().map(|t| s.spawn(|| scrape(t))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("scrape does not panic"))
            .collect()
    })
}

/// Runs the view: once (`--once`), or redrawn every interval until interrupted.
pub fn run(opts: &StatusOptions, out: &mut impl Write) -> std::io::Result<()> {
    let targets: Vec<String> = if opts.targets.is_empty() {
        DEFAULT_TARGETS.iter().map(|s| s.to_string()).collect()
    } else {
        opts.targets.clone()
    };
    // Clear and redraw only for a person at a terminal; a pipe gets one view after another.
    let redraw = !opts.json && !opts.once && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut prev: Vec<Option<Scrape>> = scrape_all(&targets).into_iter().map(Result::ok).collect();
    loop {
        std::thread::sleep(opts.interval);
        let now = scrape_all(&targets);
        let statuses: Vec<TargetStatus> = targets
            .iter()
            .zip(prev.iter())
            .zip(now.iter())
            .map(|((t, old), new)| describe(t, old.as_ref(), new))
            .collect();
        if opts.json {
            writeln!(
                out,
                "{}",
                serde_json::to_string(&statuses).expect("serializable")
            )?;
        } else {
            if redraw {
                // Home, clear screen.
                write!(out, "\x1b[H\x1b[2J")?;
            }
            let stamp = humantime::format_rfc3339_seconds(SystemTime::now());
            let every = humantime::format_duration(opts.interval);
            writeln!(out, "uplink status  {stamp}  every {every}\n")?;
            write!(out, "{}", render(&statuses))?;
            if !redraw && !opts.once {
                writeln!(out)?;
            }
        }
        out.flush()?;
        if opts.once {
            return Ok(());
        }
        prev = now.into_iter().map(Result::ok).collect();
    }
}

pub(crate) mod page;

#[cfg(test)]
mod tests;
