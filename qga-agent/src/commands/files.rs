//! guest-file-*: the handle table and the two hot paths. guest-file-read bypasses
//! the typed path and encodes file data straight into the reply buffer, a piece at a
//! time as the connection takes it when the read is large and the channel streams;
//! guest-file-write looks the handle up before it reports bad base64, as qemu-ga.

use std::path::Path;

use bytes::BytesMut;
use qga_ops::GuestFile;
use qga_proto::*;

use super::ops_err;
use crate::dispatcher::{reply, Context, MAX_READ_COUNT};
use crate::registry::Registry;

pub(super) fn register(r: &mut Registry) {
    r.register(open)
        .register(close)
        .register_raw::<GuestFileRead>(Box::new(read_reply))
        .register_stock_file_write(Box::new(write_reply))
        .register(seek)
        .register(flush);
}

fn handle_not_found(handle: i64) -> QgaError {
    QgaError::generic(format!("handle '{handle}' has not been found"))
}

fn invalid_count(count: i64) -> QgaError {
    QgaError::generic(format!("value '{count}' is invalid for argument count"))
}

impl Context {
    fn file(&mut self, handle: i64) -> Result<&mut Box<dyn GuestFile>, QgaError> {
        self.handles
            .get_mut(&handle)
            .ok_or_else(|| handle_not_found(handle))
    }
}

fn open(ctx: &mut Context, c: GuestFileOpen) -> Result<i64, QgaError> {
    let mode = c.mode.as_deref().unwrap_or("r");
    let file = ctx
        .ops
        .files
        .open(Path::new(&c.path), mode)
        .map_err(ops_err)?;
    let handle = ctx.next_handle;
    let Some(next) = handle.checked_add(1) else {
        let _ = file.close();
        return Err(QgaError::generic("no file handles left"));
    };
    // Persist before replying, so a restarted agent never reuses this handle.
    if let Err(e) = ctx.state.store_counter(next) {
        let _ = file.close();
        // The real cause, e.g. `Too many open files` when the open took the last
        // descriptor (7.2 says only the first half).
        return Err(QgaError::generic(format!(
            "failed to commit persistent state to disk: {}",
            e.reason()
        )));
    }
    ctx.next_handle = next;
    ctx.handles.insert(handle, file);
    Ok(handle)
}

fn close(ctx: &mut Context, c: GuestFileClose) -> Result<Empty, QgaError> {
    let file = ctx
        .handles
        .remove(&c.handle)
        .ok_or_else(|| handle_not_found(c.handle))?;
    file.close().map_err(ops_err)?;
    Ok(Empty {})
}

/// Bytes of file data per piece of guest-file-read: a multiple of 3 (so the pieces'
/// base64 concatenates) small enough that the piece and its text stay in the CPU's
/// cache between the read, the encoding and the next piece.
pub(crate) const READ_PIECE: usize = 192 * 1024;

/// Reads of more than this are streamed when the caller allows it
/// ([`Context::streaming`]): the reply is produced a piece at a time as the
/// connection takes it.
const STREAM_ABOVE: usize = 2 * READ_PIECE;

/// guest-file-read, written straight into `out`: the file is read a piece at a time
/// into the context's scratch buffer (kept across requests), and each piece is
/// base64-encoded with SIMD straight into the reply. No intermediate string, no
/// escaping pass over the payload. The reply grows with what was read (never by
/// more than one piece's text or twice what it holds), not with the count: a
/// 48 MiB count on a 10-byte file reserves a few bytes.
///
/// When the channel allows it and the count is over [`STREAM_ABOVE`], only the
/// first piece is read here and the rest of the reply is left to
/// [`Context::continue_read`], which the channel calls as the host takes what went
/// before: the reply's text never sits whole in memory, and each piece's text is
/// still in the CPU's cache when it is written out.
fn read_reply(ctx: &mut Context, req: &Request<'_>, out: &mut BytesMut) {
    let id = req.id.clone();
    let cmd = match GuestFileRead::from_arguments(req.arguments) {
        Ok(c) => c,
        Err(e) => return reply::<Empty>(out, Err(e.into()), id, false),
    };
    let Some(file) = ctx.handles.get_mut(&cmd.handle) else {
        return reply::<Empty>(out, Err(handle_not_found(cmd.handle)), id, false);
    };
    let count = cmd.count.unwrap_or(4096);
    if !(0..=MAX_READ_COUNT).contains(&count) {
        return reply::<Empty>(out, Err(invalid_count(count)), id, false);
    }
    let count = count as usize;
    // Encoded before any data is read: a reply that cannot end loses nothing.
    let id_text = match id.as_ref().map(serde_json::to_vec).transpose() {
        Ok(t) => t,
        Err(_) => {
            let err = QgaError::generic("failed to encode reply");
            return reply::<Empty>(out, Err(err), None, false);
        }
    };
    let start = out.len();
    out.extend_from_slice(b"{\"return\":{\"buf-b64\":\"");
    let first = if ctx.streaming && count > STREAM_ABOVE {
        READ_PIECE
    } else {
        count
    };
    let (total, eof) = match read_encoded(file.as_mut(), first, false, &mut ctx.file_buf, out) {
        Ok(r) => r,
        Err(e) => {
            out.truncate(start);
            return reply::<Empty>(out, Err(ops_err(e)), id, false);
        }
    };
    if total == first && first < count && !eof {
        ctx.read_tail = Some(ReadTail {
            handle: cmd.handle,
            left: count - total,
            total,
            id: id_text,
        });
        return;
    }
    end_read_reply(out, total, eof, id_text.as_deref());
}

