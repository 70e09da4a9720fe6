use std::io::Write;
use std::time::Duration;

use super::*;

/// Sources for a test; the returned temp dir (holding the file) lives as long as the caller keeps it.
fn sources(
    file: Option<&str>,
    env: &[(&str, &str)],
    sets: &[&str],
) -> (Sources, Option<crate::scratch::TempDir>) {
    let dir = file.map(|_| crate::scratch::TempDir::new("uplink-cfg").unwrap());
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
    fn check(keys: Vec<String>, docs: std::collections::BTreeMap<String, String>) {
        for k in &keys {
            assert!(docs.contains_key(k), "`{k}` has no doc comment");
        }
        // A doc under a name serde does not use (a rename) would be lost.
        for d in docs.keys() {
            assert!(keys.contains(d), "doc for unknown key `{d}`");
        }
        // Every `{gateway|ingest}` alternative was resolved.
        for (k, d) in &docs {
            assert!(!d.contains("|ingest}") && !d.contains("{Edge|"), "{k}: {d}");
        }
    }
    check(
        default_keys::<GatewayConfig>(),
        docs::docs::<GatewayConfig>(),
    );
    check(default_keys::<IngestConfig>(), docs::docs::<IngestConfig>());
}

#[test]
fn rendered_defaults_parse_back_to_the_defaults() {
    let text = render_defaults::<GatewayConfig>();
    assert!(text.contains("# Edge stream name.\nstream = \"TELEMETRY\""));
    let back: GatewayConfig = toml::from_str(&text).unwrap();
    assert_eq!(back, GatewayConfig::default());
    let back: IngestConfig = toml::from_str(&render_defaults::<IngestConfig>()).unwrap();
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

/// A file in a fresh temp dir.
fn file_with(dir: &crate::scratch::TempDir, name: &str, text: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn nats_url_takes_a_list_and_names_the_bad_entry() {
    let (s, _dir) = sources(
        None,
        &[],
        &["nats.url=nats://a.example:4222, tls://b.example:4223,c.example"],
    );
    let c = gateway(&s).unwrap();
    let servers = c.nats.connect.servers();
    assert_eq!(servers.len(), 3);
    assert_eq!(servers[1].host(), "b.example");
    assert!(servers[1].tls_required());
    assert_eq!(servers[2].port(), 4222);

    for bad in [
        "nats://a:4222,http://b:4222",
        "nats://a:4222,,nats://b:4222",
        "nats://a:4222,nats://b:99999",
    ] {
        let (s, _dir) = sources(None, &[], &[&format!("nats.url={bad}")]);
        let e = ingest(&s).unwrap_err();
        assert!(
            matches!(
                &e,
                ConfigError::BadValue { key, origin, .. }
                    if key == "nats.url" && origin == "--set nats.url"
            ),
            "{bad}: {e}"
        );
        assert!(e.to_string().contains("entry 2"), "{e}");
    }
}

#[test]
fn nats_credentials_are_exclusive_and_named_in_pairs() {
    let dir = crate::scratch::TempDir::new("uplink-cfg").unwrap();
    let seed = nkeys::KeyPair::new_user().seed().unwrap();
    let nkey = file_with(&dir, "user.nk", &format!("{seed}\n"));
    for (sets, a, b) in [
        (
            vec![
                "nats.token=t".to_string(),
                "nats.user=u".into(),
                "nats.password=p".into(),
            ],
            "nats.user",
            "nats.token",
        ),
        (
            vec![format!("nats.nkey={nkey}"), "nats.token=t".into()],
            "nats.nkey",
            "nats.token",
        ),
        (
            vec![format!("nats.creds={nkey}"), format!("nats.nkey={nkey}")],
            "nats.creds",
            "nats.nkey",
        ),
    ] {
        let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
        let (s, _d) = sources(None, &[], &sets);
        let e = gateway(&s).unwrap_err().to_string();
        assert!(e.contains(a) && e.contains(b), "{sets:?}: {e}");
    }
    let (s, _d) = sources(None, &[], &["nats.user=u"]);
    let e = gateway(&s).unwrap_err().to_string();
    assert!(e.contains("nats.password"), "{e}");
    let (s, _d) = sources(
        None,
        &[],
        &["nats.url=nats://u:p@host:4222", "nats.token=t"],
    );
    let e = gateway(&s).unwrap_err().to_string();
    assert!(e.contains("nats.url") && e.contains("nats.token"), "{e}");
    assert!(!e.contains("u:p@"), "URL credentials leaked: {e}");

    let (s, _d) = sources(None, &[], &[&format!("nats.nkey={nkey}")]);
    let c = gateway(&s).unwrap();
    assert!(matches!(c.nats.connect.auth(), Auth::Nkey(_)));
}

#[test]
fn nats_files_are_read_at_config_time_naming_key_and_file() {
    let dir = crate::scratch::TempDir::new("uplink-cfg").unwrap();
    for key in ["nats.creds", "nats.nkey", "nats.tls.ca"] {
        let (s, _d) = sources(None, &[], &[&format!("{key}=/nonexistent/f.pem")]);
        let e = ingest(&s).unwrap_err().to_string();
        assert!(
            e.contains(key) && e.contains("/nonexistent/f.pem"),
            "{key}: {e}"
        );
    }
    // Not a seed, and a seed of the wrong kind: named, and the file's text is not echoed.
    let garbage = file_with(&dir, "bad.nk", "SUAnotaseedatall\n");
    let (s, _d) = sources(None, &[], &[&format!("nats.nkey={garbage}")]);
    let e = ingest(&s).unwrap_err().to_string();
    assert!(e.contains("nats.nkey") && e.contains("bad.nk"), "{e}");
    assert!(!e.contains("SUAnotaseed"), "seed text in the error: {e}");
    let account_seed = nkeys::KeyPair::new_account().seed().unwrap();
    let account = file_with(&dir, "account.nk", &account_seed);
    let (s, _d) = sources(None, &[], &[&format!("nats.nkey={account}")]);
    let e = ingest(&s).unwrap_err().to_string();
    assert!(e.contains("not a user"), "{e}");
    assert!(!e.contains(&account_seed), "seed in the error: {e}");

    // A creds file needs both sections; a well-formed one passes.
    let seed = nkeys::KeyPair::new_user().seed().unwrap();
    let no_jwt = file_with(
        &dir,
        "no-jwt.creds",
        &format!("-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"),
    );
    let (s, _d) = sources(None, &[], &[&format!("nats.creds={no_jwt}")]);
    let e = gateway(&s).unwrap_err().to_string();
    assert!(
        e.contains("nats.creds") && e.contains("no-jwt.creds"),
        "{e}"
    );
    assert!(!e.contains(&seed), "seed in the error: {e}");
    let creds = file_with(
        &dir,
        "user.creds",
        &format!(
            "-----BEGIN NATS USER JWT-----\neyJ0eXAiOiJKV1QifQ.e30.c2ln\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        ),
    );
    let (s, _d) = sources(None, &[], &[&format!("nats.creds={creds}")]);
    gateway(&s).unwrap();

    // PEM files that hold no certificate are refused now, not at each connection attempt.
    let not_pem = file_with(&dir, "not-pem.pem", "hello\n");
    let (s, _d) = sources(None, &[], &[&format!("nats.tls.ca={not_pem}")]);
    let e = ingest(&s).unwrap_err().to_string();
    assert!(
        e.contains("nats.tls.ca") && e.contains("not-pem.pem"),
        "{e}"
    );

    // A client certificate needs its key.
    let ca = file_with(&dir, "ca.pem", "x");
    let (s, _d) = sources(None, &[], &[&format!("nats.tls.cert={ca}")]);
    let e = gateway(&s).unwrap_err().to_string();
    assert!(e.contains("nats.tls.key"), "{e}");
}

#[test]
fn secrets_never_show_in_debug_output() {
    let (s, _d) = sources(
        None,
        &[
            ("UPLINK_GATEWAY_NATS__USER", "edge"),
            ("UPLINK_GATEWAY_NATS__PASSWORD", "hunter2-edge"),
            ("UPLINK_INGEST_NATS__TOKEN", "tok-cloud-42"),
        ],
        &[],
    );
    let g = gateway(&s).unwrap();
    assert_eq!(g.nats.connect.password.expose(), "hunter2-edge");
    let shown = format!("{g:?} {g:#?}");
    assert!(!shown.contains("hunter2-edge"), "{shown}");
    assert!(shown.contains("password: (set)"), "{shown}");
    let i = ingest(&s).unwrap();
    let shown = format!("{i:?}");
    assert!(
        !shown.contains("tok-cloud-42") && shown.contains("token: (set)"),
        "{shown}"
    );
    // The defaults rendering has no secret to print, whatever the environment holds.
    let text = render_defaults::<GatewayConfig>();
    assert!(text.contains("password = \"\""), "{text}");
}

#[test]
fn stream_limits_are_checked_and_have_documented_defaults() {
    let g = GatewayConfig::default();
    assert_eq!(g.nats.limits.max_age, Duration::from_secs(7 * 24 * 3600));
    assert_eq!(g.nats.limits.max_bytes, 1 << 30);
    assert_eq!(g.nats.limits.discard, Discard::New);
    let i = IngestConfig::default();
    assert_eq!(i.nats.limits, StreamLimits::default());

    let (s, _d) = sources(None, &[], &["nats.max_bytes=0"]);
    let e = gateway(&s).unwrap_err().to_string();
    assert!(e.contains("nats.max_bytes") && e.contains("-1"), "{e}");
    let (s, _d) = sources(None, &[], &["nats.max_msgs=-2"]);
    assert!(
        gateway(&s)
            .unwrap_err()
            .to_string()
            .contains("nats.max_msgs")
    );
    let (s, _d) = sources(None, &[], &["nats.discard=sometimes"]);
    assert!(gateway(&s).is_err());
    let (s, _d) = sources(None, &[], &["nats.max_age=1m"]);
    let e = ingest(&s).unwrap_err().to_string();
    assert!(e.contains("nats.duplicate_window"), "{e}");
    let (s, _d) = sources(
        Some(
            "[nats]\nmax_age = \"1d\"\nmax_msgs = 1000\ndiscard = \"new\"\n[nats.tls]\nrequired = true\n",
        ),
        &[],
        &[],
    );
    let c = ingest(&s).unwrap();
    assert_eq!(c.nats.limits.max_msgs, 1000);
    assert!(c.nats.connect.tls.required);
    let mut js = async_nats::jetstream::stream::Config::default();
    c.nats.limits.apply(&mut js);
    assert_eq!(js.max_age, Duration::from_secs(86400));
    assert_eq!(js.max_messages, 1000);
    assert_eq!(js.max_bytes, -1);
    assert_eq!(
        js.discard,
        async_nats::jetstream::stream::DiscardPolicy::New
    );

    // Unknown keys inside the flattened section are still refused.
    let (s, _d) = sources(Some("[nats]\npasword = \"x\"\n"), &[], &[]);
    let e = gateway(&s).unwrap_err().to_string();
    assert!(e.contains("nats.pasword"), "{e}");
}

/// A value's error names the key and the layer that set it — file, environment or flag —
/// for deserialization errors and for validation errors alike.
#[test]
fn bad_values_name_their_key_and_origin() {
    let err = |file: Option<&str>, env: &[(&str, &str)], sets: &[&str]| {
        let (s, _dir) = sources(file, env, sets);
        gateway(&s).unwrap_err().to_string()
    };
    let e = err(Some("[timeouts]\nidle = \"abc\"\n"), &[], &[]);
    assert!(e.contains("`timeouts.idle` (from file "), "{e}");
    assert!(e.contains("invalid duration \"abc\""), "{e}");
    let e = err(None, &[("UPLINK_GATEWAY_TIMEOUTS__IDLE", "abc")], &[]);
    assert!(
        e.contains("`timeouts.idle` (from environment UPLINK_GATEWAY_TIMEOUTS__IDLE)"),
        "{e}"
    );
    let e = err(None, &[], &["timeouts.idle=abc"]);
    assert!(
        e.contains("`timeouts.idle` (from --set timeouts.idle)"),
        "{e}"
    );
    // A key inside a flattened section is still named.
    let e = err(Some("[nats]\nurl = 5\n"), &[], &[]);
    assert!(e.contains("`nats.url` (from file "), "{e}");
    // Validation, after loading, knows the origin too.
    let e = err(None, &[], &["platform=a.b"]);
    // Values are not repeated in the origin (they may be secrets).
    let s = err(None, &[], &["nats.password=hunter2", "nats.token=t"]);
    assert!(!s.contains("hunter2"), "{s}");
    assert!(e.contains("`platform` (from --set platform)"), "{e}");
    assert!(e.contains("single token"), "{e}");
}

#[test]
fn unknown_keys_get_the_closest_known_one() {
    let err = |sets: &[&str]| {
        let (s, _dir) = sources(None, &[], sets);
        gateway(&s).unwrap_err().to_string()
    };
    let e = err(&["timeouts.idel=3s"]);
    assert!(e.contains("did you mean `timeouts.idle`?"), "{e}");
    let e = err(&["batch.max_message=3"]);
    assert!(e.contains("did you mean `batch.max_messages`?"), "{e}");
    // The right name under the wrong section.
    let e = err(&["max_messages=3"]);
    assert!(e.contains("did you mean `batch.max_messages`?"), "{e}");
    let e = err(&["completely.unrelated=1"]);
    assert!(!e.contains("did you mean"), "{e}");
    assert!(e.contains("uplink config defaults"), "{e}");
    assert_eq!(super::load::edit_distance("idle", "idel"), 2);
    assert_eq!(super::load::edit_distance("", "abc"), 3);
}

/// docs/configuration.md is what `uplink config reference` prints: regenerate it with
/// `cargo run -- config reference > docs/configuration.md` when a setting or its doc changes.
#[test]
fn the_configuration_reference_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");
    let on_disk = std::fs::read_to_string(path).expect("docs/configuration.md");
    assert!(
        on_disk == reference(),
        "docs/configuration.md is stale: run `cargo run -- config reference > docs/configuration.md`"
    );
    // Every key is in it.
    for key in default_keys::<GatewayConfig>()
        .into_iter()
        .chain(default_keys::<IngestConfig>())
    {
        assert!(
            on_disk.contains(&format!("`{key}`")) || on_disk.contains(&format!("`[{key}]`")),
            "{key}"
        );
    }
}

/// Every typed setting (URL, socket address, IP list, header name, NATS URL list, duration)
/// is parsed while loading, and its error names the key, the layer that set it and what was
/// expected — from a file, the environment and `--set` alike.
#[test]
fn typed_values_are_parsed_once_and_their_errors_name_key_and_layer() {
    // (program, key, bad value, what the reason says)
    let cases: &[(&str, &str, &str, &str)] = &[
        ("gateway", "cloud.url", "https://bad host", "is not a URL"),
        (
            "gateway",
            "cloud.server_name",
            "bad_name!",
            "is not a TLS server name",
        ),
        (
            "gateway",
            "admin.listen",
            "localhost:9101",
            "is not a socket address",
        ),
        ("gateway", "timeouts.idle", "soon", "invalid duration"),
        ("gateway", "nats.url", "nats://a:4222,http://b", "entry 2"),
        ("ingest", "listen", "127.0.0.1", "is not a socket address"),
        ("ingest", "proxy.listen", ":8080", "is not a socket address"),
        ("ingest", "proxy.trusted", "nothost", "is not an IP address"),
        (
            "ingest",
            "proxy.identity_header",
            "x bad",
            "is not an HTTP header name",
        ),
        (
            "ingest",
            "proxy.verify_header",
            "a:b",
            "is not an HTTP header name",
        ),
        ("ingest", "nats.url", "nats://a:4222,,b", "is empty"),
    ];
    for &(program, key, bad, reason) in cases {
        let load = |s: &Sources| match program {
            "gateway" => gateway(s).map(drop),
            _ => ingest(s).map(drop),
        };
        let (section, leaf) = key.rsplit_once('.').unwrap_or(("", key));
        let toml_value = if key == "proxy.trusted" {
            format!("[{bad:?}]")
        } else {
            format!("{bad:?}")
        };
        // Another key of the same (flattened, for nats) section set from another layer: the
        // error still blames the bad one.
        let file = if section.is_empty() {
            format!("{leaf} = {toml_value}\n")
        } else {
            format!("[{section}]\n{leaf} = {toml_value}\n")
        };
        let env_name = format!(
            "UPLINK_{}_{}",
            program.to_uppercase(),
            key.to_uppercase().replace('.', "__")
        );
        let set = format!("{key}={bad}");
        let other_env = ("UPLINK_GATEWAY_NATS__STREAM", "S");
        let other_env_ingest = ("UPLINK_INGEST_NATS__STREAM", "S");
        for (layer, s, _dir) in [
            {
                let (s, d) = sources(Some(&file), &[other_env, other_env_ingest], &[]);
                ("from file ", s, d)
            },
            {
                let (s, d) = sources(None, &[(&env_name, bad)], &["nats.stream=S"]);
                ("from environment UPLINK_", s, d)
            },
            {
                let (s, d) = sources(None, &[other_env, other_env_ingest], &[&set]);
                ("from --set ", s, d)
            },
        ] {
            let e = load(&s).expect_err(key).to_string();
            assert!(
                e.contains(&format!("setting `{key}` ({layer}")),
                "{program} {key} {layer}: {e}"
            );
            assert!(e.contains(reason), "{program} {key} {layer}: {e}");
        }
    }
    // Loaded once, used typed.
    let (s, _d) = sources(
        None,
        &[],
        &[
            "proxy.listen=127.0.0.1:8081",
            "proxy.trusted=10.0.0.1, ::1",
            "proxy.identity_header=X-Client-DN",
        ],
    );
    let c = ingest(&s).unwrap();
    assert_eq!(c.proxy.listen, Some("127.0.0.1:8081".parse().unwrap()));
    assert_eq!(c.proxy.trusted.len(), 2);
    assert_eq!(c.proxy.identity_header.as_str(), "x-client-dn");
    assert_eq!(IngestConfig::default().proxy.listen, None);
    let (s, _d) = sources(
        None,
        &[],
        &[
            "cloud.url=https://gw.example/ingest",
            "cloud.server_name=10.0.0.7",
        ],
    );
    let c = gateway(&s).unwrap();
    assert_eq!(c.cloud.server_name.unwrap().to_string(), "10.0.0.7");
    assert_eq!(c.cloud.url.host(), Some("gw.example"));
    assert_eq!(c.cloud.url.path(), "/ingest");
    // Written back as given: `config defaults` and the harness's files round-trip.
    let text = toml::to_string(&IngestConfig::default()).unwrap();
    assert!(text.contains("listen = \"\""), "{text}");
    let text = toml::to_string(&GatewayConfig::default()).unwrap();
    assert!(
        text.contains("url = \"https://127.0.0.1:8443\"\n"),
        "{text}"
    );
}

#[test]
fn a_cloud_url_with_a_query_is_refused_by_validation_naming_the_key() {
    let mut g = GatewayConfig::default();
    g.cloud.url = "https://ingest.example:8443/route?x=1".parse().unwrap();
    let e = g.validate().unwrap_err().to_string();
    assert!(e.contains("cloud.url") && e.contains("query string"), "{e}");
    g.cloud.url = "https://ingest.example:8443/route".parse().unwrap();
    assert!(g.validate().is_ok());
}

#[test]
fn a_dead_letter_prefix_the_edge_stream_would_capture_is_refused_naming_both() {
    let mut g = GatewayConfig::default();
    assert_eq!(g.forward.dead_letter, "uplink.dead");
    assert!(g.validate().is_ok());
    // Dead letters the edge stream takes in would be forwarded, refused and copied again.
    g.nats.subjects = vec!["telemetry.>".into(), "uplink.>".into()];
    let e = g.validate().unwrap_err().to_string();
    assert!(
        e.contains("forward.dead_letter") && e.contains("uplink.>"),
        "{e}"
    );
    g.forward.dead_letter = "telemetry.dead".into();
    assert!(g.validate().is_err());
    g.forward.dead_letter = "ops.dead".into();
    assert!(g.validate().is_ok());
    g.forward.dead_letter = "ops.*".into();
    let e = g.validate().unwrap_err().to_string();
    assert!(
        e.contains("forward.dead_letter") && e.contains("wildcard"),
        "{e}"
    );
    // "" turns the copy off.
    g.forward.dead_letter = String::new();
    g.nats.subjects = vec![">".into()];
    assert!(g.validate().is_ok());
}
