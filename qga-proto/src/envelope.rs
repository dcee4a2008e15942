//! Requests (`{"execute", "arguments", "id"}`) and replies (`{"return"|"error", "id"}`).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::json::{
    format_g17, from_checked_str, parse_error_text, parse_top_level, split_checked_object,
    BorrowedStr, Members, TopLevel,
};
use crate::{Base64Text, Command, QgaError};

/// A parsed request whose `arguments` are still raw JSON, borrowed from the message.
///
/// Parse late: the arguments are only typed once the command is known (see
/// [`Command::from_arguments`]), so a 48 MiB `buf-b64` is never copied here.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The command name.
    pub execute: Cow<'a, str>,
    /// The `arguments` object, raw; `None` when absent (= `{}`).
    pub arguments: Option<&'a RawValue>,
    /// The `id`, any JSON value; echoed in the reply.
    pub id: Option<Value>,
}

/// Why a message is not a valid request, and the `id` to echo in the error reply
/// (present whenever the message was an object with an `id`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{error}")]
pub struct EnvelopeError {
    /// The request's `id`, if one could be read.
    pub id: Option<Value>,
    /// The error to reply with (class GenericError, the reference's text).
    pub error: QgaError,
}

impl EnvelopeError {
    fn new(id: Option<Value>, desc: impl Into<String>) -> Self {
        EnvelopeError {
            id,
            error: QgaError::generic(desc),
        }
    }

    fn parse(what: impl fmt::Display) -> Self {
        Self::new(None, format!("JSON parse error, {what}"))
    }
}

impl<'a> Request<'a> {
    /// Parses one message (a complete JSON value) into a request, with qemu-ga's
    /// checks and texts:
    ///
    /// * not JSON: `JSON parse error, <what>` (the reference's words where serde_json
    ///   lets us tell which case it is; `duplicate key` for a repeated member);
    /// * not an object: `QMP input must be a JSON object`;
    /// * `execute` not a string / `arguments` not an object / another member:
    ///   `QMP input member 'execute' must be a string`,
    ///   `QMP input member 'arguments' must be an object`,
    ///   `QMP input member 'x' is unexpected` (members are checked in qemu-ga's hash
    ///   order, so the same member is reported first);
    /// * no `execute`: `QMP input lacks member 'execute'`.
    ///
    /// ```
    /// let req = qga_proto::Request::parse(br#"{"execute":"guest-ping","id":7}"#).unwrap();
    /// assert_eq!(req.execute, "guest-ping");
    /// assert_eq!(req.id, Some(serde_json::json!(7)));
    ///
    /// let err = qga_proto::Request::parse(br#"{"id":5}"#).unwrap_err();
    /// assert_eq!(err.error.desc, "QMP input lacks member 'execute'");
    /// assert_eq!(err.id, Some(serde_json::json!(5)));
    /// ```
    pub fn parse(msg: &'a [u8]) -> Result<Self, EnvelopeError> {
        let text = std::str::from_utf8(msg)
            .map_err(|_| EnvelopeError::parse("invalid UTF-8 sequence in string"))?;
        let parsed = parse_top_level(text).map_err(EnvelopeError::parse)?;
        let members = match parsed {
            TopLevel::Object(m) => m,
            TopLevel::NotObject => {
                return Err(EnvelopeError::new(None, "QMP input must be a JSON object"))
            }
        };
        let id = match members.get("id") {
            Some(raw) => {
                Some(parse_id(raw.get()).map_err(|e| EnvelopeError::parse(parse_error_text(&e)))?)
            }
            None => None,
        };
        // Most requests are well formed: checked in input order first, they need no
        // ordering. Only when something is wrong does the order decide which error
        // qemu-ga reports, so then the members go again in its dictionary order.
        if let Some((execute, arguments)) = Self::well_formed(&members) {
            return Ok(Request {
                execute,
                arguments,
                id,
            });
        }
        let mut execute = None;
        let mut arguments = None;
        for name in members.names_in_qdict_order() {
            let Some(raw) = members.get(name) else {
                continue;
            };
            match name {
                "execute" => {
                    if !raw.get().starts_with('"') {
                        return Err(EnvelopeError::new(
                            id,
                            "QMP input member 'execute' must be a string",
                        ));
                    }
                    let s: BorrowedStr<'a> = serde_json::from_str(raw.get())
                        .map_err(|e| EnvelopeError::parse(parse_error_text(&e)))?;
                    execute = Some(s.0);
                }
                "arguments" => {
                    if !raw.get().starts_with('{') {
                        return Err(EnvelopeError::new(
                            id,
                            "QMP input member 'arguments' must be an object",
                        ));
                    }
                    arguments = Some(raw);
                }
                "id" => {}
                other => {
                    let desc = format!("QMP input member '{other}' is unexpected");
                    return Err(EnvelopeError::new(id, desc));
                }
            }
        }
        match execute {
            Some(execute) => Ok(Request {
                execute,
                arguments,
                id,
            }),
            None => Err(EnvelopeError::new(id, "QMP input lacks member 'execute'")),
        }
    }
}

