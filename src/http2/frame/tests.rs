//! Tests of the sans-IO frame parser on hand-built frames split at every byte boundary, the
//! name tables and the trace lines.

use super::testing::{frame, goaway, settings};
use super::*;

fn header(length: u32, kind: u8, flags: u8, stream_id: u32) -> FrameHeader {
    FrameHeader {
        length,
        kind,
        flags,
        stream_id,
    }
}

fn recv(header: FrameHeader, detail: FrameDetail) -> Frame {
    Frame {
        dir: Direction::Recv,
        header,
        detail,
    }
}

/// What a server receives: the preface and one frame of every kind the tap details.
fn client_stream() -> (Vec<u8>, Vec<Frame>) {
    let mut bytes = PREFACE.to_vec();
    let mut frames = Vec::new();
    let mut add = |b: Vec<u8>, f: Frame| {
        bytes.extend_from_slice(&b);
        frames.push(f);
    };
    add(
        settings(&[(2, 0), (4, 1 << 20)]),
        recv(
            header(12, SETTINGS, 0, 0),
            FrameDetail::Settings {
                ack: false,
                values: vec![(2, 0), (4, 1 << 20)],
            },
        ),
    );
    add(
        frame(SETTINGS, FLAG_ACK, 0, &[]),
        recv(
            header(0, SETTINGS, FLAG_ACK, 0),
            FrameDetail::Settings {
                ack: true,
                values: vec![],
            },
        ),
    );
    add(
        frame(WINDOW_UPDATE, 0, 0, &983_041u32.to_be_bytes()),
        recv(
            header(4, WINDOW_UPDATE, 0, 0),
            FrameDetail::WindowUpdate { increment: 983_041 },
        ),
    );
    // A header block the tap does not decode; only END_STREAM matters.
    add(
        frame(
            HEADERS,
            FLAG_END_STREAM | FLAG_END_HEADERS,
            1,
            &[0x82, 0x86, 0x84],
        ),
        recv(
            header(3, HEADERS, 0x5, 1),
            FrameDetail::Headers { end_stream: true },
        ),
    );
    add(
        frame(HEADERS, FLAG_END_HEADERS, 3, &[0x83, 0x86, 0x84]),
        recv(
            header(3, HEADERS, 0x4, 3),
            FrameDetail::Headers { end_stream: false },
        ),
    );
    let body: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
    add(
        frame(DATA, FLAG_END_STREAM, 3, &body),
        recv(
            header(40_000, DATA, FLAG_END_STREAM, 3),
            FrameDetail::Data { end_stream: true },
        ),
    );
    add(
        frame(PING, 0, 0, &[0, 0, 0, 0, 0, 0, 0, 1]),
        recv(
            header(8, PING, 0, 0),
            FrameDetail::Ping {
                ack: false,
                data: [0, 0, 0, 0, 0, 0, 0, 1],
            },
        ),
    );
    add(
        frame(PING, FLAG_ACK, 0, &[9; 8]),
        recv(
            header(8, PING, FLAG_ACK, 0),
            FrameDetail::Ping {
                ack: true,
                data: [9; 8],
            },
        ),
    );
    add(
        frame(RST_STREAM, 0, 3, &7u32.to_be_bytes()),
        recv(
            header(4, RST_STREAM, 0, 3),
            FrameDetail::RstStream { error_code: 7 },
        ),
    );
    add(
        frame(0x2, 0, 5, &[0, 0, 0, 0, 16]),
        recv(header(5, 0x2, 0, 5), FrameDetail::Other),
    );
    add(
        goaway(1999, 0, b"bye"),
        recv(
            header(11, GOAWAY, 0, 0),
            FrameDetail::GoAway {
                last_stream_id: 1999,
                error_code: 0,
                debug: "bye".into(),
            },
        ),
    );
    (bytes, frames)
}

fn server_parser() -> Parser {
    Parser::new(Side::Server, Direction::Recv)
}

#[test]
fn parser_decodes_each_frame_kind() {
    let (bytes, want) = client_stream();
    let mut p = server_parser();
    assert_eq!(p.feed(&bytes), want);
    assert!(!p.is_stopped());
}

