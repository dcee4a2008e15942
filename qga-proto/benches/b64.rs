//! Base64 encoding throughput (bytes of data a second): `Base64::encode_to_slice`
//! (AVX-512 VBMI for the whole 48-byte blocks where the CPU has it, base64-simd for
//! the rest) against base64-simd alone (`base64_simd::STANDARD.encode`, AVX2 on an
//! x86-64 CPU with it), into the same preallocated buffer. The two texts are
//! asserted equal once per size before timing.
//!
//! Run: `cargo bench -p qga-proto --bench b64`

use base64_simd::AsOut;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use qga_proto::Base64;

/// `n` bytes of noise (xorshift).
fn data(n: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("b64-encode");
    for (name, size) in [
        ("4KiB", 4 * 1024),
        ("192KiB", 192 * 1024),
        ("1MiB", 1024 * 1024),
    ] {
        let input = data(size);
        let mut out = vec![0u8; Base64::encoded_len(size)];
        let simd = base64_simd::STANDARD
            .encode(&input, out.as_mut_slice().as_out())
            .to_vec();
        let n = Base64::encode_to_slice(&input, &mut out).unwrap();
        assert_eq!(&out[..n], simd, "{name}: the texts differ");

        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("base64-simd/{name}"), |b| {
            b.iter(|| {
                base64_simd::STANDARD
                    .encode(black_box(&input), out.as_mut_slice().as_out())
                    .len()
            })
        });
        g.bench_function(format!("qga-proto/{name}"), |b| {
            b.iter(|| Base64::encode_to_slice(black_box(&input), &mut out))
        });
    }
    g.finish();
}

criterion_group!(benches, encode);
criterion_main!(benches);