impl<'a> Request<'a> {
    /// `execute` and `arguments`, if the members hold no error at all: `execute` a
    /// string, `arguments` (if present) an object, nothing else but `id`.
    fn well_formed(members: &Members<'a>) -> Option<(Cow<'a, str>, Option<&'a RawValue>)> {
        let mut execute = None;
        let mut arguments = None;
        for (name, raw) in &members.0 {
            match name.as_ref() {
                "execute" if raw.get().starts_with('"') => {
                    let s: BorrowedStr<'a> = serde_json::from_str(raw.get()).ok()?;
                    execute = Some(s.0);
                }
                "arguments" if raw.get().starts_with('{') => arguments = Some(*raw),
                "id" => {}
                _ => return None,
            }
        }
        Some((execute?, arguments))
    }
}

/// How far into a message [`Request::parse_file_write`] looks for the `"buf-b64"`
/// key, and how far from its end for the payload's closing quote: the envelope and
/// the other arguments sit around the payload in what clients send; anything else
/// takes the full path.
const FILE_WRITE_EDGE: usize = 4096;

/// Payloads of up to this many bytes are decoded at once by
/// [`Request::parse_file_write`] (the decoding checks them); larger ones are
/// checked there and decoded piece by piece as they are written.
const FILE_WRITE_WHOLE: usize = 1 << 20;

impl<'a> Request<'a> {
    /// A guest-file-write request read without walking its payload but to check
    /// it, for the common well-formed request; `None` for anything else, which the
    /// caller then gives to [`Request::parse`] and
    /// [`GuestFileWrite::borrowed_arguments`](crate::GuestFileWrite::borrowed_arguments)
    /// (the full path, which also finds the error to report). When it answers, the
    /// answer is theirs: the request's `id` and the arguments, the payload borrowed
    /// from `msg`.
    ///
    /// A payload of at most 1 MiB (decoded) is checked by
    /// decoding it whole, into `scratch`'s buffer, which the returned payload then
    /// holds ([`Base64Text::into_scratch`] gives it back) and hands out in pieces as
    /// if it decoded them; a larger one is checked with SIMD and decoded later. On
    /// `None`, `scratch` is left as it was but for its contents.
    ///
    /// How: the `buf-b64` string is taken to run from its opening quote (the key in
    /// the first 4 KiB) to the first quote in the last 4 KiB of the message, and
    /// must be base64 text that [`Base64Text`]'s SIMD path accepts (so every byte
    /// is ASCII, none a quote, a backslash or a control character: the quote found
    /// is the string's end). The message with that string emptied (a few hundred
    /// bytes) goes through the full path, which must find the emptied string exactly
    /// where it was, as the value of the `arguments`' member `buf-b64`. The two
    /// messages differ only in that value's plain text, which no check of the full
    /// path but the base64 one looks at: a duplicate key, a bad escape, the depth,
    /// the UTF-8 and lexer rules, the member checks and their order all come out the
    /// same.
    ///
    /// ```
    /// let payload = "aGVsbG8gd29y".repeat(100); // "hello wor" 100 times
    /// let msg = format!(
    ///     r#"{{"execute":"guest-file-write","arguments":{{"handle":1000,"buf-b64":"{payload}"}},"id":3}}"#
    /// );
    /// let mut scratch = Vec::new();
    /// let (id, args) = qga_proto::Request::parse_file_write(msg.as_bytes(), &mut scratch).unwrap();
    /// assert_eq!((id, args.handle, args.count), (Some(serde_json::json!(3)), 1000, None));
    /// assert_eq!(args.buf_b64.decoded_len(), 900);
    /// assert!(args.buf_b64.into_scratch().unwrap().starts_with(b"hello wor"));
    /// // An escape in the payload: the full path's matter.
    /// let msg = msg.replacen("aGVs", "aG\\u0056s", 1);
    /// assert!(qga_proto::Request::parse_file_write(msg.as_bytes(), &mut scratch).is_none());
    /// ```
    pub fn parse_file_write(
        msg: &'a [u8],
        scratch: &mut Vec<u8>,
    ) -> Option<(Option<Value>, crate::GuestFileWriteArgs<'a>)> {
        const KEY: &[u8] = b"\"buf-b64\"";
        let ws = |mut i: usize| {
            while msg
                .get(i)
                .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
            {
                i += 1;
            }
            i
        };
        let head = &msg[..msg.len().min(FILE_WRITE_EDGE)];
        let key = memchr::memmem::find(head, KEY)?;
        let colon = ws(key + KEY.len());
        if msg.get(colon) != Some(&b':') {
            return None;
        }
        let quote = ws(colon + 1);
        if msg.get(quote) != Some(&b'"') {
            return None;
        }
        let start = quote + 1;
        // Not proven the string's end until the text between is checked below.
        let from = start.max(msg.len().saturating_sub(FILE_WRITE_EDGE));
        let end = from + memchr::memchr(b'"', &msg[from..])?;
        // The message with the payload emptied: `"buf-b64":""`.
        let mut skeleton = Vec::with_capacity(msg.len() - (end - start));
        skeleton.extend_from_slice(&msg[..start]);
        skeleton.extend_from_slice(&msg[end..]);
        let req = Request::parse(&skeleton).ok()?;
        if req.execute != crate::GuestFileWrite::NAME {
            return None;
        }
        let arguments = req.arguments?;
        let members = split_checked_object(arguments.get())?;
        let (_, value) = members.iter().find(|(name, _)| *name == "buf-b64")?;
        // The emptied string, not some other `""` that happens to be there.
        let emptied = &skeleton[quote..quote + 2];
        if value.as_ptr() != emptied.as_ptr() || value.len() != 2 {
            return None;
        }
        let args = crate::GuestFileWrite::borrowed_arguments(Some(arguments)).ok()?;
        // Last, the payload's check (what it costs, it costs once).
        let text = &msg[start..end];
        let payload = if text.len() <= crate::Base64::encoded_len(FILE_WRITE_WHOLE) {
            match Base64Text::decode_plain_into(text, std::mem::take(scratch)) {
                Ok(payload) => payload,
                Err(buf) => {
                    *scratch = buf;
                    return None;
                }
            }
        } else {
            Base64Text::parse_plain(text)?
        };
        let args = crate::GuestFileWriteArgs {
            handle: args.handle,
            buf_b64: payload,
            count: args.count,
        };
        Some((req.id, args))
    }
}

