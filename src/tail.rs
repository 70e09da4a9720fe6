//! `uplink tail`: the cloud stream as a downstream consumer sees it — time, platform, subject,
//! id, headers and payload of each message — through an ordered consumer: ephemeral, acking
//! nothing, so it takes nothing away from the real consumers and can run any number of times.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, consumer, stream::RetentionPolicy};
use futures_util::StreamExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::NatsConnect;
use crate::wire::{PLATFORM_HEADER, TIME_HEADER};

/// Where to start reading.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Since {
    /// This long ago.
    Ago(Duration),
    /// At this time.
    At(SystemTime),
}

impl Since {
    /// `10m` (a duration ago) or an RFC 3339 time (`2026-12-01T22:00:00Z`).
    pub fn parse(s: &str) -> Result<Since, String> {
        if let Ok(d) = humantime::parse_duration(s) {
            return Ok(Since::Ago(d));
        }
        humantime::parse_rfc3339_weak(s)
            .map(Since::At)
            .map_err(|_| format!("{s:?} is neither a duration (10m) nor an RFC 3339 time"))
    }

    fn start(self, now: SystemTime) -> SystemTime {
        match self {
            Since::Ago(d) => now.checked_sub(d).unwrap_or(UNIX_EPOCH),
            Since::At(t) => t,
        }
    }
}

/// What `uplink tail` was asked: its flags (the doc comments are their help), and where to
/// read, from the ingest's config.
#[derive(Clone, Debug, clap::Args)]
pub struct TailOptions {
    /// The cloud NATS, as the ingest connects to it (from its config).
    #[arg(skip)]
    pub nats: NatsConnect,
    /// The ingest's `nats.stream`.
    #[arg(skip)]
    pub stream: String,
    /// The ingest's `nats.subject_prefix`.
    #[arg(skip)]
    pub subject_prefix: String,
    /// Only this platform's messages.
    #[arg(long)]
    pub platform: Option<String>,
    /// A cloud subject pattern (`uplink.edge-1.telemetry.>`) or an edge one (`telemetry.cpu`).
    #[arg(long)]
    pub subject: Option<String>,
    /// Start this long ago (`10m`) or at this RFC 3339 time (default: the stream's start).
    #[arg(long, value_parser = Since::parse)]
    pub since: Option<Since>,
    /// Only messages stored from now on.
    #[arg(long = "new", conflicts_with = "since")]
    pub new_only: bool,
    /// Stop after this many messages (default: follow until Ctrl-C).
    #[arg(long)]
    pub count: Option<u64>,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// Most payload bytes shown per message.
    #[arg(long, default_value_t = 256)]
    pub max_bytes: usize,
}

/// Why tail could not read.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error(transparent)]
    Nats(#[from] crate::nats::NatsError),
    #[error("cannot connect to NATS at {urls}: {source}")]
    Connect {
        urls: String,
        source: async_nats::ConnectError,
    },
    #[error("cloud stream {stream}: {detail}")]
    Stream { stream: String, detail: String },
    /// A consumer on a work-queue stream takes messages away from the others.
    #[error(
        "cloud stream {0} is a work queue: reading it would take messages away from its consumer; tail refuses"
    )]
    WorkQueue(String),
    #[error("--subject {subject:?}: {reason}")]
    Subject { subject: String, reason: String },
    #[error("reading the cloud stream: {0}")]
    Read(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The cloud subject filter for a platform and a cloud or edge subject.
pub(crate) fn filter_subject(
    prefix: &str,
    platform: Option<&str>,
    subject: Option<&str>,
) -> Result<String, TailError> {
    let platform = platform.unwrap_or("*");
    let Some(subject) = subject else {
        return Ok(format!("{prefix}.{platform}.>"));
    };
    let bad = |reason: &str| TailError::Subject {
        subject: subject.to_string(),
        reason: reason.to_string(),
    };
    if subject.split('.').any(str::is_empty) {
        return Err(bad("has an empty token"));
    }
    // Already a cloud subject (it names the platform itself).
    if subject == prefix || subject.starts_with(&format!("{prefix}.")) {
        return Ok(subject.to_string());
    }
    Ok(format!("{prefix}.{platform}.{subject}"))
}

/// One message as shown.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub(crate) struct Shown {
    /// When the cloud stream stored it (RFC 3339).
    pub time: String,
    /// When the edge stream stored it (RFC 3339), from `Uplink-Time-Unix-Nano`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edge_time: Option<String>,
    pub platform: String,
    /// The cloud subject and the edge subject it came from.
    pub subject: String,
    pub edge_subject: String,
    pub id: String,
    pub stream_sequence: u64,
    /// The message's own headers (not the ones shown as fields above).
    pub headers: BTreeMap<String, Vec<String>>,
    pub size: usize,
    /// `utf8` or `hex`.
    pub encoding: &'static str,
    pub payload: String,
    /// The payload was cut at `--max-bytes`.
    pub truncated: bool,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}

fn from_unix_nanos(ns: i128) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns.clamp(0, u64::MAX as i128) as u64)
}

