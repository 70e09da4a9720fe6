//! Tests of the frame tap: the parser on hand-built frames split at every byte boundary, the tap
//! over `tokio::io::duplex` (pass-through, vectored writes, PING RTT, metrics), and a real hyper
//! HTTP/2 exchange through it.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::IoSlice;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use metrics::{
    Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;

/// Encodes one frame: the 9-byte header (RFC 9113 §4.1) and `payload`.
fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn settings(values: &[(u16, u32)]) -> Vec<u8> {
    let payload: Vec<u8> = values
        .iter()
        .flat_map(|&(id, v)| id.to_be_bytes().into_iter().chain(v.to_be_bytes()))
        .collect();
    frame(SETTINGS, 0, 0, &payload)
}

fn goaway(last_stream_id: u32, code: u32, debug: &[u8]) -> Vec<u8> {
    let mut p = last_stream_id.to_be_bytes().to_vec();
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(debug);
    frame(GOAWAY, 0, 0, &p)
}

fn header(length: u32, kind: u8, flags: u8, stream_id: u32) -> FrameHeader {
    FrameHeader {
        length,
        kind,
        flags,
        stream_id,
    }
}

fn recv(header: FrameHeader, detail: FrameDetail) -> Frame {
    Frame {
        dir: Direction::Recv,
        header,
        detail,
    }
}

/// What a server receives: the preface and one frame of every kind the tap details.
fn client_stream() -> (Vec<u8>, Vec<Frame>) {
    let mut bytes = PREFACE.to_vec();
    let mut frames = Vec::new();
    let mut add = |b: Vec<u8>, f: Frame| {
        bytes.extend_from_slice(&b);
        frames.push(f);
    };
    add(
        settings(&[(2, 0), (4, 1 << 20)]),
        recv(
            header(12, SETTINGS, 0, 0),
            FrameDetail::Settings {
                ack: false,
                values: vec![(2, 0), (4, 1 << 20)],
            },
        ),
    );
    add(
        frame(SETTINGS, FLAG_ACK, 0, &[]),
        recv(
            header(0, SETTINGS, FLAG_ACK, 0),
            FrameDetail::Settings {
                ack: true,
                values: vec![],
            },
        ),
    );
    add(
        frame(WINDOW_UPDATE, 0, 0, &983_041u32.to_be_bytes()),
        recv(
            header(4, WINDOW_UPDATE, 0, 0),
            FrameDetail::WindowUpdate { increment: 983_041 },
        ),
    );
    // A header block the tap does not decode; only END_STREAM matters.
    add(
        frame(
            HEADERS,
            FLAG_END_STREAM | FLAG_END_HEADERS,
            1,
            &[0x82, 0x86, 0x84],
        ),
        recv(
            header(3, HEADERS, 0x5, 1),
            FrameDetail::Headers { end_stream: true },
        ),
    );
    add(
        frame(HEADERS, FLAG_END_HEADERS, 3, &[0x83, 0x86, 0x84]),
        recv(
            header(3, HEADERS, 0x4, 3),
            FrameDetail::Headers { end_stream: false },
        ),
    );
    let body: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
    add(
        frame(DATA, FLAG_END_STREAM, 3, &body),
        recv(
            header(40_000, DATA, FLAG_END_STREAM, 3),
            FrameDetail::Data { end_stream: true },
        ),
    );
    add(
        frame(PING, 0, 0, &[0, 0, 0, 0, 0, 0, 0, 1]),
        recv(
            header(8, PING, 0, 0),
            FrameDetail::Ping {
                ack: false,
                data: [0, 0, 0, 0, 0, 0, 0, 1],
            },
        ),
    );
    add(
        frame(PING, FLAG_ACK, 0, &[9; 8]),
        recv(
            header(8, PING, FLAG_ACK, 0),
            FrameDetail::Ping {
                ack: true,
                data: [9; 8],
            },
        ),
    );
    add(
        frame(RST_STREAM, 0, 3, &7u32.to_be_bytes()),
        recv(
            header(4, RST_STREAM, 0, 3),
            FrameDetail::RstStream { error_code: 7 },
        ),
    );
    add(
        frame(0x2, 0, 5, &[0, 0, 0, 0, 16]),
        recv(header(5, 0x2, 0, 5), FrameDetail::Other),
    );
    add(
        goaway(1999, 0, b"bye"),
        recv(
            header(11, GOAWAY, 0, 0),
            FrameDetail::GoAway {
                last_stream_id: 1999,
                error_code: 0,
                debug: "bye".into(),
            },
        ),
    );
    (bytes, frames)
}

