//! The pool over in-memory connections: a dialer hands out `tokio::io::duplex` pairs whose
//! other end is a scripted HTTP/2 server (the `h2` crate's, or raw frames where the script
//! needs a GOAWAY naming a chosen last stream). Time is paused, so timeouts cost nothing.

use std::collections::BTreeMap;
use std::sync::Mutex;

use futures_util::future::{BoxFuture, join_all};
use h2::Reason;
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::Notify;

use super::*;
use crate::http2::dial::BoxIo;
use crate::http2::frame::testing::frame;
use crate::http2::frame::{
    Direction, FLAG_ACK, FLAG_END_HEADERS, FLAG_END_STREAM, FrameDetail, GOAWAY, HEADERS, PING,
    Parser, SETTINGS,
};
use crate::http2::{Retry, classify};

/// Virtual time one dial takes: long enough for a herd of concurrent dials to form if the
/// pool let one.
const DIAL_LATENCY: Duration = Duration::from_millis(10);

/// What the server does on one connection.
#[derive(Clone, Copy, Debug)]
enum Script {
    /// Answers every request 200.
    Serve,
    /// Answers every request 200; on the `n`th it starts a graceful shutdown (GOAWAY) first,
    /// as a server limiting requests per connection does.
    GoAwayAt(u32),
    /// Refuses the first stream (RST_STREAM REFUSED_STREAM), then serves.
    RefuseFirst,
    /// Serves the first request, then stops reading once [`Server::deaf`] is notified.
    DeafAfterFirst,
    /// Raw frames: waits for `hold` requests, sends GOAWAY(`last_stream_id`), then answers
    /// only the streams at or below it.
    RawGoAway { hold: usize, last_stream_id: u32 },
    /// Takes every request and never answers it (the connection itself stays healthy).
    NeverAnswer,
}

/// The scripted server and what it saw.
struct Server {
    /// The script of each connection, by dial order.
    script: Box<dyn Fn(usize) -> Script + Send + Sync>,
    /// Dials started, and when each started.
    dial_times: Mutex<Vec<Instant>>,
    /// Dials in progress now, and the most ever in progress at once.
    dialing: AtomicUsize,
    max_dialing: AtomicUsize,
    /// Streams received on each connection, by dial order.
    streams: Mutex<Vec<u32>>,
    /// Connections the server saw end (the client closed them, or the server finished).
    ended: AtomicUsize,
    deaf: Notify,
}

impl Server {
    fn new(script: impl Fn(usize) -> Script + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Server {
            script: Box::new(script),
            dial_times: Mutex::default(),
            dialing: AtomicUsize::new(0),
            max_dialing: AtomicUsize::new(0),
            streams: Mutex::default(),
            ended: AtomicUsize::new(0),
            deaf: Notify::new(),
        })
    }

    fn dials(&self) -> usize {
        self.dial_times.lock().unwrap().len()
    }

    fn streams(&self) -> Vec<u32> {
        self.streams.lock().unwrap().clone()
    }

    fn stream_opened(&self, conn: usize) {
        self.streams.lock().unwrap()[conn] += 1;
    }
}

/// Dials by spawning a server task on the other end of a fresh duplex pair.
struct MemDialer(Arc<Server>);

impl Dial for MemDialer {
    fn dial(&self) -> BoxFuture<'_, Result<BoxIo, ForwardError>> {
        Box::pin(async move {
            let s = &self.0;
            let conn = {
                let mut times = s.dial_times.lock().unwrap();
                times.push(Instant::now());
                s.streams.lock().unwrap().push(0);
                times.len() - 1
            };
            let now = s.dialing.fetch_add(1, Ordering::AcqRel) + 1;
            s.max_dialing.fetch_max(now, Ordering::AcqRel);
            tokio::time::sleep(DIAL_LATENCY).await;
            s.dialing.fetch_sub(1, Ordering::AcqRel);
            let (client, server) = tokio::io::duplex(64 * 1024);
            let script = (s.script)(conn);
            let s = s.clone();
            tokio::spawn(async move {
                match script {
                    Script::RawGoAway {
                        hold,
                        last_stream_id,
                    } => serve_raw_goaway(server, hold, last_stream_id).await,
                    script => serve_h2(server, &s, conn, script).await,
                }
                s.ended.fetch_add(1, Ordering::AcqRel);
            });
            Ok(Box::new(client) as BoxIo)
        })
    }

    fn peer(&self) -> &str {
        "memory"
    }
}

