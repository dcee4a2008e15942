//! guest-sync(-delimited), guest-ping, guest-info.

use qga_proto::*;

use crate::dispatcher::Context;

pub(super) fn sync_delimited(_: &mut Context, c: GuestSyncDelimited) -> Result<i64, QgaError> {
    Ok(c.id)
}

pub(super) fn sync(_: &mut Context, c: GuestSync) -> Result<i64, QgaError> {
    Ok(c.id)
}

pub(super) fn ping(_: &mut Context, _: GuestPing) -> Result<Empty, QgaError> {
    Ok(Empty {})
}

/// Every registered command, enabled or not, in reverse registration order (as
/// qemu-ga lists them).
pub(super) fn info(ctx: &mut Context, _: GuestInfo) -> Result<GuestAgentInfo, QgaError> {
    let supported_commands = ctx
        .commands()
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .map(|s| GuestAgentCommandInfo {
            name: s.name.to_owned(),
            enabled: ctx.disabled(s).is_none(),
            success_response: s.success_response,
        })
        .collect();
    Ok(GuestAgentInfo {
        version: ctx.version(),
        supported_commands,
    })
}
