//! The fault proxy against plain loopback sockets: each fault does what it says, measured at
//! the peers.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::FaultProxy;

/// A proxy in front of a listener; returns (proxy, client side, server side of one connection).
async fn pair() -> (FaultProxy, TcpStream, TcpStream) {
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = FaultProxy::start(upstream.local_addr().unwrap())
        .await
        .unwrap();
    let client = TcpStream::connect(proxy.addr).await.unwrap();
    let (server, _) = upstream.accept().await.unwrap();
    (proxy, client, server)
}

/// Round trip of one byte client → server → client.
async fn round_trip(client: &mut TcpStream, server: &mut TcpStream) -> Duration {
    let t = Instant::now();
    client.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    server.read_exact(&mut b).await.unwrap();
    server.write_all(b"y").await.unwrap();
    client.read_exact(&mut b).await.unwrap();
    t.elapsed()
}

fn delayed(proxy: &FaultProxy) -> u64 {
    proxy.stats.delayed_chunks.load(Ordering::Relaxed)
}

#[tokio::test]
async fn forwards_untouched_and_latency_adds_delay_per_chunk() {
    let (proxy, mut c, mut s) = pair().await;
    // Untouched: the bytes arrive and no chunk was held (the event, not a wall-clock window
    // that two busy cores can miss).
    round_trip(&mut c, &mut s).await;
    assert_eq!(delayed(&proxy), 0);
    proxy.set_latency(Duration::from_millis(150));
    // Both directions pay it: one held chunk each way, at least 2 × 150 ms per round trip
    // (a lower bound, which a slow machine only makes easier).
    let rtt = round_trip(&mut c, &mut s).await;
    assert!(rtt >= Duration::from_millis(300), "{rtt:?}");
    assert_eq!(delayed(&proxy), 2);
    proxy.heal();
    round_trip(&mut c, &mut s).await;
    assert_eq!(delayed(&proxy), 2, "a healed proxy still held a chunk");
}

#[tokio::test]
async fn bandwidth_cap_slows_a_transfer_to_the_rate() {
    let (proxy, mut c, mut s) = pair().await;
    proxy.set_bandwidth(Some(100_000));
    let t = Instant::now();
    let send = tokio::spawn(async move {
        c.write_all(&vec![7u8; 50_000]).await.unwrap();
        c
    });
    let mut got = vec![0u8; 50_000];
    s.read_exact(&mut got).await.unwrap();
    let took = t.elapsed();
    // 50 kB at 100 kB/s: about half a second, not the microseconds of loopback.
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(got.iter().all(|&b| b == 7));
    drop(send.await.unwrap());
}

#[tokio::test]
async fn stall_keeps_sockets_open_and_forwards_nothing_until_lifted() {
    let (proxy, mut c, mut s) = pair().await;
    round_trip(&mut c, &mut s).await;
    proxy.set_stalled(true);
    c.write_all(b"held").await.unwrap();
    let mut b = [0u8; 4];
    // Nothing arrives, and the connection is not closed either (a read would return 0).
    let r = tokio::time::timeout(Duration::from_millis(500), s.read(&mut b)).await;
    assert!(r.is_err(), "a stalled proxy forwarded or closed: {r:?}");
    proxy.set_stalled(false);
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"held");
}

#[tokio::test]
async fn freeze_existing_holds_old_connections_and_serves_new_ones() {
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = FaultProxy::start(upstream.local_addr().unwrap())
        .await
        .unwrap();
    let mut old = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut old_s, _) = upstream.accept().await.unwrap();
    assert_eq!(proxy.freeze_existing(), 1);
    old.write_all(b"o").await.unwrap();
    let mut new = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut new_s, _) = upstream.accept().await.unwrap();
    // The new connection is served: a round trip completes (bounded generously, the bound is
    // not the point) and its chunks pass unheld.
    tokio::time::timeout(Duration::from_secs(5), round_trip(&mut new, &mut new_s))
        .await
        .expect("a new connection is served while the old one is frozen");
    assert_eq!(proxy.stats.delayed_chunks.load(Ordering::Relaxed), 0);
    let mut b = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_millis(300), old_s.read(&mut b)).await;
    assert!(r.is_err(), "a frozen connection moved: {r:?}");
}

#[tokio::test]
async fn reset_gives_both_peers_econnreset() {
    let (proxy, mut c, mut s) = pair().await;
    round_trip(&mut c, &mut s).await;
    assert_eq!(proxy.reset_existing(), 1);
    let mut b = [0u8; 8];
    for peer in [&mut c, &mut s] {
        let e = tokio::time::timeout(Duration::from_secs(5), peer.read(&mut b))
            .await
            .expect("the reset arrives")
            .expect_err("a reset, not an orderly close");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    assert_eq!(proxy.stats.resets.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn close_after_n_delivers_exactly_n_bytes_then_closes() {
    let (proxy, mut c, mut s) = pair().await;
    round_trip(&mut c, &mut s).await;
    proxy.set_close_after(Some(1000));
    let writer = tokio::spawn(async move {
        // More than the budget; the write may fail once the proxy closes.
        let _ = c.write_all(&vec![1u8; 5000]).await;
        c
    });
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
        .await
        .expect("the proxy closes")
        .expect("an orderly close (FIN)");
    assert_eq!(got.len(), 1000);
    let mut c = writer.await.unwrap();
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut b))
        .await
        .expect("the client side closes too");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
}
