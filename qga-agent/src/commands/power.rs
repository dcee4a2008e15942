//! guest-shutdown, guest-suspend-*.

use qga_ops::{ShutdownMode, SuspendMode};
use qga_proto::*;

use super::ops_err;
use crate::dispatcher::Context;

pub(super) fn shutdown(ctx: &mut Context, c: GuestShutdown) -> Result<Empty, QgaError> {
    let mode = match c.mode.as_deref() {
        None | Some("powerdown") => ShutdownMode::Powerdown,
        Some("halt") => ShutdownMode::Halt,
        Some("reboot") => ShutdownMode::Reboot,
        // The reference's text lacks the closing parenthesis; clients match on it.
        Some(_) => {
            return Err(QgaError::generic(
                "mode is invalid (valid values are: halt|powerdown|reboot",
            ))
        }
    };
    ctx.ops.power.shutdown(mode).map_err(ops_err)?;
    Ok(Empty {})
}

fn suspend(ctx: &mut Context, mode: SuspendMode) -> Result<Empty, QgaError> {
    ctx.ops.power.suspend(mode).map_err(ops_err)?;
    Ok(Empty {})
}

pub(super) fn suspend_disk(ctx: &mut Context, _: GuestSuspendDisk) -> Result<Empty, QgaError> {
    suspend(ctx, SuspendMode::Disk)
}

pub(super) fn suspend_ram(ctx: &mut Context, _: GuestSuspendRam) -> Result<Empty, QgaError> {
    suspend(ctx, SuspendMode::Ram)
}

pub(super) fn suspend_hybrid(ctx: &mut Context, _: GuestSuspendHybrid) -> Result<Empty, QgaError> {
    suspend(ctx, SuspendMode::Hybrid)
}
