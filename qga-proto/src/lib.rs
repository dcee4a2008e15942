//! Wire types for the QEMU Guest Agent (QGA) protocol.
//!
//! A host and the agent inside a VM exchange JSON over a byte stream:
//! `{"execute": "guest-file-read", "arguments": {...}, "id": ...}` in,
//! `{"return": ...}` or `{"error": {"class": ..., "desc": ...}}` out. This crate
//! holds those messages as Rust types and validates them the way qemu-ga 7.2 does,
//! with its error texts:
//!
//! * [`Request`]: parses a request envelope, keeping `arguments` raw (borrowed) until
//!   the command is known; [`EnvelopeError`] carries the reference's text and the `id`
//!   to echo.
//! * [`Command`]: one type per command ([`GuestPing`], [`GuestFileRead`], ...) tying
//!   its wire name, its arguments, its return type and whether it replies on success.
//!   [`Command::from_arguments`] validates with the reference's texts
//!   (`Parameter 'x' is missing`, `Invalid parameter type for 'x', expected: integer`, ...).
//! * [`Response`] / [`RawResponse`]: replies, for agents to build and clients to parse;
//!   [`QgaError`] and [`ErrorClass`] (unknown classes parse as [`ErrorClass::Other`]).
//! * [`Execute`]: a request to send, for clients.
//! * [`Base64`]: `buf-b64` payloads, strict about the alphabet like the reference,
//!   encoded without a full-size intermediate string.
//! * [`COMMANDS`]: the typed commands in qemu-ga's registration order.
//!
//! It never does I/O, framing (finding message boundaries in the stream and the 0xFF
//! sentinel are `qga-framing`'s job) or anything to the guest.
//!
//! # Where this differs from qemu-ga 7.2 on the wire
//!
//! * Replies are compact JSON (`{"return":{},"id":1}`) with `return`/`error` first and
//!   `id` last; 7.2 writes `", "`/`": "` separators and orders members by its hash
//!   table. Both are the same JSON; clients must not depend on either.
//! * Non-ASCII text is sent as UTF-8; 7.2 escapes it as `\uXXXX`.
//! * Only standard JSON (RFC 8259) is accepted: 7.2 also takes single-quoted strings.
//! * Numbers too large for a double (`1.5e400`) are a parse error; 7.2 echoes them as
//!   the invalid token `inf`.
//! * `0e5` and `0E5` (valid JSON) are the number 0; 7.2's lexer takes no exponent
//!   after a bare zero and refuses them (`expected separator in dict`, `stray 'E'`).
//! * One error per malformed message. A token 7.2's lexer refuses (`01`, `-x`, `5.}`,
//!   a capital letter) gets 7.2's first reply, `JSON parse error, stray '01'`, but not
//!   the replies 7.2 adds for the rest of the message, which its lexer reads afresh
//!   after dropping the broken token (`expecting value` for the `}` of
//!   `{"execute":"guest-ping","id":01}`; five replies for `{"id":[01,2]}`). Matching
//!   them would take 7.2's number grammar and its other stray printable bytes into the
//!   framer, which finds where a message ends by its brackets alone and on the hot
//!   path of every message; a client gains nothing from the extra errors.
//!
//! What serde_json accepts and 7.2 refuses is refused here too, in 7.2's words: a
//! duplicate key at any depth (`duplicate key`), a `\u` escape that is a lone
//! surrogate, a non-character or not four hex digits (`\uFFFF is not a valid Unicode
//! character`), a misspelt keyword (`invalid keyword 'nul'`); and nesting is allowed to
//! 7.2's 1024 levels (serde_json alone stops at 128) and refused past them.
//!
//! The `id` is echoed as 7.2 echoes it: integers (to 64 bits, signed or not) and
//! strings as sent, and every other number, a double, re-printed with C's `%.17g`
//! (`1.0` as `1`, `1e2` as `100`, `0.1` as `0.10000000000000001`, `-0.0` as `-0`,
//! `1e20` as `1e+20`, `12345678901234567890123` as `1.2345678901234568e+22`), parsed to
//! the nearest double first as 7.2's `strtod` does.
//!
//! # Example
//!
//! ```
//! use qga_proto::{Command, Execute, GuestFileRead, Request, Response, RawResponse};
//!
//! // A client builds a request...
//! let id = serde_json::json!("r1");
//! let cmd = GuestFileRead { handle: 1000, count: Some(5) };
//! let bytes = serde_json::to_vec(&Execute::command(&cmd, Some(&id))).unwrap();
//!
//! // ...an agent parses it, late: the command's arguments once it knows the name.
//! let req = Request::parse(&bytes).unwrap();
//! assert_eq!(req.execute, GuestFileRead::NAME);
//! let parsed = GuestFileRead::from_arguments(req.arguments).unwrap();
//! assert_eq!(parsed, cmd);
//!
//! // ...and the client parses the reply, checking the id before typing the result.
//! let reply = br#"{"return":{"count":5,"buf-b64":"aGVsbG8=","eof":false},"id":"r1"}"#;
//! let raw = RawResponse::parse(reply).unwrap();
//! assert_eq!(raw.id, Some(id));
//! let typed: Response<<GuestFileRead as Command>::Returns> = raw.typed().unwrap();
//! assert_eq!(typed.result.unwrap().buf_b64.0, b"hello");
//!
//! // Argument errors carry the reference agent's words.
//! let bad = serde_json::value::RawValue::from_string(r#"{"handle":"x"}"#.into()).unwrap();
//! let err = GuestFileRead::from_arguments(Some(&bad)).unwrap_err();
//! assert_eq!(err.to_string(), "Invalid parameter type for 'handle', expected: integer");
//! ```
#![warn(missing_docs)]

mod args;
mod b64;
mod commands;
mod envelope;
mod error;
mod json;
mod modern;

pub use args::ArgType;
pub use b64::{Base64, Base64Text};
pub use commands::*;
pub use envelope::{EnvelopeError, Execute, RawResponse, Request, Response};
pub use error::{ArgumentError, ErrorClass, QgaError};
pub use json::{qdict_bucket, qdict_order};
pub use modern::*;

/// Re-exported so callers can name raw argument values without depending on
/// serde_json's feature set themselves.
pub use serde_json::value::RawValue;
