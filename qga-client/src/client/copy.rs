//! Whole-file copies out of and into the guest: guest-file-open, guest-file-read or
//! guest-file-write in chunks, guest-file-close.
//!
//! These move every payload byte of a transfer, so their hot path stays off
//! serde_json: a read reply is recognised by a strict scanner that takes only the
//! plain shape of a successful reply to our request (anything else goes the ordinary
//! way, with the ordinary answer), its base64 is checked and decoded with SIMD
//! straight from the read buffer, and a write request is assembled by hand with the
//! payload encoded (SIMD again) straight into it. The next request is never
//! waited for: a read's next request goes out as soon as its reply is in, so the
//! agent reads the next chunk while this one is decoded and handed over; a write's
//! next request is read from the source, encoded and sent while the agent handles
//! this one (two writes in flight, answered in order).

use std::io::Write as _;
use std::ops::Range;

use bytes::Bytes;
use qga_proto::GuestFileWriteResult;
use qga_proto::{Base64, Command, GuestFileRead, GuestFileReadResult, GuestFileWrite};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::{Answer, Client, Progress, Reply, MAX_CHUNK, MAX_REPLY, MAX_WRITE_CHUNK};
use crate::ClientError;

/// A request on the wire, waiting for its reply.
struct Sent {
    id: u64,
    deadline: Instant,
}

/// The answer to a guest-file-read.
enum ReadReply {
    /// Taken by a fast path (off the stream, or framed and scanned): the message
    /// and where its checked parts are.
    Fast(Bytes, ReadScan),
    /// Framed and read the ordinary way.
    Typed(GuestFileReadResult),
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Client<S> {
    /// Reads a whole guest file in chunks of `chunk` bytes (at most 48 MiB,
    /// [`MAX_CHUNK`]); `progress` gets the bytes read so far after each chunk.
    /// The same as [`copy_from_guest`](Client::copy_from_guest) into a `Vec`.
    pub async fn read_file(
        &mut self,
        path: &str,
        chunk: usize,
        progress: Option<Progress<'_>>,
    ) -> Result<Vec<u8>, ClientError> {
        let mut data = Vec::new();
        self.copy_from_guest(path, &mut data, chunk, progress)
            .await?;
        Ok(data)
    }

    /// Writes `data` to a guest file (created or truncated) in chunks of `chunk`
    /// bytes (at most [`MAX_WRITE_CHUNK`], so each request stays within the agent's
    /// 64 MiB limit). The same as [`copy_to_guest`](Client::copy_to_guest) from a
    /// slice.
    pub async fn write_file(
        &mut self,
        path: &str,
        data: &[u8],
        chunk: usize,
        progress: Option<Progress<'_>>,
    ) -> Result<(), ClientError> {
        let mut src = data;
        self.copy_to_guest(&mut src, path, chunk, Some(data.len() as u64), progress)
            .await
            .map(|_| ())
    }

    /// Copies the guest file `path` into `dst`: guest-file-open (mode `r`), then
    /// guest-file-read with count `chunk` (1 byte to 48 MiB, [`MAX_CHUNK`]; clamped)
    /// until a reply says end of file or reads nothing, each chunk written to `dst`
    /// as it comes, then `dst` flushed and the handle closed. Returns the number of
    /// bytes copied; `progress` gets the bytes copied so far after each chunk (and
    /// no total).
    ///
    /// Errors are those of the calls it makes ([`ClientError::Agent`] for a refusal,
    /// [`ClientError::Protocol`] for a reply that makes no sense, and so on), and
    /// [`ClientError::Local`] when writing to `dst` fails. The handle is closed
    /// whatever happened (the first error is the one returned); bytes already
    /// written to `dst` stay there. A read is sent as soon as the previous one is
    /// answered, before that answer is decoded and written out; after an error in
    /// that window, the next call resynchronises first, so the reply to the read
    /// that was already on its way is never handed to anyone.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), qga_client::ClientError> {
    /// let mut client = qga_client::connect_unix("/run/qga.sock").await?;
    /// let mut out = Vec::new();
    /// let n = client
    ///     .copy_from_guest("/etc/os-release", &mut out, 1 << 20, None)
    ///     .await?;
    /// assert_eq!(n as usize, out.len());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn copy_from_guest<W: AsyncWrite + Unpin + ?Sized>(
        &mut self,
        path: &str,
        dst: &mut W,
        chunk: usize,
        progress: Option<Progress<'_>>,
    ) -> Result<u64, ClientError> {
        let chunk = chunk.clamp(1, MAX_CHUNK);
        let handle = self.file_open(path, Some("r")).await?;
        let result = self.read_chunks(handle, chunk, dst, progress).await;
        let closed = self.file_close(handle).await;
        let copied = result?;
        closed?;
        Ok(copied)
    }