fn server_parser() -> Parser {
    Parser::new(Side::Server, Direction::Recv)
}

#[test]
fn parser_decodes_each_frame_kind() {
    let (bytes, want) = client_stream();
    let mut p = server_parser();
    assert_eq!(p.feed(&bytes), want);
    assert!(!p.is_stopped());
}

#[test]
fn parser_same_frames_at_every_split() {
    let (bytes, want) = client_stream();
    for at in 0..=bytes.len() {
        let mut p = server_parser();
        let mut got = p.feed(&bytes[..at]);
        got.extend(p.feed(&bytes[at..]));
        assert_eq!(got, want, "split at {at}");
    }
}

#[test]
fn parser_same_frames_in_small_chunks() {
    let (bytes, want) = client_stream();
    for size in [1, 2, 3, 7, 9, 10, 100, 4096] {
        let mut p = server_parser();
        let got: Vec<Frame> = bytes.chunks(size).flat_map(|c| p.feed(c)).collect();
        assert_eq!(got, want, "chunks of {size}");
    }
}

#[test]
fn parser_without_preface_on_server_to_client_direction() {
    let mut p = Parser::new(Side::Client, Direction::Recv);
    let mut bytes = settings(&[(3, 100)]);
    bytes.extend(frame(DATA, 0, 1, b"hello"));
    let got = p.feed(&bytes);
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].detail, FrameDetail::Data { end_stream: false });
    // The client's own preface is expected on its send side.
    let mut p = Parser::new(Side::Client, Direction::Send);
    assert!(p.feed(&bytes).is_empty());
    assert!(p.is_stopped());
}

#[test]
fn parser_stops_when_peer_is_not_http2() {
    // HTTP/1.1 where the client preface should be.
    let mut p = server_parser();
    assert!(p.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").is_empty());
    assert!(p.is_stopped());
    assert!(p.feed(&settings(&[])).is_empty());

    // A mismatch late in a split preface.
    let mut p = server_parser();
    assert!(p.feed(&PREFACE[..20]).is_empty());
    assert!(!p.is_stopped());
    assert!(p.feed(b"XX\r\n").is_empty());
    assert!(p.is_stopped());

    // An HTTP/1.1 response where the server's SETTINGS should be.
    let mut p = Parser::new(Side::Client, Direction::Recv);
    assert!(p.feed(b"HTTP/1.1 400 Bad Request\r\n\r\n").is_empty());
    assert!(p.is_stopped());

    // A valid preface followed by something other than SETTINGS.
    let mut p = server_parser();
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(PING, 0, 0, &[0; 8]));
    assert!(p.feed(&bytes).is_empty());
    assert!(p.is_stopped());
}

#[test]
fn parser_caps_what_it_keeps_and_skips_the_rest() {
    let many: Vec<(u16, u32)> = (0..100).map(|i| (0x100 + i, u32::from(i))).collect();
    let mut bytes = PREFACE.to_vec();
    bytes.extend(settings(&many));
    bytes.extend(goaway(7, 0xb, &[b'x'; 200]));
    // Malformed lengths: no detail, and the stream stays in sync.
    bytes.extend(frame(RST_STREAM, 0, 1, &[0, 0, 8]));
    bytes.extend(frame(PING, 0, 0, &[1; 9]));
    bytes.extend(frame(WINDOW_UPDATE, 0, 1, &[0, 0, 1]));
    bytes.extend(frame(0xff, 0xff, 9, &[1, 2, 3]));
    bytes.extend(frame(DATA, 0, 1, &[]));
    for size in [1, 5, 1000] {
        let mut p = server_parser();
        let got: Vec<Frame> = bytes.chunks(size).flat_map(|c| p.feed(c)).collect();
        let details: Vec<&FrameDetail> = got.iter().map(|f| &f.detail).collect();
        assert_eq!(details.len(), 7);
        match details[0] {
            FrameDetail::Settings { values, .. } => assert_eq!(values[..], many[..64]),
            d => panic!("{d:?}"),
        }
        assert_eq!(
            details[1],
            &FrameDetail::GoAway {
                last_stream_id: 7,
                error_code: 0xb,
                debug: "x".repeat(64)
            }
        );
        assert!(details[2..6].iter().all(|d| **d == FrameDetail::Other));
        assert_eq!(got[5].header, header(3, 0xff, 0xff, 9));
        assert_eq!(details[6], &FrameDetail::Data { end_stream: false });
    }
}