async fn serve_h2(io: DuplexStream, s: &Server, conn: usize, script: Script) {
    let Ok(mut h2) = h2::server::handshake(io).await else {
        return;
    };
    let mut n = 0;
    loop {
        let next = tokio::select! {
            next = h2.accept() => next,
            // Stop reading for good, keeping the connection open: half-open.
            _ = s.deaf.notified(), if matches!(script, Script::DeafAfterFirst) && n > 0 => {
                std::future::pending::<()>().await;
                unreachable!()
            }
        };
        let Some(Ok((_req, mut respond))) = next else {
            return;
        };
        n += 1;
        s.stream_opened(conn);
        if let Script::NeverAnswer = script {
            // Keep the stream open, unanswered, for as long as the connection lives.
            std::mem::forget(respond);
            continue;
        }
        match script {
            Script::RefuseFirst if n == 1 => {
                respond.send_reset(Reason::REFUSED_STREAM);
                continue;
            }
            Script::GoAwayAt(at) if n == at => h2.graceful_shutdown(),
            _ => {}
        }
        let _ = respond.send_response(http::Response::new(()), true);
    }
}

/// A hand-driven server: SETTINGS, waits until `hold` requests arrived, then
/// GOAWAY(`last_stream_id`, NO_ERROR) and a 200 (HPACK static index 8) for each stream at or
/// below it; then reads until the client closes.
async fn serve_raw_goaway(mut io: DuplexStream, hold: usize, last_stream_id: u32) {
    const END_STREAM_HEADERS: u8 = FLAG_END_STREAM | FLAG_END_HEADERS;
    let mut parser = Parser::new(Side::Server, Direction::Recv);
    let mut buf = vec![0u8; 16 * 1024];
    let mut opened = Vec::new();
    let mut out = frame(SETTINGS, 0, 0, &[]);
    let mut said_goaway = false;
    loop {
        if !said_goaway && opened.len() >= hold {
            said_goaway = true;
            let mut payload = last_stream_id.to_be_bytes().to_vec();
            payload.extend(0u32.to_be_bytes());
            out.extend(frame(GOAWAY, 0, 0, &payload));
            for &id in opened.iter().filter(|&&id| id <= last_stream_id) {
                out.extend(frame(HEADERS, END_STREAM_HEADERS, id, &[0x88]));
            }
        }
        if !out.is_empty() && io.write_all(&std::mem::take(&mut out)).await.is_err() {
            return;
        }
        let n = match io.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        for f in parser.feed(&buf[..n]) {
            match f.detail {
                FrameDetail::Headers { .. } if !opened.contains(&f.header.stream_id) => {
                    opened.push(f.header.stream_id)
                }
                FrameDetail::Settings { ack: false, .. } => {
                    out.extend(frame(SETTINGS, FLAG_ACK, 0, &[]))
                }
                FrameDetail::Ping { ack: false, data } => {
                    out.extend(frame(PING, FLAG_ACK, 0, &data))
                }
                _ => {}
            }
        }
    }
}

fn config(max_requests: u64) -> ClientConfig {
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    ClientConfig {
        url: "https://ingest.test".parse().unwrap(),
        server_name: None,
        tls: Arc::new(tls),
        timeouts: ClientTimeouts::default(),
        connections: 1,
        max_requests_per_connection: max_requests,
        max_connection_age: Duration::from_secs(3600),
        trace: false,
    }
}

fn client(cfg: ClientConfig, server: &Arc<Server>) -> Client {
    Client::with_dialer(cfg, Arc::new(MemDialer(server.clone())))
}

async fn post(c: &Client) -> Result<FullResponse, ForwardError> {
    let req = Request::post("https://ingest.test/v1/publish")
        .body(Full::new(Bytes::from_static(b"x")))
        .unwrap();
    c.send(req).await
}

async fn post_ok(c: &Client) {
    let resp = post(c).await.expect("request");
    assert_eq!(resp.status(), 200);
}

