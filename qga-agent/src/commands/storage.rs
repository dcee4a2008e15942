//! guest-get-fsinfo, guest-get-disks.

use qga_ops::{BusType, DiskAddress, NvmeSmart};
use qga_proto::*;

use super::ops_err;
use crate::dispatcher::Context;

pub(super) fn fsinfo(
    ctx: &mut Context,
    _: GuestGetFsinfo,
) -> Result<Vec<GuestFilesystemInfo>, QgaError> {
    let list = ctx.ops.storage.fs_info().map_err(ops_err)?;
    Ok(list
        .into_iter()
        .map(|f| GuestFilesystemInfo {
            name: f.name,
            mountpoint: f.mountpoint,
            fs_type: f.fs_type,
            used_bytes: f.used_bytes,
            total_bytes: f.total_bytes,
            total_bytes_privileged: f.total_bytes_privileged,
            disk: f.disks.into_iter().map(address).collect(),
        })
        .collect())
}

pub(super) fn disks(ctx: &mut Context, _: GuestGetDisks) -> Result<Vec<GuestDiskInfo>, QgaError> {
    let list = ctx.ops.storage.disks().map_err(ops_err)?;
    Ok(list
        .into_iter()
        .map(|d| GuestDiskInfo {
            name: d.name,
            partition: d.partition,
            dependencies: d.dependencies,
            address: d.address.map(address),
            alias: d.alias,
            smart: d.smart.map(|s| GuestDiskSmart::Nvme(smart(s))),
        })
        .collect())
}

fn address(a: DiskAddress) -> GuestDiskAddress {
    GuestDiskAddress {
        pci_controller: GuestPciAddress {
            domain: a.pci.domain,
            bus: a.pci.bus,
            slot: a.pci.slot,
            function: a.pci.function,
        },
        bus_type: bus_type(a.bus_type),
        bus: a.bus,
        target: a.target,
        unit: a.unit,
        serial: a.serial,
        dev: a.dev,
        ccw_address: a.ccw.map(|c| GuestCcwAddress {
            cssid: c.cssid,
            ssid: c.ssid,
            subchno: c.subchno,
            devno: c.devno,
        }),
    }
}

fn bus_type(b: BusType) -> GuestDiskBusType {
    use GuestDiskBusType as W;
    match b {
        BusType::Ide => W::Ide,
        BusType::Fdc => W::Fdc,
        BusType::Scsi => W::Scsi,
        BusType::Virtio => W::Virtio,
        BusType::Xen => W::Xen,
        BusType::Usb => W::Usb,
        BusType::Uml => W::Uml,
        BusType::Sata => W::Sata,
        BusType::Sd => W::Sd,
        BusType::Unknown => W::Unknown,
        BusType::Ieee1394 => W::Ieee1394,
        BusType::Ssa => W::Ssa,
        BusType::Fibre => W::Fibre,
        BusType::Raid => W::Raid,
        BusType::Iscsi => W::Iscsi,
        BusType::Sas => W::Sas,
        BusType::Mmc => W::Mmc,
        BusType::Virtual => W::Virtual,
        BusType::FileBackedVirtual => W::FileBackedVirtual,
        BusType::Nvme => W::Nvme,
    }
}

/// The 128-bit counters go out as `-lo`/`-hi` halves.
fn smart(s: NvmeSmart) -> GuestNvmeSmart {
    let lo = |v: u128| v as u64;
    let hi = |v: u128| (v >> 64) as u64;
    GuestNvmeSmart {
        critical_warning: s.critical_warning,
        temperature: s.temperature,
        available_spare: s.available_spare,
        available_spare_threshold: s.available_spare_threshold,
        percentage_used: s.percentage_used,
        data_units_read_lo: lo(s.data_units_read),
        data_units_read_hi: hi(s.data_units_read),
        data_units_written_lo: lo(s.data_units_written),
        data_units_written_hi: hi(s.data_units_written),
        host_read_commands_lo: lo(s.host_read_commands),
        host_read_commands_hi: hi(s.host_read_commands),
        host_write_commands_lo: lo(s.host_write_commands),
        host_write_commands_hi: hi(s.host_write_commands),
        controller_busy_time_lo: lo(s.controller_busy_time),
        controller_busy_time_hi: hi(s.controller_busy_time),
        power_cycles_lo: lo(s.power_cycles),
        power_cycles_hi: hi(s.power_cycles),
        power_on_hours_lo: lo(s.power_on_hours),
        power_on_hours_hi: hi(s.power_on_hours),
        unsafe_shutdowns_lo: lo(s.unsafe_shutdowns),
        unsafe_shutdowns_hi: hi(s.unsafe_shutdowns),
        media_errors_lo: lo(s.media_errors),
        media_errors_hi: hi(s.media_errors),
        number_of_error_log_entries_lo: lo(s.number_of_error_log_entries),
        number_of_error_log_entries_hi: hi(s.number_of_error_log_entries),
    }
}
