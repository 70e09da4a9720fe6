use std::time::{Duration, Instant};

use super::{Scrape, ScrapeError, describe, render};

fn scrape(at: Instant, metrics: &str) -> Scrape {
    Scrape {
        at,
        metrics: metrics.into(),
        ready: Ok(()),
        connections: None,
    }
}

const GATEWAY: &str = "uplink_gateway_lag_seconds 2.5\n\
uplink_gateway_messages_total{result=\"acked\"} 100\n\
uplink_gateway_retries_total{class=\"now\"} 1\n\
uplink_gateway_retries_total{class=\"backoff\"} 2\n\
uplink_gateway_consumer_pending_messages 7\n\
uplink_gateway_in_flight_batches 3\n\
uplink_gateway_concurrency_limit 5\n\
uplink_gateway_edge_stream_max_bytes -1\n\
uplink_gateway_edge_stream_seconds_to_full 90\n\
uplink_gateway_last_delivery_timestamp_seconds 0\n";

#[test]
fn rates_come_from_two_scrapes() {
    let t0 = Instant::now();
    let old = scrape(t0, GATEWAY);
    let new = scrape(
        t0 + Duration::from_secs(2),
        &GATEWAY.replace("} 100\n", "} 300\n"),
    );
    let s = describe("127.0.0.1:9101", Some(&old), &Ok(new));
    assert_eq!(s.program, Some("gateway"));
    let g = s.gateway.unwrap();
    assert_eq!((g.delivered, g.delivered_per_sec), (300.0, 100.0));
    assert_eq!((g.retries_now, g.retries_backoff), (1.0, 2.0));
    assert_eq!((g.backlog_pending, g.lag_seconds), (7.0, 2.5));
    // -1 is "no limit"; 0 is "never delivered".
    assert_eq!(g.edge_stream_max_bytes, None);
    assert_eq!(g.seconds_to_full, Some(90.0));
    assert_eq!(g.last_delivery_ago, None);
    // The send slots beside what is in flight (an adaptive limit moves; fixed is max_in_flight).
    assert_eq!((g.in_flight_batches, g.send_slots), (3.0, Some(5.0)));
    let text = render(&[describe("127.0.0.1:9101", None, &Ok(scrape(t0, GATEWAY)))]);
    assert!(text.contains("in flight 3 of 5 batches"), "{text}");
}

#[test]
fn a_restarted_program_has_no_negative_rate() {
    let t0 = Instant::now();
    let old = scrape(t0, GATEWAY);
    let new = scrape(
        t0 + Duration::from_secs(1),
        &GATEWAY.replace("} 100\n", "} 5\n"),
    );
    let g = describe("a", Some(&old), &Ok(new)).gateway.unwrap();
    assert_eq!(g.delivered_per_sec, 0.0);
}

#[test]
fn ingests_show_each_platform() {
    let m = "uplink_ingest_messages_total{result=\"accepted\"} 10\n\
uplink_ingest_platform_messages_total{platform=\"edge-1\",result=\"accepted\"} 7\n\
uplink_ingest_platform_messages_total{platform=\"edge-2\",result=\"accepted\"} 3\n\
uplink_ingest_platform_rejected_requests_total{platform=\"edge-2\",code=\"bad_subject\"} 1\n";
    let s = describe("b", None, &Ok(scrape(Instant::now(), m)));
    assert_eq!(s.program, Some("ingest"));
    let i = s.ingest.as_ref().unwrap();
    assert_eq!(i.accepted, 10.0);
    assert_eq!(i.rejected_requests, 1.0);
    let names: Vec<_> = i.platforms.iter().map(|p| p.platform.as_str()).collect();
    assert_eq!(names, ["edge-1", "edge-2"]);
    assert_eq!(i.platforms[1].rejected_requests, 1.0);
    let text = render(&[s]);
    assert!(text.contains("platform edge-2"), "{text}");
}

#[test]
fn a_program_that_does_not_answer_is_down_not_an_error() {
    let err = ScrapeError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
    let s = describe("127.0.0.1:1", None, &Err(err));
    assert!(!s.up);
    let text = render(std::slice::from_ref(&s));
    assert!(text.contains("DOWN"), "{text}");
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["up"], false);
    assert!(
        json["error"].as_str().unwrap().contains("refused"),
        "{json}"
    );
}

#[test]
fn not_ready_shows_why() {
    let mut sc = scrape(Instant::now(), GATEWAY);
    sc.ready = Err("edge NATS not connected".into());
    let text = render(&[describe("c", None, &Ok(sc))]);
    assert!(
        text.contains("NOT READY (edge NATS not connected)"),
        "{text}"
    );
}

#[test]
fn durations_show_two_units() {
    use super::secs;
    assert_eq!(secs(2.25), "2.2s");
    assert_eq!(secs(42.0), "42s");
    assert_eq!(secs(8107.0), "2h 15m");
    assert_eq!(secs(200_000.0), "2d 7h");
}

#[test]
fn connections_are_listed_with_age_requests_and_goaways_the_rest_counted() {
    let conn = |id: u64, age: f64| crate::http2::tap::LiveConnection {
        id,
        side: "client".into(),
        age_seconds: age,
        requests: 1234,
        last_goaway_received: (id == 9).then(|| "NO_ERROR last_stream_id=1999".into()),
        last_goaway_sent: None,
    };
    let mut sc = scrape(Instant::now(), GATEWAY);
    sc.connections = Some(((4..10).rev().map(|i| conn(i, i as f64 * 60.0)).collect(), 6));
    let s = describe("c", None, &Ok(sc));
    let text = render(std::slice::from_ref(&s));
    assert!(
        text.contains(
            "    conn 9     age 9m 0s    requests 1234    GOAWAY received NO_ERROR last_stream_id=1999, sent none\n"
        ),
        "{text}"
    );
    assert_eq!(text.matches("    conn ").count(), 4, "{text}");
    assert!(text.contains("    … 2 more connections\n"), "{text}");
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["connections"][0]["id"], 9);
    assert_eq!(json["connections_total"], 6);
}

#[test]
fn rejected_messages_say_how_many_are_in_the_dead_letters() {
    let t0 = Instant::now();
    let text = render(&[describe("127.0.0.1:9101", None, &Ok(scrape(t0, GATEWAY)))]);
    assert!(text.contains("rejected 0  in flight"), "{text}");
    let m = format!(
        "{GATEWAY}uplink_gateway_messages_total{{result=\"rejected\"}} 3\n\
         uplink_gateway_dead_letters_total{{result=\"stored\"}} 2\n\
         uplink_gateway_dead_letters_total{{result=\"too_large\"}} 1\n"
    );
    let s = describe("127.0.0.1:9101", None, &Ok(scrape(t0, &m)));
    assert_eq!(s.gateway.as_ref().unwrap().dead_letters, 2.0);
    let text = render(&[s]);
    assert!(
        text.contains("rejected 3 (2 in dead letters)  in flight"),
        "{text}"
    );
}
