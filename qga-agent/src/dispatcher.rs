//! The sans-IO dispatcher: one message in, zero or one encoded reply out.
//!
//! What every command shares lives here: the envelope, the unknown/disabled checks,
//! and the agent's state ([`Context`]: file handles, frozen flag, configuration).
//! What each command does lives in [`crate::commands`], one module per area, and
//! reaches the dispatcher through one [`Registry`] table.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use qga_framing::{encode_json, Frame};
use qga_ops::{GuestFile, Ops};
use qga_proto::{Command, CommandSpec, Empty, GuestFileWrite, QgaError, Request, Response};
use serde::Serialize;

use crate::commands::files::ReadTail;
use crate::registry::{Entry, Registry, Table};
use crate::state::StateDir;

/// Largest `count` guest-file-read accepts (48 MiB, as qemu-ga: its base64 must fit
/// in a 64 MiB message).
pub const MAX_READ_COUNT: i64 = 48 * 1024 * 1024;

/// What the dispatcher needs besides the ops and the state directory.
#[derive(Debug, Clone, Default)]
pub struct DispatcherConfig {
    /// Commands disabled by `--block-rpcs`.
    pub blocked: HashSet<String>,
    /// With `--allow-rpcs`: only these commands are enabled (blocking still wins).
    pub allowed: Option<HashSet<String>>,
    /// guest-info's `version`; defaults to this crate's version.
    pub version: Option<String>,
    /// Thaw by ourselves after this long frozen (off by default; beyond qemu-ga).
    pub auto_thaw: Option<Duration>,
}

/// The agent's state, as command handlers see it: the ops, the file handle table
/// (handles from 1000 up, never reused, the counter persisted before a
/// guest-file-open reply is sent), the frozen flag (persisted as a marker file) and
/// the configuration.
pub struct Context {
    pub(crate) ops: Ops,
    pub(crate) state: StateDir,
    pub(crate) config: DispatcherConfig,
    pub(crate) handles: BTreeMap<i64, Box<dyn GuestFile>>,
    pub(crate) next_handle: i64,
    pub(crate) frozen_since: Option<Instant>,
    /// When to try again after a failed auto-thaw.
    pub(crate) auto_thaw_retry: Option<Instant>,
    /// The registered commands, for guest-info and the enabled checks.
    pub(crate) table: Arc<Table>,
    /// File data for guest-file-read and -write, kept across requests: one piece
    /// (192 KiB) that a read reads before encoding it, or a write's whole payload
    /// (up to 1 MiB) decoded; freed by [`Dispatcher::release_buffers`].
    pub(crate) file_buf: Vec<u8>,
    /// Set by [`Dispatcher::handle_frame_streamed`] while it runs: a large
    /// guest-file-read may leave the rest of its reply in `read_tail`.
    pub(crate) streaming: bool,
    /// The unfinished reply a streamed guest-file-read left (taken at once).
    pub(crate) read_tail: Option<ReadTail>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("handles", &self.handles.len())
            .field("next_handle", &self.next_handle)
            .field("frozen", &self.is_frozen())
            .field("commands", &self.table.len())
            .finish()
    }
}

impl Context {
    /// The side effects, for handlers.
    pub fn ops(&self) -> &Ops {
        &self.ops
    }

    /// Whether filesystems are frozen (by us, or by the agent before a restart).
    pub fn is_frozen(&self) -> bool {
        self.frozen_since.is_some()
    }

    /// Every registered command, in registration order.
    pub fn commands(&self) -> impl Iterator<Item = &CommandSpec> {
        self.table.specs()
    }

    /// Why the command `spec` is disabled, if it is: blocked (or unsupported on this
    /// platform), not in the allow list, or not allowed while frozen. The texts are
    /// qemu-ga 7.2's (the allow-list reason is 8.0's).
    pub fn disabled(&self, spec: &CommandSpec) -> Option<QgaError> {
        self.disabled_as(spec, self.table.unsupported(spec.name))
    }

    /// [`disabled`](Self::disabled) for a command whose table entry is at hand (the
    /// dispatcher's case: one lookup per request, not two).
    pub(crate) fn disabled_entry(&self, entry: &Entry) -> Option<QgaError> {
        self.disabled_as(&entry.spec, entry.unsupported)
    }

