//! The deployment files in deploy/ are tested, not just shipped: the Grafana dashboard and the
//! Prometheus alert rules use only metrics (and labels) the running programs really export, and
//! the rules pass `promtool check rules` and their own `promtool test rules` cases.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::{self, edge_js, pipeline, publish, wait_delivered};

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// `$UPLINK_PROMTOOL`, else `promtool` on PATH (Debian package `prometheus`, `make deps`).
fn promtool() -> PathBuf {
    if let Ok(p) = std::env::var("UPLINK_PROMTOOL") {
        return p.into();
    }
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/bin"])
        .map(|d| Path::new(d).join("promtool"))
        .find(|p| p.is_file())
        .expect("promtool must be installed for the tests (apt-get install -y prometheus)")
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let dir = repo().join("deploy/prometheus");
    for args in [
        &["check", "rules", "uplink-alerts.yml"][..],
        &["test", "rules", "uplink-alerts.test.yml"][..],
    ] {
        let out = Command::new(promtool())
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The dashboard's queries are valid PromQL: promtool checks them as recording rules (with
/// Grafana's variables given values).
#[test]
fn the_dashboard_queries_are_valid_promql() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/uplink.json")).expect("dashboard is JSON");
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut exprs);
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs
        .iter()
        .filter(|e| !e.starts_with("label_values("))
        .enumerate()
    {
        let e = e
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*");
        rules.push_str(&format!(
            "      - record: uplink:dashboard:{i}\n        expr: {}\n",
            serde_json::to_string(&e).unwrap()
        ));
    }
    let dir = uplink_tools::testbed::TempDir::new("uplink-dashboard-promql").unwrap();
    let file = dir.path().join("dashboard-rules.yml");
    std::fs::write(&file, &rules).unwrap();
    let out = Command::new(promtool())
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}\n{rules}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The PromQL expressions of the alert rules: each `expr:` with its indented continuation.
fn rule_exprs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let Some((indent, rest)) = line.split_once("expr:") else {
            continue;
        };
        if !indent.trim().is_empty() && indent.trim() != "-" {
            continue;
        }
        let mut expr = rest.trim().trim_start_matches(['|', '>']).to_string();
        while let Some(next) = lines.peek() {
            let deeper = next.len() - next.trim_start().len() > indent.len();
            if !deeper || next.trim().is_empty() {
                break;
            }
            expr.push(' ');
            expr.push_str(next.trim());
            lines.next();
        }
        out.push(expr);
    }
    out
}

/// Every `expr` (and the template variable queries) of the dashboard.
fn dashboard_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

/// What one PromQL expression uses: metric names with the label names of their selectors,
/// and the label names of `by (…)` / `without (…)` clauses.
#[derive(Debug, Default)]
struct Uses {
    metrics: Vec<(String, Vec<String>)>,
    grouping: Vec<String>,
}

fn uses(expr: &str) -> Uses {
    let mut u = Uses::default();
    let b = expr.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut i = 0;
    while i < b.len() {
        if !ident(b[i]) || (i > 0 && ident(b[i - 1])) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && ident(b[i]) {
            i += 1;
        }
        let word = &expr[start..i];
        let rest = expr[i..].trim_start();
        if word.starts_with("uplink_") {
            let mut labels = Vec::new();
            if let Some(sel) = rest.strip_prefix('{') {
                let sel = &sel[..sel.find('}').expect("selector closes")];
                // `k="v"`, `k=~"v"`, `k!="v"`: the names before the operators. Values here
                // hold no commas or operators.
                for m in sel.split(',').filter(|m| !m.trim().is_empty()) {
                    let name = m.split(['=', '!']).next().unwrap().trim();
                    labels.push(name.to_string());
                }
            }
            u.metrics.push((word.to_string(), labels));
        } else if (word == "by" || word == "without") && rest.starts_with('(') {
            let list = &rest[1..rest.find(')').expect("grouping closes")];
            u.grouping
                .extend(list.split(',').map(|l| l.trim().to_string()));
        }
    }
    u
}

/// Families in a scrape with the label names their samples carry (histogram `_bucket`,
/// `_sum`, `_count` and `le` included under the family).
fn families(metrics: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, _) in uplink::telemetry::scrape_families(metrics) {
        out.entry(name).or_default();
    }
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, _)) = line.rsplit_once(' ') else {
            continue;
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        // Label names: before each `="`, outside the quoted values.
        let mut keys = BTreeSet::new();
        let (mut quoted, mut escaped, mut key) = (false, false, String::new());
        for c in labels.chars() {
            match (quoted, c) {
                (true, '\\') if !escaped => escaped = true,
                (true, '"') if !escaped => quoted = false,
                (true, _) => escaped = false,
                (false, '"') => quoted = true,
                (false, '=') => {
                    keys.insert(std::mem::take(&mut key));
                }
                (false, ',' | '}') => key.clear(),
                (false, c) => key.push(c),
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| out.contains_key(*f)))
            .unwrap_or(name);
        out.entry(family.to_string()).or_default().extend(keys);
    }
    out
}

