//! The sans-IO dispatcher: one message in, zero or one encoded reply out.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use qga_framing::{encode_json, Frame};
use qga_ops::{GuestFile, Ops, OpsError, ShutdownMode, SuspendMode};
use qga_proto::*;
use serde::Serialize;

use crate::state::StateDir;

/// Largest `count` guest-file-read accepts (48 MiB, as qemu-ga: its base64 must fit
/// in a 64 MiB message).
pub const MAX_READ_COUNT: i64 = 48 * 1024 * 1024;

/// Commands that still run while filesystems are frozen.
fn allowed_while_frozen(name: &str) -> bool {
    command_spec(name).is_some_and(|s| s.allowed_while_frozen)
}

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

/// Decodes requests, runs commands through [`Ops`], encodes replies.
///
/// It owns the agent's state: the file handle table (handles from 1000 up, never
/// reused, the counter persisted before a guest-file-open reply is sent), the frozen
/// flag (persisted as a marker file) and the enabled commands. It does no I/O of its
/// own besides the ops and the state directory, so tests drive it with fake ops.
pub struct Dispatcher {
    ops: Ops,
    state: StateDir,
    config: DispatcherConfig,
    handles: BTreeMap<i64, Box<dyn GuestFile>>,
    next_handle: i64,
    frozen_since: Option<Instant>,
    /// When to try again after a failed auto-thaw.
    auto_thaw_retry: Option<Instant>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("handles", &self.handles.len())
            .field("next_handle", &self.next_handle)
            .field("frozen", &self.is_frozen())
            .finish()
    }
}

fn generic(e: impl std::fmt::Display) -> QgaError {
    QgaError::generic(e.to_string())
}

fn ops_err(e: OpsError) -> QgaError {
    QgaError::generic(e.to_string())
}

impl Dispatcher {
    /// A dispatcher over `ops`, with state in `state`. Reads the handle counter and
    /// the frozen marker: an agent that finds the marker starts frozen.
    pub fn new(ops: Ops, state: StateDir, config: DispatcherConfig) -> std::io::Result<Self> {
        let next_handle = state.load_counter()?;
        let frozen = state.is_frozen();
        if !frozen {
            state.store_counter(next_handle)?;
        }
        Ok(Dispatcher {
            ops,
            state,
            config,
            handles: BTreeMap::new(),
            next_handle,
            frozen_since: frozen.then(Instant::now),
            auto_thaw_retry: None,
        })
    }

    /// Whether filesystems are frozen (by us, or by the agent before a restart).
    pub fn is_frozen(&self) -> bool {
        self.frozen_since.is_some()
    }

    /// Number of open file handles.
    pub fn open_handles(&self) -> usize {
        self.handles.len()
    }

    /// When the auto-thaw timeout fires, if one is configured and we are frozen.
    pub fn auto_thaw_deadline(&self) -> Option<Instant> {
        let first = self.frozen_since? + self.config.auto_thaw?;
        Some(self.auto_thaw_retry.unwrap_or(first))
    }

    /// Thaws because the auto-thaw timeout passed (or the agent is leaving the
    /// filesystems without a host); returns what the thaw did. After a failure the
    /// deadline moves on by the timeout, at least 1 s and at most 5 s, so the
    /// channel loop retries later instead of at once.
    pub fn auto_thaw(&mut self) -> Result<i64, QgaError> {
        let result = self.thaw();
        if result.is_err() && self.is_frozen() {
            let pause = self
                .config
                .auto_thaw
                .unwrap_or_default()
                .clamp(Duration::from_secs(1), Duration::from_secs(5));
            self.auto_thaw_retry = Some(Instant::now() + pause);
        }
        result
    }

