use std::sync::Mutex;

use futures_util::future::BoxFuture;

use super::*;
use crate::ingest::publish::Outcome;
use crate::wire::{Batch, Message};

/// Records what would be persisted; `down` makes it fail like a disconnected JetStream.
#[derive(Default)]
struct FakeSink {
    got: Mutex<Vec<OutMessage>>,
    down: bool,
}

impl Sink for FakeSink {
    fn publish(&self, messages: Vec<OutMessage>) -> BoxFuture<'_, Result<Outcome, SinkError>> {
        Box::pin(async move {
            if self.down {
                return Err(SinkError::NotConnected);
            }
            let n = messages.len();
            self.got.lock().unwrap().extend(messages);
            Ok(Outcome {
                accepted: n,
                duplicates: 0,
            })
        })
    }
    fn ready(&self) -> Result<(), String> {
        Ok(())
    }
}

fn handler(sink: Arc<FakeSink>) -> Handler {
    handler_with_memory(sink, 4096 + 8192)
}

fn handler_with_memory(sink: Arc<FakeSink>, max_inflight_bytes: usize) -> Handler {
    let limits = IngestLimits {
        max_body_bytes: 4096,
        max_decoded_bytes: 8192,
        max_inflight_bytes,
        max_messages_per_batch: 3,
        max_connections: 10,
        ..IngestLimits::default()
    };
    Handler::new(sink, "uplink".into(), limits, Duration::from_secs(5))
}

fn batch_req(batch: &Batch, enc: Encoding) -> Request<Full<Bytes>> {
    Request::post("/v1/batches")
        .header("content-type", wire::CONTENT_TYPE_PROTOBUF)
        .header("content-encoding", enc.as_str())
        .body(Full::new(wire::encode_batch(batch, enc, 1).unwrap()))
        .unwrap()
}

fn msg(id: &str, subject: &str) -> Message {
    Message {
        id: id.into(),
        subject: subject.into(),
        payload: Bytes::from_static(b"x"),
        headers: [("h".to_string(), "v".to_string())].into(),
        time_unix_nano: 9,
    }
}

async fn body_json(resp: HttpResponse) -> serde_json::Value {
    let b = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&b).unwrap()
}

#[tokio::test]
async fn batch_is_published_under_the_platform_prefix() {
    let sink = Arc::new(FakeSink::default());
    let h = handler(sink.clone());
    let b = Batch {
        messages: vec![msg("edge-1.a.1", "telemetry.cpu"), msg("edge-1.a.2", "x")],
    };
    let resp = h
        .handle(batch_req(&b, Encoding::Zstd), Some("edge-1"))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        body_json(resp).await,
        serde_json::json!({"accepted": 2, "duplicates": 0})
    );
    let got = sink.got.lock().unwrap();
    assert_eq!(got[0].subject, "uplink.edge-1.telemetry.cpu");
    assert_eq!(got[0].id, "edge-1.a.1");
    assert_eq!(got[0].headers.get("h").unwrap().as_str(), "v");
    assert_eq!(got[0].headers.get(TIME_HEADER).unwrap().as_str(), "9");
    assert_eq!(got[1].subject, "uplink.edge-1.x");
}