/// Checks every metric and label an expression uses against what the programs export.
/// `instance` and `job` are Prometheus's own target labels.
fn check_expr(what: &str, expr: &str, exported: &BTreeMap<String, BTreeSet<String>>) {
    let u = uses(expr);
    assert!(!u.metrics.is_empty(), "{what}: no uplink metric in {expr}");
    let target = |l: &str| ["instance", "job"].contains(&l);
    let mut all_labels = BTreeSet::new();
    for (name, labels) in &u.metrics {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| exported.contains_key(*f)))
            .unwrap_or(name);
        let Some(have) = exported.get(family) else {
            panic!("{what}: {name} is not exported by the gateway or the ingest (in {expr})")
        };
        for l in labels.iter().filter(|l| !target(l)) {
            assert!(
                have.contains(l),
                "{what}: {family} has no label {l} (has {have:?}) in {expr}"
            );
        }
        all_labels.extend(have.iter().cloned());
    }
    for l in u.grouping.iter().filter(|l| !target(l)) {
        assert!(
            all_labels.contains(l),
            "{what}: grouping by {l}, which none of its metrics has, in {expr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_the_alert_rules_use_only_exported_metrics() {
    // Connections rotate every 5 requests (GOAWAYs, closes, rotations); 8 connection slots,
    // so silent connections are evicted and, once every slot holds one that spoke, refused.
    let p = pipeline(
        |i| {
            i.http2.max_requests_per_connection = 5;
            i.limits.max_connections = 8;
            i.limits.max_handshakes = 8;
            i.limits.max_handshakes_per_ip = 8;
        },
        |g| {
            g.forward.max_requests_per_connection = 5;
            g.batch.max_messages = 20;
        },
    )
    .await;
    let edge = edge_js(&p).await;
    publish(&edge, 400).await;
    wait_delivered(&p, 400).await;
    // A request refused for its content.
    let c = support::edge_client(&p);
    let resp = support::h2client::post(&c, "/v1/publish/a.*", &[], bytes::Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    // Bare connections (silent: evictable) and TLS connections that spoke their HTTP/2 preface
    // (not evictable), one of each at a time: the spoken ones evict the bare ones until every
    // slot holds one that spoke; then a new connection is refused.
    let bare = || async {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        // A connection the ingest refuses may be reset before connect returns.
        s.connect(p.ingest_cfg.listen).await.ok()
    };
    let spoken = || async {
        use tokio::io::AsyncWriteExt as _;
        let pki = p.pki();
        let cfg = uplink::tls::client_config(
            &pki.ca(),
            &pki.client_cert("edge-1"),
            &pki.client_key("edge-1"),
        )
        .unwrap();
        let tcp = tokio::net::TcpStream::connect(p.ingest_cfg.listen)
            .await
            .ok()?;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .ok()?;
        // The client preface and an empty SETTINGS frame.
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await
            .ok()?;
        Some(tls)
    };
    let ingest_has = |family: &'static str| {
        let p = &p;
        async move {
            uplink_tools::testbed::wait_for(
                || async {
                    let m = p.ingest_metrics().await.unwrap_or_default();
                    Ok(m.contains(&format!("# TYPE {family} ")))
                },
                Duration::from_secs(20),
            )
            .await
            .unwrap_or_else(|_| panic!("{family} never appeared"));
        }
    };
    let (mut silent, mut spoke) = (Vec::new(), Vec::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let m = p.ingest_metrics().await.unwrap();
        if m.contains("# TYPE uplink_ingest_connections_refused_total ")
            && m.contains("# TYPE uplink_ingest_connections_evicted_total ")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing refused or evicted:\n{m}"
        );
        silent.push(bare().await);
        spoke.push(spoken().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop((silent, spoke));
    // A dial closed before its first byte: a TLS failure (`aborted`), once slots are free again.
    let closed = uplink_tools::testbed::wait_for(
        || async {
            drop(bare().await);
            let m = p.ingest_metrics().await.unwrap_or_default();
            Ok(m.contains("# TYPE uplink_ingest_tls_failures_total "))
        },
        Duration::from_secs(20),
    )
    .await;
    assert!(closed.is_ok(), "no aborted dial counted");
    ingest_has("uplink_ingest_tls_failures_total").await;

    let gateway = p.gateway_metrics().await.unwrap();
    let ingest = p.ingest_metrics().await.unwrap();
    let mut exported = families(&gateway);
    for (name, labels) in families(&ingest) {
        exported.entry(name).or_default().extend(labels);
    }

    // The certificate expiry each program reports is its certificate's notAfter.
    for (metrics, file) in [
        (&gateway, &p.gateway_cfg.cloud.cert),
        (&ingest, &p.ingest_cfg.tls.cert),
    ] {
        let der = uplink::tls::load_certs(file).unwrap();
        let (_, x) = x509_parser::parse_x509_certificate(der[0].as_ref()).unwrap();
        let series = format!(
            "uplink_tls_certificate_expiry_timestamp_seconds{{file=\"{}\"}}",
            file.display()
        );
        assert_eq!(
            uplink::telemetry::scrape_value(metrics, &series),
            Some(x.validity().not_after.timestamp() as f64),
            "{series}\n{metrics}"
        );
    }

    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/uplink.json")).expect("dashboard is JSON");
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 20, "{exprs:?}");
    for e in &exprs {
        check_expr("deploy/grafana/uplink.json", e, &exported);
    }
    let rules = read("deploy/prometheus/uplink-alerts.yml");
    let rule_exprs = rule_exprs(&rules);
    assert_eq!(
        rule_exprs.len(),
        rules.matches("- alert:").count(),
        "{rule_exprs:?}"
    );
    for e in &rule_exprs {
        check_expr("deploy/prometheus/uplink-alerts.yml", e, &exported);
    }
    // Metric names the annotations mention are real too.
    for (name, _) in uses(&rules).metrics {
        assert!(
            read("docs/metrics.md").contains(&format!("`{name}`")),
            "{name} in the rules' text is not in docs/metrics.md"
        );
    }
    // What the issue asks the dashboard to show, each by its metric.
    for family in [
        "uplink_gateway_messages_total",
        "uplink_gateway_consumer_pending_messages",
        "uplink_gateway_lag_seconds",
        "uplink_gateway_edge_stream_seconds_to_full",
        "uplink_gateway_retries_total",
        "uplink_client_connections_open",
        "uplink_h2_goaway_total",
        "uplink_tls_certificate_expiry_timestamp_seconds",
        "uplink_ingest_platform_messages_total",
        "uplink_ingest_publish_seconds_bucket",
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(family)),
            "dashboard: {family}"
        );
    }
}