    /// Why `name` is disabled, if it is.
    fn disabled(&self, name: &str) -> Option<QgaError> {
        if self.config.blocked.contains(name) {
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
        if self.is_frozen() && !allowed_while_frozen(name) {
            return Some(QgaError::disabled_command(
                name,
                Some("the agent is in frozen state"),
            ));
        }
        None
    }

    /// Handles one frame from the framer: a message gets its reply, a limit error
    /// gets qemu-ga's error text, and a resync (0xFF) gets nothing: unlike qemu-ga
    /// 7.2 we do not answer the client's own flush byte with an error.
    pub fn handle_frame(&mut self, frame: Frame, out: &mut BytesMut) {
        match frame {
            Frame::Message(msg) => self.handle_message(&msg, out),
            Frame::Oversized(e) => {
                reply::<Empty>(out, Err(QgaError::generic(e.reference_desc())), None, false)
            }
            _ => {}
        }
    }

    /// Handles one message, appending its reply (if any) to `out`.
    pub fn handle_message(&mut self, msg: &[u8], out: &mut BytesMut) {
        let req = match Request::parse(msg) {
            Ok(r) => r,
            Err(e) => return reply::<Empty>(out, Err(e.error), e.id, false),
        };
        let name = req.execute.as_ref();
        if command_spec(name).is_none() {
            return reply::<Empty>(out, Err(QgaError::unknown_command(name)), req.id, false);
        }
        if let Some(err) = self.disabled(name) {
            return reply::<Empty>(out, Err(err), req.id, false);
        }
        if name == GuestFileRead::NAME {
            // The hot path: the reply is assembled by hand, see `file_read_reply`.
            return self.file_read_reply(&req, out);
        }
        macro_rules! route {
            ($($ty:ty => $method:ident),* $(,)?) => {
                match name {
                    $(<$ty as Command>::NAME => self.call::<$ty>(&req, out, Self::$method),)*
                    _ => reply::<Empty>(out, Err(QgaError::unknown_command(name)), req.id.clone(), false),
                }
            };
        }
        route!(
            GuestSyncDelimited => sync_delimited,
            GuestSync => sync,
            GuestPing => ping,
            GuestInfo => info,
            GuestShutdown => shutdown,
            GuestFileOpen => file_open,
            GuestFileClose => file_close,
            GuestFileWrite => file_write,
            GuestFileSeek => file_seek,
            GuestFileFlush => file_flush,
            GuestFsfreezeStatus => fsfreeze_status,
            GuestFsfreezeFreeze => fsfreeze_freeze,
            GuestFsfreezeFreezeList => fsfreeze_freeze_list,
            GuestFsfreezeThaw => fsfreeze_thaw,
            GuestFstrim => fstrim,
            GuestSuspendDisk => suspend_disk,
            GuestSuspendRam => suspend_ram,
            GuestSuspendHybrid => suspend_hybrid,
            GuestNetworkGetInterfaces => network_get_interfaces,
        );
    }

    fn call<C: Command>(
        &mut self,
        req: &Request<'_>,
        out: &mut BytesMut,
        run: fn(&mut Self, C) -> Result<C::Returns, QgaError>,
    ) {
        let cmd = match C::from_arguments(req.arguments) {
            Ok(c) => c,
            Err(e) => {
                let err = self.argument_error::<C>(req, e);
                return reply::<Empty>(out, Err(err), req.id.clone(), false);
            }
        };
        match run(self, cmd) {
            // Commands without a success response (shutdown, suspend) send nothing.
            Ok(_) if !C::SUCCESS_RESPONSE => {}
            Ok(v) => reply(
                out,
                Ok(v),
                req.id.clone(),
                C::NAME == GuestSyncDelimited::NAME,
            ),
            Err(e) => reply::<Empty>(out, Err(e), req.id.clone(), false),
        }
    }

    /// qemu-ga looks a file handle up before it decodes a payload, so an unknown
    /// handle wins over bad base64.
    fn argument_error<C: Command>(&self, req: &Request<'_>, e: ArgumentError) -> QgaError {
        if C::NAME == GuestFileWrite::NAME && e == ArgumentError::InvalidBase64 {
            #[derive(serde::Deserialize)]
            struct HandleOnly {
                handle: i64,
            }
            if let Some(h) = req
                .arguments
                .and_then(|a| serde_json::from_str::<HandleOnly>(a.get()).ok())
            {
                if !self.handles.contains_key(&h.handle) {
                    return handle_not_found(h.handle);
                }
            }
        }
        e.into()
    }

    fn file(&mut self, handle: i64) -> Result<&mut Box<dyn GuestFile>, QgaError> {
        self.handles
            .get_mut(&handle)
            .ok_or_else(|| handle_not_found(handle))
    }

    fn sync_delimited(&mut self, c: GuestSyncDelimited) -> Result<i64, QgaError> {
        Ok(c.id)
    }

    fn sync(&mut self, c: GuestSync) -> Result<i64, QgaError> {
        Ok(c.id)
    }

    fn ping(&mut self, _: GuestPing) -> Result<Empty, QgaError> {
        Ok(Empty {})
    }

    fn info(&mut self, _: GuestInfo) -> Result<GuestAgentInfo, QgaError> {
        let version = self
            .config
            .version
            .clone()
            .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned());
        // qemu-ga lists its commands in reverse registration order.
        let supported_commands = COMMANDS
            .iter()
            .rev()
            .map(|s| GuestAgentCommandInfo {
                name: s.name.to_owned(),
                enabled: self.disabled(s.name).is_none(),
                success_response: s.success_response,
            })
            .collect();
        Ok(GuestAgentInfo {
            version,
            supported_commands,
        })
    }

