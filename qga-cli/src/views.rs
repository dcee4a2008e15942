//! The human-readable forms of the read-side replies: tables and single lines.
//! (`--json` prints the agent's raw return value instead.)

use qga_client::proto::{
    GuestCpuStats, GuestDeviceId, GuestDeviceInfo, GuestDiskInfo, GuestDiskStatsInfo,
    GuestFilesystemInfo, GuestLoadAverage, GuestLogicalProcessor, GuestMemoryBlock,
    GuestNetworkInterface, GuestNetworkRoute, GuestOsInfo, GuestTimezone, GuestUser,
};

use crate::out::Table;

const NS_PER_SEC: i64 = 1_000_000_000;

/// `ns` nanoseconds since the epoch as UTC, `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`.
pub fn utc_ns(ns: i64) -> String {
    let (secs, nanos) = (ns.div_euclid(NS_PER_SEC), ns.rem_euclid(NS_PER_SEC));
    format!("{}.{nanos:09}Z", utc_secs(secs))
}

/// `secs` seconds since the epoch as UTC, `YYYY-MM-DDTHH:MM:SS` (proleptic
/// Gregorian calendar; days to civil date as in H. Hinnant's `civil_from_days`).
pub fn utc_secs(secs: i64) -> String {
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// A byte count with a binary unit: `512 B`, `1.5 KiB`, `28.5 GiB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn yes(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// guest-get-timezone: `CET +01:00`.
pub fn timezone(tz: &GuestTimezone) -> String {
    let sign = if tz.offset < 0 { '-' } else { '+' };
    let off = tz.offset.unsigned_abs();
    let hm = format!("{sign}{:02}:{:02}", off / 3600, off % 3600 / 60);
    match &tz.zone {
        Some(z) => format!("{z} {hm}"),
        None => hm,
    }
}

/// guest-get-osinfo: one line per member the agent sent.
pub fn osinfo(os: &GuestOsInfo) -> Table {
    let mut t = Table::without_header(2);
    for (k, v) in [
        ("pretty-name", &os.pretty_name),
        ("name", &os.name),
        ("id", &os.id),
        ("version", &os.version),
        ("version-id", &os.version_id),
        ("variant", &os.variant),
        ("variant-id", &os.variant_id),
        ("kernel-release", &os.kernel_release),
        ("kernel-version", &os.kernel_version),
        ("machine", &os.machine),
    ] {
        if let Some(v) = v {
            t.row([k.into(), v.clone()]);
        }
    }
    t
}

/// guest-get-users; the domain column only when a user has one (Windows).
pub fn users(users: &[GuestUser]) -> Table {
    let login = |u: &GuestUser| utc_secs(u.login_time.floor() as i64);
    if users.iter().any(|u| u.domain.is_some()) {
        let mut t = Table::new(["user", "login-time (UTC)", "domain"]);
        for u in users {
            t.row([u.user.clone(), login(u), opt(u.domain.as_ref())]);
        }
        t
    } else {
        let mut t = Table::new(["user", "login-time (UTC)"]);
        for u in users {
            t.row([u.user.clone(), login(u)]);
        }
        t
    }
}

/// guest-get-load.
pub fn load(l: &GuestLoadAverage) -> Table {
    let mut t = Table::new(["1m", "5m", "15m"]);
    t.row([
        format!("{:.2}", l.load1m),
        format!("{:.2}", l.load5m),
        format!("{:.2}", l.load15m),
    ]);
    t
}

/// guest-get-vcpus.
pub fn vcpus(cpus: &[GuestLogicalProcessor]) -> Table {
    let mut t = Table::new(["cpu", "online", "can-offline"]);
    for c in cpus {
        t.row([
            c.logical_id.to_string(),
            yes(c.online),
            opt(c.can_offline.map(yes)),
        ]);
    }
    t
}

/// guest-get-memory-blocks.
pub fn memory_blocks(blocks: &[GuestMemoryBlock]) -> Table {
    let mut t = Table::new(["block", "online", "can-offline"]);
    for b in blocks {
        t.row([
            b.phys_index.to_string(),
            yes(b.online),
            opt(b.can_offline.map(yes)),
        ]);
    }
    t
}

/// guest-get-cpustats: times in milliseconds.
pub fn cpustats(stats: &[GuestCpuStats]) -> Table {
    let mut t = Table::new([
        "cpu",
        "user",
        "nice",
        "system",
        "idle",
        "iowait",
        "irq",
        "softirq",
        "steal",
        "guest",
        "guestnice",
    ]);
    for s in stats {
        let GuestCpuStats::Linux(s) = s;
        t.row([
            s.cpu.to_string(),
            s.user.to_string(),
            s.nice.to_string(),
            s.system.to_string(),
            s.idle.to_string(),
            opt(s.iowait),
            opt(s.irq),
            opt(s.softirq),
            opt(s.steal),
            opt(s.guest),
            opt(s.guestnice),
        ]);
    }
    t
}

/// guest-get-fsinfo.
pub fn fsinfo(fss: &[GuestFilesystemInfo]) -> Table {
    let mut t = Table::new(["mountpoint", "type", "name", "used", "total", "disks"]);
    for f in fss {
        let disks: Vec<String> = f
            .disk
            .iter()
            .map(|d| {
                d.dev
                    .clone()
                    .or_else(|| d.serial.clone())
                    .unwrap_or_default()
            })
            .filter(|d| !d.is_empty())
            .collect();
        t.row([
            f.mountpoint.clone(),
            f.fs_type.clone(),
            f.name.clone(),
            opt(f.used_bytes.map(size)),
            opt(f.total_bytes.map(size)),
            if disks.is_empty() {
                "-".into()
            } else {
                disks.join(",")
            },
        ]);
    }
    t
}

/// guest-get-disks.
pub fn disks(disks: &[GuestDiskInfo]) -> Table {
    let mut t = Table::new(["name", "partition", "bus", "depends-on", "alias", "serial"]);
    for d in disks {
        let bus = d.address.as_ref().map(|a| {
            serde_json::to_value(a.bus_type)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        });
        let deps = d.dependencies.as_deref().unwrap_or_default();
        t.row([
            d.name.clone(),
            yes(d.partition),
            opt(bus),
            if deps.is_empty() {
                "-".into()
            } else {
                deps.join(",")
            },
            opt(d.alias.as_ref()),
            opt(d.address.as_ref().and_then(|a| a.serial.as_ref())),
        ]);
    }
    t
}

/// guest-get-diskstats: I/O counts, sectors, and time spent (ms).
pub fn diskstats(disks: &[GuestDiskStatsInfo]) -> Table {
    let mut t = Table::new([
        "name",
        "dev",
        "read-ios",
        "read-sectors",
        "write-ios",
        "write-sectors",
        "discard-ios",
        "flush-ios",
        "in-flight",
        "io-ms",
    ]);
    for d in disks {
        let s = &d.stats;
        t.row([
            d.name.clone(),
            format!("{}:{}", d.major, d.minor),
            opt(s.read_ios),
            opt(s.read_sectors),
            opt(s.write_ios),
            opt(s.write_sectors),
            opt(s.discard_ios),
            opt(s.flush_ios),
            opt(s.ios_pgr),
            opt(s.total_ticks),
        ]);
    }
    t
}

/// guest-network-get-route: IPv4 destinations with their netmask, IPv6 ones with
/// their prefix length (sent as hex text, as in the kernel's table).
pub fn routes(routes: &[GuestNetworkRoute]) -> Table {
    let mut t = Table::new(["iface", "destination", "gateway", "metric", "ip"]);
    for r in routes {
        let (dest, gw) = if r.version == 6 {
            let prefix = r.desprefixlen.as_deref().map(|p| {
                u8::from_str_radix(p, 16).map_or_else(|_| p.to_owned(), |n| n.to_string())
            });
            let dest = match prefix {
                Some(p) => format!("{}/{p}", r.destination),
                None => r.destination.clone(),
            };
            (dest, r.nexthop.clone())
        } else {
            let dest = match &r.mask {
                Some(m) => format!("{}/{m}", r.destination),
                None => r.destination.clone(),
            };
            (dest, r.gateway.clone())
        };
        t.row([
            r.iface.clone(),
            dest,
            opt(gw),
            r.metric.to_string(),
            format!("v{}", r.version),
        ]);
    }
    t
}

/// guest-get-devices.
pub fn devices(devs: &[GuestDeviceInfo]) -> Table {
    let mut t = Table::new(["driver", "version", "date (UTC)", "id"]);
    for d in devs {
        let id = d.id.map(|id| match id {
            GuestDeviceId::Pci {
                vendor_id,
                device_id,
            } => format!("pci {vendor_id:04x}:{device_id:04x}"),
        });
        t.row([
            d.driver_name.clone(),
            opt(d.driver_version.as_ref()),
            opt(d.driver_date.map(|ns| utc_secs(ns.div_euclid(NS_PER_SEC)))),
            opt(id),
        ]);
    }
    t
}

/// guest-network-get-interfaces: one line per address.
pub fn interfaces(ifs: &[GuestNetworkInterface]) -> Table {
    let mut t = Table::new(["name", "mac", "address", "rx/tx bytes"]);
    for i in ifs {
        let stats = i
            .statistics
            .map(|s| format!("{}/{}", s.rx_bytes, s.tx_bytes))
            .unwrap_or_default();
        let mac = i.hardware_address.clone().unwrap_or_else(|| "-".into());
        let addrs: Vec<String> = i
            .ip_addresses
            .iter()
            .flatten()
            .map(|a| format!("{}/{}", a.ip_address, a.prefix))
            .collect();
        if addrs.is_empty() {
            t.row([i.name.clone(), mac, "-".into(), stats]);
            continue;
        }
        for (n, a) in addrs.into_iter().enumerate() {
            if n == 0 {
                t.row([i.name.clone(), mac.clone(), a, stats.clone()]);
            } else {
                t.row([String::new(), String::new(), a, String::new()]);
            }
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_match_known_instants() {
        assert_eq!(utc_ns(0), "1970-01-01T00:00:00.000000000Z");
        // `date -u -d @1796106334`.
        assert_eq!(
            utc_ns(1_796_106_334_095_443_000),
            "2026-12-01T06:25:34.095443000Z"
        );
        // A leap day, and the last second of a century year.
        assert_eq!(utc_secs(951_782_400), "2000-02-29T00:00:00");
        assert_eq!(utc_secs(4_102_444_799), "2099-12-31T23:59:59");
        // Before the epoch.
        assert_eq!(utc_ns(-1), "1969-12-31T23:59:59.999999999Z");
    }

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(97_572_749_312), "90.9 GiB");
        assert_eq!(size(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn timezones_show_their_offset() {
        let tz = |zone: Option<&str>, offset| GuestTimezone {
            zone: zone.map(str::to_owned),
            offset,
        };
        assert_eq!(timezone(&tz(Some("UTC"), 0)), "UTC +00:00");
        assert_eq!(timezone(&tz(Some("IST"), 19_800)), "IST +05:30");
        assert_eq!(timezone(&tz(None, -12_600)), "-03:30");
    }
}