#[test]
fn names() {
    assert_eq!(error_code_name(0), "NO_ERROR");
    assert_eq!(error_code_name(1), "PROTOCOL_ERROR");
    assert_eq!(error_code_name(7), "REFUSED_STREAM");
    assert_eq!(error_code_name(0xb), "ENHANCE_YOUR_CALM");
    assert_eq!(error_code_name(0xd), "HTTP_1_1_REQUIRED");
    assert_eq!(error_code_name(0xe), "0xe");
    assert_eq!(error_code_name(0xdead), "0xdead");
    assert_eq!(frame_type_name(0), "DATA");
    assert_eq!(frame_type_name(3), "RST_STREAM");
    assert_eq!(frame_type_name(8), "WINDOW_UPDATE");
    assert_eq!(frame_type_name(9), "CONTINUATION");
    assert_eq!(frame_type_name(0xa), "UNKNOWN_0xa");
    assert_eq!(frame_type_name(0xff), "UNKNOWN_0xff");
}

#[test]
fn trace_env_values() {
    assert!(trace_enabled(Some("1")));
    assert!(trace_enabled(Some("true")));
    assert!(trace_enabled(Some("TRUE")));
    assert!(!trace_enabled(Some("0")));
    assert!(!trace_enabled(Some("")));
    assert!(!trace_enabled(None));
}

#[test]
fn display_lines() {
    let mut p = Parser::new(Side::Client, Direction::Send);
    let mut bytes = PREFACE.to_vec();
    bytes.extend(settings(&[(3, 128), (4, 65535), (0x9, 1)]));
    bytes.extend(frame(WINDOW_UPDATE, 0, 3, &65535u32.to_be_bytes()));
    bytes.extend(frame(
        HEADERS,
        FLAG_END_STREAM | FLAG_END_HEADERS,
        1,
        &[1, 2, 3],
    ));
    bytes.extend(frame(0xff, 0, 0, &[]));
    let lines: Vec<String> = p.feed(&bytes).iter().map(Frame::to_string).collect();
    assert_eq!(
        lines,
        [
            "send SETTINGS flags=0x0 stream=0 len=18 MAX_CONCURRENT_STREAMS=128 \
             INITIAL_WINDOW_SIZE=65535 0x9=1",
            "send WINDOW_UPDATE flags=0x0 stream=3 len=4 increment=65535",
            "send HEADERS flags=0x5 (END_STREAM|END_HEADERS) stream=1 len=3",
            "send UNKNOWN_0xff flags=0x0 stream=0 len=0",
        ]
    );

    let mut p = Parser::new(Side::Client, Direction::Recv);
    let mut bytes = settings(&[]);
    bytes.extend(frame(SETTINGS, FLAG_ACK, 0, &[]));
    bytes.extend(goaway(1999, 0, b""));
    bytes.extend(goaway(1999, 0xb, b"bye"));
    bytes.extend(frame(PING, FLAG_ACK, 0, &1u64.to_be_bytes()));
    bytes.extend(frame(RST_STREAM, 0, 3, &7u32.to_be_bytes()));
    let lines: Vec<String> = p.feed(&bytes).iter().map(Frame::to_string).collect();
    assert_eq!(
        lines,
        [
            "recv SETTINGS flags=0x0 stream=0 len=0",
            "recv SETTINGS flags=0x1 (ACK) stream=0 len=0",
            "recv GOAWAY flags=0x0 stream=0 len=8 last_stream_id=1999 error=NO_ERROR",
            "recv GOAWAY flags=0x0 stream=0 len=11 last_stream_id=1999 error=ENHANCE_YOUR_CALM \
             debug=\"bye\"",
            "recv PING flags=0x1 (ACK) stream=0 len=8 data=0000000000000001",
            "recv RST_STREAM flags=0x0 stream=3 len=4 error=REFUSED_STREAM",
        ]
    );
}

