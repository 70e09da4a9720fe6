//! Both programs against NATS as deployed: nats-servers with accounts, passwords, a token, nkey
//! users and TLS with verified client certificates — the whole pipeline delivers exactly once,
//! refused credentials are logged with the keys to check, and connection events are logged
//! once each.

use std::time::Duration;

use uplink::config::Secret;
use uplink::telemetry::scrape_value;
use uplink_tools::testbed::pipeline::{Pipeline, PipelineOptions};
use uplink_tools::testbed::{NatsSecurity, TempDir, Uplink, free_addr, wait_for};

use crate::support::{
    assert_exactly_once, edge_js, exe, nats_at_least, nats_bin, publish, tail, verify_delivery,
    wait_stream_len_is,
};

const EDGE_PASSWORD: &str = "edge-pw-6f1c";
const CLOUD_TOKEN: &str = "cloud-token-93ab";

async fn start(
    opts: PipelineOptions,
    ingest: impl FnOnce(&mut uplink::config::IngestConfig),
    gateway: impl FnOnce(&mut uplink::config::GatewayConfig),
) -> Pipeline {
    uplink::tls::install_crypto_provider();
    Pipeline::start_with(&exe(), &nats_bin(), opts, ingest, gateway)
        .await
        .expect("pipeline starts")
}

/// Asserts that the ingest published first sends as fast batches, on its own connection to
/// cloud NATS ([`uplink`]'s `ingest/batch_conn.rs`, which authenticates by itself), where the
/// server has them (2.14+), and message by message only where it does not; and that a gateway
/// with cumulative acks read its deliveries on its own connection to edge NATS (`nats/proto.rs`,
/// the same authentication) where the server has them.
async fn assert_fast_batches_where_the_server_has_them(p: &Pipeline) {
    if p.gateway_cfg.nats.ack == uplink::config::AckMode::Cumulative && nats_at_least(2, 14) {
        let m = p.gateway_metrics().await.unwrap();
        assert_eq!(
            scrape_value(&m, "uplink_gateway_own_delivery_connection"),
            Some(1.0),
            "{m}\n{}",
            p.log("gateway")
        );
    }
    let m = p.ingest_metrics().await.unwrap();
    let count = |mode: &str| {
        scrape_value(
            &m,
            &format!("uplink_ingest_publish_requests_total{{mode=\"{mode}\"}}"),
        )
        .unwrap_or_else(|| panic!("no {mode} count in:\n{m}"))
    };
    if nats_at_least(2, 14) {
        assert!(count("fast_batch") > 0.0, "no fast batch:\n{m}");
        assert!(
            !p.log("ingest").contains("no fast-batch connection"),
            "{}",
            p.log("ingest")
        );
    } else {
        assert_eq!(count("fast_batch"), 0.0, "{m}");
    }
}

/// Asserts no log of the pipeline holds `secret`.
fn assert_not_logged(p: &Pipeline, secret: &str) {
    for name in ["gateway", "ingest"] {
        assert!(
            !p.log(name).contains(secret),
            "{name} logged a secret:\n{}",
            p.log(name)
        );
    }
}

