//! Claims of README.md that no other test backed (issue 21): each test names the claim it
//! proves; each is bounded in time.

use std::time::Duration;

use async_nats::jetstream::stream::{Config, RetentionPolicy};
use uplink_tools::testbed::TempDir;

use crate::support::{cloud_js, exe, pipeline};

/// README ("uplink tail"): tail refuses a work-queue stream, since its consumer would take
/// messages away from the stream's own consumer — and the stream keeps every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_refuses_a_work_queue_stream_and_takes_nothing() {
    let p = pipeline(|_| {}, |_| {}).await;
    let cloud = cloud_js(&p).await;
    cloud
        .create_stream(Config {
            name: "WQ".into(),
            subjects: vec!["wq.>".into()],
            retention: RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await
        .unwrap();
    cloud
        .publish("wq.one", "kept".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let config = p.dir.path().join("ingest.toml");
    let run = tokio::process::Command::new(exe())
        .arg("tail")
        .arg("--config")
        .arg(&config)
        .args(["--set", "nats.stream=WQ", "--count", "1"])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("tail ends within 30 s")
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "tail read a work queue: {err}");
    assert!(
        err.contains("cloud stream WQ is a work queue") && err.contains("tail refuses"),
        "{err}"
    );
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let mut wq = cloud.get_stream("WQ").await.unwrap();
    assert_eq!(
        wq.info().await.unwrap().state.messages,
        1,
        "the message is still there"
    );
}

/// README ("Certificates"): an ingest whose certificate and key do not belong together does
/// not start (usage exit 64), naming both files — as the gateway does
/// (`certificates::a_gateway_with_a_mismatched_key_pair_does_not_start_and_names_the_files`).
#[test]
fn an_ingest_with_a_mismatched_key_pair_does_not_start_and_names_the_files() {
    uplink::tls::install_crypto_provider();
    let dir = TempDir::new("uplink-ingest-mismatch").unwrap();
    let pki = uplink::tls::dev_pki(dir.path(), &["edge-1".to_string()]).unwrap();
    let mut cmd = std::process::Command::new(exe());
    cmd.arg("ingest")
        .args(["--set", &format!("tls.ca={}", pki.ca().display())])
        .args([
            "--set",
            &format!("tls.cert={}", pki.server_cert().display()),
        ])
        .args([
            "--set",
            &format!("tls.key={}", pki.client_key("edge-1").display()),
        ])
        .args(["--set", "listen=127.0.0.1:0"])
        .args(["--set", "nats.url=nats://127.0.0.1:1"]);
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded: an ingest that started anyway is killed after 20 s (and fails below).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    let cert = pki.server_cert();
    let key = pki.client_key("edge-1");
    let name = |p: &std::path::Path| p.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        err.contains(&name(&cert)) && err.contains(&name(&key)),
        "{err}"
    );
}

/// README ("Certificates"): the ingest resumes no TLS sessions, so every connection's
/// certificate is verified afresh. A client that keeps sessions (rustls' default store) and
/// reads what the server sent after the first handshake (where TLS 1.3 tickets would arrive)
/// still gets a full handshake on its next connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingest_resumes_no_tls_session() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let p = pipeline(|_| {}, |_| {}).await;
    let pki = p.pki();
    let cfg = uplink::tls::client_config(
        &pki.ca(),
        &pki.client_cert("edge-1"),
        &pki.client_key("edge-1"),
    )
    .unwrap();
    // Offer resumption explicitly (rustls' in-memory store), so the test can fail.
    let mut cfg = (*cfg).clone();
    cfg.resumption = rustls::client::Resumption::in_memory_sessions(16);
    let cfg = std::sync::Arc::new(cfg);
    let connector = tokio_rustls::TlsConnector::from(cfg);
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let tcp = tokio::net::TcpStream::connect(p.ingest_cfg.listen)
            .await
            .unwrap();
        let mut tls = connector
            .connect(
                rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            )
            .await
            .expect("TLS handshake");
        kinds.push(tls.get_ref().1.handshake_kind());
        // The HTTP/2 preface and an empty SETTINGS; the server's SETTINGS come back after any
        // session ticket it would send.
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
            .await
            .expect("the server's SETTINGS within 10 s")
            .unwrap();
        assert!(n > 0);
    }
    assert_eq!(
        kinds,
        [
            Some(rustls::HandshakeKind::Full),
            Some(rustls::HandshakeKind::Full)
        ]
    );
}

