//! Low-level JSON helpers: an object's members kept raw (borrowed) with duplicate
//! detection, qemu-ga's member iteration order, and serde_json error texts mapped to
//! the reference's `JSON parse error, ...` words.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use smallvec::SmallVec;

use crate::QgaError;

/// A string that borrows from the input when it holds no escapes.
pub(crate) struct BorrowedStr<'a>(pub(crate) Cow<'a, str>);

impl<'de> Deserialize<'de> for BorrowedStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BorrowedStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Marker text used to smuggle "duplicate key" through serde_json's error type.
const DUPLICATE_KEY: &str = "qga-proto: duplicate key";

/// A top-level JSON value seen as qemu-ga sees it: either an object whose members are
/// kept raw (in input order), or something else.
pub(crate) enum TopLevel<'a> {
    Object(Members<'a>),
    NotObject,
}

/// An object's members in input order, each value still raw JSON text. Requests
/// have a few (the envelope three, most commands' arguments fewer than five): held
/// inline, no allocation.
pub(crate) struct Members<'a>(pub(crate) MemberList<'a>);

pub(crate) type MemberList<'a> = SmallVec<[(Cow<'a, str>, &'a RawValue); 4]>;

impl<'a> Members<'a> {
    /// Parses `text`, which must be one JSON object, into its raw members.
    pub(crate) fn parse_object(text: &'a str) -> Result<Self, String> {
        match parse_top_level(text)? {
            TopLevel::Object(m) => Ok(m),
            TopLevel::NotObject => Err("expecting value".to_owned()),
        }
    }

    /// The raw value of member `name`, if present.
    pub(crate) fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
    }

    /// Member names in the order qemu-ga iterates its dictionaries (see [`qdict_order`]).
    pub(crate) fn names_in_qdict_order(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.0.iter().map(|(k, _)| k.as_ref()).collect();
        qdict_order(&mut names);
        names
    }

    /// Member names in the order qemu-ga's argument visitor reports leftovers in.
    pub(crate) fn names_in_visitor_order(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.0.iter().map(|(k, _)| k.as_ref()).collect();
        ghash_order(&mut names);
        names
    }
}

struct MembersVisitor;

impl<'de> Visitor<'de> for MembersVisitor {
    type Value = TopLevel<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members = MemberList::new();
        while let Some(BorrowedStr(key)) = map.next_key::<BorrowedStr<'de>>()? {
            let value: &'de RawValue = map.next_value()?;
            if members.iter().any(|(k, _)| *k == key) {
                return Err(de::Error::custom(DUPLICATE_KEY));
            }
            members.push((key, value));
        }
        Ok(TopLevel::Object(Members(members)))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<de::IgnoredAny>()?.is_some() {}
        Ok(TopLevel::NotObject)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(TopLevel::NotObject)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(TopLevel::NotObject)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(TopLevel::NotObject)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(TopLevel::NotObject)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(TopLevel::NotObject)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(TopLevel::NotObject)
    }
}

impl<'de> Deserialize<'de> for TopLevel<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(MembersVisitor)
    }
}

