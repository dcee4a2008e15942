//! The sans-IO streaming decoder.

use bytes::{Buf, Bytes, BytesMut};

#[cfg(target_arch = "x86_64")]
use crate::scan::Avx2;
use crate::scan::{is_stray_outside_string, string_special, Baseline, Simd};

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
///
/// `B` is the message's bytes: an owned, zero-copy [`Bytes`] from
/// [`Decoder::decode`], a borrowed `&[u8]` from [`Decoder::decode_slice`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Frame<B = Bytes> {
    /// One complete top-level JSON value, leading whitespace stripped. It is not
    /// validated: it may be garbage (`junk`, a stray `}`), which a peer answers with
    /// a parse error.
    Message(B),
    /// A 0xFF (or 0xFE) byte: whatever partial message preceded it was discarded.
    /// Sentinels arriving back to back are reported once.
    Resync,
    /// A message broke a limit. Its bytes are dropped as they arrive, up to its end or
    /// the next sentinel; the next frame after that is decoded normally.
    Oversized(FrameError),
    /// A byte that no JSON text may hold where it stood, reported as soon as it
    /// arrives (see [Stray bytes and recovery](Decoder#stray-bytes-and-recovery)).
    /// It carries the partial token qemu-ga quotes: for a control byte inside a
    /// string, the string from its opening quote up to and including that byte;
    /// outside strings, the byte alone. The partial message that held it is dropped.
    ///
    /// qemu-ga 7.2 answers it with a `GenericError` whose desc is
    /// `JSON parse error, stray '<text>'`, the text decoded as (modified) UTF-8 with
    /// U+FFFD for what is invalid, and cut at a NUL byte (its text is a C string):
    /// `stray '"guest-ping\n'` for `"guest-ping` and a line feed, `stray '\uFFFD'`
    /// for a lone 0x80, `stray ''` for a NUL.
    Stray(B),
}

impl<B> Frame<B> {
    /// Maps the message's bytes, keeping the other variants.
    pub fn map<C>(self, f: impl FnOnce(B) -> C) -> Frame<C> {
        match self {
            Frame::Message(b) => Frame::Message(f(b)),
            Frame::Resync => Frame::Resync,
            Frame::Oversized(e) => Frame::Oversized(e),
            Frame::Stray(b) => Frame::Stray(f(b)),
        }
    }
}

/// What the lean path found.
enum Simple {
    /// A message at `start..end`.
    Message { start: usize, end: usize },
    /// Only whitespace, or nothing.
    Blank,
    /// Anything else: take the general path.
    No,
}

/// What one step of the core found, as offsets into the buffer it was given.
enum Found {
    /// A message at `start..end`.
    Message {
        start: usize,
        end: usize,
    },
    /// A frame without bytes of its own.
    Resync,
    Oversized(FrameError),
    /// A stray byte, with the partial token at `start..end`.
    Stray {
        start: usize,
        end: usize,
    },
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
    /// A stray byte at this offset: a control byte inside a string, or a byte that
    /// cannot appear outside one (`Partial::in_string` says which).
    Stray(usize),
}

fn is_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Ends a top-level token (number, keyword, garbage): whitespace, a structural
/// byte, a quote, a sentinel, or a stray byte (which is then reported on its own).
fn ends_token(b: u8) -> bool {
    b <= b' ' || b >= 0x80 || matches!(b, b'{' | b'}' | b'[' | b']' | b',' | b':' | b'"')
}

/// Where recovery after a stray byte stops, as in qemu-ga's lexer: a structural
/// byte, a control byte other than TAB (so LF and CR), or a sentinel. That byte is
/// then decoded afresh.
fn ends_recovery(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b >= 0xFE || matches!(b, b'{' | b'}' | b'[' | b']' | b',' | b':')
}

/// Where the string that holds the byte at `at` opens, in a message starting at
/// `msg[0]` (an object or array): the last quote before `at` that opened a string.
/// Only for a stray byte, so a plain forward scan is fine.
fn string_opener(msg: &[u8], at: usize) -> usize {
    let (mut opener, mut in_string, mut escape) = (0, false, false);
    for (i, &b) in msg[..at].iter().enumerate() {
        if !in_string {
            if b == b'"' {
                in_string = true;
                opener = i;
            }
        } else if escape {
            escape = false;
        } else if b == b'\\' {
            escape = true;
        } else if b == b'"' {
            in_string = false;
        }
    }
    opener
}

