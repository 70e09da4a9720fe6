use super::*;

#[test]
fn the_harness_config_is_the_deployed_one_with_test_values() {
    let dir = crate::testbed::TempDir::new("uplink-nginx-render").unwrap();
    let pki = uplink::tls::dev_pki(dir.path(), &["edge-1".into()]).unwrap();
    let proxied = NginxSite {
        upstreams: vec!["127.0.0.1:7777".parse().unwrap()],
        keepalive_requests: 5,
        ..Default::default()
    };
    let conf = render(dir.path(), &pki, &proxied, 4444).unwrap();
    for line in [
        "listen 127.0.0.1:4444 ssl http2;",
        "server 127.0.0.1:7777 max_fails=1 fail_timeout=5s;",
        "proxy_next_upstream error timeout non_idempotent;",
        "keepalive_requests 5;",
        "ssl_verify_client on;",
        "proxy_set_header X-Uplink-Client-DN $ssl_client_s_dn;",
    ] {
        assert!(conf.contains(line), "{line}:\n{conf}");
    }
    assert!(!conf.contains("/etc/uplink"), "{conf}");
    assert!(conf.contains(&pki.server_cert().display().to_string()));

    let reference = NginxSite {
        http2: false,
        ..Default::default()
    };
    let conf = render(dir.path(), &pki, &reference, 4444).unwrap();
    assert!(conf.contains("listen 127.0.0.1:4444 ssl;"), "{conf}");
    assert!(conf.contains("return 204;"), "{conf}");
    assert!(
        !conf.contains("upstream") && !conf.contains("proxy_pass"),
        "{conf}"
    );
    assert_eq!(
        conf.matches('{').count(),
        conf.matches('}').count(),
        "{conf}"
    );

    let two = NginxSite {
        upstreams: vec![
            "127.0.0.1:7777".parse().unwrap(),
            "127.0.0.1:7778".parse().unwrap(),
        ],
        ..Default::default()
    };
    let conf = render(dir.path(), &pki, &two, 4444).unwrap();
    let servers: Vec<&str> = conf
        .lines()
        .filter(|l| l.trim_start().starts_with("server 127."))
        .collect();
    assert_eq!(
        servers,
        [
            "    server 127.0.0.1:7777 max_fails=1 fail_timeout=5s;",
            "    server 127.0.0.1:7778 max_fails=1 fail_timeout=5s;"
        ],
        "{conf}"
    );
    assert!(!conf.contains("server 127.0.0.1:8080"), "{conf}");
}

#[test]
fn the_l4_config_is_the_deployed_one_with_one_server_per_ingest() {
    let so = PathBuf::from("/x/ngx_stream_module.so");
    let ups: Vec<SocketAddr> = vec![
        "127.0.0.1:7001".parse().unwrap(),
        "127.0.0.1:7002".parse().unwrap(),
    ];
    let conf = render_l4(Path::new("/r"), Some(so), &ups, 4445).unwrap();
    assert!(
        conf.starts_with("load_module /x/ngx_stream_module.so;\n"),
        "{conf}"
    );
    for line in [
        "listen 127.0.0.1:4445;",
        "server 127.0.0.1:7001 max_fails=1 fail_timeout=5s;",
        "server 127.0.0.1:7002 max_fails=1 fail_timeout=5s;",
        "proxy_pass uplink_ingest_tls;",
        "stream {",
    ] {
        assert!(conf.contains(line), "{line}:\n{conf}");
    }
    assert!(!conf.contains("8443") && !conf.contains("http {"), "{conf}");
    assert_eq!(conf.matches('{').count(), conf.matches('}').count());
    let none = render_l4(Path::new("/r"), None, &[], 4445).unwrap_err();
    assert!(format!("{none}").contains("at least one ingest"), "{none}");
}
