//! Command handlers, one module per area. Each maps wire arguments to an ops call
//! and the ops result to wire types; what every command shares (envelope, enabled
//! checks, replies) is the dispatcher's.
//!
//! [`stock`] registers them all in qemu-ga 7.2's registration order, then the
//! commands current QEMU added. The order is what guest-info (reversed) and
//! `-b help` show, and a test compares it with `qga_proto::COMMANDS`.

mod control;
pub(crate) mod files;
mod freeze;
mod hardware;
mod network;
mod power;
mod processes;
mod storage;
mod system;
mod users;

use qga_ops::OpsError;
use qga_proto::*;

use crate::registry::Registry;

pub(crate) fn ops_err(e: OpsError) -> QgaError {
    QgaError::generic(e.to_string())
}

/// Every command of this agent, in qemu-ga 7.2's registration order, then the
/// commands current QEMU added after it.
pub(crate) fn stock() -> Registry {
    let mut r = Registry::new();
    r.register(control::sync_delimited)
        .register(control::sync)
        .register(control::ping)
        .register(system::get_time)
        .register(system::set_time)
        .register(control::info)
        .register(power::shutdown);
    files::register(&mut r);
    r.register(freeze::status)
        .register(freeze::freeze_all)
        .register(freeze::freeze_list)
        .register(freeze::thaw)
        .register(freeze::fstrim)
        .register(power::suspend_disk)
        .register(power::suspend_ram)
        .register(power::suspend_hybrid)
        .register(network::interfaces)
        .register(hardware::get_vcpus)
        .register(hardware::set_vcpus)
        .register(storage::disks)
        .register(storage::fsinfo)
        .register(users::set_user_password)
        .register(hardware::get_memory_blocks)
        .register(hardware::set_memory_blocks)
        .register(hardware::memory_block_info)
        .register(processes::status)
        .register(processes::exec)
        .register(system::host_name)
        .register(system::users)
        .register(system::timezone)
        .register(system::osinfo)
        // Windows only: registered disabled on Linux, as 7.2 does.
        .register_unsupported::<GuestGetDevices>()
        .register(users::get_authorized_keys)
        .register(users::add_authorized_keys)
        .register(users::remove_authorized_keys)
        .register(system::diskstats)
        .register(system::cpustats)
        .register(system::load)
        .register(network::routes);
    r
}