/// README ("uplink bench"): `bench --via-nginx` runs the pipeline with nginx in front of the
/// ingest and verifies the delivery: every message once, none lost, none corrupted. Bounded:
/// killed after 60 s (under a second here).
#[test]
fn bench_via_nginx_runs_and_verifies_the_delivery() {
    let mut child = std::process::Command::new(exe())
        .args(["bench", "--via-nginx", "--messages", "2000", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            panic!("bench --via-nginx ran over 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let v = crate::support::json_of(&out);
    assert_eq!(v["delivered"], 2000, "{v}");
    assert_eq!(
        (
            v["lost"].as_u64(),
            v["duplicates"].as_u64(),
            v["corrupted"].as_u64()
        ),
        (Some(0), Some(0), Some(0)),
        "{v}"
    );
    assert!(v["msgs_per_sec"].as_f64().is_some_and(|r| r > 0.0), "{v}");
}

/// README ("Connecting to NATS"): streams uplink creates get `nats.max_age`, `nats.max_bytes`
/// …; an existing stream keeps its own limits. The operator's cloud stream is there before the
/// ingest starts, with limits none of uplink's defaults have; after the ingest started and
/// delivered into it, its configuration reads back unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_cloud_stream_keeps_its_own_limits() {
    use async_nats::jetstream::stream::DiscardPolicy;
    let mut p = pipeline(|_| {}, |_| {}).await;
    assert!(p.kill_ingest("ingest"));
    let cloud = cloud_js(&p).await;
    let name = p.ingest_cfg.nats.stream.clone();
    cloud.delete_stream(&name).await.unwrap();
    let mine = Config {
        name: name.clone(),
        subjects: p.ingest_cfg.nats.subjects.clone(),
        description: Some("the operator's own".into()),
        max_age: Duration::from_secs(3 * 24 * 3600),
        max_bytes: 64 << 20,
        max_messages: 123_456,
        max_messages_per_subject: 777,
        discard: DiscardPolicy::Old,
        duplicate_window: Duration::from_secs(45),
        ..Default::default()
    };
    // Not what uplink would set: the check below can fail.
    assert_ne!(mine.max_bytes, p.ingest_cfg.nats.limits.max_bytes);
    assert_ne!(mine.duplicate_window, p.ingest_cfg.nats.duplicate_window);
    let before = cloud
        .create_stream(mine)
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    p.start_ingest().await.unwrap();
    let edge = crate::support::edge_js(&p).await;
    let sent = crate::support::publish(&edge, 200).await;
    let r = crate::support::verify_delivery(&p, &sent).await;
    crate::support::assert_exactly_once(&p, &r, 200);
    let after = cloud
        .get_stream(&name)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    assert_eq!(
        serde_json::to_value(&after).unwrap(),
        serde_json::to_value(&before).unwrap()
    );
    // README ("HTTP API"): on a server with fast batch publish, a stream created without
    // `allow_batched` is published message by message, said once in the log.
    if crate::support::nats_at_least(2, 14) {
        let log = p.log("ingest");
        let said = log
            .lines()
            .filter(|l| l.contains("was created without allow_batched"))
            .count();
        assert_eq!(said, 1, "{log}");
        let m = p.ingest_metrics().await.unwrap();
        let count = |mode: &str| {
            uplink::telemetry::scrape_sum_present(
                &m,
                &format!("uplink_ingest_publish_requests_total{{mode=\"{mode}\"}}"),
            )
        };
        assert_eq!(count("fast_batch"), Some(0.0), "{m}");
        assert!(count("per_message").is_some_and(|n| n >= 1.0), "{m}");
    }
}

/// README ("The cloud on a JetStream cluster"): requests in flight when the connection is lost
/// do not wait `timeouts.publish` (30 s here) for PubAcks that will not come: they are answered
/// 503 at once. The cloud server is frozen (SIGSTOP: the publish is sent, its PubAck never
/// comes), then SIGKILLed while the request waits; the 503 must come well before 30 s (10 s: a
/// generous bound, and the point). After the restart the request is retried and stored once,
/// and what the edge published meanwhile arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_awaiting_pubacks_when_the_cloud_connection_dies_is_answered_503_at_once() {
    use uplink::telemetry::scrape_sum_present;
    let mut p = pipeline(
        |i| i.timeouts.publish = Duration::from_secs(30),
        crate::support::fast_recovery,
    )
    .await;
    let cloud_pid = p.cloud.as_ref().unwrap().proc.pid().unwrap();
    uplink_tools::testbed::send_signal(cloud_pid, libc::SIGSTOP);
    let client = crate::support::edge_client(&p);
    let sent_at = std::time::Instant::now();
    let post = {
        let client = client.clone();
        tokio::spawn(async move {
            let r = crate::support::h2client::post(
                &client,
                "/v1/publish/inflight",
                &[("idempotency-key", "inflight-1")],
                "1",
            )
            .await;
            (r, std::time::Instant::now())
        })
    };
    // The request is in the ingest (its body held) and so awaiting its PubAck.
    let held = uplink_tools::testbed::wait_for(
        || async {
            let m = p.ingest_metrics().await?;
            Ok(scrape_sum_present(&m, "uplink_ingest_inflight_bytes").is_some_and(|b| b > 0.0))
        },
        Duration::from_secs(10),
    )
    .await;
    assert!(held.is_ok(), "the request never reached the ingest");
    let killed_at = std::time::Instant::now();
    p.stop_cloud();
    let (resp, answered_at) = tokio::time::timeout(Duration::from_secs(20), post)
        .await
        .expect("an answer within 20 s")
        .unwrap();
    let resp = resp.unwrap();
    let body = String::from_utf8_lossy(resp.body()).to_string();
    let took = answered_at - killed_at;
    eprintln!(
        "answered {} after {took:?} (sent {:?} before the kill): {body}",
        resp.status(),
        killed_at - sent_at
    );
    assert_eq!(resp.status(), 503, "{body}");
    assert!(body.contains("awaited its PubAcks"), "{body}");
    assert!(
        took < Duration::from_secs(10),
        "{took:?} (timeouts.publish = 30 s)"
    );
    // RELIABILITY.md: a refused request logs one line, warn for a 5xx.
    let log = p.log("ingest");
    assert!(
        log.lines().any(|l| l.contains(" WARN ")
            && l.contains("request not persisted")
            && l.contains("awaited its PubAcks")),
        "{log}"
    );
    // Frozen for over 2 s, the leader probe (clamped to 2 s) may have condemned the request
    // first; killed sooner, the lost connection did.
    if killed_at - sent_at < Duration::from_millis(1500) {
        assert!(body.contains("connection to cloud NATS was lost"), "{body}");
    }
    let edge = crate::support::edge_js(&p).await;
    let sent = crate::support::publish(&edge, 300).await;
    p.start_cloud().await.unwrap();
    let retry = uplink_tools::testbed::wait_for(
        || async {
            let r = crate::support::h2client::post(
                &client,
                "/v1/publish/inflight",
                &[("idempotency-key", "inflight-1")],
                "1",
            )
            .await?;
            Ok(r.status() == 200)
        },
        Duration::from_secs(30),
    )
    .await;
    assert!(retry.is_ok(), "{}", crate::support::tail(&p.log("ingest")));
    // 300 from the edge and the retried request, each once.
    crate::support::wait_delivered(&p, 301).await;
    let cloud = cloud_js(&p).await;
    let got = uplink_tools::testbed::verify::read_all(&cloud, &p.ingest_cfg.nats.stream)
        .await
        .unwrap();
    let (direct, rest): (Vec<_>, Vec<_>) = got
        .into_iter()
        .partition(|m| m.subject.ends_with(".inflight"));
    assert_eq!(direct.len(), 1, "{direct:?}");
    let incarnation = uplink_tools::testbed::verify::incarnation(&edge, &p.gateway_cfg.nats.stream)
        .await
        .unwrap();
    let r = uplink_tools::testbed::verify::check(
        &sent,
        &rest,
        &p.platform,
        &p.gateway_cfg.nats.stream,
        incarnation,
        &p.ingest_cfg.nats.subject_prefix,
    );
    crate::support::assert_exactly_once(&p, &r, 300);
}

/// One connection's worth of an HTTP/2 protocol error: the preface, an empty SETTINGS, and a
/// header block that is not HPACK (index 0 is invalid) — a COMPRESSION_ERROR.
const BAD_HPACK: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0\0\0\x03\x01\x05\0\0\0\x01\x80\xff\xff";

/// Opens a connection, commits [`BAD_HPACK`] and reads until the ingest closes it.
async fn one_protocol_error(p: &uplink_tools::testbed::pipeline::Pipeline) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tls = crate::support::tls_connect(p).await;
    tls.write_all(BAD_HPACK).await.unwrap();
    tls.flush().await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut got))
        .await
        .expect("the ingest closes the connection");
}

