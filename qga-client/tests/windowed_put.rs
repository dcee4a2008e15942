//! `Client::copy_to_guest` keeps two guest-file-writes on the wire: against a
//! scripted agent that answers only when the client has nothing more to send (so
//! every request the client is willing to send ahead is seen before any answer),
//! the bytes must arrive whole and in order for any size, at most two writes may be
//! unanswered at a time, and an error on any chunk must come back as that error,
//! without hanging, with the connection's requests and replies still paired.
//! Timeouts run on tokio's paused clock.

mod common;

use std::collections::VecDeque;
use std::time::Duration;

use bytes::BytesMut;
use common::next_request;
use qga_client::{Client, ClientError, Timeouts};
use qga_framing::Decoder;
use serde_json::{json, Value};
use tokio::io::{AsyncWriteExt, DuplexStream};

/// What the agent does with one guest-file-write.
enum Act {
    /// Writes the data and answers with its count.
    Write,
    /// Answers these bytes instead (and writes nothing).
    Reply(Vec<u8>),
    /// Never answers it.
    Silent,
    /// Closes the connection.
    Close,
}

/// What the agent saw.
#[derive(Debug, Default)]
struct Seen {
    /// Commands, in order.
    names: Vec<String>,
    /// The file's bytes, from the writes it answered as written.
    written: Vec<u8>,
    /// The length of each write it was sent.
    write_lens: Vec<usize>,
    /// Ids of the writes.
    write_ids: Vec<Value>,
    /// The most requests it had unanswered at once.
    max_unanswered: usize,
}

/// An error reply to `req` (with its id).
fn error(req: &Value, desc: &str) -> Vec<u8> {
    format!(
        "{}\n",
        json!({"error": {"class": "GenericError", "desc": desc}, "id": req["id"]})
    )
    .into_bytes()
}

/// An agent answering in order, but only once the client has sent all it will
/// without an answer (nothing came for 1 s of the paused clock): so everything
/// the client sends ahead is queued before the oldest is answered. `act` decides
/// on the n-th write (1-based). guest-get-time answers with how many calls of it
/// came so far, to check that answers stay paired with their calls.
fn agent(
    mut io: DuplexStream,
    mut act: impl FnMut(usize, &Value) -> Act + Send + 'static,
) -> tokio::task::JoinHandle<Seen> {
    tokio::spawn(async move {
        let (mut dec, mut buf) = (Decoder::new(), BytesMut::new());
        let mut seen = Seen::default();
        let mut queue = VecDeque::new();
        let (mut writes, mut times) = (0usize, 0i64);
        loop {
            let next = tokio::time::timeout(
                Duration::from_secs(1),
                next_request(&mut io, &mut dec, &mut buf),
            )
            .await;
            match next {
                Ok(Some(req)) => {
                    seen.names.push(req["execute"].as_str().unwrap().to_owned());
                    queue.push_back(req);
                    seen.max_unanswered = seen.max_unanswered.max(queue.len());
                    continue;
                }
                Ok(None) => return seen,
                Err(_) => {}
            }
            let Some(req) = queue.pop_front() else {
                continue;
            };
            let id = &req["id"];
            let ret = match req["execute"].as_str().unwrap() {
                "guest-sync-delimited" => {
                    let mut v = b"\xff".to_vec();
                    v.extend(
                        json!({"return": req["arguments"]["id"]})
                            .to_string()
                            .bytes(),
                    );
                    v.push(b'\n');
                    if io.write_all(&v).await.is_err() {
                        return seen;
                    }
                    continue;
                }
                "guest-file-open" => json!(1000),
                "guest-file-flush" | "guest-file-close" | "guest-ping" => json!({}),
                "guest-get-time" => {
                    times += 1;
                    json!(times)
                }
                "guest-file-write" => {
                    assert_eq!(req["arguments"]["handle"], 1000);
                    let b64 = req["arguments"]["buf-b64"].as_str().unwrap();
                    let data = qga_proto::Base64::decode(b64).unwrap();
                    writes += 1;
                    seen.write_lens.push(data.len());
                    seen.write_ids.push(id.clone());
                    match act(writes, &req) {
                        Act::Write => {
                            seen.written.extend_from_slice(&data);
                            json!({"count": data.len(), "eof": false})
                        }
                        Act::Reply(bytes) => {
                            if io.write_all(&bytes).await.is_err() {
                                return seen;
                            }
                            continue;
                        }
                        Act::Silent => continue,
                        Act::Close => return seen,
                    }
                }
                other => panic!("unexpected {other}"),
            };
            let reply = format!("{}\n", json!({"return": ret, "id": id}));
            if io.write_all(reply.as_bytes()).await.is_err() {
                return seen;
            }
        }
    })
}

