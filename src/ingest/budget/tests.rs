use std::time::Duration;

use super::*;

fn far() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

#[tokio::test(start_paused = true)]
async fn shares_are_refused_at_once_and_given_back() {
    let b = Arc::new(Budget::new(1000, 300, 500));
    let c1 = Arc::new(Account::default());
    let c2 = Arc::new(Account::default());
    let mut a = b.hold(c1.clone(), "p");
    a.grow(200, far()).await.unwrap();
    let mut a2 = b.hold(c1.clone(), "p");
    a2.grow(100, far()).await.unwrap();
    assert_eq!(a2.grow(1, far()).await, Err(Refused::Connection(300)));
    drop(a2);
    a.grow(100, far()).await.unwrap();
    let mut x = b.hold(c2.clone(), "p");
    x.grow(200, far()).await.unwrap();
    assert_eq!(x.grow(1, far()).await, Err(Refused::Platform(500)));
    // Another platform on another connection still gets memory.
    let mut other = b.hold(Arc::new(Account::default()), "q");
    other.grow(300, far()).await.unwrap();
    assert_eq!(b.held(), 800);
    drop(a);
    assert_eq!((c1.held(), b.held()), (0, 500));
    x.grow(1, far()).await.unwrap();
    drop(x);
    drop(other);
    assert_eq!(b.held(), 0);
    assert!(
        b.platforms.lock().unwrap().is_empty(),
        "idle platforms are forgotten"
    );
}

#[tokio::test(start_paused = true)]
async fn waiting_for_the_total_ends_at_the_deadline() {
    let b = Arc::new(Budget::new(100, 100, 100));
    let mut a = b.hold(Arc::new(Account::default()), "p");
    a.grow(90, far()).await.unwrap();
    let mut w = b.hold(Arc::new(Account::default()), "q");
    let deadline = Instant::now() + Duration::from_secs(2);
    let started = Instant::now();
    assert_eq!(w.grow(20, deadline).await, Err(Refused::Total(100)));
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert_eq!(b.held(), 90, "a refused wait holds nothing");
    // Room given back wakes a waiter before its deadline.
    let waiter = tokio::spawn(async move {
        w.grow(20, Instant::now() + Duration::from_secs(10))
            .await
            .map(|_| w)
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    a.shrink(50);
    let w = waiter.await.unwrap().unwrap();
    assert_eq!(w.held(), 20);
    assert_eq!(
        a.grow(1000, far()).await,
        Err(Refused::Impossible {
            needed: 1040,
            key: "limits.max_inflight_bytes_per_connection",
            limit: 100
        }),
        "more than a share is never granted to one request"
    );
}
