//! `uplink publish`: a load generator into the edge stream.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;

use crate::testbed::verify::{self, Workload};

/// Publishes the workload to `url` and prints what it did.
pub async fn run(url: &str, stream: Option<&str>, w: Workload) -> anyhow::Result<()> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .with_context(|| format!("connect to {url}"))?;
    let js = jetstream::new(client);
    if let Some(stream) = stream {
        js.get_or_create_stream(jetstream::stream::Config {
            name: stream.to_string(),
            // One subject is used as given; several are `SUBJECT.sN`.
            subjects: vec![w.subject_prefix.clone(), format!("{}.>", w.subject_prefix)],
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .with_context(|| format!("stream {stream}"))?;
    }
    // Without a stream on the subject, every publish would fail with "no stream found".
    let first = verify::message(&w, 0).0;
    if js.stream_by_subject(first.clone()).await.is_err() {
        anyhow::bail!(
            "no stream on {url} takes subject {first:?}: publish under a subject an edge stream \
             takes (the gateway's default stream TELEMETRY takes telemetry.>), or add \
             --create-stream NAME to create one on {p} and {p}.>",
            p = w.subject_prefix
        );
    }
    let started = Instant::now();
    let sent = verify::publish(&js, &w).await?;
    let secs = started.elapsed().as_secs_f64();
    let bytes: usize = sent.iter().map(|s| s.len).sum();
    println!(
        "published {} messages ({} payload bytes) under {} in {:.2} s: {:.0} msgs/s; edge sequences {}..={}",
        sent.len(),
        bytes,
        w.subject_prefix,
        secs,
        sent.len() as f64 / secs.max(1e-9),
        sent.first().map(|s| s.sequence).unwrap_or(0),
        sent.last().map(|s| s.sequence).unwrap_or(0),
    );
    Ok(())
}