/// Splits a QGA byte stream into messages, resync events, stray bytes and limit
/// errors.
///
/// Feed it a buffer that you append to as bytes arrive and call [`decode`] until it
/// returns `None` ("need more"). It remembers how far it scanned, so the total work
/// is linear in the input however it is chunked, and it removes what it returns
/// (or discards) from the front of the buffer: a message leaves as a zero-copy
/// [`Bytes`] cut from it.
///
/// # Stray bytes and recovery
///
/// As qemu-ga 7.2's lexer does, the decoder rejects a byte that JSON text cannot
/// hold where it stands as soon as that byte arrives, with a [`Frame::Stray`]:
///
/// * inside a string, any control byte (below 0x20: TAB and LF too), escaped or
///   not;
/// * outside strings, a control byte other than TAB, LF and CR, or a byte from 0x80
///   to 0xFD. A bare top-level token (number, keyword) just before it ends there and
///   comes out first, as a message: `ab\x80` is `Message("ab")`, `Stray("\x80")`.
///
/// Then it recovers as qemu-ga does: it drops bytes up to a structural byte
/// (`{ } [ ] , :`), a control byte other than TAB (so a line end), or a sentinel,
/// and decodes that byte afresh. A request sent after a line end is therefore
/// served, and what is left of the broken message comes out as qemu-ga sees it:
/// `{"execute":"guest-ping` LF `"}` gives `Stray("\"guest-ping\n")`, then
/// `Message("}")`, which qemu-ga answers with `stray '"guest-ping\n'` and
/// `expecting value`, reply for reply.
///
/// Where this differs from qemu-ga 7.2 (each checked against 7.2.22):
///
/// * a sentinel is a [`Frame::Resync`] and no recovery follows, so a request right
///   after a 0xFF is decoded, whatever it starts with (qemu-ga reports the 0xFF as
///   stray and swallows a following `true ` or `"x"`);
/// * printable bytes that qemu-ga calls stray (capitals, `%`, `+`, DEL, a backslash
///   outside strings) are not reported on their own: they make a bare token that
///   ends at a delimiter (or a stray byte) and is a message for the parser to
///   reject; likewise qemu-ga's number grammar is not checked here (`-\x80` is one
///   `stray '-\uFFFD'` to qemu-ga, a message `-` and a stray byte here);
/// * a stray byte inside a message that already broke a limit ends it silently (the
///   [`Frame::Oversized`] was its one error), and a stray byte past the size limit
///   is reported as that limit.
///
/// ```
/// use qga_framing::{Decoder, Frame};
///
/// let mut decoder = Decoder::new();
/// // A line feed inside a string, then a good request on the next line.
/// let input = b"{\"execute\":\"guest-ping\n\"}\n{\"execute\":\"guest-info\"}";
/// let mut rest = &input[..];
/// let mut frames = Vec::new();
/// while let (used, Some(frame)) = decoder.decode_slice(rest) {
///     frames.push(frame);
///     rest = &rest[used..];
/// }
/// assert_eq!(
///     frames,
///     [
///         Frame::Stray(&b"\"guest-ping\n"[..]),
///         Frame::Message(&b"}"[..]),
///         Frame::Message(&b"{\"execute\":\"guest-info\"}"[..]),
///     ]
/// );
/// ```
///
/// [`decode`]: Decoder::decode
#[derive(Debug, Clone)]
pub struct Decoder {
    limits: Limits,
    partial: Option<Partial>,
    /// The last byte consumed was a sentinel: more sentinels add no Resync, so the
    /// frames do not depend on how a run of 0xFF bytes was chunked.
    after_sentinel: bool,
    /// After a stray byte: bytes are dropped up to the next one `ends_recovery`
    /// accepts.
    recovering: bool,
    /// Bytes ahead that are already classified. Messages are short and each call
    /// returns one, so without it most bytes would be classified twice.
    region: Region,
    /// The stream position (bytes ever consumed, wrapping) of the buffer's front:
    /// the region is placed in the stream, so it stays put as the front moves.
    front: usize,
    /// The CPU has what [`Avx2`] needs: the lean path runs compiled for it.
    #[cfg(target_arch = "x86_64")]
    avx2: Option<Avx2>,
}