/// The rest of a streamed guest-file-read reply (see [`read_reply`]): where the
/// file stands and what the reply still needs.
#[derive(Debug)]
pub(crate) struct ReadTail {
    handle: i64,
    /// Bytes still to read.
    left: usize,
    /// Bytes read, and sent as text, so far.
    total: usize,
    /// The request's id as JSON text.
    id: Option<Vec<u8>>,
}

impl Context {
    /// Appends the next piece of a streamed guest-file-read reply to `out`, or its
    /// end; returns whether the reply is complete. Once text has gone out the reply
    /// can only end as a read: an error after the first piece, or the handle closed
    /// meanwhile by another connection, ends it with the bytes read so far (eof
    /// false), as `read(2)` returns what it got before an error and reports the
    /// error on the next call. qemu-ga reports the error and drops the data.
    pub(crate) fn continue_read(&mut self, tail: &mut ReadTail, out: &mut BytesMut) -> bool {
        let want = tail.left.min(READ_PIECE);
        let read = match self.handles.get_mut(&tail.handle) {
            Some(file) => read_encoded(file.as_mut(), want, true, &mut self.file_buf, out).ok(),
            None => None,
        };
        let (n, eof) = read.unwrap_or((0, false));
        tail.total += n;
        tail.left -= n;
        if read.is_some() && n == want && tail.left > 0 && !eof {
            return false;
        }
        end_read_reply(out, tail.total, eof, tail.id.as_deref());
        true
    }
}

/// Ends a guest-file-read reply whose text is in `out`.
fn end_read_reply(out: &mut BytesMut, total: usize, eof: bool, id: Option<&[u8]>) {
    out.extend_from_slice(b"\",\"count\":");
    // By hand rather than through `fmt` (callgrind: ~400 instructions a reply).
    out.extend_from_slice(itoa::Buffer::new().format(total).as_bytes());
    out.extend_from_slice(if eof {
        b",\"eof\":true}"
    } else {
        b",\"eof\":false}"
    });
    if let Some(id) = id {
        out.extend_from_slice(b",\"id\":");
        out.extend_from_slice(id);
    }
    out.extend_from_slice(b"}\n");
}

/// Reads up to `count` bytes of `file` piece by piece through `scratch` and appends
/// their base64 to `out`; returns the bytes read and the end-of-file flag, as one
/// read of `count` bytes would report them. `continuing`: this request already got
/// data (see [`GuestFile::read_into`]).
fn read_encoded(
    file: &mut dyn GuestFile,
    count: usize,
    continuing: bool,
    scratch: &mut Vec<u8>,
    out: &mut BytesMut,
) -> Result<(usize, bool), qga_ops::OpsError> {
    let (mut total, mut eof) = (0usize, false);
    while total < count {
        let want = (count - total).min(READ_PIECE);
        // Grown once, then reused as it is: no zeroing per piece.
        if scratch.len() < want {
            scratch.resize(want, 0);
        }
        let (n, e) = file.read_into(&mut scratch[..want], continuing || total > 0)?;
        eof = e;
        // Room for this piece's text, plus the reply's tail; `reserve` at least
        // doubles when it must grow, so growing piece by piece stays linear.
        let len = Base64::encoded_len(n);
        out.reserve(len + 128);
        // Encoded straight into the spare capacity: no zeroing pass first.
        let written = Base64::encode_to_uninit(&scratch[..n], out.spare_capacity_mut())
            .map_or(0, |text| text.len());
        // SAFETY: the encoder initialised the first `written` bytes of the spare
        // capacity (the text it returned starts there).
        unsafe { out.set_len(out.len() + written) };
        total += n;
        if n < want || eof {
            break;
        }
    }
    Ok((total, eof))
}