/// The ingest's protocol-error log lines and the `suppressed=` counts they carry.
fn protocol_lines(p: &uplink_tools::testbed::pipeline::Pipeline) -> (u64, u64) {
    let log = p.log("ingest");
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("connection closed for an HTTP/2 protocol error"))
        .collect();
    let suppressed = lines
        .iter()
        .map(|l| {
            let v = l
                .split("suppressed=")
                .nth(1)
                .unwrap_or_else(|| panic!("{l}"));
            let digits: String = v.chars().take_while(|c| c.is_ascii_digit()).collect();
            digits.parse::<u64>().unwrap()
        })
        .sum();
    (lines.len() as u64, suppressed)
}

/// RELIABILITY.md ("HTTP/2 protocol errors"): one log line per connection killed, at most 10
/// lines a second, then a count: a flood of protocol errors is not a flood of log lines, and
/// every one is counted — in `uplink_ingest_protocol_errors_total` and, for the lines left out,
/// in the `suppressed` of the next line written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_protocol_errors_is_logged_at_most_ten_lines_a_second_and_all_counted() {
    const FLOOD: u64 = 100;
    let p = std::sync::Arc::new(pipeline(|_| {}, |_| {}).await);
    let counted = |p: std::sync::Arc<uplink_tools::testbed::pipeline::Pipeline>| async move {
        let m = p.ingest_metrics().await.unwrap_or_default();
        uplink::telemetry::scrape_sum_present(&m, "uplink_ingest_protocol_errors_total")
            .unwrap_or(0.0) as u64
    };
    let started = std::time::Instant::now();
    let flood: Vec<_> = (0..FLOOD)
        .map(|_| {
            let p = p.clone();
            tokio::spawn(async move { one_protocol_error(&p).await })
        })
        .collect();
    for f in flood {
        f.await.unwrap();
    }
    let all = uplink_tools::testbed::wait_for(
        || async { Ok(counted(p.clone()).await >= FLOOD) },
        Duration::from_secs(30),
    )
    .await;
    assert!(all.is_ok(), "{}", crate::support::tail(&p.log("ingest")));
    let span = started.elapsed();
    let (lines, _) = protocol_lines(&p);
    // Every event of the flood happened within `span`: at most that many one-second windows
    // (plus the one it started in), 10 lines each.
    let windows = span.as_secs() + 1;
    eprintln!("{FLOOD} protocol errors in {span:?}: {lines} lines");
    assert!(lines <= 10 * windows, "{lines} lines in {span:?}");
    assert!(lines >= 1);
    // One more at a time until one is written after the suppressed stretch (a new second):
    // then the lines and their suppressed counts account for every error. Bounded: 200 more,
    // about 10 s.
    let mut total = FLOOD;
    let accounted = loop {
        let (lines, suppressed) = protocol_lines(&p);
        if lines + suppressed == total {
            break true;
        }
        if total >= FLOOD + 200 {
            break false;
        }
        // Paced (a load, not a synchronization): a new second comes after ~20 of them.
        tokio::time::sleep(Duration::from_millis(50)).await;
        one_protocol_error(&p).await;
        total += 1;
        let counted_now = uplink_tools::testbed::wait_for(
            || async { Ok(counted(p.clone()).await >= total) },
            Duration::from_secs(10),
        )
        .await;
        assert!(counted_now.is_ok());
    };
    let (lines, suppressed) = protocol_lines(&p);
    assert!(
        accounted,
        "{lines} lines + {suppressed} suppressed != {total} errors:\n{}",
        crate::support::tail(&p.log("ingest"))
    );
    assert_eq!(counted(p.clone()).await, total);
    if span < Duration::from_secs(5) {
        assert!(
            suppressed > 0,
            "{FLOOD} errors within {span:?} and none suppressed"
        );
    }
}