/// Bytes already classified, with the brackets outside strings resolved.
#[derive(Debug, Clone, Copy, Default)]
struct Region {
    /// Its stream position (see `Decoder::front`).
    at: usize,
    /// How many bytes it covers (0: none, at most 64). It never covers a backslash or
    /// a sentinel, so quotes alone decide what is inside a string, nor a stray byte
    /// (a control byte inside a string, `is_stray_outside_string` outside one).
    len: usize,
    /// Bit k: byte `at + k` is `{` or `[` outside any string.
    open: u64,
    /// Bit k: byte `at + k` is `}` or `]` outside any string.
    close: u64,
    /// Bit k: just after byte `at + k`, the stream is inside a string.
    in_string: u64,
}

impl Region {
    /// Classifies `buf` from `i` (stream position `at`), which is inside a string or
    /// not as `in_string` says, up to the first backslash, sentinel or stray byte and
    /// at most 64 bytes. The region is empty when `buf[i]` itself is one of those.
    /// Also says whether the region holds a quote.
    #[inline(always)]
    fn classify<S: Simd>(
        simd: S,
        buf: &[u8],
        i: usize,
        at: usize,
        in_string: bool,
    ) -> (Region, bool) {
        let masks = simd.classify(buf, i);
        // The bits past the end of `buf` are clear in every mask, so only a stop
        // byte (rare) needs a mask to cut the rest off.
        let mut len = (buf.len() - i).min(64);
        let mut keep = u64::MAX;
        if masks.stop != 0 {
            len = len.min(masks.stop.trailing_zeros() as usize);
            keep = low_bits(len);
        }
        // Quote parity from the state at `i` decides what is inside a string (a
        // control or high byte is no quote, so its bit says where it stands).
        let carry = if in_string { u64::MAX } else { 0 };
        let in_string = simd.prefix_xor(masks.quote & keep) ^ carry;
        // Stop before the first stray byte: a line feed inside a string, or one of
        // the odd bytes (other control bytes, high bytes), rare, each checked on
        // its own.
        let lf_in_string = masks.lf & in_string & keep;
        let mut odd = (masks.odd | lf_in_string) & keep;
        while odd != 0 {
            let k = odd.trailing_zeros() as usize;
            let b = buf[i + k];
            let stray = if in_string >> k & 1 == 1 {
                b < 0x20
            } else {
                is_stray_outside_string(b)
            };
            if stray {
                len = k;
                keep = low_bits(k);
                break;
            }
            odd &= odd - 1;
        }
        let quotes = masks.quote & keep;
        let region = Region {
            at,
            len,
            open: masks.open & keep & !in_string,
            close: masks.close & keep & !in_string,
            in_string,
        };
        (region, quotes != 0)
    }

    /// How far into the region stream position `pos` is, if it is in it.
    #[inline]
    fn offset_of(&self, pos: usize) -> Option<usize> {
        let k = pos.wrapping_sub(self.at);
        (k < self.len).then_some(k)
    }

    /// Whether the stream is inside a string just after the region (not empty).
    #[inline]
    fn ends_in_string(&self) -> bool {
        self.in_string >> (self.len - 1) & 1 == 1
    }
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::with_limits(Limits::default())
    }
}

