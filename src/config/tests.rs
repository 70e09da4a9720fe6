use std::io::Write;

use super::*;

/// Sources for a test; the returned temp dir (holding the file) lives as long as the caller keeps it.
fn sources(
    file: Option<&str>,
    env: &[(&str, &str)],
    sets: &[&str],
) -> (Sources, Option<crate::testbed::TempDir>) {
    let dir = file.map(|_| crate::testbed::TempDir::new("uplink-cfg").unwrap());
    let path = file.zip(dir.as_ref()).map(|(text, dir)| {
        let p = dir.path().join("c.toml");
        std::fs::File::create(&p)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        p
    });
    (
        Sources {
            file: path.clone(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            sets: sets.iter().map(|s| s.to_string()).collect(),
        },
        dir,
    )
}

#[test]
fn defaults_are_valid_and_finite() {
    GatewayConfig::default().validate().unwrap();
    IngestConfig::default().validate().unwrap();
}

#[test]
fn every_setting_is_documented_and_no_doc_is_stale() {
    fn check(keys: Vec<String>, docs: &[(&str, &str)]) {
        let documented: Vec<&str> = docs.iter().map(|(k, _)| *k).collect();
        for k in &keys {
            assert!(documented.contains(&k.as_str()), "`{k}` has no doc");
        }
        for d in documented {
            assert!(keys.iter().any(|k| k == d), "doc for unknown key `{d}`");
        }
    }
    check(default_keys::<GatewayConfig>(), GATEWAY_DOCS);
    check(default_keys::<IngestConfig>(), INGEST_DOCS);
}

#[test]
fn rendered_defaults_parse_back_to_the_defaults() {
    let text = render_defaults::<GatewayConfig>(GATEWAY_DOCS);
    assert!(text.contains("# Edge stream name.\nstream = \"TELEMETRY\""));
    let back: GatewayConfig = toml::from_str(&text).unwrap();
    assert_eq!(back, GatewayConfig::default());
    let back: IngestConfig = toml::from_str(&render_defaults::<IngestConfig>(INGEST_DOCS)).unwrap();
    assert_eq!(back, IngestConfig::default());
}

#[test]
fn layers_apply_in_order_file_env_flags() {
    let (s, _dir) = sources(
        Some("platform = \"from-file\"\n[batch]\nmax_messages = 7\nlinger = \"5ms\"\n"),
        &[
            ("UPLINK_GATEWAY_PLATFORM", "from-env"),
            ("UPLINK_GATEWAY_NATS__ACK_WAIT", "45s"),
            ("UPLINK_GATEWAY_NATS__SUBJECTS", "a.>, b.>"),
            ("UPLINK_INGEST_LISTEN", "ignored by the gateway"),
            ("UNRELATED", "x"),
        ],
        &["platform=from-flag", "forward.max_in_flight=3"],
    );
    let c = gateway(&s).unwrap();
    assert_eq!(c.platform, "from-flag");
    assert_eq!(c.batch.max_messages, 7);
    assert_eq!(c.batch.linger, Duration::from_millis(5));
    assert_eq!(c.nats.ack_wait, Duration::from_secs(45));
    assert_eq!(c.nats.subjects, vec!["a.>", "b.>"]);
    assert_eq!(c.forward.max_in_flight, 3);
    assert_eq!(c.batch.max_bytes, BatchConfig::default().max_bytes);
}

#[test]
fn unknown_keys_are_named_with_their_origin() {
    let (s, _dir) = sources(Some("[batch]\nmax_mesages = 1\n"), &[], &[]);
    let e = gateway(&s).unwrap_err().to_string();
    assert!(e.contains("batch.max_mesages") && e.contains("file"), "{e}");

    let (s, _dir) = sources(None, &[("UPLINK_INGEST_NATS__STREEM", "x")], &[]);
    let e = ingest(&s).unwrap_err().to_string();
    assert!(
        e.contains("nats.streem") && e.contains("UPLINK_INGEST_NATS__STREEM"),
        "{e}"
    );

    let (s, _dir) = sources(None, &[], &["nope=1"]);
    let e = ingest(&s).unwrap_err().to_string();
    assert!(e.contains("`nope`") && e.contains("--set"), "{e}");
}

#[test]
fn bad_values_name_the_key_and_reason() {
    let (s, _dir) = sources(None, &[], &["batch.max_messages=lots"]);
    let e = gateway(&s).unwrap_err().to_string();
    assert!(
        e.contains("batch.max_messages") && e.contains("not an integer"),
        "{e}"
    );

    let (s, _dir) = sources(None, &[], &["timeouts.request=forever"]);
    let e = gateway(&s).unwrap_err().to_string();
    assert!(e.contains("invalid duration"), "{e}");

    let (s, _dir) = sources(None, &[], &["timeouts.request=0s"]);
    let e = gateway(&s).unwrap_err().to_string();
    assert!(
        e.contains("timeouts.request") && e.contains("greater than zero"),
        "{e}"
    );

    let (s, _dir) = sources(None, &[], &["timeouts.request=40s"]);
    let e = gateway(&s).unwrap_err().to_string();
    assert!(e.contains("nats.ack_wait"), "{e}");

    let (s, _dir) = sources(None, &[], &["cloud.url=http://plain:80"]);
    let e = gateway(&s).unwrap_err().to_string();
    assert!(e.contains("cloud.url") && e.contains("https"), "{e}");

    let (s, _dir) = sources(None, &[], &["batch.compression=lz4"]);
    assert!(gateway(&s).is_err());

    let (s, _dir) = sources(None, &[], &["nats.subjects=telemetry.>"]);
    let e = ingest(&s).unwrap_err().to_string();
    assert!(e.contains("nats.subjects") && e.contains("uplink.>"), "{e}");

    let (s, _dir) = sources(None, &[], &["nats.stream=A.B"]);
    let e = ingest(&s).unwrap_err().to_string();
    assert!(e.contains("nats.stream"), "{e}");

    let (s, _dir) = sources(Some("listen = \"not an address\"\n"), &[], &[]);
    assert!(ingest(&s).is_err());

    let (s, _dir) = sources(Some("[batch\n"), &[], &[]);
    let e = gateway(&s).unwrap_err().to_string();
    assert!(e.contains("config file"), "{e}");
}

#[test]
fn missing_file_is_an_error_naming_it() {
    let s = Sources {
        file: Some("/nonexistent/uplink.toml".into()),
        ..Default::default()
    };
    let e = gateway(&s).unwrap_err().to_string();
    assert!(e.contains("/nonexistent/uplink.toml"), "{e}");
}
