//! The ingest's memory under 1,000 concurrent HTTP/2 streams (issue 12, target 5): 8 real mTLS
//! connections × 125 streams (within `http2.max_concurrent_streams` = 128), every stream a
//! batch POST of 256 KiB whose first 4 KiB are sent, all 1,000 held open at once, then the rest.
//! The ingest's peak RSS must stay within the bound README states from its limits, whatever the
//! streams offer:
//!
//! `RSS ≤ base + limits.max_inflight_bytes
//!        + connections × (receive window 1 MiB + max_concurrent_streams × max_header_list_bytes + 64 KiB)`

use std::time::Duration;

use bytes::Bytes;
use uplink::telemetry::scrape_value;
use uplink_tools::testbed::pipeline::Pipeline;

use crate::support::*;

const CONNECTIONS: usize = 8;
const STREAMS_PER_CONNECTION: usize = 125;
const STREAMS: usize = CONNECTIONS * STREAMS_PER_CONNECTION;
/// What each stream sends at first: small enough that every stream is held (paid for).
const FIRST: usize = 4 << 10;
/// Each stream's whole body: 250 MiB offered in all, far over the budget.
const TOTAL: usize = 256 << 10;
const MESSAGES_PER_STREAM: usize = 16;
const MIB: u64 = 1 << 20;

/// A raw HTTP/2 connection with the pipeline's `edge-1` certificate (h2's default windows).
async fn connection(p: &Pipeline) -> h2::client::SendRequest<Bytes> {
    let (send, conn) = h2::client::handshake(tls_connect(p).await).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send.ready().await.unwrap()
}

/// A valid batch of `TOTAL` bytes (identity encoding): 16 messages of 16 KiB, ids unique per
/// stream, so every stream the ingest holds to the end is published, and nothing else is.
fn body(stream: usize) -> Bytes {
    let batch = uplink::wire::Batch {
        messages: (0..MESSAGES_PER_STREAM)
            .map(|i| uplink::wire::Message {
                id: format!("edge-1.mem.{stream}.{i}"),
                subject: "mem.streams".into(),
                payload: Bytes::from(vec![0x5au8; (TOTAL / MESSAGES_PER_STREAM) - 64]),
                headers: Default::default(),
                time_unix_nano: 0,
                multi_headers: Vec::new(),
            })
            .collect(),
    };
    uplink::wire::encode_batch(&batch, uplink::wire::Encoding::Identity, 0).unwrap()
}

/// Sends `rest` on `stream` as the windows open (ending the stream with its last byte when
/// `end`), unless the response comes first; returns the response's status if it came.
async fn send(
    stream: &mut h2::SendStream<Bytes>,
    resp: &mut h2::client::ResponseFuture,
    mut rest: Bytes,
    end: bool,
) -> Option<u16> {
    let status = |r: Result<http::Response<h2::RecvStream>, h2::Error>| {
        r.map(|r| r.status().as_u16()).unwrap_or(0)
    };
    while !rest.is_empty() {
        stream.reserve_capacity(rest.len());
        tokio::select! {
            r = &mut *resp => return Some(status(r)),
            cap = std::future::poll_fn(|cx| stream.poll_capacity(cx)) => match cap {
                Some(Ok(n)) if n > 0 => {
                    let chunk = rest.split_to(n.min(rest.len()));
                    if stream.send_data(chunk, end && rest.is_empty()).is_err() {
                        return Some(status(resp.await));
                    }
                }
                Some(Ok(_)) => {}
                // The stream was reset: its answer is (or was) on its way.
                _ => return Some(status(resp.await)),
            },
        }
    }
    if end {
        return Some(status(resp.await));
    }
    None
}

