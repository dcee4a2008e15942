//! Arbitrary bytes, in arbitrary chunk sizes, through a decoder with small limits,
//! calling `decode` and `decode_slice` in an arbitrary mix: no panic, the buffer never
//! holds more than the size limit plus one read once the decoder asks for more, no
//! message or stray text over the limit, stray frames that end with their stray
//! byte, and the same frames as when the input is fed whole.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use qga_framing::{Decoder, Frame, Limits};

const LIMITS: Limits = Limits {
    max_message: 4096,
    max_depth: 16,
};

fn run(input: &[u8], chunk: usize, mix: u8) -> Vec<Frame<Vec<u8>>> {
    let mut d = Decoder::with_limits(LIMITS);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut calls = 0u32;
    for c in input.chunks(chunk) {
        buf.extend_from_slice(c);
        loop {
            calls += 1;
            // Bit k of `mix` picks the entry point for call k (mod 8).
            let frame = if mix >> (calls % 8) & 1 == 1 {
                let (used, frame) = d.decode_slice(&buf);
                let frame = frame.map(|f| f.map(<[u8]>::to_vec));
                let _ = buf.split_to(used);
                frame
            } else {
                d.decode(&mut buf).map(|f| f.map(|m| m.to_vec()))
            };
            let Some(f) = frame else { break };
            if let Frame::Message(m) | Frame::Stray(m) = &f {
                assert!(m.len() <= LIMITS.max_message, "frame of {} bytes", m.len());
            }
            if let Frame::Stray(m) = &f {
                // A stray frame ends with the stray byte: a control byte, or a
                // high byte on its own.
                let last = *m.last().expect("a stray frame holds its byte");
                assert!(last < 0x20 || (m.len() == 1 && last >= 0x80), "{m:?}");
            }
            frames.push(f);
        }
        assert!(
            buf.len() <= LIMITS.max_message + 1,
            "{} bytes buffered after the decoder asked for more",
            buf.len()
        );
    }
    frames
}

fuzz_target!(|data: &[u8]| {
    let Some((&[first, mix], input)) = data.split_first_chunk() else {
        return;
    };
    let chunk = usize::from(first % 64) + 1;
    let chunked = run(input, chunk, mix);
    let whole = run(input, input.len().max(1), 0);
    assert_eq!(chunked, whole);
});
