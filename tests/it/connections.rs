//! The ingest's connection layer (docs/design.md §4; admission before authentication is
//! `admission.rs`): silent connections are closed, closing a connection never destroys a response
//! already written (lingering close), and a client that cannot replay a request loses none
//! to a GOAWAY.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustls::pki_types::ServerName;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use uplink::http2::tap::{ConnInfo, Side, Tap, TapConfig};
use uplink::telemetry::{scrape_sum, scrape_value};
use uplink_tools::testbed::pipeline::Pipeline;

use crate::support::*;

/// Waits (at most 30 s) until an ingest metric reaches `at_least`.
async fn wait_ingest_metric(p: &Pipeline, series: &str, at_least: f64) -> f64 {
    let read = |m: &str| {
        if series.contains('{') {
            scrape_value(m, series).unwrap_or(0.0)
        } else {
            scrape_sum(m, series)
        }
    };
    let r = uplink_tools::testbed::wait_for(
        || async { Ok(read(&p.ingest_metrics().await?) >= at_least) },
        Duration::from_secs(30),
    )
    .await;
    let m = p.ingest_metrics().await.unwrap_or_default();
    assert!(r.is_ok(), "{series} never reached {at_least}:\n{m}");
    read(&m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_without_a_preface_is_closed_after_the_preface_timeout() {
    let p = pipeline(|i| i.timeouts.preface = Duration::from_secs(1), |_| {}).await;
    let t = Instant::now();
    let mut silent = tls_connect(&p).await;
    // A client that spoke HTTP/2 at the same time and then stayed idle keeps its connection.
    let spoke = RawClient::new(&p);
    let first = spoke.post("before").await;
    assert!(matches!(first, Outcome::Ok), "{first:?}");
    // The server's SETTINGS (its preface) and then the close.
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut got))
        .await
        .expect("closed well within 10 s");
    let took = t.elapsed();
    assert!(
        got.len() < 100,
        "nothing but the server's SETTINGS: {read:?} {got:?}"
    );
    // Not before the timeout; and closed *by* it (the counter), however late a busy machine
    // got to it — the 10 s read above is the only upper bound, a generous one.
    assert!(took >= Duration::from_secs(1), "{took:?}");
    wait_ingest_metric(&p, "uplink_ingest_preface_timeouts_total", 1.0).await;
    let m = p.ingest_metrics().await.unwrap();
    assert_eq!(
        uplink::telemetry::scrape_sum_present(&m, "uplink_ingest_preface_timeouts_total"),
        Some(1.0),
        "{m}"
    );
    // The connection that spoke is still the same one, and works.
    assert!(matches!(spoke.post("after").await, Outcome::Ok));
    assert_eq!(spoke.dials.load(Ordering::Relaxed), 1);
}

/// Only GOAWAYs actually written count: a connection closed for idleness before it spoke HTTP/2
/// gets no GOAWAY from hyper (just a close), and must not show up as one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_close_without_a_goaway_is_not_counted_as_one() {
    let p = pipeline(
        |i| {
            i.timeouts.idle = Duration::from_secs(1);
            i.timeouts.preface = Duration::from_secs(30);
            // hyper cannot GOAWAY a connection still in its HTTP/2 handshake: it goes at the
            // hard deadline after the idle close began.
            i.timeouts.shutdown_grace = Duration::from_secs(2);
        },
        |_| {},
    )
    .await;
    let mut silent = tls_connect(&p).await;
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut got))
        .await
        .expect("closed for idleness")
        .ok();
    let mut parser =
        uplink::http2::tap::Parser::new(Side::Client, uplink::http2::tap::Direction::Recv);
    let goaways = parser
        .feed(&got)
        .into_iter()
        .filter(|f| matches!(f.detail, uplink::http2::tap::FrameDetail::GoAway { .. }))
        .count();
    // And one that spoke gets its GOAWAY, counted.
    let spoke = RawClient::new(&p);
    assert!(matches!(spoke.post("x").await, Outcome::Ok));
    let n = wait_ingest_metric(&p, "uplink_ingest_goaway_sent_total{reason=\"idle\"}", 1.0).await;
    assert_eq!(
        (goaways, n),
        (0, 1.0),
        "the silent connection saw no GOAWAY and none was counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_dial_is_counted_as_aborted_not_as_a_bad_certificate() {
    let p = pipeline(|_| {}, |_| {}).await;
    for _ in 0..3 {
        drop(TcpStream::connect(p.ingest_cfg.listen).await.unwrap());
    }
    wait_ingest_metric(
        &p,
        "uplink_ingest_tls_failures_total{reason=\"aborted\"}",
        3.0,
    )
    .await;
    let m = p.ingest_metrics().await.unwrap();
    assert_eq!(
        scrape_value(
            &m,
            "uplink_ingest_tls_failures_total{reason=\"bad_certificate\"}"
        ),
        None,
        "{m}"
    );
}

