use super::*;

#[test]
fn transport_failures() {
    assert_eq!(classify(&ForwardError::NotSent), Retry::Now);
    let io = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    assert_eq!(
        classify(&ForwardError::Connect {
            addr: "a".into(),
            source: io()
        }),
        Retry::Backoff
    );
    assert_eq!(
        classify(&ForwardError::RequestTimeout {
            after: Duration::from_secs(1)
        }),
        Retry::Backoff
    );
    assert_eq!(
        classify(&ForwardError::Unconfirmed {
            status: 200,
            detail: "{}".into()
        }),
        Retry::Backoff
    );
    assert_eq!(
        classify(&ForwardError::TlsTimeout {
            addr: "a".into(),
            after: Duration::from_secs(1)
        }),
        Retry::Backoff
    );
}

/// Real hyper errors, produced by a hand-driven HTTP/2 peer over `tokio::io::duplex`.
mod over_duplex {
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::super::*;
    use crate::http2::frame::testing::frame;
    use crate::http2::frame::{Direction, FrameDetail, Parser, Side};

    /// Sends one POST through hyper's client; the peer answers its first HEADERS with `reply`.
    async fn failure_after(reply: Vec<u8>) -> ForwardError {
        let (client_io, mut server_io) = tokio::io::duplex(64 * 1024);
        let peer = tokio::spawn(async move {
            let mut parser = Parser::new(Side::Server, Direction::Recv);
            let mut buf = vec![0u8; 16 * 1024];
            // Our SETTINGS first, then wait for the request's HEADERS.
            server_io.write_all(&frame(0x4, 0, 0, &[])).await.unwrap();
            loop {
                let n = server_io.read(&mut buf).await.unwrap();
                assert!(n > 0, "client closed before sending a request");
                let frames = parser.feed(&buf[..n]);
                if frames
                    .iter()
                    .any(|f| matches!(f.detail, FrameDetail::Headers { .. }))
                {
                    break;
                }
            }
            server_io.write_all(&frame(0x4, 0x1, 0, &[])).await.unwrap(); // SETTINGS ACK
            server_io.write_all(&reply).await.unwrap();
            // Keep the connection open until the client is done with it.
            let _ = server_io.read(&mut buf).await;
        });
        let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(client_io))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = http::Request::post("http://peer/v1/batches")
            .body(Full::new(Bytes::from_static(b"batch")))
            .unwrap();
        let err = sender
            .send_request(req)
            .await
            .expect_err("the peer refuses");
        peer.abort();
        ForwardError::Http(err)
    }

    #[tokio::test]
    async fn goaway_below_the_stream_means_not_processed() {
        // GOAWAY(last_stream_id = 0, NO_ERROR): stream 1 was never processed.
        let goaway = frame(0x7, 0, 0, &[0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(classify(&failure_after(goaway).await), Retry::Now);
    }

    #[tokio::test]
    async fn refused_stream_means_not_processed() {
        let rst = frame(0x3, 0, 1, &7u32.to_be_bytes()); // REFUSED_STREAM
        assert_eq!(classify(&failure_after(rst).await), Retry::Now);
    }

    #[tokio::test]
    async fn other_resets_may_have_been_processed() {
        let rst = frame(0x3, 0, 1, &2u32.to_be_bytes()); // INTERNAL_ERROR
        assert_eq!(classify(&failure_after(rst).await), Retry::Backoff);
        let cancel = frame(0x3, 0, 1, &8u32.to_be_bytes()); // CANCEL
        assert_eq!(classify(&failure_after(cancel).await), Retry::Backoff);
    }
}
