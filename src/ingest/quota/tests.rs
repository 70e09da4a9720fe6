use super::*;

#[tokio::test(start_paused = true)]
async fn a_platform_waits_for_its_own_share_only() {
    let shares = Arc::new(PublishShares::new(1000));
    let a1 = shares.acquire("a", 500).await;
    let a2 = shares.acquire("a", 500).await;
    // "a" is at its share: its third request waits; "b" is not held up.
    let waiting = {
        let shares = shares.clone();
        tokio::spawn(async move { shares.acquire("a", 500).await.is_some() })
    };
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished(), "a third batch of a fit its share");
    let b = tokio::time::timeout(Duration::from_secs(1), shares.acquire("b", 10_000)).await;
    assert!(b.is_ok_and(|s| s.is_some()), "b waited for a");
    drop(a1);
    assert!(waiting.await.unwrap());
    drop(a2);
    // Larger than the share: takes it whole instead of waiting forever.
    let whole = tokio::time::timeout(Duration::from_secs(1), shares.acquire("c", 5000)).await;
    assert!(whole.is_ok_and(|s| s.is_some_and(|p| p.num_permits() == 1000)));
    assert!(PublishShares::new(0).acquire("a", 10).await.is_none());
}

#[test]
fn no_quota_admits_everything_without_a_ticket() {
    let book = Arc::new(QuotaBook::new(Quotas::default()));
    assert!(book.admit("a", Instant::now()).unwrap().is_none());
}

#[test]
fn a_platform_in_debt_waits_until_it_paid_it_back_and_others_are_not_affected() {
    let book = Arc::new(QuotaBook::new(Quotas {
        messages_per_second: 100.0,
        ..Default::default()
    }));
    let t0 = Instant::now();
    // One second's worth is there at once; a request may take more (debt).
    let t = book.admit("a", t0).unwrap().unwrap();
    t.charge(150, 0);
    drop(t);
    let e = book.admit("a", t0).err().unwrap();
    assert_eq!(e.what, "messages_per_second");
    // 50 in debt at 100/s: half a second.
    let wait = e.retry_after.as_secs_f64();
    assert!((0.45..=0.55).contains(&wait), "{wait}");
    // Another platform has its own bucket.
    assert!(book.admit("b", t0).is_ok());
    // Paid back: admitted again.
    assert!(book.admit("a", t0 + Duration::from_millis(600)).is_ok());
}

#[test]
fn bytes_and_requests_in_flight_are_limited_too() {
    let book = Arc::new(QuotaBook::new(Quotas {
        bytes_per_second: 1000.0,
        requests_in_flight: 2,
        ..Default::default()
    }));
    let t0 = Instant::now();
    let a = book.admit("p", t0).unwrap().unwrap();
    let b = book.admit("p", t0).unwrap().unwrap();
    let e = book.admit("p", t0).err().unwrap();
    assert_eq!(e.what, "requests_in_flight");
    drop(a);
    b.charge(0, 3000);
    drop(b);
    let e = book.admit("p", t0).err().unwrap();
    assert_eq!(e.what, "bytes_per_second");
    assert!(e.retry_after >= Duration::from_millis(1900), "{e:?}");
}
