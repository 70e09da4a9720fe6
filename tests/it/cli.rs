//! The binary's command line: config errors name the key and exit 64; defaults are printed.

use std::process::Command;

use uplink::testbed::TempDir;

use crate::support::exe;

#[test]
fn config_errors_exit_64_naming_the_key() {
    let dir = TempDir::new("uplink-cli").unwrap();
    let f = dir.path().join("g.toml");
    std::fs::write(&f, "[batch]\nmax_messages = 0\n").unwrap();
    let out = Command::new(exe())
        .args(["config", "check", "gateway"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("batch.max_messages"), "{err}");

    // The gateway itself refuses to start, before opening anything.
    let out = Command::new(exe())
        .args(["gateway", "--set", "timeouts.connect=soon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid duration"));

    let out = Command::new(exe())
        .arg("ingest")
        .env("UPLINK_INGEST_LIMITS__MAX_BODY_BYTEZ", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("UPLINK_INGEST_LIMITS__MAX_BODY_BYTEZ"));

    std::fs::write(&f, "listen = \"127.0.0.1:8443\"\n").unwrap();
    let out = Command::new(exe())
        .args(["config", "check", "ingest"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn defaults_list_every_setting_with_docs() {
    let out = Command::new(exe())
        .args(["config", "defaults"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "max_requests_per_connection = 900",
        "max_requests_per_connection = 1000",
        "ping_interval = \"15s\"",
        "idle = \"1m\"",
        "idle = \"1m 15s\"",
        "# TCP connect timeout (duration).",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
}

#[test]
fn pki_dev_writes_the_documented_files() {
    let dir = TempDir::new("uplink-pki").unwrap();
    let out = Command::new(exe())
        .args(["pki", "dev", "--out"])
        .arg(dir.path())
        .args(["--platform", "site-a", "--platform", "site-b"])
        .output()
        .unwrap();
    assert!(out.status.success());
    for f in [
        "ca.pem",
        "server.pem",
        "server-key.pem",
        "site-a.pem",
        "site-a-key.pem",
        "site-b.pem",
        "site-b-key.pem",
    ] {
        assert!(dir.path().join(f).is_file(), "{f}");
    }
    let cert = &uplink::tls::load_certs(&dir.path().join("site-b.pem")).unwrap()[0];
    assert_eq!(uplink::tls::identity(cert).as_deref(), Some("site-b"));
}
