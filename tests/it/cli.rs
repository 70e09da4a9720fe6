//! The binary's command line: config errors name the key and exit 64; defaults are printed.

use std::process::Command;
use std::time::Duration;

use uplink_tools::testbed::TempDir;

use crate::support::{exe, json_of};

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

    // `config check` reads the files a config names, as the program would at start: a valid
    // file whose certificates are missing is not valid.
    let pki = uplink::tls::dev_pki(&dir.path().join("pki"), &["edge-1".to_string()]).unwrap();
    let check = |program: &str, toml: &str| {
        std::fs::write(&f, toml).unwrap();
        Command::new(exe())
            .args(["config", "check", program])
            .arg(&f)
            .output()
            .unwrap()
    };
    let q = |p: std::path::PathBuf| serde_json::to_string(&p.to_string_lossy()).unwrap();
    let out = check(
        "ingest",
        &format!(
            "listen = \"127.0.0.1:8443\"\n[tls]\nca = {}\ncert = \"/nonexistent/server.pem\"\nkey = {}\n",
            q(pki.ca()),
            q(pki.server_key())
        ),
    );
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/server.pem") && err.contains("`tls.cert`"),
        "{err}"
    );
    let ingest = format!(
        "listen = \"127.0.0.1:8443\"\n[tls]\nca = {}\ncert = {}\nkey = {}\n",
        q(pki.ca()),
        q(pki.server_cert()),
        q(pki.server_key())
    );
    let out = check("ingest", &ingest);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid ingest configuration"));
    // A key that is not the certificate's: named by file.
    let gateway = format!(
        "[cloud]\nca = {}\ncert = {}\nkey = {}\n",
        q(pki.ca()),
        q(pki.client_cert("edge-1")),
        q(pki.server_key())
    );
    let out = check("gateway", &gateway);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("edge-1"), "{err}");
    // The NATS TLS files are checked too, though the library would read them only at connect.
    let gateway = format!(
        "[cloud]\nca = {}\ncert = {}\nkey = {}\n[nats.tls]\nca = \"/nonexistent/nats-ca.pem\"\n",
        q(pki.ca()),
        q(pki.client_cert("edge-1")),
        q(pki.client_key("edge-1"))
    );
    let out = check("gateway", &gateway);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`nats.tls.ca`") && err.contains("nats-ca.pem"),
        "{err}"
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