/// Parses the (checked) raw `id`. serde_json reads the integer `-0` as the double
/// `-0.0`, which would be echoed as `-0`; qemu-ga reads it as the integer 0 and echoes
/// `0`. So an integer `-0` is read as `0` (a double `-0.0` stays `-0.0`).
fn parse_id(raw: &str) -> serde_json::Result<Value> {
    if memchr::memmem::find(raw.as_bytes(), b"-0").is_none() {
        return from_checked_str(raw);
    }
    let mut text = raw.as_bytes().to_vec();
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'"' => {
                // Skip the string.
                i += 1;
                while i < text.len() && text[i] != b'"' {
                    i += if text[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' if text.get(i + 1) == Some(&b'0')
                && !matches!(text.get(i + 2), Some(b'0'..=b'9' | b'.' | b'e' | b'E')) =>
            {
                text[i] = b' ';
                i += 2;
            }
            _ => i += 1,
        }
    }
    // Only an ASCII '-' was replaced by a space: still UTF-8.
    let text = String::from_utf8(text).map_err(serde::de::Error::custom)?;
    from_checked_str(&text)
}

/// A request to send: `{"execute": .., "arguments": .., "id": ..}`, serialisable.
///
/// ```
/// use qga_proto::{Execute, GuestPing, GuestSync};
/// let ping = serde_json::to_string(&Execute::command(&GuestPing {}, None)).unwrap();
/// assert_eq!(ping, r#"{"execute":"guest-ping"}"#);
/// let id = serde_json::json!(1);
/// let sync = serde_json::to_string(&Execute::command(&GuestSync { id: 42 }, Some(&id))).unwrap();
/// assert_eq!(sync, r#"{"execute":"guest-sync","arguments":{"id":42},"id":1}"#);
/// ```
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Execute<'a, A: Serialize> {
    /// Command name.
    pub execute: &'a str,
    /// Arguments, omitted when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<&'a A>,
    /// Request id, omitted when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a Value>,
}

impl<'a, C: Command> Execute<'a, C> {
    /// The request for a typed command; `arguments` is left out for commands that
    /// declare no members.
    pub fn command(cmd: &'a C, id: Option<&'a Value>) -> Self {
        Execute {
            execute: C::NAME,
            arguments: if C::HAS_ARGUMENTS { Some(cmd) } else { None },
            id,
        }
    }
}