/// Waits until the gateway has logged `message` `nth` times (polled, at most `within`).
async fn wait_logged(
    p: &uplink_tools::testbed::pipeline::Pipeline,
    message: &str,
    nth: usize,
    within: Duration,
) {
    let seen = uplink_tools::testbed::wait_for(
        || async {
            Ok(p.log("gateway")
                .lines()
                .filter(|l| l.contains(message))
                .count()
                >= nth)
        },
        within,
    )
    .await;
    assert!(
        seen.is_ok(),
        "no {nth}. {message:?}:\n{}",
        crate::support::tail(&p.log("gateway"))
    );
}

/// When the gateway logged `message` for the `nth` time (1-based), by the log's timestamp.
fn logged_at(log: &str, message: &str, nth: usize) -> Option<std::time::SystemTime> {
    let line = log.lines().filter(|l| l.contains(message)).nth(nth - 1)?;
    humantime::parse_rfc3339(line.split_whitespace().next()?).ok()
}

/// The stream's creation time, by its server.
async fn created_at(
    js: &async_nats::jetstream::Context,
    name: &str,
) -> Option<std::time::SystemTime> {
    let mut s = js.get_stream(name).await.ok()?;
    let nanos = s.info().await.ok()?.created.unix_timestamp_nanos();
    Some(std::time::UNIX_EPOCH + Duration::from_nanos(u64::try_from(nanos).ok()?))
}