/// guest-file-write (the full path; the dispatcher's fast path ends in
/// [`Context::file_write_parsed`]): the payload is checked first (bad base64 writes
/// nothing), then decoded piece by piece into a buffer kept across requests, each
/// piece written as it comes: past 1 MiB, the request buffer is the only full-size
/// copy of the data.
fn write_reply(ctx: &mut Context, req: &Request<'_>, out: &mut BytesMut) {
    let id = req.id.clone();
    let result = match GuestFileWrite::borrowed_arguments(req.arguments) {
        Ok(args) => write(ctx, &args),
        Err(e) => Err(write_argument_error(ctx, req, e)),
    };
    reply(out, result, id, false);
}

impl Context {
    /// guest-file-write for a request [`Request::parse_file_write`] has read (the
    /// dispatcher's fast path): the same reply and the same writes as
    /// [`write_reply`] gives the same request.
    pub(crate) fn file_write_parsed(
        &mut self,
        id: Option<serde_json::Value>,
        args: GuestFileWriteArgs<'_>,
        out: &mut BytesMut,
    ) {
        let result = write(self, &args);
        // The buffer a payload was decoded into, for the next request.
        if let Some(buf) = args.buf_b64.into_scratch() {
            self.file_buf = buf;
        }
        reply(out, result, id, false);
    }
}

/// qemu-ga looks a file handle up before it decodes a payload, so an unknown handle
/// wins over bad base64.
fn write_argument_error(ctx: &Context, req: &Request<'_>, e: ArgumentError) -> QgaError {
    if e == ArgumentError::InvalidBase64 {
        #[derive(serde::Deserialize)]
        struct HandleOnly {
            handle: i64,
        }
        if let Some(h) = req
            .arguments
            .and_then(|a| serde_json::from_str::<HandleOnly>(a.get()).ok())
        {
            if !ctx.handles.contains_key(&h.handle) {
                return handle_not_found(h.handle);
            }
        }
    }
    e.into()
}

fn write(ctx: &mut Context, c: &GuestFileWriteArgs<'_>) -> Result<GuestFileWriteResult, QgaError> {
    let mut scratch = std::mem::take(&mut ctx.file_buf);
    let result = write_pieces(ctx, c, &mut scratch);
    // Kept for the next request (a piece, or a fast-path payload of up to 1 MiB),
    // until the channel loop releases it on a quiet connection.
    ctx.file_buf = scratch;
    result
}

fn write_pieces(
    ctx: &mut Context,
    c: &GuestFileWriteArgs<'_>,
    scratch: &mut Vec<u8>,
) -> Result<GuestFileWriteResult, QgaError> {
    let file = ctx.file(c.handle)?;
    let len = c.buf_b64.decoded_len();
    let count = c.count.unwrap_or(len as i64);
    if count < 0 || count as usize > len {
        return Err(invalid_count(count));
    }
    // One write(2) per piece; a short one (a non-blocking pipe that is full) ends
    // the request with what went through, as a single large write would.
    let (mut written, mut eof) = (0usize, false);
    c.buf_b64
        .decode_in_pieces(count as usize, scratch, |piece| {
            let w = file.write(piece).map_err(ops_err)?;
            written += w.count;
            eof = w.eof;
            Ok::<bool, QgaError>(w.count == piece.len())
        })?;
    Ok(GuestFileWriteResult {
        count: written as i64,
        eof,
    })
}

fn seek(ctx: &mut Context, c: GuestFileSeek) -> Result<GuestFileSeekResult, QgaError> {
    let file = ctx.file(c.handle)?;
    let whence = match c.whence.resolve().map_err(QgaError::generic)? {
        SeekOrigin::Set => qga_ops::Whence::Set,
        SeekOrigin::Cur => qga_ops::Whence::Cur,
        SeekOrigin::End => qga_ops::Whence::End,
    };
    let s = file.seek(c.offset, whence).map_err(ops_err)?;
    Ok(GuestFileSeekResult {
        position: s.position as i64,
        eof: s.eof,
    })
}