    /// Copies `src` to the end into the guest file `path` (created or truncated):
    /// guest-file-open (mode `w`), then one guest-file-write per `chunk` bytes read
    /// from `src` (1 byte to [`MAX_WRITE_CHUNK`]; clamped), each of which must be
    /// written whole, then guest-file-flush and guest-file-close. Returns the number
    /// of bytes copied; `progress` gets the bytes copied so far after each chunk,
    /// and `total` as the expected total.
    ///
    /// Two writes are on the wire at a time: while the agent decodes and writes
    /// one chunk, the next is read from `src`, encoded and sent, so the agent finds
    /// it waiting when it is done (it answers requests strictly in order).
    ///
    /// Errors are those of the calls it makes ([`ClientError::Agent`] for a refusal,
    /// [`ClientError::Protocol`] for a reply that makes no sense or a short write,
    /// and so on), and [`ClientError::Local`] when reading `src` fails. The first
    /// error is the one returned, and the handle is closed whatever happened.
    ///
    /// A failed copy leaves a partial guest file, not to be trusted past the
    /// failure: it holds the chunks written before the failing one, and, since the
    /// next chunk was already on its way, possibly that next chunk too, right
    /// after them (the agent writes it even though the one before failed). After
    /// an error reply to a write, the answer to the write still on the wire is
    /// waited for and dropped, so the client stays in step and usable; if that
    /// cannot be done (a timeout, a broken connection, an error without an id),
    /// the next call resynchronises first, as after any doubt.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), qga_client::ClientError> {
    /// let mut client = qga_client::connect_unix("/run/qga.sock").await?;
    /// let data = b"hello\n";
    /// let n = client
    ///     .copy_to_guest(&mut &data[..], "/tmp/hello", 1 << 20, Some(6), None)
    ///     .await?;
    /// assert_eq!(n, 6);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn copy_to_guest<R: AsyncRead + Unpin + ?Sized>(
        &mut self,
        src: &mut R,
        path: &str,
        chunk: usize,
        total: Option<u64>,
        progress: Option<Progress<'_>>,
    ) -> Result<u64, ClientError> {
        let chunk = chunk.clamp(1, MAX_WRITE_CHUNK);
        let handle = self.file_open(path, Some("w")).await?;
        let result = self.write_chunks(src, handle, chunk, total, progress).await;
        let closed = self.file_close(handle).await;
        let copied = result?;
        closed?;
        Ok(copied)
    }

    async fn read_chunks<W: AsyncWrite + Unpin + ?Sized>(
        &mut self,
        handle: i64,
        chunk: usize,
        dst: &mut W,
        mut progress: Option<Progress<'_>>,
    ) -> Result<u64, ClientError> {
        let mut scratch = Vec::new();
        let mut done = 0u64;
        let mut current = self.send_read(handle, chunk).await?;
        loop {
            let reply = self.read_reply(&current, chunk).await?;
            let (count, eof) = match &reply {
                ReadReply::Fast(_, scan) => (scan.count, scan.eof),
                ReadReply::Typed(r) => (r.count, r.eof),
            };
            // This read is answered: the next one goes out before its data is
            // decoded and written, so the agent works meanwhile.
            let next = if eof || count == 0 {
                None
            } else {
                Some(self.send_read(handle, chunk).await?)
            };
            let data = match reply {
                ReadReply::Fast(m, scan) => {
                    scan.decode(&m, &mut scratch)?;
                    &scratch[..]
                }
                ReadReply::Typed(r) => {
                    scratch = r.buf_b64.0;
                    &scratch[..]
                }
            };
            dst.write_all(data).await.map_err(ClientError::Local)?;
            done += data.len() as u64;
            if let Some(p) = progress.as_mut() {
                p(done, None);
            }
            match next {
                Some(n) => current = n,
                None => break,
            }
        }
        dst.flush().await.map_err(ClientError::Local)?;
        Ok(done)
    }

    async fn write_chunks<R: AsyncRead + Unpin + ?Sized>(
        &mut self,
        src: &mut R,
        handle: i64,
        chunk: usize,
        total: Option<u64>,
        mut progress: Option<Progress<'_>>,
    ) -> Result<u64, ClientError> {
        // Zeroed lazily by the allocator: a small file touches little of it.
        let mut data = vec![0u8; chunk];
        let mut req = Vec::new();
        let mut done = 0u64;
        // The older of the (at most two) writes on the wire, with its length. The
        // agent answers in order, so while it decodes and writes that one, the next
        // is read from `src`, encoded and sent: it is waiting in the socket when the
        // agent is done with the older one, however late this task runs again.
        let mut older: Option<(Sent, usize)> = None;
        loop {
            let len = match fill(src, &mut data).await {
                Ok(n) => n,
                Err(e) => return Err(self.abandon_writes(e, true, older.map(|o| o.0)).await),
            };
            let newer = if len > 0 {
                write_request(&mut req, handle, &data[..len]);
                // On failure the stream is left in doubt (marked for a resync),
                // which skips the older write's answer too.
                let sent = self.send_write(&mut req, older.is_some()).await?;
                Some((sent, len))
            } else {
                None
            };
            if let Some((sent, sent_len)) = older.take() {
                if let Err((e, in_step)) = self.write_answered(&sent, sent_len).await {
                    return Err(self.abandon_writes(e, in_step, newer.map(|n| n.0)).await);
                }
                done += sent_len as u64;
                if let Some(p) = progress.as_mut() {
                    p(done, total);
                }
            }
            match newer {
                Some(n) => older = Some(n),
                None => break,
            }
        }
        // Every write is answered, each in step.
        self.dirty = false;
        self.file_flush(handle).await?;
        Ok(done)
    }

    /// Waits for the answer to the write `sent` of `len` bytes, which must say all
    /// of them were written. The stream stays marked in doubt (another write may
    /// be on the wire); an error comes with whether the stream is in step after
    /// it (an error carrying the write's id, or a short write: yes; a timeout, an
    /// error without an id, a broken connection: no).
    async fn write_answered(&mut self, sent: &Sent, len: usize) -> Result<(), (ClientError, bool)> {
        let w = self.write_reply(sent).await;
        // `write_reply` clears the mark when the answer was in step.
        let in_step = !self.dirty;
        self.dirty = true;
        let w = w.map_err(|e| (e, in_step))?;
        if usize::try_from(w.count).ok() != Some(len) {
            return Err((
                ClientError::Protocol(format!("short write: {} of {len} bytes", w.count)),
                in_step,
            ));
        }
        Ok(())
    }

    /// Ends a windowed copy on `err`, returned as is. When the stream is `in_step`
    /// but for the answer to `pending` (a write still on the wire: the one after a
    /// failed write, or the last one sent when reading the source failed), that
    /// answer is waited for (within that write's deadline) and dropped, so the
    /// stream is back in step for the next call without a resync. Otherwise, or if
    /// waiting fails, the stream stays marked for a resync, which skips it.
    async fn abandon_writes(
        &mut self,
        err: impl Into<ClientError>,
        in_step: bool,
        pending: Option<Sent>,
    ) -> ClientError {
        if in_step {
            match pending {
                None => self.dirty = false,
                Some(sent) => {
                    let id = Value::from(sent.id);
                    if let Ok(Ok(r)) =
                        tokio::time::timeout_at(sent.deadline, self.reply_for(&id)).await
                    {
                        self.dirty = !r.in_step;
                    }
                }
            }
        }
        err.into()
    }

    /// Sends guest-file-read of `count` bytes (built by hand: it is small, but one
    /// goes out per chunk).
    async fn send_read(&mut self, handle: i64, count: usize) -> Result<Sent, ClientError> {
        let start = Instant::now();
        let deadline = start + self.timeouts.for_command(GuestFileRead::NAME);
        let id = self.begin_request(start, deadline).await?;
        // Writing to a BytesMut cannot fail.
        let _ = std::fmt::Write::write_fmt(
            &mut self.out,
            format_args!(
                "{{\"execute\":\"{}\",\"arguments\":{{\"handle\":{handle},\"count\":{count}}},\"id\":{id}}}\n",
                GuestFileRead::NAME
            ),
        );
        self.send_request(None, deadline).await?;
        Ok(Sent { id, deadline })
    }

    /// One guest-file-read of `count` bytes (at most [`MAX_CHUNK`]), through the
    /// copies' fast path.
    pub(super) async fn read_once(
        &mut self,
        handle: i64,
        count: usize,
    ) -> Result<GuestFileReadResult, ClientError> {
        let sent = self.send_read(handle, count).await?;
        match self.read_reply(&sent, count).await? {
            ReadReply::Fast(m, scan) => {
                let mut data = Vec::new();
                scan.decode(&m, &mut data)?;
                Ok(GuestFileReadResult {
                    count: scan.count,
                    buf_b64: Base64(data),
                    eof: scan.eof,
                })
            }
            ReadReply::Typed(r) => Ok(r),
        }
    }

    /// Waits for the answer to the read `req` of `count` bytes.
    async fn read_reply(&mut self, req: &Sent, count: usize) -> Result<ReadReply, ClientError> {
        // The reply is about 4/3 of the data: room for it at once.
        self.reply_hint = count.div_ceil(3) * 4 + 256;
        let id = Value::from(req.id);
        let answer = tokio::time::timeout_at(req.deadline, async {
            if let Some((m, scan)) = self.read_reply_streamed(req.id).await? {
                return Ok(Ok(ReadReply::Fast(m, scan)));
            }
            Ok(
                match self
                    .reply_or_fast(&id, |m| ReadScan::parse(m, req.id))
                    .await?
                {
                    Answer::Fast(m, scan) => Ok(ReadReply::Fast(m, scan)),
                    Answer::Reply(r) => Err(r),
                },
            )
        })
        .await;
        self.reply_hint = 0;
        match answer {
            Err(_) => Err(ClientError::Timeout),
            Ok(Err(e)) => Err(e),
            Ok(Ok(Ok(reply))) => {
                self.dirty = false;
                Ok(reply)
            }
            Ok(Ok(Err(r))) => self.typed(r).map(ReadReply::Typed),
        }
    }

    /// Takes the reply to the read carrying `id` straight off the stream, without
    /// the framer, when it has the plain shape [`StreamScan`] takes, checking its
    /// base64 as it arrives. Returns the message and where its parts are; or `None`
    /// as soon as the bytes are anything else, or when the decoder is in the middle
    /// of something: nothing is consumed then, and the ordinary path frames the
    /// bytes.
    async fn read_reply_streamed(
        &mut self,
        id: u64,
    ) -> Result<Option<(Bytes, ReadScan)>, ClientError> {
        if self.decoder.is_mid_message() || self.decoder.is_recovering() {
            return Ok(None);
        }
        let mut scan = StreamScan::default();
        loop {
            match scan.advance(&self.buf, id) {
                Step::Done { end, scan } => {
                    // The decoder would have framed exactly these bytes as one
                    // message (see `StreamScan`); it is left as after one.
                    let m = self.buf.split_to(end).freeze();
                    self.decoder.reset();
                    return Ok(Some((m, scan)));
                }
                Step::Other => return Ok(None),
                Step::More => {}
            }
            self.fill().await?;
        }
    }

    /// Sends the guest-file-write in `req` (built by [`write_request`]), with a
    /// fresh id appended. The first write of a copy starts an exchange (resyncing
    /// first if the stream is in doubt); a `windowed` one goes out while the
    /// previous write is still unanswered, onto a stream already marked in doubt.
    async fn send_write(&mut self, req: &mut Vec<u8>, windowed: bool) -> Result<Sent, ClientError> {
        let start = Instant::now();
        let deadline = start + self.timeouts.for_command(GuestFileWrite::NAME);
        let id = if windowed {
            self.fresh_id()
        } else {
            self.begin_request(start, deadline).await?
        };
        // Writing to a Vec cannot fail.
        let _ = writeln!(req, ",\"id\":{id}}}");
        self.send_request(Some(req), deadline).await?;
        Ok(Sent { id, deadline })
    }

    /// Waits for the answer to the write `req`.
    async fn write_reply(&mut self, req: &Sent) -> Result<GuestFileWriteResult, ClientError> {
        let id = Value::from(req.id);
        match tokio::time::timeout_at(req.deadline, self.reply_for(&id)).await {
            Err(_) => Err(ClientError::Timeout),
            Ok(Err(e)) => Err(e),
            Ok(Ok(r)) => self.typed(r),
        }
    }

    /// The typed `return` of a reply read the ordinary way, as
    /// [`execute`](Client::execute) would type it.
    fn typed<T: serde::de::DeserializeOwned>(&mut self, r: Reply) -> Result<T, ClientError> {
        self.dirty = !r.in_step;
        serde_json::from_value(r.result?).map_err(ClientError::protocol)
    }
}

