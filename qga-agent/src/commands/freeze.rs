//! guest-fsfreeze-*, guest-fstrim. The frozen flag is the agent's: set before the
//! filesystems freeze (a marker file first, so an agent that dies mid-freeze starts
//! frozen and can thaw), cleared when they thaw.

use std::time::Instant;

use qga_proto::*;

use super::ops_err;
use crate::dispatcher::Context;

impl Context {
    fn freeze(&mut self, mountpoints: Option<Vec<String>>) -> Result<i64, QgaError> {
        self.state
            .set_frozen(true)
            .map_err(|e| QgaError::generic(format!("unable to create state file: {e}")))?;
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

    /// Thaws every filesystem and clears the frozen flag; returns how many thawed.
    pub(crate) fn thaw(&mut self) -> Result<i64, QgaError> {
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
}

pub(super) fn status(
    ctx: &mut Context,
    _: GuestFsfreezeStatus,
) -> Result<FsfreezeStatus, QgaError> {
    Ok(if ctx.is_frozen() {
        FsfreezeStatus::Frozen
    } else {
        FsfreezeStatus::Thawed
    })
}

pub(super) fn freeze_all(ctx: &mut Context, _: GuestFsfreezeFreeze) -> Result<i64, QgaError> {
    ctx.freeze(None)
}

pub(super) fn freeze_list(ctx: &mut Context, c: GuestFsfreezeFreezeList) -> Result<i64, QgaError> {
    ctx.freeze(c.mountpoints)
}

pub(super) fn thaw(ctx: &mut Context, _: GuestFsfreezeThaw) -> Result<i64, QgaError> {
    ctx.thaw()
}

pub(super) fn fstrim(
    ctx: &mut Context,
    c: GuestFstrim,
) -> Result<GuestFilesystemTrimResponse, QgaError> {
    // Like qemu-ga, the minimum goes to the kernel as an unsigned 64-bit value.
    let results = ctx
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
