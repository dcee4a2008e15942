//! Message framing for the QEMU Guest Agent byte stream.
//!
//! QGA has no length prefixes: JSON values follow each other on a byte stream
//! (virtio-serial, a unix socket, vsock) and may be split across reads at any byte.
//! A 0xFF byte, never valid in JSON, means "throw away whatever partial message you
//! have". This crate finds the boundaries:
//!
//! * [`Decoder`] turns a growing buffer into [`Frame`]s: a complete top-level JSON
//!   value, a [`Frame::Resync`] for a 0xFF/0xFE byte, a [`Frame::Stray`] for a byte
//!   JSON cannot hold where it stands (a control byte inside a string, a control or
//!   non-ASCII byte outside one), or a [`Frame::Oversized`] for a message that broke
//!   a [`Limits`] value (64 MiB and 1024 levels by default, as
//!   qemu-ga). [`Decoder::decode`] hands messages out as zero-copy [`bytes::Bytes`];
//!   [`Decoder::decode_slice`] borrows them from a buffer the caller owns, with no
//!   allocation or reference counting. It tracks strings and escapes, so brackets
//!   inside strings do not count. Outside strings it classifies 64 bytes at a time
//!   into bit masks (SSE2 on x86_64, AVX2 where the CPU has it, detected at run
//!   time); inside strings it skips 64 bytes per step, so
//!   base64 payloads scan at memory speed. Garbage never wedges it: a stray closer or
//!   a bare token is a (malformed) message of its own, a stray byte is reported the
//!   moment it arrives and followed by qemu-ga's recovery (bytes are dropped up to a
//!   structural byte or a line end), so a peer can answer each with an error and the
//!   next request after a line end is served. Memory stays bounded by the limit plus
//!   what one read adds, whatever is sent.
//! * [`encode_json`] / [`encode_raw`] write a message as compact JSON plus `\n`,
//!   with the 0xFF sentinel first for delimited replies.
//! * Feature `tokio`: `QgaCodec`, a tokio-util `Decoder`/`Encoder` over the same core.
//!
//! It never does I/O and never parses JSON beyond finding where a value ends:
//! validating a message is `qga-proto`'s job.
//!
//! # Example
//!
//! ```
//! use bytes::BytesMut;
//! use qga_framing::{Decoder, Frame};
//!
//! let mut decoder = Decoder::new();
//! let mut buf = BytesMut::new();
//! let mut frames = Vec::new();
//! // A dead client's half request, the new client's 0xFF, then two requests split
//! // across reads, one with a brace inside a string.
//! for chunk in [&b"{\"execute\":\"gue"[..], b"\xff{\"execute\":\"guest-ping\"", b"} {\"id\":\"}\"}"] {
//!     buf.extend_from_slice(chunk);
//!     while let Some(frame) = decoder.decode(&mut buf) {
//!         frames.push(frame);
//!     }
//! }
//! assert_eq!(
//!     frames,
//!     [
//!         Frame::Resync,
//!         Frame::Message("{\"execute\":\"guest-ping\"}".into()),
//!         Frame::Message("{\"id\":\"}\"}".into()),
//!     ]
//! );
//! ```
#![warn(missing_docs)]

#[cfg(feature = "tokio")]
mod codec;
mod decoder;
mod encoder;
mod scan;

#[cfg(feature = "tokio")]
pub use codec::QgaCodec;
pub use decoder::{Decoder, Frame, FrameError, Limits};
pub use encoder::{encode_json, encode_raw, SENTINEL};