/// Reads from `src` until `buf` is full or `src` ends; returns how much was read.
async fn fill<R: AsyncRead + Unpin + ?Sized>(
    src: &mut R,
    buf: &mut [u8],
) -> Result<usize, ClientError> {
    let mut n = 0;
    while n < buf.len() {
        match src.read(&mut buf[n..]).await {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ClientError::Local(e)),
        }
    }
    Ok(n)
}

/// Builds a guest-file-write of `data` in `req`, all but the id and the end:
/// `{"execute":"guest-file-write","arguments":{"handle":H,"buf-b64":"…"}`. The
/// base64 is encoded (SIMD) straight into the request.
fn write_request(req: &mut Vec<u8>, handle: i64, data: &[u8]) {
    req.clear();
    // Writing to a Vec cannot fail.
    let _ = write!(
        req,
        "{{\"execute\":\"{}\",\"arguments\":{{\"handle\":{handle},\"buf-b64\":\"",
        GuestFileWrite::NAME
    );
    base64_simd::STANDARD.encode_append(data, req);
    req.extend_from_slice(b"\"}");
}

/// A guest-file-read reply of the plain shape, found by [`ReadScan::parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct ReadScan {
    count: i64,
    eof: bool,
    /// Where the base64 text is in the message, but for its last group: whole
    /// groups of the standard alphabet, already checked.
    body: Range<usize>,
    /// The last group, decoded.
    last: [u8; 3],
    last_len: usize,
}