/// A reply: `{"return": T}` or `{"error": {"class", "desc"}}`, plus `id` when the
/// request had one. Serialises compactly with `return`/`error` first and `id` last.
#[derive(Debug, Clone, PartialEq)]
pub struct Response<T> {
    /// The command's result or the error.
    pub result: Result<T, QgaError>,
    /// The request's id, echoed.
    pub id: Option<Value>,
}

impl<T> Response<T> {
    /// A successful reply.
    pub fn ok(value: T, id: Option<Value>) -> Self {
        Response {
            result: Ok(value),
            id,
        }
    }

    /// An error reply.
    pub fn err(error: QgaError, id: Option<Value>) -> Self {
        Response {
            result: Err(error),
            id,
        }
    }
}

impl<T: Serialize> Serialize for Response<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(1 + usize::from(self.id.is_some())))?;
        match &self.result {
            Ok(v) => map.serialize_entry("return", v)?,
            Err(e) => map.serialize_entry("error", e)?,
        }
        if let Some(id) = &self.id {
            if has_float(id) {
                map.serialize_entry("id", &EchoId(id))?;
            } else {
                map.serialize_entry("id", id)?;
            }
        }
        map.end()
    }
}

/// Whether `v` holds a number that is a double (not an integer) at any depth.
/// Iterative, so any nesting is safe.
fn has_float(v: &Value) -> bool {
    // Most ids are one integer or string: no walk, no allocation.
    match v {
        Value::Number(n) => return n.is_f64(),
        Value::Array(_) | Value::Object(_) => {}
        _ => return false,
    }
    let mut todo = vec![v];
    while let Some(v) = todo.pop() {
        match v {
            Value::Number(n) if n.is_f64() => return true,
            Value::Array(a) => todo.extend(a),
            Value::Object(m) => todo.extend(m.values()),
            _ => {}
        }
    }
    false
}

/// An id serialised as qemu-ga 7.2 echoes it: a double re-printed with `%.17g`
/// (`1.0` as `1`, `0.1` as `0.10000000000000001`, `1e20` as `1e+20`), the rest as
/// serde_json writes it. The double goes out as raw JSON text, so the exact text needs
/// serde_json's serializer; others get the same number.
struct EchoId<'a>(&'a Value);

impl Serialize for EchoId<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Number(n) if n.is_f64() => {
                let x = n.as_f64().unwrap_or_default();
                let raw =
                    RawValue::from_string(format_g17(x)).map_err(serde::ser::Error::custom)?;
                raw.serialize(s)
            }
            Value::Array(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for v in a {
                    seq.serialize_element(&EchoId(v))?;
                }
                seq.end()
            }
            Value::Object(m) => {
                let mut map = s.serialize_map(Some(m.len()))?;
                for (k, v) in m {
                    map.serialize_entry(k, &EchoId(v))?;
                }
                map.end()
            }
            other => other.serialize(s),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Response<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Response<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a QGA reply object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut result: Option<Result<T, QgaError>> = None;
                let mut id = None;
                while let Some(key) = map.next_key::<BorrowedStr<'de>>()? {
                    match &*key.0 {
                        "return" | "error" if result.is_some() => {
                            return Err(de::Error::custom("reply has both return and error"))
                        }
                        "return" => result = Some(Ok(map.next_value()?)),
                        "error" => result = Some(Err(map.next_value()?)),
                        "id" => id = Some(map.next_value()?),
                        _ => {
                            map.next_value::<de::IgnoredAny>()?;
                        }
                    }
                }
                let result = result
                    .ok_or_else(|| de::Error::custom("reply has neither return nor error"))?;
                Ok(Response { result, id })
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// A reply whose `return` value is kept as raw JSON, borrowed from the message: for
/// clients that match the `id` before deciding how to type the result.
pub type RawResponse<'a> = Response<&'a RawValue>;

impl<'a> Response<&'a RawValue> {
    /// Parses a reply message without typing its `return` value.
    ///
    /// ```
    /// let reply = qga_proto::RawResponse::parse(br#"{"return": {"count": 3}, "id": 9}"#).unwrap();
    /// assert_eq!(reply.result.unwrap().get(), r#"{"count": 3}"#);
    /// assert_eq!(reply.id, Some(serde_json::json!(9)));
    /// ```
    pub fn parse(msg: &'a [u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(msg)
    }

    /// Types the `return` value as `T`.
    pub fn typed<T: Deserialize<'a>>(self) -> Result<Response<T>, serde_json::Error> {
        let result = match self.result {
            Ok(raw) => Ok(serde_json::from_str(raw.get())?),
            Err(e) => Err(e),
        };
        Ok(Response {
            result,
            id: self.id,
        })
    }
}