    fn disabled_as(&self, spec: &CommandSpec, unsupported: bool) -> Option<QgaError> {
        let name = spec.name;
        if unsupported || self.config.blocked.contains(name) {
            return Some(QgaError::disabled_command(name, None));
        }
        if let Some(allowed) = &self.config.allowed {
            if !allowed.contains(name) {
                return Some(QgaError::disabled_command(
                    name,
                    Some("the command is not allowed"),
                ));
            }
        }
        if self.is_frozen() && !spec.allowed_while_frozen {
            return Some(QgaError::disabled_command(
                name,
                Some("the agent is in frozen state"),
            ));
        }
        None
    }

    /// guest-info's `version`.
    pub fn version(&self) -> String {
        self.config
            .version
            .clone()
            .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned())
    }
}

/// Decodes requests, runs commands through the handlers of a [`Registry`], encodes
/// replies.
///
/// It does no I/O of its own besides the ops and the state directory, so tests drive
/// it with fake ops.
pub struct Dispatcher {
    ctx: Context,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.ctx.fmt(f)
    }
}

impl Dispatcher {
    /// A dispatcher with every command of this agent ([`Registry::stock`]) over
    /// `ops`, with state in `state`. Reads the handle counter and the frozen marker:
    /// an agent that finds the marker starts frozen.
    pub fn new(ops: Ops, state: StateDir, config: DispatcherConfig) -> std::io::Result<Self> {
        Self::with_registry(ops, state, config, Registry::stock())
    }

    /// A dispatcher serving the commands of `registry`: the stock set with commands
    /// added, replaced or removed, for a custom agent.
    pub fn with_registry(
        ops: Ops,
        state: StateDir,
        config: DispatcherConfig,
        registry: Registry,
    ) -> std::io::Result<Self> {
        let next_handle = state.load_counter()?;
        let frozen = state.is_frozen();
        if !frozen {
            state.store_counter(next_handle)?;
        }
        Ok(Dispatcher {
            ctx: Context {
                ops,
                state,
                config,
                handles: BTreeMap::new(),
                next_handle,
                frozen_since: frozen.then(Instant::now),
                auto_thaw_retry: None,
                table: Arc::new(registry.into_table()),
                file_buf: Vec::new(),
                streaming: false,
                read_tail: None,
            },
        })
    }

    /// The state handlers see.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Whether filesystems are frozen (by us, or by the agent before a restart).
    pub fn is_frozen(&self) -> bool {
        self.ctx.is_frozen()
    }

    /// Number of open file handles.
    pub fn open_handles(&self) -> usize {
        self.ctx.handles.len()
    }

    /// Frees the buffer kept across guest-file-read and -write requests (up to
    /// 1 MiB after a write): the channel loop calls this once a connection has been
    /// quiet, so memory returns to idle; the next transfer allocates it again.
    pub fn release_buffers(&mut self) {
        self.ctx.file_buf = Vec::new();
    }

    /// Bytes held by the buffer [`release_buffers`](Self::release_buffers) frees.
    pub fn buffered_bytes(&self) -> usize {
        self.ctx.file_buf.capacity()
    }

    /// When the auto-thaw timeout fires, if one is configured and we are frozen.
    pub fn auto_thaw_deadline(&self) -> Option<Instant> {
        let first = self.ctx.frozen_since? + self.ctx.config.auto_thaw?;
        Some(self.ctx.auto_thaw_retry.unwrap_or(first))
    }

    /// Thaws because the auto-thaw timeout passed (or the agent is leaving the
    /// filesystems without a host); returns what the thaw did. After a failure the
    /// deadline moves on by the timeout, at least 1 s and at most 5 s, so the
    /// channel loop retries later instead of at once.
    pub fn auto_thaw(&mut self) -> Result<i64, QgaError> {
        let result = self.ctx.thaw();
        if result.is_err() && self.is_frozen() {
            let pause = self
                .ctx
                .config
                .auto_thaw
                .unwrap_or_default()
                .clamp(Duration::from_secs(1), Duration::from_secs(5));
            self.ctx.auto_thaw_retry = Some(Instant::now() + pause);
        }
        result
    }

    /// Handles one frame from the framer: a message gets its reply, a limit error
    /// or a stray byte gets qemu-ga's error text, and a resync (0xFF) gets nothing:
    /// unlike qemu-ga 7.2 we do not answer the client's own flush byte with an error.
    pub fn handle_frame(&mut self, frame: Frame, out: &mut BytesMut) {
        match frame {
            Frame::Message(msg) => self.handle_message(&msg, out),
            Frame::Oversized(e) => {
                reply::<Empty>(out, Err(QgaError::generic(e.reference_desc())), None, false)
            }
            Frame::Stray(token) => reply::<Empty>(out, Err(QgaError::stray(&token)), None, false),
            _ => {}
        }
    }

