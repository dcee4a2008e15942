//! Helpers shared by the client's scripted-peer tests.

use bytes::BytesMut;
use qga_framing::{Decoder, Frame};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Reads the peer's next request (skipping the client's 0xFF flush bytes), `None`
/// at end of stream.
pub async fn next_request(
    io: &mut (impl AsyncRead + Unpin),
    dec: &mut Decoder,
    buf: &mut BytesMut,
) -> Option<Value> {
    loop {
        while let Some(f) = dec.decode(buf) {
            if let Frame::Message(m) = f {
                return Some(serde_json::from_slice(&m).unwrap());
            }
        }
        let mut tmp = [0u8; 4096];
        let n = io.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}