#[test]
fn parser_same_frames_at_every_split() {
    let (bytes, want) = client_stream();
    for at in 0..=bytes.len() {
        let mut p = server_parser();
        let mut got = p.feed(&bytes[..at]);
        got.extend(p.feed(&bytes[at..]));
        assert_eq!(got, want, "split at {at}");
    }
}

#[test]
fn parser_same_frames_in_small_chunks() {
    let (bytes, want) = client_stream();
    for size in [1, 2, 3, 7, 9, 10, 100, 4096] {
        let mut p = server_parser();
        let got: Vec<Frame> = bytes.chunks(size).flat_map(|c| p.feed(c)).collect();
        assert_eq!(got, want, "chunks of {size}");
    }
}

#[test]
fn parser_without_preface_on_server_to_client_direction() {
    let mut p = Parser::new(Side::Client, Direction::Recv);
    let mut bytes = settings(&[(3, 100)]);
    bytes.extend(frame(DATA, 0, 1, b"hello"));
    let got = p.feed(&bytes);
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].detail, FrameDetail::Data { end_stream: false });
    // The client's own preface is expected on its send side.
    let mut p = Parser::new(Side::Client, Direction::Send);
    assert!(p.feed(&bytes).is_empty());
    assert!(p.is_stopped());
}

#[test]
fn parser_stops_when_peer_is_not_http2() {
    // HTTP/1.1 where the client preface should be.
    let mut p = server_parser();
    assert!(p.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").is_empty());
    assert!(p.is_stopped());
    assert!(p.feed(&settings(&[])).is_empty());

    // A mismatch late in a split preface.
    let mut p = server_parser();
    assert!(p.feed(&PREFACE[..20]).is_empty());
    assert!(!p.is_stopped());
    assert!(p.feed(b"XX\r\n").is_empty());
    assert!(p.is_stopped());

    // An HTTP/1.1 response where the server's SETTINGS should be.
    let mut p = Parser::new(Side::Client, Direction::Recv);
    assert!(p.feed(b"HTTP/1.1 400 Bad Request\r\n\r\n").is_empty());
    assert!(p.is_stopped());

    // A valid preface followed by something other than SETTINGS.
    let mut p = server_parser();
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(PING, 0, 0, &[0; 8]));
    assert!(p.feed(&bytes).is_empty());
    assert!(p.is_stopped());
}

#[test]
fn parser_caps_what_it_keeps_and_skips_the_rest() {
    let many: Vec<(u16, u32)> = (0..100).map(|i| (0x100 + i, u32::from(i))).collect();
    let mut bytes = PREFACE.to_vec();
    bytes.extend(settings(&many));
    bytes.extend(goaway(7, 0xb, &[b'x'; 200]));
    // Malformed lengths: no detail, and the stream stays in sync.
    bytes.extend(frame(RST_STREAM, 0, 1, &[0, 0, 8]));
    bytes.extend(frame(PING, 0, 0, &[1; 9]));
    bytes.extend(frame(WINDOW_UPDATE, 0, 1, &[0, 0, 1]));
    bytes.extend(frame(0xff, 0xff, 9, &[1, 2, 3]));
    bytes.extend(frame(DATA, 0, 1, &[]));
    for size in [1, 5, 1000] {
        let mut p = server_parser();
        let got: Vec<Frame> = bytes.chunks(size).flat_map(|c| p.feed(c)).collect();
        let details: Vec<&FrameDetail> = got.iter().map(|f| &f.detail).collect();
        assert_eq!(details.len(), 7);
        match details[0] {
            FrameDetail::Settings { values, .. } => assert_eq!(values[..], many[..64]),
            d => panic!("{d:?}"),
        }
        assert_eq!(
            details[1],
            &FrameDetail::GoAway {
                last_stream_id: 7,
                error_code: 0xb,
                debug: "x".repeat(64)
            }
        );
        assert!(details[2..6].iter().all(|d| **d == FrameDetail::Other));
        assert_eq!(got[5].header, header(3, 0xff, 0xff, 9));
        assert_eq!(details[6], &FrameDetail::Data { end_stream: false });
    }
}