#[tokio::test]
async fn password_on_the_edge_and_token_on_the_cloud_deliver_exactly_once() {
    let opts = PipelineOptions {
        edge_security: NatsSecurity {
            users: vec![("gateway".into(), EDGE_PASSWORD.into())],
            ..Default::default()
        },
        cloud_security: NatsSecurity {
            token: Some(CLOUD_TOKEN.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let p = start(
        opts,
        |i| i.nats.connect.token = Secret::new(CLOUD_TOKEN),
        |g| {
            g.nats.connect.user = "gateway".into();
            g.nats.connect.password = Secret::new(EDGE_PASSWORD);
            g.nats.ack = uplink::config::AckMode::Cumulative;
        },
    )
    .await;
    // The servers really demand credentials: an anonymous client is refused.
    assert!(async_nats::connect(p.edge.url()).await.is_err());
    assert!(async_nats::connect(p.cloud_url()).await.is_err());

    let sent = publish(&edge_js(&p).await, 300).await;
    let r = verify_delivery(&p, &sent).await;
    assert_exactly_once(&p, &r, 300);
    assert_fast_batches_where_the_server_has_them(&p).await;
    assert_not_logged(&p, EDGE_PASSWORD);
    assert_not_logged(&p, CLOUD_TOKEN);
    let m = p.gateway_metrics().await.unwrap();
    assert_eq!(
        scrape_value(
            &m,
            "uplink_nats_events_total{nats=\"edge\",event=\"connected\"}"
        ),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test]
async fn a_gateway_denied_the_edge_purge_acks_message_by_message_and_says_so() {
    // The purge before each flow-control reply is a shortcut: refused, the acks delete the
    // same messages one by one, nothing is lost and the work queue still empties.
    let opts = PipelineOptions {
        edge_security: NatsSecurity {
            users: vec![("gateway".into(), EDGE_PASSWORD.into())],
            deny_publish: vec!["$JS.API.STREAM.PURGE.>".into()],
            ..Default::default()
        },
        ..Default::default()
    };
    let p = start(
        opts,
        |_| {},
        |g| {
            g.nats.connect.user = "gateway".into();
            g.nats.connect.password = Secret::new(EDGE_PASSWORD);
            g.nats.ack = uplink::config::AckMode::Cumulative;
        },
    )
    .await;
    let edge = edge_js(&p).await;
    let sent = publish(&edge, 2_000).await;
    let r = verify_delivery(&p, &sent).await;
    assert_exactly_once(&p, &r, 2_000);
    wait_stream_len_is(&edge, &p.gateway_cfg.nats.stream, 0).await;
    let m = p.gateway_metrics().await.unwrap();
    assert_eq!(
        scrape_value(&m, "uplink_gateway_edge_purges_total").unwrap_or(0.0),
        0.0,
        "{m}"
    );
    let log = p.log("gateway");
    let said = log
        .matches("purging the edge stream below the acked frontier failed")
        .count();
    if nats_at_least(2, 14) {
        // Said once for the bind, not once per reply.
        assert_eq!(said, 1, "{}", tail(&log));
        assert!(
            log.contains("Permissions Violation") || log.contains("permission"),
            "{}",
            tail(&log)
        );
    } else {
        // Explicit acks on older servers: no flow-control replies, no purge tried.
        assert_eq!(said, 0, "{}", tail(&log));
    }
}

#[tokio::test]
async fn tls_with_client_certificates_to_both_nats_servers() {
    let opts = PipelineOptions {
        nats_tls: true,
        ..Default::default()
    };
    let p = start(
        opts,
        |_| {},
        |g| g.nats.ack = uplink::config::AckMode::Cumulative,
    )
    .await;
    // `verify: true`: TLS without a client certificate is refused, and so is plain text.
    let pki = p.pki();
    let no_cert = async_nats::ConnectOptions::new()
        .add_root_certificates(pki.ca())
        .require_tls(true)
        .connect(p.edge.url())
        .await;
    assert!(no_cert.is_err(), "a client without certificate got in");
    assert!(async_nats::connect(p.cloud_url()).await.is_err());

    let edge = edge_js(&p).await;
    let sent = publish(&edge, 300).await;
    let r = verify_delivery(&p, &sent).await;
    assert_exactly_once(&p, &r, 300);
    assert_fast_batches_where_the_server_has_them(&p).await;

    // The streams uplink created carry the configured retention.
    let info = edge
        .get_stream("TELEMETRY")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.config.max_bytes, 1 << 30);
    assert_eq!(info.config.max_age, Duration::from_secs(7 * 24 * 3600));
    assert_eq!(info.config.max_messages, -1);
    assert_eq!(
        info.config.discard,
        async_nats::jetstream::stream::DiscardPolicy::New
    );
    let cloud = crate::support::cloud_js(&p).await;
    let info = cloud
        .get_stream("UPLINK")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.config.max_bytes, -1);
    assert_eq!(info.config.max_age, Duration::ZERO);
}

#[tokio::test]
async fn nkey_users_on_both_nats_servers_deliver_exactly_once() {
    let keys = TempDir::new("uplink-nkey").unwrap();
    let user = nkeys::KeyPair::new_user();
    let seed_file = keys.path().join("gateway.nk");
    std::fs::write(&seed_file, user.seed().unwrap()).unwrap();
    let cloud_user = nkeys::KeyPair::new_user();
    let cloud_seed = keys.path().join("ingest.nk");
    std::fs::write(&cloud_seed, cloud_user.seed().unwrap()).unwrap();
    let opts = PipelineOptions {
        edge_security: NatsSecurity {
            nkeys: vec![user.public_key()],
            ..Default::default()
        },
        cloud_security: NatsSecurity {
            nkeys: vec![cloud_user.public_key()],
            ..Default::default()
        },
        ..Default::default()
    };
    let p = start(
        opts,
        |i| i.nats.connect.nkey = cloud_seed.clone(),
        |g| {
            g.nats.connect.nkey = seed_file.clone();
            g.nats.ack = uplink::config::AckMode::Cumulative;
        },
    )
    .await;
    assert!(async_nats::connect(p.edge.url()).await.is_err());
    assert!(async_nats::connect(p.cloud_url()).await.is_err());
    let sent = publish(&edge_js(&p).await, 200).await;
    let r = verify_delivery(&p, &sent).await;
    assert_exactly_once(&p, &r, 200);
    assert_fast_batches_where_the_server_has_them(&p).await;
    assert_not_logged(&p, &user.seed().unwrap());
    assert_not_logged(&p, &cloud_user.seed().unwrap());
}

#[tokio::test]
async fn losing_and_regaining_cloud_nats_is_logged_once_each() {
    let mut p = crate::support::pipeline(|_| {}, |_| {}).await;
    let admin = p.ingest.as_ref().unwrap().admin;
    // Traffic first, so that on 2.14+ the fast-batch connection is up when the server goes.
    let sent = publish(&edge_js(&p).await, 100).await;
    let r = verify_delivery(&p, &sent).await;
    assert_exactly_once(&p, &r, 100);
    let fast_before = fast_batches(&p).await;
    p.stop_cloud();
    // The ingest notices (an event, not a guess), and says so at /readyz.
    wait_for(
        || async {
            let (status, body) = uplink_tools::testbed::http_get(admin, "/readyz").await?;
            Ok(status == 503 && body.contains("cloud NATS not connected"))
        },
        Duration::from_secs(20),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", tail(&p.log("ingest"))));
    let disconnected = |log: &str| {
        log.lines()
            .filter(|l| l.contains("NATS connection event") && l.contains("disconnected"))
            .count()
    };
    wait_for(
        || {
            let n = disconnected(&p.log("ingest"));
            async move { Ok(n >= 1) }
        },
        Duration::from_secs(10),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", tail(&p.log("ingest"))));
    // While it is down, the reconnect attempts fail again and again; wait for a few of them
    // (counted), then check the log said so once.
    let ingest = p.ingest.as_ref().unwrap();
    wait_for(
        || async {
            let m = ingest.metrics().await?;
            Ok(scrape_value(
                &m,
                "uplink_nats_events_total{nats=\"cloud\",event=\"connect_error\"}",
            )
            .unwrap_or(0.0)
                >= 3.0)
        },
        Duration::from_secs(30),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", tail(&p.log("ingest"))));
    p.start_cloud().await.unwrap();
    p.ingest
        .as_mut()
        .unwrap()
        .wait_ready(Duration::from_secs(30))
        .await
        .unwrap();
    let log = p.log("ingest");
    assert_eq!(disconnected(&log), 1, "{}", tail(&log));
    // The line names the server that was lost (its address and server name).
    let line = log
        .lines()
        .find(|l| l.contains("NATS connection event") && l.contains("disconnected"))
        .unwrap();
    assert!(
        line.contains(&format!(
            "127.0.0.1:{} (cloud)",
            p.cloud_url().rsplit(':').next().unwrap()
        )),
        "{line}"
    );
    let warned_errors = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("event=\"connect_error\""))
        .count();
    assert_eq!(warned_errors, 1, "{}", tail(&log));
    let m = p.ingest_metrics().await.unwrap();
    for (event, n) in [("disconnected", 1.0), ("connected", 2.0)] {
        assert_eq!(
            scrape_value(
                &m,
                &format!("uplink_nats_events_total{{nats=\"cloud\",event=\"{event}\"}}")
            ),
            Some(n),
            "{event}: {m}"
        );
    }
    // And it works again: on 2.14+ with fast batches on a new fast-batch connection, the old
    // one's loss said once.
    let sent = publish(&edge_js(&p).await, 50).await;
    let r = verify_delivery(&p, &sent).await;
    assert_exactly_once(&p, &r, 50);
    let m = p.ingest_metrics().await.unwrap();
    let lost = scrape_value(&m, "uplink_ingest_batch_connection_lost_total");
    let log = p.log("ingest");
    let lost_lines = log
        .lines()
        .filter(|l| l.contains("connection=\"fast-batch\"") && l.contains("disconnected"))
        .count();
    if nats_at_least(2, 14) {
        assert!(fast_before > 0.0, "{m}");
        assert!(fast_batches(&p).await > fast_before, "{m}");
        assert_eq!(lost, Some(1.0), "{m}");
        assert_eq!(lost_lines, 1, "{}", tail(&log));
    } else {
        assert_eq!(lost, Some(0.0), "{m}");
        assert_eq!(lost_lines, 0, "{}", tail(&log));
    }
}

/// Requests the ingest published as fast batches so far.
async fn fast_batches(p: &Pipeline) -> f64 {
    let m = p.ingest_metrics().await.unwrap();
    scrape_value(
        &m,
        "uplink_ingest_publish_requests_total{mode=\"fast_batch\"}",
    )
    .unwrap_or(0.0)
}

/// A wrong password is not a reason to exit: the server's users may be changed any time. The
/// gateway keeps retrying, logs the refusal at error with the keys to check, once, and says so
/// at /readyz; SIGTERM still stops it at once.
#[tokio::test]
async fn wrong_password_is_logged_with_the_keys_to_check_and_retried() {
    let dir = TempDir::new("uplink-wrongpw").unwrap();
    let security = NatsSecurity {
        users: vec![("gateway".into(), EDGE_PASSWORD.into())],
        ..Default::default()
    };
    let nats = uplink_tools::testbed::Nats::start_secured(
        &nats_bin(),
        dir.path(),
        "edge",
        uplink_tools::testbed::free_port(),
        dir.path().join("edge-js"),
        &security,
    )
    .await
    .unwrap();
    let pki = uplink::tls::dev_pki(&dir.path().join("pki"), &["edge-1".to_string()]).unwrap();
    let admin = free_addr();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[nats]\nurl = \"{}\"\nuser = \"gateway\"\n[admin]\nlisten = \"{admin}\"\n[cloud]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            nats.url(),
            pki.ca(),
            pki.client_cert("edge-1"),
            pki.client_key("edge-1"),
        ),
    )
    .unwrap();
    let mut gw = Uplink::spawn(
        &exe(),
        "gateway",
        &cfg,
        admin,
        dir.path().join("gateway.log"),
        &[("UPLINK_GATEWAY_NATS__PASSWORD", "not-the-password")],
    )
    .unwrap();
    let refused = |log: &str| {
        log.lines()
            .filter(|l| l.contains("ERROR") && l.contains("NATS refused our credentials"))
            .count()
    };
    wait_for(
        // The admin listener may not be up yet: not answering is "not yet".
        || async {
            Ok(matches!(
                uplink_tools::testbed::http_get(admin, "/readyz").await,
                Ok((503, body)) if body.contains("authorization violation")
            ))
        },
        Duration::from_secs(20),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", gw.proc.log_text()));
    // Several refused attempts (counted) make one error line.
    wait_for(
        || async {
            let m = gw.metrics().await.unwrap_or_default();
            Ok(scrape_value(
                &m,
                "uplink_nats_events_total{nats=\"edge\",event=\"authorization_violation\"}",
            )
            .unwrap_or(0.0)
                >= 3.0)
        },
        Duration::from_secs(30),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", gw.proc.log_text()));
    let log = gw.proc.log_text();
    assert_eq!(refused(&log), 1, "{log}");
    let line = log
        .lines()
        .find(|l| l.contains("NATS refused our credentials"))
        .unwrap();
    assert!(line.contains("nats.user and nats.password"), "{line}");
    assert!(!log.contains("not-the-password"), "{log}");
    assert!(gw.proc.running(), "the gateway gave up: {log}");
    assert_eq!(
        gw.proc.terminate(Duration::from_secs(20)).await,
        Some(0),
        "{}",
        gw.proc.log_text()
    );
}

/// Decentralized auth as `nsc` sets it up: nats-servers in operator mode, an account JWT with
/// JetStream, and both programs with a creds file (user JWT + seed) for that account.
#[tokio::test]
async fn creds_files_on_operator_mode_servers_deliver_exactly_once() {
    let op = std::sync::Arc::new(uplink_tools::testbed::nats_jwt::Operator::new().unwrap());
    let keys = TempDir::new("uplink-creds").unwrap();
    let creds = keys.path().join("gateway.creds");
    std::fs::write(&creds, &op.user_creds).unwrap();
    let opts = PipelineOptions {
        edge_security: NatsSecurity {
            operator: Some(op.clone()),
            ..Default::default()
        },
        cloud_security: NatsSecurity {
            operator: Some(op.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    let p = start(
        opts,
        |i| i.nats.connect.creds = creds.clone(),
        |g| {
            g.nats.connect.creds = creds.clone();
            g.nats.ack = uplink::config::AckMode::Cumulative;
        },
    )
    .await;
    assert!(async_nats::connect(p.edge.url()).await.is_err());
    assert!(async_nats::connect(p.cloud_url()).await.is_err());
    let sent = publish(&edge_js(&p).await, 200).await;
    let r = verify_delivery(&p, &sent).await;
    assert_exactly_once(&p, &r, 200);
    assert_fast_batches_where_the_server_has_them(&p).await;
}

/// A server going into lame duck mode (SIGUSR2: it will close its clients soon) is announced
/// to the gateway, which logs it once with the server's name, and counts it.
#[tokio::test]
async fn lame_duck_mode_of_edge_nats_is_logged_with_the_server() {
    let p = crate::support::pipeline(|_| {}, |_| {}).await;
    p.edge.proc.signal(libc::SIGUSR2);
    let gateway = p.gateway.as_ref().unwrap();
    wait_for(
        || async {
            let m = gateway.metrics().await?;
            Ok(scrape_value(
                &m,
                "uplink_nats_events_total{nats=\"edge\",event=\"lame_duck\"}",
            ) == Some(1.0))
        },
        Duration::from_secs(20),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", tail(&p.log("gateway"))));
    let log = p.log("gateway");
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("event=\"lame_duck\""))
        .collect();
    assert_eq!(lines.len(), 1, "{}", tail(&log));
    assert!(
        lines[0].contains(&format!("127.0.0.1:{} (edge)", p.edge.port)),
        "{}",
        lines[0]
    );
}

/// A wrong NATS port is named within seconds: one line with what the network says (connection
/// refused: nothing listens there) and the setting to check, not one line per attempt; and
/// `/readyz` says why it is not ready. The ingest says the same about the cloud.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_nats_port_is_named_with_its_cause_and_setting_once() {
    let dir = TempDir::new("uplink-wrongport").unwrap();
    let pki = uplink::tls::dev_pki(&dir.path().join("pki"), &["edge-1".to_string()]).unwrap();
    // A port nothing listens on.
    let port = uplink_tools::testbed::free_port();
    let admin = free_addr();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[nats]\nurl = \"nats://127.0.0.1:{port}\"\n[admin]\nlisten = \"{admin}\"\n[cloud]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            pki.ca(),
            pki.client_cert("edge-1"),
            pki.client_key("edge-1"),
        ),
    )
    .unwrap();
    let mut gw = Uplink::spawn(
        &exe(),
        "gateway",
        &cfg,
        admin,
        dir.path().join("gateway.log"),
        &[],
    )
    .unwrap();
    let diagnosed = |log: &str| {
        log.lines()
            .filter(|l| l.contains("cannot connect to NATS"))
            .count()
    };
    wait_for(
        || async {
            let attempts = gw
                .metrics()
                .await
                .ok()
                .and_then(|m| {
                    scrape_value(
                        &m,
                        "uplink_nats_events_total{nats=\"edge\",event=\"connect_error\"}",
                    )
                })
                .unwrap_or(0.0);
            Ok(diagnosed(&gw.proc.log_text()) >= 1 && attempts >= 3.0)
        },
        Duration::from_secs(30),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", gw.proc.log_text()));
    let log = gw.proc.log_text();
    assert_eq!(diagnosed(&log), 1, "one line for several attempts:\n{log}");
    let line = log
        .lines()
        .find(|l| l.contains("cannot connect to NATS"))
        .unwrap();
    assert!(
        line.contains(&format!("connection refused at 127.0.0.1:{port}"))
            && line.contains("nothing listens")
            && line.contains("check=\"nats.url\""),
        "{line}"
    );
    let (status, body) = uplink_tools::testbed::http_get(admin, "/readyz")
        .await
        .unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("edge NATS not connected"), "{body}");
    assert_eq!(gw.proc.terminate(Duration::from_secs(20)).await, Some(0));
}
