//! The end-to-end proof: publish a known workload at the edge, read the cloud stream back, and
//! check that every id arrived exactly once with its subject, headers and payload intact.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use futures_util::StreamExt;

use uplink::wire::TIME_HEADER;

/// What to publish.
#[derive(Clone, Debug)]
pub struct Workload {
    pub count: usize,
    /// Subjects `<prefix>.s0 .. s{subjects-1}`; with 1, exactly `<prefix>`.
    pub subjects: usize,
    pub subject_prefix: String,
    /// Payload size of ordinary messages (bytes).
    pub size: usize,
    /// Mix in 0-byte, binary, large (up to 64 KiB) messages and messages with headers.
    pub mixed: bool,
    /// Messages per second (None = as fast as JetStream acks).
    pub rate: Option<f64>,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            count: 10_000,
            subjects: 8,
            subject_prefix: "telemetry".into(),
            size: 200,
            mixed: false,
            rate: None,
        }
    }
}

/// What was published, to check against.
#[derive(Clone, Debug)]
pub struct Sent {
    pub sequence: u64,
    pub subject: String,
    pub hash: u64,
    pub len: usize,
    pub headers: Vec<(String, String)>,
}

/// The payload hash [`Sent`] and [`Received`] carry.
pub fn payload_hash(b: &[u8]) -> u64 {
    hash(b)
}

fn hash(b: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

/// The payload and headers of message `i` of a workload.
pub fn message(w: &Workload, i: usize) -> (String, Bytes, Vec<(String, String)>) {
    let subject = if w.subjects <= 1 {
        w.subject_prefix.clone()
    } else {
        format!("{}.s{}", w.subject_prefix, i % w.subjects)
    };
    let mut headers = Vec::new();
    let size = if !w.mixed {
        w.size
    } else if i.is_multiple_of(1000) {
        0
    } else if i % 300 == 7 {
        1024 + (i * 7919) % (63 * 1024)
    } else {
        (i * 31) % 1024
    };
    let mut payload = vec![0u8; size];
    let mut rng = fastrand::Rng::with_seed(i as u64);
    if w.mixed && i % 2 == 1 {
        rng.fill(&mut payload);
    } else {
        for (k, b) in payload.iter_mut().enumerate() {
            *b = b"0123456789abcdef"[(i + k) % 16];
        }
    }
    if w.mixed && i % 10 == 3 {
        headers.push(("X-Index".to_string(), i.to_string()));
        headers.push(("Unit".to_string(), "celsius".to_string()));
        // A header with several values: every one must arrive, in order.
        headers.push(("Tag".to_string(), "a".to_string()));
        headers.push(("Tag".to_string(), format!("b{i}")));
    }
    (subject, Bytes::from(payload), headers)
}

/// Publishes a workload into the edge stream; returns what was sent, by edge sequence.
pub async fn publish(js: &jetstream::Context, w: &Workload) -> anyhow::Result<Vec<Sent>> {
    let mut sent = Vec::with_capacity(w.count);
    let mut pending = std::collections::VecDeque::new();
    let started = tokio::time::Instant::now();
    for i in 0..w.count {
        if let Some(rate) = w.rate {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due).await;
        }
        let (subject, payload, headers) = message(w, i);
        let mut map = async_nats::HeaderMap::new();
        for (k, v) in &headers {
            map.append(k.as_str(), v.as_str());
        }
        let entry = Sent {
            sequence: 0,
            subject: subject.clone(),
            hash: hash(&payload),
            len: payload.len(),
            headers,
        };
        let ack = js
            .send_publish(
                subject,
                jetstream::message::PublishMessage::build()
                    .payload(payload)
                    .headers(map),
            )
            .await
            .context("publish to the edge")?;
        pending.push_back((entry, ack));
        if pending.len() >= 512 {
            let (mut e, ack) = pending.pop_front().unwrap();
            e.sequence = ack.await.context("edge PubAck")?.sequence;
            sent.push(e);
        }
    }
    for (mut e, ack) in pending {
        e.sequence = ack.await.context("edge PubAck")?.sequence;
        sent.push(e);
    }
    Ok(sent)
}

/// The creation time (ns) of a stream: the incarnation part of message ids.
pub async fn incarnation(js: &jetstream::Context, stream: &str) -> anyhow::Result<i128> {
    let mut s = js.get_stream(stream).await?;
    Ok(s.info().await?.created.unix_timestamp_nanos())
}

/// One message read back from the cloud stream.
#[derive(Clone, Debug)]
pub struct Received {
    pub id: String,
    pub subject: String,
    pub hash: u64,
    pub len: usize,
    /// Every header with all its values, in order.
    pub headers: HashMap<String, Vec<String>>,
    /// Cloud persist time minus edge time.
    pub latency: Option<Duration>,
    /// Cloud persist time (the cloud JetStream's timestamp), Unix nanoseconds.
    pub stored_ns: i128,
}

