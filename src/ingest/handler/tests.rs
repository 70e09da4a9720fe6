use std::sync::Mutex;

use futures_util::future::BoxFuture;

use super::*;
use http_body_util::Full;

use crate::ingest::sink::{Outcome, SinkError};
use crate::wire::{Batch, Message};

/// Records what would be persisted; `down` makes it fail like a disconnected JetStream.
#[derive(Default)]
struct FakeSink {
    got: Mutex<Vec<OutMessage>>,
    down: bool,
    /// `max_message_bytes` (0 = no limit).
    max: usize,
}

impl Sink for FakeSink {
    fn publish(
        &self,
        messages: Vec<OutMessage>,
        _first_send: bool,
    ) -> BoxFuture<'_, Result<Outcome, SinkError>> {
        Box::pin(async move {
            if self.down {
                return Err(SinkError::NotReady("JetStream is not connected".into()));
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
    fn max_message_bytes(&self) -> usize {
        if self.max == 0 { usize::MAX } else { self.max }
    }
}

fn handler(sink: Arc<FakeSink>) -> Handler {
    handler_with_memory(sink, 1 << 20)
}

fn handler_with_memory(sink: Arc<FakeSink>, max_inflight_bytes: usize) -> Handler {
    let limits = IngestLimits {
        max_body_bytes: 4096,
        max_decoded_bytes: 8192,
        max_inflight_bytes,
        max_inflight_bytes_per_connection: max_inflight_bytes,
        max_inflight_bytes_per_platform: max_inflight_bytes,
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
        multi_headers: Vec::new(),
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
        .handle_alone(batch_req(&b, Encoding::Zstd), Some("edge-1"))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        body_json(resp).await,
        serde_json::json!({"accepted": 2, "duplicates": 0})
    );
    let got = sink.got.lock().unwrap();
    assert_eq!(got[0].subject, "uplink.edge-1.telemetry.cpu");
    assert_eq!(got[0].id, "edge-1.a.1");
    assert_eq!(got[0].headers.get("h").unwrap(), "v");
    assert_eq!(got[0].headers.get(TIME_HEADER).unwrap(), "9");
    assert_eq!(got[1].subject, "uplink.edge-1.x");
}

/// A message the cloud server can never store (over its `max_payload` once the ingest's
/// headers are added) is a verdict on content, found before anything is published — not a
/// 503 that every retry would meet again.
#[tokio::test]
async fn a_message_over_the_clouds_max_payload_is_413_and_nothing_is_published() {
    let small = msg("edge-1.a.1", "x");
    let mut big = msg("edge-1.a.2", "x");
    big.payload = Bytes::from(vec![7u8; 3000]);
    let out = |m: &Message| {
        handler(Arc::new(FakeSink::default()))
            .out_message("edge-1", m.clone())
            .unwrap()
    };
    // The size NATS counts: payload + the whole header block, Nats-Msg-Id included.
    let o = out(&small);
    let block = "NATS/1.0\r\n".len()
        + "h: v\r\n".len()
        + format!("{TIME_HEADER}: 9\r\n").len()
        + "Nats-Msg-Id: edge-1.a.1\r\n".len()
        + "\r\n".len();
    assert_eq!(o.nats_size(), block + 1);
    let max = out(&big).nats_size() - 1;
    let sink = Arc::new(FakeSink {
        max,
        ..Default::default()
    });
    let h = handler(sink.clone());
    let b = Batch {
        messages: vec![small.clone(), big],
    };
    let resp = h
        .handle_alone(batch_req(&b, Encoding::Zstd), Some("edge-1"))
        .await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body = body_json(resp).await;
    assert_eq!(body["error"], "too_large");
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.starts_with("message 1: "), "{detail}");
    assert!(
        detail.contains(&format!("max_payload is {max}")),
        "{detail}"
    );
    assert!(sink.got.lock().unwrap().is_empty());
    // At the limit exactly, it passes.
    let sink = Arc::new(FakeSink {
        max: max + 1,
        ..Default::default()
    });
    let b = Batch {
        messages: vec![small, msg("edge-1.a.3", "x")],
    };
    let mut b2 = b.clone();
    b2.messages[1].payload = Bytes::from(vec![7u8; 3000]);
    b2.messages[1].id = "edge-1.a.2".into();
    let resp = handler(sink.clone())
        .handle_alone(batch_req(&b2, Encoding::Zstd), Some("edge-1"))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(sink.got.lock().unwrap().len(), 2);
}

/// The platform travels in the cloud subject; the header saying it again is stamped only where
/// `nats.platform_header` asks for it, and the edge time always.
#[test]
fn the_platform_header_only_where_asked_and_the_subject_always() {
    let m = msg("edge-1.a.1", "x");
    let plain = handler(Arc::new(FakeSink::default()))
        .out_message("edge-1", m.clone())
        .unwrap();
    assert_eq!(plain.subject, "uplink.edge-1.x");
    assert_eq!(plain.headers.get(PLATFORM_HEADER), None);
    assert_eq!(plain.headers.get(TIME_HEADER), Some("9"));
    let stamped = handler(Arc::new(FakeSink::default()))
        .with_platform_header(true)
        .out_message("edge-1", m)
        .unwrap();
    assert_eq!(stamped.subject, "uplink.edge-1.x");
    assert_eq!(stamped.headers.get(PLATFORM_HEADER), Some("edge-1"));
    assert_eq!(stamped.headers.get(TIME_HEADER), Some("9"));
    assert_eq!(
        stamped.nats_size() - plain.nats_size(),
        format!("{PLATFORM_HEADER}: edge-1\r\n").len()
    );
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
            "more than 3 messages",
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
        let resp = h.handle_alone(req, Some("edge-1")).await;
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
        .handle_alone(
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
        .handle_alone(
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
        .handle_alone(
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
    assert_eq!(
        h.handle_alone(req, Some("p")).await.status(),
        StatusCode::OK
    );
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
        .handle_alone(
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
        .handle_alone(
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

fn big_batch(id: &str) -> Request<Full<Bytes>> {
    let mut m = msg(id, "a");
    m.payload = Bytes::from(vec![1u8; 6000]);
    batch_req(&Batch { messages: vec![m] }, Encoding::Zstd)
}

#[tokio::test(start_paused = true)]
async fn a_full_budget_makes_requests_wait_until_their_deadline_then_503() {
    let sink = Arc::new(FakeSink::default());
    let h = handler_with_memory(sink.clone(), 1 << 20);
    // Another platform's requests hold nearly all of it.
    let mut other = h.budget.hold(h.connection_account(), "other");
    other.grow((1 << 20) - 1000, Instant::now()).await.unwrap();
    let started = Instant::now();
    let resp = h.handle_alone(big_batch("p.1"), Some("p")).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(5),
        "waited exactly until timeouts.request_body"
    );
    assert_eq!(body_json(resp).await["error"], "busy");
    assert!(sink.got.lock().unwrap().is_empty());
    assert_eq!(
        h.inflight_bytes(),
        (1 << 20) - 1000,
        "the refused request holds nothing"
    );
    // Room given back: the same request goes through.
    drop(other);
    let resp = h.handle_alone(big_batch("p.1"), Some("p")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        h.inflight_bytes(),
        0,
        "everything is given back after a request"
    );
}

#[tokio::test]
async fn a_request_larger_than_the_budget_is_413_not_503() {
    let sink = Arc::new(FakeSink::default());
    let h = handler_with_memory(sink.clone(), 5000);
    let resp = h.handle_alone(big_batch("p.1"), Some("p")).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let v = body_json(resp).await;
    assert_eq!(v["error"], "too_large");
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("limits.max_inflight_bytes"),
        "{v}"
    );
    assert!(sink.got.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_connection_over_its_share_gets_503_at_once_while_others_pass() {
    let sink = Arc::new(FakeSink::default());
    let mut limits = IngestLimits {
        max_body_bytes: 4096,
        max_decoded_bytes: 8192,
        max_inflight_bytes: 4 << 20,
        max_inflight_bytes_per_connection: 1 << 20,
        max_inflight_bytes_per_platform: 4 << 20,
        max_messages_per_batch: 3,
        ..IngestLimits::default()
    };
    limits.max_connections = 10;
    let h = Handler::new(
        sink.clone(),
        "uplink".into(),
        limits,
        Duration::from_secs(5),
    );
    let hog = h.connection_account();
    let mut held = h.budget.hold(hog.clone(), "p");
    held.grow((1 << 20) - 1000, Instant::now()).await.unwrap();
    let started = std::time::Instant::now();
    let resp = h.handle(big_batch("p.1"), Some("p"), &hog).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once, not after waiting"
    );
    let detail = body_json(resp).await["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        detail.contains("max_inflight_bytes_per_connection"),
        "{detail}"
    );
    // The same platform on another connection is served.
    let resp = h.handle_alone(big_batch("p.2"), Some("p")).await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_bomb_of_empty_messages_is_refused_by_count_before_it_is_expanded() {
    let sink = Arc::new(FakeSink::default());
    let h = handler(sink.clone());
    // 256 K empty messages: 512 KiB decoded (the limit is 8 KiB), a KiB compressed.
    let raw: Vec<u8> = std::iter::repeat_n([0x0a, 0x00], 256 << 10)
        .flatten()
        .collect();
    // Streamed, as an attacker would: the frame declares no size (and uses a window the
    // 8 KiB limit allows).
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    enc.window_log(12).unwrap();
    std::io::Write::write_all(&mut enc, &raw).unwrap();
    let body = enc.finish().unwrap();
    assert!(body.len() < 4096, "{}", body.len());
    let req = Request::post("/v1/batches")
        .header("content-type", wire::CONTENT_TYPE_PROTOBUF)
        .header("content-encoding", "zstd")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = h.handle_alone(req, Some("p")).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // The count limit (3) fired, not the decoded-size limit (8 KiB): decoding stopped after
    // the first few messages.
    assert_eq!(body_json(resp).await["error"], "too_many_messages");
    assert!(sink.got.lock().unwrap().is_empty());
    assert_eq!(h.inflight_bytes(), 0);
}

#[tokio::test]
async fn the_ingest_namespaces_are_refused_in_any_case() {
    let sink = Arc::new(FakeSink::default());
    let h = handler(sink.clone());
    for name in [
        "uplink-platform",
        "UPLINK-PLATFORM",
        "Uplink-Time-Unix-Nano",
        "nats-msg-id",
    ] {
        let mut m = msg("edge-1.1", "a");
        m.headers.insert(name.into(), "edge-2".into());
        let resp = h
            .handle_alone(
                batch_req(&Batch { messages: vec![m] }, Encoding::Identity),
                Some("edge-1"),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{name}");
        let v = body_json(resp).await;
        assert_eq!(v["error"], "bad_header", "{name}");
        assert!(v["detail"].as_str().unwrap().contains(name), "{v}");
    }
    assert!(sink.got.lock().unwrap().is_empty());
}

#[tokio::test]
async fn publish_subjects_are_percent_decoded_then_checked() {
    let sink = Arc::new(FakeSink::default());
    let h = handler(sink.clone());
    let post = |path: &str| {
        Request::post(path)
            .body(Full::new(Bytes::from_static(b"1")))
            .unwrap()
    };
    let resp = h.handle_alone(post("/v1/publish/a.%3E"), Some("p")).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let v = body_json(resp).await;
    assert_eq!(v["error"], "bad_subject");
    assert!(v["detail"].as_str().unwrap().contains("wildcards"), "{v}");
    for bad in [
        "/v1/publish/a%2",
        "/v1/publish/a%zz",
        "/v1/publish/a%+1",
        "/v1/publish/a%ff",
    ] {
        let resp = h.handle_alone(post(bad), Some("p")).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    let resp = h
        .handle_alone(post("/v1/publish/room%2D1.temp"), Some("p"))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(sink.got.lock().unwrap()[0].subject, "uplink.p.room-1.temp");
}

mod fuzz {
    //! The whole handler on arbitrary bodies (bounded: 256 cases): it never panics, answers 200
    //! or the ingest's JSON error, and publishes exactly what it confirms.

    use proptest::prelude::*;

    use super::*;

    fn body() -> impl Strategy<Value = (Vec<u8>, Encoding)> {
        let raw = prop_oneof![
            prop::collection::vec(any::<u8>(), 0..512),
            prop::collection::vec(("[a-z.]{0,6}", "[a-z.*>]{0,8}", "[A-Za-z-]{0,8}"), 0..5)
                .prop_map(|ms| {
                    Batch {
                        messages: ms
                            .into_iter()
                            .enumerate()
                            .map(|(i, (id, subject, header))| Message {
                                id: if id.is_empty() { format!("p.{i}") } else { id },
                                subject,
                                payload: Bytes::from_static(b"x"),
                                headers: [(header, "v".to_string())].into(),
                                time_unix_nano: 1,
                                multi_headers: Vec::new(),
                            })
                            .collect(),
                    }
                    .encode_to_vec()
                }),
        ];
        (
            raw,
            prop_oneof![
                Just(Encoding::Identity),
                Just(Encoding::Gzip),
                Just(Encoding::Zstd)
            ],
            any::<bool>(),
        )
            .prop_map(|(raw, enc, compress)| {
                if compress {
                    (
                        wire::encode_batch(&Batch::decode(&raw[..]).unwrap_or_default(), enc, 1)
                            .unwrap()
                            .to_vec(),
                        enc,
                    )
                } else {
                    (raw, enc)
                }
            })
    }

    /// Bytes that are not a protobuf `Batch` (prost refuses them), in a well-formed gzip or
    /// zstd frame: the decompression succeeds and only the decoding can refuse them.
    fn compressed_garbage() -> impl Strategy<Value = (Vec<u8>, Encoding)> {
        use std::io::Write as _;
        let garbage = prop::collection::vec(any::<u8>(), 1..512)
            .prop_filter("not a valid batch", |raw| Batch::decode(&raw[..]).is_err());
        (
            garbage,
            prop_oneof![Just(Encoding::Gzip), Just(Encoding::Zstd)],
        )
            .prop_map(|(raw, enc)| {
                let body = match enc {
                    Encoding::Gzip => {
                        let mut e = flate2::write::GzEncoder::new(
                            Vec::new(),
                            flate2::Compression::default(),
                        );
                        e.write_all(&raw).unwrap();
                        e.finish().unwrap()
                    }
                    _ => zstd::bulk::compress(&raw, 3).unwrap(),
                };
                // Well-formed: the frame gives back exactly the garbage.
                assert_eq!(
                    &wire::decompress(&body, enc, 1 << 20).unwrap()[..],
                    &raw[..]
                );
                (body, enc)
            })
    }

    proptest! {
        #![proptest_config(crate::proptest_config::bounded(256))]

        /// A valid compressed frame around an invalid batch is refused clearly: 400
        /// `malformed`, nothing published, nothing held.
        #[test]
        fn a_valid_frame_around_an_invalid_batch_is_refused_as_malformed((body, enc) in compressed_garbage()) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let sink = Arc::new(FakeSink::default());
            let h = handler(sink.clone());
            let req = Request::post("/v1/batches")
                .header("content-type", wire::CONTENT_TYPE_PROTOBUF)
                .header("content-encoding", enc.as_str())
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            let resp = rt.block_on(h.handle_alone(req, Some("p")));
            let status = resp.status().as_u16();
            let answer = rt.block_on(resp.into_body().collect()).unwrap().to_bytes();
            let e = wire::ErrorAnswer::parse(&answer);
            prop_assert_eq!(status, 400, "{:?}", e);
            prop_assert_eq!(e.map(|e| e.error), Some(wire::ErrorCode::Malformed));
            prop_assert_eq!(sink.got.lock().unwrap().len(), 0);
            prop_assert_eq!(h.inflight_bytes(), 0);
        }
    }

    proptest! {
        #![proptest_config(crate::proptest_config::bounded(256))]

        #[test]
        fn any_body_gets_an_answer_and_only_confirmed_messages_are_published((raw, enc) in body()) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let sink = Arc::new(FakeSink::default());
            let h = handler(sink.clone());
            let req = Request::post("/v1/batches")
                .header("content-type", wire::CONTENT_TYPE_PROTOBUF)
                .header("content-encoding", enc.as_str())
                .body(Full::new(Bytes::from(raw)))
                .unwrap();
            let resp = rt.block_on(h.handle_alone(req, Some("p")));
            let status = resp.status().as_u16();
            let body = rt.block_on(resp.into_body().collect()).unwrap().to_bytes();
            let published = sink.got.lock().unwrap().len();
            if status == 200 {
                let a = wire::Accepted::parse(&body).unwrap();
                prop_assert!(a.confirms(published));
            } else {
                prop_assert!(matches!(status, 400 | 413 | 415), "{status}");
                let e = wire::ErrorAnswer::parse(&body).unwrap();
                prop_assert!(e.error.is_verdict_on_content(), "{:?}", e.error);
                prop_assert_eq!(published, 0);
            }
            prop_assert_eq!(h.inflight_bytes(), 0);
        }
    }
}

#[tokio::test]
async fn multi_valued_headers_reach_the_cloud_with_every_value_and_the_rules_apply() {
    let sink = Arc::new(FakeSink::default());
    let h = handler(sink.clone());
    let mut m = msg("p.1", "a");
    m.set_headers([("Tag", vec!["x", "y"])]);
    let resp = h
        .handle_alone(
            batch_req(&Batch { messages: vec![m] }, Encoding::Identity),
            Some("p"),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let got = sink.got.lock().unwrap()[0].headers.clone();
    let tags: Vec<&str> = got.get_all("Tag").collect();
    assert_eq!(tags, ["x", "y"]);
    // The namespaces are the ingest's in the repeated form too.
    let mut m = msg("p.2", "a");
    m.set_headers([("uplink-platform", vec!["q", "r"])]);
    let resp = h
        .handle_alone(
            batch_req(&Batch { messages: vec![m] }, Encoding::Identity),
            Some("p"),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(sink.got.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_body_that_stops_arriving_is_408_at_timeouts_request_body() {
    use futures_util::StreamExt as _;
    let sink = Arc::new(FakeSink::default());
    let h = handler(sink.clone());
    // One chunk, then nothing for ever (a slow-loris client).
    let chunks = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(
        http_body::Frame::data(Bytes::from_static(b"21")),
    )])
    .chain(futures_util::stream::pending());
    let req = Request::post("/v1/publish/slow")
        .body(http_body_util::StreamBody::new(chunks))
        .unwrap();
    let started = Instant::now();
    let resp = h.handle_alone(req, Some("p")).await;
    assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT);
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(5),
        "timeouts.request_body"
    );
    assert_eq!(body_json(resp).await["error"], "body_timeout");
    assert!(sink.got.lock().unwrap().is_empty());
    assert_eq!(h.inflight_bytes(), 0, "what arrived is given back");
}