impl ReadScan {
    /// Takes `m` when it is, in the plainest form, a successful reply to the
    /// guest-file-read carrying `id`: an object with exactly the members `return`
    /// and `id` (our id as a plain integer), `return` with exactly `count` (a plain
    /// integer), `buf-b64` (a string without escapes) and `eof` (a boolean), in any
    /// order, with any JSON whitespace; and base64 text of whole groups with padding
    /// only in the last. The text is checked here (SIMD), so that decoding it later
    /// cannot fail.
    ///
    /// Everything it takes is valid JSON that the ordinary path ([`interpret`](super::interpret), then
    /// typing as [`GuestFileReadResult`]) answers with the same count, eof and bytes;
    /// anything else (`None`) goes that way and gets that path's answer.
    fn parse(m: &[u8], id: u64) -> Option<ReadScan> {
        let mut c = Scanner { b: m, i: 0 };
        c.ws();
        c.byte(b'{')?;
        let (mut ret, mut seen_id) = (None, false);
        loop {
            match c.key()? {
                b"return" if ret.is_none() => ret = Some(c.read_result()?),
                b"id" if !seen_id => {
                    if c.uint()? != id {
                        return None;
                    }
                    seen_id = true;
                }
                _ => return None,
            }
            if !c.next_member()? {
                break;
            }
        }
        c.ws();
        if c.i != m.len() || !seen_id {
            return None;
        }
        let (count, eof, text) = ret?;
        let text_bytes = &m[text.clone()];
        if text_bytes.is_empty() {
            return Some(ReadScan {
                count,
                eof,
                body: text,
                last: [0; 3],
                last_len: 0,
            });
        }
        // As `Base64Text::parse` in qga-proto does: whole groups, the body checked
        // with SIMD, the last group (which may hold padding) decoded by the careful
        // rules.
        if !text_bytes.len().is_multiple_of(4) {
            return None;
        }
        let split = text.end - 4;
        base64_simd::STANDARD_NO_PAD
            .check(&m[text.start..split])
            .ok()?;
        let last_group = Base64::decode(std::str::from_utf8(&m[split..text.end]).ok()?).ok()?;
        let mut last = [0u8; 3];
        last.get_mut(..last_group.len())?
            .copy_from_slice(&last_group);
        Some(ReadScan {
            count,
            eof,
            body: text.start..split,
            last,
            last_len: last_group.len(),
        })
    }

    /// Decodes the text into `out` (emptied first).
    fn decode(&self, m: &[u8], out: &mut Vec<u8>) -> Result<(), ClientError> {
        out.clear();
        base64_simd::STANDARD_NO_PAD
            .decode_append(&m[self.body.clone()], out)
            // Checked by `parse`: not expected.
            .map_err(|e| ClientError::Protocol(format!("guest-file-read reply: {e}")))?;
        out.extend_from_slice(&self.last[..self.last_len]);
        Ok(())
    }
}

/// What [`StreamScan::advance`] made of the bytes so far.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// The whole reply, ending at `end` in the buffer, checked: decoding it as
    /// `scan` says cannot fail.
    Done { end: usize, scan: ReadScan },
    /// A plain reply so far, not complete yet.
    More,
    /// Not a reply this scan takes: leave the bytes to the framer.
    Other,
}

/// A guest-file-read reply to our request, taken off the stream as it arrives the
/// way [`ReadScan::parse`] takes a framed one: JSON whitespace, then an object with
/// exactly `return` and `id` (ours, a plain integer), `return` with exactly
/// `count`, `eof` and `buf-b64` (in any order, with any JSON whitespace), the text
/// whole base64 groups with padding only in the last.
///
/// The text's whole groups are checked (SIMD) as they come, one group held back
/// until the end is known, so that the last one goes through the careful rules; the
/// end (the closing quote) is where a check first fails, found with `memchr` in
/// that piece only. Decoding is left for later ([`ReadScan::decode`]): the next
/// read can go out first. Whatever deviates, whenever it shows, is `Other`: the
/// bytes are all still in the buffer, and the framer takes them as usual.
///
/// What it takes is what the framer would hand out as one message (printable ASCII
/// tokens of a two-level object with JSON whitespace between them: no 0xFF, no
/// control byte, no bracket inside a string), and what the ordinary path makes of
/// that message (`interpret`, then typing as [`GuestFileReadResult`]) is the same
/// count, eof and bytes.
#[derive(Debug, Default)]
struct StreamScan {
    /// Where the text starts in the buffer, once the head is read.
    text: Option<usize>,
    /// What the head held besides the text.
    head: Members,
    /// Text bytes checked so far (whole groups of the alphabet).
    checked: usize,
    /// Where the text ends (its closing quote), once found.
    text_end: Option<usize>,
}

/// The members of a read reply seen so far.
#[derive(Debug, Default, Clone, Copy)]
struct Members {
    count: Option<i64>,
    eof: Option<bool>,
    id: bool,
}

/// What a failed step means: the bytes may only be cut short (`More`), or they are
/// something else (`Other`).
fn failed(c: &Scanner<'_>) -> Step {
    if c.at_end() {
        Step::More
    } else {
        Step::Other
    }
}

