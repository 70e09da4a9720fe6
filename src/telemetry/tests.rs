#[test]
fn json_lines_carry_the_promised_keys_and_typed_fields() {
    use std::sync::{Arc, Mutex};
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let sink = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .event_format(super::JsonLines)
        .finish();
    let peer: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    tracing::subscriber::with_default(subscriber, || {
        tracing::warn!(conn = 7u64, h2 = true, ratio = 0.5, %peer, waited = ?std::time::Duration::from_millis(1500), platform = "edge-1", "budget \"full\"");
    });
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(v["level"], "warn");
    assert_eq!(v["msg"], "budget \"full\"");
    assert_eq!(v["target"], module_path!());
    assert!(v["ts"].as_str().is_some_and(|t| t.ends_with('Z')), "{v}");
    assert_eq!(v["conn"], 7);
    assert_eq!(v["h2"], true);
    assert_eq!(v["ratio"], 0.5);
    assert_eq!(v["peer"], "127.0.0.1:9");
    assert_eq!(v["waited"], "1.5s");
    assert_eq!(v["platform"], "edge-1");
}

#[test]
fn scraping() {
    let text = "# HELP x\nuplink_a 3\nuplink_b{class=\"now\"} 2\nuplink_b{class=\"backoff\"} 5\n";
    assert_eq!(super::scrape_value(text, "uplink_a"), Some(3.0));
    assert_eq!(
        super::scrape_value(text, "uplink_b{class=\"now\"}"),
        Some(2.0)
    );
    assert_eq!(super::scrape_sum(text, "uplink_b"), 7.0);
    assert_eq!(super::scrape_value(text, "uplink_c"), None);
    // A label set selects the samples that carry it.
    assert_eq!(super::scrape_sum(text, "uplink_b{class=\"now\"}"), 2.0);
    assert_eq!(super::scrape_sum(text, "uplink_b{class=\"never\"}"), 0.0);
    // The strict form tells "0" from "no such series".
    assert_eq!(super::scrape_sum_present(text, "uplink_b"), Some(7.0));
    assert_eq!(
        super::scrape_sum_present(text, "uplink_b{class=\"never\"}"),
        None
    );
    assert_eq!(super::scrape_sum_present(text, "uplink_c"), None);
    assert_eq!(
        super::scrape_sum_present("uplink_c 0\n", "uplink_c"),
        Some(0.0)
    );
    let text = "x{a=\"1\",b=\"p,q\\\"r\"} 4\nx{a=\"1\",b=\"s\"} 1\nx{a=\"2\"} 8\nxy{a=\"1\"} 16\n";
    assert_eq!(super::scrape_sum(text, "x{a=\"1\"}"), 5.0);
    assert_eq!(super::scrape_sum(text, "x{b=\"p,q\\\"r\"}"), 4.0);
    assert_eq!(super::scrape_sum(text, "x{a=\"1\",b=\"s\"}"), 1.0);
    assert_eq!(super::scrape_sum(text, "x"), 13.0);
    assert_eq!(super::scrape_sum(text, "x{c=\"1\"}"), 0.0);
    assert_eq!(super::scrape_label_values(text, "x", "a"), ["1", "2"]);
    assert_eq!(super::scrape_label_values(text, "x", "b"), ["p,q\"r", "s"]);
    let typed = "# HELP a_total x\n# TYPE a_total counter\na_total 1\n# TYPE b gauge\nb 2\n";
    assert_eq!(
        super::scrape_families(typed),
        [
            ("a_total".into(), "counter".into()),
            ("b".into(), "gauge".into())
        ]
    );
}