async fn inflight_bytes(p: &Pipeline) -> f64 {
    let m = p.ingest_metrics().await.unwrap();
    scrape_value(&m, "uplink_ingest_inflight_bytes").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_open_streams_cost_what_the_limits_allow() {
    let p = pipeline(
        |i| {
            // A small budget, so the 250 MiB the streams offer is 3.5× over it.
            i.limits.max_body_bytes = 1 << 20;
            i.limits.max_decoded_bytes = 1 << 20;
            i.limits.max_inflight_bytes_per_connection = 8 << 20;
            i.limits.max_inflight_bytes_per_platform = 72 << 20;
            i.limits.max_inflight_bytes = 72 << 20;
            i.timeouts.request_body = Duration::from_secs(120);
        },
        |_| {},
    )
    .await;
    let l = &p.ingest_cfg;
    let rss_before = ingest_mem_kib(&p, "VmRSS");

    // Phase 1: 1,000 streams open, FIRST bytes each: every one is held.
    let bodies: Vec<Bytes> = (0..STREAMS).map(body).collect();
    let mut streams = Vec::with_capacity(STREAMS);
    for c in 0..CONNECTIONS {
        let mut send = connection(&p).await;
        for i in 0..STREAMS_PER_CONNECTION {
            let req =
                http::Request::post(format!("https://localhost{}", uplink::wire::BATCHES_PATH))
                    .header("content-type", uplink::wire::CONTENT_TYPE_PROTOBUF)
                    .header(
                        "content-length",
                        bodies[c * STREAMS_PER_CONNECTION + i].len().to_string(),
                    )
                    .body(())
                    .unwrap();
            send = send.ready().await.unwrap();
            let (resp, stream) = send.send_request(req, false).unwrap();
            streams.push((stream, resp));
        }
    }
    let first = futures_util::future::join_all(
        streams
            .iter_mut()
            .zip(&bodies)
            .map(|((s, r), b)| send(s, r, b.slice(..FIRST), false)),
    )
    .await;
    assert!(
        first.iter().all(Option::is_none),
        "a stream was answered after {FIRST} bytes: {:?}",
        first.iter().flatten().collect::<Vec<_>>()
    );
    // The event: the ingest has paid for every stream's first bytes, so 1,000 requests are
    // in progress at once.
    let want = (STREAMS * FIRST) as f64;
    uplink_tools::testbed::wait_for(
        || async { Ok(inflight_bytes(&p).await >= want) },
        Duration::from_secs(30),
    )
    .await
    .expect("the ingest holds every stream's first bytes");
    let rss_open = ingest_mem_kib(&p, "VmRSS");
    let per_stream_kib = (rss_open.saturating_sub(rss_before) as f64
        - (STREAMS * FIRST) as f64 / 1024.0)
        / STREAMS as f64;

    // Phase 2: every stream sends all but the last byte of its body: 250 MiB offered against
    // a 72 MiB budget. When the client has sent it all, the ingest holds it, or had the
    // connection windows (1 MiB each) of it still to read, or answered the stream 503 (over
    // its connection's share): the most it is ever offered to hold at once.
    let early = futures_util::future::join_all(
        streams
            .iter_mut()
            .zip(&bodies)
            .map(|((s, r), b)| send(s, r, b.slice(FIRST..b.len() - 1), false)),
    )
    .await;
    let held_at_peak = early.iter().filter(|a| a.is_none()).count();
    let rss_peak_phase = ingest_mem_kib(&p, "VmRSS");
    // Phase 3: the last byte of each stream still open: each is answered, 200 (published) or
    // 503 (its decoded copy would exceed the share).
    let answers = futures_util::future::join_all(streams.into_iter().zip(bodies).zip(early).map(
        |(((mut s, mut r), b), early)| async move {
            match early {
                Some(status) => status,
                None => send(&mut s, &mut r, b.slice(b.len() - 1..), true)
                    .await
                    .expect("an ended stream is answered"),
            }
        },
    ))
    .await;
    let mut answered = std::collections::BTreeMap::<u16, usize>::new();
    for s in &answers {
        *answered.entry(*s).or_default() += 1;
    }
    let published = answered.get(&200).copied().unwrap_or(0);
    let inflight = inflight_bytes(&p).await;
    let hwm = ingest_mem_kib(&p, "VmHWM");
    let rss_end = ingest_mem_kib(&p, "VmRSS");
    let bound_kib = (l.limits.max_inflight_bytes as u64
        + CONNECTIONS as u64
            * (MIB
                + u64::from(l.http2.max_concurrent_streams)
                    * u64::from(l.http2.max_header_list_bytes)
                + (64 << 10)))
        / 1024;
    eprintln!(
        "{STREAMS} streams over {CONNECTIONS} connections: ingest RSS before {} MiB, \
         {STREAMS} streams open with {FIRST} B each {} MiB ({per_stream_kib:.1} KiB per stream \
         beyond its body); {} MiB offered: {held_at_peak} streams still open, RSS {} MiB; \
         answered {answered:?}, inflight after {:.1} MiB; RSS {} MiB, peak {} MiB (+{} MiB; \
         bound +{} MiB)",
        rss_before / 1024,
        rss_open / 1024,
        (STREAMS * TOTAL) >> 20,
        rss_peak_phase / 1024,
        inflight / MIB as f64,
        rss_end / 1024,
        hwm / 1024,
        hwm.saturating_sub(rss_before) / 1024,
        bound_kib / 1024,
    );
    assert!(
        answered.keys().all(|s| [200, 503].contains(s)) && answered.contains_key(&503),
        "each stream is published or told busy, and the shares refuse some: {answered:?}"
    );
    assert_eq!(inflight, 0.0, "everything was given back");
    assert!(
        hwm.saturating_sub(rss_before) <= bound_kib,
        "ingest RSS grew by {} KiB, over the bound {bound_kib} KiB",
        hwm.saturating_sub(rss_before)
    );
    // Exactly the answered 200s were published, nothing of a refused stream.
    let cloud = cloud_js(&p).await;
    assert_eq!(
        stream_len(&cloud, &p.ingest_cfg.nats.stream).await,
        (published * MESSAGES_PER_STREAM) as u64
    );
}