impl StreamScan {
    /// Takes what `buf` holds now.
    fn advance(&mut self, buf: &[u8], id: u64) -> Step {
        let text = match self.text {
            Some(t) => t,
            None => match Self::head(buf, id) {
                Ok((t, head)) => {
                    self.text = Some(t);
                    self.head = head;
                    t
                }
                Err(step) => return step,
            },
        };
        // The framer refuses a message over the limit: so does this, through it.
        if buf.len() - text > MAX_REPLY {
            return Step::Other;
        }
        if self.text_end.is_none() {
            // The whole groups that came but the last (it may be the text's last,
            // padded): all of the alphabet, none can be the closing quote.
            let upto = ((buf.len() - text) / 4 * 4).saturating_sub(4);
            let mut clean = true;
            if upto > self.checked {
                let piece = &buf[text + self.checked..text + upto];
                clean = base64_simd::STANDARD_NO_PAD.check(piece).is_ok();
                if clean {
                    self.checked = upto;
                }
            }
            // The end is after what was checked: in the last few bytes, or in the
            // piece that failed the check (else that piece is no base64).
            let from = text + self.checked;
            match memchr::memchr2(b'"', b'\\', &buf[from..]) {
                Some(k) if buf[from + k] == b'"' => self.text_end = Some(from + k),
                Some(_) => return Step::Other,
                None if !clean => return Step::Other,
                None => return Step::More,
            }
        }
        let Some(end) = self.text_end else {
            return Step::More;
        };
        let len = end - text;
        if !len.is_multiple_of(4) {
            return Step::Other;
        }
        let body = len.saturating_sub(4);
        if body > self.checked {
            if base64_simd::STANDARD_NO_PAD
                .check(&buf[text + self.checked..text + body])
                .is_err()
            {
                return Step::Other;
            }
            self.checked = body;
        }
        let mut last = [0u8; 3];
        let mut last_len = 0;
        if len > 0 {
            let group = std::str::from_utf8(&buf[end - 4..end])
                .ok()
                .and_then(|g| Base64::decode(g).ok());
            match group {
                Some(g) if g.len() <= 3 => {
                    last[..g.len()].copy_from_slice(&g);
                    last_len = g.len();
                }
                _ => return Step::Other,
            }
        }
        match self.tail(buf, end + 1, id) {
            Ok((msg_end, count, eof)) => Step::Done {
                end: msg_end,
                scan: ReadScan {
                    count,
                    eof,
                    body: text..text + body,
                    last,
                    last_len,
                },
            },
            Err(step) => step,
        }
    }

    /// Reads the head, up to the text's opening quote: where the text starts and
    /// the members seen before it; or how it failed.
    fn head(buf: &[u8], id: u64) -> Result<(usize, Members), Step> {
        let mut c = Scanner { b: buf, i: 0 };
        let mut m = Members::default();
        c.ws();
        c.byte(b'{').ok_or_else(|| failed(&c))?;
        loop {
            match c.key().ok_or_else(|| failed(&c))? {
                b"id" if !m.id => {
                    let n = c.uint().ok_or_else(|| failed(&c))?;
                    if c.at_end() {
                        return Err(Step::More);
                    }
                    if n != id {
                        return Err(Step::Other);
                    }
                    m.id = true;
                }
                b"return" => break,
                _ => return Err(Step::Other),
            }
            if !c.next_member().ok_or_else(|| failed(&c))? {
                return Err(Step::Other);
            }
        }
        c.byte(b'{').ok_or_else(|| failed(&c))?;
        loop {
            match c.key().ok_or_else(|| failed(&c))? {
                b"count" if m.count.is_none() => {
                    let n = c.uint().ok_or_else(|| failed(&c))?;
                    if c.at_end() {
                        return Err(Step::More);
                    }
                    m.count = Some(i64::try_from(n).map_err(|_| Step::Other)?);
                }
                b"eof" if m.eof.is_none() => {
                    m.eof = Some(c.boolean().ok_or_else(|| failed(&c))?);
                }
                b"buf-b64" => {
                    c.byte(b'"').ok_or_else(|| failed(&c))?;
                    return Ok((c.i, m));
                }
                _ => return Err(Step::Other),
            }
            if !c.next_member().ok_or_else(|| failed(&c))? {
                return Err(Step::Other);
            }
        }
    }

    /// Reads the rest, from just after the text's closing quote (`from`).
    fn tail(&self, buf: &[u8], from: usize, id: u64) -> Result<(usize, i64, bool), Step> {
        let mut c = Scanner { b: buf, i: from };
        let mut m = self.head;
        // The rest of `return`, then the rest of the reply.
        for in_return in [true, false] {
            loop {
                match c.next_member() {
                    Some(true) => {}
                    Some(false) => break,
                    None => return Err(failed(&c)),
                }
                let Some(key) = c.key() else {
                    return Err(failed(&c));
                };
                match (in_return, key) {
                    (true, b"count") if m.count.is_none() => {
                        let Some(n) = c.uint() else {
                            return Err(failed(&c));
                        };
                        if c.at_end() {
                            return Err(Step::More);
                        }
                        let Ok(n) = i64::try_from(n) else {
                            return Err(Step::Other);
                        };
                        m.count = Some(n);
                    }
                    (true, b"eof") if m.eof.is_none() => {
                        let Some(b) = c.boolean() else {
                            return Err(failed(&c));
                        };
                        m.eof = Some(b);
                    }
                    (false, b"id") if !m.id => {
                        let Some(n) = c.uint() else {
                            return Err(failed(&c));
                        };
                        if c.at_end() {
                            return Err(Step::More);
                        }
                        if n != id {
                            return Err(Step::Other);
                        }
                        m.id = true;
                    }
                    _ => return Err(Step::Other),
                }
            }
        }
        match (m.count, m.eof, m.id) {
            (Some(count), Some(eof), true) => Ok((c.i, count, eof)),
            _ => Err(Step::Other),
        }
    }
}

