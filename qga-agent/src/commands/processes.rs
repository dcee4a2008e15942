//! guest-exec and guest-exec-status: map the wire arguments to a spawn request and
//! a process's state back to qemu-ga's reply. The processes themselves (threads,
//! capture, reaping) are `qga_ops::Processes`'s.

use qga_ops::{CaptureMode, Captured, ExecRequest, Termination};
use qga_proto::*;

use super::ops_err;
use crate::dispatcher::Context;

pub(super) fn exec(ctx: &mut Context, c: GuestExec) -> Result<GuestExecResult, QgaError> {
    // As qemu-ga: bad input data fails before anything runs.
    let input = c.input_data.as_deref().map(Base64::decode).transpose()?;
    let capture = match c.capture_output.unwrap_or_default().mode() {
        GuestExecCaptureOutputMode::None => CaptureMode::None,
        GuestExecCaptureOutputMode::Stdout => CaptureMode::Stdout,
        GuestExecCaptureOutputMode::Stderr => CaptureMode::Stderr,
        GuestExecCaptureOutputMode::Separated => CaptureMode::Separated,
        GuestExecCaptureOutputMode::Merged => CaptureMode::Merged,
    };
    let req = ExecRequest {
        path: c.path,
        args: c.arg.unwrap_or_default(),
        env: c.env,
        input,
        capture,
    };
    let pid = ctx.ops.processes.spawn(&req).map_err(ops_err)?;
    Ok(GuestExecResult { pid })
}

/// base64 of a captured stream and its truncated flag, both only when something
/// was captured (qemu-ga 7.2.20+: `*-truncated` goes with `*-data`, false or true).
fn encode(c: Option<Captured>) -> (Option<String>, Option<bool>) {
    match c {
        Some(c) if !c.data.is_empty() => {
            let mut text = Vec::with_capacity(Base64::encoded_len(c.data.len()));
            Base64::encode_into(&c.data, &mut text);
            // The base64 alphabet is ASCII.
            (String::from_utf8(text).ok(), Some(c.truncated))
        }
        _ => (None, None),
    }
}

pub(super) fn status(
    ctx: &mut Context,
    c: GuestExecStatus,
) -> Result<GuestExecStatusResult, QgaError> {
    let s = ctx.ops.processes.status(c.pid).map_err(ops_err)?;
    let Some(ended) = s.ended else {
        return Ok(GuestExecStatusResult::default());
    };
    let (exitcode, signal) = match ended {
        Termination::Exited(code) => (Some(i64::from(code)), None),
        Termination::Signaled(sig) => (None, Some(i64::from(sig))),
        Termination::Unknown => (None, None),
    };
    let (out_data, out_truncated) = encode(s.stdout);
    let (err_data, err_truncated) = encode(s.stderr);
    Ok(GuestExecStatusResult {
        exited: true,
        exitcode,
        signal,
        out_data,
        err_data,
        out_truncated,
        err_truncated,
    })
}
