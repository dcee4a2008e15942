//! Arbitrary bytes, in arbitrary chunk sizes, through a decoder with small limits:
//! no panic, the buffer never holds more than the size limit plus one byte once
//! `decode` asks for more, no message over the limit, and the same frames as when
//! the input is fed whole.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use qga_framing::{Decoder, Frame, Limits};

const LIMITS: Limits = Limits {
    max_message: 4096,
    max_depth: 16,
};

fn run(input: &[u8], chunk: usize) -> Vec<Frame> {
    let mut d = Decoder::with_limits(LIMITS);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for c in input.chunks(chunk) {
        buf.extend_from_slice(c);
        while let Some(f) = d.decode(&mut buf) {
            if let Frame::Message(m) = &f {
                assert!(m.len() <= LIMITS.max_message, "message of {} bytes", m.len());
            }
            frames.push(f);
        }
        assert!(
            buf.len() <= LIMITS.max_message + 1,
            "{} bytes buffered after decode asked for more",
            buf.len()
        );
    }
    frames
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first % 64) + 1;
    let chunked = run(input, chunk);
    let whole = run(input, input.len().max(1));
    assert_eq!(chunked, whole);
});