/// docs/configuration.md is what `uplink config reference` prints, from the settings' doc
/// comments; the typed settings print as they are written (no `/` added to `cloud.url`, an
/// unset `proxy.listen` as ""). Regenerate with `uplink config reference > docs/configuration.md`.
#[test]
fn the_configuration_reference_on_disk_is_what_the_binary_prints() {
    let out = Command::new(exe())
        .args(["config", "reference"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md");
    let on_disk = std::fs::read_to_string(path).unwrap();
    assert!(
        printed == on_disk,
        "docs/configuration.md is stale: run `uplink config reference > docs/configuration.md`"
    );
    for needle in [
        "| `cloud.url` | `\"https://127.0.0.1:8443\"` |",
        "| `proxy.listen` | `\"\"` |",
        "| `proxy.trusted` | `[\"127.0.0.1\", \"::1\"]` |",
        // A shared setting documented once, worded per program.
        "| `nats.url` | `\"nats://127.0.0.1:4222\"` | Edge NATS server URL",
        "| `nats.url` | `\"nats://127.0.0.1:4222\"` | Cloud NATS server URL",
    ] {
        assert!(printed.contains(needle), "missing {needle:?}");
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

#[test]
fn bench_proves_delivery_and_reports_json_with_the_anchor() {
    let child = Command::new(exe())
        .args([
            "bench",
            "--messages",
            "3000",
            "--mixed",
            "--json",
            "--anchor",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let v = json_of(&out);
    // Counts are integers, and the line records what the run was asked to do.
    for count in [
        "connections_opened",
        "retries",
        "server_goaways",
        "lost",
        "duplicates",
    ] {
        assert!(v[count].is_u64(), "{count}: {v}");
    }
    assert!(v["options"]["size"].is_u64(), "{v}");
    assert_eq!(v["options"]["via_nginx"], false, "{v}");
    assert!(
        v["options"]["nats_server"]
            .as_str()
            .is_some_and(|s| s.contains("nats-server")),
        "{v}"
    );
    assert_eq!(v["messages"], 3000);
    assert_eq!(v["delivered"], 3000);
    assert_eq!(
        (v["lost"].as_u64(), v["duplicates"].as_u64()),
        (Some(0), Some(0))
    );
    for key in [
        "seconds",
        "msgs_per_sec",
        "p50_ms",
        "p99_ms",
        "anchor_msgs_per_sec",
        "ratio_to_anchor",
    ] {
        assert!(v[key].as_f64().is_some_and(|x| x > 0.0), "{key}: {v}");
    }
    // The temp dir it worked in (PKI, stores, logs) is gone.
    let prefix = format!("uplink-pipeline-{pid}-");
    let left: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn nats_settings_are_checked_before_anything_starts() {
    // Two ways to authenticate: exit 64 naming both.
    let out = Command::new(exe())
        .args(["gateway", "--set", "nats.token=t", "--set", "nats.user=u"])
        .env("UPLINK_GATEWAY_NATS__PASSWORD", "p")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nats.user") && err.contains("nats.token"),
        "{err}"
    );

    // One bad URL in a list: exit 64 naming nats.url and the entry, not a library parse error.
    let out = Command::new(exe())
        .args([
            "ingest",
            "--set",
            "nats.url=nats://127.0.0.1:4222,http://127.0.0.1:4223",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nats.url") && err.contains("entry 2"), "{err}");

    // A file that cannot be read: exit 64 naming the key and the file.
    let out = Command::new(exe())
        .args(["gateway", "--set", "nats.creds=/nonexistent/edge.creds"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nats.creds") && err.contains("/nonexistent/edge.creds"),
        "{err}"
    );
}

#[test]
fn secrets_set_in_the_environment_are_never_printed() {
    let out = Command::new(exe())
        .args(["config", "defaults"])
        .env("UPLINK_GATEWAY_NATS__PASSWORD", "pw-from-env-1234")
        .env("UPLINK_INGEST_NATS__TOKEN", "token-from-env-5678")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("password = \"\""), "{text}");
    assert!(
        !text.contains("pw-from-env-1234") && !text.contains("token-from-env-5678"),
        "{text}"
    );

    // Nor in a configuration error about the same section.
    let out = Command::new(exe())
        .args(["gateway", "--set", "nats.token=t"])
        .env("UPLINK_GATEWAY_NATS__PASSWORD", "pw-from-env-1234")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("pw-from-env-1234"), "{err}");
}

/// `uplink publish` to a subject no stream takes names the subject and the ways out, before
/// publishing anything; `--create-stream` on a single subject takes that very subject.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_without_a_stream_names_the_subject_and_the_way_out() {
    let dir = TempDir::new("uplink-publish").unwrap();
    let nats = uplink_tools::testbed::Nats::start(&crate::support::nats_bin(), dir.path(), "edge")
        .await
        .unwrap();
    let publish = |args: &[&str]| {
        Command::new(exe())
            .args(["publish", "--nats", &nats.url(), "--count", "5"])
            .args(args)
            .output()
            .unwrap()
    };
    let out = publish(&["--subject", "other.x"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no stream") && err.contains("\"other.x\"") && err.contains("--create-stream"),
        "{err}"
    );
    let out = publish(&["--subject", "solo", "--create-stream", "SOLO"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("published 5 messages"));
}

/// The summary's first two numbers: published at the edge, in the cloud stream.
fn summary_counts(err: &str) -> (String, u64, u64) {
    let summary = err
        .lines()
        .find(|l| l.starts_with("summary: "))
        .unwrap_or_else(|| panic!("no summary: {err}"));
    // "summary: N published at the edge, N in the cloud stream; …"
    let n: Vec<u64> = summary
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .take(2)
        .map(|s| s.parse().unwrap())
        .collect();
    (summary.to_string(), n[0], n[1])
}

/// Stopped the documented way, Ctrl-C at a terminal (SIGINT to the whole foreground process
/// group: the demo and every process it started), the demo still ends with a true summary:
/// its servers are not in its group, so they are still there to be read.
#[test]
fn the_demo_stopped_with_ctrl_c_ends_with_a_true_summary() {
    use std::io::Read as _;
    use std::os::unix::process::CommandExt as _;
    let mut child = Command::new(exe())
        .args(["demo", "--rate", "200"])
        .process_group(0)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pgid = child.id();
    let mut stderr = child.stderr.take().unwrap();
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = std::thread::spawn({
        let text = text.clone();
        move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                text.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
    });
    // The event: a live line showing deliveries (at most 60 s).
    let delivering = |t: &str| {
        t.rsplit('\r').any(|line| {
            line.split("delivered")
                .nth(1)
                .and_then(|r| r.split('|').next())
                .and_then(|n| n.trim().parse::<u64>().ok())
                .is_some_and(|n| n >= 200)
        })
    };
    let started = std::time::Instant::now();
    while !delivering(&text.lock().unwrap()) {
        if started.elapsed() > Duration::from_secs(60) {
            uplink_tools::testbed::send_signal_group(pgid, 9);
            panic!("no deliveries shown: {}", text.lock().unwrap());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    uplink_tools::testbed::send_signal_group(pgid, 2);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(120) {
            uplink_tools::testbed::send_signal_group(pgid, 9);
            panic!("the demo did not stop: {}", text.lock().unwrap());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    reader.join().unwrap();
    let err = text.lock().unwrap().clone();
    assert!(status.success(), "{status:?}: {err}");
    let (summary, published, delivered) = summary_counts(&err);
    assert!(published >= 200 && published == delivered, "{summary}");
    assert!(!summary.contains("still on their way"), "{summary}");
    assert!(!summary.contains(" 0 connections opened"), "{summary}");
}

/// README's first command: the demo runs the pipeline, shows where everything is, and ends
/// with a summary in which everything published arrived.
#[test]
fn the_demo_prints_its_addresses_and_ends_with_a_summary() {
    let out = Command::new(exe())
        .args(["demo", "--duration", "4s", "--rate", "200"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    for shown in [
        "edge NATS",
        "ingest",
        "cloud NATS",
        "admin       gateway",
        "uplink status",
    ] {
        assert!(err.contains(shown), "{shown}: {err}");
    }
    let (summary, published, delivered) = summary_counts(&err);
    assert!(published >= 200 && published == delivered, "{summary}");
    assert!(summary.contains(" 0 rejected"), "{summary}");
}

/// A log format nobody knows is a usage error naming where it came from, before anything runs.
#[test]
fn an_unknown_log_format_is_refused_naming_its_source() {
    let out = Command::new(exe())
        .args(["config", "defaults"])
        .env("UPLINK_LOG_FORMAT", "xml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("UPLINK_LOG_FORMAT=\"xml\""), "{err}");
    let out = Command::new(exe())
        .args(["--log-format", "yaml", "config", "defaults"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--log-format"));
}