#[test]
fn the_expression_scanner_finds_metrics_labels_and_grouping() {
    let u = uses(
        "sum by (instance, class) (rate(uplink_gateway_retries_total{instance=~\"$instance\",class!=\"x\"}[5m])) / uplink_a",
    );
    assert_eq!(
        u.metrics,
        vec![
            (
                "uplink_gateway_retries_total".to_string(),
                vec!["instance".to_string(), "class".to_string()]
            ),
            ("uplink_a".to_string(), vec![])
        ]
    );
    assert_eq!(u.grouping, ["instance", "class"]);
    let f = families(
        "# TYPE uplink_h histogram\nuplink_h_bucket{le=\"1\",side=\"a,\\\"b\"} 1\nuplink_h_sum 2\n",
    );
    assert_eq!(
        f["uplink_h"],
        ["le", "side"].iter().map(|s| s.to_string()).collect()
    );
}

/// The example configs are valid for their programs, with their certificate paths pointed at
/// real files (the environment overrides the file, as in a deployment's EnvironmentFile).
#[test]
fn the_example_configs_pass_config_check() {
    let dir = uplink_tools::testbed::TempDir::new("uplink-deploy-config").unwrap();
    let pki = uplink::tls::dev_pki(dir.path(), &["edge-1".into()]).unwrap();
    let p = |f: PathBuf| f.display().to_string();
    let cases = [
        (
            "gateway",
            vec![
                ("UPLINK_GATEWAY_CLOUD__CA", p(pki.ca())),
                ("UPLINK_GATEWAY_CLOUD__CERT", p(pki.client_cert("edge-1"))),
                ("UPLINK_GATEWAY_CLOUD__KEY", p(pki.client_key("edge-1"))),
            ],
        ),
        (
            "ingest",
            vec![
                ("UPLINK_INGEST_TLS__CA", p(pki.ca())),
                ("UPLINK_INGEST_TLS__CERT", p(pki.server_cert())),
                ("UPLINK_INGEST_TLS__KEY", p(pki.server_key())),
            ],
        ),
    ];
    for (program, env) in cases {
        let file = repo().join(format!("deploy/{program}.toml"));
        let out = Command::new(crate::support::exe())
            .args(["config", "check", program])
            .arg(&file)
            .envs(env)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{program}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout)
                .contains(&format!("valid {program} configuration")),
            "{out:?}"
        );
        // And it is an example of this program, not the other's: the other refuses it.
        let other = if program == "gateway" {
            "ingest"
        } else {
            "gateway"
        };
        let out = Command::new(crate::support::exe())
            .args(["config", "check", other])
            .arg(&file)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{other} accepted {file:?}");
    }
}