fn client_tap(io: DuplexStream) -> Tap<DuplexStream> {
    let cfg = TapConfig {
        conn_id: 1,
        side: Side::Client,
        trace: true,
    };
    Tap::new(io, cfg, Arc::new(ConnInfo::default()))
}

/// Bytes a client sends: preface, SETTINGS, two requests (one with a body), a WINDOW_UPDATE.
fn client_bytes() -> Vec<u8> {
    let mut b = PREFACE.to_vec();
    b.extend(settings(&[(2, 0)]));
    b.extend(frame(
        HEADERS,
        FLAG_END_STREAM | FLAG_END_HEADERS,
        1,
        &[0x82],
    ));
    b.extend(frame(HEADERS, FLAG_END_HEADERS, 3, &[0x83]));
    b.extend(frame(DATA, FLAG_END_STREAM, 3, &[7; 40_000]));
    // Trailers-like HEADERS on an open stream: not a new stream.
    b.extend(frame(HEADERS, FLAG_END_HEADERS, 3, &[0x83]));
    b.extend(frame(WINDOW_UPDATE, 0, 0, &1000u32.to_be_bytes()));
    b
}

/// Bytes a server sends: SETTINGS, a response, GOAWAYs, a refused stream.
fn server_bytes() -> Vec<u8> {
    let mut b = settings(&[(3, 100), (4, 65535)]);
    b.extend(settings(&[(3, 50)]));
    b.extend(frame(HEADERS, FLAG_END_HEADERS, 1, &[0x88]));
    b.extend(frame(DATA, FLAG_END_STREAM, 1, &[1; 20_000]));
    b.extend(goaway(u32::MAX >> 1, 0, b""));
    b.extend(frame(RST_STREAM, 0, 3, &7u32.to_be_bytes()));
    b.extend(goaway(1, 0, b"bye"));
    b
}

#[tokio::test]
async fn tap_passes_bytes_unchanged_both_ways() {
    let (a, mut peer) = tokio::io::duplex(4096);
    let mut tap = client_tap(a);
    let info = tap.info().clone();
    let (sent, served) = (client_bytes(), server_bytes());

    // Writes through the tap arrive unchanged.
    let mut got = vec![0; sent.len()];
    let (w, r) = tokio::join!(tap.write_all(&sent), peer.read_exact(&mut got));
    w.unwrap();
    r.unwrap();
    assert!(got == sent);

    // Reads through the tap return what the peer wrote.
    let mut got = vec![0; served.len()];
    let (w, r) = tokio::join!(peer.write_all(&served), tap.read_exact(&mut got));
    w.unwrap();
    r.unwrap();
    assert!(got == served);

    assert_eq!(info.frames(Direction::Send), 6);
    assert_eq!(info.frames(Direction::Recv), 7);
    assert_eq!(info.streams_opened(), 2);
    assert_eq!(info.highest_stream_id_sent(), 3);
    assert_eq!(info.remote_settings(), [(3, 50), (4, 65535)]);
    assert_eq!(info.remote_max_concurrent_streams(), Some(50));
    assert_eq!(
        info.goaway_received(),
        Some(GoAwayInfo {
            last_stream_id: u32::MAX >> 1,
            error_code: 0
        })
    );
    assert_eq!(
        info.last_goaway_received(),
        Some(GoAwayInfo {
            last_stream_id: 1,
            error_code: 0
        })
    );
    assert_eq!(info.goaway_sent(), None);
    assert_eq!(info.last_ping_rtt(), None);
}