/// The members of a JSON object already known to be valid JSON (a `RawValue`'s
/// text), as (name, raw value text) in input order, found with one `memchr` pass per
/// string rather than a full parse. `None` when the text is not an object, a name
/// has escapes, or [`strict_issue`] finds something: the caller then takes the
/// full parse, which also finds the error to report.
pub(crate) fn split_checked_object(text: &str) -> Option<Vec<(&str, &str)>> {
    if strict_issue(text).is_some() {
        return None;
    }
    let bytes = text.as_bytes();
    let ws = |mut i: usize| {
        while i < bytes.len() && matches!(bytes[i], b' ' | b'\t' | b'\n' | b'\r') {
            i += 1;
        }
        i
    };
    // Index just past the string whose opening quote is at `i`.
    let string_end = |mut i: usize| -> Option<usize> {
        i += 1;
        loop {
            i += memchr::memchr2(b'"', b'\\', &bytes[i..])?;
            if bytes[i] == b'"' {
                return Some(i + 1);
            }
            i += 2;
        }
    };
    let mut i = ws(0);
    if bytes.get(i) != Some(&b'{') {
        return None;
    }
    i = ws(i + 1);
    let mut out = Vec::new();
    if bytes.get(i) == Some(&b'}') {
        return Some(out);
    }
    loop {
        if bytes.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(i)?;
        let key = &text[i + 1..key_end - 1];
        if key.contains('\\') {
            return None;
        }
        i = ws(key_end);
        if bytes.get(i) != Some(&b':') {
            return None;
        }
        let start = ws(i + 1);
        i = start;
        match *bytes.get(i)? {
            b'"' => i = string_end(i)?,
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match *bytes.get(i)? {
                        b'"' => {
                            i = string_end(i)?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                i += 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
            }
            _ => {
                while i < bytes.len()
                    && !matches!(bytes[i], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                {
                    i += 1;
                }
            }
        }
        out.push((key, &text[start..i]));
        i = ws(i);
        match bytes.get(i) {
            Some(b',') => i = ws(i + 1),
            Some(b'}') => return Some(out),
            _ => return None,
        }
    }
}

/// Parses one complete JSON value. Errors come back as the reference's words (the part
/// after `JSON parse error, `).
///
/// serde_json parses; [`strict_issue`] finds what qemu-ga rejects and serde_json does
/// not (a duplicate key at any depth, a `\u` escape that is no valid character,
/// nesting past 1024 levels). When both object, the one earlier in the text is
/// reported, as qemu-ga's parser would; but a token qemu-ga's lexer refuses
/// ([`lexer_error`]) anywhere in the message comes first, as it does in qemu-ga, whose
/// parser never sees such a message.
pub(crate) fn parse_top_level(text: &str) -> Result<TopLevel<'_>, String> {
    let strict = strict_issue(text);
    if let Some((at, Issue::TooDeep)) = strict {
        // qemu-ga's streamer counts the nesting as the tokens arrive: a lexer error
        // before the opener that broke the limit comes first.
        return Err(match lexer_error(text) {
            Some((start, end)) if end <= at => stray_text(text, start, end),
            _ => Issue::TooDeep.text(text),
        });
    }
    let mut de = serde_json::Deserializer::from_str(text);
    // Safe: the nesting is at most MAX_DEPTH levels (checked above).
    de.disable_recursion_limit();
    let parsed = TopLevel::deserialize(&mut de).and_then(|top| de.end().map(|()| top));
    // Which error the parser would report: the first in the text.
    let parser_error = match (parsed, strict) {
        (Ok(top), None) => return Ok(top),
        (Ok(_), Some((_, issue))) => issue.text(text),
        (Err(e), Some((at, issue))) if at <= error_offset(text, &e) => issue.text(text),
        (Err(e), _) => describe_error(text, &e),
    };
    // qemu-ga parses a message only once it has lexed all of it: a token its lexer
    // refuses, anywhere, is the error. (Only on the error path: serde_json refuses all
    // such text but for the `0E5` qemu-ga's lexer splits, which we accept.)
    match lexer_error(text) {
        Some((start, end)) => Err(stray_text(text, start, end)),
        None => Err(parser_error),
    }
}

/// `stray '<token>'` for the partial token at `start..end`, shown as qemu-ga shows it.
fn stray_text(text: &str, start: usize, end: usize) -> String {
    let desc = QgaError::stray(&text.as_bytes()[start..end]).desc;
    match desc.strip_prefix("JSON parse error, ") {
        Some(what) => what.to_owned(),
        None => desc,
    }
}

/// The first token qemu-ga's lexer refuses in `text`, as the byte range of the
/// partial token it quotes in `stray '<token>'`: from the token's first byte up to
/// and including the byte it could not take (or to the end of `text`, where the
/// token was cut short).
///
/// The lexer's grammar: whitespace (space, TAB, CR, LF) and `{ } [ ] , :`; strings in
/// double or single quotes, with any byte from 0x20 escaped or not (the parser judges
/// escapes); numbers `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, so `01`, `-x`,
/// `5.}` and `1e}` are refused with the byte that broke them; keywords `[a-z]+` (the
/// parser judges which). Any other byte starts no token (`stray 'T'`, `stray '.'`,
/// `stray '\u{FFFD}'` for a non-ASCII byte): a complete number or keyword just before
/// it ends there, one cut short (`-é`) is quoted with it.
pub(crate) fn lexer_error(text: &str) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    let len = bytes.len();
    let mut i = 0;
    while i < len {
        let start = i;
        match bytes[i] {
            b' ' | b'\t' | b'\n' | b'\r' | b'{' | b'}' | b'[' | b']' | b',' | b':' => i += 1,
            quote @ (b'"' | b'\'') => {
                i += 1;
                loop {
                    match bytes.get(i) {
                        // Cut short: the parser's matter, not the lexer's.
                        None => return None,
                        Some(&b) if b < 0x20 => return Some((start, i + 1)),
                        Some(b'\\') => match bytes.get(i + 1) {
                            None => return None,
                            Some(&b) if b < 0x20 => return Some((start, i + 2)),
                            Some(_) => i += 2,
                        },
                        Some(&b) if b == quote => {
                            i += 1;
                            break;
                        }
                        Some(_) => i += 1,
                    }
                }
            }
            b'-' | b'0'..=b'9' => match number_end(bytes, i) {
                Ok(end) => i = end,
                Err(bad) => return Some((start, (bad + 1).min(len))),
            },
            b'a'..=b'z' => {
                i += bytes[i..]
                    .iter()
                    .take_while(|b| b.is_ascii_lowercase())
                    .count();
            }
            _ => return Some((start, start + 1)),
        }
    }
    None
}

/// Lexes the number starting at `i` with qemu-ga's grammar: where it ends, or the
/// offset of the byte that broke it (`bytes.len()` if it was cut short).
fn number_end(bytes: &[u8], mut i: usize) -> Result<usize, usize> {
    let digit = |i: usize| bytes.get(i).is_some_and(u8::is_ascii_digit);
    let digits = |i: usize| i + bytes[i..].iter().take_while(|b| b.is_ascii_digit()).count();
    if bytes[i] == b'-' {
        i += 1;
    }
    match bytes.get(i) {
        // No leading zeros: `01` breaks at the `1`.
        Some(b'0') if digit(i + 1) => return Err(i + 1),
        // A bare zero takes no exponent in qemu-ga's lexer: `0e5` lexes as `0`, `e`,
        // `5` (so its parser wants a separator) and `0E5` as `0` and a stray `E`.
        Some(b'0') if bytes.get(i + 1) != Some(&b'.') => return Ok(i + 1),
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = digits(i),
        _ => return Err(i),
    }
    if bytes.get(i) == Some(&b'.') {
        if !digit(i + 1) {
            return Err(i + 1);
        }
        i = digits(i + 1);
    }
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(bytes.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digit(i) {
            return Err(i);
        }
        i = digits(i);
    }
    Ok(i)
}

