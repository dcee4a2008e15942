//! Network interfaces (names, MAC, addresses with prefix, counters) and the
//! routing table.
//!
//! Where guest-network-get-interfaces spent its time (issue #14, `perf record
//! -a --call-graph dwarf` on the agent during `agent-bench --only netif`, 4
//! interfaces, 138 us of agent CPU a call): glibc's getifaddrs (a netlink socket,
//! an RTM_GETLINK and an RTM_GETADDR dump) 22 %, opening, reading and closing
//! `/sys/class/net/NAME/address` per interface and `/proc/net/dev` 26 %
//! (openat alone 15 %: kernfs path walks), parsing `/proc/net/dev` 2 %; the rest
//! is the per-request socket I/O of the agent (30 %), poll and JSON.
//!
//! Now (see the `netlink` module): the two dumps on a socket kept between
//! calls, no file I/O; agent CPU 67-75 us a call (qemu-ga 7.2: 157-177 us in
//! the same runs). Per call the dumps cost about 10 us (6 system calls; the
//! kernel filling the link messages is most of it); what remains is the
//! per-request cost every command pays: with client and agent on two CPUs a
//! guest-ping already takes 38 us of agent CPU and 43 us p50 here (the
//! cross-CPU wake-ups on reading the request and writing the reply), against
//! 4 us on one CPU.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use crate::OpsError;

mod netlink;

pub use netlink::{interfaces_from_rtnetlink_dumps, DumpError, RtnetlinkSocket};

/// One network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// MAC address, lower-case `aa:bb:cc:dd:ee:ff`, when the interface has one.
    pub hardware_address: Option<String>,
    /// Addresses with prefix length.
    pub addresses: Vec<(IpAddr, u8)>,
    /// Counters, for interfaces that have an address (as qemu-ga).
    pub statistics: Option<InterfaceStats>,
}

/// Interface counters: the `/proc/net/dev` columns (receive `drop` is the
/// kernel's `rx_dropped + rx_missed_errors`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InterfaceStats {
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Receive errors.
    pub rx_errs: u64,
    /// Received packets dropped.
    pub rx_dropped: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Send errors.
    pub tx_errs: u64,
    /// Sent packets dropped.
    pub tx_dropped: u64,
}

/// One routing table entry (guest-network-get-route, QEMU 9.1+). IPv4 entries
/// carry `gateway`, `mask`, `irtt`, `window` and `mtu`; IPv6 entries
/// `desprefixlen`, `source`, `srcprefixlen` and `nexthop`; both carry `flags`,
/// `refcnt` and `use`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Route {
    /// Egress interface.
    pub iface: String,
    /// Destination network or host.
    pub destination: String,
    /// Route metric (IPv6: the 32-bit hex field read as a signed int, as QEMU
    /// does, so `ffffffff` is -1).
    pub metric: i64,
    /// Next hop router (IPv4).
    pub gateway: Option<String>,
    /// Destination netmask (IPv4).
    pub mask: Option<String>,
    /// Initial round-trip time (IPv4).
    pub irtt: Option<i64>,
    /// `RTF_*` flags as the kernel prints them. QEMU master sign-extends IPv6
    /// flags with the high bit set (`80200001` becomes 18446744071564165121);
    /// here they keep their 32-bit value (2149580801).
    pub flags: Option<u64>,
    /// Reference count.
    pub refcnt: Option<i64>,
    /// Usage count (wire member `use`).
    pub r#use: Option<i64>,
    /// TCP window (IPv4).
    pub window: Option<i64>,
    /// MTU (IPv4).
    pub mtu: Option<i64>,
    /// Destination prefix length, decimal (IPv6).
    pub desprefixlen: Option<String>,
    /// Source address (IPv6).
    pub source: Option<String>,
    /// Source prefix length, decimal (IPv6).
    pub srcprefixlen: Option<String>,
    /// Next hop (IPv6).
    pub nexthop: Option<String>,
    /// 4 or 6.
    pub version: i64,
}

/// Lists network interfaces and routes.
pub trait Network: Send + Sync {
    /// The interfaces in first-seen (interface index) order.
    fn interfaces(&self) -> Result<Vec<Interface>, OpsError>;

    /// guest-network-get-route (QEMU 9.1+): the IPv4 routes, then the IPv6 ones,
    /// in table order.
    fn routes(&self) -> Result<Vec<Route>, OpsError>;
}