fn flush(ctx: &mut Context, c: GuestFileFlush) -> Result<Empty, QgaError> {
    ctx.file(c.handle)?.flush().map_err(ops_err)?;
    Ok(Empty {})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Dispatcher, DispatcherConfig, StateDir};
    use base64::Engine;

    fn dispatcher() -> Dispatcher {
        Dispatcher::new(
            qga_ops::Ops::linux(Default::default()),
            StateDir::in_memory(),
            DispatcherConfig::default(),
        )
        .unwrap()
    }

    fn raw(d: &mut Dispatcher, req: &str) -> BytesMut {
        let mut out = BytesMut::new();
        d.handle_message(req.as_bytes(), &mut out);
        out
    }

    fn open(d: &mut Dispatcher, path: &Path) -> i64 {
        let req = serde_json::json!({"execute": "guest-file-open", "arguments": {"path": path}});
        let reply: serde_json::Value = serde_json::from_slice(&raw(d, &req.to_string())).unwrap();
        reply["return"].as_i64().unwrap()
    }

    fn read(d: &mut Dispatcher, handle: i64, count: usize) -> BytesMut {
        raw(
            d,
            &format!(
                r#"{{"execute":"guest-file-read","arguments":{{"handle":{handle},"count":{count}}},"id":[7,"x"]}}"#
            ),
        )
    }

    /// The reply qemu-ga's semantics give (and this agent gave before it read in
    /// pieces): the next `count` bytes from `pos`, eof when fewer than asked for
    /// came, encoded by another base64 implementation.
    fn expected(data: &[u8], pos: usize, count: usize) -> (Vec<u8>, usize) {
        let end = pos.saturating_add(count).min(data.len()).max(pos);
        let got = &data[pos..end];
        let eof = count > 0 && got.len() < count;
        let text = format!(
            "{{\"return\":{{\"buf-b64\":\"{}\",\"count\":{},\"eof\":{eof}}},\"id\":[7,\"x\"]}}\n",
            base64::engine::general_purpose::STANDARD.encode(got),
            got.len()
        );
        (text.into_bytes(), end)
    }

    #[test]
    fn reads_in_pieces_reply_as_one_read_would_at_every_piece_edge() {
        const P: usize = READ_PIECE;
        let dir = tempfile::tempdir().unwrap();
        let mut d = dispatcher();
        for size in [0, 1, 2, 3, P - 1, P, P + 1, 2 * P, 2 * P + 2, 3 * P + 1] {
            let data: Vec<u8> = (0..size as u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
                .collect();
            let path = dir.path().join(format!("f{size}"));
            std::fs::write(&path, &data).unwrap();
            for count in [0, 1, 4, P - 1, P, P + 1, 2 * P, 3 * P + 7] {
                if (1..P - 1).contains(&count) && size > 4 {
                    continue; // Small counts on large files: slow and nothing new.
                }
                // Read the whole file with this count, then once more at the end.
                let handle = open(&mut d, &path);
                let mut pos = 0;
                loop {
                    let got = read(&mut d, handle, count);
                    let (want, next) = expected(&data, pos, count);
                    assert!(
                        got[..] == want[..],
                        "size {size}, count {count}, at {pos}: {} bytes, want {}",
                        got.len(),
                        want.len()
                    );
                    if next == pos {
                        break;
                    }
                    pos = next;
                }
                raw(
                    &mut d,
                    &format!(
                        r#"{{"execute":"guest-file-close","arguments":{{"handle":{handle}}}}}"#
                    ),
                );
            }
        }
    }

    #[test]
    fn a_large_count_on_a_small_file_reserves_what_was_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("small");
        std::fs::write(&path, b"0123456789").unwrap();
        let mut d = dispatcher();
        let handle = open(&mut d, &path);
        let out = read(&mut d, handle, MAX_READ_COUNT as usize);
        assert_eq!(&out[..], &expected(b"0123456789", 0, 48 << 20).0[..]);
        // Before, the full 64 MiB of text for the count.
        assert!(out.capacity() < 4096, "{} bytes reserved", out.capacity());
    }

    #[test]
    fn a_fifo_that_runs_dry_after_a_whole_piece_returns_that_piece() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let mut d = dispatcher();
        // Opened non-blocking (as qemu-ga), then a writer that is never closed.
        let handle = open(&mut d, &fifo);
        let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        // Exactly one piece in the pipe: the second piece finds nothing yet. That
        // ends the read with the first (no error, no eof), as one read would.
        let fd = std::os::fd::AsFd::as_fd(&writer);
        let sized = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(READ_PIECE as i32));
        assert!(sized.unwrap() as usize >= READ_PIECE);
        let data: Vec<u8> = (0..READ_PIECE).map(|i| (i % 251) as u8).collect();
        writer.write_all(&data).unwrap();
        let got = read(&mut d, handle, 4 * READ_PIECE);
        assert_eq!(&got[..], &expected(&data, 0, READ_PIECE).0[..]);
        // Nothing at all: the OS error, as qemu-ga.
        let got = read(&mut d, handle, 10);
        assert!(
            std::str::from_utf8(&got)
                .unwrap()
                .contains("failed to read file: Resource temporarily unavailable"),
            "{got:?}"
        );
    }
}