/// `len` bytes that differ from chunk to chunk and within one.
fn data(len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// The client is in step and its calls get their own answers: two guest-get-time
/// calls answer 1 and 2.
async fn still_paired(client: &mut Client<DuplexStream>) {
    assert_eq!(client.get_time().await.unwrap(), 1);
    assert_eq!(client.get_time().await.unwrap(), 2);
}

#[tokio::test(start_paused = true)]
async fn every_byte_arrives_in_order_for_any_size_with_two_writes_in_flight() {
    for (len, chunk) in [
        (0, 1000),
        (1, 1000),
        (999, 1000),
        (1000, 1000),
        (1001, 1000),
        (2000, 1000),
        (37_123, 1000),
        (100, 3),
        (5, 1),
        (70_001, 65_536),
    ] {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let peer = agent(theirs, |_, _| Act::Write);
        let mut client = Client::new(ours);
        let src = data(len);
        // A source handing out at most 7 bytes a read: chunks are still whole.
        let mut reader = tokio::io::BufReader::with_capacity(7, &src[..]);
        let mut progress = Vec::new();
        let mut cb = |done: u64, total: Option<u64>| progress.push((done, total));
        let n = client
            .copy_to_guest(
                &mut reader,
                "/tmp/x",
                chunk,
                Some(len as u64),
                Some(&mut cb),
            )
            .await
            .unwrap();
        assert_eq!(n, len as u64, "{len} in {chunk}");
        still_paired(&mut client).await;
        drop(client);
        let seen = peer.await.unwrap();
        assert!(seen.written == src, "{len} in {chunk}: other bytes written");
        let chunks = len.div_ceil(chunk);
        let want_lens: Vec<usize> = src.chunks(chunk).map(<[u8]>::len).collect();
        assert_eq!(seen.write_lens, want_lens, "{len} in {chunk}");
        let want_progress: Vec<_> = (1..=chunks)
            .map(|i| (((i * chunk).min(len)) as u64, Some(len as u64)))
            .collect();
        assert_eq!(progress, want_progress, "{len} in {chunk}");
        // Every write has its own id.
        let mut ids = seen.write_ids.clone();
        ids.sort_by_key(|v| v.as_u64().unwrap());
        ids.dedup();
        assert_eq!(ids.len(), chunks);
        // Two writes on the wire as soon as there are two, never three.
        assert_eq!(seen.max_unanswered, chunks.clamp(1, 2), "{len} in {chunk}");
        // One sync at the start, no other: every answer came in step.
        let mut want = vec!["guest-sync-delimited", "guest-file-open"];
        want.extend(std::iter::repeat_n("guest-file-write", chunks));
        want.extend([
            "guest-file-flush",
            "guest-file-close",
            "guest-get-time",
            "guest-get-time",
        ]);
        assert_eq!(seen.names, want, "{len} in {chunk}");
    }
}

/// Copies 5 chunks of 1000 bytes and 1 of 500 with `act` on the agent's side;
/// returns the error, the client (for more calls) and the agent. The copy must
/// end within the write timeout (60 s) plus one quick call's.
async fn failing_copy(
    act: impl FnMut(usize, &Value) -> Act + Send + 'static,
) -> (
    ClientError,
    Client<DuplexStream>,
    tokio::task::JoinHandle<Seen>,
) {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let peer = agent(theirs, act);
    let mut client = Client::new(ours);
    let src = data(5500);
    let t = tokio::time::Instant::now();
    let err = tokio::time::timeout(
        Duration::from_secs(600),
        client.copy_to_guest(&mut &src[..], "/tmp/x", 1000, None, None),
    )
    .await
    .expect("the copy hung")
    .unwrap_err();
    assert!(t.elapsed() <= Timeouts::default().file + Timeouts::default().quick * 3);
    (err, client, peer)
}

#[tokio::test(start_paused = true)]
async fn an_error_reply_to_any_chunk_fails_the_copy_and_the_connection_stays_paired() {
    let src = data(5500);
    for k in 1..=6usize {
        let (err, mut client, peer) = failing_copy(move |n, req| {
            if n == k {
                Act::Reply(error(req, "disk full"))
            } else {
                Act::Write
            }
        })
        .await;
        assert_eq!(
            err.agent_error().map(|e| e.desc.as_str()),
            Some("disk full"),
            "chunk {k}: {err:?}"
        );
        still_paired(&mut client).await;
        drop(client);
        let seen = peer.await.unwrap();
        // The chunks before the failing one, then the one after it, which was on
        // its way (as the docs say).
        let mut want = src[..(k - 1) * 1000].to_vec();
        want.extend_from_slice(&src[(k * 1000).min(5500)..((k + 1) * 1000).min(5500)]);
        assert!(seen.written == want, "chunk {k}: other bytes written");
        // The write after the failing one was answered before the close went
        // out: no resync was needed, and nothing more was written or flushed.
        let writes = (k + 1).min(6);
        let mut names = vec!["guest-sync-delimited", "guest-file-open"];
        names.extend(std::iter::repeat_n("guest-file-write", writes));
        names.extend(["guest-file-close", "guest-get-time", "guest-get-time"]);
        assert_eq!(seen.names, names, "chunk {k}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_short_write_fails_the_copy_and_the_connection_stays_paired() {
    let (err, mut client, peer) = failing_copy(|n, req| {
        if n == 2 {
            Act::Reply(
                format!(
                    "{}\n",
                    json!({"return": {"count": 10, "eof": false}, "id": req["id"]})
                )
                .into_bytes(),
            )
        } else {
            Act::Write
        }
    })
    .await;
    assert!(
        matches!(&err, ClientError::Protocol(m) if m == "short write: 10 of 1000 bytes"),
        "{err:?}"
    );
    still_paired(&mut client).await;
    drop(client);
    let seen = peer.await.unwrap();
    assert_eq!(
        seen.names
            .iter()
            .filter(|n| *n == "guest-sync-delimited")
            .count(),
        1
    );
    assert_eq!(seen.write_lens.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn an_error_without_an_id_fails_the_copy_and_the_next_call_resyncs() {
    // What qemu-ga answers to a request it could not parse: the stream is in
    // doubt (the rest of the request may answer more such errors), so the write
    // on the wire is not waited for; a resync skips its answer.
    let (err, mut client, peer) = failing_copy(|n, _| {
        if n == 3 {
            Act::Reply(
                b"{\"error\":{\"class\":\"GenericError\",\"desc\":\"Invalid JSON syntax\"}}\n"
                    .to_vec(),
            )
        } else {
            Act::Write
        }
    })
    .await;
    assert_eq!(
        err.agent_error().map(|e| e.desc.as_str()),
        Some("Invalid JSON syntax")
    );
    still_paired(&mut client).await;
    drop(client);
    let seen = peer.await.unwrap();
    assert_eq!(
        seen.names,
        [
            "guest-sync-delimited",
            "guest-file-open",
            "guest-file-write",
            "guest-file-write",
            "guest-file-write",
            "guest-file-write",
            "guest-sync-delimited",
            "guest-file-close",
            "guest-get-time",
            "guest-get-time"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn an_unanswered_write_after_an_error_is_given_up_at_its_deadline() {
    // The error on chunk 2 comes back, the answer to chunk 3 never does: the copy
    // still fails with the agent's error (not a timeout), once chunk 3's deadline
    // has passed, and the next call resyncs.
    let (err, mut client, peer) = failing_copy(|n, req| match n {
        2 => Act::Reply(error(req, "disk full")),
        3 => Act::Silent,
        _ => Act::Write,
    })
    .await;
    assert_eq!(
        err.agent_error().map(|e| e.desc.as_str()),
        Some("disk full")
    );
    still_paired(&mut client).await;
    drop(client);
    let seen = peer.await.unwrap();
    assert_eq!(
        seen.names,
        [
            "guest-sync-delimited",
            "guest-file-open",
            "guest-file-write",
            "guest-file-write",
            "guest-file-write",
            "guest-sync-delimited",
            "guest-file-close",
            "guest-get-time",
            "guest-get-time"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_silent_agent_times_the_copy_out_and_a_vanished_one_closes_it() {
    let (err, _, _) = failing_copy(|n, _| if n == 4 { Act::Silent } else { Act::Write }).await;
    assert!(matches!(err, ClientError::Timeout), "{err:?}");
    let (err, _, _) = failing_copy(|n, _| if n == 4 { Act::Close } else { Act::Write }).await;
    assert!(err.is_unreachable(), "{err:?}");
}

#[tokio::test]
async fn connect_unix_widens_the_send_buffer_as_far_as_the_kernel_allows() {
    // With two 1 MiB writes in flight (about 2.8 MB of base64), the default 208 KiB
    // send buffer would make the agent take each request in pieces.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qga.sock");
    let _listener = tokio::net::UnixListener::bind(&path).unwrap();
    let client = qga_client::connect_unix(&path).await.unwrap();
    let got =
        nix::sys::socket::getsockopt(client.get_ref(), nix::sys::socket::sockopt::SndBuf).unwrap();
    let Some(max) = std::fs::read_to_string("/proc/sys/net/core/wmem_max")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
    else {
        return;
    };
    // The kernel caps the request at wmem_max and reports twice what it granted.
    assert!(
        got >= 2 * max.min(4 << 20),
        "send buffer {got}, wmem_max {max}"
    );
}