/// A cursor over a message for [`ReadScan`] and [`StreamScan`]: each step takes one token of
/// the expected shape, or fails (`None`).
struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    /// Whether everything was read: a step that failed here may only lack bytes.
    fn at_end(&self) -> bool {
        self.i >= self.b.len()
    }

    fn ws(&mut self) {
        while matches!(self.b.get(self.i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn byte(&mut self, want: u8) -> Option<()> {
        (self.b.get(self.i) == Some(&want)).then(|| self.i += 1)
    }

    /// A string without escapes: its content's range.
    fn string(&mut self) -> Option<Range<usize>> {
        self.byte(b'"')?;
        let start = self.i;
        let Some(len) = memchr::memchr2(b'"', b'\\', &self.b[start..]) else {
            // Cut short by the end of the bytes so far.
            self.i = self.b.len();
            return None;
        };
        let end = start + len;
        if self.b[end] != b'"' {
            return None;
        }
        self.i = end + 1;
        Some(start..end)
    }

    /// A member's key and its colon (whitespace around them skipped).
    fn key(&mut self) -> Option<&'a [u8]> {
        self.ws();
        let r = self.string()?;
        self.ws();
        self.byte(b':')?;
        self.ws();
        // Keys we take are plain ASCII names: anything with an escape or a control
        // byte matches none of them.
        let b = self.b;
        Some(&b[r])
    }

    /// After a member: `true` at a comma (another member follows), `false` at the
    /// closing brace.
    fn next_member(&mut self) -> Option<bool> {
        self.ws();
        match self.b.get(self.i)? {
            b',' => {
                self.i += 1;
                Some(true)
            }
            b'}' => {
                self.i += 1;
                Some(false)
            }
            _ => None,
        }
    }

    /// A non-negative integer in plain JSON form (no sign, fraction, exponent or
    /// leading zero; what follows must end the value, which `next_member` checks).
    fn uint(&mut self) -> Option<u64> {
        let start = self.i;
        let mut v: u64 = 0;
        while let Some(d @ b'0'..=b'9') = self.b.get(self.i) {
            v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
            self.i += 1;
        }
        let len = self.i - start;
        if len == 0 || (len > 1 && self.b[start] == b'0') {
            return None;
        }
        Some(v)
    }

    fn boolean(&mut self) -> Option<bool> {
        let rest = &self.b[self.i..];
        if rest.starts_with(b"true") {
            self.i += 4;
            Some(true)
        } else if rest.starts_with(b"false") {
            self.i += 5;
            Some(false)
        } else {
            if b"true".starts_with(rest) || b"false".starts_with(rest) {
                // Cut short by the end of the bytes so far.
                self.i = self.b.len();
            }
            None
        }
    }

    /// guest-file-read's `return` object: count, eof and the base64 text's range.
    fn read_result(&mut self) -> Option<(i64, bool, Range<usize>)> {
        self.byte(b'{')?;
        let (mut count, mut eof, mut text) = (None, None, None);
        loop {
            match self.key()? {
                b"count" if count.is_none() => count = Some(i64::try_from(self.uint()?).ok()?),
                b"buf-b64" if text.is_none() => text = Some(self.string()?),
                b"eof" if eof.is_none() => eof = Some(self.boolean()?),
                _ => return None,
            }
            if !self.next_member()? {
                break;
            }
        }
        Some((count?, eof?, text?))
    }
}

#[cfg(test)]
mod tests {
    use super::super::interpret;
    use super::*;

    /// What the ordinary path makes of a reply to the read carrying `id`:
    /// `None` when it skips the message, else count, eof and the bytes, or that
    /// it fails.
    /// Count, eof and data of a read reply.
    type Read = (i64, bool, Vec<u8>);

    fn ordinary(m: &[u8], id: u64) -> Option<Result<Read, ()>> {
        let r = interpret(m, &Value::from(id))?;
        Some(
            r.result
                .map_err(|_| ())
                .and_then(|v| serde_json::from_value::<GuestFileReadResult>(v).map_err(|_| ()))
                .map(|r| (r.count, r.eof, r.buf_b64.0)),
        )
    }

    fn fast(m: &[u8], id: u64) -> Option<Read> {
        let scan = ReadScan::parse(m, id)?;
        let mut out = Vec::new();
        scan.decode(m, &mut out).unwrap();
        Some((scan.count, scan.eof, out))
    }

    /// Whatever the fast path takes, the ordinary path answers the same way.
    fn agree(m: &[u8], id: u64) -> bool {
        let f = fast(m, id);
        if let Some(f) = &f {
            assert_eq!(
                ordinary(m, id),
                Some(Ok(f.clone())),
                "{}",
                String::from_utf8_lossy(m)
            );
        }
        f.is_some()
    }

    #[test]
    fn plain_replies_of_both_agents_take_the_fast_path() {
        // Ours (compact) and qemu-ga 7.2 (spaced, its own member order).
        assert!(agree(
            br#"{"return":{"count":5,"buf-b64":"aGVsbG8=","eof":false},"id":42}"#,
            42
        ));
        assert!(agree(
            b"{\"return\": {\"buf-b64\": \"aGVsbG8=\", \"count\": 5, \"eof\": true}, \"id\": 42}",
            42
        ));
        assert!(agree(
            b" {\n\"id\" : 42 ,\t\"return\":{\"eof\":false,\"count\":0,\"buf-b64\":\"\"}\r} ",
            42
        ));
        assert!(agree(
            br#"{"return":{"count":2,"buf-b64":"aGk=","eof":true},"id":0}"#,
            0
        ));
        let (count, eof, data) = fast(
            br#"{"return":{"count":6,"buf-b64":"AAECAwQF","eof":false},"id":7}"#,
            7,
        )
        .unwrap();
        assert_eq!((count, eof, data), (6, false, vec![0, 1, 2, 3, 4, 5]));
    }

    #[test]
    fn anything_unusual_goes_the_ordinary_way() {
        for m in [
            // Another id, or ours in another form.
            &br#"{"return":{"count":5,"buf-b64":"aGVsbG8=","eof":false},"id":43}"#[..],
            br#"{"return":{"count":5,"buf-b64":"aGVsbG8=","eof":false},"id":"42"}"#,
            br#"{"return":{"count":5,"buf-b64":"aGVsbG8=","eof":false},"id":42.0}"#,
            br#"{"return":{"count":5,"buf-b64":"aGVsbG8=","eof":false},"id":042}"#,
            br#"{"return":{"count":5,"buf-b64":"aGVsbG8=","eof":false},"id":4.2e1}"#,
            br#"{"return":{"count":5,"buf-b64":"aGVsbG8=","eof":false}}"#,
            // Errors, duplicates, extra members.
            br#"{"error":{"class":"GenericError","desc":"no"},"id":42}"#,
            br#"{"return":{"count":5,"buf-b64":"aGVsbG8=","eof":false},"id":42,"id":42}"#,
            br#"{"return":{"count":5,"buf-b64":"aGVsbG8=","eof":false},"return":{},"id":42}"#,
            br#"{"return":{"count":5,"count":5,"buf-b64":"aGVsbG8=","eof":false},"id":42}"#,
            br#"{"return":{"count":5,"buf-b64":"aGVsbG8=","eof":false,"x":1},"id":42}"#,
            br#"{"return":{"count":5,"buf-b64":"aGVsbG8=","eof":false},"id":42,"x":1}"#,
            br#"{"return":{"count":5,"buf-b64":"aGVsbG8="},"id":42}"#,
            // Numbers and literals out of the plain form.
            br#"{"return":{"count":-5,"buf-b64":"aGVsbG8=","eof":false},"id":42}"#,
            br#"{"return":{"count":5.0,"buf-b64":"aGVsbG8=","eof":false},"id":42}"#,
            br#"{"return":{"count":9223372036854775808,"buf-b64":"","eof":false},"id":42}"#,
            br#"{"return":{"count":5,"buf-b64":"aGVsbG8=","eof":falsey},"id":42}"#,
            br#"{"return":{"count":5,"buf-b64":"aGVsbG8=","eof":null},"id":42}"#,
            // Escapes, bad or unusual base64.
            br#"{"return":{"count":5,"buf-b64":"aGVs\/bG8=","eof":false},"id":42}"#,
            br#"{"return":{"count":5,"buf-b64":"aGVsbG8","eof":false},"id":42}"#,
            br#"{"return":{"count":5,"buf-b64":"aGV=bG8=","eof":false},"id":42}"#,
            br#"{"return":{"count":5,"buf-b64":"aGVs!G8=","eof":false},"id":42}"#,
            b"{\"return\":{\"count\":5,\"buf-b64\":\"aGVs\x01G8=\",\"eof\":false},\"id\":42}",
            b"{\"return\":{\"count\":5,\"buf-b64\":\"aGVs\xffG8=\",\"eof\":false},\"id\":42}",
            b"{\"return\":{\"count\":5,\"buf-b64\":\"aGVsbG8=\xff\",\"eof\":false},\"id\":42}",
            // Not a whole object, or more than one.
            br#"{"return":{"count":5,"buf-b64":"aGVsbG8=","eof":false},"id":42"#,
            br#"{"return":{"count":5,"buf-b64":"aGVsbG8=","eof":false},"id":42}}"#,
            br#"{"return":{"count":5,"buf-b64":"aGVsbG8=","eof":false},"id":42} {}"#,
            br#"[{"return":{"count":5,"buf-b64":"aGVsbG8=","eof":false},"id":42}]"#,
            br#"{}"#,
            b"",
        ] {
            assert!(!agree(m, 42), "taken: {}", String::from_utf8_lossy(m));
        }
    }

    #[test]
    fn the_last_group_follows_the_careful_rules() {
        // Padding and stray bits in the last group, as the careful path takes them.
        for text in [
            "aGk=", "aGl=", "aA==", "aB==", "AAAA", "aGVsbG8=", "aGVsbA==",
        ] {
            let m = format!(r#"{{"return":{{"count":1,"buf-b64":"{text}","eof":false}},"id":1}}"#);
            let _ = agree(m.as_bytes(), 1);
        }
        for text in ["====", "a===", "AAA", "=AAA", "AA=A"] {
            let m = format!(r#"{{"return":{{"count":1,"buf-b64":"{text}","eof":false}},"id":1}}"#);
            assert!(!agree(m.as_bytes(), 1), "{text}");
        }
    }

    #[test]
    fn large_payloads_decode_to_their_bytes() {
        let data: Vec<u8> = (0..300_001u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut m = br#"{"return":{"count":300001,"buf-b64":""#.to_vec();
        base64_simd::STANDARD.encode_append(&data, &mut m);
        m.extend_from_slice(br#"","eof":true},"id":9}"#);
        assert_eq!(fast(&m, 9), Some((300_001, true, data)));
        assert!(agree(&m, 9));
    }

    /// Feeds `m` (then `after`, the start of whatever follows it) to a stream scan
    /// cut at `cuts`; returns the last step and the decoded bytes. A scan that
    /// gives up stays given up (the caller hands the bytes to the framer).
    fn streamed(m: &[u8], after: &[u8], cuts: &[usize], id: u64) -> (Streamed, Vec<u8>) {
        let mut scan = StreamScan::default();
        let mut all = m.to_vec();
        all.extend_from_slice(after);
        let mut step = Step::More;
        for &k in cuts {
            step = scan.advance(&all[..k.min(all.len())], id);
            if step != Step::More {
                break;
            }
        }
        if step == Step::More {
            step = scan.advance(&all, id);
        }
        match step {
            Step::Done { end, scan } => {
                let mut out = Vec::new();
                scan.decode(&all[..end], &mut out).unwrap();
                (
                    Streamed::Done {
                        end,
                        count: scan.count,
                        eof: scan.eof,
                    },
                    out,
                )
            }
            Step::More => (Streamed::More, Vec::new()),
            Step::Other => (Streamed::Other, Vec::new()),
        }
    }

    /// A stream scan's outcome, with the reply's count and eof.
    #[derive(Debug, PartialEq, Eq)]
    enum Streamed {
        Done { end: usize, count: i64, eof: bool },
        More,
        Other,
    }

    /// Streamed at every cut (or a spread of them for long messages), `m` is taken
    /// whole with the ordinary path's answer when `plain`, and otherwise never taken
    /// with another answer than the ordinary path's.
    fn check_streamed(m: &[u8], id: u64, plain: bool) {
        let cuts: Vec<usize> = if m.len() <= 300 {
            (0..=m.len()).collect()
        } else {
            (0..=m.len())
                .step_by(m.len() / 97)
                .chain([m.len() - 1])
                .collect()
        };
        let text = String::from_utf8_lossy(&m[..m.len().min(200)]).into_owned();
        for after in [&b""[..], b"\n", b"\n{\"return\":{}}\n"] {
            for &k in &cuts {
                for cuts in [&[k][..], &[k / 2, k]] {
                    let (step, out) = streamed(m, after, cuts, id);
                    match step {
                        Streamed::Done { end, count, eof } => {
                            assert_eq!(end, m.len(), "{text} cut at {cuts:?}");
                            assert_eq!(
                                ordinary(m, id),
                                Some(Ok((count, eof, out))),
                                "{text} cut at {cuts:?}"
                            );
                        }
                        Streamed::Other => assert!(!plain, "{text} refused, cut at {cuts:?}"),
                        Streamed::More => panic!("{text}: more wanted when all is there"),
                    }
                }
            }
        }
    }

    #[test]
    fn plain_replies_are_taken_off_the_stream_at_any_cut() {
        for m in [
            &br#"{"return":{"buf-b64":"aGVsbG8=","count":5,"eof":false},"id":42}"#[..],
            br#"{"return":{"count":5,"buf-b64":"aGVsbG8=","eof":false},"id":42}"#,
            b"{\"return\": {\"count\": 5, \"buf-b64\": \"aGVsbG8=\", \"eof\": true}, \"id\": 42}",
            b" \n{ \"id\" : 42 ,\t\"return\":{\"eof\":false,\"count\":0,\"buf-b64\":\"\"}\r}",
            br#"{"return":{"buf-b64":"aGk=","count":2,"eof":true},"id":42}"#,
            br#"{"return":{"buf-b64":"AAECAwQF","count":6,"eof":false},"id":42}"#,
            br#"{"return":{"buf-b64":"aGVsbA==","eof":true,"count":4},"id":42}"#,
        ] {
            check_streamed(m, 42, true);
        }
        let data: Vec<u8> = (0..30_000u32).map(|i| (i * 13 + i / 7) as u8).collect();
        let mut m = br#"{"return":{"buf-b64":""#.to_vec();
        base64_simd::STANDARD.encode_append(&data, &mut m);
        m.extend_from_slice(br#"","count":30000,"eof":false},"id":42}"#);
        check_streamed(&m, 42, true);
        let (step, out) = streamed(&m, b"\n", &[1000, 15_000, 39_000], 42);
        assert_eq!(
            (step, out),
            (
                Streamed::Done {
                    end: m.len(),
                    count: 30_000,
                    eof: false
                },
                data
            )
        );
    }

    #[test]
    fn anything_unusual_is_left_to_the_framer() {
        for m in [
            &br#"{"return":{"buf-b64":"aGVsbG8=","count":5,"eof":false},"id":43}"#[..],
            br#"{"id":43,"return":{"buf-b64":"aGVsbG8=","count":5,"eof":false}}"#,
            br#"{"return":{"buf-b64":"aGVsbG8=","count":5,"eof":false},"id":42.0}"#,
            br#"{"return":{"buf-b64":"aGVsbG8=","count":5,"eof":false},"id":420}"#,
            br#"{"return":{"buf-b64":"aGVsbG8=","count":5,"eof":false},"id":4}"#,
            br#"{"return":{"buf-b64":"aGVsbG8=","count":5,"eof":false}}"#,
            br#"{"error":{"class":"GenericError","desc":"no"},"id":42}"#,
            br#"{"return":{"buf-b64":"aGVsbG8=","count":5,"eof":false},"id":42,"id":42}"#,
            br#"{"return":{"buf-b64":"aGVsbG8=","count":5,"count":5,"eof":false},"id":42}"#,
            br#"{"return":{"buf-b64":"aGVsbG8=","count":5,"eof":false,"x":1},"id":42}"#,
            br#"{"return":{"buf-b64":"aGVsbG8=","count":5,"eof":false},"x":1,"id":42}"#,
            br#"{"return":{"buf-b64":"aGVsbG8=","eof":false},"id":42}"#,
            br#"{"return":{"buf-b64":"aGVsbG8=","count":-5,"eof":false},"id":42}"#,
            br#"{"return":{"buf-b64":"aGVsbG8=","count":5.0,"eof":false},"id":42}"#,
            br#"{"return":{"buf-b64":"aGVsbG8=","count":5,"eof":nope},"id":42}"#,
            br#"{"return":{"buf-b64":"aGVs\/bG8=","count":5,"eof":false},"id":42}"#,
            br#"{"return":{"buf-b64":"aGVsbG8","count":5,"eof":false},"id":42}"#,
            br#"{"return":{"buf-b64":"aGV=bG8=","count":5,"eof":false},"id":42}"#,
            br#"{"return":{"buf-b64":"a===","count":5,"eof":false},"id":42}"#,
            br#"{"return":{"buf-b64":"aGVs!G8=","count":5,"eof":false},"id":42}"#,
            b"{\"return\":{\"buf-b64\":\"aGVs\x01G8=\",\"count\":5,\"eof\":false},\"id\":42}",
            b"{\"return\":{\"buf-b64\":\"aGVs\xffG8=\",\"count\":5,\"eof\":false},\"id\":42}",
            b"{\"return\":{\"buf-b64\":\"aGVsbG8=\",\"count\":5,\"eof\":false},\"id\":42\xff}",
            b"\xff{\"return\":{\"buf-b64\":\"aGVsbG8=\",\"count\":5,\"eof\":false},\"id\":42}",
            br#"{"return":{"buf-b64":"aGVsbG8=","count":5,"eof":false},"id":42]"#,
            br#"[{"return":{"buf-b64":"aGVsbG8=","count":5,"eof":false},"id":42}]"#,
            br#"{"return":{"buf-b64":"aGVsbG8=","count":5,"eof":false}},"id":42}"#,
            br#"{"return":{},"id":42}"#,
            br#"{"return":[],"id":42}"#,
            br#""return""#,
            br#"x{"return":{"buf-b64":"aGVsbG8=","count":5,"eof":false},"id":42}"#,
        ] {
            check_streamed(m, 42, false);
        }
    }

    #[test]
    fn write_requests_are_what_serde_would_send() {
        for data in [&b""[..], b"h", b"hi", b"hey", &[0xff; 1000]] {
            let mut req = Vec::new();
            write_request(&mut req, 1000, data);
            writeln!(req, ",\"id\":77}}").unwrap();
            assert_eq!(req.last(), Some(&b'\n'));
            let v: Value = serde_json::from_slice(&req).unwrap();
            let cmd = GuestFileWrite {
                handle: 1000,
                buf_b64: Base64(data.to_vec()),
                count: None,
            };
            let id = Value::from(77u64);
            let want = serde_json::to_value(qga_proto::Execute::command(&cmd, Some(&id))).unwrap();
            assert_eq!(v, want);
        }
    }
}