/// README (the nats-server 2.9 trap): the gateway waits `nats.recreate_grace` before
/// recreating a vanished edge stream itself (3 s here; 10 s by default). Deleted once: the
/// gateway notices, and the stream it creates is at least the grace younger than that moment.
/// Deleted again: an operator recreating it within the grace, with limits of their own, is not
/// raced — their create succeeds (it would fail on a stream the gateway made first) and the
/// gateway binds their stream, whose configuration it leaves alone; both times every message
/// arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_waits_recreate_grace_before_recreating_a_vanished_stream() {
    const GRACE: Duration = Duration::from_secs(3);
    const LOST: &str = "consuming stopped; rebinding";
    const BOUND: &str = "consumer bound";
    let p = pipeline(
        |_| {},
        |g| {
            crate::support::fast_recovery(g);
            g.nats.recreate_grace = GRACE;
        },
    )
    .await;
    let edge = crate::support::edge_js(&p).await;
    let name = p.gateway_cfg.nats.stream.clone();
    let first = crate::support::publish(&edge, 100).await;
    let first = (
        first,
        uplink_tools::testbed::verify::incarnation(&edge, &name)
            .await
            .unwrap(),
    );
    crate::support::wait_delivered(&p, 100).await;

    // 1. Nobody recreates it: the gateway does, the grace after it noticed.
    edge.delete_stream(&name).await.unwrap();
    wait_logged(&p, BOUND, 2, Duration::from_secs(30)).await;
    let noticed = logged_at(&p.log("gateway"), LOST, 1).expect("logged");
    let created = created_at(&edge, &name)
        .await
        .expect("the gateway recreated it");
    let waited = created.duration_since(noticed).unwrap_or_default();
    eprintln!("recreated {waited:?} after the loss was noticed");
    assert!(
        waited >= GRACE,
        "recreated {waited:?} after the loss (grace {GRACE:?})"
    );
    let second = crate::support::publish(&edge, 100).await;
    let second = (
        second,
        uplink_tools::testbed::verify::incarnation(&edge, &name)
            .await
            .unwrap(),
    );
    crate::support::wait_delivered(&p, 200).await;

    // 2. The operator recreates it within the grace, their way.
    edge.delete_stream(&name).await.unwrap();
    wait_logged(&p, LOST, 2, Duration::from_secs(30)).await;
    let theirs = Config {
        name: name.clone(),
        subjects: p.gateway_cfg.nats.subjects.clone(),
        retention: RetentionPolicy::WorkQueue,
        description: Some("the operator's".into()),
        max_messages: 4242,
        ..Default::default()
    };
    let made = edge.create_stream(theirs).await;
    assert!(made.is_ok(), "the gateway raced the operator: {made:?}");
    wait_logged(&p, BOUND, 3, Duration::from_secs(30)).await;
    let third = crate::support::publish(&edge, 100).await;
    let third = (
        third,
        uplink_tools::testbed::verify::incarnation(&edge, &name)
            .await
            .unwrap(),
    );
    crate::support::wait_delivered(&p, 300).await;
    let cfg = edge
        .get_stream(&name)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    assert_eq!(
        (cfg.description.as_deref(), cfg.max_messages),
        (Some("the operator's"), 4242)
    );

    // Every message once, each under its stream's incarnation.
    let cloud = cloud_js(&p).await;
    let got = uplink_tools::testbed::verify::read_all(&cloud, &p.ingest_cfg.nats.stream)
        .await
        .unwrap();
    assert_eq!(got.len(), 300);
    for (i, (sent, incarnation)) in [first, second, third].iter().enumerate() {
        let r = uplink_tools::testbed::verify::check(
            sent,
            &got[i * 100..(i + 1) * 100],
            &p.platform,
            &name,
            *incarnation,
            &p.ingest_cfg.nats.subject_prefix,
        );
        crate::support::assert_exactly_once(&p, &r, 100);
    }
}