    fn shutdown(&mut self, c: GuestShutdown) -> Result<Empty, QgaError> {
        let mode = match c.mode.as_deref() {
            None | Some("powerdown") => ShutdownMode::Powerdown,
            Some("halt") => ShutdownMode::Halt,
            Some("reboot") => ShutdownMode::Reboot,
            // The reference's text lacks the closing parenthesis; clients match on it.
            Some(_) => {
                return Err(generic(
                    "mode is invalid (valid values are: halt|powerdown|reboot",
                ))
            }
        };
        self.ops.power.shutdown(mode).map_err(ops_err)?;
        Ok(Empty {})
    }

    fn file_open(&mut self, c: GuestFileOpen) -> Result<i64, QgaError> {
        let mode = c.mode.as_deref().unwrap_or("r");
        let file = self
            .ops
            .files
            .open(Path::new(&c.path), mode)
            .map_err(ops_err)?;
        let handle = self.next_handle;
        let Some(next) = handle.checked_add(1) else {
            let _ = file.close();
            return Err(generic("no file handles left"));
        };
        // Persist before replying, so a restarted agent never reuses this handle.
        if self.state.store_counter(next).is_err() {
            let _ = file.close();
            return Err(generic("failed to commit persistent state to disk"));
        }
        self.next_handle = next;
        self.handles.insert(handle, file);
        Ok(handle)
    }

    fn file_close(&mut self, c: GuestFileClose) -> Result<Empty, QgaError> {
        let file = self
            .handles
            .remove(&c.handle)
            .ok_or_else(|| handle_not_found(c.handle))?;
        file.close().map_err(ops_err)?;
        Ok(Empty {})
    }

