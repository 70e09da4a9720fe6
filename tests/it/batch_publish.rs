//! How the ingest publishes a request: a batch the gateway marks as sent for the first time
//! (`uplink-first-send: 1`) goes to nats-server 2.14+ as one fast batch, the cloud stream
//! created with `allow_batched`; everything else, and every request on older servers, goes
//! message by message with exact duplicates. Either way, nothing is stored twice.

use bytes::Bytes;
use uplink::telemetry::scrape_value;
use uplink::wire::{self, Batch, Encoding, Message};

use crate::support::h2client::{self, json};
use crate::support::*;

/// Whether the nats-server under test has fast batch publish (2.14+).
fn server_batches() -> bool {
    nats_at_least(2, 14)
}

fn mode_count(m: &str, mode: &str) -> f64 {
    let series = format!("uplink_ingest_publish_requests_total{{mode=\"{mode}\"}}");
    scrape_value(m, &series).unwrap_or_else(|| panic!("no {series} in:\n{m}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_send_is_one_fast_batch_where_the_server_has_them_and_a_resend_counts_duplicates() {
    let p = pipeline(|_| {}, |_| {}).await;
    let batching = server_batches();
    // The stream as the server has it: allow_batched exactly where the server knows it.
    let nats = async_nats::connect(p.cloud_url()).await.unwrap();
    let stream = &p.ingest_cfg.nats.stream;
    wait_stream_len(&cloud_js(&p).await, stream, 0).await;
    let info = nats
        .request(format!("$JS.API.STREAM.INFO.{stream}"), Bytes::new())
        .await
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.payload).unwrap();
    assert_eq!(
        info["config"]["allow_batched"] == serde_json::Value::Bool(true),
        batching,
        "{info}"
    );

    let n = 1_200; // more than the server's largest flow window (500), so flow acks are awaited
    let batch = Batch {
        messages: (0..n)
            .map(|i| Message {
                id: format!("edge-1.fb.1.{i}"),
                subject: "fb.x".into(),
                payload: Bytes::from(format!("m{i}")),
                ..Default::default()
            })
            .collect(),
    };
    let body = wire::encode_batch(&batch, Encoding::Identity, 1).unwrap();
    let c = edge_client(&p);
    let post = |first: bool| {
        let mut headers = vec![("content-type", wire::CONTENT_TYPE_PROTOBUF)];
        if first {
            headers.push((wire::FIRST_SEND_HEADER, "1"));
        }
        let (c, body) = (&c, body.clone());
        async move {
            let r = h2client::post(c, "/v1/batches", &headers, body)
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{:?}", String::from_utf8_lossy(r.body()));
            json(&r)
        }
    };
    let first = post(true).await;
    assert_eq!(first["accepted"], n, "{first}");
    assert_eq!(first["duplicates"], 0, "{first}");
    let m = p.ingest_metrics().await.unwrap();
    assert_eq!(
        mode_count(&m, "fast_batch"),
        if batching { 1.0 } else { 0.0 },
        "{m}"
    );
    assert_eq!(
        mode_count(&m, "per_message"),
        if batching { 0.0 } else { 1.0 },
        "{m}"
    );

    // A resend (no first-send mark) goes message by message: every message a duplicate.
    let again = post(false).await;
    assert_eq!(again["accepted"], 0, "{again}");
    assert_eq!(again["duplicates"], n, "{again}");
    let m = p.ingest_metrics().await.unwrap();
    assert_eq!(
        mode_count(&m, "per_message"),
        if batching { 1.0 } else { 2.0 },
        "{m}"
    );

    // Even a wrong first-send mark stores nothing twice (the server drops duplicates inside a
    // fast batch too; only the answer's split cannot be exact then).
    let wrong = post(true).await;
    assert_eq!(
        wrong["accepted"].as_u64().unwrap() + wrong["duplicates"].as_u64().unwrap(),
        n as u64
    );
    let cloud = cloud_js(&p).await;
    assert_eq!(stream_len(&cloud, stream).await, n as u64);
    // One more fresh batch lands after them, whole.
    let next = Batch {
        messages: (0..n)
            .map(|i| Message {
                id: format!("edge-1.fb.2.{i}"),
                subject: "fb.y".into(),
                payload: Bytes::from_static(b"y"),
                ..Default::default()
            })
            .collect(),
    };
    let body = wire::encode_batch(&next, Encoding::Identity, 1).unwrap();
    let headers = [
        ("content-type", wire::CONTENT_TYPE_PROTOBUF),
        (wire::FIRST_SEND_HEADER, "1"),
    ];
    let r = h2client::post(&c, "/v1/batches", &headers, body)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(json(&r)["accepted"], n);
    assert_eq!(stream_len(&cloud, stream).await, 2 * n as u64);
}

/// With `nats.batch_publish = "atomic"`, a request lands as one atomic batch where the server
/// (2.12.1+) and the stream (`allow_atomic`, set by the ingest when it creates it) have them; a
/// request holding a message stored before is refused whole by the server (10201) and then
/// published message by message, so its answer's split is exact and nothing is stored twice.
/// On an older server every request goes message by message, with the same answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atomic_batches_land_whole_and_one_holding_a_stored_message_goes_message_by_message() {
    let p = pipeline(
        |i| {
            i.nats.batch_publish = uplink::config::BatchPublish::Atomic;
            i.nats.platform_header = true;
        },
        |_| {},
    )
    .await;
    // The two servers under test are 2.9.10 (no atomic batches) and 2.15.1 (2.12.1+).
    let atomic = nats_at_least(2, 13);
    let nats = async_nats::connect(p.cloud_url()).await.unwrap();
    let stream = &p.ingest_cfg.nats.stream;
    let cloud = cloud_js(&p).await;
    wait_stream_len(&cloud, stream, 0).await;
    let info = nats
        .request(format!("$JS.API.STREAM.INFO.{stream}"), Bytes::new())
        .await
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.payload).unwrap();
    assert_eq!(
        info["config"]["allow_atomic"] == serde_json::Value::Bool(true),
        atomic,
        "{info}"
    );
    let c = edge_client(&p);
    let post = |ids: std::ops::Range<usize>| {
        let batch = Batch {
            messages: ids
                .map(|i| Message {
                    id: format!("edge-1.ab.1.{i}"),
                    subject: "ab.x".into(),
                    payload: Bytes::from(format!("m{i}")),
                    ..Default::default()
                })
                .collect(),
        };
        let body = wire::encode_batch(&batch, Encoding::Identity, 1).unwrap();
        let c = &c;
        async move {
            let headers = [("content-type", wire::CONTENT_TYPE_PROTOBUF)];
            let r = h2client::post(c, "/v1/batches", &headers, body)
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{:?}", String::from_utf8_lossy(r.body()));
            json(&r)
        }
    };
    let first = post(0..300).await;
    assert_eq!(
        (first["accepted"].as_u64(), first["duplicates"].as_u64()),
        (Some(300), Some(0))
    );
    let m = p.ingest_metrics().await.unwrap();
    let gauge = scrape_value(&m, "uplink_ingest_atomic_batches");
    assert_eq!(gauge, Some(if atomic { 1.0 } else { 0.0 }), "{m}");
    assert_eq!(
        mode_count(&m, "atomic_batch"),
        if atomic { 1.0 } else { 0.0 }
    );
    assert_eq!(
        mode_count(&m, "per_message"),
        if atomic { 0.0 } else { 1.0 }
    );
    assert_eq!(
        mode_count(&m, "fast_batch"),
        0.0,
        "atomic mode never sends fast batches"
    );

    // 100 of these were stored by the first request: the atomic batch is refused whole, the
    // request goes message by message.
    let overlap = post(200..500).await;
    assert_eq!(
        (overlap["accepted"].as_u64(), overlap["duplicates"].as_u64()),
        (Some(200), Some(100)),
        "{overlap}"
    );
    let m = p.ingest_metrics().await.unwrap();
    assert_eq!(
        mode_count(&m, "atomic_batch"),
        if atomic { 2.0 } else { 0.0 }
    );
    assert_eq!(
        mode_count(&m, "per_message"),
        if atomic { 1.0 } else { 2.0 }
    );
    assert_eq!(
        scrape_value(&m, "uplink_ingest_atomic_batches"),
        gauge,
        "a refused duplicate does not turn atomic batches off"
    );
    assert_eq!(stream_len(&cloud, stream).await, 500);
    // Every id once, each message with its own id and the ingest's stamps.
    let last = cloud
        .get_stream(stream)
        .await
        .unwrap()
        .get_last_raw_message_by_subject("uplink.edge-1.ab.x")
        .await
        .unwrap();
    let header = |name: &str| last.headers.get(name).map(|v| v.as_str().to_string());
    assert_eq!(header("Nats-Msg-Id").as_deref(), Some("edge-1.ab.1.499"));
    assert_eq!(header(wire::PLATFORM_HEADER).as_deref(), Some("edge-1"));
}
