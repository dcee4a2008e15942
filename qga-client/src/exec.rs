//! Running a guest program to completion: guest-exec, then guest-exec-status polled
//! with backoff until the program has ended.

use std::time::Duration;

use qga_proto::{
    Base64, Command, GuestExec, GuestExecCaptureOutput, GuestExecStatus, GuestExecStatusResult,
};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::{Client, ClientError};

/// The first pause between two guest-exec-status polls; it doubles after each poll.
pub const EXEC_POLL_FIRST: Duration = Duration::from_millis(10);
/// The longest pause between two guest-exec-status polls.
pub const EXEC_POLL_MAX: Duration = Duration::from_millis(500);

/// A program to run in the guest with [`Client::exec_wait`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecCommand {
    /// The program: a path, or a name the agent looks up in its `PATH`. No shell.
    pub path: String,
    /// Its arguments (without argv\[0\]).
    pub args: Vec<String>,
    /// Its whole environment (`NAME=value` entries), replacing the agent's; `None`
    /// leaves the agent's environment.
    pub env: Option<Vec<String>>,
    /// Bytes written to its stdin, which is then closed; `None` sends nothing.
    pub input: Option<Vec<u8>>,
    /// What output the agent captures; `None` sends no `capture-output`, which
    /// captures nothing. Use `Flag(true)` for stdout and stderr separately on any
    /// agent (7.2 knows only the boolean), a mode for the others (QEMU 8.0+).
    pub capture: Option<GuestExecCaptureOutput>,
}

impl ExecCommand {
    /// `path` with no arguments, the agent's environment, no input, nothing
    /// captured.
    pub fn new(path: impl Into<String>) -> Self {
        ExecCommand {
            path: path.into(),
            ..Default::default()
        }
    }

    /// The guest-exec request for this command (`input` base64-encoded).
    pub fn to_request(&self) -> GuestExec {
        let input_data = self.input.as_ref().map(|data| {
            let mut b64 = Vec::with_capacity(data.len().div_ceil(3) * 4);
            Base64::encode_into(data, &mut b64);
            // Base64 is ASCII.
            String::from_utf8_lossy(&b64).into_owned()
        });
        GuestExec {
            path: self.path.clone(),
            arg: (!self.args.is_empty()).then(|| self.args.clone()),
            env: self.env.clone(),
            input_data,
            capture_output: self.capture,
        }
    }
}

/// How a guest program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecExit {
    /// It exited with this status.
    Code(i64),
    /// A signal ended it.
    Signal(i64),
    /// The agent said it ended but gave neither an exit status nor a signal.
    Unknown,
}

/// What a guest program left behind, from the guest-exec-status reply that said it
/// had ended.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecOutput {
    /// Its pid in the guest.
    pub pid: i64,
    /// How it ended.
    pub exit: ExecExit,
    /// Captured stdout (or stdout and stderr together, in `merged` mode), decoded.
    pub stdout: Vec<u8>,
    /// Captured stderr, decoded.
    pub stderr: Vec<u8>,
    /// stdout went past the agent's capture limit: `stdout` is its beginning.
    pub stdout_truncated: bool,
    /// stderr went past the agent's capture limit: `stderr` is its beginning.
    pub stderr_truncated: bool,
    /// That guest-exec-status return exactly as the agent sent it, members this
    /// client does not know included.
    pub raw: Value,
}

impl ExecOutput {
    /// Decodes the final guest-exec-status return (`exited: true`).
    fn from_status(pid: i64, raw: Value) -> Result<Self, ClientError> {
        let s: GuestExecStatusResult =
            serde_json::from_value(raw.clone()).map_err(ClientError::protocol)?;
        let decode = |what: &str, b64: &Option<String>| match b64 {
            None => Ok(Vec::new()),
            Some(text) => Base64::decode(text)
                .map_err(|e| ClientError::Protocol(format!("guest-exec-status {what}: {e}"))),
        };
        let exit = match (s.exitcode, s.signal) {
            (Some(code), _) => ExecExit::Code(code),
            (None, Some(sig)) => ExecExit::Signal(sig),
            (None, None) => ExecExit::Unknown,
        };
        Ok(ExecOutput {
            pid,
            exit,
            stdout: decode("out-data", &s.out_data)?,
            stderr: decode("err-data", &s.err_data)?,
            stdout_truncated: s.out_truncated.unwrap_or(false),
            stderr_truncated: s.err_truncated.unwrap_or(false),
            raw,
        })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Client<S> {
    /// Runs a guest program to completion: guest-exec, then guest-exec-status
    /// every 10 ms at first, the pause doubling up to 500 ms, until the agent says it
    /// has ended.
    ///
    /// `timeout` bounds the whole run; it is checked between polls. When it passes
    /// (or a poll times out) the program is still running, or its end is not known
    /// yet: the error is [`ClientError::ExecTimeout`] with its pid, to keep polling
    /// with [`Client::exec_status`]. A poll already sent is never abandoned for the
    /// deadline (it is bounded by its own quick timeout), because the agent forgets a
    /// process once it has reported its end: that reply must reach someone.
    ///
    /// Dropping the future leaves the client usable (the next call resyncs), but a
    /// poll in flight at that moment may have been the one that carried the end.
    pub async fn exec_wait(
        &mut self,
        cmd: &ExecCommand,
        timeout: Duration,
    ) -> Result<ExecOutput, ClientError> {
        let deadline = Instant::now().checked_add(timeout);
        let remaining = |now: Instant| deadline.map(|d| d.saturating_duration_since(now));
        let start_timeout = match remaining(Instant::now()) {
            Some(r) => r.min(self.timeouts().quick),
            None => self.timeouts().quick,
        };
        let pid = self
            .execute_with_timeout(&cmd.to_request(), start_timeout)
            .await?
            .pid;
        let mut pause = EXEC_POLL_FIRST;
        loop {
            let args =
                serde_json::to_value(GuestExecStatus { pid }).map_err(ClientError::protocol)?;
            let raw = match self.execute_raw(GuestExecStatus::NAME, Some(args)).await {
                Ok(raw) => raw,
                Err(ClientError::Timeout) => return Err(ClientError::ExecTimeout { pid }),
                Err(e) => return Err(e),
            };
            if raw.get("exited").and_then(Value::as_bool) == Some(true) {
                return ExecOutput::from_status(pid, raw);
            }
            if raw.get("exited").and_then(Value::as_bool).is_none() {
                return Err(ClientError::Protocol(format!(
                    "guest-exec-status without \"exited\": {raw}"
                )));
            }
            let sleep = match remaining(Instant::now()) {
                Some(r) if r.is_zero() => return Err(ClientError::ExecTimeout { pid }),
                Some(r) => pause.min(r),
                None => pause,
            };
            tokio::time::sleep(sleep).await;
            pause = (pause * 2).min(EXEC_POLL_MAX);
        }
    }
}