#[test]
fn names() {
    assert_eq!(error_code_name(0), "NO_ERROR");
    assert_eq!(error_code_name(1), "PROTOCOL_ERROR");
    assert_eq!(error_code_name(7), "REFUSED_STREAM");
    assert_eq!(error_code_name(0xb), "ENHANCE_YOUR_CALM");
    assert_eq!(error_code_name(0xd), "HTTP_1_1_REQUIRED");
    assert_eq!(error_code_name(0xe), "0xe");
    assert_eq!(error_code_name(0xdead), "0xdead");
    assert_eq!(frame_type_name(0), "DATA");
    assert_eq!(frame_type_name(3), "RST_STREAM");
    assert_eq!(frame_type_name(8), "WINDOW_UPDATE");
    assert_eq!(frame_type_name(9), "CONTINUATION");
    assert_eq!(frame_type_name(0xa), "UNKNOWN_0xa");
    assert_eq!(frame_type_name(0xff), "UNKNOWN_0xff");
}

#[test]
fn display_lines() {
    let mut p = Parser::new(Side::Client, Direction::Send);
    let mut bytes = PREFACE.to_vec();
    bytes.extend(settings(&[(3, 128), (4, 65535), (0x9, 1)]));
    bytes.extend(frame(WINDOW_UPDATE, 0, 3, &65535u32.to_be_bytes()));
    bytes.extend(frame(
        HEADERS,
        FLAG_END_STREAM | FLAG_END_HEADERS,
        1,
        &[1, 2, 3],
    ));
    bytes.extend(frame(0xff, 0, 0, &[]));
    let lines: Vec<String> = p.feed(&bytes).iter().map(Frame::to_string).collect();
    assert_eq!(
        lines,
        [
            "send SETTINGS flags=0x0 stream=0 len=18 MAX_CONCURRENT_STREAMS=128 \
             INITIAL_WINDOW_SIZE=65535 0x9=1",
            "send WINDOW_UPDATE flags=0x0 stream=3 len=4 increment=65535",
            "send HEADERS flags=0x5 (END_STREAM|END_HEADERS) stream=1 len=3",
            "send UNKNOWN_0xff flags=0x0 stream=0 len=0",
        ]
    );

    let mut p = Parser::new(Side::Client, Direction::Recv);
    let mut bytes = settings(&[]);
    bytes.extend(frame(SETTINGS, FLAG_ACK, 0, &[]));
    bytes.extend(goaway(1999, 0, b""));
    bytes.extend(goaway(1999, 0xb, b"bye"));
    bytes.extend(frame(PING, FLAG_ACK, 0, &1u64.to_be_bytes()));
    bytes.extend(frame(RST_STREAM, 0, 3, &7u32.to_be_bytes()));
    let lines: Vec<String> = p.feed(&bytes).iter().map(Frame::to_string).collect();
    assert_eq!(
        lines,
        [
            "recv SETTINGS flags=0x0 stream=0 len=0",
            "recv SETTINGS flags=0x1 (ACK) stream=0 len=0",
            "recv GOAWAY flags=0x0 stream=0 len=8 last_stream_id=1999 error=NO_ERROR",
            "recv GOAWAY flags=0x0 stream=0 len=11 last_stream_id=1999 error=ENHANCE_YOUR_CALM \
             debug=\"bye\"",
            "recv PING flags=0x1 (ACK) stream=0 len=8 data=0000000000000001",
            "recv RST_STREAM flags=0x0 stream=3 len=4 error=REFUSED_STREAM",
        ]
    );
}

#[test]
fn setting_names() {
    assert_eq!(setting_name(1), "HEADER_TABLE_SIZE");
    assert_eq!(setting_name(3), "MAX_CONCURRENT_STREAMS");
    assert_eq!(setting_name(6), "MAX_HEADER_LIST_SIZE");
    assert_eq!(setting_name(0x9), "0x9");
}