impl Decoder {
    /// A decoder with qemu-ga's limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder with the given limits.
    #[inline]
    pub fn with_limits(limits: Limits) -> Self {
        Decoder {
            limits,
            partial: None,
            after_sentinel: false,
            recovering: false,
            region: Region::default(),
            front: 0,
            #[cfg(target_arch = "x86_64")]
            avx2: Avx2::detect(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Forgets any partial message and ends any recovery (for a new connection). The
    /// caller clears its buffer.
    pub fn reset(&mut self) {
        self.partial = None;
        self.after_sentinel = false;
        self.recovering = false;
        self.region = Region::default();
    }

    /// True while a message has started but not ended.
    pub fn is_mid_message(&self) -> bool {
        self.partial.is_some()
    }

    /// True while the decoder drops bytes after a [`Frame::Stray`], waiting for a
    /// structural byte, a line end or other control byte, or a sentinel.
    pub fn is_recovering(&self) -> bool {
        self.recovering
    }

    /// The next frame in `buf`, or `None` if more bytes are needed. Never fatal: call
    /// it again after every `Some`.
    ///
    /// What it returns (or discards) leaves the front of `buf`; a message leaves as a
    /// zero-copy [`Bytes`] split off the buffer.
    #[inline]
    pub fn decode(&mut self, buf: &mut BytesMut) -> Option<Frame> {
        let (consumed, found) = self.step(buf);

        let Some(found) = found else {
            buf.advance(consumed);
            return None;
        };
        Some(match found {
            Found::Message { start, end } => {
                buf.advance(start);
                Frame::Message(buf.split_to(end - start).freeze())
            }
            Found::Resync => {
                buf.advance(consumed);
                Frame::Resync
            }
            Found::Oversized(e) => {
                buf.advance(consumed);
                Frame::Oversized(e)
            }
            Found::Stray { start, end } => {
                buf.advance(start);
                Frame::Stray(buf.split_to(end - start).freeze())
            }
        })
    }

    /// The same as [`decode`](Decoder::decode) over a buffer the caller owns: the
    /// next frame in `buf`, borrowed, and how many bytes at the front of `buf` are
    /// used up (the frame's and whatever was skipped before it).
    ///
    /// The caller drops those bytes before the next call, which then passes what is
    /// left plus anything that arrived since. With `None` the used-up bytes are
    /// whitespace or discarded bytes; the rest is a message in progress that the
    /// decoder has already scanned and will not scan again. No allocation, no
    /// reference counting: for an agent that handles each message before reading
    /// more, this is the cheapest way to frame.
    ///
    /// ```
    /// use qga_framing::{Decoder, Frame};
    ///
    /// let mut decoder = Decoder::new();
    /// let mut pending = b"{\"execute\":\"guest-ping\"}\n{\"exec".to_vec();
    /// let (used, frame) = decoder.decode_slice(&pending);
    /// assert_eq!(frame, Some(Frame::Message(&b"{\"execute\":\"guest-ping\"}"[..])));
    /// pending.drain(..used);
    /// let (used, frame) = decoder.decode_slice(&pending);
    /// assert_eq!((used, frame), (1, None)); // the newline; "{\"exec" waits for more
    /// pending.drain(..used);
    /// pending.extend_from_slice(b"ute\":\"guest-info\"}");
    /// let (used, frame) = decoder.decode_slice(&pending);
    /// assert_eq!(frame, Some(Frame::Message(&b"{\"execute\":\"guest-info\"}"[..])));
    /// assert_eq!(used, pending.len());
    /// ```
    #[inline]
    pub fn decode_slice<'b>(&mut self, buf: &'b [u8]) -> (usize, Option<Frame<&'b [u8]>>) {
        let (consumed, found) = self.step(buf);

        let frame = found.map(|f| match f {
            Found::Message { start, end } => Frame::Message(&buf[start..end]),
            Found::Resync => Frame::Resync,
            Found::Oversized(e) => Frame::Oversized(e),
            Found::Stray { start, end } => Frame::Stray(&buf[start..end]),
        });
        (consumed, frame)
    }

    /// The core of both entry points: how many bytes at the front of `buf` are used
    /// up, and the frame found, if any. For a message, `consumed` is its end.
    #[inline]
    fn step(&mut self, buf: &[u8]) -> (usize, Option<Found>) {
        // A buffer shorter than one block gains nothing from AVX2 and would pay for
        // the call into the AVX2 code: a lone request such as a guest-ping.
        #[cfg(target_arch = "x86_64")]
        if let Some(avx2) = self.avx2.filter(|_| buf.len() >= 64) {
            // SAFETY: the token proves the CPU has every feature `step_avx2` is
            // compiled for.
            return unsafe { self.step_avx2(avx2, buf) };
        }
        self.step_baseline(buf)
    }

    /// [`step`](Decoder::step) with the baseline classifier. A function of its own,
    /// so that `step`, and with it `decode` and `decode_slice`, stays small enough to
    /// be inlined into the caller, which then gets the frame in registers rather
    /// than reading back what a call wrote (a wide load over narrow stores, which
    /// the CPU cannot forward: a stall on every call).
    #[inline(never)]
    fn step_baseline(&mut self, buf: &[u8]) -> (usize, Option<Found>) {
        self.step_with(Baseline, buf)
    }

    /// [`step`](Decoder::step) compiled for AVX2, BMI1/2 and PCLMULQDQ, with the
    /// lean path's classifier to match: the compiler also uses the newer bit
    /// instructions (`tzcnt`, `blsr`, shifts without flags) in the walk.
    ///
    /// # Safety
    ///
    /// The CPU must have those features: `avx2` says it does.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,bmi1,bmi2,pclmulqdq")]
    unsafe fn step_avx2(&mut self, avx2: Avx2, buf: &[u8]) -> (usize, Option<Found>) {
        self.step_with(avx2, buf)
    }

    #[inline(always)]
    fn step_with<S: Simd>(&mut self, simd: S, buf: &[u8]) -> (usize, Option<Found>) {
        if self.partial.is_none() && !self.recovering {
            match self.next_simple_message(simd, buf) {
                Simple::Message { start, end } => {
                    self.after_sentinel = false;
                    self.front = self.front.wrapping_add(end);
                    return (end, Some(Found::Message { start, end }));
                }
                Simple::Blank => {
                    if !buf.is_empty() {
                        self.after_sentinel = false;
                        self.front = self.front.wrapping_add(buf.len());
                    }
                    return (buf.len(), None);
                }
                Simple::No => {}
            }
        }
        let (consumed, found) = self.step_inner(buf);
        self.front = self.front.wrapping_add(consumed);
        (consumed, found)
    }

    /// The common case, kept lean: between messages, the next is an object or array
    /// that is complete in `buf`, within the limits, with no backslash and no long
    /// string. Returns where it starts and ends, that `buf` is blank, or `No` for the
    /// general path, which handles every case (and scans again at most what this
    /// scanned).
    #[inline(always)]
    fn next_simple_message<S: Simd>(&mut self, simd: S, buf: &[u8]) -> Simple {
        let len = buf.len();
        let Some(start) = buf.iter().position(|&b| !is_whitespace(b)) else {
            return Simple::Blank;
        };
        if !matches!(buf[start], b'{' | b'[') {
            return Simple::No;
        }
        let max_depth = self.limits.max_depth;
        let mut depth = 0usize;
        let mut i = start;
        // Inside a string at `i`.
        let mut in_string = false;
        let message = |end: usize| {
            if end - start > self.limits.max_message {
                Simple::No
            } else {
                Simple::Message { start, end }
            }
        };
        // Usually the message starts in the region classified while scanning the
        // previous one. That case comes first, on its own, so that it needs
        // neither the classifier's registers nor its constants.
        if let Some(k) = self.region.offset_of(self.front.wrapping_add(start)) {
            let r = self.region;
            if r.open >> k & 1 == 0 {
                // The region disagrees that this opener is outside a string: leave
                // it to the general path rather than guess.
                return Simple::No;
            }
            match walk(r.open >> k, r.close >> k, &mut depth, max_depth) {
                Walked::Ends(at) => return message(i + at as usize + 1),
                Walked::TooDeep => return Simple::No,
                Walked::GoesOn => {}
            }
            // The message goes on past the region.
            in_string = r.ends_in_string();
            i += r.len - k;
        }
        while i < len {
            let pos = self.front.wrapping_add(i);
            let (r, quoted) = Region::classify(simd, buf, i, pos, in_string);
            if r.len == 0 || (in_string && !quoted) {
                return Simple::No;
            }
            self.region = r;
            match walk(r.open, r.close, &mut depth, max_depth) {
                Walked::Ends(at) => return message(i + at as usize + 1),
                Walked::TooDeep => return Simple::No,
                Walked::GoesOn => {}
            }
            in_string = r.ends_in_string();
            i += r.len;
        }
        Simple::No
    }

    fn step_inner(&mut self, buf: &[u8]) -> (usize, Option<Found>) {
        let mut base = 0;
        loop {
            let mut partial = match self.partial {
                Some(p) => p,
                None => {
                    if self.recovering {
                        let Some(k) = buf[base..].iter().position(|&b| ends_recovery(b)) else {
                            return (buf.len(), None);
                        };
                        base += k;
                        self.recovering = false;
                    }
                    let ws = buf[base..]
                        .iter()
                        .take_while(|&&b| is_whitespace(b))
                        .count();
                    if ws > 0 {
                        base += ws;
                        self.after_sentinel = false;
                    }
                    let Some(&first) = buf.get(base) else {
                        return (base, None);
                    };
                    if first >= 0xFE {
                        base += count_sentinels(&buf[base..]);
                        if std::mem::replace(&mut self.after_sentinel, true) {
                            continue;
                        }
                        return (base, Some(Found::Resync));
                    }
                    self.after_sentinel = false;
                    if is_stray_outside_string(first) {
                        self.recovering = true;
                        let stray = Found::Stray {
                            start: base,
                            end: base + 1,
                        };
                        return (base + 1, Some(stray));
                    }
                    let kind = match first {
                        // A stray closer or separator is a (malformed) message of its own.
                        b'}' | b']' | b',' | b':' => {
                            let message = Found::Message {
                                start: base,
                                end: base + 1,
                            };
                            return (base + 1, Some(message));
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
            let rest = &buf[base..];
            match self.scan(&mut partial, rest, base) {
                Step::Complete(end) => {
                    self.partial = None;
                    if partial.skipping {
                        base += end;
                        continue;
                    }
                    if end > self.limits.max_message {
                        let error = FrameError::TooLarge {
                            limit: self.limits.max_message,
                        };
                        return (base + end, Some(Found::Oversized(error)));
                    }
                    let message = Found::Message {
                        start: base,
                        end: base + end,
                    };
                    return (base + end, Some(message));
                }
                Step::Sentinel(at) => {
                    self.partial = None;
                    self.after_sentinel = true;
                    let end = base + at + count_sentinels(&rest[at..]);
                    return (end, Some(Found::Resync));
                }
                Step::Stray(at) => {
                    // The stray byte ends the message; qemu-ga's recovery follows.
                    self.partial = None;
                    self.recovering = true;
                    let end = base + at + 1;
                    if partial.skipping {
                        // Already reported as oversized: one error is enough.
                        base = end;
                        continue;
                    }
                    if at >= self.limits.max_message {
                        // The stray byte is past the size limit: the limit comes first.
                        let error = FrameError::TooLarge {
                            limit: self.limits.max_message,
                        };
                        return (end, Some(Found::Oversized(error)));
                    }
                    let start = match partial.kind {
                        _ if !partial.in_string => at,
                        Kind::Container => string_opener(rest, at),
                        Kind::String | Kind::Token => 0,
                    };
                    let stray = Found::Stray {
                        start: base + start,
                        end,
                    };
                    return (end, Some(stray));
                }
                Step::TooDeep => {
                    let limit = self.limits.max_depth;
                    let used = self.drop_scanned(partial);
                    let error = FrameError::TooDeep { limit };
                    return (base + used, Some(Found::Oversized(error)));
                }
                Step::NeedMore if partial.skipping => {
                    let used = self.drop_scanned(partial);
                    return (base + used, None);
                }
                Step::NeedMore if partial.scanned > self.limits.max_message => {
                    let limit = self.limits.max_message;
                    let used = self.drop_scanned(partial);
                    let error = FrameError::TooLarge { limit };
                    return (base + used, Some(Found::Oversized(error)));
                }
                Step::NeedMore => {
                    self.partial = Some(partial);
                    return (base, None);
                }
            }
        }
    }

    /// Gives up what was scanned of a message that broke a limit, for good, and keeps
    /// skipping the rest of it: memory stays bounded whatever the peer sends. Returns
    /// how many bytes were given up.
    fn drop_scanned(&mut self, mut partial: Partial) -> usize {
        let dropped = partial.scanned;
        partial.skipping = true;
        partial.scanned = 0;
        self.partial = Some(partial);
        dropped
    }

    /// Scans `buf` (which starts with the message) from `p.scanned` on, updating `p`.
    /// `base` is where `buf` starts in the buffer the block cache describes.
    #[inline]
    fn scan(&mut self, p: &mut Partial, buf: &[u8], base: usize) -> Step {
        // Look no further than one byte past the size limit, so a limit error comes
        // at the same point however the stream was chunked.
        let len = if p.skipping {
            buf.len()
        } else {
            buf.len().min(self.limits.max_message.saturating_add(1))
        };
        let buf = &buf[..len];
        match p.kind {
            Kind::Container => self.scan_container(p, buf, base),
            Kind::String | Kind::Token => scan_scalar_value(p, buf),
        }
    }

    /// Scans an object or array. Outside strings it classifies up to 64 bytes at a
    /// time into bit masks (quotes, brackets, backslashes, sentinels), works out which
    /// brackets are outside strings, and visits only those; the next message in the
    /// same bytes reuses the work. Inside a string it jumps to the next quote,
    /// backslash or sentinel, so a base64 payload costs one SIMD scan.
    fn scan_container(&mut self, p: &mut Partial, buf: &[u8], base: usize) -> Step {
        let len = buf.len();
        let mut i = p.scanned;
        while i < len {
            let r = self.region;
            let abs = self.front.wrapping_add(base + i);
            if let Some(from) = r.offset_of(abs) {
                // Walk the region's brackets from `i`, not past `len`.
                let to = r.len.min(from + (len - i));
                let mut brackets = (r.open | r.close) & !low_bits(from) & low_bits(to);
                while brackets != 0 {
                    let bit = brackets & brackets.wrapping_neg();
                    let at = i + bit.trailing_zeros() as usize - from;
                    brackets &= brackets - 1;
                    // +1 or -1, without a branch to mispredict.
                    p.depth = p.depth + 2 * usize::from(r.open & bit != 0) - 1;
                    if p.depth == 0 {
                        p.scanned = at + 1;
                        return Step::Complete(at + 1);
                    }
                    if p.depth > self.limits.max_depth && !p.skipping {
                        // Skipping resumes just after this bracket, outside a string.
                        p.in_string = false;
                        p.scanned = at + 1;
                        return Step::TooDeep;
                    }
                }
                p.in_string = r.in_string >> (to - 1) & 1 == 1;
                i += to - from;
                continue;
            }
            if p.escape {
                match string_step(p, buf, i) {
                    Ok(next) => i = next,
                    Err(step) => return step,
                }
                continue;
            }
            // Past what is classified: classify from `i`, up to the first backslash or
            // sentinel.
            let (region, quoted) = Region::classify(Baseline, buf, i, abs, p.in_string);
            if region.len == 0 {
                match buf[i] {
                    0xFE | 0xFF => return Step::Sentinel(i),
                    // A backslash escapes the next byte inside a string, and is a
                    // plain (invalid) byte outside one.
                    b'\\' => p.escape = p.in_string,
                    // The region stops before a stray byte.
                    _ => {
                        p.scanned = i;
                        return Step::Stray(i);
                    }
                }
                i += 1;
                continue;
            }
            if p.in_string && !quoted && region.len == 64 {
                // A long string, such as a base64 payload: find its end with the
                // leaner string scan.
                match string_step(p, buf, i + 64) {
                    Ok(next) => i = next,
                    Err(step) => return step,
                }
                continue;
            }
            self.region = region;
        }
        p.scanned = i;
        Step::NeedMore
    }
}

/// What [`walk`] found.
enum Walked {
    /// The depth is back to zero after the bracket at this bit: the message ends.
    Ends(u32),
    /// An opener took the depth past the limit.
    TooDeep,
    /// The depth is still above zero after the last bracket.
    GoesOn,
}

/// Walks the brackets `open` and `close` (bit k: byte k, both outside strings) of
/// one region, updating `depth`.
#[inline(always)]
fn walk(open: u64, close: u64, depth: &mut usize, max_depth: usize) -> Walked {
    let mut brackets = open | close;
    // At most 64 openers here: only near the limit is it checked at each.
    let near_limit = *depth + 64 > max_depth;
    while brackets != 0 {
        // The next bracket as a one-bit mask: testing it against `open` takes no
        // variable shift (two or three uops, with a flags dependency, on Intel),
        // and its position is only needed at the end.
        let bit = brackets & brackets.wrapping_neg();
        brackets ^= bit;
        if open & bit != 0 {
            *depth += 1;
            if near_limit && *depth > max_depth {
                return Walked::TooDeep;
            }
        } else {
            *depth -= 1;
            if *depth == 0 {
                return Walked::Ends(bit.trailing_zeros());
            }
        }
    }
    Walked::GoesOn
}

/// How many sentinel bytes `buf` starts with.
fn count_sentinels(buf: &[u8]) -> usize {
    buf.iter().take_while(|&&b| b >= 0xFE).count()
}

/// The `n` low bits set (all 64 for `n >= 64`).
#[inline]
fn low_bits(n: usize) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

/// Scans a top-level string or token (number, keyword, garbage) byte by byte: they
/// are rare and short.
fn scan_scalar_value(p: &mut Partial, buf: &[u8]) -> Step {
    let len = buf.len();
    let mut i = p.scanned;
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
        match string_step(p, buf, i) {
            Ok(next) if !p.in_string => {
                p.scanned = next;
                return Step::Complete(next);
            }
            Ok(next) => i = next,
            Err(step) => return step,
        }
    }
    p.scanned = i;
    Step::NeedMore
}

/// Inside a string at `i` (below `buf.len()`, or equal to it unless an escape is
/// pending): steps over an escaped byte, or jumps to the next quote, backslash or
/// sentinel and acts on it. Returns where scanning goes on, or the sentinel's step.
#[inline]
fn string_step(p: &mut Partial, buf: &[u8], i: usize) -> Result<usize, Step> {
    if p.escape {
        match buf[i] {
            0xFE | 0xFF => return Err(Step::Sentinel(i)),
            // Escaped or not, a control byte never belongs in a string.
            0..0x20 => return Err(Step::Stray(i)),
            _ => {}
        }
        p.escape = false;
        return Ok(i + 1);
    }
    let Some(k) = string_special(&buf[i..]) else {
        return Ok(buf.len());
    };
    let at = i + k;
    match buf[at] {
        b'"' => p.in_string = false,
        b'\\' => p.escape = true,
        0xFE | 0xFF => return Err(Step::Sentinel(at)),
        _ => return Err(Step::Stray(at)),
    }
    Ok(at + 1)
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The frames `decoder` gives for `input` fed in pieces cut at `cuts` (taken
    /// modulo the length), through `decode_slice` into a growing buffer.
    fn frames(mut decoder: Decoder, input: &[u8], cuts: &[usize]) -> Vec<Frame<Vec<u8>>> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        points.push(input.len());
        points.sort_unstable();
        let (mut pending, mut fed, mut out) = (Vec::new(), 0, Vec::new());
        for point in points {
            pending.extend_from_slice(&input[fed..point]);
            fed = point;
            loop {
                let (used, frame) = decoder.decode_slice(&pending);
                let frame = frame.map(|f| f.map(<[u8]>::to_vec));
                pending.drain(..used);
                match frame {
                    Some(frame) => out.push(frame),
                    None => break,
                }
            }
        }
        out
    }

    /// Streams of request-like pieces and every kind of trouble: brackets and
    /// escapes inside strings, line feeds and other control bytes inside and
    /// outside them, UTF-8, stray high bytes, sentinels, bare tokens.
    fn stream() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            6 => Just(&br#"{"execute":"guest-sync","arguments":{"id":1234},"id":1234}"#[..]),
            4 => Just(&b"\n"[..]),
            2 => Just(&br#"{"a":"}x{[","b":[1,2,{"c":[]}]}"#[..]),
            2 => Just(&br#""\"}\\""#[..]),
            2 => Just(&b"{\"s\":\"caf\xc3\xa9\"}"[..]),
            1 => Just(&b" \t\r"[..]),
            1 => Just(&b"{\"x\":\"a\nb\"}"[..]),
            1 => Just(&b"\x01"[..]),
            1 => Just(&b"\x80"[..]),
            1 => Just(&b"\xff"[..]),
            1 => Just(&b"\xfe\xff"[..]),
            1 => Just(&b"true 12"[..]),
            1 => Just(&b"}]"[..]),
            1 => Just(&b"[[[[[[[["[..]),
            1 => Just(&b"]]]]]]]]"[..]),
            1 => Just(&b"{\"k\":\""[..]),
            1 => Just(&b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"[..]),
        ];
        proptest::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The AVX2 build of the lean path gives exactly the baseline's frames.
        #[test]
        fn the_avx2_path_gives_the_baseline_frames(
            input in stream(),
            cuts in proptest::collection::vec(any::<usize>(), 0..4),
            small_limits in any::<bool>(),
        ) {
            let Some(avx2) = Avx2::detect() else { return Ok(()) };
            let limits = if small_limits {
                Limits { max_message: 100, max_depth: 5 }
            } else {
                Limits::default()
            };
            let mut fast = Decoder::with_limits(limits);
            fast.avx2 = Some(avx2);
            let mut baseline = Decoder::with_limits(limits);
            baseline.avx2 = None;
            prop_assert_eq!(frames(fast, &input, &cuts), frames(baseline, &input, &cuts));
        }
    }
}
