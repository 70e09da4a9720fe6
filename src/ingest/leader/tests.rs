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

/// The time since the previous probe, when the loop probes next.
async fn next_probe(
    probes: &mut tokio::sync::mpsc::UnboundedReceiver<tokio::time::Instant>,
    last: &mut tokio::time::Instant,
) -> Duration {
    let at = probes.recv().await.expect("the loop probes on");
    let gap = at - *last;
    *last = at;
    gap
}

#[tokio::test(start_paused = true)]
async fn the_leader_is_probed_every_second_every_250_ms_without_one_at_once_on_trouble() {
    let w = Arc::new(LeaderWatch::new("UPLINK"));
    let answer = Arc::new(std::sync::Mutex::new(Ok::<_, NoLeader>(
        "cloud-1".to_string(),
    )));
    let (asked, mut probes) = tokio::sync::mpsc::unbounded_channel();
    let probing = tokio::spawn({
        let (w, answer) = (w.clone(), answer.clone());
        async move {
            w.probe_with(|| {
                asked.send(tokio::time::Instant::now()).unwrap();
                std::future::ready(answer.lock().unwrap().clone())
            })
            .await
        }
    });
    let mut last = tokio::time::Instant::now();
    let ms = Duration::from_millis;
    assert_eq!(next_probe(&mut probes, &mut last).await, ms(0), "at start");
    assert_eq!(next_probe(&mut probes, &mut last).await, ms(1000));
    assert_eq!(next_probe(&mut probes, &mut last).await, ms(1000));

    // The leader goes: the probe that finds it gone asks again at once (the loss pokes it),
    // then every 250 ms until there is one.
    *answer.lock().unwrap() = Err(NoLeader::Electing {
        stream: "UPLINK".into(),
    });
    assert_eq!(next_probe(&mut probes, &mut last).await, ms(1000));
    assert!(w.ready().unwrap_err().contains("has no leader"));
    assert_eq!(next_probe(&mut probes, &mut last).await, ms(0));
    assert_eq!(next_probe(&mut probes, &mut last).await, ms(250));
    assert_eq!(next_probe(&mut probes, &mut last).await, ms(250));
    *answer.lock().unwrap() = Ok("cloud-2".into());
    assert_eq!(next_probe(&mut probes, &mut last).await, ms(250));
    assert_eq!(w.ready(), Ok(()));
    assert_eq!(
        next_probe(&mut probes, &mut last).await,
        ms(1000),
        "a leader again"
    );

    // A publish overdue for its PubAck pokes the probe: it asks at once.
    tokio::time::advance(ms(300)).await;
    w.poke();
    assert_eq!(next_probe(&mut probes, &mut last).await, ms(300));
    assert_eq!(next_probe(&mut probes, &mut last).await, ms(1000));
    // So does a publish nobody took; the probe finds the leader and /readyz follows.
    tokio::time::advance(ms(100)).await;
    w.no_responders();
    assert!(w.ready().is_err());
    assert_eq!(next_probe(&mut probes, &mut last).await, ms(100));
    assert_eq!(w.ready(), Ok(()));
    assert_eq!(next_probe(&mut probes, &mut last).await, ms(1000));
    probing.abort();
}

#[test]
fn a_probe_waits_timeouts_publish_clamped_to_half_a_second_to_two() {
    let ms = Duration::from_millis;
    assert_eq!(probe_timeout(ms(100)), ms(500));
    assert_eq!(probe_timeout(ms(1200)), ms(1200));
    assert_eq!(probe_timeout(Duration::from_secs(30)), ms(2000));
}