/// HPACK: a literal header field without indexing, name by static-table index (or literal when
/// 0), no Huffman coding (RFC 7541 §6.2.2); lengths stay below 127.
fn hpack_literal(out: &mut Vec<u8>, index: u8, name: &str, value: &str) {
    out.push(index);
    if index == 0 {
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
    }
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
}

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The reset the lingering close exists for, made deterministic: a client sends its requests,
/// is slow to read (its responses wait in its receive buffer) and keeps writing (PINGs, as
/// WINDOW_UPDATEs or a close_notify would be) while the ingest ends the connection at its hard
/// deadline. Closing a socket that still receives makes the kernel send a RST, and the RST
/// makes the client's kernel throw away the responses it has not read yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_still_writing_when_the_ingest_closes_gets_every_response() {
    use tokio::io::AsyncWriteExt as _;
    use uplink::http2::tap::{Direction, FrameDetail, Parser};
    let p = pipeline(
        |i| {
            i.http2.max_requests_per_connection = 10;
            i.timeouts.shutdown_grace = Duration::from_secs(1);
            i.http2.goaway_max_wait = Duration::from_millis(500);
        },
        |_| {},
    )
    .await;
    let mut tls = tls_connect(&p).await;
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(0x4, 0, 0, &[]));
    for i in 0..10u32 {
        let stream = 2 * i + 1;
        let mut block = vec![0x83, 0x87]; // :method POST, :scheme https
        hpack_literal(&mut block, 0x04, "", "/v1/publish/linger");
        hpack_literal(&mut block, 0x01, "", "localhost");
        hpack_literal(&mut block, 0, "idempotency-key", &format!("slow-{i}"));
        out.extend(h2_frame(0x1, 0x4, stream, &block));
        out.extend(h2_frame(0x0, 0x1, stream, b"x"));
    }
    tls.write_all(&out).await.unwrap();
    tls.flush().await.unwrap();
    // Keep writing without reading until the ingest has given up on the connection (it never
    // gets the ACK of its shutdown PING), then a little more.
    let ping = h2_frame(0x6, 0, 0, &[1; 8]);
    let mut after_close = 0;
    let mut write_error = None;
    for _ in 0..2_000 {
        let wrote = match tls.write_all(&ping).await {
            Ok(()) => tls.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = wrote {
            write_error = Some(e);
            break;
        }
        let m = p.ingest_metrics().await.unwrap_or_default();
        if scrape_sum(&m, "uplink_ingest_connections_dropped_total") >= 1.0 {
            after_close += 1;
            if after_close == 5 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Now read everything the ingest wrote.
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut got))
        .await
        .expect("the ingest closes within 10 s");
    let mut parser = Parser::new(Side::Client, Direction::Recv);
    let responses = parser
        .feed(&got)
        .into_iter()
        .filter(|f| matches!(f.detail, FrameDetail::Headers { .. }) && f.header.stream_id % 2 == 1)
        .count();
    eprintln!(
        "slow reader: {responses} of 10 responses read, {} bytes, end {read:?}, late writes {write_error:?}",
        got.len()
    );
    assert!(
        write_error.is_none(),
        "late writes are read, not reset: {write_error:?}"
    );
    assert_eq!(after_close, 5, "the ingest dropped the connection");
    assert!(read.is_ok(), "a clean close, not a reset: {read:?}");
    assert_eq!(responses, 10, "every answered response arrived");
}

/// HEADERS + DATA of one publish request on `stream`.
fn publish_request(stream: u32, key: &str) -> Vec<u8> {
    let mut block = vec![0x83, 0x87]; // :method POST, :scheme https
    hpack_literal(&mut block, 0x04, "", "/v1/publish/race");
    hpack_literal(&mut block, 0x01, "", "localhost");
    hpack_literal(&mut block, 0, "idempotency-key", key);
    let mut out = h2_frame(0x1, 0x4, stream, &block);
    out.extend(h2_frame(0x0, 0x1, stream, b"x"));
    out
}

