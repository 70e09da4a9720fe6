use bytes::Bytes;

use super::*;

fn m(n: usize) -> wire::Message {
    wire::Message {
        id: "i".into(),
        subject: "s".into(),
        payload: Bytes::from(vec![0; n]),
        ..Default::default()
    }
}

#[test]
fn closes_on_count() {
    let mut b = Batcher::new(3, 1 << 20);
    assert!(!b.push(1, m(1)));
    assert!(!b.push(2, m(1)));
    assert!(b.push(3, m(1)));
    let (h, batch) = b.take();
    assert_eq!(h, vec![1, 2, 3]);
    assert_eq!(batch.messages.len(), 3);
    assert!(b.is_empty() && b.deadline(Duration::from_secs(1)).is_none());
}

#[test]
fn closes_on_bytes_and_oversized_messages_go_alone() {
    let mut b = Batcher::new(100, 1000);
    assert!(!b.push((), m(400)));
    assert!(b.push((), m(600)));
    b.take();
    assert!(b.push((), m(5000)));
    assert_eq!(b.len(), 1);
}

#[test]
fn an_idle_pipe_takes_a_partial_batch_only_with_a_free_slot() {
    let mut b = Batcher::new(10, 1000);
    assert!(!b.send_when_idle(4), "nothing to send");
    b.push((), m(1));
    assert!(b.send_when_idle(1), "one message, a free slot: send it now");
    assert!(!b.send_when_idle(0), "every slot busy: keep filling");
    b.take();
    assert!(!b.send_when_idle(1));
}

#[tokio::test(start_paused = true)]
async fn linger_starts_at_the_first_message() {
    let mut b = Batcher::new(10, 1000);
    assert_eq!(b.deadline(Duration::from_millis(20)), None);
    let t0 = Instant::now();
    b.push((), m(1));
    tokio::time::advance(Duration::from_millis(5)).await;
    b.push((), m(1));
    assert_eq!(
        b.deadline(Duration::from_millis(20)),
        Some(t0 + Duration::from_millis(20))
    );
}