/// README (the nats-server 2.9 trap): a consumer with pending messages that delivers nothing
/// for 20 s makes the gateway log an error, count `uplink_gateway_consumer_stalls_total` and
/// answer `/readyz` 503 ("edge consumer stalled") until messages flow again. Provoked without
/// the 2.9 bug: the edge consumer is paused (JetStream API, nats-server 2.11+), so the server
/// reports pending messages and delivers none; resumed, everything arrives exactly once and
/// `/readyz` is 200 again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_delivers_nothing_is_reported_stalled_until_it_delivers_again() {
    use uplink_tools::testbed::http_get;
    if !crate::support::nats_at_least(2, 11) {
        eprintln!("skipped: pausing a consumer needs nats-server 2.11 or later");
        return;
    }
    let p = pipeline(|_| {}, crate::support::fast_recovery).await;
    let edge = crate::support::edge_js(&p).await;
    let (stream, consumer) = (&p.gateway_cfg.nats.stream, &p.gateway_cfg.nats.consumer);
    let until = std::time::SystemTime::now() + Duration::from_secs(600);
    assert!(pause(&edge, stream, consumer, Some(until)).await, "paused");
    let sent = crate::support::publish(&edge, 100).await;
    let admin = p.gateway.as_ref().unwrap().admin;
    let stalled = uplink_tools::testbed::wait_for(
        || async {
            let m = p.gateway_metrics().await?;
            Ok(
                uplink::telemetry::scrape_sum_present(&m, "uplink_gateway_consumer_stalls_total")
                    .is_some_and(|n| n >= 1.0),
            )
        },
        Duration::from_secs(40),
    )
    .await;
    assert!(
        stalled.is_ok(),
        "{}",
        crate::support::tail(&p.log("gateway"))
    );
    let (status, why) = http_get(admin, "/readyz").await.unwrap();
    assert_eq!(status, 503, "{why}");
    assert!(why.contains("edge consumer stalled"), "{why}");
    let log = p.log("gateway");
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("edge consumer stalled; rebinding")),
        "{log}"
    );
    assert_eq!(
        crate::support::stream_len(&cloud_js(&p).await, &p.ingest_cfg.nats.stream).await,
        0
    );
    assert!(!pause(&edge, stream, consumer, None).await, "resumed");
    let r = crate::support::verify_delivery(&p, &sent).await;
    crate::support::assert_exactly_once(&p, &r, 100);
    let ready = uplink_tools::testbed::wait_for(
        || async { Ok(http_get(admin, "/readyz").await?.0 == 200) },
        Duration::from_secs(30),
    )
    .await;
    assert!(ready.is_ok(), "{:?}", http_get(admin, "/readyz").await);
}

/// `$JS.API.CONSUMER.PAUSE`: pauses the consumer until `until`, or resumes it (`None`); whether
/// it is paused now, by the server's answer.
async fn pause(
    js: &async_nats::jetstream::Context,
    stream: &str,
    consumer: &str,
    until: Option<std::time::SystemTime>,
) -> bool {
    let body = match until {
        Some(t) => serde_json::json!({ "pause_until": humantime::format_rfc3339(t).to_string() }),
        None => serde_json::json!({}),
    };
    let answer = js
        .client()
        .request(
            format!("$JS.API.CONSUMER.PAUSE.{stream}.{consumer}"),
            serde_json::to_vec(&body).unwrap().into(),
        )
        .await
        .unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&answer.payload).unwrap();
    answer["paused"]
        .as_bool()
        .unwrap_or_else(|| panic!("{answer}"))
}