/// Linux implementation: interfaces from an RTM_GETLINK and an RTM_GETADDR
/// rtnetlink dump on a socket kept between calls (see
/// [`interfaces_from_rtnetlink_dumps`]); if netlink fails, the getifaddrs path
/// ([`LinuxNetwork::interfaces_via_getifaddrs`]: sysfs for MACs, `/proc/net/dev`
/// for counters), which gives the same list in the initial network namespace. Routes from `/proc/net/route` and
/// `/proc/net/ipv6_route`.
#[derive(Debug, Clone)]
pub struct LinuxNetwork {
    /// `/sys/class/net` (MACs on the getifaddrs path).
    pub sys_class_net: PathBuf,
    /// `/proc/net/dev` (counters on the getifaddrs path, and of links whose
    /// netlink dump carries no 64-bit counters).
    pub proc_net_dev: PathBuf,
    /// `/proc/net/route`.
    pub proc_net_route: PathBuf,
    /// `/proc/net/ipv6_route`.
    pub proc_net_ipv6_route: PathBuf,
    /// The rtnetlink socket reused between calls.
    pub rtnetlink: RtnetlinkSocket,
}

impl Default for LinuxNetwork {
    fn default() -> Self {
        LinuxNetwork {
            sys_class_net: "/sys/class/net".into(),
            proc_net_dev: "/proc/net/dev".into(),
            proc_net_route: "/proc/net/route".into(),
            proc_net_ipv6_route: "/proc/net/ipv6_route".into(),
            rtnetlink: RtnetlinkSocket::default(),
        }
    }
}

/// Parses `/proc/net/dev` text.
pub fn parse_proc_net_dev(text: &str) -> HashMap<String, InterfaceStats> {
    let mut out = HashMap::new();
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let v: Vec<u64> = rest
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        if v.len() < 12 {
            continue;
        }
        out.insert(
            name.trim().to_owned(),
            InterfaceStats {
                rx_bytes: v[0],
                rx_packets: v[1],
                rx_errs: v[2],
                rx_dropped: v[3],
                tx_bytes: v[8],
                tx_packets: v[9],
                tx_errs: v[10],
                tx_dropped: v[11],
            },
        );
    }
    out
}

/// A `%x` conversion of a whole token: hex digits (an optional `0x`), the value
/// cut to 32 bits as C's scanf stores it in an `unsigned int`.
fn scan_hex(tok: &str) -> Option<u32> {
    let digits = tok
        .strip_prefix("0x")
        .or_else(|| tok.strip_prefix("0X"))
        .unwrap_or(tok);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let v = u64::from_str_radix(digits, 16).unwrap_or(u64::MAX);
    Some(v as u32)
}

/// A `%d` conversion of a whole token, stored in an `int`.
fn scan_int(tok: &str) -> Option<i32> {
    let digits = tok.strip_prefix(['-', '+']).unwrap_or(tok);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let v = tok.parse::<i64>().unwrap_or(if tok.starts_with('-') {
        i64::MIN
    } else {
        i64::MAX
    });
    Some(v as i32)
}

/// An IPv4 address as `/proc/net/route` prints it: the in-memory (network
/// order) bytes read as a little-endian hex number, so `0100A8C0` is 192.168.0.1.
fn route_ipv4(v: u32) -> String {
    Ipv4Addr::from(v.to_le_bytes()).to_string()
}

/// An IPv6 address of 32 hex digits, formatted as glibc's `inet_ntop` does
/// (the first longest run of two or more zero groups is `::`; an address with
/// 96 leading zero bits, or `::ffff:0:0/96`, ends in dotted IPv4, e.g.
/// `::1.2.3.4`). `None` when the text is not 32 hex digits.
fn route_ipv6(hex: &str) -> Option<String> {
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut words = [0u16; 8];
    for (i, w) in words.iter_mut().enumerate() {
        *w = u16::from_str_radix(&hex[i * 4..i * 4 + 4], 16).ok()?;
    }
    Some(format_ipv6_like_glibc(&words))
}

