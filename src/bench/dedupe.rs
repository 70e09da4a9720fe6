//! `uplink bench --dedupe-memory`: what the cloud nats-server's duplicate window costs in
//! memory per message id, measured side by side in one run.
//!
//! Two fresh nats-servers (the same binary) each get the same `--messages` messages of uplink's
//! shape (200 B payload, the ingest's headers, an id like uplink's) published into a file
//! stream with a duplicate window longer than the run. In one the id travels as `Nats-Msg-Id`
//! (the server keeps it until the window ends); in the other the same bytes travel under
//! another header name, so the server stores identical data but remembers no id. The difference
//! of their resident memory, divided by the message count, is the price of one remembered id.
//! Rounds alternate the order, so a drift of the machine shows as spread, not as a result.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use bytes::Bytes;

use crate::testbed::{Nats, TempDir};

/// One measured pair.
#[derive(Debug, serde::Serialize)]
pub struct Round {
    /// RSS (KiB) of the server that remembers every id.
    pub with_ids_kib: u64,
    /// RSS (KiB) of the server that stored the same bytes without remembering ids.
    pub without_ids_kib: u64,
    /// `(with − without) / messages`.
    pub bytes_per_id: f64,
}

/// The figures of a run.
#[derive(Debug, serde::Serialize)]
pub struct DedupeResult {
    pub messages: usize,
    pub id_len: usize,
    pub duplicate_window_s: u64,
    pub nats_server: String,
    pub rounds: Vec<Round>,
    /// Median of the rounds' `bytes_per_id`.
    pub bytes_per_id: f64,
}

/// Pairs measured; alternating which variant runs first.
const ROUNDS: usize = 3;
/// Longer than any run, so no id expires while it is measured.
const WINDOW: Duration = Duration::from_secs(3600);
/// Publishes awaiting their PubAck at once.
const IN_FLIGHT: usize = 512;

/// Fewer ids than this drown in the servers' own noise.
pub const MIN_MESSAGES: usize = 1000;

pub async fn run(nats_bin: &Path, messages: usize) -> anyhow::Result<DedupeResult> {
    anyhow::ensure!(
        messages >= MIN_MESSAGES,
        "--messages must be at least {MIN_MESSAGES} for --dedupe-memory"
    );
    let version = std::process::Command::new(nats_bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut rounds = Vec::new();
    for round in 0..ROUNDS {
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        let mut rss = [0u64; 2];
        for with_ids in order {
            let kib = one(nats_bin, messages, with_ids).await?;
            rss[usize::from(!with_ids)] = kib;
            eprintln!(
                "round {}: {} ids remembered: RSS {} MiB",
                round + 1,
                if with_ids { "with" } else { "without" },
                kib / 1024
            );
        }
        rounds.push(Round {
            with_ids_kib: rss[0],
            without_ids_kib: rss[1],
            bytes_per_id: (rss[0] as f64 - rss[1] as f64) * 1024.0 / messages as f64,
        });
    }
    let mut per: Vec<f64> = rounds.iter().map(|r| r.bytes_per_id).collect();
    per.sort_by(f64::total_cmp);
    Ok(DedupeResult {
        messages,
        id_len: id(0).len(),
        duplicate_window_s: WINDOW.as_secs(),
        nats_server: version,
        bytes_per_id: per[per.len() / 2],
        rounds,
    })
}

/// An id of uplink's shape: platform, edge stream incarnation (ns), edge sequence.
fn id(i: usize) -> String {
    format!("edge-0001.1764633600123456789.{}", 1_000_000 + i)
}

/// Starts a server, publishes, settles, returns its RSS in KiB.
async fn one(nats_bin: &Path, messages: usize, with_ids: bool) -> anyhow::Result<u64> {
    let dir = TempDir::new("uplink-dedupe")?;
    let mut server = Nats::start(nats_bin, dir.path(), "cloud").await?;
    let client = async_nats::connect(server.url()).await?;
    let js = jetstream::new(client);
    js.create_stream(jetstream::stream::Config {
        name: "UPLINK".into(),
        subjects: vec!["uplink.>".into()],
        duplicate_window: WINDOW,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .context("create the stream")?;
    let payload = Bytes::from(vec![b'x'; 200]);
    let mut pending = std::collections::VecDeque::with_capacity(IN_FLIGHT);
    let deadline = Instant::now() + Duration::from_secs(600);
    for i in 0..messages {
        anyhow::ensure!(Instant::now() < deadline, "publishing took over 10 minutes");
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Uplink-Time", "1764633600123456789");
        headers.insert("Uplink-Platform", "edge-0001");
        if with_ids {
            headers.insert(async_nats::header::NATS_MESSAGE_ID, id(i).as_str());
        } else {
            // Same length as `Nats-Msg-Id`: the same bytes stored, no id remembered.
            headers.insert("Xats-Msg-Id", id(i).as_str());
        }
        let msg = jetstream::message::PublishMessage::build()
            .headers(headers)
            .payload(payload.clone());
        pending.push_back(
            js.send_publish(format!("uplink.edge-0001.s{}", i % 8), msg)
                .await?,
        );
        if pending.len() >= IN_FLIGHT {
            pending.pop_front().expect("non-empty").await?;
        }
    }
    for ack in pending {
        ack.await?;
    }
    let info = js.get_stream("UPLINK").await?.info().await?.state.messages;
    anyhow::ensure!(
        info == messages as u64,
        "the stream holds {info} of {messages}"
    );
    // The server's resident set right after the last PubAck: the id map is fully grown; Go's
    // collector has run many times during the publish.
    let pid = server.proc.pid().context("server pid")?;
    let rss = crate::bench::chaos::sample(pid)
        .context("read the server's /proc status")?
        .rss_kib;
    server.proc.kill();
    Ok(rss)
}