/// README ("When it cannot deliver"): the gateway logs each new cause once with its hint, then
/// one `still cannot deliver` summary every 30 s (a constant, `gateway::complaints::
/// SUMMARY_EVERY`: this test waits it out once, ~31 s) and `delivering again` when it recovers.
/// The ingest is killed, the gateway retries every 0.5 s at most for over 30 s; one full line,
/// one summary at least 30 s after it counting the attempts, then the ingest is back and every
/// message arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_cannot_deliver_summarizes_every_30_s_and_says_when_it_delivers_again() {
    const SUMMARY: &str = "still cannot deliver; retrying";
    const AGAIN: &str = "delivering again";
    let mut p = pipeline(|_| {}, crate::support::fast_recovery).await;
    assert!(p.kill_ingest("ingest"));
    let edge = crate::support::edge_js(&p).await;
    let sent = crate::support::publish(&edge, 20).await;
    wait_logged(&p, SUMMARY, 1, Duration::from_secs(45)).await;
    p.start_ingest().await.unwrap();
    wait_logged(&p, AGAIN, 1, Duration::from_secs(30)).await;
    let r = crate::support::verify_delivery(&p, &sent).await;
    crate::support::assert_exactly_once(&p, &r, 20);
    let log = p.log("gateway");
    let first: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("cannot deliver; retrying") && !l.contains(SUMMARY))
        .collect();
    assert_eq!(first.len(), 1, "each cause once: {first:#?}");
    assert!(
        first[0].contains("nothing listens there: check cloud.url"),
        "{}",
        first[0]
    );
    let summaries: Vec<&str> = log.lines().filter(|l| l.contains(SUMMARY)).collect();
    assert_eq!(summaries.len(), 1, "{summaries:#?}");
    let attempts: u64 = summaries[0]
        .split("failed_attempts=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{}", summaries[0]));
    // 30 s of retries at most 0.5 s apart.
    assert!(attempts >= 30, "{}", summaries[0]);
    let (t_first, t_summary, t_again) = (
        logged_at(&log, "cannot deliver; retrying", 1).unwrap(),
        logged_at(&log, SUMMARY, 1).unwrap(),
        logged_at(&log, AGAIN, 1).unwrap(),
    );
    let waited = t_summary.duration_since(t_first).unwrap_or_default();
    assert!(
        waited >= Duration::from_secs(30),
        "summary {waited:?} after the first line"
    );
    assert!(t_again >= t_summary);
    let again = log.lines().find(|l| l.contains(AGAIN)).unwrap();
    assert!(again.contains("failed_attempts="), "{again}");
}

/// README ("Quick start"): Ctrl-C (SIGINT) stops each program gracefully, as SIGTERM does:
/// the gateway and then the ingest exit 0 within their grace, saying why; what was delivered
/// stays delivered exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_both_programs_gracefully() {
    let mut p = pipeline(|_| {}, |_| {}).await;
    let sent = crate::support::publish(&crate::support::edge_js(&p).await, 200).await;
    let r = crate::support::verify_delivery(&p, &sent).await;
    crate::support::assert_exactly_once(&p, &r, 200);
    for program in ["gateway", "ingest"] {
        let up = match program {
            "gateway" => p.gateway.as_mut(),
            _ => p.ingest.as_mut(),
        }
        .unwrap();
        up.proc.signal(libc::SIGINT);
        let code = up.proc.wait_exit(Duration::from_secs(20)).await;
        let log = p.log(program);
        assert_eq!(code, Some(0), "{program}: {}", crate::support::tail(&log));
        assert!(
            log.contains("SIGINT: shutting down"),
            "{program}: {}",
            crate::support::tail(&log)
        );
    }
    let cloud = cloud_js(&p).await;
    assert_eq!(
        crate::support::stream_len(&cloud, &p.ingest_cfg.nats.stream).await,
        200
    );
}