fn format_ipv6_like_glibc(words: &[u16; 8]) -> String {
    // First longest run of zero words, if at least two long.
    // (base, len) of a run of zero words.
    let mut best: Option<(usize, usize)> = None;
    let mut cur: Option<(usize, usize)> = None;
    for (i, w) in words.iter().enumerate() {
        if *w == 0 {
            cur = Some(match cur {
                Some((base, len)) => (base, len + 1),
                None => (i, 1),
            });
            if let Some((base, len)) = cur {
                if best.is_none_or(|(_, blen)| len > blen) {
                    best = Some((base, len));
                }
            }
        } else {
            cur = None;
        }
    }
    let best = best.filter(|(_, len)| *len >= 2);
    let mut out = String::new();
    let mut i = 0;
    while i < 8 {
        if let Some((base, len)) = best {
            if i >= base && i < base + len {
                if i == base {
                    out.push(':');
                }
                i += 1;
                continue;
            }
        }
        if i != 0 {
            out.push(':');
        }
        if i == 6
            && best.is_some_and(|(base, len)| {
                base == 0 && (len == 6 || (len == 5 && words[5] == 0xffff))
            })
        {
            let [a, b] = words[6].to_be_bytes();
            let [c, d] = words[7].to_be_bytes();
            out.push_str(&format!("{a}.{b}.{c}.{d}"));
            return out;
        }
        out.push_str(&format!("{:x}", words[i]));
        i += 1;
    }
    if best.is_some_and(|(base, len)| base + len == 8) {
        out.push(':');
    }
    out
}

/// Parses `/proc/net/route` text as QEMU does: the first line (the header) is
/// skipped, and so is any line without 11 fields of the right kinds
/// (`Iface Destination Gateway Flags RefCnt Use Metric Mask MTU Window IRTT`,
/// addresses and flags in hex, the rest decimal).
pub fn parse_proc_net_route(text: &str) -> Vec<Route> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let t: Vec<&str> = line.split_whitespace().collect();
            if t.len() < 11 {
                return None;
            }
            Some(Route {
                iface: t[0].to_owned(),
                destination: route_ipv4(scan_hex(t[1])?),
                gateway: Some(route_ipv4(scan_hex(t[2])?)),
                flags: Some(scan_hex(t[3])?.into()),
                refcnt: Some(scan_int(t[4])?.into()),
                r#use: Some(scan_int(t[5])?.into()),
                metric: scan_int(t[6])?.into(),
                mask: Some(route_ipv4(scan_hex(t[7])?)),
                mtu: Some(scan_int(t[8])?.into()),
                window: Some(scan_int(t[9])?.into()),
                irtt: Some(scan_int(t[10])?.into()),
                version: 4,
                ..Default::default()
            })
        })
        .collect()
}

/// Parses `/proc/net/ipv6_route` text as QEMU does (no header line): lines
/// without 10 fields (`destination prefixlen source prefixlen nexthop metric
/// refcnt use flags iface`, all numbers in hex) or whose destination is not 32
/// hex digits are skipped; a malformed source or next hop is left out.
pub fn parse_proc_net_ipv6_route(text: &str) -> Vec<Route> {
    text.lines()
        .filter_map(|line| {
            let t: Vec<&str> = line.split_whitespace().collect();
            if t.len() < 10 || [t[0], t[2], t[4]].iter().any(|a| a.len() > 32) {
                return None;
            }
            let des_prefixlen = scan_hex(t[1])? as i32;
            let src_prefixlen = scan_hex(t[3])? as i32;
            let metric = scan_hex(t[5])? as i32;
            let refcnt = scan_hex(t[6])? as i32;
            let used = scan_hex(t[7])? as i32;
            let flags = scan_hex(t[8])?;
            Some(Route {
                iface: t[9].to_owned(),
                destination: route_ipv6(t[0])?,
                metric: metric.into(),
                flags: Some(flags.into()),
                refcnt: Some(refcnt.into()),
                r#use: Some(used.into()),
                desprefixlen: Some(des_prefixlen.to_string()),
                source: route_ipv6(t[2]),
                srcprefixlen: Some(src_prefixlen.to_string()),
                nexthop: route_ipv6(t[4]),
                version: 6,
                ..Default::default()
            })
        })
        .collect()
}

fn read_route_file(path: &std::path::Path) -> Result<String, OpsError> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)
        .map_err(|e| OpsError::os(format!("open(\"{}\")", path.display()), e))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)
        .map_err(|e| OpsError::os(format!("read(\"{}\")", path.display()), e))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn prefix_len(mask: IpAddr) -> u8 {
    match mask {
        IpAddr::V4(m) => u32::from(m).count_ones() as u8,
        IpAddr::V6(m) => u128::from(m).count_ones() as u8,
    }
}