/// guest-file-write's fast path against the full path: every request is run both
/// ways, on two agents each writing its own file, and the replies and the files must
/// be the same byte for byte.
#[cfg(test)]
mod fast_write_tests {
    use super::*;
    use crate::{Dispatcher, DispatcherConfig, StateDir};
    use base64::Engine;

    /// Two agents, one answering through the fast path (where it applies), one
    /// through the full path only, each with one file open for writing.
    struct Pair {
        _dir: tempfile::TempDir,
        fast: Dispatcher,
        full: Dispatcher,
        paths: [std::path::PathBuf; 2],
        handle: i64,
    }

    impl Pair {
        fn new(config: DispatcherConfig) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let new = || {
                Dispatcher::new(
                    qga_ops::Ops::linux(Default::default()),
                    StateDir::in_memory(),
                    config.clone(),
                )
                .unwrap()
            };
            let (mut fast, mut full) = (new(), new());
            let paths = [dir.path().join("fast"), dir.path().join("full")];
            let mut handles = [0; 2];
            for (i, d) in [&mut fast, &mut full].into_iter().enumerate() {
                let req = serde_json::json!({"execute": "guest-file-open",
                    "arguments": {"path": paths[i], "mode": "w"}});
                let mut out = BytesMut::new();
                d.handle_message_via(req.to_string().as_bytes(), &mut out, false);
                let reply: serde_json::Value = serde_json::from_slice(&out).unwrap();
                handles[i] = reply["return"].as_i64().unwrap();
            }
            assert_eq!(handles[0], handles[1]);
            Pair {
                _dir: dir,
                fast,
                full,
                paths,
                handle: handles[0],
            }
        }

