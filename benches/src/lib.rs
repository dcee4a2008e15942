//! Support code for `agent-bench`, the side-by-side benchmark of `qga-agent` and the
//! reference `qemu-ga` (see this crate's `README.md`).
//!
//! The library holds only the pieces worth unit-testing: a minimal reply scanner for the
//! newline-terminated replies both agents write ([`reply`]), and the statistics the bench
//! reports ([`stats`]). It never starts processes and never opens sockets itself; the
//! `agent-bench` binary does that. It has no features.
//!
//! ```
//! use qga_benches::reply::{return_value, ReplyReader};
//!
//! let wire: &[u8] = b"{\"return\": {}}\n\xff{\"return\": 7}\n";
//! let mut replies = ReplyReader::new(wire);
//! assert_eq!(return_value(replies.next_reply().unwrap()).unwrap(), b"{}");
//! assert_eq!(return_value(replies.next_reply().unwrap()).unwrap(), b"7");
//! ```
#![warn(missing_docs)]

pub mod reply;
pub mod stats;
