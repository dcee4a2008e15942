//! A minimal scanner for agent replies.
//!
//! Both `qemu-ga` and `qga-agent` write each reply as one line of compact JSON ended by
//! `\n` (JSON strings cannot hold a raw newline), optionally preceded by the 0xFF sentinel
//! of `guest-sync-delimited`. So a reply is cut at the next `\n`, and the few members
//! the bench checks are found by key without a JSON parser, which keeps the client's
//! cost per byte to a `memchr` and a `memcmp`. It accepts both `{"return": 1}` (the
//! reference's spacing) and `{"return":1}`.

use std::io::{self, Read};

/// Bytes asked for per `read` call (more when a reply is larger).
const READ_CHUNK: usize = 256 * 1024;

/// Reads newline-terminated replies from a byte stream, reusing one buffer.
#[derive(Debug)]
pub struct ReplyReader<R> {
    inner: R,
    buf: Vec<u8>,
    /// Start of the first reply not yet returned.
    start: usize,
    /// Bytes in `start..scanned` hold no `\n` (keeps rescans linear).
    scanned: usize,
    /// End of the valid bytes in `buf`.
    filled: usize,
}

impl<R: Read> ReplyReader<R> {
    /// Wraps a stream.
    pub fn new(inner: R) -> Self {
        ReplyReader {
            inner,
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            filled: 0,
        }
    }

    /// The wrapped stream (to write requests on a socket).
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Bytes received but not yet returned as a reply.
    pub fn pending(&self) -> usize {
        self.filled - self.start
    }

    /// The next reply without its `\n`, but with a 0xFF sentinel if one was sent.
    /// Blocks on the stream; end of stream before a `\n` is `UnexpectedEof`.
    pub fn next_reply(&mut self) -> io::Result<&[u8]> {
        loop {
            if let Some(pos) = memchr::memchr(b'\n', &self.buf[self.scanned..self.filled]) {
                let end = self.scanned + pos;
                let begin = self.start;
                self.start = end + 1;
                self.scanned = self.start;
                return Ok(&self.buf[begin..end]);
            }
            self.scanned = self.filled;
            if self.start == self.filled {
                self.start = 0;
                self.scanned = 0;
                self.filled = 0;
            } else if self.start > 0 && self.buf.len() - self.filled < READ_CHUNK {
                self.buf.copy_within(self.start..self.filled, 0);
                self.filled -= self.start;
                self.scanned -= self.start;
                self.start = 0;
            }
            if self.buf.len() - self.filled < READ_CHUNK {
                let want = (self.filled + READ_CHUNK).max(self.buf.len() * 2);
                self.buf.resize(want, 0);
            }
            let n = self.inner.read(&mut self.buf[self.filled..])?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "agent closed the connection ({} bytes of a partial reply)",
                        self.pending()
                    ),
                ));
            }
            self.filled += n;
        }
    }
}

/// `reply` without a leading 0xFF sentinel, and whether there was one.
pub fn strip_sentinel(reply: &[u8]) -> (bool, &[u8]) {
    match reply.split_first() {
        Some((0xFF, rest)) => (true, rest),
        _ => (false, reply),
    }
}

/// Why a reply was not the success the bench expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadReply(pub String);

impl std::fmt::Display for BadReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadReply {}

impl BadReply {
    fn new(what: &str, reply: &[u8]) -> Self {
        let shown = &reply[..reply.len().min(300)];
        BadReply(format!("{what}: {}", String::from_utf8_lossy(shown)))
    }
}

/// The raw JSON text of the `return` member of a reply (sentinel allowed), or the reply
/// itself as the error when it has none (an error reply).
pub fn return_value(reply: &[u8]) -> Result<&[u8], BadReply> {
    let (_, body) = strip_sentinel(reply);
    member(body, b"return").ok_or_else(|| BadReply::new("not a success reply", reply))
}

/// The raw JSON text of the first member named `key` in `json`: a string with its
/// quotes, or a number/keyword, or an object/array up to its matching bracket (brackets
/// inside strings are skipped). Found by text search, so only for the small, known
/// replies of the agents.
pub fn member<'a>(json: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let value = member_start(json, key)?;
    let len = value_len(value)?;
    Some(&value[..len])
}

/// `json` from the start of the value of the first member named `key` (see
/// [`member`]) to its end: the value is not scanned.
fn member_start<'a>(json: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut quoted = Vec::with_capacity(key.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(key);
    quoted.push(b'"');
    let mut from = 0;
    while let Some(pos) = memchr::memmem::find(&json[from..], &quoted) {
        let after = from + pos + quoted.len();
        let rest = skip_ws(&json[after..]);
        if let Some(value) = rest.strip_prefix(b":") {
            return Some(skip_ws(value));
        }
        from = after;
    }
    None
}

