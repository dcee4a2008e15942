//! The client against scripted peers, byte for byte: stale data, split replies,
//! wrong ids, silent and vanishing agents, the hybrid vsock handshake. Timeouts run
//! on tokio's paused clock, so they are instant and exact.

mod common;

use std::time::Duration;

use common::next_request;

use bytes::BytesMut;
use qga_client::{hybrid_handshake, Client, ClientError, ExecCommand, ExecExit, Timeouts};
use qga_framing::{Decoder, Frame};
use qga_proto::GuestExecCaptureOutput;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A scripted agent: for each request, `answer` returns the raw bytes to send
/// (possibly nothing), written in pieces of `piece` bytes.
fn agent(
    mut io: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    piece: usize,
    mut answer: impl FnMut(&Value) -> Vec<u8> + Send + 'static,
) -> tokio::task::JoinHandle<Vec<Value>> {
    tokio::spawn(async move {
        let (mut dec, mut buf) = (Decoder::new(), BytesMut::new());
        let mut seen = Vec::new();
        while let Some(req) = next_request(&mut io, &mut dec, &mut buf).await {
            let bytes = answer(&req);
            seen.push(req);
            for chunk in bytes.chunks(piece.max(1)) {
                if io.write_all(chunk).await.is_err() {
                    return seen;
                }
                tokio::task::yield_now().await;
            }
        }
        seen
    })
}

/// The commands a peer saw, in order.
fn names(seen: &[Value]) -> Vec<String> {
    seen.iter()
        .map(|r| r["execute"].as_str().unwrap().to_owned())
        .collect()
}

/// The well-behaved reply to a request.
fn proper(req: &Value) -> Vec<u8> {
    match req["execute"].as_str().unwrap() {
        "guest-sync-delimited" => {
            let mut v = b"\xff".to_vec();
            v.extend(json!({"return": req["arguments"]["id"]}).to_string().bytes());
            v.push(b'\n');
            v
        }
        "guest-sync" => format!("{}\n", json!({"return": req["arguments"]["id"]})).into_bytes(),
        "guest-ping" => format!("{}\n", json!({"return": {}, "id": req["id"]})).into_bytes(),
        "guest-fsfreeze-status" => {
            format!("{}\n", json!({"return": "thawed", "id": req["id"]})).into_bytes()
        }
        other => format!(
            "{}\n",
            json!({"error": {"class": "CommandNotFound", "desc": format!("The command {other} has not been found")}, "id": req["id"]})
        )
        .into_bytes(),
    }
}

#[tokio::test]
async fn stale_data_and_a_stale_reply_before_the_sentinel_are_skipped() {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let mut first = true;
    let peer = agent(theirs, 4096, move |req| {
        let mut v = Vec::new();
        if first {
            first = false;
            // Leftovers from a previous host: half a reply, a whole stale reply
            // with a plausible id, and 7.2's error for our own 0xFF.
            v.extend_from_slice(b"{\"return\": {\"count\": 3, \"buf-b64\": \"AAA");
            v.extend_from_slice(b"\"}}\n{\"return\": 1, \"id\": 1}\n");
            v.extend_from_slice(
                b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '\\uFFFD'\"}}\n",
            );
        }
        v.extend(proper(req));
        v
    });
    let mut client = Client::new(ours);
    assert_eq!(
        client.fsfreeze_status().await.unwrap(),
        qga_proto::FsfreezeStatus::Thawed
    );
    client.ping().await.unwrap();
    drop(client);
    let seen = peer.await.unwrap();
    let names: Vec<&str> = seen
        .iter()
        .map(|r| r["execute"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "guest-sync-delimited",
            "guest-fsfreeze-status",
            "guest-ping"
        ]
    );
}

#[tokio::test]
async fn replies_split_at_every_byte_are_reassembled() {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let peer = agent(theirs, 1, proper);
    let mut client = Client::new(ours);
    for _ in 0..3 {
        client.ping().await.unwrap();
    }
    drop(client);
    assert_eq!(peer.await.unwrap().len(), 4);
}

