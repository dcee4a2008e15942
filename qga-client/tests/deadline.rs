//! A call's timeout bounds the whole call: the resync before it, writing the
//! request and waiting for the reply. Found by the client fuzz target
//! (qga-client/fuzz): each phase used to get a timeout of its own, so a call could
//! take its `quick` resync plus twice its timeout. On tokio's paused clock.

mod common;

use std::time::Duration;

use common::next_request;

use bytes::BytesMut;
use qga_client::{Client, ClientError, Timeouts};
use qga_framing::Decoder;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

fn sync_reply(req: &Value) -> Vec<u8> {
    let mut v = vec![0xff];
    v.extend_from_slice(format!("{{\"return\":{}}}\n", req["arguments"]["id"]).as_bytes());
    v
}

#[tokio::test(start_paused = true)]
async fn a_slow_resync_counts_against_the_calls_timeout() {
    let (ours, mut theirs) = tokio::io::duplex(1 << 16);
    let peer = tokio::spawn(async move {
        let (mut dec, mut buf) = (Decoder::new(), BytesMut::new());
        // The sync, answered after 2 s; the ping, never.
        let sync = next_request(&mut theirs, &mut dec, &mut buf).await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        theirs.write_all(&sync_reply(&sync)).await.unwrap();
        let ping = next_request(&mut theirs, &mut dec, &mut buf).await.unwrap();
        assert_eq!(ping["execute"], "guest-ping");
        std::future::pending::<()>().await;
    });
    let mut client = Client::new(ours).with_timeouts(Timeouts {
        quick: Duration::from_secs(3),
        ..Default::default()
    });
    let start = Instant::now();
    assert!(matches!(client.ping().await, Err(ClientError::Timeout)));
    // Not 2 s of sync plus 3 s of waiting.
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    peer.abort();
}

#[tokio::test(start_paused = true)]
async fn a_slow_write_counts_against_the_calls_timeout() {
    // A tiny pipe: the 4 KiB request goes out only as fast as the peer reads it.
    let (ours, mut theirs) = tokio::io::duplex(64);
    let peer = tokio::spawn(async move {
        let (mut dec, mut buf) = (Decoder::new(), BytesMut::new());
        let sync = next_request(&mut theirs, &mut dec, &mut buf).await.unwrap();
        theirs.write_all(&sync_reply(&sync)).await.unwrap();
        // Reads nothing for 2.5 s, then the whole write request, and never answers.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let write = next_request(&mut theirs, &mut dec, &mut buf).await.unwrap();
        assert_eq!(write["execute"], "guest-file-write");
        std::future::pending::<()>().await;
    });
    let mut client = Client::new(ours).with_timeouts(Timeouts {
        file: Duration::from_secs(3),
        ..Default::default()
    });
    client.sync().await.unwrap();
    let start = Instant::now();
    let r = client.file_write(1000, vec![7; 3000]).await;
    assert!(matches!(r, Err(ClientError::Timeout)), "{r:?}");
    // Not 2.5 s of writing plus 3 s of waiting.
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    peer.abort();
}

#[tokio::test(start_paused = true)]
async fn a_command_without_reply_is_sent_within_the_remaining_timeout() {
    let (ours, mut theirs) = tokio::io::duplex(1 << 16);
    let peer = tokio::spawn(async move {
        let (mut dec, mut buf) = (Decoder::new(), BytesMut::new());
        // The sync, answered after 1.5 s; the shutdown, silently.
        let sync = next_request(&mut theirs, &mut dec, &mut buf).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        theirs.write_all(&sync_reply(&sync)).await.unwrap();
        let shutdown = next_request(&mut theirs, &mut dec, &mut buf).await.unwrap();
        assert_eq!(shutdown["execute"], "guest-shutdown");
        std::future::pending::<()>().await;
    });
    let mut client = Client::new(ours).with_timeouts(Timeouts {
        quick: Duration::from_secs(2),
        no_reply_grace: Duration::from_secs(1),
        ..Default::default()
    });
    let start = Instant::now();
    // Sent, and quiet for what was left of the 2 s: success, as after the grace.
    client.shutdown(None).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    peer.abort();
}