fn skip_ws(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|b| b" \t\r\n".contains(b)).count();
    &s[n..]
}

/// Length of the JSON value at the start of `v`.
fn value_len(v: &[u8]) -> Option<usize> {
    match v.first()? {
        b'"' => string_len(v),
        b'{' | b'[' => closing_len(v, 0),
        _ => Some(
            v.iter()
                .position(|b| b",}] \t\r\n".contains(b))
                .unwrap_or(v.len()),
        ),
    }
}

/// Length of `v` up to and including the bracket that closes `depth` open ones
/// (0: the array or object that `v` starts with); strings are skipped.
fn closing_len(v: &[u8], mut depth: usize) -> Option<usize> {
    let mut i = 0;
    while i < v.len() {
        match v[i] {
            b'"' => {
                i += string_len(&v[i..])?;
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Length of the JSON string (with both quotes) at the start of `v`.
fn string_len(v: &[u8]) -> Option<usize> {
    let mut i = 1;
    loop {
        let pos = memchr::memchr2(b'"', b'\\', v.get(i..)?)?;
        i += pos;
        if v[i] == b'\\' {
            i += 2;
        } else {
            return Some(i + 1);
        }
    }
}

/// An unsigned integer member of `json`.
pub fn member_u64(json: &[u8], key: &[u8]) -> Option<u64> {
    std::str::from_utf8(member(json, key)?).ok()?.parse().ok()
}

/// A boolean member of `json`.
pub fn member_bool(json: &[u8], key: &[u8]) -> Option<bool> {
    match member(json, key)? {
        b"true" => Some(true),
        b"false" => Some(false),
        _ => None,
    }
}

/// The parsed return of a `guest-file-read`.
#[derive(Debug, PartialEq, Eq)]
pub struct FileRead<'a> {
    /// Bytes read (before base64).
    pub count: u64,
    /// The base64 text, without quotes.
    pub b64: &'a [u8],
    /// End of file was seen.
    pub eof: bool,
}

impl<'a> FileRead<'a> {
    /// Parses a `guest-file-read` reply. The base64 string is located first and the
    /// small members are searched for only outside it, so a large payload is scanned
    /// once (by `memchr`), not once more to find where the `return` object ends: that
    /// is found from the end of the string.
    pub fn parse(reply: &'a [u8]) -> Result<Self, BadReply> {
        let (_, json) = strip_sentinel(reply);
        let ret = member_start(json, b"return")
            .filter(|v| v.first() == Some(&b'{'))
            .ok_or_else(|| BadReply::new("not a success reply", reply))?;
        let bad = || BadReply::new("malformed guest-file-read reply", reply);
        let key = b"\"buf-b64\"";
        let kpos = memchr::memmem::find(ret, key).ok_or_else(bad)?;
        let rest = skip_ws(&ret[kpos + key.len()..]);
        let rest = skip_ws(rest.strip_prefix(b":").ok_or_else(bad)?);
        let body = rest.strip_prefix(b"\"").ok_or_else(bad)?;
        let end = memchr::memchr(b'"', body).ok_or_else(bad)?;
        let b64 = &body[..end];
        // The members before the string, and after it up to the `return` object's
        // closing brace (which must be there).
        let before = ret.get(1..kpos).ok_or_else(bad)?;
        if closing_len(before, 1).is_some() {
            return Err(bad());
        }
        let tail = &body[end + 1..];
        let after = &tail[..closing_len(tail, 1).ok_or_else(bad)?];
        let count = member_u64(before, b"count")
            .or_else(|| member_u64(after, b"count"))
            .ok_or_else(bad)?;
        let eof = member_bool(before, b"eof")
            .or_else(|| member_bool(after, b"eof"))
            .ok_or_else(bad)?;
        Ok(FileRead { count, b64, eof })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out at most `step` bytes per read, to split replies anywhere.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn replies_split_at_every_size_come_out_whole() {
        let wire = b"{\"return\": {}}\n\xff{\"return\": 42}\n{\"error\": {\"class\": \"GenericError\", \"desc\": \"x\\ny\"}}\n";
        for step in 1..wire.len() {
            let mut r = ReplyReader::new(Trickle { data: wire, step });
            assert_eq!(r.next_reply().unwrap(), b"{\"return\": {}}");
            assert_eq!(r.next_reply().unwrap(), b"\xff{\"return\": 42}");
            let err = r.next_reply().unwrap().to_vec();
            assert!(return_value(&err).is_err(), "step {step}");
            let eof = r.next_reply().unwrap_err();
            assert_eq!(eof.kind(), io::ErrorKind::UnexpectedEof);
        }
    }

    #[test]
    fn many_small_and_one_huge_reply_reuse_the_buffer() {
        let mut wire = Vec::new();
        for i in 0..20_000 {
            wire.extend_from_slice(format!("{{\"return\": {i}}}\n").as_bytes());
        }
        let big = "A".repeat(3 * READ_CHUNK + 17);
        wire.extend_from_slice(
            format!("{{\"return\":{{\"count\":9,\"buf-b64\":\"{big}\",\"eof\":true}}}}\n")
                .as_bytes(),
        );
        let mut r = ReplyReader::new(Trickle {
            data: &wire,
            step: 70_001,
        });
        for i in 0..20_000u64 {
            let v = return_value(r.next_reply().unwrap()).unwrap();
            assert_eq!(v, i.to_string().as_bytes());
        }
        let fr = FileRead::parse(r.next_reply().unwrap()).unwrap().b64.len();
        assert_eq!(fr, big.len());
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn sentinel_is_reported_and_stripped() {
        assert_eq!(strip_sentinel(b"\xff{}"), (true, &b"{}"[..]));
        assert_eq!(strip_sentinel(b"{}"), (false, &b"{}"[..]));
        assert_eq!(strip_sentinel(b""), (false, &b""[..]));
    }

    #[test]
    fn members_with_either_spacing() {
        assert_eq!(return_value(b"{\"return\": 7, \"id\": 1}").unwrap(), b"7");
        assert_eq!(return_value(b"{\"id\":1,\"return\":7}").unwrap(), b"7");
        assert_eq!(
            return_value(b"{\"return\": {\"a\": [1, {\"b\": \"}\"}]}}").unwrap(),
            b"{\"a\": [1, {\"b\": \"}\"}]}"
        );
        assert_eq!(member(b"{\"x\": \"a\\\"b\"}", b"x").unwrap(), b"\"a\\\"b\"");
        // A key text inside a string value is not a member.
        assert_eq!(
            member_u64(b"{\"s\": \"count\", \"count\": 3}", b"count"),
            Some(3)
        );
        assert!(
            return_value(b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"return\"}}")
                .is_err()
        );
        assert_eq!(member(b"{\"return\": ", b"return"), None);
    }

    #[test]
    fn file_read_in_any_member_order() {
        let a =
            FileRead::parse(b"{\"return\": {\"count\": 3, \"buf-b64\": \"YWJj\", \"eof\": false}}")
                .unwrap();
        assert_eq!(
            a,
            FileRead {
                count: 3,
                b64: b"YWJj",
                eof: false
            }
        );
        let b =
            FileRead::parse(b"{\"return\":{\"eof\":true,\"buf-b64\":\"\",\"count\":0}}").unwrap();
        assert_eq!(
            b,
            FileRead {
                count: 0,
                b64: b"",
                eof: true
            }
        );
        assert!(FileRead::parse(b"{\"return\": {\"count\": 3, \"eof\": false}}").is_err());
        assert!(FileRead::parse(b"{\"return\": {\"count\": 3, \"buf-b64\": \"YWJj").is_err());
        // The object must close after the string, and hold the key.
        assert!(
            FileRead::parse(b"{\"return\":{\"buf-b64\":\"YWJj\",\"count\":3,\"eof\":false")
                .is_err()
        );
        assert!(
            FileRead::parse(b"{\"return\":{\"count\":3,\"eof\":false},\"buf-b64\":\"YWJj\"}")
                .is_err()
        );
        assert!(FileRead::parse(b"{\"return\":\"buf-b64\"}").is_err());
        assert!(FileRead::parse(
            b"{\"error\":{\"class\":\"GenericError\",\"desc\":\"\\\"buf-b64\\\": \\\"YWJj\\\"\"}}"
        )
        .is_err());
        // Members after the string are read only up to the object's end.
        assert!(FileRead::parse(
            b"{\"return\":{\"buf-b64\":\"YWJj\",\"count\":3},\"eof\":true,\"id\":1}"
        )
        .is_err());
        let with_id = FileRead::parse(
            b"\xff{\"return\":{\"buf-b64\":\"YWJj\",\"count\":3,\"eof\":true},\"id\":{\"a\":[1]}}",
        )
        .unwrap();
        assert_eq!(
            (with_id.count, with_id.b64, with_id.eof),
            (3, &b"YWJj"[..], true)
        );
    }
}