/// Waits until `stream` holds at least `want` messages, within `within`.
pub async fn wait_count(
    js: &jetstream::Context,
    stream: &str,
    want: u64,
    within: Duration,
) -> anyhow::Result<u64> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let n = match js.get_stream(stream).await {
            Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
            Err(_) => 0,
        };
        if n >= want {
            return Ok(n);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("stream {stream} holds {n} of {want} messages after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the edge consumer has nothing pending or unacked (the gateway is done).
pub async fn wait_drained(
    js: &jetstream::Context,
    stream: &str,
    consumer_name: &str,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        // Read as info, whatever the consumer's kind (pull, or push with cumulative acks).
        let info = js
            .get_stream(stream)
            .await
            .context("edge stream")?
            .consumer_info(consumer_name)
            .await
            .context("edge consumer")?;
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "edge consumer still has {} pending and {} unacked after {within:?}",
                info.num_pending,
                info.num_ack_pending
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads every message of the cloud stream.
///
/// In a cluster a read right after nodes restarted can meet a JetStream API that is still
/// settling (a pull answered "no responders" while the new consumer's leader is not yet
/// reachable, a request timing out during a meta-leader election); the whole read is then
/// repeated with a fresh consumer, a bounded number of times, and the last error is returned.
pub async fn read_all(js: &jetstream::Context, stream: &str) -> anyhow::Result<Vec<Received>> {
    const ATTEMPTS: u32 = 6;
    let mut attempt = 1;
    loop {
        match read_all_once(js, stream).await {
            Ok(got) => return Ok(got),
            Err(e) if attempt < ATTEMPTS && settling(&e) => {
                eprintln!(
                    "reading {stream} (attempt {attempt} of {ATTEMPTS}): {e:#}; reading again"
                );
                tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
                attempt += 1;
            }
            Err(e) => {
                if settling(&e) {
                    eprintln!(
                        "reading {stream} by consumer failed {attempt} times ({e:#}); reading it by sequence"
                    );
                    if let Ok(got) = read_by_sequence(js, stream).await {
                        return Ok(got);
                    }
                }
                return Err(e.context(format!("after {attempt} attempts")));
            }
        }
    }
}

/// Whether a read failed on a cluster that is still settling rather than on the data.
fn settling(e: &anyhow::Error) -> bool {
    let text = format!("{e:#}").to_ascii_lowercase();
    ["no responders", "timed out", "leader", "not available"]
        .iter()
        .any(|t| text.contains(t))
}

async fn read_all_once(js: &jetstream::Context, stream: &str) -> anyhow::Result<Vec<Received>> {
    let mut s = js.get_stream(stream).await?;
    let total = s.info().await?.state.messages as usize;
    let c: consumer::PullConsumer = s
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            deliver_policy: consumer::DeliverPolicy::All,
            inactive_threshold: Duration::from_secs(60),
            ..Default::default()
        })
        .await?;
    let mut out = Vec::with_capacity(total);
    let mut msgs = c.stream().max_messages_per_batch(1000).messages().await?;
    while out.len() < total {
        let m = tokio::time::timeout(Duration::from_secs(10), msgs.next())
            .await
            .context("reading the cloud stream timed out")?
            .context("cloud stream ended")??;
        let info = m.info().map_err(|e| anyhow::anyhow!("{e}"))?;
        let published = info.published.unix_timestamp_nanos();
        out.push(received(
            &m.subject,
            m.headers.as_ref(),
            &m.payload,
            published,
        ));
    }
    Ok(out)
}

/// One stored message as the verification compares it.
fn received(
    subject: &str,
    h: Option<&async_nats::HeaderMap>,
    payload: &[u8],
    published: i128,
) -> Received {
    let mut headers = HashMap::new();
    if let Some(h) = h {
        for (k, v) in h.iter() {
            let values: Vec<String> = v.iter().map(|v| v.as_str().to_string()).collect();
            headers.insert(k.to_string(), values);
        }
    }
    let one = |name: &str| {
        headers
            .get(name)
            .and_then(|v: &Vec<String>| v.last())
            .cloned()
    };
    let latency = one(TIME_HEADER)
        .and_then(|t| t.parse::<i128>().ok())
        .and_then(|t| u64::try_from(published - t).ok())
        .map(Duration::from_nanos);
    Received {
        id: one("Nats-Msg-Id").unwrap_or_default(),
        subject: subject.to_string(),
        hash: hash(payload),
        len: payload.len(),
        headers,
        latency,
        stored_ns: published,
    }
}

/// Every message of `stream` read one by one by sequence (`STREAM.MSG.GET`, answered by the
/// stream's leader): the way to read a cluster's stream when ephemeral consumers keep failing
/// to deliver (seen on 2.9.10 under load: a consumer placed on a peer not yet known offline).
pub async fn read_by_sequence(
    js: &jetstream::Context,
    stream: &str,
) -> anyhow::Result<Vec<Received>> {
    let mut s = js.get_stream(stream).await?;
    let state = s.info().await?.state.clone();
    let mut out = Vec::with_capacity(state.messages as usize);
    if state.messages == 0 {
        return Ok(out);
    }
    for seq in state.first_sequence..=state.last_sequence {
        match s.get_raw_message(seq).await {
            Ok(m) => out.push(received(
                &m.subject,
                Some(&m.headers),
                &m.payload,
                m.time.unix_timestamp_nanos(),
            )),
            // A gap (deleted or never stored): nothing there to compare.
            Err(e)
                if e.kind()
                    == async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound => {}
            Err(e) => return Err(anyhow::anyhow!("reading {stream} message {seq}: {e}")),
        }
    }
    anyhow::ensure!(
        out.len() == state.messages as usize,
        "read {} of {stream}'s {} messages by sequence",
        out.len(),
        state.messages
    );
    Ok(out)
}

/// The verdict of a run.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Report {
    pub messages: usize,
    pub delivered: usize,
    pub lost: usize,
    pub duplicates: usize,
    /// Arrived with a wrong subject, payload or headers, or with an unknown id.
    pub corrupted: usize,
    /// Messages the edge stream itself stored twice: an id of this edge stream the publisher
    /// never got an ack for, carrying the subject and payload of a message it did send — a
    /// publisher's retry the edge did not deduplicate (seen once after an edge nats-server 2.9
    /// restart). Each edge copy is its own edge message, delivered once: not a fault of the
    /// pipeline, so not in [`Report::ok`], but said in `problems`.
    pub edge_duplicates: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// A few examples of what went wrong.
    pub problems: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.duplicates == 0 && self.corrupted == 0
    }
}