    /// guest-file-read, written straight into `out`: the file is read in pieces
    /// (a multiple of 3 bytes, so their base64 concatenates) and each piece is
    /// base64-encoded into the reply buffer, reserved once at its final size. No
    /// intermediate string, no escaping pass over the payload, and only one piece of
    /// raw data in memory besides the reply.
    fn file_read_reply(&mut self, req: &Request<'_>, out: &mut BytesMut) {
        use base64::Engine;
        const PIECE: usize = 3 << 20;
        let id = req.id.clone();
        let cmd = match GuestFileRead::from_arguments(req.arguments) {
            Ok(c) => c,
            Err(e) => return reply::<Empty>(out, Err(e.into()), id, false),
        };
        let Some(file) = self.handles.get_mut(&cmd.handle) else {
            return reply::<Empty>(out, Err(handle_not_found(cmd.handle)), id, false);
        };
        let count = cmd.count.unwrap_or(4096);
        if !(0..=MAX_READ_COUNT).contains(&count) {
            return reply::<Empty>(out, Err(invalid_count(count)), id, false);
        }
        let count = count as usize;
        let start = out.len();
        out.reserve(Base64::encoded_len(count) + 128);
        out.extend_from_slice(b"{\"return\":{\"buf-b64\":\"");
        let mut piece = Vec::with_capacity(count.min(PIECE));
        let (mut total, mut eof) = (0usize, false);
        while total < count {
            let want = (count - total).min(PIECE);
            piece.clear();
            match file.read(want, &mut piece) {
                Ok(e) => eof = e,
                Err(e) => {
                    out.truncate(start);
                    return reply::<Empty>(out, Err(ops_err(e)), id, false);
                }
            }
            let at = out.len();
            out.resize(at + Base64::encoded_len(piece.len()), 0);
            let written = base64::engine::general_purpose::STANDARD
                .encode_slice(&piece, &mut out[at..])
                .unwrap_or(0);
            out.truncate(at + written);
            total += piece.len();
            if piece.len() < want || eof {
                break;
            }
        }
        out.extend_from_slice(format!("\",\"count\":{total},\"eof\":{eof}}}").as_bytes());
        if let Some(id) = &id {
            out.extend_from_slice(b",\"id\":");
            if serde_json::to_writer(bytes::BufMut::writer(&mut *out), id).is_err() {
                out.truncate(start);
                return reply::<Empty>(out, Err(generic("failed to encode reply")), None, false);
            }
        }
        out.extend_from_slice(b"}\n");
    }

    fn file_write(&mut self, c: GuestFileWrite) -> Result<GuestFileWriteResult, QgaError> {
        let file = self.file(c.handle)?;
        let data = &c.buf_b64.0;
        let count = c.count.unwrap_or(data.len() as i64);
        if count < 0 || count as usize > data.len() {
            return Err(invalid_count(count));
        }
        let w = file.write(&data[..count as usize]).map_err(ops_err)?;
        Ok(GuestFileWriteResult {
            count: w.count as i64,
            eof: w.eof,
        })
    }

    fn file_seek(&mut self, c: GuestFileSeek) -> Result<GuestFileSeekResult, QgaError> {
        let file = self.file(c.handle)?;
        let whence = match c.whence.resolve().map_err(QgaError::generic)? {
            SeekOrigin::Set => qga_ops::Whence::Set,
            SeekOrigin::Cur => qga_ops::Whence::Cur,
            SeekOrigin::End => qga_ops::Whence::End,
        };
        let s = file.seek(c.offset, whence).map_err(ops_err)?;
        Ok(GuestFileSeekResult {
            position: s.position as i64,
            eof: s.eof,
        })
    }

    fn file_flush(&mut self, c: GuestFileFlush) -> Result<Empty, QgaError> {
        self.file(c.handle)?.flush().map_err(ops_err)?;
        Ok(Empty {})
    }

    fn fsfreeze_status(&mut self, _: GuestFsfreezeStatus) -> Result<FsfreezeStatus, QgaError> {
        Ok(if self.is_frozen() {
            FsfreezeStatus::Frozen
        } else {
            FsfreezeStatus::Thawed
        })
    }

    fn freeze(&mut self, mountpoints: Option<Vec<String>>) -> Result<i64, QgaError> {
        // Marker first: if we die mid-freeze, the next agent starts frozen and thaws.
        self.state
            .set_frozen(true)
            .map_err(|e| generic(format!("unable to create state file: {e}")))?;
        self.frozen_since = Some(Instant::now());
        self.auto_thaw_retry = None;
        match self.ops.freeze.freeze(mountpoints.as_deref()) {
            Ok(0) => {
                self.set_thawed();
                Ok(0)
            }
            Ok(n) => Ok(n as i64),
            Err(e) => {
                self.set_thawed();
                Err(ops_err(e))
            }
        }
    }

    fn set_thawed(&mut self) {
        self.frozen_since = None;
        self.auto_thaw_retry = None;
        let _ = self.state.set_frozen(false);
    }

