//! The sans-IO streaming decoder.

use bytes::{Buf, Bytes, BytesMut};

use crate::scan::string_special;

/// Limits on one message. The defaults are qemu-ga's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest message in bytes (default 64 MiB, qemu-ga's token-size limit). Counted
    /// over the message's raw bytes, whitespace inside it included.
    pub max_message: usize,
    /// Deepest nesting of objects and arrays together (default 1024, as qemu-ga).
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message: 64 * 1024 * 1024,
            max_depth: 1024,
        }
    }
}

/// A message that broke a [`Limits`] value. It is reported once, then skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The message grew past `max_message` bytes.
    #[error("message exceeds {limit} bytes")]
    TooLarge {
        /// The limit in force.
        limit: usize,
    },
    /// The message nested deeper than `max_depth`.
    #[error("message nests deeper than {limit} levels")]
    TooDeep {
        /// The limit in force.
        limit: usize,
    },
}

impl FrameError {
    /// qemu-ga's error text for the same condition, for an agent's error reply.
    pub fn reference_desc(&self) -> &'static str {
        match self {
            FrameError::TooLarge { .. } => "JSON token size limit exceeded",
            FrameError::TooDeep { .. } => "JSON nesting depth limit exceeded",
        }
    }
}

/// What the decoder found next in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Frame {
    /// One complete top-level JSON value, leading whitespace stripped. It is not
    /// validated: it may be garbage (`junk`, a stray `}`), which a peer answers with
    /// a parse error.
    Message(Bytes),
    /// A 0xFF (or 0xFE) byte: whatever partial message preceded it was discarded.
    /// Sentinels arriving back to back are reported once.
    Resync,
    /// A message broke a limit. Its bytes are dropped as they arrive, up to its end or
    /// the next sentinel; the next frame after that is decoded normally.
    Oversized(FrameError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An object or array: ends when the nesting depth returns to zero.
    Container,
    /// A top-level string: ends at its closing quote.
    String,
    /// A top-level number, keyword or garbage token: ends before the next delimiter.
    Token,
}

#[derive(Debug, Clone, Copy)]
struct Partial {
    kind: Kind,
    depth: usize,
    in_string: bool,
    escape: bool,
    /// Bytes of the message already scanned (at the front of the buffer).
    scanned: usize,
    /// Set once the message broke a limit: its bytes are being discarded.
    skipping: bool,
}

enum Step {
    NeedMore,
    /// The message ends just before this offset.
    Complete(usize),
    /// A sentinel at this offset.
    Sentinel(usize),
    /// An opener at this offset took the depth past the limit.
    TooDeep,
}

/// Byte classes outside strings.
const PLAIN: u8 = 0;
const QUOTE: u8 = 1;
const OPEN: u8 = 2;
const CLOSE: u8 = 3;
const SENTINEL: u8 = 4;

const CLASS: [u8; 256] = {
    let mut t = [PLAIN; 256];
    t[b'"' as usize] = QUOTE;
    t[b'{' as usize] = OPEN;
    t[b'[' as usize] = OPEN;
    t[b'}' as usize] = CLOSE;
    t[b']' as usize] = CLOSE;
    t[0xFE] = SENTINEL;
    t[0xFF] = SENTINEL;
    t
};

fn is_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Ends a top-level token (number, keyword, garbage).
fn ends_token(b: u8) -> bool {
    is_whitespace(b)
        || matches!(
            b,
            b'{' | b'}' | b'[' | b']' | b',' | b':' | b'"' | 0xFE | 0xFF
        )
}

/// Splits a QGA byte stream into messages, resync events and limit errors.
///
/// Feed it a buffer that you append to as bytes arrive and call [`decode`] until it
/// returns `None` ("need more"). It remembers how far it scanned, so the total work
/// is linear in the input however it is chunked, and it removes what it returns
/// (or discards) from the front of the buffer: a message leaves as a zero-copy
/// [`Bytes`] cut from it.
///
/// [`decode`]: Decoder::decode
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    limits: Limits,
    partial: Option<Partial>,
    /// The last byte consumed was a sentinel: more sentinels add no Resync, so the
    /// frames do not depend on how a run of 0xFF bytes was chunked.
    after_sentinel: bool,
}

