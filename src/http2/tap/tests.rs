//! Tests of the frame tap over `tokio::io::duplex` (pass-through, vectored writes, PING RTT,
//! metrics, what [`ConnInfo`] records), and a real hyper HTTP/2 exchange through it.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::IoSlice;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
use crate::http2::frame::testing::{frame, goaway, settings};
use crate::http2::frame::{
    DATA, FLAG_ACK, FLAG_END_HEADERS, FLAG_END_STREAM, HEADERS, PING, PREFACE, RST_STREAM,
    WINDOW_UPDATE,
};

#[test]
fn trace_env_values() {
    assert!(trace_enabled(Some("1")));
    assert!(trace_enabled(Some("true")));
    assert!(trace_enabled(Some("TRUE")));
    assert!(!trace_enabled(Some("0")));
    assert!(!trace_enabled(Some("")));
    assert!(!trace_enabled(None));
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