    fn thaw(&mut self) -> Result<i64, QgaError> {
        match self.ops.freeze.thaw() {
            Ok(n) => {
                self.set_thawed();
                Ok(n as i64)
            }
            // The filesystems are thawed; only the hook failed (as qemu-ga).
            Err(e) if e.is_hook_failure() => {
                self.set_thawed();
                Err(ops_err(e))
            }
            Err(e) => Err(ops_err(e)),
        }
    }

    fn fsfreeze_freeze(&mut self, _: GuestFsfreezeFreeze) -> Result<i64, QgaError> {
        self.freeze(None)
    }

    fn fsfreeze_freeze_list(&mut self, c: GuestFsfreezeFreezeList) -> Result<i64, QgaError> {
        self.freeze(c.mountpoints)
    }

    fn fsfreeze_thaw(&mut self, _: GuestFsfreezeThaw) -> Result<i64, QgaError> {
        self.thaw()
    }

    fn fstrim(&mut self, c: GuestFstrim) -> Result<GuestFilesystemTrimResponse, QgaError> {
        // Like qemu-ga, the minimum goes to the kernel as an unsigned 64-bit value.
        let results = self
            .ops
            .trim
            .trim(c.minimum.map(|m| m as u64), None)
            .map_err(ops_err)?;
        Ok(GuestFilesystemTrimResponse {
            paths: results
                .into_iter()
                .map(|r| GuestFilesystemTrimResult {
                    path: r.path,
                    trimmed: r.trimmed.map(|n| n as i64),
                    minimum: r.minimum.map(|n| n as i64),
                    error: r.error,
                })
                .collect(),
        })
    }

    fn suspend(&mut self, mode: SuspendMode) -> Result<Empty, QgaError> {
        self.ops.power.suspend(mode).map_err(ops_err)?;
        Ok(Empty {})
    }

    fn suspend_disk(&mut self, _: GuestSuspendDisk) -> Result<Empty, QgaError> {
        self.suspend(SuspendMode::Disk)
    }

    fn suspend_ram(&mut self, _: GuestSuspendRam) -> Result<Empty, QgaError> {
        self.suspend(SuspendMode::Ram)
    }

    fn suspend_hybrid(&mut self, _: GuestSuspendHybrid) -> Result<Empty, QgaError> {
        self.suspend(SuspendMode::Hybrid)
    }

    fn network_get_interfaces(
        &mut self,
        _: GuestNetworkGetInterfaces,
    ) -> Result<Vec<GuestNetworkInterface>, QgaError> {
        let ifs = self.ops.network.interfaces().map_err(ops_err)?;
        Ok(ifs
            .into_iter()
            .map(|i| GuestNetworkInterface {
                name: i.name,
                hardware_address: i.hardware_address,
                ip_addresses: (!i.addresses.is_empty()).then(|| {
                    i.addresses
                        .iter()
                        .map(|(addr, prefix)| GuestIpAddress {
                            ip_address: addr.to_string(),
                            ip_address_type: if addr.is_ipv4() {
                                GuestIpAddressType::Ipv4
                            } else {
                                GuestIpAddressType::Ipv6
                            },
                            prefix: i64::from(*prefix),
                        })
                        .collect()
                }),
                statistics: i.statistics.map(|s| GuestNetworkInterfaceStat {
                    rx_bytes: s.rx_bytes,
                    rx_packets: s.rx_packets,
                    rx_errs: s.rx_errs,
                    rx_dropped: s.rx_dropped,
                    tx_bytes: s.tx_bytes,
                    tx_packets: s.tx_packets,
                    tx_errs: s.tx_errs,
                    tx_dropped: s.tx_dropped,
                }),
            })
            .collect())
    }
}

fn handle_not_found(handle: i64) -> QgaError {
    QgaError::generic(format!("handle '{handle}' has not been found"))
}

fn invalid_count(count: i64) -> QgaError {
    QgaError::generic(format!("value '{count}' is invalid for argument count"))
}

/// Appends one reply to `out`.
fn reply<T: Serialize>(
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
