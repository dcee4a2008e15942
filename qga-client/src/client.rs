//! The client: requests out, replies matched by id, resynchronisation on any doubt.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use qga_framing::{encode_json, Decoder, Frame, Limits, SENTINEL};
use qga_proto::*;
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::ClientError;

mod copy;

/// Largest request qemu-ga accepts (its 64 MiB token limit); larger ones are refused
/// locally instead of being sent to fail without an id.
const MAX_REQUEST: usize = 64 * 1024 * 1024 - 64;
/// Largest `count` for guest-file-read (48 MiB, the reference's cap).
pub const MAX_CHUNK: usize = 48 * 1024 * 1024;
/// Largest chunk [`Client::write_file`] sends in one guest-file-write: 48 MiB less
/// 3 KiB. A 48 MiB chunk is exactly 64 MiB of base64 on its own, so with the request
/// around it (about 100 bytes) it would break qemu-ga's 64 MiB message limit; 3 KiB
/// less data is 4 KiB less base64, ample room for the envelope. A multiple of 3, so
/// the base64 of each full chunk has no padding.
pub const MAX_WRITE_CHUNK: usize = MAX_CHUNK - 3 * 1024;
// A full chunk with the largest envelope (handle and id of 20 characters each, the
// optional count) must fit in a request.
const _: () =
    assert!(MAX_WRITE_CHUNK.is_multiple_of(3) && MAX_WRITE_CHUNK / 3 * 4 + 256 <= MAX_REQUEST);
/// Largest reply the client accepts. The agent's 64 MiB limit is on what it reads,
/// not on what it writes, and its largest legitimate reply is over 64 MiB: a
/// guest-file-read of `MAX_CHUNK` (48 MiB) answers with exactly 64 MiB of base64
/// (`4 * 48 MiB / 3`) inside an envelope of about 80 bytes (`{"return": {"count":
/// 50331648, "buf-b64": "…", "eof": false}, "id": <our id, at most 19 digits>}`).
/// Every other reply is far smaller (guest-exec-status caps captured output at
/// 16 MiB, about 21 MiB of base64). One extra MiB covers the envelope with room to
/// spare while still bounding what a misbehaving agent can make the client buffer.
pub(crate) const MAX_REPLY: usize = 65 * 1024 * 1024;

/// Per-call timeouts by command class. A call's timeout covers all of it: the
/// resync it may need first (itself bounded by `quick`), writing the request and
/// waiting for the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Quick queries (ping, info, sync, file handles, network): default 10 s.
    pub quick: Duration,
    /// File transfers (read, write): default 60 s.
    pub file: Duration,
    /// fsfreeze and fstrim, which can take minutes on busy guests: default 10 min.
    pub slow: Duration,
    /// How long a command without a success response (shutdown, suspend) waits for
    /// an immediate error reply before it counts as sent: default 1 s.
    pub no_reply_grace: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            quick: Duration::from_secs(10),
            file: Duration::from_secs(60),
            slow: Duration::from_secs(600),
            no_reply_grace: Duration::from_secs(1),
        }
    }
}

impl Timeouts {
    /// The timeout for a command, by its class.
    pub fn for_command(&self, name: &str) -> Duration {
        if name.starts_with("guest-fsfreeze-") && name != "guest-fsfreeze-status"
            || name == "guest-fstrim"
        {
            self.slow
        } else if name == "guest-file-read" || name == "guest-file-write" {
            self.file
        } else {
            self.quick
        }
    }
}

/// Progress of a file transfer: bytes done, and the total when known.
pub type Progress<'a> = &'a mut (dyn FnMut(u64, Option<u64>) + Send);

/// A QGA client over any byte stream.
///
/// Every request carries a fresh `id` and only the reply with that id is accepted,
/// or an error without an id (qemu-ga's answer to a request it could not parse).
/// The stream is resynchronised (0xFF, then guest-sync-delimited with a fresh random
/// id, discarding everything up to the agent's 0xFF and any reply with another id)
/// on the first call, and again after any timeout, protocol error, or a call whose
/// future was dropped: a stale reply is never handed to a caller. Agents without
/// guest-sync-delimited are synchronised with guest-sync instead.
#[derive(Debug)]
pub struct Client<S> {
    stream: S,
    decoder: Decoder,
    buf: BytesMut,
    out: BytesMut,
    /// Set while a call is in flight and after anything that leaves the stream in
    /// doubt; the next call resyncs first.
    dirty: bool,
    next_id: u64,
    timeouts: Timeouts,
    delimited_sync: bool,
    /// Size of the reply being waited for, when it is known to be large (a file
    /// read): the read buffer is grown to it at once instead of by doubling.
    reply_hint: usize,
}