/// `ExecStart=` of a unit: (binary, arguments).
fn exec_start(unit: &str) -> (String, Vec<String>) {
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart=");
    let mut words = line.split_whitespace().map(String::from);
    (words.next().unwrap(), words.collect())
}

/// The systemd units: accepted by `systemd-analyze verify` (no unknown keys, the binary is
/// executable), hardened (`systemd-analyze security` rates them OK), and their ExecStart is a
/// real subcommand with the config flag, naming the example config of that program.
#[test]
fn the_systemd_units_verify_and_are_hardened() {
    let dir = uplink_tools::testbed::TempDir::new("uplink-deploy-systemd").unwrap();
    let exe = crate::support::exe();
    for program in ["gateway", "ingest"] {
        let name = format!("uplink-{program}.service");
        let unit = read(&format!("deploy/systemd/{name}"));
        let (bin, args) = exec_start(&unit);
        assert_eq!(bin, "/usr/local/bin/uplink");
        assert_eq!(args[0], program, "{args:?}");
        assert_eq!(args[1], "--config", "{args:?}");
        assert_eq!(args[2], format!("/etc/uplink/{program}.toml"));
        assert!(repo().join(format!("deploy/{program}.toml")).is_file());
        // The flag is the program's (its --help lists it) ...
        let help = Command::new(&exe)
            .args([program, "--help"])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&help.stdout).contains("--config <CONFIG>"),
            "{help:?}"
        );
        // ... and the same command line parses up to reading the (missing) file.
        let out = Command::new(&exe)
            .args(&args[..2])
            .arg(dir.path().join("missing.toml"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{err}");
        assert!(err.contains("missing.toml"), "{err}");
        for key in [
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "CapabilityBoundingSet=",
            "RestartPreventExitStatus=64",
            "User=uplink",
        ] {
            assert!(unit.lines().any(|l| l == key), "{name}: {key}");
        }

        // systemd-analyze needs the binary to exist: the built one, in a copy of the unit.
        let copy = dir.path().join(&name);
        std::fs::write(
            &copy,
            unit.replace("/usr/local/bin/uplink", &exe.display().to_string()),
        )
        .unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&copy)
            .output()
            .expect("systemd-analyze (package systemd) runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && err.trim().is_empty(),
            "{name}: {err}"
        );
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=yes"])
            .arg(&copy)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let score: f64 = text
            .lines()
            .find_map(|l| {
                l.split_once("Overall exposure level for ")?
                    .1
                    .split_once(": ")
            })
            .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level:\n{text}"));
        // 0 (locked down) … 10 (unprotected); below 2 is "OK" in systemd's terms.
        assert!(score < 2.0, "{name}: exposure {score}\n{text}");
        eprintln!("{name}: systemd-analyze security exposure {score}");
    }
}

/// The container recipe, read statically (CI has no container engine): two stages, the
/// runtime stage copies the binary the build stage builds, and what it names exists.
#[test]
fn the_containerfile_builds_the_binary_and_runs_it_on_debian_slim() {
    let text = read("deploy/Containerfile");
    let froms: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("FROM "))
        .collect();
    assert_eq!(froms.len(), 2, "{froms:?}");
    let (builder, stage) = froms[0].split_once(" AS ").expect("named build stage");
    assert!(builder.contains("rust:"), "{builder}");
    assert!(
        froms[1].contains("debian:") && froms[1].contains("-slim"),
        "{froms:?}"
    );
    let build = text
        .lines()
        .find(|l| l.contains("cargo build"))
        .expect("cargo build");
    assert!(
        build.contains("--release") && build.contains("--locked"),
        "{build}"
    );
    let copy = format!("COPY --from={stage} /src/target/release/uplink /usr/local/bin/uplink");
    assert!(text.lines().any(|l| l == copy), "{copy}");
    assert!(text.contains("ENTRYPOINT [\"/usr/local/bin/uplink\"]"));
    // The example configs it ships exist; the default user is not root.
    for line in text.lines().filter(|l| l.starts_with("COPY deploy/")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        for f in &words[1..words.len() - 1] {
            assert!(repo().join(f).is_file(), "{f}");
        }
    }
    assert!(text.lines().any(|l| l == "USER uplink"));
    // The ports it exposes are the example configs' and the admin defaults.
    let expose = text
        .lines()
        .find_map(|l| l.strip_prefix("EXPOSE "))
        .unwrap();
    assert!(read("deploy/ingest.toml").contains("listen = \"0.0.0.0:8443\""));
    for (port, file) in [("9101", "gateway"), ("9102", "ingest")] {
        assert!(expose.split_whitespace().any(|p| p == port), "{expose}");
        assert!(read(&format!("deploy/{file}.toml")).contains(&format!(":{port}\"")));
    }
    // The build context leaves out build output.
    assert!(read(".dockerignore").lines().any(|l| l == "target"));
}