#[tokio::test]
async fn tap_parses_only_what_a_vectored_write_wrote() {
    // A tiny duplex buffer makes the inner IO take part of the slices on each call.
    let (a, mut peer) = tokio::io::duplex(100);
    let mut tap = client_tap(a);
    let info = tap.info().clone();
    assert!(tap.is_write_vectored());
    let sent = client_bytes();

    let write = async {
        let mut at = 0;
        while at < sent.len() {
            let slices: Vec<IoSlice<'_>> = sent[at..].chunks(7).map(IoSlice::new).collect();
            let n = tap.write_vectored(&slices).await.unwrap();
            assert!(n > 0 && n <= 100);
            at += n;
        }
        tap.flush().await.unwrap();
    };
    let mut got = vec![0; sent.len()];
    let (_, r) = tokio::join!(write, peer.read_exact(&mut got));
    r.unwrap();
    assert!(got == sent);
    assert_eq!(info.frames(Direction::Send), 6);
    assert_eq!(info.streams_opened(), 2);
}

#[tokio::test]
async fn tap_stops_quietly_on_http1() {
    let (a, mut peer) = tokio::io::duplex(4096);
    let cfg = TapConfig {
        conn_id: 2,
        side: Side::Server,
        trace: false,
    };
    let mut tap = Tap::new(a, cfg, Arc::new(ConnInfo::default()));
    let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    peer.write_all(req).await.unwrap();
    let mut got = vec![0; req.len()];
    tap.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, req);
    let resp = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
    tap.write_all(resp).await.unwrap();
    let mut got = vec![0; resp.len()];
    peer.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, resp);
    assert_eq!(tap.info().frames(Direction::Recv), 0);
    assert_eq!(tap.info().frames(Direction::Send), 0);
}

/// Records counters and histograms by `name{label=value,...}` (labels sorted).
#[derive(Default)]
struct TestRecorder {
    counters: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
    histograms: Mutex<BTreeMap<String, Arc<Samples>>>,
}

#[derive(Default)]
struct Samples(Mutex<Vec<f64>>);

impl HistogramFn for Samples {
    fn record(&self, value: f64) {
        self.0.lock().unwrap().push(value);
    }
}

