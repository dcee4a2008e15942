//! An async (tokio) client for QEMU Guest Agents: qemu-ga, qga-agent, or anything
//! that speaks QGA.
//!
//! Hosts talk to agents that may be missing, slow, restarted mid-stream, or still
//! holding a stale half-reply from a previous host. This client:
//!
//! * synchronises before its first call and after any timeout, protocol error or
//!   dropped call: a 0xFF, then `guest-sync-delimited` with a fresh random id, then
//!   everything up to the agent's 0xFF and any reply with another id is discarded
//!   (`guest-sync` for agents without the delimited form);
//! * puts a fresh `id` on every request and accepts only the reply carrying it, so a
//!   stale reply is never handed to a caller; the one exception is an error without
//!   an id, which qemu-ga sends for a request it could not parse: on a stream in step
//!   it can only answer this call, so it fails the call (and the next call resyncs);
//! * fails a call whose reply breaks the decoder's limits (over 65 MiB, the largest
//!   a 48 MiB read needs, or nested deeper than 1024) with a protocol error at once;
//! * bounds every call with a timeout chosen by command class ([`Timeouts`]);
//! * returns one error type, [`ClientError`], telling an agent's refusal (class and
//!   desc) from a timeout, a closed connection, an I/O error, or (for copies) a
//!   failure of the local source or destination.
//!
//! Transports: [`connect_unix`], [`connect_vsock`], [`connect_hybrid_vsock`], or any
//! `AsyncRead + AsyncWrite` stream with [`Client::new`]. Calls are typed through
//! `qga-proto`'s `Command` trait ([`Client::execute`]), raw
//! ([`Client::execute_raw`]), or one convenience method per command; whole-file
//! copies stream a guest file into any `AsyncWrite` ([`Client::copy_from_guest`]) or
//! any `AsyncRead` into a guest file ([`Client::copy_to_guest`]) in chunks with a
//! progress callback ([`Client::read_file`] and [`Client::write_file`] do the same
//! to and from memory): reads of up to 48 MiB ([`MAX_CHUNK`]), writes of up to 48 MiB
//! less 3 KiB ([`MAX_WRITE_CHUNK`]) so each base64 request fits the agent's 64 MiB.
//! Their payload stays off serde_json: base64 is encoded and decoded with SIMD
//! straight between the caller's buffers and the socket's, and the next request is
//! prepared while the agent handles the current one (a copy into the guest sends
//! it too: two writes in flight, answered in order).
//! [`Client::exec_wait`] runs a guest program to completion (guest-exec, then
//! guest-exec-status with backoff) and hands back its decoded output and exit.
//! It never touches the guest itself and never spawns tasks: a call runs on the
//! caller's task, and dropping it is safe.
//!
//! # Example
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use qga_client::Client;
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! // A scripted agent on the other end of an in-memory pipe.
//! let (ours, mut agent) = tokio::io::duplex(4096);
//! let peer = tokio::spawn(async move {
//!     let mut buf = vec![0u8; 4096];
//!     // The sync: the agent replies with 0xFF + the id it was sent, after a
//!     // stale reply that the client must skip.
//!     let n = agent.read(&mut buf).await.unwrap();
//!     let req = String::from_utf8_lossy(&buf[1..n]).to_string();
//!     let v: serde_json::Value = serde_json::from_str(req.trim()).unwrap();
//!     let id = &v["arguments"]["id"];
//!     agent.write_all(b"{\"return\": 666, \"id\": \"stale\"}\n").await.unwrap();
//!     agent.write_all(b"\xff").await.unwrap();
//!     agent.write_all(format!("{{\"return\":{id}}}\n").as_bytes()).await.unwrap();
//!     // The ping, answered with the request's id.
//!     let n = agent.read(&mut buf).await.unwrap();
//!     let v: serde_json::Value = serde_json::from_slice(&buf[..n]).unwrap();
//!     assert_eq!(v["execute"], "guest-ping");
//!     agent.write_all(format!("{{\"return\":{{}},\"id\":{}}}\n", v["id"]).as_bytes()).await.unwrap();
//! });
//! let mut client = Client::new(ours);
//! client.ping().await.unwrap();
//! peer.await.unwrap();
//! # });
//! ```
#![warn(missing_docs)]

mod client;
mod error;
mod exec;
mod transport;

pub use client::{Client, Progress, Timeouts, MAX_CHUNK, MAX_WRITE_CHUNK};
pub use error::ClientError;
pub use exec::{ExecCommand, ExecExit, ExecOutput, EXEC_POLL_FIRST, EXEC_POLL_MAX};
pub use transport::{connect_hybrid_vsock, connect_unix, connect_vsock, hybrid_handshake};

/// The wire types, re-exported for callers of [`Client::execute`].
pub use qga_proto as proto;