#[tokio::test]
async fn a_sync_reply_with_the_wrong_id_is_not_accepted() {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let peer = agent(theirs, 4096, |req| {
        let mut v = Vec::new();
        if req["execute"] == "guest-sync-delimited" {
            // A delimited reply for some other sync first, then ours.
            v.extend_from_slice(b"\xff{\"return\": 12345}\n");
        }
        v.extend(proper(req));
        v
    });
    let mut client = Client::new(ours);
    client.ping().await.unwrap();
    drop(client);
    assert_eq!(peer.await.unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_silent_agent_times_out_and_the_next_call_resyncs() {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let mut silent_pings = 1;
    let peer = agent(theirs, 4096, move |req| {
        if req["execute"] == "guest-ping" && silent_pings > 0 {
            silent_pings -= 1;
            return Vec::new();
        }
        proper(req)
    });
    let mut client = Client::new(ours).with_timeouts(Timeouts {
        quick: Duration::from_secs(3),
        ..Default::default()
    });
    let start = tokio::time::Instant::now();
    assert!(matches!(client.ping().await, Err(ClientError::Timeout)));
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    client.ping().await.unwrap();
    drop(client);
    let names = names(&peer.await.unwrap());
    assert_eq!(
        names,
        [
            "guest-sync-delimited",
            "guest-ping",
            "guest-sync-delimited",
            "guest-ping"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_late_reply_after_a_timeout_is_never_handed_out() {
    let (ours, mut theirs) = tokio::io::duplex(1 << 16);
    let mut client = Client::new(ours);
    let peer = tokio::spawn(async move {
        let (mut dec, mut buf) = (Decoder::new(), BytesMut::new());
        // Sync.
        let req = next_request(&mut theirs, &mut dec, &mut buf).await.unwrap();
        theirs.write_all(&proper(&req)).await.unwrap();
        // The first status: answered only after the client gave up.
        let late = next_request(&mut theirs, &mut dec, &mut buf).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        theirs
            .write_all(format!("{}\n", json!({"return": "frozen", "id": late["id"]})).as_bytes())
            .await
            .unwrap();
        // Resync, then the second status, answered properly.
        loop {
            let req = next_request(&mut theirs, &mut dec, &mut buf).await.unwrap();
            theirs.write_all(&proper(&req)).await.unwrap();
            if req["execute"] == "guest-fsfreeze-status" {
                break;
            }
        }
        theirs
    });
    assert!(matches!(
        client
            .execute_with_timeout(&qga_proto::GuestFsfreezeStatus {}, Duration::from_secs(1))
            .await,
        Err(ClientError::Timeout)
    ));
    assert_eq!(
        client.fsfreeze_status().await.unwrap(),
        qga_proto::FsfreezeStatus::Thawed
    );
    drop(peer.await.unwrap());
}

#[tokio::test]
async fn an_agent_that_closes_mid_reply_is_reported_closed() {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let first = true;
    let peer = tokio::spawn(async move {
        let mut io = theirs;
        let (mut dec, mut buf) = (Decoder::new(), BytesMut::new());
        while let Some(req) = next_request(&mut io, &mut dec, &mut buf).await {
            if req["execute"] == "guest-ping" && first {
                io.write_all(b"{\"return\": {}, \"i").await.unwrap();
                return;
            }
            io.write_all(&proper(&req)).await.unwrap();
        }
    });
    let mut client = Client::new(ours);
    assert!(matches!(client.ping().await, Err(ClientError::Closed)));
    peer.await.unwrap();
}

#[tokio::test]
async fn agents_without_the_delimited_sync_fall_back_to_guest_sync() {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let peer = agent(theirs, 4096, |req| {
        if req["execute"] == "guest-sync-delimited" {
            return format!(
                "{}\n",
                json!({"error": {"class": "CommandNotFound", "desc": "The command guest-sync-delimited has not been found"}})
            )
            .into_bytes();
        }
        let mut v = Vec::new();
        if req["execute"] == "guest-sync" {
            // A stale plain sync reply first.
            v.extend_from_slice(b"{\"return\": 77}\n");
        }
        v.extend(proper(req));
        v
    });
    let mut client = Client::new(ours);
    client.ping().await.unwrap();
    drop(client);
    let names = names(&peer.await.unwrap());
    assert_eq!(names, ["guest-sync-delimited", "guest-sync", "guest-ping"]);
}

#[tokio::test]
async fn agent_errors_carry_class_and_desc() {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let _peer = agent(theirs, 4096, proper);
    let mut client = Client::new(ours);
    let err = client.execute_raw("guest-bogus", None).await.unwrap_err();
    assert!(err.is_command_not_found());
    assert!(!err.is_unreachable());
    assert_eq!(
        err.agent_error().unwrap().desc,
        "The command guest-bogus has not been found"
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_a_call_leaves_the_client_usable() {
    let (ours, mut theirs) = tokio::io::duplex(1 << 16);
    let peer = tokio::spawn(async move {
        let (mut dec, mut buf) = (Decoder::new(), BytesMut::new());
        let mut seen = Vec::new();
        let mut pings = 0;
        while let Some(req) = next_request(&mut theirs, &mut dec, &mut buf).await {
            if req["execute"] == "guest-ping" {
                pings += 1;
                if pings == 2 {
                    // Answer the second ping late: its caller is gone by then.
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
            let _ = theirs.write_all(&proper(&req)).await;
            seen.push(req);
        }
        seen
    });
    let mut client = Client::new(ours);
    client.ping().await.unwrap();
    {
        // Start a call and drop it before it can finish.
        let fut = client.ping();
        assert!(tokio::time::timeout(Duration::from_secs(1), fut)
            .await
            .is_err());
    }
    client.ping().await.unwrap();
    drop(client);
    let names = names(&peer.await.unwrap());
    // The dropped call left the stream in doubt: a resync precedes the next ping.
    assert_eq!(names.last().unwrap(), "guest-ping");
    assert_eq!(names[names.len() - 2], "guest-sync-delimited");
}

#[tokio::test(start_paused = true)]
async fn commands_without_a_reply_return_after_the_grace_period() {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let peer = agent(theirs, 4096, |req| {
        if req["execute"] == "guest-suspend-disk" {
            return format!(
                "{}\n",
                json!({"error": {"class": "GenericError", "desc": "the requested suspend mode is not supported by the guest"}, "id": req["id"]})
            )
            .into_bytes();
        }
        if req["execute"] == "guest-shutdown" {
            return Vec::new();
        }
        proper(req)
    });
    let mut client = Client::new(ours);
    client.shutdown(Some("reboot")).await.unwrap();
    let err = client.suspend_disk().await.unwrap_err();
    assert_eq!(
        err.agent_error().unwrap().desc,
        "the requested suspend mode is not supported by the guest"
    );
    drop(client);
    let seen = peer.await.unwrap();
    let shutdown = seen
        .iter()
        .find(|r| r["execute"] == "guest-shutdown")
        .unwrap();
    assert_eq!(shutdown["arguments"], json!({"mode": "reboot"}));
}

#[tokio::test]
async fn hybrid_vsock_handshake_accepts_ok_and_reports_refusal() {
    let (ours, mut vmm) = tokio::io::duplex(1024);
    let server = tokio::spawn(async move {
        let mut buf = vec![0u8; 64];
        let n = vmm.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"CONNECT 1234\n");
        // The OK line and the first QGA bytes arrive together.
        vmm.write_all(b"OK 1073741824\n{\"return\"").await.unwrap();
        vmm
    });
    let mut s = hybrid_handshake(ours, 1234, Duration::from_secs(5))
        .await
        .unwrap();
    let _vmm = server.await.unwrap();
    let mut rest = [0u8; 9];
    s.read_exact(&mut rest).await.unwrap();
    assert_eq!(
        &rest, b"{\"return\"",
        "no QGA byte consumed by the handshake"
    );

    let (ours, mut vmm) = tokio::io::duplex(1024);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64];
        let _ = vmm.read(&mut buf).await;
        drop(vmm);
    });
    let err = hybrid_handshake(ours, 9, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("CONNECT 9 refused"), "{err}");

    let (ours, mut vmm) = tokio::io::duplex(1024);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64];
        let _ = vmm.read(&mut buf).await;
        vmm.write_all(b"ERROR no listener\n").await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    let err = hybrid_handshake(ours, 9, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ERROR no listener"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_request_dropped_mid_write_is_never_sent_later() {
    // A 1 KiB pipe: a 100 KB request stalls after its first KiB.
    let (ours, mut theirs) = tokio::io::duplex(1024);
    let peer = tokio::spawn(async move {
        let (mut dec, mut buf) = (Decoder::new(), BytesMut::new());
        let req = next_request(&mut theirs, &mut dec, &mut buf).await.unwrap();
        theirs.write_all(&proper(&req)).await.unwrap();
        // Read nothing while the client's write is stuck and its caller gives up.
        tokio::time::sleep(Duration::from_secs(5)).await;
        // From here on, keep every byte the client sends, and answer it.
        let mut raw = buf.to_vec();
        loop {
            while let Some(f) = dec.decode(&mut buf) {
                if let Frame::Message(m) = f {
                    let Ok(req) = serde_json::from_slice::<Value>(&m) else {
                        continue;
                    };
                    theirs.write_all(&proper(&req)).await.unwrap();
                    if req["execute"] == "guest-ping" {
                        return raw;
                    }
                }
            }
            let mut tmp = [0u8; 4096];
            let n = theirs.read(&mut tmp).await.unwrap();
            assert_ne!(n, 0, "client went away");
            raw.extend_from_slice(&tmp[..n]);
            buf.extend_from_slice(&tmp[..n]);
        }
    });
    let mut client = Client::new(ours);
    assert!(
        tokio::time::timeout(
            Duration::from_secs(1),
            client.file_write(1000, vec![0; 100_000])
        )
        .await
        .is_err(),
        "the write should still be stuck when its caller gives up"
    );
    client.ping().await.unwrap();
    drop(client);
    let raw = peer.await.unwrap();
    let raw = raw.trim_ascii_start();
    // What the agent got: the head of the abandoned write (what fit in the pipe),
    // then at once the 0xFF that makes it drop that partial request, and the resync.
    let ff = raw.iter().position(|&b| b == 0xFF).unwrap();
    assert!(ff <= 1024, "{ff} bytes before the 0xFF");
    assert!(raw.starts_with(b"{\"execute\":\"guest-file-write\""));
    let count = |needle: &[u8]| raw.windows(needle.len()).filter(|w| *w == needle).count();
    assert_eq!(
        count(b"guest-file-write"),
        1,
        "the abandoned write was sent again"
    );
    assert_eq!(count(b"guest-sync-delimited"), 1);
    assert_eq!(count(b"guest-ping"), 1);
    assert!(raw.len() < 2048, "{} bytes sent after the drop", raw.len());
}

/// guest-file-read's reply for `count` zero bytes, built by hand (as qemu-ga does).
fn zeros_read_reply(count: usize, id: &Value) -> Vec<u8> {
    let b64_len = count.div_ceil(3) * 4;
    let mut v = format!("{{\"return\": {{\"count\": {count}, \"buf-b64\": \"").into_bytes();
    v.reserve(b64_len + 64);
    v.resize(v.len() + b64_len, b'A');
    v.extend_from_slice(format!("\", \"eof\": true}}, \"id\": {id}}}\n").as_bytes());
    v
}

#[tokio::test]
async fn a_read_of_the_largest_count_is_accepted() {
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let peer = agent(theirs, 1 << 20, |req| {
        if req["execute"] == "guest-file-read" {
            let count = req["arguments"]["count"].as_u64().unwrap() as usize;
            let reply = zeros_read_reply(count, &req["id"]);
            // 64 MiB of base64 plus the envelope: over 64 MiB, yet legitimate.
            assert!(reply.len() > 64 * 1024 * 1024);
            return reply;
        }
        proper(req)
    });
    let mut client = Client::new(ours);
    let r = client
        .file_read(1000, Some(qga_client::MAX_CHUNK as i64))
        .await
        .unwrap();
    assert_eq!(r.count, qga_client::MAX_CHUNK as i64);
    assert_eq!(r.buf_b64.0.len(), qga_client::MAX_CHUNK);
    assert!(r.eof);
    // The client is still in step with the agent.
    client.ping().await.unwrap();
    drop(client);
    assert_eq!(
        names(&peer.await.unwrap()),
        ["guest-sync-delimited", "guest-file-read", "guest-ping"]
    );
}

#[tokio::test(start_paused = true)]
async fn an_error_without_an_id_after_a_clean_sync_is_the_agents_answer() {
    // qemu-ga answers a request it cannot parse (here: a string it finds invalid)
    // with an error that has no id, possibly followed by more errors for the rest.
    let desc = "JSON parse error, invalid UTF-8 sequence in string";
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let mut first = true;
    let peer = agent(theirs, 4096, move |req| {
        if req["execute"] == "guest-file-open" && first {
            first = false;
            let e = json!({"error": {"class": "GenericError", "desc": desc}});
            return format!("{e}\n{e}\n").into_bytes();
        }
        proper(req)
    });
    let mut client = Client::new(ours);
    client.ping().await.unwrap();
    let start = tokio::time::Instant::now();
    let err = client.file_open("/tmp/\u{fffe}", None).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::ZERO, "answered, not timed out");
    let agent = err.agent_error().expect("the agent's error");
    assert_eq!(agent.desc, desc);
    assert!(!err.is_unreachable());
    // The second error of the storm is not taken for the next call's answer: the
    // next call resyncs first.
    client.ping().await.unwrap();
    drop(client);
    assert_eq!(
        names(&peer.await.unwrap()),
        [
            "guest-sync-delimited",
            "guest-ping",
            "guest-file-open",
            "guest-sync-delimited",
            "guest-ping"
        ]
    );
}

/// Checks that a reply the decoder rejects (`bad`) fails the call at once as a
/// protocol error, and that the next call resyncs and succeeds.
async fn rejected_reply_is_a_protocol_error(bad: fn(&Value) -> Vec<u8>) {
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let mut first = true;
    let peer = agent(theirs, 1 << 20, move |req| {
        if req["execute"] == "guest-ping" && first {
            first = false;
            return bad(req);
        }
        proper(req)
    });
    let mut client = Client::new(ours);
    let start = tokio::time::Instant::now();
    let err = client.ping().await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::ZERO, "answered, not timed out");
    assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");
    client.ping().await.unwrap();
    drop(client);
    assert_eq!(
        names(&peer.await.unwrap()),
        [
            "guest-sync-delimited",
            "guest-ping",
            "guest-sync-delimited",
            "guest-ping"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_reply_nested_too_deep_is_a_protocol_error() {
    rejected_reply_is_a_protocol_error(|req| {
        let depth = 2000;
        format!(
            "{{\"return\": {}{}, \"id\": {}}}\n",
            "[".repeat(depth),
            "]".repeat(depth),
            req["id"]
        )
        .into_bytes()
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_reply_over_the_size_limit_is_a_protocol_error() {
    rejected_reply_is_a_protocol_error(|req| {
        let mut v = b"{\"return\": {}, \"pad\": \"".to_vec();
        v.resize(v.len() + 66 * 1024 * 1024, b'x');
        v.extend_from_slice(format!("\", \"id\": {}}}\n", req["id"]).as_bytes());
        v
    })
    .await;
}

#[tokio::test]
async fn write_file_keeps_every_request_within_the_agents_limit() {
    let (ours, mut theirs) = tokio::io::duplex(1 << 20);
    let peer = tokio::spawn(async move {
        // qemu-ga's limit: at most 64 MiB - 1 bytes of token text per message
        // (compact JSON has no whitespace, so that is the message's length).
        let mut dec = Decoder::with_limits(qga_framing::Limits {
            max_message: 64 * 1024 * 1024 - 1,
            ..Default::default()
        });
        let mut buf = BytesMut::new();
        let (mut written, mut writes) = (Vec::new(), 0);
        loop {
            let m = loop {
                match dec.decode(&mut buf) {
                    Some(Frame::Message(m)) => break m,
                    Some(Frame::Oversized(e)) => panic!("the agent would refuse this: {e}"),
                    Some(_) => continue,
                    None => {}
                }
                let n = theirs.read_buf(&mut buf).await.unwrap();
                if n == 0 {
                    return (written, writes);
                }
            };
            let req: Value = serde_json::from_slice(&m).unwrap();
            let ret = match req["execute"].as_str().unwrap() {
                "guest-file-open" => json!(1000),
                "guest-file-write" => {
                    let b64 = req["arguments"]["buf-b64"].as_str().unwrap();
                    let data = qga_proto::Base64::decode(b64).unwrap();
                    writes += 1;
                    written.extend_from_slice(&data);
                    json!({"count": data.len(), "eof": false})
                }
                "guest-file-flush" | "guest-file-close" => json!({}),
                _ => {
                    theirs.write_all(&proper(&req)).await.unwrap();
                    continue;
                }
            };
            let reply = format!("{}\n", json!({"return": ret, "id": req["id"]}));
            theirs.write_all(reply.as_bytes()).await.unwrap();
        }
    });
    let data: Vec<u8> = (0..qga_client::MAX_CHUNK + 1)
        .map(|i| (i % 251) as u8)
        .collect();
    let mut client = Client::new(ours);
    let mut seen = Vec::new();
    let mut progress = |done: u64, total: Option<u64>| seen.push((done, total));
    client
        .write_file("/tmp/big", &data, usize::MAX, Some(&mut progress))
        .await
        .unwrap();
    drop(client);
    let (written, writes) = peer.await.unwrap();
    assert_eq!(writes, 2, "48 MiB + 1 byte takes two requests");
    assert!(written == data, "the agent got other bytes");
    let total = Some(data.len() as u64);
    assert_eq!(seen.last(), Some(&(data.len() as u64, total)));
}

#[tokio::test]
async fn connection_errors_name_what_could_not_be_reached() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.sock");
    let err = qga_client::connect_unix(&missing).await.unwrap_err();
    assert!(err.is_unreachable());
    let text = err.to_string();
    assert!(
        text.contains(&format!("unix socket {}", missing.display())),
        "{text}"
    );
    assert!(text.contains("No such file or directory"), "{text}");

    // A hybrid vsock socket whose VMM refuses the port: both are named.
    let sock = dir.path().join("vm.vsock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    tokio::spawn(async move {
        let (mut vmm, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 64];
        let _ = vmm.read(&mut buf).await;
        vmm.write_all(b"ERROR no listener\n").await.unwrap();
    });
    let err = qga_client::connect_hybrid_vsock(&sock, 1234)
        .await
        .unwrap_err();
    assert!(err.is_unreachable());
    let text = err.to_string();
    assert!(
        text.contains(&format!("hybrid vsock {} port 1234", sock.display()))
            && text.contains("ERROR no listener"),
        "{text}"
    );
}

/// The typed methods for the modern commands: each sends its command with the
/// right arguments and decodes the agent's reply.
#[tokio::test]
async fn modern_commands_send_their_arguments_and_decode_their_replies() {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let peer = agent(theirs, 4096, |req| {
        let ret = match req["execute"].as_str().unwrap() {
            "guest-get-time" => json!(1_796_106_334_095_443_000i64),
            "guest-get-host-name" => json!({"host-name": "vm42"}),
            "guest-get-timezone" => json!({"zone": "CET", "offset": 3600}),
            "guest-get-osinfo" => json!({"id": "debian", "machine": "x86_64"}),
            "guest-get-users" => json!([{"user": "root", "login-time": 1.5}]),
            "guest-get-load" => json!({"load1m": 0.5, "load5m": 0.25, "load15m": 0.125}),
            "guest-get-vcpus" => json!([{"logical-id": 1, "online": false, "can-offline": true}]),
            "guest-set-vcpus" => json!(1),
            "guest-get-memory-blocks" => json!([{"phys-index": 7, "online": true}]),
            "guest-get-memory-block-info" => json!({"size": 134_217_728}),
            "guest-get-cpustats" => {
                json!([{"type": "linux", "cpu": 0, "user": 1, "nice": 2, "system": 3, "idle": 4}])
            }
            "guest-get-fsinfo" => json!([{"name": "vda1", "mountpoint": "/", "type": "ext4",
                "disk": [], "used-bytes": 10, "total-bytes": 20}]),
            "guest-get-disks" => json!([{"name": "/dev/vda", "partition": false}]),
            "guest-get-diskstats" => {
                json!([{"name": "vda", "major": 254, "minor": 0, "stats": {"read-ios": 9}}])
            }
            "guest-network-get-route" => json!([{"iface": "eth0", "destination": "0.0.0.0",
                "metric": 100, "version": 4}]),
            "guest-exec" => json!({"pid": 4242}),
            "guest-exec-status" => json!({"exited": true, "exitcode": 0, "out-data": "aGk="}),
            "guest-ssh-get-authorized-keys" => json!({"keys": ["ssh-ed25519 AAAA a@b"]}),
            "guest-set-time"
            | "guest-set-user-password"
            | "guest-ssh-add-authorized-keys"
            | "guest-ssh-remove-authorized-keys" => json!({}),
            _ => return proper(req),
        };
        format!("{}\n", json!({"return": ret, "id": req["id"]})).into_bytes()
    });
    use qga_proto::{GuestCpuStats, GuestLogicalProcessor};
    let mut c = Client::new(ours);
    assert_eq!(c.get_time().await.unwrap(), 1_796_106_334_095_443_000);
    c.set_time(Some(5)).await.unwrap();
    assert_eq!(c.get_host_name().await.unwrap(), "vm42");
    let tz = c.get_timezone().await.unwrap();
    assert_eq!((tz.zone.as_deref(), tz.offset), (Some("CET"), 3600));
    let os = c.get_osinfo().await.unwrap();
    assert_eq!(os.id.as_deref(), Some("debian"));
    assert_eq!(os.pretty_name, None);
    assert_eq!(c.get_users().await.unwrap()[0].login_time, 1.5);
    assert_eq!(c.get_load().await.unwrap().load15m, 0.125);
    let cpus = c.get_vcpus().await.unwrap();
    assert_eq!((cpus[0].logical_id, cpus[0].online), (1, false));
    let online = GuestLogicalProcessor {
        logical_id: 1,
        online: true,
        can_offline: None,
    };
    assert_eq!(c.set_vcpus(vec![online]).await.unwrap(), 1);
    assert_eq!(c.get_memory_blocks().await.unwrap()[0].phys_index, 7);
    assert_eq!(c.get_memory_block_info().await.unwrap().size, 134_217_728);
    let GuestCpuStats::Linux(cpu0) = c.get_cpustats().await.unwrap()[0];
    assert_eq!((cpu0.user, cpu0.idle, cpu0.iowait), (1, 4, None));
    assert_eq!(c.get_fsinfo().await.unwrap()[0].total_bytes, Some(20));
    assert!(!c.get_disks().await.unwrap()[0].partition);
    assert_eq!(c.get_diskstats().await.unwrap()[0].stats.read_ios, Some(9));
    assert_eq!(c.get_routes().await.unwrap()[0].metric, 100);
    let exec = qga_proto::GuestExec {
        path: "/bin/echo".into(),
        arg: Some(vec!["hi".into()]),
        ..Default::default()
    };
    assert_eq!(c.exec(&exec).await.unwrap().pid, 4242);
    let status = c.exec_status(4242).await.unwrap();
    assert_eq!(
        (status.exited, status.out_data.as_deref()),
        (true, Some("aGk="))
    );
    c.set_user_password("alice", b"secret", false)
        .await
        .unwrap();
    assert_eq!(
        c.ssh_get_authorized_keys("alice").await.unwrap(),
        ["ssh-ed25519 AAAA a@b"]
    );
    c.ssh_add_authorized_keys("alice", vec!["k1".into()], true)
        .await
        .unwrap();
    c.ssh_remove_authorized_keys("alice", vec!["k1".into()])
        .await
        .unwrap();
    drop(c);
    let seen = peer.await.unwrap();
    let args = |name: &str| {
        seen.iter()
            .find(|r| r["execute"] == name)
            .map(|r| r.get("arguments").cloned())
            .unwrap_or_else(|| panic!("{name} not sent"))
    };
    // Commands without arguments send none.
    assert_eq!(args("guest-get-osinfo"), None);
    assert_eq!(args("guest-set-time"), Some(json!({"time": 5})));
    assert_eq!(
        args("guest-set-vcpus"),
        Some(json!({"vcpus": [{"logical-id": 1, "online": true}]}))
    );
    assert_eq!(
        args("guest-exec"),
        Some(json!({"path": "/bin/echo", "arg": ["hi"]}))
    );
    assert_eq!(args("guest-exec-status"), Some(json!({"pid": 4242})));
    assert_eq!(
        args("guest-set-user-password"),
        Some(json!({"username": "alice", "password": "c2VjcmV0", "crypted": false}))
    );
    assert_eq!(
        args("guest-ssh-add-authorized-keys"),
        Some(json!({"username": "alice", "keys": ["k1"], "reset": true}))
    );
    assert_eq!(
        args("guest-ssh-remove-authorized-keys"),
        Some(json!({"username": "alice", "keys": ["k1"]}))
    );
}

/// A reply carrying `ret` for `req`.
fn returning(req: &Value, ret: Value) -> Vec<u8> {
    format!("{}\n", json!({"return": ret, "id": req["id"]})).into_bytes()
}

/// An agent running one program as pid 4242: guest-exec-status says it is running
/// `running` times, then answers `end` (which says it has exited).
fn exec_agent(
    io: tokio::io::DuplexStream,
    mut running: usize,
    end: Value,
) -> tokio::task::JoinHandle<Vec<Value>> {
    agent(io, 4096, move |req| {
        match req["execute"].as_str().unwrap() {
            "guest-exec" => returning(req, json!({"pid": 4242})),
            "guest-exec-status" => {
                assert_eq!(req["arguments"], json!({"pid": 4242}));
                if running > 0 {
                    running -= 1;
                    returning(req, json!({"exited": false}))
                } else {
                    returning(req, end.clone())
                }
            }
            _ => proper(req),
        }
    })
}

#[tokio::test(start_paused = true)]
async fn exec_wait_polls_with_backoff_until_the_program_ends() {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let end = json!({"exited": true, "exitcode": 3, "out-data": "aGVsbG8K",
                     "err-data": "AP8=", "err-truncated": true, "x-future": 1});
    let peer = exec_agent(theirs, 4, end.clone());
    let mut client = Client::new(ours);
    let cmd = ExecCommand {
        path: "/bin/sh".into(),
        args: vec!["-c".into(), "cat; exit 3".into()],
        env: Some(vec!["LANG=C".into()]),
        input: Some(b"in\xffput".to_vec()),
        capture: Some(GuestExecCaptureOutput::Flag(true)),
    };
    let start = tokio::time::Instant::now();
    let out = client
        .exec_wait(&cmd, Duration::from_secs(60))
        .await
        .unwrap();
    // Four "still running" answers: pauses of 10, 20, 40 and 80 ms.
    assert_eq!(start.elapsed(), Duration::from_millis(150));
    assert_eq!(out.pid, 4242);
    assert_eq!(out.exit, ExecExit::Code(3));
    assert_eq!(out.stdout, b"hello\n");
    assert_eq!(out.stderr, [0x00, 0xff]);
    assert!(!out.stdout_truncated && out.stderr_truncated);
    assert_eq!(out.raw, end, "the raw return, unknown members included");
    drop(client);
    let seen = peer.await.unwrap();
    assert_eq!(
        names(&seen),
        ["guest-sync-delimited", "guest-exec"]
            .into_iter()
            .chain(["guest-exec-status"; 5])
            .collect::<Vec<_>>()
    );
    assert_eq!(
        seen[1]["arguments"],
        json!({"path": "/bin/sh", "arg": ["-c", "cat; exit 3"], "env": ["LANG=C"],
               "input-data": "aW7/cHV0", "capture-output": true})
    );
}

#[tokio::test(start_paused = true)]
async fn exec_wait_backoff_is_capped_at_500_ms() {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let peer = exec_agent(theirs, 9, json!({"exited": true, "exitcode": 0}));
    let mut client = Client::new(ours);
    let start = tokio::time::Instant::now();
    let out = client
        .exec_wait(&ExecCommand::new("true"), Duration::from_secs(60))
        .await
        .unwrap();
    // 10 + 20 + 40 + 80 + 160 + 320, then 500 three times.
    assert_eq!(start.elapsed(), Duration::from_millis(630 + 1500));
    assert_eq!(out.exit, ExecExit::Code(0));
    assert!(out.stdout.is_empty() && out.stderr.is_empty());
    drop(client);
    let seen = peer.await.unwrap();
    // Nothing optional is sent that was not asked for.
    assert_eq!(seen[1]["arguments"], json!({"path": "true"}));
}

#[tokio::test(start_paused = true)]
async fn exec_wait_reports_a_signal() {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let _peer = exec_agent(theirs, 1, json!({"exited": true, "signal": 9}));
    let mut client = Client::new(ours);
    let out = client
        .exec_wait(&ExecCommand::new("sleep"), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(out.exit, ExecExit::Signal(9));
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let _peer = exec_agent(theirs, 0, json!({"exited": true}));
    let mut client = Client::new(ours);
    let out = client
        .exec_wait(&ExecCommand::new("x"), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(out.exit, ExecExit::Unknown);
}

#[tokio::test(start_paused = true)]
async fn exec_wait_times_out_with_the_pid_and_the_caller_can_keep_polling() {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    // Running for the first 9 polls, then ended.
    let peer = exec_agent(theirs, 9, json!({"exited": true, "exitcode": 0}));
    let mut client = Client::new(ours);
    let start = tokio::time::Instant::now();
    let err = client
        .exec_wait(&ExecCommand::new("sleep"), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::ExecTimeout { pid: 4242 }),
        "{err:?}"
    );
    assert!(err.to_string().contains("4242"), "{err}");
    // Polls at 0, 10, 30, 70, 150, 310, 630 ms and one at the deadline.
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    // The client is in step: the caller polls on with the pid.
    assert!(!client.exec_status(4242).await.unwrap().exited);
    assert!(client.exec_status(4242).await.unwrap().exited);
    drop(client);
    let seen = names(&peer.await.unwrap());
    assert_eq!(
        seen.iter().filter(|n| *n == "guest-exec-status").count(),
        10
    );
    assert_eq!(
        seen.iter().filter(|n| *n == "guest-sync-delimited").count(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn a_poll_that_times_out_still_hands_back_the_pid() {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let _peer = agent(theirs, 4096, |req| match req["execute"].as_str().unwrap() {
        "guest-exec" => returning(req, json!({"pid": 7})),
        // The agent stops answering.
        "guest-exec-status" => Vec::new(),
        _ => proper(req),
    });
    let mut client = Client::new(ours).with_timeouts(Timeouts {
        quick: Duration::from_secs(2),
        ..Default::default()
    });
    let start = tokio::time::Instant::now();
    let err = client
        .exec_wait(&ExecCommand::new("x"), Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::ExecTimeout { pid: 7 }),
        "{err:?}"
    );
    assert_eq!(start.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn exec_wait_refuses_bad_base64_and_passes_agent_errors_on() {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let _peer = exec_agent(
        theirs,
        0,
        json!({"exited": true, "exitcode": 0, "out-data": "a*b="}),
    );
    let mut client = Client::new(ours);
    let err = client
        .exec_wait(&ExecCommand::new("x"), Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Protocol(m) if m.contains("out-data")),
        "{err:?}"
    );

    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let _peer = agent(theirs, 4096, |req| {
        if req["execute"] == "guest-exec" {
            return format!(
                "{}\n",
                json!({"error": {"class": "GenericError",
                    "desc": "Guest agent command failed, error was 'Failed to execute child process “nope” (No such file or directory)'"},
                    "id": req["id"]})
            )
            .into_bytes();
        }
        proper(req)
    });
    let mut client = Client::new(ours);
    let err = client
        .exec_wait(&ExecCommand::new("nope"), Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(err.agent_error().unwrap().desc.contains("nope"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn dropping_exec_wait_mid_poll_leaves_the_client_usable() {
    let (ours, mut theirs) = tokio::io::duplex(1 << 16);
    let peer = tokio::spawn(async move {
        let (mut dec, mut buf) = (Decoder::new(), BytesMut::new());
        let mut seen = Vec::new();
        let mut polls = 0;
        while let Some(req) = next_request(&mut theirs, &mut dec, &mut buf).await {
            let reply = match req["execute"].as_str().unwrap() {
                "guest-exec" => returning(&req, json!({"pid": 5})),
                "guest-exec-status" => {
                    polls += 1;
                    if polls == 3 {
                        // The third poll is answered late: its caller is gone.
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                    returning(&req, json!({"exited": false}))
                }
                _ => proper(&req),
            };
            let _ = theirs.write_all(&reply).await;
            seen.push(req);
        }
        seen
    });
    let mut client = Client::new(ours);
    let sleep = ExecCommand::new("sleep");
    {
        let fut = client.exec_wait(&sleep, Duration::from_secs(60));
        assert!(tokio::time::timeout(Duration::from_secs(1), fut)
            .await
            .is_err());
    }
    // The late "exited": false for the dropped poll is not taken for this answer.
    assert_eq!(
        client
            .get_time()
            .await
            .unwrap_err()
            .agent_error()
            .unwrap()
            .class,
        qga_proto::ErrorClass::CommandNotFound
    );
    client.ping().await.unwrap();
    drop(client);
    let names = names(&peer.await.unwrap());
    assert_eq!(
        names,
        [
            "guest-sync-delimited",
            "guest-exec",
            "guest-exec-status",
            "guest-exec-status",
            "guest-exec-status",
            "guest-sync-delimited",
            "guest-get-time",
            "guest-ping"
        ]
    );
}

/// The bytes of the guest file the copy tests read: 10,000 bytes, no two 1000-byte
/// chunks alike.
fn guest_file() -> Vec<u8> {
    (0..10_000u32).map(|i| (i * 7 + i / 1000) as u8).collect()
}

/// How a file agent answers a read: as ours does (compact, `buf-b64` first), or as
/// qemu-ga 7.2 does (spaced, `count` first).
#[derive(Clone, Copy)]
enum Style {
    Ours,
    Qemu,
}

/// A guest-file-read reply carrying `data`.
fn read_reply(style: Style, data: &[u8], eof: bool, id: &Value) -> Vec<u8> {
    let b64 = base64_simd::STANDARD.encode_to_string(data);
    let n = data.len();
    match style {
        Style::Ours => {
            format!("{{\"return\":{{\"buf-b64\":\"{b64}\",\"count\":{n},\"eof\":{eof}}},\"id\":{id}}}\n")
        }
        Style::Qemu => format!(
            "{{\"return\": {{\"count\": {n}, \"buf-b64\": \"{b64}\", \"eof\": {eof}}}, \"id\": {id}}}\n"
        ),
    }
    .into_bytes()
}

/// A scripted agent with one guest file (handle 1000): reads walk through `file`
/// (eof once a read reaches its end), writes are collected into the returned
/// buffer, everything else is `proper`. `fault` may replace the answer to the n-th
/// read or write (1-based, with the request) by other bytes.
#[allow(clippy::type_complexity)]
fn file_agent(
    io: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    piece: usize,
    style: Style,
    file: Vec<u8>,
    mut fault: impl FnMut(usize, &Value) -> Option<Vec<u8>> + Send + 'static,
) -> (
    tokio::task::JoinHandle<Vec<Value>>,
    std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
) {
    let written = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = written.clone();
    let (mut pos, mut transfers) = (0usize, 0usize);
    let peer = agent(io, piece, move |req| {
        let id = &req["id"];
        let ret = match req["execute"].as_str().unwrap() {
            "guest-file-open" => {
                pos = 0;
                json!(1000)
            }
            "guest-file-read" | "guest-file-write" => {
                transfers += 1;
                if let Some(bytes) = fault(transfers, req) {
                    return bytes;
                }
                if req["execute"] == "guest-file-read" {
                    let count = req["arguments"]["count"].as_u64().unwrap() as usize;
                    let end = (pos + count).min(file.len());
                    let data = file[pos..end].to_vec();
                    pos = end;
                    return read_reply(style, &data, pos == file.len(), id);
                }
                let b64 = req["arguments"]["buf-b64"].as_str().unwrap();
                let data = qga_proto::Base64::decode(b64).unwrap();
                sink.lock().unwrap().extend_from_slice(&data);
                json!({"count": data.len(), "eof": false})
            }
            "guest-file-flush" | "guest-file-close" => json!({}),
            _ => return proper(req),
        };
        format!("{}\n", json!({"return": ret, "id": id})).into_bytes()
    });
    (peer, written)
}

#[tokio::test]
async fn copy_from_guest_copies_every_byte_in_chunks_from_either_agent() {
    for (style, piece) in [(Style::Ours, 4096), (Style::Qemu, 4096), (Style::Ours, 7)] {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let (peer, _) = file_agent(theirs, piece, style, guest_file(), |_, _| None);
        let mut client = Client::new(ours);
        let mut out = Vec::new();
        let mut seen = Vec::new();
        let mut progress = |done: u64, total: Option<u64>| seen.push((done, total));
        let n = client
            .copy_from_guest("/etc/data", &mut out, 3000, Some(&mut progress))
            .await
            .unwrap();
        assert_eq!(n, 10_000);
        assert!(out == guest_file(), "other bytes came out");
        assert_eq!(
            seen,
            [(3000, None), (6000, None), (9000, None), (10_000, None)]
        );
        // Still in step: the next call needs no resync.
        client.ping().await.unwrap();
        drop(client);
        let names = names(&peer.await.unwrap());
        assert_eq!(
            names,
            [
                "guest-sync-delimited",
                "guest-file-open",
                "guest-file-read",
                "guest-file-read",
                "guest-file-read",
                "guest-file-read",
                "guest-file-close",
                "guest-ping"
            ]
        );
    }
}

#[tokio::test]
async fn copy_from_guest_skips_a_stale_reply_and_takes_an_unusual_one() {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let (peer, _) = file_agent(theirs, 4096, Style::Ours, Vec::new(), |n, req| {
        let id = &req["id"];
        Some(match n {
            // A stale reply to another read first, then ours.
            1 => {
                let mut v = read_reply(Style::Ours, b"stale!", false, &json!(12345));
                v.extend(read_reply(Style::Ours, b"first ", false, id));
                v
            }
            // An escaped slash: the framer and the careful path's.
            2 => format!(
                "{{\"return\":{{\"buf-b64\":\"P\\/8=\",\"count\":2,\"eof\":false}},\"id\":{id}}}\n"
            )
            .into_bytes(),
            _ => read_reply(Style::Qemu, b" last", true, id),
        })
    });
    let mut client = Client::new(ours);
    let mut out = Vec::new();
    client
        .copy_from_guest("/x", &mut out, 6, None)
        .await
        .unwrap();
    assert_eq!(out, b"first ?\xff last");
    drop(client);
    assert_eq!(peer.await.unwrap().len(), 6);
}

/// Copies the guest file with `fault` on the agent's side; returns the error, the
/// bytes that came out before it, and the commands the agent saw. The client must
/// still be usable afterwards (checked with a ping).
async fn copy_from_guest_failing(
    fault: impl FnMut(usize, &Value) -> Option<Vec<u8>> + Send + 'static,
) -> (ClientError, Vec<u8>, Vec<String>) {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let (peer, _) = file_agent(theirs, 4096, Style::Ours, guest_file(), fault);
    let mut client = Client::new(ours).with_timeouts(Timeouts {
        file: Duration::from_secs(5),
        ..Default::default()
    });
    let mut out = Vec::new();
    let err = client
        .copy_from_guest("/etc/data", &mut out, 1000, None)
        .await
        .unwrap_err();
    client.ping().await.unwrap();
    drop(client);
    (err, out, names(&peer.await.unwrap()))
}

/// `n` reads (and the read-ahead after them, when `ahead`), then the close.
fn reads_then_close(n: usize, resync: bool) -> Vec<&'static str> {
    let mut v = vec!["guest-sync-delimited", "guest-file-open"];
    v.extend(std::iter::repeat_n("guest-file-read", n));
    if resync {
        v.push("guest-sync-delimited");
    }
    v.extend(["guest-file-close", "guest-ping"]);
    v
}

#[tokio::test]
async fn an_agent_error_in_the_middle_of_copy_from_guest_is_returned_and_the_file_closed() {
    let (err, out, names) = copy_from_guest_failing(|n, req| {
        (n == 3).then(|| {
            format!(
                "{}\n",
                json!({"error": {"class": "GenericError", "desc": "read failed: Input/output error"}, "id": req["id"]})
            )
            .into_bytes()
        })
    })
    .await;
    let agent = err.agent_error().expect("the agent's error");
    assert_eq!(agent.desc, "read failed: Input/output error");
    // What came before the error was copied; nothing after it was asked for.
    assert!(out == guest_file()[..2000]);
    assert_eq!(names, reads_then_close(3, false));
}

#[tokio::test]
async fn a_malformed_read_reply_in_the_middle_of_a_copy_is_a_protocol_error() {
    for bad in [
        // Not base64.
        &b"{\"return\":{\"buf-b64\":\"!!!!\",\"count\":3,\"eof\":false},\"id\":ID}\n"[..],
        // No data at all.
        b"{\"return\":{\"count\":3,\"eof\":false},\"id\":ID}\n",
        // A count that is no integer.
        b"{\"return\":{\"buf-b64\":\"AAAA\",\"count\":\"3\",\"eof\":false},\"id\":ID}\n",
    ] {
        let (err, out, names) = copy_from_guest_failing(move |n, req| {
            let id = req["id"].to_string();
            (n == 2).then(|| String::from_utf8_lossy(bad).replace("ID", &id).into_bytes())
        })
        .await;
        assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");
        assert!(out == guest_file()[..1000]);
        assert_eq!(names, reads_then_close(2, false));
    }
}

#[tokio::test]
async fn an_agent_that_closes_in_the_middle_of_a_read_reply_is_reported_closed() {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let peer = tokio::spawn(async move {
        let mut io = theirs;
        let (mut dec, mut buf) = (Decoder::new(), BytesMut::new());
        let mut reads = 0;
        while let Some(req) = next_request(&mut io, &mut dec, &mut buf).await {
            let reply = match req["execute"].as_str().unwrap() {
                "guest-file-open" => {
                    format!("{}\n", json!({"return": 1000, "id": req["id"]})).into_bytes()
                }
                "guest-file-read" => {
                    reads += 1;
                    let r = read_reply(Style::Ours, &[7; 3000], false, &req["id"]);
                    if reads == 2 {
                        io.write_all(&r[..2000]).await.unwrap();
                        return;
                    }
                    r
                }
                _ => proper(&req),
            };
            io.write_all(&reply).await.unwrap();
        }
    });
    let mut client = Client::new(ours);
    let mut out = Vec::new();
    let err = client
        .copy_from_guest("/x", &mut out, 3000, None)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Closed), "{err:?}");
    assert_eq!(out, [7; 3000]);
    peer.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_read_reply_that_never_comes_times_out_and_the_next_call_resyncs() {
    let (err, out, names) = copy_from_guest_failing(|n, _| (n == 4).then(Vec::new)).await;
    assert!(matches!(err, ClientError::Timeout), "{err:?}");
    assert!(out == guest_file()[..3000]);
    assert_eq!(names, reads_then_close(4, true));
}

/// A destination that takes `room` bytes, then fails.
struct Full {
    room: usize,
    got: Vec<u8>,
}

impl AsyncWrite for Full {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let n = buf.len().min(self.room - self.got.len());
        if n == 0 {
            return std::task::Poll::Ready(Err(std::io::Error::other("disk full")));
        }
        self.got.extend_from_slice(&buf[..n]);
        std::task::Poll::Ready(Ok(n))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn a_failing_destination_stops_the_copy_and_the_read_on_its_way_is_never_handed_out() {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let (peer, _) = file_agent(theirs, 4096, Style::Ours, guest_file(), |_, _| None);
    let mut client = Client::new(ours);
    let mut out = Full {
        room: 2500,
        got: Vec::new(),
    };
    let err = client
        .copy_from_guest("/etc/data", &mut out, 1000, None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Local(e) if e.to_string() == "disk full"),
        "{err:?}"
    );
    assert!(!err.is_unreachable());
    assert!(out.got == guest_file()[..2500]);
    // The fourth read was sent before the third chunk failed to go out: its
    // reply is dropped by a resync before the close.
    client.ping().await.unwrap();
    drop(client);
    assert_eq!(names(&peer.await.unwrap()), reads_then_close(4, true));
}

#[tokio::test]
async fn copy_to_guest_writes_every_byte_in_chunks() {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let (peer, written) = file_agent(theirs, 4096, Style::Ours, Vec::new(), |_, _| None);
    let mut client = Client::new(ours);
    let data = guest_file();
    let mut seen = Vec::new();
    let mut progress = |done: u64, total: Option<u64>| seen.push((done, total));
    // A source that hands out at most 100 bytes a read: chunks are still whole.
    let mut src = tokio::io::BufReader::with_capacity(100, &data[..]);
    let n = client
        .copy_to_guest(&mut src, "/tmp/x", 4000, Some(10_000), Some(&mut progress))
        .await
        .unwrap();
    assert_eq!(n, 10_000);
    assert_eq!(
        seen,
        [
            (4000, Some(10_000)),
            (8000, Some(10_000)),
            (10_000, Some(10_000))
        ]
    );
    client.ping().await.unwrap();
    drop(client);
    let seen = peer.await.unwrap();
    assert_eq!(
        names(&seen),
        [
            "guest-sync-delimited",
            "guest-file-open",
            "guest-file-write",
            "guest-file-write",
            "guest-file-write",
            "guest-file-flush",
            "guest-file-close",
            "guest-ping"
        ]
    );
    assert_eq!(seen[1]["arguments"], json!({"path": "/tmp/x", "mode": "w"}));
    assert!(
        *written.lock().unwrap() == data,
        "the agent got other bytes"
    );
    // An empty source opens, flushes and closes the file, writing nothing.
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let (peer, written) = file_agent(theirs, 4096, Style::Ours, Vec::new(), |_, _| None);
    let mut client = Client::new(ours);
    let n = client
        .copy_to_guest(&mut &b""[..], "/tmp/x", 4000, None, None)
        .await
        .unwrap();
    assert_eq!(n, 0);
    drop(client);
    assert_eq!(
        names(&peer.await.unwrap()),
        [
            "guest-sync-delimited",
            "guest-file-open",
            "guest-file-flush",
            "guest-file-close"
        ]
    );
    assert!(written.lock().unwrap().is_empty());
}

/// Copies 10,000 bytes from `src` into the guest with `fault` on the agent's side;
/// returns the error, what the agent wrote, and the commands it saw. The client
/// must still be usable afterwards (checked with a ping).
async fn copy_to_guest_failing(
    src: &mut (impl AsyncRead + Unpin),
    fault: impl FnMut(usize, &Value) -> Option<Vec<u8>> + Send + 'static,
) -> (ClientError, Vec<u8>, Vec<String>) {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let (peer, written) = file_agent(theirs, 4096, Style::Ours, Vec::new(), fault);
    let mut client = Client::new(ours);
    let err = client
        .copy_to_guest(src, "/tmp/x", 4000, None, None)
        .await
        .unwrap_err();
    client.ping().await.unwrap();
    drop(client);
    let names = names(&peer.await.unwrap());
    let written = written.lock().unwrap().clone();
    (err, written, names)
}

#[tokio::test]
async fn an_error_in_the_middle_of_copy_to_guest_is_returned_and_the_file_closed() {
    let data = guest_file();
    let (err, written, names) = copy_to_guest_failing(&mut &data[..], |n, req| {
        (n == 2).then(|| {
            format!(
                "{}\n",
                json!({"error": {"class": "GenericError", "desc": "write failed: No space left on device"}, "id": req["id"]})
            )
            .into_bytes()
        })
    })
    .await;
    assert_eq!(
        err.agent_error().expect("the agent's error").desc,
        "write failed: No space left on device"
    );
    // The third write was sent before the second was answered (two are on the
    // wire at a time): the agent wrote it after the failure. Its answer was
    // waited for, so the close and the ping need no resync; no flush after a
    // failed write.
    assert!(written == [&data[..4000], &data[8000..]].concat());
    assert_eq!(
        names,
        [
            "guest-sync-delimited",
            "guest-file-open",
            "guest-file-write",
            "guest-file-write",
            "guest-file-write",
            "guest-file-close",
            "guest-ping"
        ]
    );

    // A short write is a protocol error.
    let (err, _, _) = copy_to_guest_failing(&mut &data[..], |n, req| {
        (n == 1).then(|| {
            format!(
                "{}\n",
                json!({"return": {"count": 10, "eof": false}, "id": req["id"]})
            )
            .into_bytes()
        })
    })
    .await;
    assert!(
        matches!(&err, ClientError::Protocol(m) if m == "short write: 10 of 4000 bytes"),
        "{err:?}"
    );
}

/// A source that hands out `ok` bytes of zeros, then fails.
struct Broken {
    ok: usize,
}

impl AsyncRead for Broken {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let n = buf.remaining().min(self.ok);
        if n == 0 {
            return std::task::Poll::Ready(Err(std::io::Error::other("bad sector")));
        }
        buf.put_slice(&vec![0; n]);
        self.ok -= n;
        std::task::Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn a_failing_source_stops_copy_to_guest_with_a_local_error() {
    // The first chunk goes out; reading the second fails while the first is on
    // its way: its answer is waited for, so the close needs no resync.
    let (err, written, names) = copy_to_guest_failing(&mut Broken { ok: 5000 }, |_, _| None).await;
    assert!(
        matches!(&err, ClientError::Local(e) if e.to_string() == "bad sector"),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "local i/o error: bad sector");
    assert!(written == [0; 4000]);
    assert_eq!(
        names,
        [
            "guest-sync-delimited",
            "guest-file-open",
            "guest-file-write",
            "guest-file-close",
            "guest-ping"
        ]
    );
}

#[tokio::test]
async fn file_read_gives_the_same_answer_whatever_form_the_reply_takes() {
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let mut b64 = Vec::new();
    qga_proto::Base64::encode_into(&data, &mut b64);
    let b64 = String::from_utf8(b64).unwrap();
    assert!(b64.contains('/'), "the text must have a slash to escape");
    let len = data.len();
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let mut reads = 0;
    let peer = agent(theirs, 4096, move |req| {
        if req["execute"] != "guest-file-read" {
            return proper(req);
        }
        assert_eq!(req["arguments"]["count"], len);
        reads += 1;
        let id = &req["id"];
        let reply = match reads {
            // Plain, as both agents send it (the fast path).
            1 => {
                format!(r#"{{"return":{{"buf-b64":"{b64}","count":{len},"eof":false}},"id":{id}}}"#)
            }
            // Members in another order, with whitespace: still plain.
            2 => format!(
                r#" {{ "id" : {id} , "return" : {{ "eof" : true , "count" : {len} , "buf-b64" : "{b64}" }} }} "#
            ),
            // An escaped slash in the text: JSON all the same (the ordinary path).
            3 => format!(
                r#"{{"return":{{"buf-b64":"{}","count":{len},"eof":false}},"id":{id}}}"#,
                b64.replace('/', "\\/")
            ),
            _ => format!(
                r#"{{"error":{{"class":"GenericError","desc":"handle '1000' has not been found"}},"id":{id}}}"#
            ),
        };
        format!("{reply}\n").into_bytes()
    });
    let mut client = Client::new(ours);
    for eof in [false, true, false] {
        let r = client.file_read(1000, Some(len as i64)).await.unwrap();
        assert_eq!((r.count, r.eof), (len as i64, eof));
        assert!(r.buf_b64.0 == data, "bytes differ");
    }
    let err = client.file_read(1000, Some(len as i64)).await.unwrap_err();
    assert!(
        err.to_string().contains("handle '1000' has not been found"),
        "{err}"
    );
    // In step after all of them.
    client.ping().await.unwrap();
    drop(client);
    let seen = names(&peer.await.unwrap());
    assert_eq!(seen.iter().filter(|n| *n == "guest-file-read").count(), 4);
    assert_eq!(seen.last().map(String::as_str), Some("guest-ping"));
}
