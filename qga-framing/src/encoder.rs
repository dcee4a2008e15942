//! Writing messages: compact JSON, one per line, optionally behind the 0xFF sentinel.

use bytes::{BufMut, BytesMut};
use serde::Serialize;

/// The resynchronisation byte. Never valid in JSON text, so it can mark a position
/// in a dirty stream: the agent puts it before guest-sync-delimited's reply, a client
/// sends it to make the agent drop partial input.
pub const SENTINEL: u8 = 0xFF;

/// Appends `value` as compact JSON plus `\n` to `dst`, with a 0xFF first when
/// `delimited`. serde_json's compact output escapes control characters inside
/// strings, so the only raw newline is the terminator.
pub fn encode_json<T: Serialize + ?Sized>(
    value: &T,
    delimited: bool,
    dst: &mut BytesMut,
) -> Result<(), serde_json::Error> {
    let start = dst.len();
    if delimited {
        dst.put_u8(SENTINEL);
    }
    if let Err(e) = serde_json::to_writer(dst.writer(), value) {
        dst.truncate(start);
        return Err(e);
    }
    dst.put_u8(b'\n');
    Ok(())
}

/// Appends an already-serialised JSON message plus `\n` to `dst` (0xFF first when
/// `delimited`). Raw CR/LF bytes in `json` (whitespace between tokens; inside strings
/// they would be invalid JSON anyway) are written as spaces, so the message stays on
/// one line.
pub fn encode_raw(json: &[u8], delimited: bool, dst: &mut BytesMut) {
    dst.reserve(json.len() + 2);
    if delimited {
        dst.put_u8(SENTINEL);
    }
    let start = dst.len();
    dst.extend_from_slice(json);
    if memchr::memchr2(b'\n', b'\r', json).is_some() {
        for b in &mut dst[start..] {
            if *b == b'\n' || *b == b'\r' {
                *b = b' ';
            }
        }
    }
    dst.put_u8(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_compact_single_line_and_optionally_delimited() {
        let mut out = BytesMut::new();
        let v = serde_json::json!({"return": {"s": "a\nb"}, "id": 1});
        encode_json(&v, false, &mut out).unwrap();
        encode_json(&v, true, &mut out).unwrap();
        assert_eq!(
            &out[..],
            &b"{\"id\":1,\"return\":{\"s\":\"a\\nb\"}}\n\xff{\"id\":1,\"return\":{\"s\":\"a\\nb\"}}\n"[..]
        );
    }

    #[test]
    fn raw_messages_never_carry_a_newline_inside() {
        let mut out = BytesMut::new();
        encode_raw(b"{\"a\":\r\n 1}", true, &mut out);
        assert_eq!(&out[..], b"\xff{\"a\":   1}\n");
    }
}