/// Deserializes a value that [`parse_top_level`] has already checked (so its nesting
/// is bounded), without serde_json's 128-level limit.
pub(crate) fn from_checked_str<'a, T: Deserialize<'a>>(text: &'a str) -> serde_json::Result<T> {
    let mut de = serde_json::Deserializer::from_str(text);
    de.disable_recursion_limit();
    let value = T::deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// qemu-ga's nesting limit: objects and arrays together.
pub(crate) const MAX_DEPTH: usize = 1024;

/// Something qemu-ga's parser rejects that serde_json accepts or words differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Issue {
    /// The same key twice in one object.
    DuplicateKey,
    /// A `\u` escape that is no valid character: its byte offset, and its length
    /// (12 for a surrogate pair).
    BadEscape(usize, usize),
    /// More than [`MAX_DEPTH`] levels.
    TooDeep,
}

impl Issue {
    fn text(self, text: &str) -> String {
        match self {
            Issue::DuplicateKey => "duplicate key".to_owned(),
            Issue::TooDeep => "JSON nesting depth limit exceeded".to_owned(),
            // The escape as written: `\u` and what follows, up to `len` bytes but not
            // past the string's closing quote.
            Issue::BadEscape(at, len) => {
                let escape = text.get(at..).unwrap_or("");
                let mut end = 0;
                for (i, c) in escape.char_indices() {
                    if i >= len {
                        break;
                    }
                    end = i + c.len_utf8();
                    if c == '"' && i >= 2 {
                        break;
                    }
                }
                format!("{} is not a valid Unicode character", &escape[..end])
            }
        }
    }
}