/// The answer to one request.
pub(crate) struct Reply {
    /// The `return` value, or why there is none.
    result: Result<Value, ClientError>,
    /// Whether the stream is known to be in step after it (else the next call
    /// resyncs first).
    in_step: bool,
}

fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// What [`Client::reply_or_fast`] found: the message its fast path took, with what
/// that path made of it, or the reply read the ordinary way.
pub(crate) enum Answer<T> {
    Fast(Bytes, T),
    Reply(Reply),
}

/// What one message from the agent says about the request carrying `id`: its
/// answer, or `None` when the message is no answer to it (garbage, a reply to
/// another request, a success without an id), to be skipped.
pub(crate) fn interpret(m: &[u8], id: &Value) -> Option<Reply> {
    // Not a reply at all: garbage on the line. Skip it.
    let reply = RawResponse::parse(m).ok()?;
    match (reply.id.as_ref(), reply.result) {
        // A reply to some other request: never ours to hand out.
        (Some(got), _) if got != id => None,
        (Some(_), Ok(raw)) => Some(Reply {
            result: serde_json::from_str(raw.get()).map_err(ClientError::protocol),
            in_step: true,
        }),
        (Some(_), Err(e)) => Some(Reply {
            result: Err(ClientError::Agent(e)),
            in_step: true,
        }),
        (None, Err(e)) => Some(Reply {
            result: Err(ClientError::Agent(e)),
            in_step: false,
        }),
        // A success without an id answers no request of ours.
        (None, Ok(_)) => None,
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Client<S> {
    /// A client over `stream`. Nothing is sent until the first call, which
    /// synchronises first.
    pub fn new(stream: S) -> Self {
        Client {
            stream,
            decoder: Decoder::with_limits(Limits {
                max_message: MAX_REPLY,
                ..Limits::default()
            }),
            buf: BytesMut::new(),
            out: BytesMut::new(),
            dirty: true,
            next_id: random_u64() >> 12,
            timeouts: Timeouts::default(),
            delimited_sync: true,
            reply_hint: 0,
        }
    }

    /// Replaces the default timeouts.
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// The timeouts in force.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    fn fresh_id(&mut self) -> u64 {
        self.next_id = self.next_id.wrapping_add(1) & (i64::MAX as u64);
        self.next_id
    }

    /// Starts a new exchange: empties the output buffer. A call whose future was
    /// dropped (or failed) while writing leaves its unwritten request there; it must
    /// never go out in front of a later request. The agent's copy of the part that
    /// was written is dropped by the 0xFF of the resync that follows (the dropped
    /// call left the connection marked dirty).
    fn begin_exchange(&mut self) {
        self.out.clear();
    }

    async fn send(&mut self) -> Result<(), ClientError> {
        self.stream
            .write_all(&self.out)
            .await
            .map_err(ClientError::io)?;
        self.stream.flush().await.map_err(ClientError::io)?;
        self.out.clear();
        Ok(())
    }

    /// Reads what the agent has sent next onto the buffer (room for the reply
    /// expected, at least 64 KiB); the agent closing the stream is `Closed`.
    async fn fill(&mut self) -> Result<(), ClientError> {
        let want = self.reply_hint.saturating_sub(self.buf.len());
        self.buf.reserve(want.max(64 * 1024));
        let n = self
            .stream
            .read_buf(&mut self.buf)
            .await
            .map_err(ClientError::io)?;
        if n == 0 {
            return Err(ClientError::Closed);
        }
        Ok(())
    }

    /// The next frame from the agent.
    async fn frame(&mut self) -> Result<Frame, ClientError> {
        loop {
            if let Some(f) = self.decoder.decode(&mut self.buf) {
                return Ok(f);
            }
            self.fill().await?;
        }
    }

    /// Synchronises the stream now (also done automatically when needed), within
    /// the `quick` timeout.
    pub async fn sync(&mut self) -> Result<(), ClientError> {
        self.sync_until(Instant::now() + self.timeouts.quick).await
    }

    /// Synchronises the stream, giving up at `deadline`.
    async fn sync_until(&mut self, deadline: Instant) -> Result<(), ClientError> {
        self.dirty = true;
        match tokio::time::timeout_at(deadline, self.sync_inner()).await {
            Ok(Ok(())) => {
                self.dirty = false;
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ClientError::Timeout),
        }
    }

    /// Sends 0xFF (the agent drops any partial input) and then `cmd`, without an id.
    async fn send_flushed<C: Command>(&mut self, cmd: &C) -> Result<(), ClientError> {
        self.begin_exchange();
        self.out.extend_from_slice(&[SENTINEL]);
        encode_json(&Execute::command(cmd, None), false, &mut self.out)
            .map_err(ClientError::protocol)?;
        self.send().await
    }

    async fn sync_inner(&mut self) -> Result<(), ClientError> {
        // Drop whatever we had buffered: it predates this sync.
        self.buf.clear();
        self.decoder.reset();
        if self.delimited_sync {
            let id = self.fresh_id() as i64;
            self.send_flushed(&GuestSyncDelimited { id }).await?;
            let mut after_sentinel = false;
            loop {
                match self.frame().await? {
                    Frame::Resync => after_sentinel = true,
                    Frame::Message(m) => {
                        let Ok(reply) = RawResponse::parse(&m) else {
                            continue;
                        };
                        match reply.result {
                            Ok(v) if after_sentinel && v.get() == id.to_string() => return Ok(()),
                            Err(e)
                                if e.class == ErrorClass::CommandNotFound
                                    && e.desc.contains(GuestSyncDelimited::NAME) =>
                            {
                                self.delimited_sync = false;
                                break;
                            }
                            _ => {}
                        }
                        after_sentinel = false;
                    }
                    _ => after_sentinel = false,
                }
            }
        }
        // Agents without guest-sync-delimited: guest-sync, skipping every reply
        // until the one that echoes our id.
        let id = self.fresh_id() as i64;
        self.send_flushed(&GuestSync { id }).await?;
        loop {
            if let Frame::Message(m) = self.frame().await? {
                if let Ok(reply) = RawResponse::parse(&m) {
                    if matches!(&reply.result, Ok(v) if v.get() == id.to_string()) {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Starts an exchange due by `deadline` (`start` is now): resyncs first if the
    /// stream is in doubt (within the `quick` timeout too), marks it in doubt until
    /// the reply is in, empties the output buffer; returns a fresh id.
    async fn begin_request(
        &mut self,
        start: Instant,
        deadline: Instant,
    ) -> Result<u64, ClientError> {
        if self.dirty {
            self.sync_until(deadline.min(start + self.timeouts.quick))
                .await?;
        }
        self.dirty = true;
        self.begin_exchange();
        Ok(self.fresh_id())
    }

    /// Writes `req` (a whole request, or `self.out` when `None`) within `deadline`,
    /// refusing locally what the agent could not take.
    async fn send_request(
        &mut self,
        req: Option<&[u8]>,
        deadline: Instant,
    ) -> Result<(), ClientError> {
        let len = req.map_or(self.out.len(), <[u8]>::len);
        if len > MAX_REQUEST {
            self.out.clear();
            self.dirty = false;
            return Err(ClientError::Protocol(format!(
                "request of {len} bytes exceeds the agent's 64 MiB limit"
            )));
        }
        let send = async {
            match req {
                Some(r) => {
                    self.stream.write_all(r).await.map_err(ClientError::io)?;
                    self.stream.flush().await.map_err(ClientError::io)
                }
                None => self.send().await,
            }
        };
        match tokio::time::timeout_at(deadline, send).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout),
        }
    }

    /// Sends one request and waits for the reply with its id. Returns `None` for
    /// commands without a success response once the grace period passed quietly.
    ///
    /// `timeout` bounds the whole call: the resync it may need first (itself
    /// bounded by `quick`), writing the request, and waiting for the reply.
    async fn round_trip<A: Serialize>(
        &mut self,
        name: &str,
        args: Option<&A>,
        expects_reply: bool,
        timeout: Duration,
    ) -> Result<Option<Value>, ClientError> {
        let start = Instant::now();
        let deadline = start + timeout;
        let id = Value::from(self.begin_request(start, deadline).await?);
        let req = Execute {
            execute: name,
            arguments: args,
            id: Some(&id),
        };
        encode_json(&req, false, &mut self.out).map_err(ClientError::protocol)?;
        self.send_request(None, deadline).await?;
        let wait_until = if expects_reply {
            deadline
        } else {
            // Sent: a quiet grace period (or what is left of the timeout) is success.
            deadline.min(Instant::now() + self.timeouts.no_reply_grace)
        };
        match tokio::time::timeout_at(wait_until, self.reply_for(&id)).await {
            Ok(Ok(reply)) => {
                self.dirty = !reply.in_step;
                Ok(Some(reply.result?))
            }
            Ok(Err(e)) => Err(e),
            Err(_) if !expects_reply => Ok(None),
            Err(_) => Err(ClientError::Timeout),
        }
    }

    /// Reads replies until the one answering the request carrying `id`.
    async fn reply_for(&mut self, id: &Value) -> Result<Reply, ClientError> {
        match self.reply_or_fast(id, |_| None::<()>).await? {
            Answer::Reply(r) => Ok(r),
            Answer::Fast(..) => unreachable!("no fast path was offered"),
        }
    }

    /// Reads replies until the one answering the request carrying `id`, trying
    /// `fast` on each message first: a message it takes (`Some`) is that answer,
    /// handed back with what `fast` found; it must take only a success reply
    /// carrying `id` that [`interpret`] would hand out, so that the answer is the
    /// same either way.
    ///
    /// The stream was in step when the request went out (the call synchronised
    /// first if it was in doubt), so anything the agent says now answers it. A reply
    /// with another id is still skipped, but an error without an id is the agent's
    /// answer: qemu-ga drops the id only when it could not parse the request. It may
    /// answer the rest of a broken request with more such errors, so the stream is
    /// left marked for a resync. A reply that breaks the decoder's limits fails the
    /// call as a protocol error rather than being skipped while the caller waits.
    async fn reply_or_fast<T>(
        &mut self,
        id: &Value,
        mut fast: impl FnMut(&[u8]) -> Option<T>,
    ) -> Result<Answer<T>, ClientError> {
        loop {
            let m = match self.frame().await? {
                Frame::Message(m) => m,
                Frame::Oversized(e) => {
                    return Err(ClientError::Protocol(format!("reply rejected: {e}")))
                }
                _ => continue,
            };
            if let Some(found) = fast(&m) {
                return Ok(Answer::Fast(m, found));
            }
            if let Some(reply) = interpret(&m, id) {
                return Ok(Answer::Reply(reply));
            }
        }
    }

    /// Runs a typed command with its class's timeout.
    pub async fn execute<C: Command>(&mut self, cmd: &C) -> Result<C::Returns, ClientError> {
        let timeout = self.timeouts.for_command(C::NAME);
        self.execute_with_timeout(cmd, timeout).await
    }

    /// Runs a typed command with an explicit timeout. For commands without a
    /// success response (shutdown, suspend), `Ok` means the request was written
    /// and no error came back within the grace period.
    pub async fn execute_with_timeout<C: Command>(
        &mut self,
        cmd: &C,
        timeout: Duration,
    ) -> Result<C::Returns, ClientError> {
        let args = C::HAS_ARGUMENTS.then_some(cmd);
        match self
            .round_trip(C::NAME, args, C::SUCCESS_RESPONSE, timeout)
            .await?
        {
            Some(v) => serde_json::from_value(v).map_err(ClientError::protocol),
            None => {
                // The agent is going away (or suspended): the stream is in doubt.
                self.dirty = true;
                serde_json::from_value(Value::Object(Default::default()))
                    .map_err(ClientError::protocol)
            }
        }
    }

    /// Runs any command by name with raw JSON arguments; returns the raw `return`.
    /// Commands that answer nothing on success give `Value::Null`.
    pub async fn execute_raw(
        &mut self,
        name: &str,
        arguments: Option<Value>,
    ) -> Result<Value, ClientError> {
        let expects_reply = command_spec(name).is_none_or(|s| s.success_response);
        let timeout = self.timeouts.for_command(name);
        let r = self
            .round_trip(name, arguments.as_ref(), expects_reply, timeout)
            .await?;
        if r.is_none() {
            self.dirty = true;
        }
        Ok(r.unwrap_or(Value::Null))
    }

    /// Waits until the agent closes the connection or stops answering pings,
    /// e.g. after guest-shutdown. Returns `Ok` once it is gone.
    pub async fn wait_gone(&mut self, timeout: Duration) -> Result<(), ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if tokio::time::Instant::now() >= deadline {
                return Err(ClientError::Timeout);
            }
            let quick = self.timeouts.quick.min(Duration::from_secs(2));
            match self.execute_with_timeout(&GuestPing {}, quick).await {
                Err(ClientError::Closed) | Err(ClientError::Io(_)) => return Ok(()),
                Err(ClientError::Timeout) => return Ok(()),
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// guest-ping.
    pub async fn ping(&mut self) -> Result<(), ClientError> {
        self.execute(&GuestPing {}).await.map(|_| ())
    }

    /// guest-info.
    pub async fn info(&mut self) -> Result<GuestAgentInfo, ClientError> {
        self.execute(&GuestInfo {}).await
    }

    /// guest-shutdown (`None` = powerdown).
    pub async fn shutdown(&mut self, mode: Option<&str>) -> Result<(), ClientError> {
        self.execute(&GuestShutdown {
            mode: mode.map(str::to_owned),
        })
        .await
        .map(|_| ())
    }

    /// guest-suspend-disk.
    pub async fn suspend_disk(&mut self) -> Result<(), ClientError> {
        self.execute(&GuestSuspendDisk {}).await.map(|_| ())
    }

    /// guest-suspend-ram.
    pub async fn suspend_ram(&mut self) -> Result<(), ClientError> {
        self.execute(&GuestSuspendRam {}).await.map(|_| ())
    }

    /// guest-suspend-hybrid.
    pub async fn suspend_hybrid(&mut self) -> Result<(), ClientError> {
        self.execute(&GuestSuspendHybrid {}).await.map(|_| ())
    }

    /// guest-file-open; returns the handle.
    pub async fn file_open(&mut self, path: &str, mode: Option<&str>) -> Result<i64, ClientError> {
        self.execute(&GuestFileOpen {
            path: path.to_owned(),
            mode: mode.map(str::to_owned),
        })
        .await
    }

    /// guest-file-close.
    pub async fn file_close(&mut self, handle: i64) -> Result<(), ClientError> {
        self.execute(&GuestFileClose { handle }).await.map(|_| ())
    }

    /// guest-file-read.
    ///
    /// A reply in the plain form both agents send is checked and decoded straight
    /// from the message with SIMD, as [`copy_from_guest`](Self::copy_from_guest)
    /// reads (no JSON value and no string in between); any other reply, and a count
    /// that is absent or outside 0..=[`MAX_CHUNK`], takes the ordinary path, with the
    /// same result.
    pub async fn file_read(
        &mut self,
        handle: i64,
        count: Option<i64>,
    ) -> Result<GuestFileReadResult, ClientError> {
        match count.and_then(|c| usize::try_from(c).ok()) {
            Some(n) if n <= MAX_CHUNK => self.read_once(handle, n).await,
            _ => self.execute(&GuestFileRead { handle, count }).await,
        }
    }

    /// guest-file-write.
    pub async fn file_write(
        &mut self,
        handle: i64,
        data: Vec<u8>,
    ) -> Result<GuestFileWriteResult, ClientError> {
        self.execute(&GuestFileWrite {
            handle,
            buf_b64: Base64(data),
            count: None,
        })
        .await
    }

    /// guest-file-seek.
    pub async fn file_seek(
        &mut self,
        handle: i64,
        offset: i64,
        whence: SeekOrigin,
    ) -> Result<GuestFileSeekResult, ClientError> {
        self.execute(&GuestFileSeek {
            handle,
            offset,
            whence: Whence::Name(whence),
        })
        .await
    }

    /// guest-file-flush.
    pub async fn file_flush(&mut self, handle: i64) -> Result<(), ClientError> {
        self.execute(&GuestFileFlush { handle }).await.map(|_| ())
    }

    /// guest-fsfreeze-status.
    pub async fn fsfreeze_status(&mut self) -> Result<FsfreezeStatus, ClientError> {
        self.execute(&GuestFsfreezeStatus {}).await
    }

    /// guest-fsfreeze-freeze, or guest-fsfreeze-freeze-list when `mountpoints` is
    /// given; returns the number of filesystems frozen.
    pub async fn fsfreeze_freeze(
        &mut self,
        mountpoints: Option<Vec<String>>,
    ) -> Result<i64, ClientError> {
        match mountpoints {
            None => self.execute(&GuestFsfreezeFreeze {}).await,
            Some(m) => {
                self.execute(&GuestFsfreezeFreezeList {
                    mountpoints: Some(m),
                })
                .await
            }
        }
    }

    /// guest-fsfreeze-thaw; returns the number of filesystems thawed.
    pub async fn fsfreeze_thaw(&mut self) -> Result<i64, ClientError> {
        self.execute(&GuestFsfreezeThaw {}).await
    }

    /// guest-fstrim.
    pub async fn fstrim(
        &mut self,
        minimum: Option<i64>,
    ) -> Result<GuestFilesystemTrimResponse, ClientError> {
        self.execute(&GuestFstrim { minimum }).await
    }

    /// guest-network-get-interfaces.
    pub async fn network_interfaces(&mut self) -> Result<Vec<GuestNetworkInterface>, ClientError> {
        self.execute(&GuestNetworkGetInterfaces {}).await
    }

    /// guest-get-time: the guest's clock, in nanoseconds since the epoch.
    pub async fn get_time(&mut self) -> Result<i64, ClientError> {
        self.execute(&GuestGetTime {}).await
    }

    /// guest-set-time: with `time` (nanoseconds since the epoch), set the guest's
    /// clock to it; without, set the system clock from the hardware clock.
    pub async fn set_time(&mut self, time: Option<i64>) -> Result<(), ClientError> {
        self.execute(&GuestSetTime { time }).await.map(|_| ())
    }

    /// guest-get-host-name.
    pub async fn get_host_name(&mut self) -> Result<String, ClientError> {
        self.execute(&GuestGetHostName {})
            .await
            .map(|h| h.host_name)
    }

    /// guest-get-timezone.
    pub async fn get_timezone(&mut self) -> Result<GuestTimezone, ClientError> {
        self.execute(&GuestGetTimezone {}).await
    }

    /// guest-get-osinfo: kernel and distribution.
    pub async fn get_osinfo(&mut self) -> Result<GuestOsInfo, ClientError> {
        self.execute(&GuestGetOsinfo {}).await
    }

    /// guest-get-users: logged-in users.
    pub async fn get_users(&mut self) -> Result<Vec<GuestUser>, ClientError> {
        self.execute(&GuestGetUsers {}).await
    }

    /// guest-get-load: load averages (QEMU 10.0 agents and ours; older ones answer
    /// CommandNotFound).
    pub async fn get_load(&mut self) -> Result<GuestLoadAverage, ClientError> {
        self.execute(&GuestGetLoad {}).await
    }

    /// guest-get-vcpus: the logical CPUs and whether they are online.
    pub async fn get_vcpus(&mut self) -> Result<Vec<GuestLogicalProcessor>, ClientError> {
        self.execute(&GuestGetVcpus {}).await
    }

    /// guest-set-vcpus: brings CPUs online or offline, in order; returns how many
    /// were processed.
    pub async fn set_vcpus(
        &mut self,
        vcpus: Vec<GuestLogicalProcessor>,
    ) -> Result<i64, ClientError> {
        self.execute(&GuestSetVcpus { vcpus }).await
    }

    /// guest-get-memory-blocks: the memory blocks and whether they are online.
    pub async fn get_memory_blocks(&mut self) -> Result<Vec<GuestMemoryBlock>, ClientError> {
        self.execute(&GuestGetMemoryBlocks {}).await
    }

    /// guest-set-memory-blocks: one response per requested block.
    pub async fn set_memory_blocks(
        &mut self,
        mem_blks: Vec<GuestMemoryBlock>,
    ) -> Result<Vec<GuestMemoryBlockResponse>, ClientError> {
        self.execute(&GuestSetMemoryBlocks { mem_blks }).await
    }

    /// guest-get-memory-block-info: the size of one memory block.
    pub async fn get_memory_block_info(&mut self) -> Result<GuestMemoryBlockInfo, ClientError> {
        self.execute(&GuestGetMemoryBlockInfo {}).await
    }

    /// guest-get-cpustats: each CPU's times.
    pub async fn get_cpustats(&mut self) -> Result<Vec<GuestCpuStats>, ClientError> {
        self.execute(&GuestGetCpustats {}).await
    }

    /// guest-get-devices: devices and their drivers (answered by Windows agents).
    pub async fn get_devices(&mut self) -> Result<Vec<GuestDeviceInfo>, ClientError> {
        self.execute(&GuestGetDevices {}).await
    }

    /// guest-get-fsinfo: mounted filesystems, their sizes and disks.
    pub async fn get_fsinfo(&mut self) -> Result<Vec<GuestFilesystemInfo>, ClientError> {
        self.execute(&GuestGetFsinfo {}).await
    }

    /// guest-get-disks: disks and partitions.
    pub async fn get_disks(&mut self) -> Result<Vec<GuestDiskInfo>, ClientError> {
        self.execute(&GuestGetDisks {}).await
    }

    /// guest-get-diskstats: each block device's I/O counters.
    pub async fn get_diskstats(&mut self) -> Result<Vec<GuestDiskStatsInfo>, ClientError> {
        self.execute(&GuestGetDiskstats {}).await
    }

    /// guest-network-get-route: the routing tables (QEMU 9.1 agents and ours).
    pub async fn get_routes(&mut self) -> Result<Vec<GuestNetworkRoute>, ClientError> {
        self.execute(&GuestNetworkGetRoute {}).await
    }

    /// guest-exec: starts a program; returns its pid, to poll with
    /// [`Client::exec_status`].
    pub async fn exec(&mut self, cmd: &GuestExec) -> Result<GuestExecResult, ClientError> {
        self.execute(cmd).await
    }

    /// guest-exec-status: a started program's state and captured output.
    pub async fn exec_status(&mut self, pid: i64) -> Result<GuestExecStatusResult, ClientError> {
        self.execute(&GuestExecStatus { pid }).await
    }

    /// guest-set-user-password: `password` is sent base64-encoded; `crypted` says it
    /// is already a crypt(3) hash.
    pub async fn set_user_password(
        &mut self,
        username: &str,
        password: &[u8],
        crypted: bool,
    ) -> Result<(), ClientError> {
        let mut b64 = Vec::new();
        Base64::encode_into(password, &mut b64);
        let password = String::from_utf8(b64).map_err(ClientError::protocol)?;
        self.execute(&GuestSetUserPassword {
            username: username.to_owned(),
            password,
            crypted,
        })
        .await
        .map(|_| ())
    }

    /// guest-ssh-get-authorized-keys.
    pub async fn ssh_get_authorized_keys(
        &mut self,
        username: &str,
    ) -> Result<Vec<String>, ClientError> {
        self.execute(&GuestSshGetAuthorizedKeys {
            username: username.to_owned(),
        })
        .await
        .map(|k| k.keys)
    }

    /// guest-ssh-add-authorized-keys (`reset` replaces the user's keys).
    pub async fn ssh_add_authorized_keys(
        &mut self,
        username: &str,
        keys: Vec<String>,
        reset: bool,
    ) -> Result<(), ClientError> {
        self.execute(&GuestSshAddAuthorizedKeys {
            username: username.to_owned(),
            keys,
            reset: reset.then_some(true),
        })
        .await
        .map(|_| ())
    }

    /// guest-ssh-remove-authorized-keys.
    pub async fn ssh_remove_authorized_keys(
        &mut self,
        username: &str,
        keys: Vec<String>,
    ) -> Result<(), ClientError> {
        self.execute(&GuestSshRemoveAuthorizedKeys {
            username: username.to_owned(),
            keys,
        })
        .await
        .map(|_| ())
    }
}
