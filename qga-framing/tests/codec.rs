//! The tokio-util codec over a byte stream: frames as the sans-IO decoder gives
//! them, limit errors as items (the stream goes on), a trailing partial message
//! dropped at end of stream, and messages encoded one per line.

use futures_util::{SinkExt, StreamExt};
use qga_framing::{Frame, FrameError, Limits, QgaCodec};
use tokio::io::AsyncWriteExt;
use tokio_util::codec::{FramedRead, FramedWrite};

#[tokio::test]
async fn frames_from_a_stream_and_errors_as_items() {
    let (mut tx, rx) = tokio::io::duplex(64);
    let writer = tokio::spawn(async move {
        for chunk in [
            &b"{\"execute\":\"guest-"[..],
            b"ping\"}\xff[[[[[1]]]]] {\"a\":",
            b"\"}\"}{\"half\":",
        ] {
            tx.write_all(chunk).await.unwrap();
        }
    });
    let codec = QgaCodec::with_limits(Limits {
        max_message: 1024,
        max_depth: 4,
    });
    let frames: Vec<Frame> = FramedRead::new(rx, codec)
        .map(|f| f.unwrap())
        .collect()
        .await;
    writer.await.unwrap();
    assert_eq!(
        frames,
        [
            Frame::Message("{\"execute\":\"guest-ping\"}".into()),
            Frame::Resync,
            Frame::Oversized(FrameError::TooDeep { limit: 4 }),
            Frame::Message("{\"a\":\"}\"}".into()),
        ]
    );
}

#[tokio::test]
async fn encodes_one_message_per_line() {
    let mut out = Vec::new();
    {
        let mut sink = FramedWrite::new(&mut out, QgaCodec::new());
        sink.send(&b"{\"return\":{}}"[..]).await.unwrap();
        sink.send(bytes::Bytes::from_static(b"{\"a\":\n1}"))
            .await
            .unwrap();
    }
    assert_eq!(out, b"{\"return\":{}}\n{\"a\": 1}\n");
}