/// One pass over `text` (iterative, so any nesting is safe), in document order, for
/// what qemu-ga rejects and serde_json does not: a duplicate key at any depth
/// (reported once the duplicate's value has been read, where qemu-ga notices it), an
/// escape that is a lone surrogate, a non-character or not four hex digits, and
/// nesting deeper than [`MAX_DEPTH`]. Returns the first, with its byte offset. Text that
/// is not JSON is skipped over, not judged: serde_json reports it.
pub(crate) fn strict_issue(text: &str) -> Option<(usize, Issue)> {
    #[derive(Clone, Copy)]
    enum Level {
        Array,
        /// An object whose keys so far are `keys[start..]`, with `pending` set
        /// between a key and the end of its value.
        Object {
            start: usize,
            pending: bool,
        },
    }
    /// The keys of every open object, innermost last: one buffer for all levels,
    /// so an object costs no allocation of its own.
    struct Keys<'a> {
        done: SmallVec<[Cow<'a, str>; 8]>,
        /// The key whose value is being read, per open object (innermost last).
        pending: SmallVec<[Cow<'a, str>; 4]>,
    }
    /// A value just ended: in an object, its key is now checked and recorded.
    fn value_done<'a>(
        levels: &mut [Level],
        keys: &mut Keys<'a>,
        at: usize,
    ) -> Option<(usize, Issue)> {
        if let Some(Level::Object { start, pending }) = levels.last_mut() {
            if *pending {
                *pending = false;
                let key = keys.pending.pop()?;
                if keys.done[*start..].contains(&key) {
                    return Some((at, Issue::DuplicateKey));
                }
                keys.done.push(key);
            }
        }
        None
    }
    let bytes = text.as_bytes();
    // Inline room for what requests hold (a few levels, a few keys): a scan
    // allocates nothing unless the text is unusually deep or wide.
    let mut levels: SmallVec<[Level; 8]> = SmallVec::new();
    let mut keys = Keys {
        done: SmallVec::new(),
        pending: SmallVec::new(),
    };
    let mut expect_key = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' | b'[' => {
                if levels.len() == MAX_DEPTH {
                    return Some((i, Issue::TooDeep));
                }
                levels.push(if bytes[i] == b'{' {
                    Level::Object {
                        start: keys.done.len(),
                        pending: false,
                    }
                } else {
                    Level::Array
                });
                expect_key = bytes[i] == b'{';
                i += 1;
            }
            b'}' | b']' => {
                if let Some(Level::Object { start, pending }) = levels.pop() {
                    keys.done.truncate(start);
                    if pending {
                        // A key without a value: not JSON, which serde_json reports.
                        keys.pending.pop();
                    }
                }
                i += 1;
                if let Some(issue) = value_done(&mut levels, &mut keys, i) {
                    return Some(issue);
                }
            }
            b',' => {
                expect_key = matches!(levels.last(), Some(Level::Object { .. }));
                i += 1;
            }
            b':' => {
                expect_key = false;
                i += 1;
            }
            b'"' => {
                let (decoded, end) = match scan_string(text, i) {
                    Ok(found) => found,
                    Err((at, len)) => return Some((at, Issue::BadEscape(at, len))),
                };
                i = end;
                match levels.last_mut() {
                    Some(Level::Object { pending, .. }) if expect_key => {
                        if *pending {
                            // Two keys in a row: not JSON; the later one counts.
                            keys.pending.pop();
                        }
                        keys.pending.push(decoded);
                        *pending = true;
                        expect_key = false;
                    }
                    _ => {
                        if let Some(issue) = value_done(&mut levels, &mut keys, i) {
                            return Some(issue);
                        }
                    }
                }
            }
            b if b.is_ascii_alphanumeric() || b == b'-' => {
                // A number or keyword: one value.
                while i < bytes.len()
                    && (bytes[i].is_ascii_alphanumeric() || matches!(bytes[i], b'-' | b'+' | b'.'))
                {
                    i += 1;
                }
                if let Some(issue) = value_done(&mut levels, &mut keys, i) {
                    return Some(issue);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// Scans the string starting with the quote at `start`: its decoded text (borrowed when
/// it has no escapes) and the offset just past its closing quote; or the offset of a
/// `\u` escape that is no valid character, and its length. An unterminated string ends
/// the text.
fn scan_string(text: &str, start: usize) -> Result<(Cow<'_, str>, usize), (usize, usize)> {
    let bytes = text.as_bytes();
    let mut owned: Option<String> = None;
    let mut i = start + 1;
    let mut run = i;
    loop {
        let Some(k) = memchr::memchr2(b'"', b'\\', &bytes[i..]) else {
            return Ok((Cow::Borrowed(""), bytes.len()));
        };
        i += k;
        if bytes[i] == b'"' {
            let decoded = match owned {
                Some(mut s) => {
                    s.push_str(&text[run..i]);
                    Cow::Owned(s)
                }
                None => Cow::Borrowed(&text[run..i]),
            };
            return Ok((decoded, i + 1));
        }
        let s = owned.get_or_insert_with(String::new);
        s.push_str(&text[run..i]);
        let Some(&escaped) = bytes.get(i + 1) else {
            return Ok((Cow::Borrowed(""), bytes.len()));
        };
        if escaped != b'u' {
            // Any character may follow the backslash here (serde_json judges the
            // escape): step over all of it, or a multi-byte one would leave `run`
            // inside it.
            let Some(c) = text[i + 1..].chars().next() else {
                return Ok((Cow::Borrowed(""), bytes.len()));
            };
            s.push(match c {
                'n' => '\n',
                't' => '\t',
                'r' => '\r',
                'b' => '\u{8}',
                'f' => '\u{c}',
                other => other,
            });
            i += 1 + c.len_utf8();
            run = i;
            continue;
        }
        let at = i;
        let mut cp = hex4(bytes, i + 2).ok_or((at, 6))?;
        i += 6;
        if (0xD800..0xDC00).contains(&cp) {
            // A high surrogate must be followed by an escaped low one.
            let low = (bytes.get(i) == Some(&b'\\') && bytes.get(i + 1) == Some(&b'u'))
                .then(|| hex4(bytes, i + 2))
                .flatten()
                .filter(|low| (0xDC00..0xE000).contains(low))
                .ok_or((at, 6))?;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
            i += 6;
        }
        let c = char::from_u32(cp)
            .filter(|_| !is_noncharacter(cp))
            .ok_or((at, i - at))?;
        s.push(c);
        run = i;
    }
}

/// Four hex digits at `at`.
fn hex4(bytes: &[u8], at: usize) -> Option<u32> {
    let digits = bytes.get(at..at + 4)?;
    let text = std::str::from_utf8(digits).ok()?;
    if !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u32::from_str_radix(text, 16).ok()
}

/// Unicode's non-characters, which qemu-ga refuses to decode.
fn is_noncharacter(cp: u32) -> bool {
    (0xFDD0..=0xFDEF).contains(&cp) || cp & 0xFFFE == 0xFFFE
}

/// The byte offset serde_json's error points at (its line and column).
fn error_offset(text: &str, e: &serde_json::Error) -> usize {
    let line_start: usize = text
        .split_inclusive('\n')
        .take(e.line().saturating_sub(1))
        .map(str::len)
        .sum();
    (line_start + e.column().saturating_sub(1)).min(text.len())
}

/// [`parse_error_text`], with a misspelt keyword named as qemu-ga names it.
///
/// qemu-ga's lexer takes any run of lower-case letters as a keyword token, and its
/// parser rejects one that is not `true`, `false` or `null` wherever it reads a value
/// or a key: `invalid keyword 'junk'`. So when serde_json stops at such a run that
/// stands where a value or a key goes (first in the text, or after `[ { , :`), that
/// is the reference's error, whatever serde_json's own words (`expected value` for
/// `junk`, `expected ident` for `nul`, `key must be a string` for `{junk:1}`, a
/// missing separator after the `true` of `truex`).
fn describe_error(text: &str, e: &serde_json::Error) -> String {
    let what = parse_error_text(e);
    let at_a_value = matches!(
        what.as_str(),
        "expecting value"
            | "invalid keyword"
            | "key is not a string in object"
            | "expected separator in dict"
            | "expected separator in list"
    );
    match keyword_at(text, error_offset(text, e)) {
        Some(word) if at_a_value => format!("invalid keyword '{word}'"),
        _ => what,
    }
}

/// The run of lower-case letters that holds byte `at` or ends just before it, if it
/// is no valid keyword and stands where a value or a key goes.
fn keyword_at(text: &str, at: usize) -> Option<&str> {
    let bytes = text.as_bytes();
    let mut start = at.min(bytes.len());
    while start > 0 && bytes[start - 1].is_ascii_lowercase() {
        start -= 1;
    }
    let end = start
        + bytes[start..]
            .iter()
            .take_while(|b| b.is_ascii_lowercase())
            .count();
    let word = &text[start..end];
    if word.is_empty() || matches!(word, "true" | "false" | "null") {
        return None;
    }
    let before = bytes[..start]
        .iter()
        .rev()
        .find(|&&b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    matches!(before, None | Some(b'[' | b'{' | b',' | b':')).then_some(word)
}

/// Maps a serde_json error to the reference's `JSON parse error, <what>` suffix.
pub(crate) fn parse_error_text(e: &serde_json::Error) -> String {
    let full = e.to_string();
    // serde_json appends " at line L column C"; the reference has no positions.
    let msg = match full.rfind(" at line ") {
        Some(i) => &full[..i],
        None => &full,
    };
    if msg == DUPLICATE_KEY {
        return "duplicate key".to_owned();
    }
    let mapped = match msg {
        "expected value" | "EOF while parsing a value" => "expecting value",
        "expected `:`" => "missing : in object pair",
        "key must be a string" => "key is not a string in object",
        "expected `,` or `}`" | "EOF while parsing an object" => "expected separator in dict",
        "expected `,` or `]`" | "EOF while parsing a list" => "expected separator in list",
        "invalid escape" => "invalid escape sequence in string",
        "expected ident" => "invalid keyword",
        "invalid unicode code point" | "lone leading surrogate in hex escape" => {
            "invalid \\uXXXX escape in string"
        }
        "trailing characters" | "trailing comma" => "expecting value",
        "EOF while parsing a string" => "premature EOI",
        _ if msg.starts_with("control character") => "control character in string",
        _ => msg,
    };
    mapped.to_owned()
}

/// A double as qemu-ga 7.2 prints it, C's `%.17g`: 17 significant digits, trailing
/// zeros (and a trailing point) dropped, in exponent form (`e+XX`, at least two
/// exponent digits) when the exponent is below -4 or above 16: `1.0` is `1`, `0.1`
/// is `0.10000000000000001`, `-0.0` is `-0`, `1e17` is `1e+17`, `1e-7` is
/// `9.9999999999999995e-08`. Always valid JSON for a finite `x`; `inf`, `-inf` or
/// `nan` otherwise, as C prints them (serde_json values are never such).
pub(crate) fn format_g17(x: f64) -> String {
    if !x.is_finite() {
        return if x.is_nan() {
            "nan".to_owned()
        } else if x > 0.0 {
            "inf".to_owned()
        } else {
            "-inf".to_owned()
        };
    }
    // Correctly rounded to 17 significant digits (ties to even, as glibc's printf).
    let sci = format!("{:.16e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if x.is_sign_negative() { "-" } else { "" };
    let (int, frac) = if !(-4..17).contains(&exp) {
        (digits[..1].to_owned(), digits[1..].to_owned())
    } else if exp >= 0 {
        let point = exp as usize + 1;
        (digits[..point].to_owned(), digits[point..].to_owned())
    } else {
        let zeros = "0".repeat((-exp - 1) as usize);
        ("0".to_owned(), zeros + &digits)
    };
    let frac = frac.trim_end_matches('0');
    let mut out = format!("{sign}{int}");
    if !frac.is_empty() {
        out.push('.');
        out.push_str(frac);
    }
    if !(-4..17).contains(&exp) {
        let exp_sign = if exp < 0 { '-' } else { '+' };
        out.push_str(&format!("e{exp_sign}{:02}", exp.unsigned_abs()));
    }
    out
}

/// Sorts dictionary keys into the order qemu-ga (7.2) iterates a parsed object:
/// its QDict is a 512-bucket hash table walked from bucket 0 to 511, newest entry
/// first within a bucket. `names` must be in input (insertion) order.
///
/// The reference agent checks request members in this order, so when several members
/// are wrong this decides which error it reports; we report the same one.
pub fn qdict_order(names: &mut [&str]) {
    // Stable sort by bucket; reverse first so that, within a bucket, later insertions
    // come first.
    names.reverse();
    names.sort_by_key(|k| qdict_bucket(k));
}

/// Sorts an argument object's member names into the order qemu-ga's QAPI input
/// visitor reports leftovers in: a GLib hash table (`g_str_hash`, open addressing)
/// filled in [`qdict_order`]. `names` must be in input order. Only the first
/// unexpected member is reported, so this decides which one.
pub(crate) fn ghash_order(names: &mut Vec<&str>) {
    qdict_order(names);
    const PRIMES: [u32; 12] = [1, 2, 3, 7, 13, 31, 61, 127, 251, 509, 1021, 2039];
    let mut shift = 3u32;
    // GLib grows the table when it is almost full; size it the way it would end up.
    while (1usize << shift) <= names.len() + names.len() / 16 {
        shift += 1;
    }
    let shift = shift as usize;
    if shift >= PRIMES.len() {
        // Thousands of members: keep the dictionary order rather than model GLib's
        // larger tables. Only which leftover is named first could differ.
        return;
    }
    let (size, modulus) = (1usize << shift, PRIMES[shift]);
    // Triangular probing over a power-of-two table visits every slot, and the table
    // always has a free one, so each insertion ends.
    let mut slots: Vec<Option<&str>> = vec![None; size];
    for name in names.iter() {
        let mut h: u32 = 5381;
        for &b in name.as_bytes() {
            // g_str_hash works on (signed) chars.
            h = (h << 5).wrapping_add(h).wrapping_add(b as i8 as i32 as u32);
        }
        let h = h.max(2);
        let mut index = (h % modulus) as usize;
        let mut step = 0;
        while slots[index].is_some() {
            step += 1;
            index = (index + step) & (size - 1);
        }
        slots[index] = Some(name);
    }
    *names = slots.into_iter().flatten().collect();
}

/// The bucket (0..512) QEMU's QDict puts `key` in.
pub fn qdict_bucket(key: &str) -> u32 {
    let bytes = key.as_bytes();
    let mut value: u32 = 0x238F_13AFu32.wrapping_mul(bytes.len() as u32);
    for (i, &b) in bytes.iter().enumerate() {
        value = value.wrapping_add(u32::from(b) << ((i * 5) % 24));
    }
    (1_103_515_243u32.wrapping_mul(value).wrapping_add(12345)) % 512
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(text: &str) -> String {
        match parse_top_level(text) {
            Ok(_) => panic!("{text} parsed"),
            Err(e) => e,
        }
    }

    #[test]
    fn a_backslash_before_a_multibyte_character_is_an_error_not_a_panic() {
        // Found by the agent fuzz target: the string scan stepped one byte past the
        // backslash and then sliced inside the character.
        for input in [
            "{\"id\":\"\\\u{7a1}x\"}",
            "{\"\\\u{7a1}\":1,\"\\\u{7a1}\":2}",
            "{\"a\":\"\\\u{1F600}\"}",
        ] {
            assert!(parse_top_level(input).is_err(), "{input}");
        }
    }

    #[test]
    fn what_qemu_ga_rejects_and_serde_json_accepts_is_rejected_in_its_words() {
        // Texts observed from qemu-ga 7.2 for the same inputs.
        let bad_char = |e: &str| format!("{e} is not a valid Unicode character");
        for (input, want) in [
            (r#"{"id":{"a":1,"a":2}}"#, "duplicate key".to_owned()),
            (
                r#"{"x":[{"k":{"a":1,"\u0061":2}}]}"#,
                "duplicate key".to_owned(),
            ),
            (r#"{"id":"\uFFFF"}"#, bad_char(r"\uFFFF")),
            (r#"{"id":"\uFDD0"}"#, bad_char(r"\uFDD0")),
            (r#"{"id":"\uD800"}"#, bad_char(r"\uD800")),
            (r#"{"id":"\uDC00"}"#, bad_char(r"\uDC00")),
            (r#"{"id":"\uD800\u0041"}"#, bad_char(r"\uD800")),
            (r#"{"id":"\uDBFF\uDFFF"}"#, bad_char(r"\uDBFF\uDFFF")),
            (r#"{"id":"\u12"}"#, bad_char(r#"\u12""#)),
            (r#"{"id":"\u12G4"}"#, bad_char(r"\u12G4")),
            (r#"{"id":nul}"#, "invalid keyword 'nul'".to_owned()),
            (r#"{"id":tru}"#, "invalid keyword 'tru'".to_owned()),
        ] {
            assert_eq!(parse_err(input), want, "{input}");
        }
        // Escapes that are valid characters still decode, and compare as keys.
        let m = Members::parse_object(r#"{"\ud83d\ude00":1,"\u0000":2}"#).unwrap();
        assert_eq!(m.get("\u{1F600}").unwrap().get(), "1");
    }

    #[test]
    fn a_run_of_lower_case_letters_where_a_value_goes_is_an_invalid_keyword() {
        // Texts observed from qemu-ga 7.2.22 for the same messages.
        for (input, want) in [
            ("junk", "invalid keyword 'junk'"),
            ("truex", "invalid keyword 'truex'"),
            (
                r#"{"execute":"guest-ping","id":junk}"#,
                "invalid keyword 'junk'",
            ),
            (r#"{"id":nullx}"#, "invalid keyword 'nullx'"),
            (r#"{"id":[truex]}"#, "invalid keyword 'truex'"),
            (r#"{"id":[truefalse]}"#, "invalid keyword 'truefalse'"),
            (r#"{"id":[1, junk]}"#, "invalid keyword 'junk'"),
            (
                r#"{"execute":"guest-ping",junk:1}"#,
                "invalid keyword 'junk'",
            ),
            (r#"{"id":nul}"#, "invalid keyword 'nul'"),
            // Where qemu-ga expects a separator or a colon, it says so.
            (r#"{"id":[true x]}"#, "expected separator in list"),
            (r#"{"id":1 junk}"#, "expected separator in dict"),
            (r#"{"id" junk}"#, "missing : in object pair"),
            // A valid keyword is no keyword error.
            (r#"{"id":true junk}"#, "expected separator in dict"),
            (r#"{"id":[true,junk]}"#, "invalid keyword 'junk'"),
            ("{1:2}", "key is not a string in object"),
        ] {
            assert_eq!(parse_err(input), want, "{input}");
        }
    }

    #[test]
    fn a_token_qemu_ga_lexer_refuses_is_a_stray_with_its_partial_text() {
        // The first reply qemu-ga 7.2.22 gives to each (it may add `expecting value`
        // replies for the tail it lexes afresh; we give one error per message).
        for (input, want) in [
            (r#"{"execute":"guest-ping","id":01}"#, "stray '01'"),
            (r#"{"id":-01}"#, "stray '-01'"),
            (r#"{"id":00}"#, "stray '00'"),
            (r#"{"id":[01,2]}"#, "stray '01'"),
            (r#"{"id":5.}"#, "stray '5.}'"),
            (r#"{"id":1e}"#, "stray '1e}'"),
            (r#"{"id":1E+}"#, "stray '1E+}'"),
            (r#"{"id":-x}"#, "stray '-x'"),
            (r#"{"id":-}"#, "stray '-}'"),
            (r#"{"id":0.1.2}"#, "stray '.'"),
            (r#"{"id":.5}"#, "stray '.'"),
            (r#"{"id":+5}"#, "stray '+'"),
            (r#"{"id":tRUE}"#, "stray 'R'"),
            (r#"{"id":0.}"#, "stray '0.}'"),
            (r#"{"id":1.e5}"#, "stray '1.e'"),
            // qemu-ga's lexer takes no exponent after a bare zero.
            (r#"{"id":0E5,"x":}"#, "stray 'E'"),
            (r#"{"id":-0E5,"id":1}"#, "stray 'E'"),
            ("Junk", "stray 'J'"),
            // A non-ASCII byte: qemu-ga quotes the one byte, as U+FFFD.
            ("{\"id\":é}", "stray '\u{FFFD}'"),
            ("{\"id\":abcé}", "stray '\u{FFFD}'"),
            ("{\"id\":-é}", "stray '-\u{FFFD}'"),
            // The lexer runs over the whole message before the parser: its error wins
            // over a parser error earlier in the text.
            (r#"{"a" 1, "id":01}"#, "stray '01'"),
            (r#"{"a":1,"a":2,"x":-}"#, "stray '-}'"),
            (r#"{"id":"\u12G4","x":01}"#, "stray '01'"),
            (r#"{"id":junk,"x":01}"#, "stray '01'"),
            // A control byte inside a string (the framer reports these first).
            ("{\"id\":\"ab\n\"}", "stray '\"ab\n'"),
        ] {
            assert_eq!(parse_err(input), want, "{input}");
        }
        // What the lexer takes and the parser refuses keeps the parser's words.
        for (input, want) in [
            (r#"{"id":0x}"#, "expected separator in dict"),
            (r#"{"id":[1,2,]}"#, "expecting value"),
        ] {
            assert_eq!(parse_err(input), want, "{input}");
        }
        // Valid numbers pass the lexer.
        for n in ["0", "-0", "10", "-1.5e+3", "0.25E-2", "0.0e1", "1e9", "123"] {
            assert_eq!(lexer_error(&format!("[{n}]")), None, "{n}");
        }
    }

    #[test]
    fn nesting_past_the_limit_after_a_lexer_error_is_the_lexer_error() {
        let deep = format!("[01,{}", "[".repeat(MAX_DEPTH));
        assert_eq!(parse_err(&deep), "stray '01'");
        let deep = format!("{}01", "[".repeat(MAX_DEPTH + 1));
        assert_eq!(parse_err(&deep), "JSON nesting depth limit exceeded");
    }

    #[test]
    fn the_first_problem_in_the_text_is_the_one_reported() {
        // The duplicate is noticed after its value is read, as qemu-ga does.
        assert_eq!(
            parse_err(r#"{"a":1,"a":"\uFFFF"}"#),
            r"\uFFFF is not a valid Unicode character"
        );
        assert_eq!(
            parse_err(r#"{"a":"\uFFFF","a":1}"#),
            r"\uFFFF is not a valid Unicode character"
        );
        assert_eq!(parse_err(r#"{"a":1,"a":2} junk"#), "duplicate key");
        // A syntax error before the duplicate wins.
        assert_eq!(
            parse_err(r#"{"a":1 "a":2,"a":3}"#),
            "expected separator in dict"
        );
    }

    #[test]
    fn nesting_is_accepted_to_1024_levels_and_refused_past_them() {
        let nest = |n: usize| format!("{{\"id\":{}{}}}", "[".repeat(n), "]".repeat(n));
        // 1 level for the object itself.
        assert!(parse_top_level(&nest(1023)).is_ok());
        let id = Members::parse_object(&nest(1023))
            .unwrap()
            .get("id")
            .unwrap()
            .get()
            .len();
        assert_eq!(id, 2046);
        assert_eq!(parse_err(&nest(1024)), "JSON nesting depth limit exceeded");
        // serde_json alone stops at 128.
        assert!(parse_top_level(&nest(200)).is_ok());
    }

    #[test]
    fn doubles_print_as_qemu_ga_prints_them() {
        // Each observed in qemu-ga 7.2.22's echo of the id (the number as sent, then
        // the echo).
        for (sent, echoed) in [
            ("1.0", "1"),
            ("1e2", "100"),
            ("0.1", "0.10000000000000001"),
            ("-0.0", "-0"),
            ("1e20", "1e+20"),
            ("1.5", "1.5"),
            ("12345678901234567890123", "1.2345678901234568e+22"),
            ("1e-7", "9.9999999999999995e-08"),
            ("1e21", "1e+21"),
            ("1e16", "10000000000000000"),
            ("1e17", "1e+17"),
            ("-9223372036854775809", "-9.2233720368547758e+18"),
            ("18446744073709551616", "1.8446744073709552e+19"),
            ("1.00000762939453125", "1.0000076293945312"),
            ("5e-324", "4.9406564584124654e-324"),
            ("1.7976931348623157e308", "1.7976931348623157e+308"),
            ("0.5", "0.5"),
            ("100.25", "100.25"),
            ("1e-5", "1.0000000000000001e-05"),
            ("1e-4", "0.0001"),
            ("123456789.125", "123456789.125"),
            ("2.5e15", "2500000000000000"),
        ] {
            let x: f64 = sent.parse().unwrap();
            assert_eq!(format_g17(x), echoed, "{sent}");
        }
        assert_eq!(format_g17(f64::INFINITY), "inf");
    }

    extern "C" {
        fn snprintf(buf: *mut std::ffi::c_char, n: usize, fmt: *const std::ffi::c_char, ...)
            -> i32;
    }

    /// glibc's `%.17g`, which qemu-ga prints doubles with.
    fn libc_g17(x: f64) -> String {
        let mut buf = [0 as std::ffi::c_char; 64];
        // SAFETY: the buffer is 64 bytes and snprintf writes at most that many, NUL
        // included; the format takes exactly one double.
        let n = unsafe { snprintf(buf.as_mut_ptr(), buf.len(), c"%.17g".as_ptr(), x) };
        let bytes: Vec<u8> = buf[..n as usize].iter().map(|&c| c as u8).collect();
        String::from_utf8(bytes).unwrap()
    }

    proptest::proptest! {
        #[test]
        fn format_g17_is_glibc_printf(bits: u64) {
            let x = f64::from_bits(bits);
            proptest::prop_assume!(x.is_finite());
            proptest::prop_assert_eq!(format_g17(x), libc_g17(x));
        }

        #[test]
        fn format_g17_is_glibc_printf_on_short_decimals(m in -100_000i64..100_000, e in -30i32..30) {
            // Numbers as people write them: few digits, any scale, and their ties.
            let x: f64 = format!("{m}e{e}").parse().unwrap();
            proptest::prop_assert_eq!(format_g17(x), libc_g17(x));
            let tie = x + x * f64::EPSILON / 2.0;
            proptest::prop_assert_eq!(format_g17(tie), libc_g17(tie));
        }
    }

    #[test]
    fn format_g17_is_glibc_printf_at_edges() {
        let mut cases = vec![0.0, -0.0, f64::MIN_POSITIVE, f64::MAX, f64::MIN, 5e-324];
        for k in 0..64 {
            let p = 2f64.powi(k);
            cases.extend([p, p + 1.0, p - 1.0, 1.0 + 1.0 / p, 10f64.powi(k - 20)]);
        }
        for x in cases {
            assert_eq!(format_g17(x), libc_g17(x), "{x:e}");
        }
    }

    fn order(keys: &[&'static str]) -> Vec<&'static str> {
        let mut v = keys.to_vec();
        qdict_order(&mut v);
        v
    }

    #[test]
    fn qdict_order_matches_observed_reference_replies() {
        // Member orders observed in qemu-ga 7.2 replies (reference note 1.7).
        assert_eq!(order(&["return", "id"]), ["return", "id"]);
        assert_eq!(order(&["error", "id"]), ["id", "error"]);
        assert_eq!(order(&["class", "desc"]), ["class", "desc"]);
        assert_eq!(
            order(&["count", "buf-b64", "eof"]),
            ["count", "buf-b64", "eof"]
        );
        assert_eq!(order(&["position", "eof"]), ["eof", "position"]);
        assert_eq!(
            order(&["name", "enabled", "success-response"]),
            ["enabled", "name", "success-response"]
        );
        assert_eq!(
            order(&["supported_commands", "version"]),
            ["version", "supported_commands"]
        );
    }

    #[test]
    fn visitor_order_terminates_for_any_member_count() {
        for n in [0usize, 1, 7, 8, 15, 16, 100, 2047, 2048, 5000] {
            let owned: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
            let mut names: Vec<&str> = owned.iter().map(String::as_str).collect();
            ghash_order(&mut names);
            assert_eq!(names.len(), n);
        }
        // Observed on qemu-ga 7.2: {"id":1,"zzz":2,"aaa":3} reports 'zzz'.
        let mut names = vec!["id", "zzz", "aaa"];
        ghash_order(&mut names);
        names.retain(|n| *n != "id");
        assert_eq!(names, ["zzz", "aaa"]);
    }

    #[test]
    fn duplicate_member_is_reported_as_duplicate_key() {
        let err = match parse_top_level(r#"{"a":1,"a":2}"#) {
            Err(e) => e,
            Ok(_) => panic!("duplicate accepted"),
        };
        assert_eq!(err, "duplicate key");
    }

    #[test]
    fn members_borrow_unescaped_keys() {
        let m = Members::parse_object(r#"{"a":[1, 2],"b\u0041":"x"}"#).unwrap();
        assert!(matches!(m.0[0].0, Cow::Borrowed("a")));
        assert_eq!(m.0[1].0, "bA");
        assert_eq!(m.get("a").unwrap().get(), "[1, 2]");
    }

    #[test]
    fn serde_errors_use_reference_words() {
        let cases = [
            ("[1,]", "expecting value"),
            (r#"{"a" 1}"#, "missing : in object pair"),
            ("{1:2}", "key is not a string in object"),
            (r#"{"a":1 "b":2}"#, "expected separator in dict"),
            ("[1 2]", "expected separator in list"),
            (r#""\x41""#, "invalid escape sequence in string"),
            ("}", "expecting value"),
        ];
        for (input, want) in cases {
            match parse_top_level(input) {
                Err(e) => assert_eq!(e, want, "input {input}"),
                Ok(_) => panic!("{input} parsed"),
            }
        }
    }
}