#[tokio::test]
async fn bad_requests_get_json_errors_and_publish_nothing() {
    let sink = Arc::new(FakeSink::default());
    let h = handler(sink.clone());
    let cases: Vec<(Request<Full<Bytes>>, StatusCode, &str)> = vec![
        (
            Request::post("/v1/batches")
                .header("content-type", wire::CONTENT_TYPE_PROTOBUF)
                .body(Full::new(Bytes::from_static(b"\xff\xff\xff")))
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "not a valid uplink.v1.Batch",
        ),
        (
            Request::post("/v1/batches")
                .header("content-type", wire::CONTENT_TYPE_PROTOBUF)
                .header("content-encoding", "br")
                .body(Full::new(Bytes::new()))
                .unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "br",
        ),
        (
            Request::post("/v1/batches")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::new()))
                .unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "application/json",
        ),
        (
            Request::post("/v1/publish/a.b")
                .body(Full::new(Bytes::from(vec![0u8; 5000])))
                .unwrap(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "max_body_bytes",
        ),
        (
            batch_req(
                &Batch {
                    messages: vec![msg("edge-1.1", "a.*")],
                },
                Encoding::Identity,
            ),
            StatusCode::BAD_REQUEST,
            "message 0: invalid subject \"a.*\"",
        ),
        (
            batch_req(
                &Batch {
                    messages: vec![msg("edge-1.1", "ok"), msg("edge-1.2", "a..b")],
                },
                Encoding::Gzip,
            ),
            StatusCode::BAD_REQUEST,
            "message 1",
        ),
        (
            batch_req(
                &Batch {
                    messages: vec![msg("edge-1.1", "a"); 4],
                },
                Encoding::Identity,
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "4 messages",
        ),
        (
            batch_req(
                &Batch {
                    messages: vec![msg("", "a")],
                },
                Encoding::Identity,
            ),
            StatusCode::BAD_REQUEST,
            "message id",
        ),
        (
            batch_req(
                &Batch {
                    messages: vec![msg("other.1", "a")],
                },
                Encoding::Identity,
            ),
            StatusCode::BAD_REQUEST,
            "must start with \"edge-1.\"",
        ),
        (
            Request::post("/v1/publish/a.*")
                .body(Full::new(Bytes::new()))
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "wildcards",
        ),
        (
            Request::get("/v1/batches")
                .body(Full::new(Bytes::new()))
                .unwrap(),
            StatusCode::METHOD_NOT_ALLOWED,
            "only POST",
        ),
        (
            Request::post("/nope")
                .body(Full::new(Bytes::new()))
                .unwrap(),
            StatusCode::NOT_FOUND,
            "/nope",
        ),
    ];
    for (req, status, needle) in cases {
        let resp = h.handle(req, Some("edge-1")).await;
        assert_eq!(resp.status(), status, "{needle}");
        let v = body_json(resp).await;
        let detail = v["detail"].as_str().unwrap();
        assert!(detail.contains(needle), "{detail:?} lacks {needle:?}");
        assert!(v["error"].is_string());
    }
    // A non-ASCII header name must be refused, not panic on a char boundary.
    let mut odd = msg("p.1", "a");
    odd.headers.insert("abcé".into(), "v".into());
    let resp = h
        .handle(
            batch_req(
                &Batch {
                    messages: vec![odd],
                },
                Encoding::Identity,
            ),
            Some("p"),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let mut nats_header = msg("p.1", "a");
    nats_header
        .headers
        .insert("Nats-Expected-Stream".into(), "X".into());
    let resp = h
        .handle(
            batch_req(
                &Batch {
                    messages: vec![nats_header],
                },
                Encoding::Identity,
            ),
            Some("p"),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(sink.got.lock().unwrap().is_empty());
}

#[tokio::test]
async fn compression_bomb_is_413() {
    let h = handler(Arc::new(FakeSink::default()));
    let mut m = msg("1", "a");
    m.payload = Bytes::from(vec![7u8; 100_000]);
    let resp = h
        .handle(
            batch_req(&Batch { messages: vec![m] }, Encoding::Zstd),
            Some("p"),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn publish_uses_idempotency_key() {
    let sink = Arc::new(FakeSink::default());
    let h = handler(sink.clone());
    let req = Request::post("/v1/publish/metrics.temp")
        .header("idempotency-key", "key-1")
        .body(Full::new(Bytes::from_static(b"21.5")))
        .unwrap();
    assert_eq!(h.handle(req, Some("p")).await.status(), StatusCode::OK);
    let got = sink.got.lock().unwrap();
    assert_eq!(
        (got[0].id.as_str(), got[0].subject.as_str()),
        ("p.key-1", "uplink.p.metrics.temp")
    );
    assert_eq!(&got[0].payload[..], b"21.5");
}

#[tokio::test]
async fn unavailable_sink_is_503_with_retry_after() {
    let h = handler(Arc::new(FakeSink {
        down: true,
        ..Default::default()
    }));
    let resp = h
        .handle(
            batch_req(
                &Batch {
                    messages: vec![msg("p.1", "a")],
                },
                Encoding::Identity,
            ),
            Some("p"),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
}

#[tokio::test]
async fn no_identity_is_403() {
    let h = handler(Arc::new(FakeSink::default()));
    let resp = h
        .handle(
            batch_req(
                &Batch {
                    messages: vec![msg("1", "a")],
                },
                Encoding::Identity,
            ),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn decoding_beyond_the_memory_bound_is_503_not_a_wait() {
    let sink = Arc::new(FakeSink::default());
    // Room for a body but not for what it decodes to.
    let h = handler_with_memory(sink.clone(), 5000);
    let mut m = msg("p.1", "a");
    m.payload = Bytes::from(vec![1u8; 6000]);
    let resp = h
        .handle(
            batch_req(
                &Batch {
                    messages: vec![m.clone()],
                },
                Encoding::Zstd,
            ),
            Some("p"),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body_json(resp).await["error"], "busy");
    assert!(sink.got.lock().unwrap().is_empty());
    // Memory is given back: a small request goes through afterwards.
    let resp = h
        .handle(
            batch_req(
                &Batch {
                    messages: vec![msg("p.2", "a")],
                },
                Encoding::Zstd,
            ),
            Some("p"),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
}