/// The payload as text when all of it is printable UTF-8, else hex; at most `max` bytes of it
/// (text is cut at a character boundary).
pub(crate) fn show_payload(payload: &[u8], max: usize) -> (&'static str, String, bool) {
    let truncated = payload.len() > max;
    let printable = |t: &str| {
        t.chars()
            .all(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t'))
    };
    match std::str::from_utf8(payload) {
        Ok(text) if printable(text) => {
            let mut end = text.len().min(max);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            ("utf8", text[..end].to_string(), truncated)
        }
        _ => {
            let hex = payload[..payload.len().min(max)]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            ("hex", hex, truncated)
        }
    }
}

/// Builds the view of one message.
pub(crate) fn show(prefix: &str, m: &jetstream::Message, max_bytes: usize) -> Shown {
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let (mut id, mut platform, mut edge_time) = (String::new(), String::new(), None);
    if let Some(h) = &m.headers {
        for (name, values) in h.iter() {
            let name: &str = name.as_ref();
            let values: Vec<String> = values.iter().map(|v| v.as_str().to_string()).collect();
            let last = values.last().cloned().unwrap_or_default();
            if name.eq_ignore_ascii_case("Nats-Msg-Id") {
                id = last;
            } else if name.eq_ignore_ascii_case(PLATFORM_HEADER) {
                platform = last;
            } else if name.eq_ignore_ascii_case(TIME_HEADER) {
                edge_time = last.parse::<i128>().ok().map(from_unix_nanos).map(rfc3339);
            } else {
                headers.insert(name.to_string(), values);
            }
        }
    }
    let subject = m.subject.to_string();
    // `prefix.platform.edge subject`: the platform is the token after the prefix (a platform is
    // one token), the header only says it again where the ingest stamps it
    // (`nats.platform_header`).
    if platform.is_empty()
        && let Some(rest) = subject
            .strip_prefix(prefix)
            .and_then(|r| r.strip_prefix('.'))
    {
        platform = rest.split('.').next().unwrap_or_default().to_string();
    }
    let edge_subject = subject
        .strip_prefix(&format!("{prefix}.{platform}."))
        .unwrap_or(&subject)
        .to_string();
    let (time, stream_sequence) = match m.info() {
        Ok(i) => (
            rfc3339(from_unix_nanos(i.published.unix_timestamp_nanos())),
            i.stream_sequence,
        ),
        Err(_) => (String::new(), 0),
    };
    let (encoding, payload, truncated) = show_payload(&m.payload, max_bytes);
    Shown {
        time,
        edge_time,
        platform,
        subject,
        edge_subject,
        id,
        stream_sequence,
        headers,
        size: m.payload.len(),
        encoding,
        payload,
        truncated,
    }
}

/// One line of text: time, platform, edge subject, id, headers, payload.
pub(crate) fn render(s: &Shown) -> String {
    let mut line = format!("{} {} {} {}", s.time, s.platform, s.edge_subject, s.id);
    for (k, vs) in &s.headers {
        for v in vs {
            line.push_str(&format!(" {k}={v:?}"));
        }
    }
    let more = if s.truncated {
        format!("…(+{} B)", s.size - s.payload_bytes())
    } else {
        String::new()
    };
    match s.encoding {
        "hex" => line.push_str(&format!(" {} B hex:{}{more}", s.size, s.payload)),
        _ => line.push_str(&format!(" {} B {:?}{more}", s.size, s.payload)),
    }
    line
}

impl Shown {
    fn payload_bytes(&self) -> usize {
        match self.encoding {
            "hex" => self.payload.len() / 2,
            _ => self.payload.len(),
        }
    }
}

/// Reads and prints until `count` messages, or `shutdown`. Returns how many were printed.
pub async fn run(
    opts: &TailOptions,
    out: &mut impl Write,
    shutdown: CancellationToken,
) -> Result<u64, TailError> {
    let servers = opts.nats.servers();
    let client = crate::nats::options(&opts.nats)?
        .name("uplink-tail")
        .connect(servers)
        .await
        .map_err(|source| TailError::Connect {
            urls: opts.nats.display_urls(),
            source,
        })?;
    let js = jetstream::new(client);
    let stream_err = |e: &dyn std::fmt::Display| TailError::Stream {
        stream: opts.stream.clone(),
        detail: e.to_string(),
    };
    let mut stream = js
        .get_stream(&opts.stream)
        .await
        .map_err(|e| stream_err(&e))?;
    let info = stream.info().await.map_err(|e| stream_err(&e))?;
    if info.config.retention == RetentionPolicy::WorkQueue {
        return Err(TailError::WorkQueue(opts.stream.clone()));
    }
    let filter = filter_subject(
        &opts.subject_prefix,
        opts.platform.as_deref(),
        opts.subject.as_deref(),
    )?;
    let deliver_policy = match (opts.new_only, opts.since) {
        (true, _) => consumer::DeliverPolicy::New,
        (false, Some(since)) => {
            let start = since.start(SystemTime::now());
            let ns = start
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as i128;
            consumer::DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::from_unix_timestamp_nanos(ns)
                    .map_err(|e| TailError::Read(e.to_string()))?,
            }
        }
        (false, None) => consumer::DeliverPolicy::All,
    };
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter,
            deliver_policy,
            description: Some("uplink tail (ordered, acks nothing)".into()),
            ..Default::default()
        })
        .await
        .map_err(|e| stream_err(&e))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| TailError::Read(e.to_string()))?;
    let mut shown = 0;
    while opts.count.is_none_or(|n| shown < n) {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            n = messages.next() => n,
        };
        let m = match next {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(TailError::Read(e.to_string())),
            None => break,
        };
        let s = show(&opts.subject_prefix, &m, opts.max_bytes);
        if opts.json {
            writeln!(out, "{}", serde_json::to_string(&s).expect("serializable"))?;
        } else {
            writeln!(out, "{}", render(&s))?;
        }
        out.flush()?;
        shown += 1;
    }
    Ok(shown)
}

#[cfg(test)]
mod tests;