impl LinuxNetwork {
    /// The interface list the way qemu-ga 7.2 builds it: getifaddrs for names
    /// and addresses (first-seen order), `proc_net_dev` for counters, and for the
    /// MAC what `SIOCGIFHWADDR` would give, read from
    /// `sys_class_net/DEVICE/address` (sysfs shows the network namespace it was
    /// mounted in, so in another one this finds other devices or none).
    /// [`Network::interfaces`] gives the same list from netlink and uses this
    /// when netlink fails.
    ///
    /// # Errors
    ///
    /// `getifaddrs failed: ...` when getifaddrs fails.
    pub fn interfaces_via_getifaddrs(&self) -> Result<Vec<Interface>, OpsError> {
        self.getifaddrs_listing()
    }

    /// What qemu-ga's `SIOCGIFHWADDR` gives for `name`, from sysfs: the device
    /// is the name up to its first `:`; its address's first 6 bytes,
    /// zero-filled (all zero when it has none); `None` when there is no such
    /// device. (Alternative names are not in sysfs, so they give `None` here.)
    fn sysfs_hardware_address(&self, name: &str) -> Option<String> {
        let device = name.split(':').next().unwrap_or(name);
        if device.is_empty() || device == "." || device == ".." || device.contains('/') {
            return None;
        }
        let text = std::fs::read_to_string(self.sys_class_net.join(device).join("address")).ok()?;
        let mut bytes = [0u8; 6];
        for (i, pair) in text.trim().split(':').filter(|p| !p.is_empty()).enumerate() {
            let b = u8::from_str_radix(pair, 16).ok()?;
            if let Some(slot) = bytes.get_mut(i) {
                *slot = b;
            }
        }
        Some(netlink::mac_text(&bytes))
    }

    fn getifaddrs_listing(&self) -> Result<Vec<Interface>, OpsError> {
        let addrs = nix::ifaddrs::getifaddrs().map_err(|e| {
            OpsError::os(
                "getifaddrs failed",
                std::io::Error::from_raw_os_error(e as i32),
            )
        })?;
        let mut list: Vec<Interface> = Vec::new();
        for ifa in addrs {
            let idx = match list.iter().position(|i| i.name == ifa.interface_name) {
                Some(i) => i,
                None => {
                    list.push(Interface {
                        name: ifa.interface_name.clone(),
                        hardware_address: self.sysfs_hardware_address(&ifa.interface_name),
                        addresses: Vec::new(),
                        statistics: None,
                    });
                    list.len() - 1
                }
            };
            let (Some(addr), Some(mask)) = (ifa.address, ifa.netmask) else {
                continue;
            };
            let pair = if let (Some(a), Some(m)) = (addr.as_sockaddr_in(), mask.as_sockaddr_in()) {
                Some((IpAddr::V4(a.ip()), prefix_len(IpAddr::V4(m.ip()))))
            } else if let (Some(a), Some(m)) = (addr.as_sockaddr_in6(), mask.as_sockaddr_in6()) {
                Some((IpAddr::V6(a.ip()), prefix_len(IpAddr::V6(m.ip()))))
            } else {
                None
            };
            if let Some(p) = pair {
                list[idx].addresses.push(p);
            }
        }
        let stats = crate::sys::read_proc_text(&self.proc_net_dev)
            .map(|t| parse_proc_net_dev(&t))
            .unwrap_or_default();
        for i in &mut list {
            if !i.addresses.is_empty() {
                i.statistics = stats.get(&i.name).copied();
            }
        }
        Ok(list)
    }
}

impl Network for LinuxNetwork {
    fn interfaces(&self) -> Result<Vec<Interface>, OpsError> {
        match self.rtnetlink.interfaces(&self.proc_net_dev) {
            Ok(list) => Ok(list),
            Err(_) => self.interfaces_via_getifaddrs(),
        }
    }

    /// Both files must open: QEMU reports `open("/proc/net/route"): ...` for
    /// either one (and answers with the error even when the other was read).
    fn routes(&self) -> Result<Vec<Route>, OpsError> {
        let v4 = read_route_file(&self.proc_net_route)?;
        let v6 = read_route_file(&self.proc_net_ipv6_route)?;
        let mut routes = parse_proc_net_route(&v4);
        routes.extend(parse_proc_net_ipv6_route(&v6));
        Ok(routes)
    }
}