/// The race of task "final GOAWAY": a client answers the shutdown PING and, in the same write,
/// opens more streams (requests that picked the connection before it processed the first
/// GOAWAY). Every one of them is served: the final GOAWAY's last_stream_id covers them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_racing_the_shutdown_ping_ack_are_served_not_refused() {
    use tokio::io::AsyncWriteExt as _;
    use uplink::http2::tap::{Direction, FrameDetail, Parser};
    const SHUTDOWN_PING: [u8; 8] = [0x0b, 0x7b, 0xa2, 0xf0, 0x8b, 0x9b, 0xfe, 0x54];
    let p = pipeline(|i| i.http2.max_requests_per_connection = 10, |_| {}).await;
    let mut tls = tls_connect(&p).await;
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(0x4, 0, 0, &[]));
    for i in 0..10u32 {
        out.extend(publish_request(2 * i + 1, &format!("race-{i}")));
    }
    tls.write_all(&out).await.unwrap();
    tls.flush().await.unwrap();
    let mut parser = Parser::new(Side::Client, Direction::Recv);
    let mut responses = std::collections::BTreeSet::new();
    let mut resets = Vec::new();
    let mut goaways = Vec::new();
    let mut raced = false;
    let mut buf = vec![0u8; 16 << 10];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n = match tokio::time::timeout_at(deadline, tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => n,
            Err(_) => panic!("the ingest never closed the connection"),
        };
        let mut reply = Vec::new();
        for f in parser.feed(&buf[..n]) {
            match f.detail {
                FrameDetail::Settings { ack: false, .. } => {
                    reply.extend(h2_frame(0x4, 0x1, 0, &[]));
                }
                FrameDetail::Headers { .. } if f.header.stream_id % 2 == 1 => {
                    responses.insert(f.header.stream_id);
                }
                FrameDetail::RstStream { error_code } => {
                    resets.push((f.header.stream_id, error_code));
                }
                FrameDetail::GoAway { last_stream_id, .. } => goaways.push(last_stream_id),
                FrameDetail::Ping { ack: false, data } if data == SHUTDOWN_PING && !raced => {
                    // The ACK, then three more requests in the same write.
                    reply.extend(h2_frame(0x6, 0x1, 0, &data));
                    for (k, stream) in [21u32, 23, 25].into_iter().enumerate() {
                        reply.extend(publish_request(stream, &format!("late-{k}")));
                    }
                    raced = true;
                }
                FrameDetail::Ping { ack: false, data } => {
                    reply.extend(h2_frame(0x6, 0x1, 0, &data));
                }
                _ => {}
            }
        }
        if !reply.is_empty() && tls.write_all(&reply).await.is_ok() {
            let _ = tls.flush().await;
        }
    }
    eprintln!(
        "racing streams: responses on {responses:?}, GOAWAYs {goaways:?}, RST_STREAMs {resets:?}"
    );
    assert!(raced, "the ingest sent its shutdown PING");
    assert_eq!(
        goaways.first(),
        Some(&0x7fff_ffff),
        "first GOAWAY announces"
    );
    assert_eq!(
        goaways.last(),
        Some(&25),
        "the final GOAWAY covers the racing streams"
    );
    assert_eq!(resets, vec![], "nothing refused");
    assert_eq!(responses.len(), 13, "{responses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_killed_for_a_protocol_error_leaves_one_log_line() {
    use tokio::io::AsyncWriteExt as _;
    let p = pipeline(|_| {}, |_| {}).await;
    let mut tls = tls_connect(&p).await;
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(0x4, 0, 0, &[]));
    // A header block that is not HPACK (index 0 is invalid): a connection error.
    out.extend(h2_frame(0x1, 0x5, 1, &[0x80, 0xff, 0xff]));
    tls.write_all(&out).await.unwrap();
    tls.flush().await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut got))
        .await
        .expect("the ingest closes the connection");
    wait_ingest_metric(&p, "uplink_ingest_protocol_errors_total", 1.0).await;
    let log = p.log("ingest");
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("connection closed for an HTTP/2 protocol error"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    eprintln!("{}", lines[0]);
    for want in ["_ERROR", "127.0.0.1", "edge-1"] {
        assert!(lines[0].contains(want), "{want} in {}", lines[0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_is_a_bad_certificate_failure() {
    let p = pipeline(|_| {}, |_| {}).await;
    let mut roots = rustls::RootCertStore::empty();
    for c in uplink::tls::load_certs(&p.pki().ca()).unwrap() {
        roots.add(c).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(p.ingest_cfg.listen).await.unwrap();
    if let Ok(mut tls) = TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
    {
        // TLS 1.3: the refusal arrives after the client's side of the handshake.
        let mut b = [0u8; 16];
        let _ = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut b)).await;
    }
    wait_ingest_metric(
        &p,
        "uplink_ingest_tls_failures_total{reason=\"bad_certificate\"}",
        1.0,
    )
    .await;
    let m = p.ingest_metrics().await.unwrap();
    assert_eq!(
        scrape_value(&m, "uplink_ingest_tls_failures_total{reason=\"aborted\"}"),
        None,
        "{m}"
    );
}

// ------------------------------------------------------------------ a client that never replays

/// How one request ended for a client that never replays what it sent.
#[derive(Debug)]
enum Outcome {
    Ok,
    /// Refused before its HEADERS were written (the connection had seen GOAWAY or was gone):
    /// may go on another connection, as Go does.
    NotSent,
    /// Failed after its HEADERS were written: lost for such a client.
    Failed {
        reset: bool,
        error: String,
    },
}

struct RawConn {
    send: h2::client::SendRequest<Bytes>,
    info: Arc<ConnInfo>,
    closed: Arc<std::sync::atomic::AtomicBool>,
}

/// An HTTP/2 client on the `h2` crate that, like Go's, stops using a connection at its first
/// GOAWAY and never resends a request whose HEADERS went out.
struct RawClient {
    addr: SocketAddr,
    tls: TlsConnector,
    current: tokio::sync::Mutex<Option<Arc<RawConn>>>,
    dials: AtomicU64,
}

impl RawClient {
    fn new(p: &Pipeline) -> Arc<Self> {
        let pki = p.pki();
        let cfg = uplink::tls::client_config(
            &pki.ca(),
            &pki.client_cert("edge-1"),
            &pki.client_key("edge-1"),
        )
        .unwrap();
        Arc::new(RawClient {
            addr: p.ingest_cfg.listen,
            tls: TlsConnector::from(cfg),
            current: tokio::sync::Mutex::new(None),
            dials: AtomicU64::new(0),
        })
    }

    async fn conn(&self) -> Arc<RawConn> {
        let mut cur = self.current.lock().await;
        if let Some(c) = cur.as_ref()
            && c.info.goaway_received().is_none()
            && !c.closed.load(Ordering::Acquire)
        {
            return c.clone();
        }
        let id = self.dials.fetch_add(1, Ordering::Relaxed) + 1;
        let tcp = TcpStream::connect(self.addr).await.expect("connect");
        let _ = tcp.set_nodelay(true);
        let tls = self
            .tls
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("TLS");
        let info = Arc::new(ConnInfo::default());
        let io = Tap::new(tls, TapConfig::new(id, Side::Client, false), info.clone());
        let (send, conn) = h2::client::handshake(io).await.expect("h2 handshake");
        let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = closed.clone();
        tokio::spawn(async move {
            let _ = conn.await;
            done.store(true, Ordering::Release);
        });
        // Like Go (which assumes 100 until told), never open more streams than the server allows:
        // wait (bounded) for its SETTINGS, or h2 would open all of them and see REFUSED_STREAM.
        let settled = uplink_tools::testbed::wait_for(
            || async { Ok(info.remote_max_concurrent_streams().is_some()) },
            Duration::from_secs(20),
        )
        .await;
        assert!(settled.is_ok(), "the server sends SETTINGS");
        let c = Arc::new(RawConn { send, info, closed });
        *cur = Some(c.clone());
        c
    }

    async fn post(&self, key: &str) -> Outcome {
        let c = self.conn().await;
        let Ok(mut send) = c.send.clone().ready().await else {
            return Outcome::NotSent;
        };
        let req = http::Request::post("https://localhost/v1/publish/conn")
            .header("idempotency-key", key)
            .body(())
            .unwrap();
        let (resp, mut body) = match send.send_request(req, false) {
            Ok(r) => r,
            Err(_) => return Outcome::NotSent,
        };
        let id: u32 = resp.stream_id().into();
        let fail = |e: h2::Error| {
            // Streams go out in id order: the tap saw this one's HEADERS iff it saw an id this high.
            if c.info.highest_stream_id_sent() < id {
                return Outcome::NotSent;
            }
            let reset = e
                .get_io()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionReset)
                || e.to_string().contains("reset by peer");
            Outcome::Failed {
                reset,
                error: format!("stream {id}: {e}"),
            }
        };
        if let Err(e) = body.send_data(Bytes::from_static(b"x"), true) {
            return fail(e);
        }
        let resp = match resp.await {
            Ok(r) => r,
            Err(e) => return fail(e),
        };
        let status = resp.status();
        let mut rb = resp.into_body();
        while let Some(chunk) = rb.data().await {
            match chunk {
                Ok(b) => {
                    let _ = rb.flow_control().release_capacity(b.len());
                }
                Err(e) => return fail(e),
            }
        }
        if status == 200 {
            Outcome::Ok
        } else {
            Outcome::Failed {
                reset: false,
                error: format!("stream {id}: status {status}"),
            }
        }
    }
}

#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    not_sent: u64,
    failed: u64,
    resets: u64,
    errors: Vec<String>,
}

/// Sends `total` requests, `parallel` at a time; a request refused before it was sent goes
/// again (at most 20 times), one that failed after it was sent is counted and not resent.
async fn run_load(c: &Arc<RawClient>, prefix: &str, total: usize, parallel: usize) -> Tally {
    use futures_util::StreamExt as _;
    let outcomes: Vec<(u64, Outcome)> = futures_util::stream::iter(0..total)
        .map(|i| {
            let c = c.clone();
            let key = format!("{prefix}-{i}");
            async move {
                let mut not_sent = 0;
                loop {
                    match c.post(&key).await {
                        Outcome::NotSent if not_sent < 20 => not_sent += 1,
                        o => return (not_sent, o),
                    }
                }
            }
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    let mut t = Tally::default();
    for (n, o) in outcomes {
        t.not_sent += n;
        match o {
            Outcome::Ok => t.ok += 1,
            Outcome::NotSent => t.failed += 1,
            Outcome::Failed { reset, error } => {
                t.failed += 1;
                t.resets += reset as u64;
                if t.errors.len() < 10 {
                    t.errors.push(error);
                }
            }
        }
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_connections_under_rotation_loses_no_answered_response() {
    let p = pipeline(|i| i.http2.max_requests_per_connection = 10, |_| {}).await;
    let c = RawClient::new(&p);
    let total = 20_000;
    let started = Instant::now();
    let t = tokio::time::timeout(Duration::from_secs(240), run_load(&c, "linger", total, 64))
        .await
        .expect("bounded in time");
    let m = p.ingest_metrics().await.unwrap();
    let answered = scrape_value(
        &m,
        "uplink_ingest_requests_total{route=\"publish\",status=\"200\"}",
    )
    .unwrap_or_else(|| scrape_sum(&m, "uplink_ingest_requests_total"));
    eprintln!(
        "rotation every 10 requests: {total} requests over {} connections in {:?}: {t:?}; ingest answered 200: {answered}; lingering closes: eof {:?} timeout {:?} error {:?}",
        c.dials.load(Ordering::Relaxed),
        started.elapsed(),
        scrape_value(&m, "uplink_ingest_lingering_closes_total{end=\"eof\"}"),
        scrape_value(&m, "uplink_ingest_lingering_closes_total{end=\"timeout\"}"),
        scrape_value(&m, "uplink_ingest_lingering_closes_total{end=\"error\"}"),
    );
    assert_eq!(t.resets, 0, "{t:?}");
    assert_eq!(t.failed, 0, "{t:?}\n{}", tail(&p.log("ingest")));
    assert_eq!(t.ok, total as u64);
    assert_eq!(
        answered, t.ok as f64,
        "every answered response arrived:\n{m}"
    );
    // Rotation really happened: each connection carried its 10 requests plus those already in
    // flight when its GOAWAY came (at most 64).
    assert!(c.dials.load(Ordering::Relaxed) >= (total / (10 + 64)) as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_cannot_replay_loses_nothing_to_the_goaway_after_1000_requests() {
    let p = pipeline(|_| {}, |_| {}).await;
    assert_eq!(p.ingest_cfg.http2.max_requests_per_connection, 1000);
    let c = RawClient::new(&p);
    let mut all = Tally::default();
    for round in 0..4 {
        let t = tokio::time::timeout(
            Duration::from_secs(60),
            run_load(&c, &format!("round{round}"), 1001, 1001),
        )
        .await
        .expect("bounded in time");
        all.ok += t.ok;
        all.not_sent += t.not_sent;
        all.failed += t.failed;
        all.errors.extend(t.errors);
    }
    let m = p.ingest_metrics().await.unwrap();
    eprintln!(
        "non-replaying client, 4 x 1001 parallel POSTs: {all:?}; connections {}; final GOAWAYs sent {}",
        c.dials.load(Ordering::Relaxed),
        scrape_sum(&m, "uplink_ingest_goaway_sent_total")
    );
    assert_eq!(all.failed, 0, "{all:?}");
    assert_eq!(all.ok, 4 * 1001);
    assert!(
        scrape_value(
            &m,
            "uplink_ingest_goaway_sent_total{reason=\"max_requests\"}"
        ) >= Some(3.0),
        "{m}"
    );
}
