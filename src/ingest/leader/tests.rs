use super::*;

#[test]
fn a_publish_nobody_took_means_no_leader_and_fails_what_is_in_flight() {
    let w = LeaderWatch::new("UPLINK");
    let mut in_flight = w.losses();
    assert_eq!(w.ready(), Ok(()));
    let why = w.no_responders();
    assert!(
        why.contains("cloud stream UPLINK has no leader") && !why.contains("no stream found"),
        "{why}"
    );
    assert_eq!(w.ready(), Err(why.clone()), "/readyz says the same");
    assert!(
        in_flight.has_changed().unwrap(),
        "in-flight publishes give up"
    );
    assert_eq!(in_flight.borrow_and_update().reason, why);
    // Still no leader: no second loss for the publishes that started since.
    w.no_responders();
    assert!(!in_flight.has_changed().unwrap());
    w.set(Ok("cloud-2".into()), None);
    assert_eq!(w.ready(), Ok(()));
}

#[test]
fn a_probes_finding_condemns_only_publishes_sent_before_it_asked() {
    let w = LeaderWatch::new("UPLINK");
    let before = std::time::Instant::now();
    let asked = before + Duration::from_millis(10);
    let after = asked + Duration::from_millis(10);
    let electing = NoLeader::Electing {
        stream: "UPLINK".into(),
    };
    w.set(Err(electing), Some(asked));
    let loss = w.losses.borrow().clone();
    assert!(loss.condemns(before));
    assert!(!loss.condemns(after), "sent after the probe asked");
    // An event (a publish nobody took, a lost connection) condemns everything in flight.
    w.set(Ok("cloud-1".into()), None);
    w.no_responders();
    assert!(w.losses.borrow().condemns(after));
}

#[test]
fn a_stream_found_missing_is_named_so_not_leaderless() {
    let w = LeaderWatch::new("UPLINK");
    w.set(
        Err(NoLeader::Missing {
            stream: "UPLINK".into(),
        }),
        None,
    );
    assert_eq!(
        w.no_responders(),
        "cloud stream UPLINK does not exist (deleted?)"
    );
    // A failure whose text happens to say "does not exist" is not a missing stream.
    w.set(
        Err(NoLeader::Failed {
            stream: "UPLINK".into(),
            error: "account does not exist".into(),
        }),
        None,
    );
    assert!(w.no_responders().contains("has no leader"));
}

#[tokio::test]
async fn a_lost_connection_is_a_loss_for_publishes_in_flight() {
    let w = Arc::new(LeaderWatch::new("UPLINK"));
    let mut in_flight = w.losses();
    let disconnects = tokio::sync::watch::Sender::new(0u64);
    tokio::spawn(w.clone().follow_disconnects(disconnects.subscribe()));
    disconnects.send_modify(|n| *n += 1);
    tokio::time::timeout(Duration::from_secs(5), in_flight.changed())
        .await
        .expect("the loss arrives")
        .unwrap();
    assert!(
        in_flight
            .borrow()
            .reason
            .contains("connection to cloud NATS was lost")
    );
    // The connection is the connection's readiness, not the leader's.
    assert_eq!(w.ready(), Ok(()));
}