/// Checks what the cloud holds against what was sent.
pub fn check(
    sent: &[Sent],
    got: &[Received],
    platform: &str,
    edge_stream: &str,
    incarnation: i128,
    cloud_prefix: &str,
) -> Report {
    let mut want: HashMap<String, &Sent> = sent
        .iter()
        .map(|s| {
            (
                uplink::wire::message_id(platform, edge_stream, incarnation, s.sequence),
                s,
            )
        })
        .collect();
    // An id of this edge stream (any sequence) and what each sent message looks like in the
    // cloud, to tell an edge-side double store from an unknown message.
    let this_stream = {
        let one = uplink::wire::message_id(platform, edge_stream, incarnation, 0);
        one[..one.len() - 1].to_string()
    };
    let by_content: std::collections::HashSet<(String, u64, usize)> = sent
        .iter()
        .map(|s| {
            (
                format!("{cloud_prefix}.{platform}.{}", s.subject),
                s.hash,
                s.len,
            )
        })
        .collect();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut r = Report {
        messages: sent.len(),
        ..Default::default()
    };
    let note = |r: &mut Report, p: String| {
        if r.problems.len() < 10 {
            r.problems.push(p);
        }
    };
    let mut latencies: Vec<Duration> = Vec::with_capacity(got.len());
    for g in got {
        let n = seen.entry(g.id.as_str()).or_default();
        *n += 1;
        if *n > 1 {
            r.duplicates += 1;
            note(&mut r, format!("duplicate {}", g.id));
            continue;
        }
        let Some(s) = want.get(&g.id) else {
            let copy_of_sent = g.id.starts_with(&this_stream)
                && by_content.contains(&(g.subject.clone(), g.hash, g.len));
            if copy_of_sent {
                r.edge_duplicates += 1;
                note(
                    &mut r,
                    format!(
                        "edge stored a sent message twice: {:?} (delivered once)",
                        g.id
                    ),
                );
            } else {
                r.corrupted += 1;
                note(&mut r, format!("unexpected id {:?}", g.id));
            }
            continue;
        };
        let subject = format!("{cloud_prefix}.{platform}.{}", s.subject);
        let mut sent_headers: HashMap<&str, Vec<String>> = HashMap::new();
        for (k, v) in &s.headers {
            sent_headers.entry(k.as_str()).or_default().push(v.clone());
        }
        let headers_ok = sent_headers
            .iter()
            .all(|(k, v)| g.headers.get(*k) == Some(v));
        if g.subject != subject || g.hash != s.hash || g.len != s.len || !headers_ok {
            r.corrupted += 1;
            note(
                &mut r,
                format!(
                    "{}: subject {} (want {subject}), {} bytes (want {}), headers ok {headers_ok}",
                    g.id, g.subject, g.len, s.len
                ),
            );
            continue;
        }
        r.delivered += 1;
        if let Some(l) = g.latency {
            latencies.push(l);
        }
    }
    want.retain(|id, _| !seen.contains_key(id.as_str()));
    r.lost = want.len();
    for id in want.keys().take(5) {
        note(&mut r, format!("lost {id}"));
    }
    latencies.sort();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies[i].as_secs_f64() * 1000.0
    };
    r.p50_ms = pct(0.50);
    r.p99_ms = pct(0.99);
    r
}

#[cfg(test)]
mod tests;
