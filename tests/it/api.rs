//! The ingest's HTTP API over real HTTP/2 + mTLS: bad input gets a JSON error naming the
//! problem, and nothing is published.

use bytes::Bytes;
use uplink::wire::{self, Batch, Encoding, Message};

use crate::support::h2client::{self, json};
use crate::support::*;

fn batch(subject: &str) -> Batch {
    Batch {
        messages: vec![Message {
            id: "edge-1.api.1".into(),
            subject: subject.into(),
            payload: Bytes::from_static(b"v"),
            ..Default::default()
        }],
    }
}

/// A batch from edge-1 carrying an id of edge-2.
fn foreign_id() -> Batch {
    let mut b = batch("a");
    b.messages[0].id = "edge-2.api.1".into();
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_with_json_errors_and_nothing_published() {
    let p = pipeline(|i| i.limits.max_body_bytes = 64 * 1024, |_| {}).await;
    let c = edge_client(&p);
    let pb = [("content-type", wire::CONTENT_TYPE_PROTOBUF)];
    /// (path, headers, body, expected status, expected error code, expected text in the detail)
    type Case<'a> = (
        &'a str,
        Vec<(&'a str, &'a str)>,
        Bytes,
        u16,
        &'a str,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "/v1/batches",
            pb.to_vec(),
            Bytes::from_static(b"\x0a\xff\xff\xff"),
            400,
            "malformed",
            "not a valid uplink.v1.Batch",
        ),
        (
            "/v1/batches",
            vec![pb[0], ("content-encoding", "br")],
            wire::encode_batch(&batch("a"), Encoding::Identity, 1).unwrap(),
            415,
            "unsupported_encoding",
            "br",
        ),
        (
            "/v1/publish/big",
            vec![],
            Bytes::from(vec![1u8; 100 * 1024]),
            413,
            "too_large",
            "max_body_bytes",
        ),
        (
            "/v1/batches",
            pb.to_vec(),
            wire::encode_batch(&batch("telemetry.*"), Encoding::Identity, 1).unwrap(),
            400,
            "bad_subject",
            "wildcards",
        ),
        (
            "/v1/batches",
            pb.to_vec(),
            wire::encode_batch(&batch("telemetry..cpu"), Encoding::Identity, 1).unwrap(),
            400,
            "bad_subject",
            "empty token",
        ),
        (
            "/v1/publish/a.*",
            vec![],
            Bytes::from_static(b"x"),
            400,
            "bad_subject",
            "wildcards",
        ),
        // README: message ids must start with the platform's `P.`, so one platform cannot
        // make another's messages look like duplicates.
        (
            "/v1/batches",
            pb.to_vec(),
            wire::encode_batch(&foreign_id(), Encoding::Identity, 1).unwrap(),
            400,
            "bad_id",
            "edge-2.api.1",
        ),
        (
            "/v1/batches",
            vec![("content-type", "application/json")],
            wire::encode_batch(&batch("a"), Encoding::Identity, 1).unwrap(),
            415,
            "unsupported_media_type",
            "application/json",
        ),
        (
            "/v2/batches",
            pb.to_vec(),
            Bytes::from_static(b"x"),
            404,
            "not_found",
            "/v2/batches",
        ),
    ];
    let refused = cases.len();
    for (path, headers, body, status, code, needle) in cases {
        let resp = h2client::post(&c, path, &headers, body).await.unwrap();
        assert_eq!(resp.status(), status, "{path} {needle}");
        let v = json(&resp);
        // The code by value: the stable word a client branches on (README's error table).
        assert_eq!(v["error"], code, "{path} {needle}: {v}");
        assert!(
            v["detail"].as_str().unwrap().contains(needle),
            "{v} lacks {needle:?}"
        );
    }
    // RELIABILITY.md: every refused request logs one line (info for a 4xx), with its reason.
    let log = p.log("ingest");
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("request rejected"))
        .collect();
    assert_eq!(lines.len(), refused, "{log}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains(" INFO ") && l.contains("platform=")),
        "{lines:#?}"
    );
    let cloud = cloud_js(&p).await;
    assert_eq!(stream_len(&cloud, &p.ingest_cfg.nats.stream).await, 0);

    // And the good request on the same connection is accepted, once, then deduplicated.
    for dup in [0, 1] {
        let headers = [pb[0], ("content-encoding", "gzip")];
        let body = wire::encode_batch(&batch("telemetry.ok"), Encoding::Gzip, 1).unwrap();
        let resp = h2client::post(&c, "/v1/batches", &headers, body)
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            json(&resp),
            serde_json::json!({"accepted": 1 - dup, "duplicates": dup})
        );
    }
    assert_eq!(stream_len(&cloud, &p.ingest_cfg.nats.stream).await, 1);
    // README: edge subject S from platform P is cloud subject `uplink.P.S`.
    let got = uplink_tools::testbed::verify::read_all(&cloud, &p.ingest_cfg.nats.stream)
        .await
        .unwrap();
    assert_eq!(
        (got[0].subject.as_str(), got[0].id.as_str()),
        ("uplink.edge-1.telemetry.ok", "edge-1.api.1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_over_the_header_list_limit_are_refused_and_the_connection_lives_on() {
    let p = pipeline(|_| {}, |_| {}).await;
    let c = edge_client(&p);
    let big = "a".repeat(20 * 1024); // over http2.max_header_list_bytes (16 KiB)
    let refused = h2client::post(
        &c,
        "/v1/publish/big",
        &[("idempotency-key", "big-1"), ("x-big", &big)],
        "1",
    )
    .await;
    // The HTTP/2 layer answers 431 Request Header Fields Too Large before the handler runs.
    assert_eq!(refused.unwrap().status(), 431);
    // Not processed, and the ingest still serves (on this client, reconnecting if need be).
    let ok = h2client::post(
        &c,
        "/v1/publish/small",
        &[("idempotency-key", "small-1")],
        "1",
    )
    .await
    .unwrap();
    assert_eq!(ok.status(), 200);
    let cloud = cloud_js(&p).await;
    assert_eq!(stream_len(&cloud, &p.ingest_cfg.nats.stream).await, 1);
}
