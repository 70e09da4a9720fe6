//! Micro-benchmarks of the hot per-batch code (issue 12): the gateway's batch encode (protobuf)
//! and compress (zstd at the gateway's default level 1), the ingest's decompress + decode, and
//! the HTTP/2 frame tap's parser. Run: `cargo bench --bench wire` (see BENCHMARKS.md).
//!
//! Messages look like the bench's telemetry: ~200 B of JSON whose keys repeat and whose
//! numbers vary, an id in the gateway's form, one of 8 subjects, no headers.

use std::hint::black_box;

use bytes::Bytes;
use divan::counter::{BytesCount, ItemsCount};
use uplink::http2::tap::{Direction, Parser, Side};
use uplink::wire::{self, Batch, Encoding, Message};

fn main() {
    divan::main();
}

/// Batch sizes: one message, the default batch (500), a large one.
const SIZES: &[usize] = &[1, 100, 500, 5000];
/// The gateway's default `batch.zstd_level`.
const ZSTD_LEVEL: i32 = 1;
/// The ingest's default `limits.max_decoded_bytes`.
const LIMIT: usize = 64 << 20;

fn message(i: usize) -> Message {
    let mut rng = fastrand::Rng::with_seed(i as u64);
    let mut payload = format!(
        r#"{{"site":"plant-3","line":{},"sensor":"temp-{:04}","seq":{i},"ts":{},"value":{:.3},"unit":"C","status":"ok","fw":"2.4.{}","tags":["edge","telemetry"]}}"#,
        rng.u8(1..9),
        rng.u16(0..2048),
        1_764_640_000_000u64 + i as u64 * 7,
        rng.f64() * 100.0,
        rng.u8(0..20),
    );
    payload.extend(std::iter::repeat_n(
        ' ',
        200usize.saturating_sub(payload.len()),
    ));
    payload.truncate(200);
    Message {
        id: wire::message_id(
            "edge-1",
            "TELEMETRY",
            1_764_640_000_000_000_000,
            i as u64 + 1,
        ),
        subject: format!("telemetry.s{}", i % 8),
        payload: Bytes::from(payload),
        headers: Default::default(),
        time_unix_nano: 1_764_640_000_000_000_000 + i as i64 * 7_000_000,
        multi_headers: Vec::new(),
    }
}

fn batch(n: usize) -> Batch {
    Batch {
        messages: (0..n).map(message).collect(),
    }
}

/// Protobuf bytes of a batch: the unit of every wire throughput below.
fn raw_len(b: &Batch) -> usize {
    wire::encode_batch(b, Encoding::Identity, 0).unwrap().len()
}

mod batch {
    use super::*;

    /// Protobuf encoding alone (`Encoding::Identity`).
    #[divan::bench(args = SIZES)]
    fn encode(bencher: divan::Bencher, n: usize) {
        let b = batch(n);
        bencher
            .counter(BytesCount::new(raw_len(&b)))
            .bench(|| wire::encode_batch(black_box(&b), Encoding::Identity, 0).unwrap());
    }

    /// What the gateway does per batch: protobuf, then zstd level 1.
    #[divan::bench(args = SIZES)]
    fn encode_zstd(bencher: divan::Bencher, n: usize) {
        let b = batch(n);
        bencher
            .counter(BytesCount::new(raw_len(&b)))
            .bench(|| wire::encode_batch(black_box(&b), Encoding::Zstd, ZSTD_LEVEL).unwrap());
    }

    /// zstd alone, on the protobuf bytes, a new context per batch (what `encode_batch` did
    /// before it kept one per thread).
    #[divan::bench(args = SIZES)]
    fn compress_zstd(bencher: divan::Bencher, n: usize) {
        let raw = wire::encode_batch(&batch(n), Encoding::Identity, 0).unwrap();
        bencher
            .counter(BytesCount::new(raw.len()))
            .bench(|| zstd::bulk::compress(black_box(&raw), ZSTD_LEVEL).unwrap());
    }

    /// zstd with one compression context kept across batches, as `encode_batch` does now (one
    /// per thread): the difference to `compress_zstd` is what the reuse saves.
    #[divan::bench(args = SIZES)]
    fn compress_zstd_reused_context(bencher: divan::Bencher, n: usize) {
        let raw = wire::encode_batch(&batch(n), Encoding::Identity, 0).unwrap();
        let mut c = zstd::bulk::Compressor::new(ZSTD_LEVEL).unwrap();
        bencher
            .counter(BytesCount::new(raw.len()))
            .bench_local(|| c.compress(black_box(&raw)).unwrap());
    }

