//! The guest system: its clock (read and set), host name, time zone, OS, users,
//! load, CPU and disk counters.

use qga_proto::*;

use super::ops_err;
use crate::dispatcher::Context;

pub(super) fn get_time(ctx: &mut Context, _: GuestGetTime) -> Result<i64, QgaError> {
    ctx.ops.sysinfo.time_ns().map_err(ops_err)
}

pub(super) fn set_time(ctx: &mut Context, c: GuestSetTime) -> Result<Empty, QgaError> {
    ctx.ops.clock.set_time(c.time).map_err(ops_err)?;
    Ok(Empty {})
}

pub(super) fn host_name(ctx: &mut Context, _: GuestGetHostName) -> Result<GuestHostName, QgaError> {
    let host_name = ctx.ops.sysinfo.host_name().map_err(ops_err)?;
    Ok(GuestHostName { host_name })
}

pub(super) fn timezone(ctx: &mut Context, _: GuestGetTimezone) -> Result<GuestTimezone, QgaError> {
    let tz = ctx.ops.sysinfo.timezone().map_err(ops_err)?;
    Ok(GuestTimezone {
        zone: tz.zone,
        offset: tz.offset,
    })
}

pub(super) fn osinfo(ctx: &mut Context, _: GuestGetOsinfo) -> Result<GuestOsInfo, QgaError> {
    let o = ctx.ops.sysinfo.os_info().map_err(ops_err)?;
    Ok(GuestOsInfo {
        kernel_release: o.kernel_release,
        kernel_version: o.kernel_version,
        machine: o.machine,
        id: o.id,
        name: o.name,
        pretty_name: o.pretty_name,
        version: o.version,
        version_id: o.version_id,
        variant: o.variant,
        variant_id: o.variant_id,
    })
}

pub(super) fn users(ctx: &mut Context, _: GuestGetUsers) -> Result<Vec<GuestUser>, QgaError> {
    let users = ctx.ops.sysinfo.users().map_err(ops_err)?;
    Ok(users
        .into_iter()
        .map(|u| GuestUser {
            user: u.user,
            login_time: u.login_time,
            domain: None,
        })
        .collect())
}

pub(super) fn load(ctx: &mut Context, _: GuestGetLoad) -> Result<GuestLoadAverage, QgaError> {
    let l = ctx.ops.sysinfo.load().map_err(ops_err)?;
    Ok(GuestLoadAverage {
        load1m: l.load1m,
        load5m: l.load5m,
        load15m: l.load15m,
    })
}

pub(super) fn cpustats(
    ctx: &mut Context,
    _: GuestGetCpustats,
) -> Result<Vec<GuestCpuStats>, QgaError> {
    let stats = ctx.ops.sysinfo.cpu_stats().map_err(ops_err)?;
    Ok(stats
        .into_iter()
        .map(|s| {
            GuestCpuStats::Linux(GuestLinuxCpuStats {
                cpu: s.cpu,
                user: s.user,
                nice: s.nice,
                system: s.system,
                idle: s.idle,
                iowait: s.iowait,
                irq: s.irq,
                softirq: s.softirq,
                steal: s.steal,
                guest: s.guest,
                guestnice: s.guestnice,
            })
        })
        .collect())
}

pub(super) fn diskstats(
    ctx: &mut Context,
    _: GuestGetDiskstats,
) -> Result<Vec<GuestDiskStatsInfo>, QgaError> {
    let stats = ctx.ops.sysinfo.disk_stats().map_err(ops_err)?;
    Ok(stats
        .into_iter()
        .map(|d| {
            let c = d.counters;
            GuestDiskStatsInfo {
                name: d.name,
                major: d.major,
                minor: d.minor,
                stats: GuestDiskStats {
                    read_sectors: c.read_sectors,
                    read_ios: c.read_ios,
                    read_merges: c.read_merges,
                    write_sectors: c.write_sectors,
                    write_ios: c.write_ios,
                    write_merges: c.write_merges,
                    discard_sectors: c.discard_sectors,
                    discard_ios: c.discard_ios,
                    discard_merges: c.discard_merges,
                    flush_ios: c.flush_ios,
                    read_ticks: c.read_ticks,
                    write_ticks: c.write_ticks,
                    discard_ticks: c.discard_ticks,
                    flush_ticks: c.flush_ticks,
                    ios_pgr: c.ios_pgr,
                    total_ticks: c.total_ticks,
                    weight_ticks: c.weight_ticks,
                },
            }
        })
        .collect())
}
