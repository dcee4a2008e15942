//! Framer throughput against the baseline a user would reach for: serde_json's
//! `StreamDeserializer` (over `IgnoredAny`) on the same bytes. Both entry points are
//! timed: `qga-framing` (`decode`, owned `Bytes` per message) and `qga-framing-slice`
//! (`decode_slice`, borrowed). Each input's message count is asserted once before
//! timing, for the framer and the baseline.
//!
//! Run: `cargo bench -p qga-framing --bench framer -- --warm-up-time 1 --measurement-time 3`

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use qga_framing::{Decoder, Frame, Limits};
use serde::de::IgnoredAny;

/// A guest-file-write request whose `buf-b64` holds `b64_len` bytes of base64.
fn write_request(b64_len: usize) -> Vec<u8> {
    let mut v = br#"{"execute":"guest-file-write","arguments":{"handle":1000,"buf-b64":""#.to_vec();
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    v.extend((0..b64_len).map(|i| alphabet[(i * 7 + i / 64) % 64]));
    v.extend_from_slice(br#""}}"#);
    v
}

fn small_requests(n: usize) -> Vec<u8> {
    let mut v = Vec::new();
    for i in 0..n {
        let req = match i % 3 {
            0 => r#"{"execute":"guest-ping"}"#.to_owned(),
            1 => format!(r#"{{"execute":"guest-sync","arguments":{{"id":{i}}},"id":{i}}}"#),
            _ => format!(
                r#"{{"execute":"guest-file-read","arguments":{{"handle":1000,"count":{i}}}}}"#
            ),
        };
        v.extend_from_slice(req.as_bytes());
        v.push(b'\n');
    }
    v
}

fn nested(depth: usize) -> Vec<u8> {
    let mut v = Vec::new();
    for _ in 0..depth {
        v.extend_from_slice(br#"{"a":"}x{","b":[1,2,3],"c":"#);
    }
    v.extend_from_slice(b"null");
    v.extend(std::iter::repeat_n(b'}', depth));
    v
}

fn frame_count(input: &[u8]) -> usize {
    let mut d = Decoder::with_limits(Limits::default());
    let mut buf = BytesMut::from(input);
    let mut n = 0;
    while let Some(f) = d.decode(&mut buf) {
        assert!(matches!(f, Frame::Message(_)), "{f:?}");
        n += 1;
    }
    n
}

fn slice_count(input: &[u8]) -> usize {
    let mut d = Decoder::new();
    let mut rest = input;
    let mut n = 0;
    loop {
        let (used, f) = d.decode_slice(rest);
        match f {
            None => break,
            Some(f) => assert!(matches!(f, Frame::Message(_)), "{f:?}"),
        }
        rest = &rest[used..];
        n += 1;
    }
    n
}

fn serde_count(input: &[u8]) -> usize {
    let mut n = 0;
    for r in serde_json::Deserializer::from_slice(input).into_iter::<IgnoredAny>() {
        r.unwrap();
        n += 1;
    }
    n
}

fn bench(c: &mut Criterion) {
    let inputs: Vec<(&str, Vec<u8>, usize)> = vec![
        ("guest-ping", br#"{"execute":"guest-ping"}"#.to_vec(), 1),
        ("file-write-1MiB", write_request(1 << 20), 1),
        ("file-write-48MiB", write_request(48 << 20), 1),
        ("10k-small-requests", small_requests(10_000), 10_000),
        ("nested-1000", nested(1000), 1),
    ];
    for (name, input, messages) in &inputs {
        assert_eq!(frame_count(input), *messages, "{name}: framer");
        assert_eq!(slice_count(input), *messages, "{name}: framer, slices");
        assert_eq!(serde_count(input), *messages, "{name}: serde_json");
        let mut g = c.benchmark_group(*name);
        g.throughput(Throughput::Bytes(input.len() as u64));
        if input.len() > 10 << 20 {
            g.sample_size(10);
        }
        g.bench_function("qga-framing", |b| {
            b.iter_batched_ref(
                || {
                    // A long-lived read buffer, as in the agent: its first split
                    // (a one-time switch to shared storage) happens outside the
                    // timed part.
                    let mut buf = BytesMut::with_capacity(input.len() + 64);
                    buf.extend_from_slice(input);
                    let _ = buf.split_to(0);
                    buf
                },
                |buf| {
                    let mut d = Decoder::new();
                    let mut n = 0;
                    while let Some(f) = d.decode(buf) {
                        black_box(&f);
                        n += 1;
                    }
                    n
                },
                if input.len() < 1 << 20 {
                    BatchSize::SmallInput
                } else {
                    BatchSize::LargeInput
                },
            )
        });
        g.bench_function("qga-framing-slice", |b| {
            b.iter(|| {
                let mut d = Decoder::new();
                let mut rest = black_box(&input[..]);
                let mut n = 0;
                loop {
                    let (used, f) = d.decode_slice(rest);
                    let Some(f) = f else { break };
                    black_box(&f);
                    rest = &rest[used..];
                    n += 1;
                }
                n
            })
        });
        g.bench_function("serde_json-stream", |b| {
            b.iter(|| serde_count(black_box(input)))
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