impl Decoder {
    /// A decoder with qemu-ga's limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder with the given limits.
    pub fn with_limits(limits: Limits) -> Self {
        Decoder {
            limits,
            partial: None,
            after_sentinel: false,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Forgets any partial message (for a new connection). The caller clears its buffer.
    pub fn reset(&mut self) {
        self.partial = None;
        self.after_sentinel = false;
    }

    /// True while a message has started but not ended.
    pub fn is_mid_message(&self) -> bool {
        self.partial.is_some()
    }

    /// The next frame in `buf`, or `None` if more bytes are needed. Never fatal: call
    /// it again after every `Some`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Option<Frame> {
        loop {
            let mut partial = match self.partial {
                Some(p) => p,
                None => {
                    let ws = buf.iter().take_while(|&&b| is_whitespace(b)).count();
                    if ws > 0 {
                        buf.advance(ws);
                        self.after_sentinel = false;
                    }
                    let first = *buf.first()?;
                    if first >= 0xFE {
                        let n = buf.iter().take_while(|&&b| b >= 0xFE).count();
                        buf.advance(n);
                        if std::mem::replace(&mut self.after_sentinel, true) {
                            continue;
                        }
                        return Some(Frame::Resync);
                    }
                    self.after_sentinel = false;
                    let kind = match first {
                        // A stray closer or separator is a (malformed) message of its own.
                        b'}' | b']' | b',' | b':' => {
                            return Some(Frame::Message(buf.split_to(1).freeze()));
                        }
                        b'{' | b'[' => Kind::Container,
                        b'"' => Kind::String,
                        _ => Kind::Token,
                    };
                    Partial {
                        kind,
                        depth: usize::from(kind == Kind::Container),
                        in_string: kind == Kind::String,
                        escape: false,
                        scanned: 1,
                        skipping: false,
                    }
                }
            };
            let step = self.scan(&mut partial, buf);
            match step {
                Step::Complete(end) => {
                    self.partial = None;
                    if partial.skipping {
                        buf.advance(end);
                        continue;
                    }
                    if end > self.limits.max_message {
                        buf.advance(end);
                        return Some(Frame::Oversized(FrameError::TooLarge {
                            limit: self.limits.max_message,
                        }));
                    }
                    return Some(Frame::Message(buf.split_to(end).freeze()));
                }
                Step::Sentinel(at) => {
                    self.partial = None;
                    let n = buf[at..].iter().take_while(|&&b| b >= 0xFE).count();
                    buf.advance(at + n);
                    self.after_sentinel = true;
                    return Some(Frame::Resync);
                }
                Step::TooDeep => {
                    let limit = self.limits.max_depth;
                    self.drop_scanned(partial, buf);
                    return Some(Frame::Oversized(FrameError::TooDeep { limit }));
                }
                Step::NeedMore if partial.skipping => {
                    self.drop_scanned(partial, buf);
                    return None;
                }
                Step::NeedMore if partial.scanned > self.limits.max_message => {
                    let limit = self.limits.max_message;
                    self.drop_scanned(partial, buf);
                    return Some(Frame::Oversized(FrameError::TooLarge { limit }));
                }
                Step::NeedMore => {
                    self.partial = Some(partial);
                    return None;
                }
            }
        }
    }

    /// Drops what was scanned of a message that broke a limit, for good, and keeps
    /// skipping the rest of it: memory stays bounded whatever the peer sends.
    fn drop_scanned(&mut self, mut partial: Partial, buf: &mut BytesMut) {
        partial.skipping = true;
        buf.advance(partial.scanned);
        partial.scanned = 0;
        self.partial = Some(partial);
    }

    /// Scans `buf` from `p.scanned` on, updating `p`.
    fn scan(&self, p: &mut Partial, buf: &[u8]) -> Step {
        let mut i = p.scanned;
        // Look no further than one byte past the size limit, so a limit error comes
        // at the same point however the stream was chunked.
        let len = if p.skipping {
            buf.len()
        } else {
            buf.len().min(self.limits.max_message.saturating_add(1))
        };
        if p.kind == Kind::Token {
            while i < len {
                let b = buf[i];
                if ends_token(b) {
                    p.scanned = i;
                    return if b >= 0xFE {
                        Step::Sentinel(i)
                    } else {
                        Step::Complete(i)
                    };
                }
                i += 1;
            }
            p.scanned = i;
            return Step::NeedMore;
        }
        while i < len {
            if p.in_string {
                if p.escape {
                    if buf[i] >= 0xFE {
                        return Step::Sentinel(i);
                    }
                    p.escape = false;
                    i += 1;
                    continue;
                }
                match string_special(&buf[i..len]) {
                    None => i = len,
                    Some(k) => {
                        i += k;
                        match buf[i] {
                            b'"' => {
                                p.in_string = false;
                                if p.kind == Kind::String {
                                    p.scanned = i + 1;
                                    return Step::Complete(i + 1);
                                }
                            }
                            b'\\' => p.escape = true,
                            _ => return Step::Sentinel(i),
                        }
                        i += 1;
                    }
                }
                continue;
            }
            // Outside strings: skip plain bytes, then act on the interesting one.
            while i < len && CLASS[buf[i] as usize] == PLAIN {
                i += 1;
            }
            if i == len {
                break;
            }
            match CLASS[buf[i] as usize] {
                QUOTE => p.in_string = true,
                OPEN => {
                    p.depth += 1;
                    if p.depth > self.limits.max_depth && !p.skipping {
                        p.scanned = i + 1;
                        return Step::TooDeep;
                    }
                }
                CLOSE => {
                    p.depth -= 1;
                    if p.depth == 0 {
                        p.scanned = i + 1;
                        return Step::Complete(i + 1);
                    }
                }
                _ => return Step::Sentinel(i),
            }
            i += 1;
        }
        p.scanned = i;
        Step::NeedMore
    }
}
