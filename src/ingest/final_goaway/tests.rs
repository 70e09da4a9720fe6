use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const SETTINGS: u8 = 0x4;
const DATA: u8 = 0x0;

/// A client stream: preface, SETTINGS, a request, a user PING ACK (passes), the shutdown PING
/// ACK (held), then a racing request and a WINDOW_UPDATE.
fn client_bytes() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let mut before = PREFACE.to_vec();
    before.extend(frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]));
    before.extend(frame(HEADERS, 0x4, 1, b"hdrs"));
    before.extend(frame(DATA, 0x1, 1, &[9; 40]));
    before.extend(frame(PING, ACK, 0, &[1, 2, 3, 4, 5, 6, 7, 8]));
    let ack = frame(PING, ACK, 0, &SHUTDOWN_PING);
    let mut after = frame(HEADERS, 0x5, 3, b"late");
    after.extend(frame(0x8, 0, 0, &[0, 0, 1, 0]));
    (before, ack, after)
}

#[test]
fn the_shutdown_ack_is_held_at_every_split_and_released_at_a_boundary() {
    let (before, ack, after) = client_bytes();
    let all: Vec<u8> = [before.clone(), ack.clone(), after.clone()].concat();
    let expected_without_ack: Vec<u8> = [before.clone(), after.clone()].concat();
    for split in 0..=all.len() {
        for split2 in split..=all.len() {
            let mut t = Tracker::new();
            let mut out = Vec::new();
            let mut seen = Seen::default();
            for part in [&all[..split], &all[split..split2], &all[split2..]] {
                let s = t.feed(part, &mut out);
                seen.new_streams += s.new_streams;
                seen.ack_held |= s.ack_held;
            }
            assert_eq!(out, expected_without_ack, "split {split}/{split2}");
            assert!(seen.ack_held && t.holding());
            assert_eq!(seen.new_streams, 2);
            assert!(t.release(&mut out));
            assert_eq!(&out[expected_without_ack.len()..], &ack[..]);
            assert!(!t.holding());
        }
    }
}

#[test]
fn the_ack_waits_for_a_frame_boundary_and_eof_flushes_everything() {
    let (before, ack, _) = client_bytes();
    let mut t = Tracker::new();
    let mut out = Vec::new();
    t.feed(&before, &mut out);
    t.feed(&ack, &mut out);
    // Half a DATA frame: releasing now would split it.
    let data = frame(DATA, 0, 3, &[1; 20]);
    t.feed(&data[..15], &mut out);
    let mark = out.len();
    assert!(!t.release(&mut out));
    assert_eq!(out.len(), mark);
    t.feed(&data[15..], &mut out);
    assert!(t.release(&mut out));
    assert_eq!(&out[out.len() - ack.len()..], &ack[..]);
    // EOF with a partial header held: the bytes are handed on as they were.
    let mut t = Tracker::new();
    let mut out = Vec::new();
    t.feed(&before, &mut out);
    t.feed(&ack, &mut out);
    t.feed(&[0, 0], &mut out);
    t.flush(&mut out);
    assert_eq!(out, [before, ack, vec![0, 0]].concat());
}

#[test]
fn not_http2_passes_unchanged() {
    let mut t = Tracker::new();
    let mut out = Vec::new();
    let junk = b"GET / HTTP/1.1\r\n\r\n\x00\x00\x08\x06\x01\x00\x00\x00\x00";
    t.feed(junk, &mut out);
    t.feed(&SHUTDOWN_PING, &mut out);
    assert_eq!(out, [junk.to_vec(), SHUTDOWN_PING.to_vec()].concat());
    assert!(!t.holding());
}

#[tokio::test(start_paused = true)]
async fn gate_releases_after_quiet_or_max_wait() {
    let (before, ack, after) = client_bytes();
    let (mut client, server) = tokio::io::duplex(1 << 16);
    let mut gate = Gate::new(
        server,
        Duration::from_millis(100),
        Duration::from_millis(1000),
    );
    client.write_all(&before).await.unwrap();
    let mut got = vec![0u8; before.len()];
    gate.read_exact(&mut got).await.unwrap();
    assert_eq!(got, before);
    client.write_all(&ack).await.unwrap();
    let start = Instant::now();
    // New streams keep arriving every 50 ms: the ACK is held, they pass.
    let mut stream = 5u32;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let h = frame(HEADERS, 0x5, stream, b"r");
        stream += 2;
        client.write_all(&h).await.unwrap();
        let mut got = vec![0u8; h.len()];
        gate.read_exact(&mut got).await.unwrap();
        assert_eq!(got, h, "frames behind the held ACK pass in order");
    }
    // Quiet from now: the ACK comes 100 ms after the last new stream.
    let mut got = vec![0u8; ack.len()];
    gate.read_exact(&mut got).await.unwrap();
    assert_eq!(got, ack);
    let waited = start.elapsed();
    assert!(
        (Duration::from_millis(340)..Duration::from_millis(400)).contains(&waited),
        "{waited:?}"
    );
    client.write_all(&after).await.unwrap();
    let mut got = vec![0u8; after.len()];
    gate.read_exact(&mut got).await.unwrap();
    assert_eq!(got, after);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_never_stops_opening_streams_gets_the_ack_at_max_wait() {
    let (before, ack, _) = client_bytes();
    let (mut client, server) = tokio::io::duplex(1 << 16);
    let mut gate = Gate::new(
        server,
        Duration::from_millis(100),
        Duration::from_millis(500),
    );
    client.write_all(&before).await.unwrap();
    client.write_all(&ack).await.unwrap();
    let mut got = vec![0u8; before.len()];
    gate.read_exact(&mut got).await.unwrap();
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        let mut stream = 5u32;
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if client
                .write_all(&frame(HEADERS, 0x5, stream, b"r"))
                .await
                .is_err()
            {
                break;
            }
            stream += 2;
        }
        client
    });
    let mut headers_before_ack = 0;
    loop {
        let mut head = [0u8; 9];
        gate.read_exact(&mut head).await.unwrap();
        let mut payload = vec![0u8; head[2] as usize];
        gate.read_exact(&mut payload).await.unwrap();
        if head[3] == PING {
            assert_eq!(payload, SHUTDOWN_PING);
            break;
        }
        headers_before_ack += 1;
    }
    let waited = start.elapsed();
    assert!(
        (Duration::from_millis(500)..Duration::from_millis(540)).contains(&waited),
        "{waited:?}"
    );
    assert!(headers_before_ack >= 20, "{headers_before_ack}");
    drop(writer.await.unwrap());
}