    /// zstd decompression alone, a new context per batch (as `wire::decompress` does).
    #[divan::bench(args = SIZES)]
    fn decompress_zstd(bencher: divan::Bencher, n: usize) {
        let raw = wire::encode_batch(&batch(n), Encoding::Identity, 0).unwrap();
        let body = zstd::bulk::compress(&raw, ZSTD_LEVEL).unwrap();
        bencher
            .counter(BytesCount::new(raw.len()))
            .bench(|| zstd::bulk::decompress(black_box(&body), LIMIT).unwrap());
    }

    /// The same with one decompression context kept across batches.
    #[divan::bench(args = SIZES)]
    fn decompress_zstd_reused_context(bencher: divan::Bencher, n: usize) {
        let raw = wire::encode_batch(&batch(n), Encoding::Identity, 0).unwrap();
        let body = zstd::bulk::compress(&raw, ZSTD_LEVEL).unwrap();
        let mut d = zstd::bulk::Decompressor::new().unwrap();
        bencher
            .counter(BytesCount::new(raw.len()))
            .bench_local(|| d.decompress(black_box(&body), raw.len()).unwrap());
    }

    /// Protobuf decoding alone.
    #[divan::bench(args = SIZES)]
    fn decode(bencher: divan::Bencher, n: usize) {
        let raw = wire::encode_batch(&batch(n), Encoding::Identity, 0).unwrap();
        bencher
            .counter(BytesCount::new(raw.len()))
            .bench(|| wire::decode_batch(black_box(&raw), Encoding::Identity, LIMIT).unwrap());
    }

    /// zstd decompression + protobuf decoding (bytes counted decoded).
    #[divan::bench(args = SIZES)]
    fn decode_zstd(bencher: divan::Bencher, n: usize) {
        let b = batch(n);
        let body = wire::encode_batch(&b, Encoding::Zstd, ZSTD_LEVEL).unwrap();
        bencher
            .counter(BytesCount::new(raw_len(&b)))
            .bench(|| wire::decode_batch(black_box(&body), Encoding::Zstd, LIMIT).unwrap());
    }

    /// The ingest's message counter, fed the decoded bytes in 64 KiB steps as it decompresses.
    #[divan::bench(args = SIZES)]
    fn count_messages(bencher: divan::Bencher, n: usize) {
        let raw = wire::encode_batch(&batch(n), Encoding::Identity, 0).unwrap();
        bencher.counter(BytesCount::new(raw.len())).bench(|| {
            let mut c = wire::MessageCounter::new(n);
            for chunk in black_box(&raw).chunks(64 << 10) {
                c.feed(chunk).unwrap();
            }
            c.finish().unwrap()
        });
    }
}

/// One frame: the 9-byte header (RFC 9113 §4.1) and its payload.
fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream_id: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(payload);
}

/// A client→server byte stream: the preface, SETTINGS, then `requests` POSTs, each HEADERS
/// (60 B of HPACK) + DATA frames of at most `data` bytes carrying a `body`-byte body + a
/// WINDOW_UPDATE, as the gateway's connection carries them. Returns the bytes and the frames.
fn h2_stream(requests: usize, body: usize, data: usize) -> (Vec<u8>, usize) {
    const DATA: u8 = 0;
    const HEADERS: u8 = 1;
    const SETTINGS: u8 = 4;
    const WINDOW_UPDATE: u8 = 8;
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(&mut out, SETTINGS, 0, 0, &[0, 4, 0, 0x10, 0, 0]);
    let mut frames = 1;
    let payload = vec![0x5au8; data];
    for r in 0..requests {
        let id = 2 * r as u32 + 1;
        frame(&mut out, HEADERS, 0x4, id, &[0x82; 60]);
        let mut left = body;
        while left > 0 {
            let n = left.min(data);
            left -= n;
            frame(&mut out, DATA, u8::from(left == 0), id, &payload[..n]);
            frames += 1;
        }
        frame(&mut out, WINDOW_UPDATE, 0, 0, &(body as u32).to_be_bytes());
        frames += 2;
    }
    (out, frames)
}

mod frame_tap {
    use super::*;

    /// The tap's parser over a connection's bytes fed in 16 KiB reads (what a TLS read
    /// returns): one 200 B message per request (many small frames), and 64 KiB batch bodies in
    /// 16 KiB DATA frames (the gateway's shape). Counted in frames.
    #[divan::bench(args = [200, 65536])]
    fn parse(bencher: divan::Bencher, body: usize) {
        let (bytes, frames) = h2_stream(2000, body, 16 << 10);
        bencher
            .counter(ItemsCount::new(frames))
            .counter(BytesCount::new(bytes.len()))
            .bench(|| {
                let mut p = Parser::new(Side::Server, Direction::Recv);
                let mut seen = 0usize;
                for chunk in black_box(&bytes).chunks(16 << 10) {
                    p.feed_with(chunk, |_| seen += 1);
                }
                assert_eq!(seen, frames);
                seen
            });
    }
}