fn key_string(key: &Key) -> String {
    let mut labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    labels.sort();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

impl TestRecorder {
    fn counter(&self, key: &str) -> u64 {
        self.counters
            .lock()
            .unwrap()
            .get(key)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    fn samples(&self, key: &str) -> Vec<f64> {
        self.histograms
            .lock()
            .unwrap()
            .get(key)
            .map_or_else(Vec::new, |h| h.0.lock().unwrap().clone())
    }
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut counters = self.counters.lock().unwrap();
        Counter::from_arc(counters.entry(key_string(key)).or_default().clone())
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let mut histograms = self.histograms.lock().unwrap();
        Histogram::from_arc(histograms.entry(key_string(key)).or_default().clone())
    }
}

#[tokio::test(start_paused = true)]
async fn tap_measures_ping_rtt_and_records_metrics() {
    // Current-thread runtime: the tap is polled on this thread, where the recorder is set.
    let recorder = TestRecorder::default();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let (a, mut peer) = tokio::io::duplex(1 << 20);
    let mut tap = client_tap(a);
    let info = tap.info().clone();

    let mut sent = PREFACE.to_vec();
    sent.extend(settings(&[]));
    sent.extend(frame(PING, 0, 0, b"rtt-ping"));
    sent.extend(frame(PING, 0, 0, b"lost-png"));
    sent.extend(frame(RST_STREAM, 0, 1, &8u32.to_be_bytes()));
    sent.extend(goaway(0, 2, b"oops"));
    tap.write_all(&sent).await.unwrap();

    tokio::time::advance(Duration::from_millis(30)).await;
    let mut served = settings(&[(3, 10)]);
    // The peer's own PING, and an ACK of data we never sent: neither is a round trip.
    served.extend(frame(PING, 0, 0, b"peerping"));
    served.extend(frame(PING, FLAG_ACK, 0, b"unknown!"));
    served.extend(frame(DATA, 0, 1, &[0; 16_384]));
    served.extend(frame(DATA, FLAG_END_STREAM, 1, &[0; 100]));
    served.extend(frame(PING, FLAG_ACK, 0, b"rtt-ping"));
    peer.write_all(&served).await.unwrap();
    let mut got = vec![0; served.len()];
    tap.read_exact(&mut got).await.unwrap();

    assert_eq!(info.last_ping_rtt(), Some(Duration::from_millis(30)));
    assert_eq!(
        info.goaway_sent(),
        Some(GoAwayInfo {
            last_stream_id: 0,
            error_code: 2
        })
    );
    let frames = |dir: &str, kind: &str| {
        recorder.counter(&format!(
            "uplink_h2_frames_total{{dir={dir},side=client,type={kind}}}"
        ))
    };
    assert_eq!(frames("send", "SETTINGS"), 1);
    assert_eq!(frames("send", "PING"), 2);
    assert_eq!(frames("recv", "PING"), 3);
    assert_eq!(frames("recv", "DATA"), 2);
    assert_eq!(frames("recv", "SETTINGS"), 1);
    assert_eq!(
        recorder.counter("uplink_h2_goaway_total{code=INTERNAL_ERROR,dir=send,side=client}"),
        1
    );
    assert_eq!(
        recorder.counter("uplink_h2_rst_stream_total{code=CANCEL,dir=send,side=client}"),
        1
    );
    assert_eq!(
        recorder.samples("uplink_h2_ping_rtt_seconds{side=client}"),
        [0.03]
    );
}

/// Lets a test hold a response open: requests to `/slow` wait for `release`.
#[derive(Default)]
struct Gate {
    started: tokio::sync::Notify,
    release: tokio::sync::Notify,
}

/// Serves "ok" over HTTP/2 on `io` until `shutdown` fires, then shuts down gracefully.
async fn serve_h2<IO>(
    io: IO,
    shutdown: tokio::sync::oneshot::Receiver<()>,
    gate: Arc<Gate>,
) -> hyper::Result<()>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let gate = gate.clone();
        async move {
            if req.uri().path() == "/slow" {
                gate.started.notify_one();
                gate.release.notified().await;
            }
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new()).max_concurrent_streams(77);
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    let mut conn = std::pin::pin!(conn);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut closing = false;
    loop {
        tokio::select! {
            res = conn.as_mut() => return res,
            _ = &mut shutdown, if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Waits (real time, bounded) until `cond` holds.
async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let wait = async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

fn request(path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(format!("http://uplink.test{path}"))
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap()
}

#[tokio::test]
async fn hyper_exchange_through_taps() {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let server_info = Arc::new(ConnInfo::default());
    let server_tap = Tap::new(
        s,
        TapConfig {
            conn_id: 1,
            side: Side::Server,
            trace: true,
        },
        server_info.clone(),
    );
    let gate = Arc::new(Gate::default());
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(serve_h2(server_tap, stopped, gate.clone()));

    let client_tap = client_tap(c);
    let info = client_tap.info().clone();
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake::<_, Full<Bytes>>(TokioIo::new(client_tap))
        .await
        .unwrap();
    let client = tokio::spawn(conn);

    for _ in 0..3 {
        let resp = sender.send_request(request("/")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "ok");
    }
    assert_eq!(info.remote_max_concurrent_streams(), Some(77));
    assert_eq!(info.goaway_received(), None);

    // A fourth request stays open across the graceful shutdown, so the client stays to see
    // both GOAWAYs (with no open stream it would close after the first).
    let slow = tokio::spawn(sender.send_request(request("/slow")));
    gate.started.notified().await;
    stop.send(()).unwrap();
    wait_until("final GOAWAY", || {
        info.last_goaway_received() != info.goaway_received()
    })
    .await;
    gate.release.notify_one();
    let resp = slow.await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    drop(sender);

    let limit = Duration::from_secs(10);
    tokio::time::timeout(limit, client)
        .await
        .expect("client connection ends")
        .unwrap()
        .unwrap();
    // The server's result is not checked: the client may close first, and hyper's server then
    // ends with BrokenPipe (the same without taps).
    let _ = tokio::time::timeout(limit, server)
        .await
        .expect("server ends")
        .unwrap();

    const REQUESTS: u32 = 4;
    // hyper (h2) shuts down in two steps: GOAWAY(2^31-1) and a PING, then, once the PING is
    // acknowledged, GOAWAY(last processed stream).
    let first = info.goaway_received().expect("GOAWAY received");
    assert_eq!(first.error_code, 0);
    assert_eq!(first.last_stream_id, u32::MAX >> 1);
    assert_eq!(
        info.last_goaway_received(),
        Some(GoAwayInfo {
            last_stream_id: 2 * REQUESTS - 1,
            error_code: 0
        })
    );
    assert_eq!(info.streams_opened(), REQUESTS);
    assert_eq!(info.highest_stream_id_sent(), 2 * REQUESTS - 1);
    // When the first GOAWAY arrived, stream 7 (/slow) was open and stream 5 had completed: a
    // busy connection, which the client may take as the server's request limit.
    let at = info
        .streams_at_goaway()
        .expect("recorded at the first GOAWAY");
    assert_eq!((at.highest_opened, at.highest_closed), (7, 5));
    assert!(at.since_last_close.is_some());
    assert!(crate::http2::learn::is_limit_goaway(
        crate::http2::learn::GoAwaySeen {
            last_stream_id: 7,
            highest_opened: at.highest_opened,
            highest_closed: at.highest_closed,
            since_last_close: at.since_last_close,
        }
    ));
    assert!(info.frames(Direction::Recv) >= 2 + 2 * u64::from(REQUESTS));

    // The server side saw the same connection from the other end.
    assert_eq!(server_info.goaway_sent(), info.goaway_received());
    assert_eq!(server_info.last_goaway_sent(), info.last_goaway_received());
    assert_eq!(server_info.streams_opened(), 0);
    assert!(server_info.frames(Direction::Recv) >= 2 + 2 * u64::from(REQUESTS));
    assert!(
        server_info
            .remote_settings()
            .iter()
            .any(|&(id, v)| (id, v) == (2, 0))
    );
    // The server's shutdown PING was answered by the client.
    assert!(server_info.last_ping_rtt().is_some());
}

#[tokio::test(start_paused = true)]
async fn goaway_on_an_idle_connection_is_recorded_as_idle() {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(serve_h2(s, stopped, Arc::default()));
    let tap = client_tap(c);
    let info = tap.info().clone();
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake::<_, Full<Bytes>>(TokioIo::new(tap))
        .await
        .unwrap();
    let client = tokio::spawn(conn);
    for _ in 0..2 {
        let resp = sender.send_request(request("/")).await.unwrap();
        resp.into_body().collect().await.unwrap();
    }
    // Paused time: the connection sits idle for 2 s of the test clock, like a server's
    // keepalive_timeout, then the server closes it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.send(()).unwrap();
    let limit = Duration::from_secs(10);
    let _ = tokio::time::timeout(limit, client)
        .await
        .expect("client ends");
    let _ = tokio::time::timeout(limit, server)
        .await
        .expect("server ends");

    let at = info
        .streams_at_goaway()
        .expect("recorded at the first GOAWAY");
    assert_eq!((at.highest_opened, at.highest_closed), (3, 3));
    let since = at.since_last_close.expect("streams had ended");
    assert!(since >= Duration::from_secs(2), "{since:?}");
    let last = info.last_goaway_received().unwrap().last_stream_id;
    assert!(!crate::http2::learn::is_limit_goaway(
        crate::http2::learn::GoAwaySeen {
            last_stream_id: last,
            highest_opened: at.highest_opened,
            highest_closed: at.highest_closed,
            since_last_close: at.since_last_close,
        }
    ));
}

#[tokio::test(start_paused = true)]
async fn hyper_keep_alive_ping_rtt() {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let (_stop, stopped) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(serve_h2(s, stopped, Arc::default()));

    let tap = client_tap(c);
    let info = tap.info().clone();
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_millis(100))
        .keep_alive_while_idle(true)
        .handshake::<_, Full<Bytes>>(TokioIo::new(tap))
        .await
        .unwrap();
    let client = tokio::spawn(conn);
    let resp = sender.send_request(request("/")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // Paused time: the sleeps auto-advance, so this waits for the keep-alive timer, not the clock.
    let rtt = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(rtt) = info.last_ping_rtt() {
                return rtt;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a keep-alive PING was acknowledged");
    assert!(rtt < Duration::from_secs(1));
    assert!(info.frames(Direction::Send) > 0);
    client.abort();
    server.abort();
}