/// README (admin listeners): `/healthz` says the process is alive, `/readyz` whether it can do
/// its job — the gateway's edge NATS connected, the ingest's JetStream reachable. With both
/// nats-servers gone, both programs answer `/readyz` 503 with the reason and `/healthz` 200;
/// with the servers back, `/readyz` is 200 again and delivery goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_while_readyz_says_why_a_program_is_not_ready() {
    use uplink_tools::testbed::http_get;
    let mut p = pipeline(|_| {}, |_| {}).await;
    let admins = [
        ("gateway", p.gateway.as_ref().unwrap().admin),
        ("ingest", p.ingest.as_ref().unwrap().admin),
    ];
    for (program, admin) in admins {
        assert_eq!(
            http_get(admin, "/healthz").await.unwrap(),
            (200, "ok\n".into()),
            "{program}"
        );
    }
    p.stop_edge(Duration::ZERO).await;
    p.stop_cloud();
    let readyz = |admin, status| async move {
        uplink_tools::testbed::wait_for(
            || async { Ok(http_get(admin, "/readyz").await?.0 == status) },
            Duration::from_secs(30),
        )
        .await
    };
    for (program, admin) in admins {
        assert!(
            readyz(admin, 503).await.is_ok(),
            "{program}: {}",
            crate::support::tail(&p.log(program))
        );
        let (_, why) = http_get(admin, "/readyz").await.unwrap();
        let side = if program == "gateway" {
            "edge NATS"
        } else {
            "cloud NATS"
        };
        assert!(why.contains(side), "{program}: {why}");
        eprintln!("{program} /readyz: {}", why.trim());
        assert_eq!(
            http_get(admin, "/healthz").await.unwrap(),
            (200, "ok\n".into()),
            "{program}"
        );
    }
    p.start_edge().await.unwrap();
    p.start_cloud().await.unwrap();
    for (program, admin) in admins {
        assert!(
            readyz(admin, 200).await.is_ok(),
            "{program}: {}",
            crate::support::tail(&p.log(program))
        );
    }
    let sent = crate::support::publish(&crate::support::edge_js(&p).await, 100).await;
    let r = crate::support::verify_delivery(&p, &sent).await;
    crate::support::assert_exactly_once(&p, &r, 100);
}

/// README "HTTP API": the gateway does not forward edge headers in the ingest's namespaces
/// (`Nats-*`, the edge JetStream's own control headers; `Uplink-*`, which the ingest refuses as
/// `bad_header`). A message carrying them is not refused and dead-lettered: it arrives with its
/// other headers and with the ingest's own stamps, not the edge's copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_headers_in_the_ingests_namespaces_are_not_forwarded_and_the_message_arrives() {
    // With the platform header on, the ingest's own stamp replaces the edge's copy.
    let p = pipeline(|i| i.nats.platform_header = true, |_| {}).await;
    let edge = crate::support::edge_js(&p).await;
    let mut h = async_nats::HeaderMap::new();
    h.insert("Uplink-Platform", "edge-2");
    h.insert("uplink-time-unix-nano", "1");
    h.insert("Nats-Msg-Id", "edge-side-id");
    h.insert("X-Kept", "yes");
    edge.publish_with_headers("telemetry.spoof", h, "21.5".into())
        .await
        .unwrap()
        .await
        .unwrap();
    crate::support::wait_delivered(&p, 1).await;

    let cloud = cloud_js(&p).await;
    let stream = cloud.get_stream(&p.ingest_cfg.nats.stream).await.unwrap();
    let m = stream
        .get_raw_message(1)
        .await
        .expect("the message arrived");
    let get = |name: &str| m.headers.get(name).map(|v| v.as_str().to_string());
    let id = get("Nats-Msg-Id").expect("the ingest's id");
    let platform = id.split('.').next().unwrap().to_string();
    assert_ne!(
        id, "edge-side-id",
        "the edge's Nats-Msg-Id is not forwarded"
    );
    assert_eq!(get("Uplink-Platform"), Some(platform.clone()), "{id}");
    assert_ne!(platform, "edge-2");
    assert_ne!(get("Uplink-Time-Unix-Nano").as_deref(), Some("1"));
    assert_eq!(
        get("X-Kept").as_deref(),
        Some("yes"),
        "other headers travel"
    );
    assert_eq!(
        m.subject.as_str(),
        format!("uplink.{platform}.telemetry.spoof")
    );
    assert_eq!(m.payload.as_ref(), b"21.5");
    let g = p.gateway_metrics().await.unwrap();
    assert_eq!(
        uplink::telemetry::scrape_value(&g, "uplink_gateway_messages_total{result=\"rejected\"}"),
        Some(0.0),
        "nothing refused: {g}"
    );
}