    /// [`handle_frame`](Self::handle_frame) for the channel loop: a guest-file-read
    /// of more than a few hundred KiB appends only the start of its reply and returns
    /// the rest, which [`continue_reply`](Self::continue_reply) appends piece by piece
    /// as the connection takes what went before. Nothing else may be appended to
    /// that connection's output until the reply is complete.
    pub(crate) fn handle_frame_streamed(
        &mut self,
        frame: Frame,
        out: &mut BytesMut,
    ) -> Option<ReadTail> {
        self.ctx.streaming = true;
        self.handle_frame(frame, out);
        self.ctx.streaming = false;
        self.ctx.read_tail.take()
    }

    /// Appends the next piece of a reply [`handle_frame_streamed`](Self::handle_frame_streamed)
    /// left unfinished, or its end; returns whether it is complete.
    pub(crate) fn continue_reply(&mut self, tail: &mut ReadTail, out: &mut BytesMut) -> bool {
        self.ctx.continue_read(tail, out)
    }

    /// Handles one message, appending its reply (if any) to `out`.
    pub fn handle_message(&mut self, msg: &[u8], out: &mut BytesMut) {
        self.handle_message_via(msg, out, msg.len() >= FAST_WRITE_MIN)
    }

    /// [`handle_message`](Self::handle_message), trying guest-file-write's fast path
    /// first if `try_fast` (tests run each request both ways).
    pub(crate) fn handle_message_via(&mut self, msg: &[u8], out: &mut BytesMut, try_fast: bool) {
        if try_fast && self.fast_file_write(msg, out) {
            return;
        }
        let req = match Request::parse(msg) {
            Ok(r) => r,
            Err(e) => return reply::<Empty>(out, Err(e.error), e.id, false),
        };
        let table = Arc::clone(&self.ctx.table);
        let name = req.execute.as_ref();
        let Some(entry) = table.get(name) else {
            return reply::<Empty>(out, Err(QgaError::unknown_command(name)), req.id, false);
        };
        if let Some(err) = self.ctx.disabled_entry(entry) {
            return reply::<Empty>(out, Err(err), req.id, false);
        }
        entry.run(&mut self.ctx, &req, out);
    }
}

/// Messages shorter than this skip guest-file-write's fast path: the full path
/// costs little there, and a fast-path miss would parse the envelope twice.
const FAST_WRITE_MIN: usize = 1024;

impl Dispatcher {
    /// guest-file-write without the full parse walking its payload: when the stock
    /// handler serves the command and [`Request::parse_file_write`] reads the
    /// message (whose answer is the full path's), the same checks as
    /// [`handle_message_via`](Self::handle_message_via) makes, then the write. Returns
    /// whether it answered; if not, nothing was written to `out` or to any file.
    fn fast_file_write(&mut self, msg: &[u8], out: &mut BytesMut) -> bool {
        let table = Arc::clone(&self.ctx.table);
        let Some(entry) = table.get(GuestFileWrite::NAME) else {
            return false;
        };
        if !entry.stock_file_write {
            return false;
        }
        let mut scratch = std::mem::take(&mut self.ctx.file_buf);
        let parsed = Request::parse_file_write(msg, &mut scratch);
        // Empty if the payload holds it now.
        self.ctx.file_buf = scratch;
        let Some((id, args)) = parsed else {
            return false;
        };
        match self.ctx.disabled_entry(entry) {
            Some(err) => {
                if let Some(buf) = args.buf_b64.into_scratch() {
                    self.ctx.file_buf = buf;
                }
                reply::<Empty>(out, Err(err), id, false)
            }
            None => self.ctx.file_write_parsed(id, args, out),
        }
        true
    }
}

/// Appends one reply to `out`.
pub(crate) fn reply<T: Serialize>(
    out: &mut BytesMut,
    result: Result<T, QgaError>,
    id: Option<serde_json::Value>,
    delimited: bool,
) {
    let response = Response { result, id };
    if encode_json(&response, delimited, out).is_err() {
        // Only a serialiser bug could get here; still answer the request.
        let _ = encode_json(
            &Response::<Empty>::err(QgaError::generic("failed to encode reply"), None),
            false,
            out,
        );
    }
}
