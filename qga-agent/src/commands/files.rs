//! guest-file-*: the handle table and the two hot paths. guest-file-read bypasses
//! the typed path and encodes file data straight into the reply buffer;
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
        .register_raw::<GuestFileWrite>(Box::new(write_reply))
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
const READ_PIECE: usize = 192 * 1024;

/// guest-file-read, written straight into `out`: the file is read a piece at a time
/// into the context's scratch buffer (kept across requests), and each piece is
/// base64-encoded with SIMD straight into the reply. No intermediate string, no
/// escaping pass over the payload. The reply grows with what was read (never by
/// more than one piece's text or twice what it holds), not with the count: a
/// 48 MiB count on a 10-byte file reserves a few bytes.
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
    let start = out.len();
    out.extend_from_slice(b"{\"return\":{\"buf-b64\":\"");
    let result = read_encoded(file.as_mut(), count as usize, &mut ctx.write_buf, out);
    let (total, eof) = match result {
        Ok(r) => r,
        Err(e) => {
            out.truncate(start);
            return reply::<Empty>(out, Err(ops_err(e)), id, false);
        }
    };
    out.extend_from_slice(format!("\",\"count\":{total},\"eof\":{eof}}}").as_bytes());
    if let Some(id) = &id {
        out.extend_from_slice(b",\"id\":");
        if serde_json::to_writer(bytes::BufMut::writer(&mut *out), id).is_err() {
            out.truncate(start);
            return reply::<Empty>(
                out,
                Err(QgaError::generic("failed to encode reply")),
                None,
                false,
            );
        }
    }
    out.extend_from_slice(b"}\n");
}

/// Reads up to `count` bytes of `file` piece by piece through `scratch` and appends
/// their base64 to `out`; returns the bytes read and the end-of-file flag, as one
/// read of `count` bytes would report them.
fn read_encoded(
    file: &mut dyn GuestFile,
    count: usize,
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
        let (n, e) = file.read_into(&mut scratch[..want], total > 0)?;
        eof = e;
        // Room for this piece's text, plus the reply's tail; `reserve` at least
        // doubles when it must grow, so growing piece by piece stays linear.
        let at = out.len();
        let len = Base64::encoded_len(n);
        out.reserve(len + 128);
        // Zeroing one piece's text while it is in cache costs little next to the
        // encoding that overwrites it.
        out.resize(at + len, 0);
        let written = Base64::encode_to_slice(&scratch[..n], &mut out[at..]).unwrap_or(0);
        out.truncate(at + written);
        total += n;
        if n < want || eof {
            break;
        }
    }
    Ok((total, eof))
}

/// guest-file-write: the payload is checked first (bad base64 writes nothing), then
/// decoded piece by piece into a small buffer kept across requests, each piece
/// written as it comes: the request buffer is the only full-size copy of the data.
fn write_reply(ctx: &mut Context, req: &Request<'_>, out: &mut BytesMut) {
    let id = req.id.clone();
    let result = match GuestFileWrite::borrowed_arguments(req.arguments) {
        Ok(args) => write(ctx, args),
        Err(e) => Err(write_argument_error(ctx, req, e)),
    };
    reply(out, result, id, false);
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

fn write(ctx: &mut Context, c: GuestFileWriteArgs<'_>) -> Result<GuestFileWriteResult, QgaError> {
    let mut scratch = std::mem::take(&mut ctx.write_buf);
    let result = write_pieces(ctx, &c, &mut scratch);
    // A piece's worth (192 KiB) stays for the next request.
    ctx.write_buf = scratch;
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