/// Counts counters by `name{label=value,...}` (labels sorted). Set as the thread's recorder:
/// the paused-time runtime polls the pool's tasks on the test's thread.
#[derive(Default)]
struct Counters(Mutex<BTreeMap<String, Arc<AtomicU64>>>);

impl Counters {
    fn get(&self, key: &str) -> u64 {
        self.0
            .lock()
            .unwrap()
            .get(key)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

impl Recorder for Counters {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        Counter::from_arc(self.0.lock().unwrap().entry(name).or_default().clone())
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

#[tokio::test(start_paused = true)]
async fn rotates_at_max_requests_with_one_dial_in_flight() {
    let server = Server::new(|_| Script::Serve);
    let c = client(config(10), &server);
    // 100 requests at once against a cap of 10 per connection: ~10 connections, dialed one
    // at a time, never one per waiting request.
    let results = join_all((0..100).map(|_| post(&c))).await;
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    assert_eq!(server.max_dialing.load(Ordering::Acquire), 1, "a dial herd");
    let streams = server.streams();
    assert_eq!(streams.iter().sum::<u32>(), 100);
    assert!(
        streams.iter().all(|&n| n <= 10),
        "over the cap: {streams:?}"
    );
    assert!(
        (10..=11).contains(&server.dials()),
        "{} dials for 100 requests at 10 per connection",
        server.dials()
    );

    // One at a time, each connection carries exactly the cap, its replacement dialed
    // (make-before-break) while it still takes its last request: so a fourth is already up,
    // unused, when the third has carried its 10th.
    let server = Server::new(|_| Script::Serve);
    let c = client(config(10), &server);
    for _ in 0..30 {
        post_ok(&c).await;
    }
    assert_eq!(server.streams(), [10, 10, 10, 0]);
}

#[tokio::test(start_paused = true)]
async fn learned_limit_rotates_at_90_percent_of_it() {
    // The server closes every connection (GOAWAY on a busy one) at its 10th request; the
    // configured cap is far above.
    let server = Server::new(|_| Script::GoAwayAt(10));
    let c = client(config(1000), &server);
    for _ in 0..56 {
        post_ok(&c).await;
    }
    // Two agreeing GOAWAYs teach the limit of 10; from then on connections retire after 9
    // requests and the server never has to close one again.
    // (The last is the replacement dialed ahead of need.)
    assert_eq!(server.streams(), [10, 10, 9, 9, 9, 9, 0]);
    assert_eq!(c.inner.learner.lock().unwrap().learned(), Some(10));
}

#[tokio::test(start_paused = true)]
async fn goaway_refused_streams_come_back_resendable() {
    // Four requests in flight on one connection; the server's GOAWAY says it processed
    // streams 1 and 3 only.
    let server = Server::new(|conn| match conn {
        0 => Script::RawGoAway {
            hold: 4,
            last_stream_id: 3,
        },
        _ => Script::Serve,
    });
    let c = client(config(1000), &server);
    let results = join_all((0..4).map(|_| post(&c))).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let resend: Vec<Retry> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .map(classify)
        .collect();
    assert_eq!(ok, 2, "{results:?}");
    assert_eq!(resend, [Retry::Now, Retry::Now], "{results:?}");
    // The connection is gone from the pool: the resend dials a new one and succeeds.
    post_ok(&c).await;
    assert_eq!(server.dials(), 2);
    assert_eq!(server.streams()[1], 1);
}

#[tokio::test(start_paused = true)]
async fn refused_stream_is_resendable_and_keeps_the_connection() {
    let server = Server::new(|_| Script::RefuseFirst);
    let c = client(config(1000), &server);
    let err = post(&c).await.expect_err("refused");
    assert_eq!(classify(&err), Retry::Now, "{err:?}");
    post_ok(&c).await;
    // REFUSED_STREAM refuses one stream, not the connection.
    assert_eq!(server.dials(), 1);
    assert_eq!(server.streams(), [2]);
}

#[tokio::test(start_paused = true)]
async fn idle_connection_is_closed_after_timeouts_idle() {
    let counters = Counters::default();
    let _guard = metrics::set_default_local_recorder(&counters);
    let server = Server::new(|_| Script::Serve);
    let mut cfg = config(1000);
    cfg.timeouts.idle = Duration::from_secs(10);
    let c = client(cfg, &server);
    post_ok(&c).await;
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(c.pooled(), 1, "closed before timeouts.idle");
    assert_eq!(server.ended.load(Ordering::Acquire), 0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(c.pooled(), 0, "still pooled after timeouts.idle");
    // The pool closed it itself: the server saw it end, the reason is recorded.
    assert_eq!(server.ended.load(Ordering::Acquire), 1);
    assert_eq!(
        counters.get("uplink_client_connections_closed_total{reason=idle}"),
        1
    );
    // The next request dials afresh.
    post_ok(&c).await;
    assert_eq!(server.dials(), 2);
}

#[tokio::test(start_paused = true)]
async fn unanswered_ping_closes_a_half_open_connection() {
    let counters = Counters::default();
    let _guard = metrics::set_default_local_recorder(&counters);
    let server = Server::new(|conn| match conn {
        0 => Script::DeafAfterFirst,
        _ => Script::Serve,
    });
    let mut cfg = config(1000);
    cfg.timeouts.idle = Duration::from_secs(3600);
    cfg.timeouts.ping_interval = Duration::from_secs(10);
    cfg.timeouts.ping_timeout = Duration::from_secs(5);
    let c = client(cfg, &server);
    post_ok(&c).await;
    // From now on the server neither reads nor answers: the connection is half-open.
    server.deaf.notify_one();
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(
        counters.get("uplink_client_connections_closed_total{reason=ping_timeout}"),
        0,
        "closed before the first PING was due"
    );
    // PING sent at ~10 s, unanswered by ~15 s.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(
        counters.get("uplink_client_connections_closed_total{reason=ping_timeout}"),
        1
    );
    // The dead connection takes no more work: the next request dials afresh.
    post_ok(&c).await;
    assert_eq!(server.dials(), 2);
}

#[tokio::test(start_paused = true)]
async fn connections_rotate_within_ten_percent_of_max_age() {
    let counters = Counters::default();
    let _guard = metrics::set_default_local_recorder(&counters);
    const AGE: Duration = Duration::from_secs(100);
    const STEP: Duration = Duration::from_millis(250);
    let servers: Vec<_> = (0..10).map(|_| Server::new(|_| Script::Serve)).collect();
    let clients: Vec<_> = servers
        .iter()
        .map(|s| {
            let mut cfg = config(1_000_000);
            cfg.max_connection_age = AGE;
            cfg.timeouts.idle = Duration::from_secs(3600);
            client(cfg, s)
        })
        .collect();
    // A request on every client every 250 ms for 120 s.
    for _ in 0..480 {
        let results = join_all(clients.iter().map(post)).await;
        assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
        tokio::time::sleep(STEP).await;
    }
    let mut rotated_after = Vec::new();
    for s in &servers {
        let times = s.dial_times.lock().unwrap().clone();
        assert_eq!(
            times.len(),
            2,
            "one rotation in 120 s at an age of 90..110 s"
        );
        let age = times[1] - times[0];
        assert!(
            age >= AGE.mul_f64(0.9) && age <= AGE.mul_f64(1.1) + STEP + DIAL_LATENCY,
            "rotated after {age:?}"
        );
        rotated_after.push(age);
    }
    rotated_after.sort();
    rotated_after.dedup();
    assert!(
        rotated_after.len() > 1,
        "no jitter: every connection rotated after {rotated_after:?}"
    );
    assert_eq!(
        counters.get("uplink_client_rotations_total{reason=age}"),
        10
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_without_an_answer_ends_at_timeouts_request_and_is_retried_with_backoff() {
    let server = Server::new(|_| Script::NeverAnswer);
    let mut cfg = config(1000);
    cfg.timeouts.request = Duration::from_secs(20);
    let c = client(cfg, &server);
    let started = Instant::now();
    let err = post(&c).await.unwrap_err();
    assert!(
        matches!(err, ForwardError::RequestTimeout { after } if after == Duration::from_secs(20)),
        "{err}"
    );
    // Paused time: the whole request, dial included, ended exactly at the configured timeout.
    assert_eq!(started.elapsed(), Duration::from_secs(20));
    assert_eq!(
        classify(&err),
        Retry::Backoff,
        "maybe processed: resend after a backoff"
    );
}
