//! Whole-file copies out of and into the guest: guest-file-open, guest-file-read or
//! guest-file-write in chunks, guest-file-close.
//!
//! These move every payload byte of a transfer, so their hot path stays off
//! serde_json: a read reply is recognised by a strict scanner that takes only the
//! plain shape of a successful reply to our request (anything else goes the ordinary
//! way, with the ordinary answer), its base64 is checked and decoded with SIMD
//! straight from the read buffer, and a write request is assembled by hand with the
//! payload encoded (SIMD again) straight into it. One request is in flight at a
//! time, as with every other call, but the next one is never waited for: a read's
//! next request goes out as soon as its reply is in, so the agent reads the next
//! chunk while this one is decoded and handed over, and a write's next request is
//! read from the source and encoded while the agent handles this one.

use std::io::Write as _;
use std::ops::Range;

use bytes::Bytes;
use qga_proto::GuestFileWriteResult;
use qga_proto::{Base64, Command, GuestFileRead, GuestFileReadResult, GuestFileWrite};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::{Answer, Client, Progress, Reply, MAX_CHUNK, MAX_WRITE_CHUNK};
use crate::ClientError;

/// A request on the wire, waiting for its reply.
struct Sent {
    id: u64,
    deadline: Instant,
}

/// The answer to a guest-file-read.
enum ReadReply {
    /// Taken by the fast path: the message and where its parts are.
    Fast(Bytes, ReadScan),
    /// Read the ordinary way.
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
    /// Errors are those of the calls it makes ([`ClientError::Agent`] for a refusal,
    /// [`ClientError::Protocol`] for a reply that makes no sense or a short write,
    /// and so on), and [`ClientError::Local`] when reading `src` fails. The handle is
    /// closed whatever happened (the first error is the one returned); what was
    /// written before an error stays in the guest file. The next chunk is read from
    /// `src` and encoded while the agent handles the current one.
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
        let mut len = fill(src, &mut data).await?;
        if len > 0 {
            write_request(&mut req, handle, &data[..len]);
        }
        let mut done = 0u64;
        while len > 0 {
            let sent = self.send_write(&mut req).await?;
            let sent_len = len;
            // Read and encode the next chunk while the agent decodes and writes
            // this one (the request is on its way: its buffer is free).
            len = fill(src, &mut data).await?;
            if len > 0 {
                write_request(&mut req, handle, &data[..len]);
            }
            let w = self.write_reply(&sent).await?;
            if usize::try_from(w.count).ok() != Some(sent_len) {
                return Err(ClientError::Protocol(format!(
                    "short write: {} of {sent_len} bytes",
                    w.count
                )));
            }
            done += sent_len as u64;
            if let Some(p) = progress.as_mut() {
                p(done, total);
            }
        }
        self.file_flush(handle).await?;
        Ok(done)
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

    /// Waits for the answer to the read `req` of `count` bytes.
    async fn read_reply(&mut self, req: &Sent, count: usize) -> Result<ReadReply, ClientError> {
        // The reply is about 4/3 of the data: room for it at once.
        self.reply_hint = count.div_ceil(3) * 4 + 256;
        let id = Value::from(req.id);
        let answer = tokio::time::timeout_at(
            req.deadline,
            self.reply_or_fast(&id, |m| ReadScan::parse(m, req.id)),
        )
        .await;
        self.reply_hint = 0;
        match answer {
            Err(_) => Err(ClientError::Timeout),
            Ok(Err(e)) => Err(e),
            Ok(Ok(Answer::Fast(m, scan))) => {
                self.dirty = false;
                Ok(ReadReply::Fast(m, scan))
            }
            Ok(Ok(Answer::Reply(r))) => self.typed(r).map(ReadReply::Typed),
        }
    }

    /// Sends the guest-file-write in `req` (built by [`write_request`]), with a
    /// fresh id appended.
    async fn send_write(&mut self, req: &mut Vec<u8>) -> Result<Sent, ClientError> {
        let start = Instant::now();
        let deadline = start + self.timeouts.for_command(GuestFileWrite::NAME);
        let id = self.begin_request(start, deadline).await?;
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
        if text_bytes.len() % 4 != 0 {
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

/// A cursor over a message for [`ReadScan::parse`]: each step takes one token of
/// the expected shape, or fails (`None`).
struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl Scanner<'_> {
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
        let len = memchr::memchr2(b'"', b'\\', &self.b[start..])?;
        let end = start + len;
        if self.b[end] != b'"' {
            return None;
        }
        self.i = end + 1;
        Some(start..end)
    }

    /// A member's key and its colon (whitespace around them skipped).
    fn key(&mut self) -> Option<&[u8]> {
        self.ws();
        let r = self.string()?;
        self.ws();
        self.byte(b':')?;
        self.ws();
        // Keys we take are plain ASCII names: anything with an escape or a control
        // byte matches none of them.
        Some(&self.b[r])
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
    fn ordinary(m: &[u8], id: u64) -> Option<Result<(i64, bool, Vec<u8>), ()>> {
        let r = interpret(m, &Value::from(id))?;
        Some(
            r.result
                .map_err(|_| ())
                .and_then(|v| serde_json::from_value::<GuestFileReadResult>(v).map_err(|_| ()))
                .map(|r| (r.count, r.eof, r.buf_b64.0)),
        )
    }

    fn fast(m: &[u8], id: u64) -> Option<(i64, bool, Vec<u8>)> {
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