        /// Runs `msg` both ways; returns the reply and whether the fast path took it.
        fn run(&mut self, msg: &[u8]) -> (Vec<u8>, bool) {
            let taken = Request::parse_file_write(msg, &mut Vec::new()).is_some();
            let (mut a, mut b) = (BytesMut::new(), BytesMut::new());
            self.fast.handle_message_via(msg, &mut a, true);
            self.full.handle_message_via(msg, &mut b, false);
            let show = String::from_utf8_lossy(&msg[..msg.len().min(300)]);
            assert_eq!(
                String::from_utf8_lossy(&a),
                String::from_utf8_lossy(&b),
                "reply for {show}"
            );
            let files = self.paths.each_ref().map(|p| std::fs::read(p).unwrap());
            assert!(files[0] == files[1], "file after {show}");
            (a.to_vec(), taken)
        }
    }

    fn payload(n: usize, seed: u32) -> String {
        let data: Vec<u8> = (0..n as u32)
            .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        base64::engine::general_purpose::STANDARD.encode(data)
    }

    fn write_msg(handle: i64, p: &str) -> String {
        format!(
            r#"{{"execute":"guest-file-write","arguments":{{"handle":{handle},"buf-b64":"{p}"}}}}"#
        )
    }

    #[test]
    fn the_fast_path_answers_as_the_full_path_does() {
        let mut pair = Pair::new(DispatcherConfig::default());
        let h = pair.handle;
        let p = payload(3000, 1); // 4000 characters, a multiple of 3: no padding
        let padded1 = payload(3001, 2);
        let padded2 = payload(3002, 3);
        assert!(padded1.ends_with("==") && padded2.ends_with('=') && !padded2.ends_with("=="));
        let slash = p.find('/').unwrap();
        let plus = p.find('+').unwrap();
        let a = p.find('A').unwrap_or(10);
        let edit = |at: usize, with: &str| format!("{}{with}{}", &p[..at], &p[at + 1..]);
        // (message, whether the fast path must take it)
        let cases: Vec<(Vec<u8>, bool)> = vec![
            (write_msg(h, &p), true),
            (write_msg(h, &padded1), true),
            (write_msg(h, &padded2), true),
            (write_msg(h, padded1.trim_end_matches('=')), true),
            (write_msg(h, &padded1[..padded1.len() - 3]), true), // one stray byte
            (write_msg(h, &format!("{p}A=")), true),
            (write_msg(h, &format!("{p}!")), false),
            // Escapes: valid JSON, decoded before the base64 check.
            (write_msg(h, &edit(slash, "\\/")), false),
            (write_msg(h, &edit(a, "\\u0041")), false),
            (write_msg(h, &edit(plus, "\\u002B")), false),
            (write_msg(h, &edit(a, "\\u00e9")), false),
            (write_msg(h, &edit(a, "\\uD800")), false),
            (write_msg(h, &edit(a, "\\n")), false),
            (write_msg(h, &edit(a, "\\q")), false),
            (write_msg(h, &format!("{p}\\")), false),
            // Invalid base64 and non-base64 text.
            (write_msg(h, &edit(100, "!")), false),
            (write_msg(h, &edit(100, "=")), false),
            (write_msg(h, &edit(100, "-")), false),
            (write_msg(h, &edit(100, " ")), false),
            (write_msg(h, &edit(100, "\n")), false),
            (write_msg(h, &edit(100, "\t")), false),
            (write_msg(h, &edit(100, "\u{e9}")), false),
            (write_msg(h, &format!("{p}=")), true), // a dropped, incomplete group
            (write_msg(h, &format!("{p}====")), false),
            // Unknown handle: before the payload in qemu-ga's order, good or bad.
            (write_msg(h + 7, &p), true),
            (write_msg(h + 7, &edit(100, "!")), false),
            (write_msg(-1, &edit(100, "\\u0041")), false),
            // Duplicate keys, at each level.
            (
                format!(r#"{{"execute":"guest-file-write","arguments":{{"handle":{h},"handle":{h},"buf-b64":"{p}"}}}}"#),
                false,
            ),
            (
                format!(r#"{{"execute":"guest-file-write","arguments":{{"handle":{h},"buf-b64":"{p}","buf-b64":"{p}"}}}}"#),
                false,
            ),
            (
                format!(r#"{{"execute":"guest-file-write","arguments":{{"handle":{h},"buf-b64":"{p}"}},"id":1,"id":2}}"#),
                false,
            ),
            (
                format!(r#"{{"execute":"guest-file-write","arguments":{{"handle":{h},"buf-b64":"{p}"}},"id":{{"a":1,"a":2}}}}"#),
                false,
            ),
            // Extra and unknown members.
            (
                format!(r#"{{"execute":"guest-file-write","arguments":{{"handle":{h},"buf-b64":"{p}","mode":"w"}}}}"#),
                false,
            ),
            (
                format!(r#"{{"execute":"guest-file-write","arguments":{{"handle":{h},"buf-b64":"{p}"}},"extra":1}}"#),
                false,
            ),
            (
                format!(r#"{{"execute":"guest-file-write","buf-b64":"{p}","arguments":{{"handle":{h},"buf-b64":"aGk="}}}}"#),
                false,
            ),
            (
                format!(r#"{{"execute":"guest-file-write","arguments":{{"handle":{h},"x":{{"buf-b64":"{p}"}},"buf-b64":"aGk="}}}}"#),
                false,
            ),
            (
                format!(r#"{{"execute":"guest-file-write","arguments":{{"handle":{h}}},"id":{{"buf-b64":"{p}"}}}}"#),
                false,
            ),
            (
                format!(r#"{{"execute":"guest-file-write","arguments":{{"handle":{h},"a\"buf-b64":"{p}","buf-b64":"aGk="}}}}"#),
                false,
            ),
            (
                format!(r#"{{"execute":"guest-file-write","arguments":{{"handle":{h},"buf-b64":""}},"id":"\"buf-b64\":\"{p}"}}"#),
                false,
            ),
            (
                format!(r#"{{"execute":"guest-file-write","arguments":{{"handle":{h},"buf\u002db64":"{p}"}}}}"#),
                false,
            ),
            // `count`, good and bad.
            (
                format!(r#"{{"execute":"guest-file-write","arguments":{{"handle":{h},"buf-b64":"{p}","count":10}}}}"#),
                true,
            ),
            (
                format!(r#"{{"execute":"guest-file-write","arguments":{{"handle":{h},"buf-b64":"{p}","count":0}}}}"#),
                true,
            ),
            (
                format!(r#"{{"execute":"guest-file-write","arguments":{{"count":3000,"handle":{h},"buf-b64":"{p}"}}}}"#),
                true,
            ),
            (
                format!(r#"{{"execute":"guest-file-write","arguments":{{"handle":{h},"buf-b64":"{p}","count":3001}}}}"#),
                true,
            ),
            (
                format!(r#"{{"execute":"guest-file-write","arguments":{{"handle":{h},"buf-b64":"{p}","count":-1}}}}"#),
                true,
            ),
            (
                format!(r#"{{"execute":"guest-file-write","arguments":{{"handle":{h},"buf-b64":"{p}","count":1.0}}}}"#),
                false,
            ),
            (
                format!(r#"{{"execute":"guest-file-write","arguments":{{"handle":"{h}","buf-b64":"{p}"}}}}"#),
                false,
            ),
            (
                format!(r#"{{"execute":"guest-file-write","arguments":{{"buf-b64":"{p}"}}}}"#),
                false,
            ),
            // Member order, ids, whitespace.
            (
                format!(r#"{{"id":"x","arguments":{{"buf-b64":"{p}","handle":{h}}},"execute":"guest-file-write"}}"#),
                true,
            ),
            (
                format!(r#"{{"execute":"guest-file-write","arguments":{{"handle":{h},"buf-b64":"{p}"}},"id":-0}}"#),
                true,
            ),
            (
                format!(r#"{{"execute":"guest-file-write","arguments":{{"handle":{h},"buf-b64":"{p}"}},"id":[1.0,{{"b":0.1}},null,"\u00e9"]}}"#),
                true,
            ),
            (
                format!("\n {{ \"execute\" :\t\"guest-file-write\" ,\r\n \"arguments\" : {{ \"handle\" : {h} , \"buf-b64\" \n:\t \"{p}\" }} , \"id\" : 5 }} \n"),
                true,
            ),
            // Other commands, other shapes, broken envelopes.
            (
                format!(r#"{{"execute":"guest-file-read","arguments":{{"handle":{h},"buf-b64":"{p}"}}}}"#),
                false,
            ),
            (
                format!(r#"{{"execute":"guest-file-writ","arguments":{{"handle":{h},"buf-b64":"{p}"}}}}"#),
                false,
            ),
            (
                format!(r#"{{"execute":"guest-file-write","arguments":{{"handle":{h},"buf-b64":["{p}"]}}}}"#),
                false,
            ),
            (
                format!(r#"{{"execute":"guest-file-write","arguments":{{"handle":{h},"buf-b64":"{p}"}}"#),
                false,
            ),
            (
                format!(r#"{{"execute":"guest-file-write","arguments":{{"handle":{h},"buf-b64":"{p}"}}}} 1"#),
                false,
            ),
            (
                format!(r#"{{"execute":"guest-file-write","arguments":{{"handle":{h},"buf-b64":"{p}}}}}"#),
                false,
            ),
            (
                format!(r#"{{"execute":"guest-file-write","arguments":{{"handle":{h},"buf-b64":"{p}"}},"id":{}1{}}}"#, "[".repeat(1100), "]".repeat(1100)),
                false,
            ),
            (
                format!(r#"["execute","guest-file-write",{{"handle":{h},"buf-b64":"{p}"}}]"#),
                false,
            ),
            (
                format!(r#"{{"execute":"guest-file-write","arguments":{{"handle":{h},"buf-b64":"{p}"}},"id":"\uDC00"}}"#),
                false,
            ),
            (
                format!(r#"{{"execute":"guest-file-write","arguments":{{"handle":{h},"buf-b64":"{p}"}},"id":01}}"#),
                false,
            ),
        ]
        .into_iter()
        .map(|(m, taken)| (m.into_bytes(), taken))
        .collect();
        // Non-UTF-8 bytes: in the payload, and in the envelope around a good one.
        let mut bad_payload = write_msg(h, &p).into_bytes();
        let at = bad_payload.len() - 100;
        bad_payload[at] = 0xff;
        let mut bad_id = format!(
            r#"{{"execute":"guest-file-write","arguments":{{"handle":{h},"buf-b64":"{p}"}},"id":"x?"}}"#
        )
        .into_bytes();
        let at = bad_id.len() - 3;
        bad_id[at] = 0xc3;
        let mut cases = cases;
        cases.push((bad_payload, false));
        cases.push((bad_id, false));
        // At the largest size decoded at once, and past it (checked, then decoded
        // piece by piece), good and with a bad byte near the end.
        for size in [1 << 20, (1 << 20) + 3] {
            let big = payload(size, 6);
            cases.push((write_msg(h, &big).into_bytes(), true));
            let bad = format!("{}!{}", &big[..big.len() - 9], &big[big.len() - 8..]);
            cases.push((write_msg(h, &bad).into_bytes(), false));
        }
        for (i, (msg, fast)) in cases.iter().enumerate() {
            let (reply, taken) = pair.run(msg);
            assert_eq!(
                taken,
                *fast,
                "fast path taken? case {i}, {}: {}",
                String::from_utf8_lossy(&msg[..msg.len().min(200)]),
                String::from_utf8_lossy(&reply)
            );
        }
        // The successful writes did write (the files are compared after each).
        let written = std::fs::read(&pair.paths[0]).unwrap();
        assert!(
            written.len() > (2 << 20) + 10 * 3000,
            "{} bytes",
            written.len()
        );
    }

    #[test]
    fn a_disabled_write_is_refused_by_both_paths() {
        for config in [
            DispatcherConfig {
                blocked: ["guest-file-write".to_owned()].into(),
                ..Default::default()
            },
            DispatcherConfig {
                allowed: Some(["guest-file-open".to_owned()].into()),
                ..Default::default()
            },
        ] {
            let mut pair = Pair::new(config);
            let msg = write_msg(pair.handle, &payload(3000, 4));
            let (reply, taken) = pair.run(msg.as_bytes());
            assert!(taken);
            assert!(
                String::from_utf8_lossy(&reply).contains("has been disabled"),
                "{}",
                String::from_utf8_lossy(&reply)
            );
        }
    }

    #[test]
    fn a_replaced_write_handler_gets_every_request() {
        let mut registry = crate::Registry::stock();
        registry.register_raw::<GuestFileWrite>(Box::new(|_, req, out| {
            reply(out, Ok(Empty {}), req.id.clone(), false)
        }));
        let mut d = Dispatcher::with_registry(
            qga_ops::Ops::linux(Default::default()),
            StateDir::in_memory(),
            DispatcherConfig::default(),
            registry,
        )
        .unwrap();
        let msg = write_msg(1000, &payload(3000, 5));
        assert!(Request::parse_file_write(msg.as_bytes(), &mut Vec::new()).is_some());
        let mut out = BytesMut::new();
        d.handle_message(msg.as_bytes(), &mut out);
        assert_eq!(&out[..], b"{\"return\":{}}\n");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(400))]

        /// A well-formed request with a few bytes replaced or inserted anywhere
        /// (mostly where the envelope and the payload meet): the same reply and
        /// the same file either way.
        #[test]
        fn edited_requests_answer_alike(
            seed in 0u32..1000,
            size in 760usize..800,
            edits in proptest::collection::vec(
                (0usize..1000, proptest::sample::select(
                    b"\"\\{}[],: \n=!aZ09+/-uex\xff\xc3".to_vec()), proptest::bool::ANY),
                1..4),
            id in proptest::sample::select(vec!["", r#","id":1"#, r#","id":"q""#, r#","id":[-0,1.5]"#]),
            count in proptest::sample::select(vec!["", r#","count":5"#, r#","count":-2"#]),
        ) {
            let mut pair = Pair::new(DispatcherConfig::default());
            let h = pair.handle;
            let p = payload(size, seed);
            let mut msg = format!(
                r#"{{"execute":"guest-file-write","arguments":{{"handle":{h},"buf-b64":"{p}"{count}}}{id}}}"#
            )
            .into_bytes();
            let pstart = msg.windows(10).position(|w| w == b"\"buf-b64\":").unwrap() + 11;
            let pend = pstart + p.len();
            for (pos, byte, insert) in edits {
                // Half the edits near the payload's edges, the rest anywhere.
                let at = match pos % 4 {
                    0 => pstart.saturating_sub(12) + pos / 4 % 24,
                    1 => pend.saturating_sub(12) + pos / 4 % 24,
                    _ => pos * msg.len() / 1000,
                }
                .min(msg.len() - 1);
                if insert {
                    msg.insert(at, byte);
                } else {
                    msg[at] = byte;
                }
            }
            pair.run(&msg);
        }
    }
}
